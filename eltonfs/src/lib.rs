//! The client side of Elton: the `elton` command line, the Eltonfs FUSE
//! mount, and the Docker volume plugin.
//!
//! - [`chunking`]: content-defined chunking of large files into recipes.
//! - [`cli`]: argument parsing and one module per group of subcommands.
//! - [`fs`]: Eltonfs, a volume mounted as an overlay filesystem.
//! - [`docker`]: the Docker volume plugin.
//! - [`spec`]: `volume@version:path` arguments.
//! - [`upload`]: batch uploads of many objects to a slave.
//! - [`walk`]: turning a local directory into manifests and objects.

pub use elton_proto::chunking;
pub mod cli;
pub mod docker;
pub mod fs;
pub mod spec;
pub mod upload;
pub mod walk;
