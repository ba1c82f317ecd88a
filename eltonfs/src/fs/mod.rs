//! Eltonfs: a volume mounted at a version as an overlay filesystem.
//!
//! - [`layers`]: the overlay on paths (pure filesystem logic, no FUSE).
//! - [`lower`]: where lower manifests and objects come from.
//! - [`chunked`]: chunked lower files: reads by chunk, assembly, copy-up.
//! - [`readahead`]: background fetches of the chunks a sequential reader
//!   needs next.
//! - [`upper_dirs`]: the upper reached by directory descriptors;
//!   [`meta`]: the attributes of its entries.
//! - [`inodes`]: inode numbers for paths.
//! - [`stamp`]: whether a local file is still the one that was checked.
//! - [`fuse`]: the FUSE request handlers; `mount_state`: the state they
//!   share under one lock; `upper_ops`: what they do to the upper beyond
//!   single calls; [`attrs`]: the attributes they report; [`handle`]: open
//!   files.
//! - [`mount`]: one mount's life: recovery, serving, commit, control socket;
//!   `mount_update`: its `elton update`; [`commit_progress`]: the
//!   progress lines a commit sends, [`commit_reporter`]: sending them.
//! - [`daemon`]: starting a mount as a detached process; `control_path`:
//!   its control socket at a path of any length.
//! - [`mount_table`]: which paths are Elton mounts (the kernel's table).

pub mod attrs;
pub mod changes;
pub mod chunked;
pub mod commit_progress;
pub mod commit_reporter;
mod control_path;
pub mod daemon;
pub mod fuse;
pub mod handle;
pub mod inodes;
pub mod layers;
pub mod lower;
pub mod meta;
pub mod mount;
mod mount_state;
pub mod mount_table;
mod mount_update;
pub mod readahead;
pub mod stamp;
pub mod upper_dirs;
mod upper_ops;
