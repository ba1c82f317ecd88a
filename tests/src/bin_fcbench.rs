//! `elton-fcbench`: FastContainer's load generator (`bench/fastcontainer.sh`).
//! Sends `GET PATH` with `Host: HOST` to ADDR over keep-alive HTTP/1.1
//! connections, `--concurrency` at a time, `--requests` in all; when the
//! request numbered `--trigger-at` is sent it runs `--trigger` (a shell
//! command, in the background). Prints one JSON object: the latencies of
//! the 10,000 requests before and after the trigger (mean, p50, p99, max), the
//! longest gap between two answers around it, and errors.
//!
//!   elton-fcbench --addr 127.0.0.1:8080 --host web.test --requests 100000 \
//!       --concurrency 16 --trigger-at 50000 --trigger 'elton app set web --cpu 200%'

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Parser;
use serde_json::json;

#[derive(Parser)]
#[command(name = "elton-fcbench")]
struct Args {
    #[arg(long)]
    addr: String,
    #[arg(long)]
    host: String,
    #[arg(long, default_value = "/index.html")]
    path: String,
    #[arg(long, default_value_t = 100_000)]
    requests: u64,
    #[arg(long, default_value_t = 16)]
    concurrency: u64,
    #[arg(long, default_value_t = 50_000)]
    trigger_at: u64,
    /// Run with `sh -c` when request `--trigger-at` is sent.
    #[arg(long)]
    trigger: Option<String>,
    /// Requests on each side of the trigger the figures are taken over.
    #[arg(long, default_value_t = 10_000)]
    window: u64,
}

/// One answered request: its number, when it was sent and answered
/// (since the start), in microseconds.
#[derive(Clone, Copy)]
struct Sample {
    n: u64,
    sent_us: u64,
    done_us: u64,
}

fn main() -> ExitCode {
    match run(Args::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("elton-fcbench: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(a: Args) -> Result<()> {
    if a.concurrency == 0 || a.requests == 0 {
        bail!("--concurrency and --requests must be above 0");
    }
    let next = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let request = format!(
        "GET {} HTTP/1.1\r\nHost: {}\r\nConnection: keep-alive\r\n\r\n",
        a.path, a.host
    );
    let trigger = a.trigger.clone();
    let threads: Vec<_> = (0..a.concurrency)
        .map(|_| {
            let (next, errors, request, addr, trigger) = (
                next.clone(),
                errors.clone(),
                request.clone(),
                a.addr.clone(),
                trigger.clone(),
            );
            let (total, at) = (a.requests, a.trigger_at);
            std::thread::spawn(move || {
                let mut samples = Vec::new();
                let mut conn: Option<BufReader<TcpStream>> = None;
                loop {
                    let n = next.fetch_add(1, Ordering::Relaxed);
                    if n >= total {
                        return samples;
                    }
                    if n == at
                        && let Some(cmd) = &trigger
                    {
                        let cmd = cmd.clone();
                        std::thread::spawn(move || {
                            let _ = std::process::Command::new("sh").arg("-c").arg(cmd).status();
                        });
                    }
                    let sent = start.elapsed();
                    match one(&mut conn, &addr, &request) {
                        Ok(()) => samples.push(Sample {
                            n,
                            sent_us: micros(sent),
                            done_us: micros(start.elapsed()),
                        }),
                        Err(e) => {
                            if errors.fetch_add(1, Ordering::Relaxed) < 5 {
                                eprintln!("request {n}: {e:#}");
                            }
                            conn = None;
                        }
                    }
                }
            })
        })
        .collect();
    let mut samples: Vec<Sample> = Vec::new();
    for t in threads {
        samples.extend(
            t.join()
                .map_err(|_| anyhow::anyhow!("a load thread panicked"))?,
        );
    }
    let wall = start.elapsed();
    samples.sort_by_key(|s| s.n);
    let lat = |lo: u64, hi: u64| -> Vec<u64> {
        let mut v: Vec<u64> = samples
            .iter()
            .filter(|s| s.n >= lo && s.n < hi)
            .map(|s| s.done_us - s.sent_us)
            .collect();
        v.sort_unstable();
        v
    };
    let at = a.trigger_at;
    let before = lat(at.saturating_sub(a.window), at);
    let after = lat(at, at + a.window);
    let last = lat(a.requests.saturating_sub(a.window), a.requests);
    // The longest time without any answer, between the window before the
    // trigger and the window after it.
    let mut done: Vec<u64> = samples
        .iter()
        .filter(|s| s.n + a.window >= at && s.n < at + a.window)
        .map(|s| s.done_us)
        .collect();
    done.sort_unstable();
    let gap = done.windows(2).map(|w| w[1] - w[0]).max().unwrap_or(0);
    let summary = |v: &[u64]| {
        json!({
            "count": v.len(),
            // Closed loop: the mean is concurrency / throughput, so it
            // halves when capacity doubles, whatever the distribution's
            // shape (a shared CPU quota makes it bimodal).
            "mean_us": v.iter().sum::<u64>() / (v.len().max(1) as u64),
            "p50_us": pct(v, 50),
            "p99_us": pct(v, 99),
            "max_us": v.last().copied().unwrap_or(0),
        })
    };
    println!(
        "{}",
        json!({
            "requests": a.requests,
            "answered": samples.len(),
            "errors": errors.load(Ordering::Relaxed),
            "wall_s": wall.as_secs_f64(),
            "req_per_s": samples.len() as f64 / wall.as_secs_f64(),
            "before": summary(&before),
            "after": summary(&after),
            "last": summary(&last),
            "longest_gap_us": gap,
        })
    );
    Ok(())
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

/// The `p`-th percentile (nearest rank) of sorted `v`.
fn pct(v: &[u64], p: usize) -> u64 {
    if v.is_empty() {
        return 0;
    }
    let i = (p * v.len()).div_ceil(100).clamp(1, v.len());
    v[i - 1]
}

/// One request on the thread's connection (opened if needed); the whole
/// answer is read (its `Content-Length`), and a non-2xx status is an
/// error.
fn one(conn: &mut Option<BufReader<TcpStream>>, addr: &str, request: &str) -> Result<()> {
    if conn.is_none() {
        let s = TcpStream::connect(addr).with_context(|| format!("connecting to {addr}"))?;
        s.set_nodelay(true)?;
        s.set_read_timeout(Some(Duration::from_secs(60)))?;
        *conn = Some(BufReader::new(s));
    }
    let Some(r) = conn.as_mut() else {
        bail!("no connection");
    };
    r.get_mut().write_all(request.as_bytes())?;
    let mut line = String::new();
    r.read_line(&mut line)?;
    let status: u16 = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("bad status line {line:?}"))?;
    let mut length = 0usize;
    let mut close = false;
    loop {
        let mut h = String::new();
        if r.read_line(&mut h)? == 0 {
            bail!("connection closed in the head");
        }
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        let lower = h.to_ascii_lowercase();
        if let Some(v) = lower.strip_prefix("content-length:") {
            length = v.trim().parse().context("bad content-length")?;
        } else if lower.starts_with("connection:") && lower.contains("close") {
            close = true;
        }
    }
    let mut body = vec![0; length];
    r.read_exact(&mut body)?;
    if close {
        *conn = None;
    }
    if !(200..300).contains(&status) {
        bail!("status {status}: {}", String::from_utf8_lossy(&body));
    }
    Ok(())
}
