//! The Docker volume plugin: `docker volume create -d elton -o volume=web`
//! gives containers an Eltonfs mount of an Elton volume.
//!
//! - [`protocol`]: Docker's request and response bodies.
//! - [`registry`]: the pure core: volumes, options, users per mount ID,
//!   persisted as `plugin.json`.
//! - [`plugin`]: the server: endpoints, mounts, the master check.
//! - [`client`]: asking a running plugin (for `elton commit --docker-volume`).

pub mod client;
pub mod plugin;
pub mod protocol;
pub mod registry;

/// Where Docker looks for plugin sockets.
pub const DEFAULT_SOCKET_DIR: &str = "/run/docker/plugins";
