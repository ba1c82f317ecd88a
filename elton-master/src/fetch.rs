//! Proxies an object from the holders of this cluster to the requester.
//!
//! The master reads from a holder's CDN endpoint (`GET /v1/objects/{id}`,
//! local-only so a holder never recurses into another fetch) and streams the
//! bytes on. It does not verify them: the requester hashes everything it
//! receives before storing or serving it.
//!
//! Every holder read runs under the deadlines of [`HolderPolicy`]. A holder
//! that misses one, breaks the connection or ends the body early is counted
//! against it ([`NodeHealth`]) and the next live holder takes over: from
//! the start if nothing was relayed yet, else with `Range: bytes=N-` for
//! exactly the rest. The requester sees one stream of the right bytes; it
//! ends with an error only when every holder failed.

use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use elton_proto::pb::ObjectChunk;
use elton_proto::{LOCAL_ONLY_HEADER, NodeId, ObjectId};
use futures::{FutureExt, Stream, StreamExt};
use reqwest::header::{CONTENT_RANGE, RANGE};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;

use crate::MasterError;
use crate::health::NodeHealth;
use crate::holder_policy::{Answer, Candidate, Failover, HolderPolicy};
use crate::nodes::Liveness;
use crate::store::{self, MetaStore, NodeRow};

/// Largest `ObjectChunk` assembled from what a holder has already sent.
const MAX_CHUNK: usize = 1 << 20;
/// Pooled connections to holders are dropped after this long unused: below
/// the slaves' idle timeout (60 s, `elton_slave::serve`), so the master
/// does not reuse a connection the slave is just closing.
const POOL_IDLE: Duration = Duration::from_secs(30);

pub type ChunkStream = Pin<Box<dyn Stream<Item = Result<ObjectChunk, Status>> + Send>>;

/// What came of opening an object on this cluster's holders.
pub enum Opened {
    /// The object's size and its bytes.
    Served(u64, ChunkStream),
    /// No holder could serve it; the last failure, if any holder was tried
    /// and did not simply lack the object.
    Miss { last_error: Option<String> },
}

enum SourceError {
    /// The holder no longer has the object: its location is stale.
    Missing,
    /// Unreachable, an error status, a missed deadline or an unusable
    /// answer: try another holder.
    Failed(String),
}

/// How a holder's body ended.
enum Pumped {
    /// Every byte of the object was relayed.
    Done,
    /// The requester went away; nothing more to do.
    Gone,
    /// The holder failed; the reason.
    Failed(String),
}

/// The registered holders of `object` that are up, but `exclude`: the
/// nodes worth asking for its bytes.
pub async fn live_holders(
    store: &Arc<MetaStore>,
    liveness: &Liveness,
    object: ObjectId,
    exclude: Option<&NodeId>,
) -> Result<Vec<NodeRow>, MasterError> {
    let (holders, nodes) =
        store::blocking(store, move |s| Ok((s.holders(&object)?, s.nodes()?))).await?;
    let now = Instant::now();
    Ok(nodes
        .into_iter()
        .filter(|n| holders.contains(&n.id))
        .filter(|n| Some(&n.id) != exclude)
        .filter(|n| liveness.is_up(&n.id, now))
        .collect())
}

/// Reads objects from holders under the deadlines of a [`HolderPolicy`].
#[derive(Clone)]
pub struct HolderReader {
    http: reqwest::Client,
    policy: HolderPolicy,
    store: Arc<MetaStore>,
    health: Arc<NodeHealth>,
}

impl HolderReader {
    pub fn new(store: Arc<MetaStore>, health: Arc<NodeHealth>, policy: HolderPolicy) -> Self {
        let http = reqwest::Client::builder()
            .connect_timeout(policy.first_byte)
            .pool_idle_timeout(POOL_IDLE)
            .build()
            .unwrap_or_default();
        Self {
            http,
            policy,
            store,
            health,
        }
    }

    /// Opens `object` on the first of `holders` that answers in time.
    /// Nodes with recent failures are tried last.
    pub async fn open(&self, object: ObjectId, holders: Vec<NodeRow>) -> Opened {
        let candidates = holders
            .into_iter()
            .map(|row| Candidate {
                recent_failures: self.health.recent_failures(&row.id),
                node: row.id,
                http_addr: row.http_addr,
            })
            .collect();
        let mut failover = Failover::new(candidates);
        let (holder, size, resp) = match self.next_source(object, &mut failover, 0, None).await {
            Ok(found) => found,
            Err(last_error) => return Opened::Miss { last_error },
        };
        let (tx, rx) = mpsc::channel(8);
        let transfer = Transfer {
            reader: self.clone(),
            object,
            size,
            failover,
            tx,
            sent: 0,
        };
        tokio::spawn(transfer.run(holder, resp));
        Opened::Served(size, Box::pin(ReceiverStream::new(rx)))
    }

    /// The next holder of `failover` that serves bytes `offset..` of
    /// `object` (whose size is `size` once known), with the object's size
    /// and the response whose body carries them. Holders that do not are
    /// counted against and skipped; a 404 also removes the location. `Err`
    /// carries the last failure when none is left.
    async fn next_source(
        &self,
        object: ObjectId,
        failover: &mut Failover,
        offset: u64,
        size: Option<u64>,
    ) -> Result<(Candidate, u64, reqwest::Response), Option<String>> {
        let mut last_error = None;
        while let Some(holder) = failover.next_holder() {
            let holder = holder.clone();
            match self.request(&holder, object, offset, size).await {
                Ok((size, resp)) => return Ok((holder, size, resp)),
                Err(SourceError::Missing) => self.stale(object, &holder).await,
                Err(SourceError::Failed(e)) => {
                    tracing::warn!(%object, "fetch source failed: {e}");
                    self.health.failed(&holder.node);
                    last_error = Some(e);
                }
            }
        }
        Err(last_error)
    }

    async fn request(
        &self,
        holder: &Candidate,
        object: ObjectId,
        offset: u64,
        size: Option<u64>,
    ) -> Result<(u64, reqwest::Response), SourceError> {
        let node = &holder.node;
        let url = format!("http://{}/v1/objects/{object}", holder.http_addr);
        let mut req = self.http.get(&url).header(LOCAL_ONLY_HEADER, "1");
        if offset > 0 {
            req = req.header(RANGE, format!("bytes={offset}-"));
        }
        let resp = match tokio::time::timeout(self.policy.first_byte, req.send()).await {
            Err(_) => {
                return Err(SourceError::Failed(format!(
                    "{node}: no response within {} ms",
                    self.policy.first_byte.as_millis()
                )));
            }
            Ok(Err(e)) => return Err(SourceError::Failed(format!("{node}: {e}"))),
            Ok(Ok(resp)) => resp,
        };
        if resp.status() == reqwest::StatusCode::NOT_FOUND {
            return Err(SourceError::Missing);
        }
        let answer = Answer {
            status: resp.status().as_u16(),
            content_length: resp.content_length(),
            content_range: resp
                .headers()
                .get(CONTENT_RANGE)
                .and_then(|v| v.to_str().ok()),
        };
        let size = self
            .policy
            .accept(answer, offset, size)
            .map_err(|e| SourceError::Failed(format!("{node}: {e}")))?;
        Ok((size, resp))
    }

    /// `holder` answered 404: it no longer has `object`.
    async fn stale(&self, object: ObjectId, holder: &Candidate) {
        tracing::warn!(%object, node = %holder.node, "stale location removed");
        self.health.stale(&holder.node);
        let node = holder.node.clone();
        // The read goes on either way; a location that could not be removed
        // now is found stale again by the next read.
        if let Err(e) =
            store::blocking(&self.store, move |s| s.remove_location(&object, &node)).await
        {
            tracing::warn!(%object, node = %holder.node, "removing stale location: {e}");
        }
    }
}

/// One object on its way from holders to one requester.
struct Transfer {
    reader: HolderReader,
    object: ObjectId,
    size: u64,
    failover: Failover,
    tx: mpsc::Sender<Result<ObjectChunk, Status>>,
    /// Bytes relayed to the requester so far.
    sent: u64,
}

impl Transfer {
    async fn run(mut self, mut holder: Candidate, mut resp: reqwest::Response) {
        loop {
            let failure = match self.pump(&holder, resp).await {
                Pumped::Done | Pumped::Gone => return,
                Pumped::Failed(e) => e,
            };
            self.reader.health.failed(&holder.node);
            tracing::warn!(object = %self.object, sent = self.sent, size = self.size,
                "fetch source failed mid-transfer, resuming from the next holder: {failure}");
            let next = self
                .reader
                .next_source(self.object, &mut self.failover, self.sent, Some(self.size))
                .await;
            match next {
                Ok((h, _, r)) => (holder, resp) = (h, r),
                Err(last) => {
                    let _ = self
                        .tx
                        .send(Err(Status::unavailable(format!(
                            "object {}: every holder failed after {} of {} bytes; last: {}",
                            self.object,
                            self.sent,
                            self.size,
                            last.unwrap_or(failure)
                        ))))
                        .await;
                    return;
                }
            }
        }
    }

    /// Relays `resp`'s body until the object is complete or the holder
    /// fails (error, early end, missed progress deadline). Bytes received
    /// before a failure are relayed too: the next holder resumes after them.
    async fn pump(&mut self, holder: &Candidate, resp: reqwest::Response) -> Pumped {
        let node = &holder.node;
        let mut body = std::pin::pin!(resp.bytes_stream());
        let mut progress = self.reader.policy.progress(self.size - self.sent);
        while self.sent < self.size {
            let waiting = Instant::now();
            let first = match tokio::time::timeout(progress.budget(), body.next()).await {
                Err(_) => return Pumped::Failed(self.stalled(holder)),
                Ok(None) => return Pumped::Failed(self.ended_early(holder)),
                Ok(Some(Err(e))) => return Pumped::Failed(format!("{node}: reading: {e}")),
                Ok(Some(Ok(data))) => data,
            };
            let waited = waiting.elapsed();
            // Whatever else has already arrived goes in the same message:
            // fewer, larger messages relay faster.
            let (data, failure, ended) = gather(first, &mut body);
            let n = data.len() as u64;
            if n > self.size - self.sent {
                return Pumped::Failed(format!(
                    "{node}: sent more than the {} bytes announced",
                    self.size
                ));
            }
            let on_time = progress.received(n, waited).is_ok();
            if n > 0 {
                if self.tx.send(Ok(ObjectChunk { data })).await.is_err() {
                    return Pumped::Gone;
                }
                self.sent += n;
            }
            if let Some(e) = failure {
                return Pumped::Failed(format!("{node}: reading: {e}"));
            }
            if !on_time {
                return Pumped::Failed(self.stalled(holder));
            }
            if ended && self.sent < self.size {
                return Pumped::Failed(self.ended_early(holder));
            }
        }
        Pumped::Done
    }

    fn stalled(&self, holder: &Candidate) -> String {
        let p = &self.reader.policy;
        format!(
            "{}: missed the progress deadline ({} KiB per {} ms) after {} of {} bytes",
            holder.node,
            p.window_bytes >> 10,
            p.window.as_millis(),
            self.sent,
            self.size
        )
    }

    fn ended_early(&self, holder: &Candidate) -> String {
        format!(
            "{}: body ended after {} of {} bytes",
            holder.node, self.sent, self.size
        )
    }
}

/// `first` joined with the frames `body` has ready now, up to
/// [`MAX_CHUNK`]; also a read error met on the way and whether the body
/// ended. A frame that is alone is passed on without a copy.
fn gather(
    first: Bytes,
    body: &mut (impl Stream<Item = Result<Bytes, reqwest::Error>> + Unpin),
) -> (Bytes, Option<reqwest::Error>, bool) {
    let mut joined: Option<BytesMut> = None;
    while joined.as_ref().map_or(first.len(), BytesMut::len) < MAX_CHUNK {
        match body.next().now_or_never() {
            Some(Some(Ok(more))) => joined
                .get_or_insert_with(|| {
                    let mut b = BytesMut::with_capacity(MAX_CHUNK);
                    b.extend_from_slice(&first);
                    b
                })
                .extend_from_slice(&more),
            Some(Some(Err(e))) => return (finish(first, joined), Some(e), false),
            Some(None) => return (finish(first, joined), None, true),
            None => break,
        }
    }
    (finish(first, joined), None, false)
}

fn finish(first: Bytes, joined: Option<BytesMut>) -> Bytes {
    joined.map_or(first, BytesMut::freeze)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    #[derive(Clone, Copy)]
    enum Holder {
        /// Serves the object (and ranges of it) at full speed.
        Good,
        /// Headers and the first 1000 bytes at once, then a byte per 20 ms.
        Trickle,
        /// Half the object, then closes the connection.
        Cut,
        /// 404.
        Missing,
    }

    /// A one-file HTTP server on 127.0.0.1 behaving as `mode`; its address.
    async fn holder(mode: Holder, data: Arc<Vec<u8>>) -> String {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        tokio::spawn(async move {
            loop {
                let (mut sock, _) = listener.accept().await.unwrap();
                let data = data.clone();
                tokio::spawn(async move {
                    let mut head = Vec::new();
                    let mut buf = [0u8; 1024];
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                        match sock.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => head.extend_from_slice(&buf[..n]),
                        }
                    }
                    let head = String::from_utf8_lossy(&head).to_lowercase();
                    let start: usize = head
                        .lines()
                        .find_map(|l| l.strip_prefix("range: bytes="))
                        .and_then(|r| r.trim().trim_end_matches('-').parse().ok())
                        .unwrap_or(0);
                    let size = data.len();
                    let status = match (mode, start) {
                        (Holder::Missing, _) => {
                            let _ = sock
                                .write_all(b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n")
                                .await;
                            return;
                        }
                        (_, 0) => "200 OK".to_string(),
                        _ => format!(
                            "206 Partial Content\r\ncontent-range: bytes {start}-{}/{size}",
                            size - 1
                        ),
                    };
                    let resp = format!(
                        "HTTP/1.1 {status}\r\ncontent-length: {}\r\n\r\n",
                        size - start
                    );
                    if sock.write_all(resp.as_bytes()).await.is_err() {
                        return;
                    }
                    let body = &data[start..];
                    let _ = match mode {
                        Holder::Good | Holder::Missing => sock.write_all(body).await,
                        Holder::Cut => sock.write_all(&body[..body.len() / 2]).await,
                        Holder::Trickle => {
                            let _ = sock.write_all(&body[..1000]).await;
                            for b in &body[1000..] {
                                tokio::time::sleep(Duration::from_millis(20)).await;
                                if sock.write_all(&[*b]).await.is_err() {
                                    return;
                                }
                            }
                            Ok(())
                        }
                    };
                });
            }
        });
        addr
    }

    struct Setup {
        _dir: tempfile::TempDir,
        reader: HolderReader,
        store: Arc<MetaStore>,
        health: Arc<NodeHealth>,
        data: Arc<Vec<u8>>,
        object: ObjectId,
    }

    fn setup() -> Setup {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(MetaStore::open(&dir.path().join("m.redb")).unwrap());
        let health = Arc::new(NodeHealth::default());
        let policy = HolderPolicy {
            first_byte: Duration::from_secs(2),
            window: Duration::from_millis(300),
            window_bytes: 64 << 10,
        };
        let data: Vec<u8> = (0..3_000_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let object = ObjectId::of(&data);
        Setup {
            _dir: dir,
            reader: HolderReader::new(store.clone(), health.clone(), policy),
            store,
            health,
            data: Arc::new(data),
            object,
        }
    }

    async fn rows(s: &Setup, holders: &[(&str, Holder)]) -> Vec<NodeRow> {
        let mut out = Vec::new();
        for (id, mode) in holders {
            let id: elton_proto::NodeId = id.parse().unwrap();
            s.store.add_locations(&id, &[s.object]).unwrap();
            out.push(NodeRow {
                id,
                http_addr: holder(*mode, s.data.clone()).await,
            });
        }
        out
    }

    /// Everything the stream yields, and the error it ended with.
    async fn drain(mut stream: ChunkStream) -> (Vec<u8>, Option<Status>) {
        let mut out = Vec::new();
        while let Some(item) = stream.next().await {
            match item {
                Ok(c) => out.extend_from_slice(&c.data),
                Err(e) => return (out, Some(e)),
            }
        }
        (out, None)
    }

    fn node(s: &str) -> elton_proto::NodeId {
        s.parse().unwrap()
    }

    #[tokio::test]
    async fn a_trickling_holder_is_left_for_the_next_which_resumes_with_a_range() {
        let s = setup();
        let holders = rows(&s, &[("a", Holder::Trickle), ("b", Holder::Good)]).await;
        let started = Instant::now();
        let Opened::Served(size, stream) = s.reader.open(s.object, holders).await else {
            panic!("not served");
        };
        assert_eq!(size, s.data.len() as u64);
        let (bytes, err) = drain(stream).await;
        assert!(err.is_none(), "{err:?}");
        assert!(bytes == *s.data, "wrong bytes");
        assert!(started.elapsed() < Duration::from_secs(3));
        assert_eq!(s.health.counters(&node("a")).failed_transfers, 1);
        assert_eq!(s.health.counters(&node("b")).failed_transfers, 0);
        // Next time the node that failed is asked last.
        let holders = rows(&s, &[("a", Holder::Trickle), ("b", Holder::Good)]).await;
        let started = Instant::now();
        let Opened::Served(_, stream) = s.reader.open(s.object, holders).await else {
            panic!("not served");
        };
        assert!(drain(stream).await.0 == *s.data);
        assert!(started.elapsed() < Duration::from_millis(250));
    }

    #[tokio::test]
    async fn cut_and_stale_holders_are_skipped_mid_transfer() {
        let s = setup();
        let holders = rows(
            &s,
            &[
                ("a", Holder::Cut),
                ("b", Holder::Missing),
                ("c", Holder::Good),
            ],
        )
        .await;
        let Opened::Served(_, stream) = s.reader.open(s.object, holders).await else {
            panic!("not served");
        };
        let (bytes, err) = drain(stream).await;
        assert!(err.is_none(), "{err:?}");
        assert!(bytes == *s.data, "wrong bytes");
        assert_eq!(s.health.counters(&node("a")).failed_transfers, 1);
        assert_eq!(s.health.counters(&node("b")).stale_locations, 1);
        let holders = s.store.holders(&s.object).unwrap();
        assert_eq!(holders, vec![node("a"), node("c")], "b's location removed");
    }

    #[tokio::test]
    async fn the_stream_fails_only_when_every_holder_failed() {
        let s = setup();
        let holders = rows(&s, &[("a", Holder::Cut), ("b", Holder::Trickle)]).await;
        let Opened::Served(_, stream) = s.reader.open(s.object, holders).await else {
            panic!("not served");
        };
        let (bytes, err) = drain(stream).await;
        let err = err.expect("an error at the end");
        assert_eq!(err.code(), tonic::Code::Unavailable);
        assert!(err.message().contains("every holder failed"), "{err:?}");
        assert!(bytes.len() < s.data.len());
        assert!(bytes[..] == s.data[..bytes.len()], "a correct prefix");

        let holders = rows(&s, &[("m", Holder::Missing)]).await;
        assert!(matches!(
            s.reader.open(s.object, holders).await,
            Opened::Miss { last_error: None }
        ));
    }
}
