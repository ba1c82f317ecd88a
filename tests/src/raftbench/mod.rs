//! The control plane load generator (`elton-raftbench`): the same small
//! writes against etcd (its v3 gRPC API) and against Elton's control group
//! (`Control.Submit`), with N concurrent clients; and the unavailability
//! after `kill -9` of the leader. See `bench/control.sh` and
//! `docs/benchmarks.md`.

pub mod elton;
pub mod etcd;
pub mod failover;
pub mod load;
pub mod stats;

use std::future::Future;

/// One client connection of a system under test.
pub trait Writer: Clone + Send + Sync + 'static {
    /// Writes `value` at `key` and returns once the system acknowledged it
    /// (committed by a majority).
    fn put(&self, key: String, value: String) -> impl Future<Output = anyhow::Result<()>> + Send;
}

/// A value of `len` printable bytes, different for each `seed`.
pub fn value(len: usize, seed: u64) -> String {
    let digits = format!("{seed:016x}");
    digits.bytes().cycle().take(len).map(char::from).collect()
}
