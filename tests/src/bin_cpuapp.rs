//! `elton-cpuapp`: a stand-in web app whose requests cost CPU, for
//! FastContainer's scale-out experiment (`bench/fastcontainer.sh` (c)).
//! It listens on 127.0.0.1:$PORT, answers every `GET` over keep-alive
//! HTTP/1.1 with the file `--file` of its working directory (the app's
//! volume), after spending `--work-us` microseconds of CPU on it, measured
//! as the thread's own CPU time: so a request costs the same CPU however
//! often the app's cgroup quota pauses it, and the app's throughput is
//! its CPU share divided by that cost, as for a real CPU-bound app.
//!
//!   PORT=8080 elton-cpuapp --work-us 200 --file index.html

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::Parser;
use rustix::time::{ClockId, clock_gettime};

#[derive(Parser)]
#[command(name = "elton-cpuapp")]
struct Args {
    /// CPU time each request costs, in microseconds.
    #[arg(long, default_value_t = 200)]
    work_us: u64,
    /// The file answered, relative to the working directory.
    #[arg(long, default_value = "index.html")]
    file: String,
}

fn main() -> ExitCode {
    match run(Args::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("elton-cpuapp: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(a: Args) -> Result<()> {
    let port: u16 = std::env::var("PORT")
        .context("PORT is not set")?
        .parse()
        .context("PORT is not a port number")?;
    let body = std::fs::read(&a.file).with_context(|| format!("reading {}", a.file))?;
    let mut answer = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    answer.extend_from_slice(&body);
    let answer = Arc::new(answer);
    let listener = TcpListener::bind(("127.0.0.1", port))
        .with_context(|| format!("binding 127.0.0.1:{port}"))?;
    let work = Duration::from_micros(a.work_us);
    for conn in listener.incoming() {
        let Ok(conn) = conn else { continue };
        let answer = answer.clone();
        std::thread::spawn(move || {
            // A connection that breaks ends only its own thread.
            let _ = serve(conn, &answer, work);
        });
    }
    bail!("the listener stopped")
}

/// Answers the requests of one keep-alive connection until it closes.
fn serve(conn: TcpStream, answer: &[u8], work: Duration) -> Result<()> {
    conn.set_nodelay(true)?;
    let mut writer = conn.try_clone()?;
    let mut reader = BufReader::new(conn);
    let mut line = String::new();
    loop {
        // The request line and headers, up to the blank line; requests
        // carry no body (GET).
        let mut got_any = false;
        loop {
            line.clear();
            if reader.read_line(&mut line)? == 0 {
                return Ok(());
            }
            if line == "\r\n" || line == "\n" {
                break;
            }
            got_any = true;
        }
        if !got_any {
            continue;
        }
        spend_cpu(work);
        writer.write_all(answer)?;
    }
}

/// Spins until this thread has used `work` more CPU time.
fn spend_cpu(work: Duration) {
    let now = || {
        let t = clock_gettime(ClockId::ThreadCPUTime);
        Duration::new(t.tv_sec as u64, t.tv_nsec as u32)
    };
    let until = now() + work;
    let mut x = 0u64;
    while now() < until {
        // Some work between clock reads, kept by black_box.
        for i in 0..256u64 {
            x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(i));
        }
    }
    std::hint::black_box(x);
}
