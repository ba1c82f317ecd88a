//! The client side of Elton: the `elton` command line, the Eltonfs FUSE
//! mount, and the Docker volume plugin.
//!
//! - [`chunking`]: content-defined chunking of large files into recipes.
//! - [`cli`]: argument parsing and one module per group of subcommands.
//! - [`fs`]: Eltonfs, a volume mounted as an overlay filesystem.
//! - [`docker`]: the Docker volume plugin.
//! - [`proxy`]: FastContainer's HTTP proxy (`elton proxy`).
//! - [`spec`]: `volume@version:path` arguments.
//! - [`update`]: `elton update`, the three-way merge onto the head.
//! - [`upload`]: batch uploads of many objects to a slave.
//! - [`walk`]: turning a local directory into manifests and objects.

pub use elton_proto::chunking;
pub mod cli;
pub mod docker;
pub mod fs;
pub mod proxy;
pub mod spec;
pub mod update;
pub mod upload;
pub mod walk;
