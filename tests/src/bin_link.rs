//! `elton-link LISTEN TARGET [--latency-ms N] [--rate BYTES_PER_SEC]`:
//! the test harness's WAN link as a process, for benchmark scripts. Prints
//! `up=<bytes> down=<bytes>` to stdout every second until killed.

use std::process::ExitCode;
use std::time::Duration;

use elton_tests::link::{Link, Way};

fn usage() -> ExitCode {
    eprintln!("usage: elton-link LISTEN TARGET [--latency-ms N] [--rate BYTES_PER_SEC]");
    ExitCode::from(2)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() < 2 {
        return usage();
    }
    let (Ok(listen), Ok(target)) = (args[0].parse(), args[1].parse()) else {
        return usage();
    };
    let mut latency = Duration::ZERO;
    let mut rate = None;
    let mut rest = args[2..].iter();
    while let Some(flag) = rest.next() {
        let Some(value) = rest.next().and_then(|v| v.parse::<u64>().ok()) else {
            return usage();
        };
        match flag.as_str() {
            "--latency-ms" => latency = Duration::from_millis(value),
            "--rate" => rate = Some(value),
            _ => return usage(),
        }
    }
    let link = match Link::start_on(listen, target) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("elton-link: {e}");
            return ExitCode::FAILURE;
        }
    };
    link.set_latency(latency);
    link.set_bandwidth(rate);
    loop {
        println!("up={} down={}", link.bytes(Way::Up), link.bytes(Way::Down));
        std::thread::sleep(Duration::from_secs(1));
    }
}
