//! Counters exported at `GET /metrics` in Prometheus text format.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};

macro_rules! counters {
    ($($field:ident => $help:literal),* $(,)?) => {
        #[derive(Default)]
        pub struct Metrics { $(pub $field: AtomicU64,)* }

        impl Metrics {
            pub fn render(&self) -> String {
                let mut out = String::new();
                $(
                    let name = concat!("elton_slave_", stringify!($field));
                    let _ = writeln!(out, "# HELP {name} {}", $help);
                    let _ = writeln!(out, "# TYPE {name} counter");
                    let _ = writeln!(out, "{name} {}", self.$field.load(Ordering::Relaxed));
                )*
                out
            }
        }
    };
}

counters! {
    http_requests_total => "HTTP requests received.",
    http_bytes_served_total => "Body bytes sent in HTTP responses.",
    cache_hits_total => "Object reads answered from the local store.",
    cache_misses_total => "Object reads that had to fetch through the master.",
    objects_fetched_total => "Objects fetched through the master and stored.",
    fetched_bytes_total => "Bytes of objects fetched through the master.",
    objects_adopted_total => "Objects a master sent with a version record, kept and stored.",
    objects_uploaded_total => "Objects received by upload.",
    uploaded_bytes_total => "Bytes received by upload.",
    corrupt_objects_total => "Objects found corrupt on disk and quarantined.",
    scrubbed_objects_total => "Objects re-hashed by the scrub.",
    scrubbed_bytes_total => "Bytes re-hashed by the scrub.",
    scrub_repaired_total => "Corrupt objects the scrub replaced with a good copy.",
    commits_total => "Versions committed through this slave.",
    commit_tree_checks_total => "Commits whose tree this slave checked itself (the writer did not list what it stored here).",
    backup_copies_total => "Backup copies made at the master's request (objects fetched or confirmed).",
    backup_failures_total => "Backup copies the master asked for that failed.",
}

pub fn inc(c: &AtomicU64, by: u64) {
    c.fetch_add(by, Ordering::Relaxed);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_prometheus_text() {
        let m = Metrics::default();
        inc(&m.cache_hits_total, 3);
        let text = m.render();
        assert!(text.contains(
            "# TYPE elton_slave_cache_hits_total counter\nelton_slave_cache_hits_total 3\n"
        ));
    }
}
