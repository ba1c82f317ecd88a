//! FastContainer's reconciler loop, on the leader only: every
//! [`TICK`] it plans ([`crate::apps::reconcile::plan`]) from the applied
//! state and submits the commands. Events get lost (a proxy killed before
//! it reported, a leader change mid-decision); re-planning from the
//! replicated state each tick does not, and a new leader takes over on
//! its first tick.

use std::sync::Weak;
use std::time::Duration;

use crate::apps::reconcile::{DEFAULT_LOST_AFTER_MS, plan};
use crate::command::{Request, RequestId};
use crate::node::ControlNode;

/// How often the leader reconciles.
pub const TICK: Duration = Duration::from_secs(1);

/// Runs until the member is dropped.
pub async fn run(node: Weak<ControlNode>) {
    // Request ids: this member's reconciler, numbered from its start time
    // so a restarted member never reuses one.
    let mut seq = now_ms().saturating_mul(1000);
    loop {
        tokio::time::sleep(TICK).await;
        let Some(n) = node.upgrade() else { return };
        if n.raft().metrics().borrow().current_leader != Some(n.id()) {
            continue;
        }
        let view = n.reader().app_view();
        let apps = view
            .apps
            .into_iter()
            .map(|a| (a.spec.name.clone(), a))
            .collect();
        for command in plan(&apps, &view.fleet, now_ms(), DEFAULT_LOST_AFTER_MS) {
            seq += 1;
            let what = format!("{command:?}");
            let mut request = Request::new(
                RequestId {
                    client: format!("fastc-reconciler:{}", n.member().name),
                    seq,
                },
                command,
            );
            request.acked_below = seq;
            match n.submit(request.encode(), &n.self_caller(), false).await {
                Ok(_) => tracing::info!("reconciler: {what}"),
                Err(e) => {
                    tracing::debug!("reconciler: {what}: {e}");
                    break;
                }
            }
        }
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}
