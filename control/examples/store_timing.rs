use std::time::Instant;

use elton_control::types::{Entry, LogId};
use elton_control::{Command, Request, RequestId, open_store};
use openraft::storage::{RaftLogStorageExt, RaftStateMachine};
use openraft::{CommittedLeaderId, EntryPayload};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::TempDir::new_in("/work/wt-raft-core/target")?;
    let (mut log, mut sm) = open_store(&dir.path().join("c.redb"))?;
    let entry = |i: u64| Entry {
        log_id: LogId::new(CommittedLeaderId::new(1, 1), i),
        payload: EntryPayload::Normal(Request::new(
            RequestId {
                client: "c".into(),
                seq: i,
            },
            Command::Put {
                key: format!("k{}", i % 100),
                value: "v".repeat(64),
            },
        )),
    };
    let n = 200;
    let t = Instant::now();
    for i in 1..=n {
        log.blocking_append([entry(i)]).await?;
    }
    println!("append: {:?}/op", t.elapsed() / n as u32);
    let t = Instant::now();
    for i in 1..=n {
        sm.apply([entry(i)]).await?;
    }
    println!("apply: {:?}/op", t.elapsed() / n as u32);
    let t = Instant::now();
    log.blocking_append((n + 1..=n + 1000).map(entry)).await?;
    println!("append 1000 in one batch: {:?}", t.elapsed());
    let t = Instant::now();
    let mut clones: Vec<_> = (0..1000).map(|_| log.clone()).collect();
    let futs: Vec<_> = clones
        .iter_mut()
        .enumerate()
        .map(|(i, l)| l.blocking_append([entry(n + 1001 + i as u64)]))
        .collect();
    for r in futures::future::join_all(futs).await {
        r?;
    }
    println!(
        "1000 appends of one entry queued together: {:?}",
        t.elapsed()
    );
    Ok(())
}
