//! The slave's HTTP server: an accept loop over hyper connections (HTTP/1.1
//! and h2c on one port, as `axum::serve` offered) that closes connections
//! past the deadlines of [`ConnClock`] — a client that never finishes its
//! request head, or keeps a connection unused, no longer holds a task and a
//! file descriptor forever. The router is unchanged; graceful shutdown
//! stops accepting, asks every connection to finish its requests, and
//! waits for them.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::pin::{Pin, pin};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, watch};

use crate::SlaveError;
use crate::conn_clock::{ConnClock, Expired, HttpTimeouts};

/// How long an idle connection asked to close gracefully (HTTP/2 GOAWAY)
/// may take before it is dropped.
const CLOSE_GRACE: Duration = Duration::from_secs(1);
/// Pause after an accept error that is not about one connection (e.g. out
/// of file descriptors), so the loop does not spin.
const ACCEPT_BACKOFF: Duration = Duration::from_secs(1);

/// Serves `router` on `listener` until `shutdown` completes, then waits
/// for the open connections to finish.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    timeouts: HttpTimeouts,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), SlaveError> {
    // Dropping `stop_tx` asks every connection to close gracefully; each
    // holds a `done_rx`, so `done_tx.closed()` resolves once all are gone.
    let (stop_tx, stop_rx) = watch::channel(());
    let (done_tx, done_rx) = watch::channel(());
    let mut shutdown = pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            r = listener.accept() => r,
            () = &mut shutdown => break,
        };
        let sock = match accepted {
            Ok((sock, _)) => sock,
            Err(e) if per_connection(&e) => continue,
            Err(e) => {
                tracing::error!("accepting HTTP connections: {e}");
                tokio::time::sleep(ACCEPT_BACKOFF).await;
                continue;
            }
        };
        tokio::spawn(connection(
            sock,
            router.clone(),
            timeouts,
            stop_rx.clone(),
            done_rx.clone(),
        ));
    }
    drop(listener);
    drop(stop_tx);
    drop(done_rx);
    done_tx.closed().await;
    Ok(())
}

/// Errors of one connection that was gone before it was accepted.
fn per_connection(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    )
}

/// A connection's clock, shared by its socket, its requests and its watcher.
struct Watch {
    clock: Mutex<ConnClock>,
    /// Signalled when the deadline may have moved earlier.
    changed: Notify,
}

impl Watch {
    fn clock(&self) -> MutexGuard<'_, ConnClock> {
        // Plain state: a panic while holding the lock leaves it usable.
        self.clock.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Marks a request in flight until dropped (with its response body).
struct InFlight(Arc<Watch>);

impl InFlight {
    fn new(watch: Arc<Watch>) -> Self {
        watch.clock().request_started();
        Self(watch)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.clock().request_finished(Instant::now());
        self.0.changed.notify_one();
    }
}

async fn connection(
    sock: TcpStream,
    router: Router,
    timeouts: HttpTimeouts,
    mut stop: watch::Receiver<()>,
    _done: watch::Receiver<()>,
) {
    let watch = Arc::new(Watch {
        clock: Mutex::new(ConnClock::new(timeouts, Instant::now())),
        changed: Notify::new(),
    });
    let io = TokioIo::new(Watched {
        inner: sock,
        watch: watch.clone(),
    });
    let tower = TowerToHyperService::new(router);
    let requests = watch.clone();
    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
        let in_flight = InFlight::new(requests.clone());
        let call = hyper::service::Service::call(&tower, req);
        async move {
            let resp: Response<Body> = call.await?;
            // The request counts as in flight until its body is sent.
            Ok::<_, Infallible>(resp.map(|body| {
                Body::new(body.map_frame(move |frame| {
                    let _ = &in_flight;
                    frame
                }))
            }))
        }
    });
    let mut builder = auto::Builder::new(TokioExecutor::new());
    // Deadlines are ConnClock's; hyper's own header timer would also close
    // keep-alive connections after the (shorter) header timeout.
    builder.http1().header_read_timeout(None);
    let mut conn = pin!(builder.serve_connection(io, service));
    let mut stopping = false;
    let mut closing_since: Option<Instant> = None;
    loop {
        let deadline = watch.clock().deadline();
        let wake = match (closing_since, deadline) {
            (Some(t), _) => t + CLOSE_GRACE,
            (None, Some(d)) => d,
            // Busy: look again later (a finishing request also notifies).
            (None, None) => Instant::now() + timeouts.header_read,
        };
        tokio::select! {
            result = conn.as_mut() => {
                if let Err(e) = result {
                    tracing::debug!("HTTP connection: {e}");
                }
                return;
            }
            changed = stop.changed(), if !stopping => {
                // Err: the sender is gone, which is the shutdown signal.
                let _ = changed;
                stopping = true;
                conn.as_mut().graceful_shutdown();
            }
            () = watch.changed.notified() => {}
            () = tokio::time::sleep_until(wake.into()) => {
                if closing_since.is_some() {
                    tracing::debug!("HTTP connection did not close gracefully; dropped");
                    return;
                }
                match watch.clock().expired(Instant::now()) {
                    // Nothing in flight: dropping loses no request.
                    Some(Expired::Head) => {
                        tracing::debug!("HTTP connection closed: request head not received in time");
                        return;
                    }
                    Some(Expired::Idle) => {
                        closing_since = Some(Instant::now());
                        conn.as_mut().graceful_shutdown();
                    }
                    None => {}
                }
            }
        }
    }
}

/// The client socket, reporting what it reads to the connection's clock.
struct Watched {
    inner: TcpStream,
    watch: Arc<Watch>,
}

impl AsyncRead for Watched {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = polled {
            let read = &buf.filled()[before..];
            if !read.is_empty() && self.watch.clock().bytes_read(read, Instant::now()) {
                self.watch.changed.notify_one();
            }
        }
        polled
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::routing::get;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    const HEAD: Duration = Duration::from_millis(300);
    const IDLE: Duration = Duration::from_millis(900);

    async fn start() -> (
        u16,
        tokio::sync::oneshot::Sender<()>,
        tokio::task::JoinHandle<()>,
    ) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let router = Router::new().route("/", get(|| async { "hello" }));
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let timeouts = HttpTimeouts {
            header_read: HEAD,
            idle: IDLE,
        };
        let server = tokio::spawn(async move {
            serve(listener, router, timeouts, async {
                let _ = rx.await;
            })
            .await
            .unwrap();
        });
        (port, tx, server)
    }

    /// Reads until the server closes the connection; how long that took.
    async fn time_to_close(s: &mut TcpStream) -> Duration {
        let t = Instant::now();
        let mut buf = [0u8; 4096];
        loop {
            match tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) => return t.elapsed(),
                Ok(Ok(_)) => {}
                Err(_) => panic!("connection still open after 5 s"),
            }
        }
    }

    async fn hello(s: &mut TcpStream) -> String {
        s.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
            .await
            .unwrap();
        let mut buf = vec![0u8; 4096];
        let mut got = Vec::new();
        while !got.ends_with(b"hello") {
            let n = s.read(&mut buf).await.unwrap();
            assert!(n > 0, "closed early: {}", String::from_utf8_lossy(&got));
            got.extend_from_slice(&buf[..n]);
        }
        String::from_utf8_lossy(&got).into_owned()
    }

    #[tokio::test]
    async fn stalled_heads_are_cut_and_idle_keep_alive_lasts_the_idle_timeout() {
        let (port, stop, server) = start().await;
        let mut partial = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        partial.write_all(b"GET /v1/obj").await.unwrap();
        let mut silent = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        let mut kept = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        assert!(hello(&mut kept).await.starts_with("HTTP/1.1 200"));

        let (p, s) = tokio::join!(time_to_close(&mut partial), time_to_close(&mut silent));
        for t in [p, s] {
            assert!(t < HEAD + Duration::from_millis(300), "{t:?}");
        }
        // Past the header timeout the used connection is still open...
        assert!(hello(&mut kept).await.starts_with("HTTP/1.1 200"));
        // ...and closes once unused for the idle timeout.
        let t = time_to_close(&mut kept).await;
        assert!(t >= IDLE - Duration::from_millis(50), "{t:?}");
        assert!(t < IDLE + CLOSE_GRACE + Duration::from_millis(300), "{t:?}");

        let _ = stop.send(());
        tokio::time::timeout(Duration::from_secs(5), server)
            .await
            .expect("graceful shutdown")
            .unwrap();
    }

    #[tokio::test]
    async fn a_head_started_after_keep_alive_gets_the_header_timeout() {
        let (port, stop, _server) = start().await;
        let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        hello(&mut s).await;
        s.write_all(b"GET / HT").await.unwrap();
        let t = time_to_close(&mut s).await;
        assert!(t < HEAD + Duration::from_millis(300), "{t:?}");
        let _ = stop.send(());
    }
}
