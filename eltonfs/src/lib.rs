//! The client side of Elton: the `elton` command line (and, next, the
//! Eltonfs FUSE mount).
//!
//! - [`cli`]: argument parsing and one module per group of subcommands.
//! - [`spec`]: `volume@version:path` arguments.
//! - [`walk`]: turning a local directory into manifests and objects.

pub mod cli;
pub mod fs;
pub mod spec;
pub mod walk;
