//! What the proxy asks of the control group, behind one trait so the
//! proxy's logic does not depend on the transport (the CLI implements it
//! over the member's gRPC API, `cli/proxy.rs`).

use std::future::Future;
use std::pin::Pin;

use anyhow::Result;
use elton_control::apps::fleet::{AppView, InstanceRecord};

pub type GroupFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T>> + Send + 'a>>;

pub trait Group: Send + Sync {
    /// The apps and the instance registry, read on the direct path (no
    /// log entry).
    fn view(&self) -> GroupFuture<'_, AppView>;
    /// All of `host`'s instances, replacing its previous report (one log
    /// entry).
    fn report(&self, host: &str, instances: Vec<InstanceRecord>) -> GroupFuture<'_, ()>;
    /// Asks for one more instance of `app` for `host`, which runs
    /// `running` of them now: `Ok(host)` it was assigned to,
    /// `Err(reason)` the group refused (cooling down, at max).
    fn scale_out(
        &self,
        app: &str,
        host: &str,
        running: u32,
    ) -> GroupFuture<'_, Result<String, String>>;
}
