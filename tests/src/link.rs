//! A user-space WAN link on loopback: a TCP proxy that forwards to a
//! target, counts the bytes going each way, and can add latency, limit
//! bandwidth, cut the link (close every connection and refuse new ones)
//! until it is restored, or stall it (a black hole: connections stay open
//! and accepted, nothing moves, like a route that silently drops packets).
//!
//! Tests point a master's peer URL at [`Link::url`], so every byte that
//! crosses "the WAN" goes through here and is counted. Threads, not async:
//! it works the same from `#[test]` functions and from the `elton-link`
//! binary, and a handful of connections is all it ever carries.

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

/// Largest piece read and forwarded at once.
const CHUNK: usize = 16 << 10;
/// Burst a rate-limited direction may run ahead of its schedule.
const PACE_SLACK: Duration = Duration::from_millis(2);

/// Which way bytes go through the link.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Way {
    /// From the connecting side to the target.
    Up,
    /// From the target back to the connecting side.
    Down,
}

#[derive(Default)]
struct Pacer {
    /// When the link is free to send the next byte.
    next_free: Option<Instant>,
}

struct Inner {
    target: SocketAddr,
    up: AtomicU64,
    down: AtomicU64,
    latency_us: AtomicU64,
    /// Bytes per second per direction; 0 = unlimited.
    rate: AtomicU64,
    cut: AtomicBool,
    stalled: AtomicBool,
    stopped: AtomicBool,
    /// Both sockets of every live connection (by id), to close them on a cut.
    conns: Mutex<Vec<(u64, TcpStream, TcpStream)>>,
    next_conn: AtomicU64,
    pacers: [Mutex<Pacer>; 2],
}

impl Inner {
    fn counter(&self, way: Way) -> &AtomicU64 {
        match way {
            Way::Up => &self.up,
            Way::Down => &self.down,
        }
    }

    /// Holds the caller until `n` more bytes fit in the bandwidth limit.
    /// The limit is per direction and shared by all connections, as on a
    /// real link.
    fn pace(&self, way: Way, n: usize) {
        let rate = self.rate.load(Ordering::Relaxed);
        if rate == 0 {
            return;
        }
        let wait_until = {
            let mut p = self.pacers[way as usize]
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            let now = Instant::now();
            let start = p.next_free.filter(|t| *t > now).unwrap_or(now);
            let end = start + Duration::from_secs_f64(n as f64 / rate as f64);
            p.next_free = Some(end);
            end
        };
        // Sleeping for every 16 KiB piece would add the timer's overshoot
        // (tens of µs) each time and hold one connection well below the rate;
        // sleeping only once the schedule runs ahead by a few milliseconds
        // keeps the average exact with bursts of at most that much.
        let now = Instant::now();
        if wait_until > now + PACE_SLACK {
            thread::sleep(wait_until - now - PACE_SLACK);
        }
    }

    fn close_all(&self) {
        let conns = std::mem::take(&mut *self.conns.lock().unwrap_or_else(|e| e.into_inner()));
        for (_, a, b) in conns {
            let _ = a.shutdown(Shutdown::Both);
            let _ = b.shutdown(Shutdown::Both);
        }
    }
}

/// A running link; stops (and closes its connections) on drop.
pub struct Link {
    inner: Arc<Inner>,
    addr: SocketAddr,
}

impl Link {
    /// Listens on an ephemeral loopback port and forwards to `target`.
    pub fn start(target: SocketAddr) -> io::Result<Self> {
        Self::start_on("127.0.0.1:0".parse().map_err(io::Error::other)?, target)
    }

    pub fn start_on(listen: SocketAddr, target: SocketAddr) -> io::Result<Self> {
        let listener = TcpListener::bind(listen)?;
        let addr = listener.local_addr()?;
        let inner = Arc::new(Inner {
            target,
            up: AtomicU64::new(0),
            down: AtomicU64::new(0),
            latency_us: AtomicU64::new(0),
            rate: AtomicU64::new(0),
            cut: AtomicBool::new(false),
            stalled: AtomicBool::new(false),
            stopped: AtomicBool::new(false),
            conns: Mutex::new(Vec::new()),
            next_conn: AtomicU64::new(0),
            pacers: [Mutex::new(Pacer::default()), Mutex::new(Pacer::default())],
        });
        let i = inner.clone();
        thread::Builder::new()
            .name(format!("link-{}", addr.port()))
            .spawn(move || accept_loop(listener, i))?;
        Ok(Self { inner, addr })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:<port>`, for a peer URL.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn bytes(&self, way: Way) -> u64 {
        self.inner.counter(way).load(Ordering::Relaxed)
    }

    /// Bytes forwarded in both directions.
    pub fn total(&self) -> u64 {
        self.bytes(Way::Up) + self.bytes(Way::Down)
    }

    /// Delay added to every piece of data, each way.
    pub fn set_latency(&self, d: Duration) {
        self.inner
            .latency_us
            .store(d.as_micros() as u64, Ordering::Relaxed);
    }

    /// Bandwidth per direction in bytes per second; `None` is unlimited.
    pub fn set_bandwidth(&self, bytes_per_sec: Option<u64>) {
        self.inner
            .rate
            .store(bytes_per_sec.unwrap_or(0), Ordering::Relaxed);
    }

    /// Closes every connection and refuses new ones until [`Link::restore`].
    pub fn cut(&self) {
        self.inner.cut.store(true, Ordering::SeqCst);
        self.inner.close_all();
    }

    pub fn restore(&self) {
        self.inner.cut.store(false, Ordering::SeqCst);
    }

    /// Holds every byte (both ways, all connections) until un-stalled;
    /// nothing is closed, so only timeouts notice.
    pub fn set_stalled(&self, stalled: bool) {
        self.inner.stalled.store(stalled, Ordering::SeqCst);
    }

    pub fn is_cut(&self) -> bool {
        self.inner.cut.load(Ordering::SeqCst)
    }

    /// Number of connections currently forwarded.
    pub fn connections(&self) -> usize {
        self.inner
            .conns
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .len()
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        self.inner.stopped.store(true, Ordering::SeqCst);
        self.inner.close_all();
        // Wake the accept loop so it sees `stopped`.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_millis(200));
    }
}

fn accept_loop(listener: TcpListener, inner: Arc<Inner>) {
    for conn in listener.incoming() {
        if inner.stopped.load(Ordering::SeqCst) {
            return;
        }
        let Ok(client) = conn else { continue };
        if inner.cut.load(Ordering::SeqCst) {
            // Refused: closed at once, as an unreachable peer.
            let _ = client.shutdown(Shutdown::Both);
            continue;
        }
        let i = inner.clone();
        let _ = thread::Builder::new()
            .name("link-conn".into())
            .spawn(move || {
                if let Err(e) = forward(client, &i) {
                    tracing_free_log(&format!("link: {e}"));
                }
            });
    }
}

/// The harness has no logger; errors of single connections only matter
/// when debugging, so they go to stderr when `ELTON_LINK_DEBUG` is set.
fn tracing_free_log(msg: &str) {
    if std::env::var_os("ELTON_LINK_DEBUG").is_some() {
        eprintln!("{msg}");
    }
}

fn forward(client: TcpStream, inner: &Arc<Inner>) -> io::Result<()> {
    let server = TcpStream::connect_timeout(&inner.target, Duration::from_secs(5))?;
    client.set_nodelay(true)?;
    server.set_nodelay(true)?;
    let id = inner.next_conn.fetch_add(1, Ordering::Relaxed);
    {
        let mut conns = inner.conns.lock().unwrap_or_else(|e| e.into_inner());
        if inner.cut.load(Ordering::SeqCst) {
            let _ = client.shutdown(Shutdown::Both);
            let _ = server.shutdown(Shutdown::Both);
            return Ok(());
        }
        conns.push((id, client.try_clone()?, server.try_clone()?));
    }
    let up = pump(
        client.try_clone()?,
        server.try_clone()?,
        Way::Up,
        inner.clone(),
    )?;
    let down = pump(
        server.try_clone()?,
        client.try_clone()?,
        Way::Down,
        inner.clone(),
    )?;
    let _ = up.join();
    let _ = down.join();
    inner
        .conns
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .retain(|(c, _, _)| *c != id);
    Ok(())
}

/// Copies `from` → `to` in one direction: a reader paces and stamps each
/// piece with its delivery time, a writer delivers it then. Latency thus
/// delays data without limiting throughput (pieces are in flight together).
fn pump(
    mut from: TcpStream,
    mut to: TcpStream,
    way: Way,
    inner: Arc<Inner>,
) -> io::Result<thread::JoinHandle<()>> {
    let (tx, rx) = mpsc::channel::<(Instant, Vec<u8>)>();
    let reader_inner = inner.clone();
    thread::Builder::new()
        .name("link-read".into())
        .spawn(move || {
            let mut buf = vec![0u8; CHUNK];
            loop {
                match from.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        if reader_inner.cut.load(Ordering::SeqCst) {
                            break;
                        }
                        while reader_inner.stalled.load(Ordering::SeqCst)
                            && !reader_inner.cut.load(Ordering::SeqCst)
                            && !reader_inner.stopped.load(Ordering::SeqCst)
                        {
                            thread::sleep(Duration::from_millis(10));
                        }
                        reader_inner.pace(way, n);
                        let latency =
                            Duration::from_micros(reader_inner.latency_us.load(Ordering::Relaxed));
                        if tx
                            .send((Instant::now() + latency, buf[..n].to_vec()))
                            .is_err()
                        {
                            break;
                        }
                    }
                }
            }
            // Dropping `tx` lets the writer finish what is queued, then
            // half-close.
        })?;
    thread::Builder::new()
        .name("link-write".into())
        .spawn(move || {
            for (due, data) in rx {
                let now = Instant::now();
                if due > now {
                    thread::sleep(due - now);
                }
                if inner.cut.load(Ordering::SeqCst) || to.write_all(&data).is_err() {
                    let _ = to.shutdown(Shutdown::Both);
                    return;
                }
                inner
                    .counter(way)
                    .fetch_add(data.len() as u64, Ordering::Relaxed);
            }
            let _ = to.shutdown(Shutdown::Write);
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn echo_server() -> SocketAddr {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        thread::spawn(move || {
            for c in l.incoming() {
                let Ok(mut c) = c else { continue };
                thread::spawn(move || {
                    let mut r = c.try_clone().unwrap();
                    let _ = io::copy(&mut r, &mut c);
                });
            }
        });
        addr
    }

    fn roundtrip(link: &Link, data: &[u8]) -> io::Result<Vec<u8>> {
        let mut s = TcpStream::connect(link.addr())?;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        s.write_all(data)?;
        let mut back = vec![0u8; data.len()];
        s.read_exact(&mut back)?;
        Ok(back)
    }

    #[test]
    fn forwards_counts_limits_cuts_and_restores() {
        let link = Link::start(echo_server()).unwrap();
        let data = vec![7u8; 100_000];
        assert_eq!(roundtrip(&link, &data).unwrap(), data);
        assert_eq!(link.bytes(Way::Up), 100_000);
        // The echo's bytes are counted once the writer delivered them.
        let deadline = Instant::now() + Duration::from_secs(5);
        while link.bytes(Way::Down) < 100_000 && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(link.bytes(Way::Down), 100_000);

        link.set_bandwidth(Some(200_000));
        let t = Instant::now();
        roundtrip(&link, &vec![1u8; 100_000]).unwrap();
        assert!(
            t.elapsed() >= Duration::from_millis(400),
            "{:?}",
            t.elapsed()
        );
        link.set_bandwidth(None);

        link.set_latency(Duration::from_millis(100));
        let t = Instant::now();
        roundtrip(&link, b"ping").unwrap();
        assert!(t.elapsed() >= Duration::from_millis(200));
        link.set_latency(Duration::ZERO);

        // A connection open across the cut is closed; new ones are refused.
        let mut open = TcpStream::connect(link.addr()).unwrap();
        open.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        open.write_all(b"x").unwrap();
        let mut one = [0u8; 1];
        open.read_exact(&mut one).unwrap();
        link.cut();
        assert!(matches!(open.read(&mut one), Ok(0) | Err(_)));
        assert!(roundtrip(&link, b"hello").is_err());
        link.restore();
        assert_eq!(roundtrip(&link, b"hello").unwrap(), b"hello");

        // A stall holds data without closing anything; it flows afterwards.
        let mut s = TcpStream::connect(link.addr()).unwrap();
        link.set_stalled(true);
        s.set_read_timeout(Some(Duration::from_millis(300)))
            .unwrap();
        s.write_all(b"held").unwrap();
        let mut four = [0u8; 4];
        assert!(
            s.read_exact(&mut four).is_err(),
            "nothing moves while stalled"
        );
        link.set_stalled(false);
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.read_exact(&mut four).unwrap();
        assert_eq!(&four, b"held");
    }
}
