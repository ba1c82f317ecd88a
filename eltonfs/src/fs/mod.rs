//! Eltonfs: a volume mounted at a version as an overlay filesystem.
//!
//! - [`layers`]: the overlay on paths (pure filesystem logic, no FUSE).
//! - [`lower`]: where lower manifests and objects come from.
//! - [`inodes`]: inode numbers for paths.
//! - [`fuse`]: the FUSE request handlers.

pub mod changes;
pub mod fuse;
pub mod inodes;
pub mod layers;
pub mod lower;
pub mod mount;
