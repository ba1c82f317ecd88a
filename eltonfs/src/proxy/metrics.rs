//! The proxy's per-app counters, served at `/metrics` in the Prometheus
//! text format (see `docs/operations.md`, "FastContainer proxy").

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::time::Duration;

/// Latency bucket bounds, in seconds (cold starts land in the upper ones).
const BUCKETS: [f64; 8] = [0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0];

#[derive(Default)]
struct AppCounters {
    /// By status code.
    requests: BTreeMap<u16, u64>,
    seconds_sum: f64,
    /// Cumulative counts per bucket of [`BUCKETS`].
    buckets: [u64; BUCKETS.len()],
    count: u64,
    starts: u64,
    start_failures: u64,
    idle_stops: u64,
    scale_outs: u64,
    scale_ups: u64,
}

#[derive(Default)]
pub struct Metrics {
    apps: Mutex<BTreeMap<String, AppCounters>>,
}

impl Metrics {
    fn with(&self, app: &str, f: impl FnOnce(&mut AppCounters)) {
        let mut apps = self
            .apps
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        f(apps.entry(app.to_string()).or_default());
    }

    pub fn request(&self, app: &str, status: u16, took: Duration) {
        let s = took.as_secs_f64();
        self.with(app, |c| {
            *c.requests.entry(status).or_default() += 1;
            c.seconds_sum += s;
            c.count += 1;
            for (i, le) in BUCKETS.iter().enumerate() {
                if s <= *le {
                    c.buckets[i] += 1;
                }
            }
        });
    }

    pub fn start(&self, app: &str, ok: bool) {
        self.with(app, |c| {
            c.starts += 1;
            if !ok {
                c.start_failures += 1;
            }
        });
    }

    pub fn idle_stop(&self, app: &str) {
        self.with(app, |c| c.idle_stops += 1);
    }

    /// A scaling decision carried out: `"out"` (granted by the group) or
    /// `"up"` (a quota raised here).
    pub fn scale(&self, app: &str, how: &str) {
        self.with(app, |c| match how {
            "out" => c.scale_outs += 1,
            _ => c.scale_ups += 1,
        });
    }

    /// The text exposition; `running` is each app's instances now.
    pub fn render(&self, running: &BTreeMap<String, usize>) -> String {
        let apps = self
            .apps
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut out = String::new();
        let _ = writeln!(out, "# TYPE elton_proxy_requests_total counter");
        for (app, c) in apps.iter() {
            for (code, n) in &c.requests {
                let _ = writeln!(
                    out,
                    "elton_proxy_requests_total{{app=\"{app}\",code=\"{code}\"}} {n}"
                );
            }
        }
        let _ = writeln!(out, "# TYPE elton_proxy_request_seconds histogram");
        for (app, c) in apps.iter() {
            for (le, n) in BUCKETS.iter().zip(c.buckets) {
                let _ = writeln!(
                    out,
                    "elton_proxy_request_seconds_bucket{{app=\"{app}\",le=\"{le}\"}} {n}"
                );
            }
            let _ = writeln!(
                out,
                "elton_proxy_request_seconds_bucket{{app=\"{app}\",le=\"+Inf\"}} {}",
                c.count
            );
            let _ = writeln!(
                out,
                "elton_proxy_request_seconds_sum{{app=\"{app}\"}} {}",
                c.seconds_sum
            );
            let _ = writeln!(
                out,
                "elton_proxy_request_seconds_count{{app=\"{app}\"}} {}",
                c.count
            );
        }
        for (name, help, get) in [
            (
                "starts_total",
                "counter",
                (|c: &AppCounters| c.starts) as fn(&AppCounters) -> u64,
            ),
            ("start_failures_total", "counter", |c| c.start_failures),
            ("idle_stops_total", "counter", |c| c.idle_stops),
            ("scale_outs_total", "counter", |c| c.scale_outs),
            ("scale_ups_total", "counter", |c| c.scale_ups),
        ] {
            let _ = writeln!(out, "# TYPE elton_proxy_{name} {help}");
            for (app, c) in apps.iter() {
                let _ = writeln!(out, "elton_proxy_{name}{{app=\"{app}\"}} {}", get(c));
            }
        }
        let _ = writeln!(out, "# TYPE elton_proxy_instances gauge");
        for (app, n) in running {
            let _ = writeln!(out, "elton_proxy_instances{{app=\"{app}\"}} {n}");
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_and_buckets_per_app() {
        let m = Metrics::default();
        m.request("web", 200, Duration::from_millis(2));
        m.request("web", 200, Duration::from_millis(300));
        m.request("web", 502, Duration::from_millis(3));
        m.start("web", true);
        let text = m.render(&BTreeMap::from([("web".to_string(), 1)]));
        assert!(text.contains("elton_proxy_requests_total{app=\"web\",code=\"200\"} 2"));
        assert!(text.contains("elton_proxy_requests_total{app=\"web\",code=\"502\"} 1"));
        assert!(text.contains("elton_proxy_request_seconds_bucket{app=\"web\",le=\"0.005\"} 2"));
        assert!(text.contains("elton_proxy_request_seconds_bucket{app=\"web\",le=\"0.5\"} 3"));
        assert!(text.contains("elton_proxy_request_seconds_count{app=\"web\"} 3"));
        assert!(text.contains("elton_proxy_starts_total{app=\"web\"} 1"));
        assert!(text.contains("elton_proxy_instances{app=\"web\"} 1"));
    }
}
