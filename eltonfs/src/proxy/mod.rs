//! `elton proxy`: FastContainer's per-host HTTP proxy. It routes each
//! request by `Host` to an app of the group's configuration DB; with no
//! instance ready it starts one (one start per app at a time, however many
//! requests wait), holds the requests until the instance's port accepts,
//! and forwards them through a pooled client. Idle instances stop.
//!
//! - [`admission`] (pure): forward, start, wait or turn away.
//! - [`balance`] (pure): which ready instance gets a request.
//! - [`instance`]: the [`instance::Runtime`] trait and the process runtime;
//!   [`docker`] the Docker one, [`by_image`] picks per app, [`mounts`]
//!   the read-only mounts both run apps from.
//! - [`metrics`]: per-app counters for `/metrics`.
//! - [`group`]: what the proxy asks of the control group.
//! - [`registry`]: this host's part of the cluster — reporting its
//!   instances, following its assignments, measuring load and asking for
//!   scale-out or raising quotas (scale-up).
//!
//! The apps and the instance registry are read on the control group's
//! direct read path (no log entry); an app's ready instances on other
//! hosts (from the registry) take requests too, the least busy first.
//!
//! Errors become HTTP answers here only: 404 unknown host, 503 (with
//! `Retry-After`) a full queue, 504 an instance that does not listen
//! within the readiness deadline, 502 an instance that exited (naming the
//! reason from its output) or that cannot be reached.

pub mod admission;
pub mod balance;
pub mod by_image;
pub mod docker;
pub mod group;
pub mod instance;
pub mod metrics;
pub mod mounts;
pub mod registry;
pub mod unreachable;

use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::Result;
use bytes::Bytes;
use elton_control::apps::App;
use elton_control::apps::config::by_host;
use elton_control::apps::fleet::Fleet;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Body as _, Incoming};
use hyper::header::{CONTENT_LENGTH, HOST, HeaderMap, HeaderValue, RETRY_AFTER};
use hyper::{Request, Response, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::sync::watch;

use admission::{Admit, Phase};
use balance::Candidate;
use group::Group;
use instance::{Instance, Runtime};
use metrics::Metrics;
use unreachable::Unreachable;

type Body = BoxBody<Bytes, hyper::Error>;

/// Request bodies up to this size are read before they are forwarded, so
/// that the request can go again if its instance refused the connection.
pub const REPLAYABLE_BODY_BYTES: usize = 64 * 1024;

/// How often a starting instance's port is tried.
const READY_POLL: Duration = Duration::from_millis(2);
/// How often idle instances are looked for.
const IDLE_TICK: Duration = Duration::from_millis(250);
/// How long after a failed start of an assigned instance the next is
/// tried.
const EXTRA_RETRY: Duration = Duration::from_secs(2);
/// A waiting request gives up this long after the readiness deadline, so
/// the start's own verdict (which names the reason) reaches it first.
const WAIT_GRACE: Duration = Duration::from_secs(1);

#[derive(Debug, Clone)]
pub struct Settings {
    /// An instance that does not listen within this is given up (504).
    pub ready_timeout: Duration,
    /// Requests held per app while it starts; more get 503.
    pub queue: usize,
    /// How often the configuration is read again.
    pub refresh: Duration,
    /// This host's name in the instance registry.
    pub host: String,
    /// The address other hosts' proxies reach this host's instances at.
    pub advertise: IpAddr,
    /// How often this host's instances are reported while it runs any
    /// (and at once on every change).
    pub report_every: Duration,
    /// Requests in flight on one instance that count as 100% of its
    /// share (the in-flight half of the scaling threshold).
    pub target_in_flight: usize,
}

/// A started instance, the configuration generation (`App::updated`) it
/// runs, and a count of the requests forwarded to it (each holds a clone
/// of `users` until its answer's head arrives).
struct Slot {
    instance: Box<dyn Instance>,
    generation: u64,
    /// The volume version it runs.
    version: u64,
    users: Arc<()>,
    /// The last CPU sample (when, usage in µs) and the use it gave, in
    /// percent of its quota.
    cpu_sample: Option<(Instant, u64)>,
    cpu_percent: u32,
}

impl Slot {
    fn new(instance: Box<dyn Instance>, app: &App) -> Self {
        Self {
            instance,
            generation: app.updated,
            version: app.spec.version,
            users: Arc::new(()),
            cpu_sample: None,
            cpu_percent: 0,
        }
    }

    fn in_flight(&self) -> usize {
        Arc::strong_count(&self.users) - 1
    }
}

/// One app's instance on this host and the requests waiting for it.
struct Run {
    phase: Phase,
    instance: Option<Slot>,
    /// A newer generation's instance is starting to replace `instance`.
    replacing: bool,
    /// A generation whose replacement failed: not tried again until the
    /// app changes or the instance stops.
    replace_failed: Option<u64>,
    /// Replaced instances, stopped once nothing is in flight on them.
    draining: Vec<Slot>,
    /// Instances beyond the first, started for this host's assignments
    /// (scale-out); they take requests beside `instance`.
    extra: Vec<Slot>,
    /// Extra instances being started.
    extra_starting: usize,
    /// When an extra instance last failed to start: the next try waits
    /// [`EXTRA_RETRY`].
    extra_failed: Option<Instant>,
    waiting: usize,
    last_request: Instant,
    /// Numbers the starts; a waiter knows whether a failure is its start's.
    start_seq: u64,
    /// The last start's failure: its status and reason.
    failure: Option<(u64, StatusCode, String)>,
}

struct AppRun {
    run: Mutex<Run>,
    /// Bumped on every phase change; waiters watch it.
    changed: watch::Sender<u64>,
}

impl AppRun {
    fn lock(&self) -> std::sync::MutexGuard<'_, Run> {
        self.run.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn bump(&self) {
        self.changed.send_modify(|n| *n += 1);
    }
}

pub struct Proxy {
    settings: Settings,
    group: Arc<dyn Group>,
    /// The apps, and when the read that gave them started.
    apps: Mutex<(BTreeMap<String, App>, Option<Instant>)>,
    /// The instance registry and assignments, as last read.
    fleet: Mutex<Fleet>,
    /// Holds on other hosts' instances while requests are forwarded to
    /// them (their in-flight counts).
    remote_users: Mutex<HashMap<SocketAddr, Arc<()>>>,
    /// Other hosts' instances that just refused a connection: skipped.
    unreachable: Mutex<Unreachable>,
    /// Woken on every change of this host's instances: reported at once.
    changed: Arc<tokio::sync::Notify>,
    /// Held while reading the apps: reads caused by unknown hosts
    /// coalesce.
    reading: tokio::sync::Mutex<()>,
    runs: Mutex<HashMap<String, Arc<AppRun>>>,
    runtime: Arc<dyn Runtime>,
    client: Client<HttpConnector, Body>,
    metrics: Metrics,
}

/// Why a request got no answer from its app.
struct Refusal(StatusCode, String);

/// Why one attempt to forward a request failed.
enum Failed {
    /// The instance at this address refused the connection: the request
    /// never reached the app, so it may go to another instance.
    Unreached(SocketAddr, Refusal),
    Other(Refusal),
}

impl From<Refusal> for Failed {
    fn from(r: Refusal) -> Self {
        Failed::Other(r)
    }
}

impl Failed {
    fn refusal(self) -> Refusal {
        match self {
            Failed::Unreached(_, r) | Failed::Other(r) => r,
        }
    }
}

impl Proxy {
    pub fn new(settings: Settings, group: Arc<dyn Group>, runtime: Arc<dyn Runtime>) -> Arc<Self> {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .build(connector);
        Arc::new(Self {
            settings,
            group,
            apps: Mutex::new((BTreeMap::new(), None)),
            fleet: Mutex::new(Fleet::default()),
            remote_users: Mutex::new(HashMap::new()),
            unreachable: Mutex::new(Unreachable::default()),
            changed: Arc::new(tokio::sync::Notify::new()),
            reading: tokio::sync::Mutex::new(()),
            runs: Mutex::new(HashMap::new()),
            runtime,
            client,
            metrics: Metrics::default(),
        })
    }

    /// Serves on `listener` until the process ends; reads the
    /// configuration and stops idle instances in the background.
    pub async fn serve(self: Arc<Self>, listener: tokio::net::TcpListener) -> Result<()> {
        self.refresh().await;
        tokio::spawn(Self::refresh_loop(Arc::downgrade(&self)));
        tokio::spawn(Self::idle_loop(Arc::downgrade(&self)));
        tokio::spawn(Self::report_loop(Arc::downgrade(&self)));
        tokio::spawn(Self::scale_loop(Arc::downgrade(&self)));
        loop {
            let (stream, _) = match listener.accept().await {
                Ok(s) => s,
                Err(e) => {
                    // Out of descriptors and the like: pause, go on.
                    tracing::warn!("accept: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let _ = stream.set_nodelay(true);
            let proxy = self.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req| {
                    let proxy = proxy.clone();
                    async move { Ok::<_, Infallible>(proxy.handle(req).await) }
                });
                if let Err(e) = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await
                {
                    tracing::debug!("connection: {e}");
                }
            });
        }
    }

    /// The apps as last read.
    fn apps_snapshot(&self) -> BTreeMap<String, App> {
        self.apps
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .0
            .clone()
    }

    /// The apps this proxy has run state for, taken out of the lock.
    fn runs_snapshot(&self) -> Vec<(String, Arc<AppRun>)> {
        self.runs
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    /// Stops every instance and releases the runtime's mounts.
    pub fn shutdown(&self) {
        let runs: Vec<Arc<AppRun>> = self
            .runs
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .cloned()
            .collect();
        for r in runs {
            let mut run = r.lock();
            let run = &mut *run;
            if let Some(mut slot) = run.instance.take() {
                slot.instance.stop();
            }
            for mut slot in run.draining.drain(..).chain(run.extra.drain(..)) {
                slot.instance.stop();
            }
        }
        self.runtime.shutdown();
    }

    async fn refresh(&self) {
        let _reading = self.reading.lock().await;
        self.read_apps().await;
    }

    async fn read_apps(&self) {
        let started = Instant::now();
        match self.group.view().await {
            Ok(view) => {
                let map = view
                    .apps
                    .into_iter()
                    .map(|a| (a.spec.name.clone(), a))
                    .collect();
                *self.fleet.lock().unwrap_or_else(PoisonError::into_inner) = view.fleet;
                let mut g = self.apps.lock().unwrap_or_else(PoisonError::into_inner);
                *g = (map, Some(started));
            }
            Err(e) => tracing::warn!("reading the apps: {e:#}"),
        }
    }

    async fn refresh_loop(me: std::sync::Weak<Self>) {
        loop {
            let Some(p) = me.upgrade() else { return };
            let every = p.settings.refresh;
            drop(p);
            tokio::time::sleep(every).await;
            let Some(p) = me.upgrade() else { return };
            p.refresh().await;
        }
    }

    /// Stops instances idle past their app's timeout (never below its
    /// `min`, which this host keeps at one while `min` > 0, nor below this
    /// host's assignment), forgets instances that died, and starts the
    /// instances this host is assigned.
    async fn idle_loop(me: std::sync::Weak<Self>) {
        loop {
            tokio::time::sleep(IDLE_TICK).await;
            let Some(p) = me.upgrade() else { return };
            let apps = p.apps_snapshot();
            let runs = p.runs_snapshot();
            let mut changed = false;
            for (name, r) in runs {
                // A removed app's instance goes as soon as it is idle.
                let (idle, min) = apps.get(&name).map_or((Duration::ZERO, 0), |a| {
                    (Duration::from_millis(a.spec.idle_ms), a.spec.min)
                });
                let floor = p.idle_floor(&name, min);
                let mut run = r.lock();
                if forget_dead(&name, &mut run) {
                    changed = true;
                    r.bump();
                }
                run.draining.retain_mut(|slot| {
                    if slot.in_flight() > 0 {
                        return true;
                    }
                    slot.instance.stop();
                    tracing::info!(app = %name, "replaced instance stopped");
                    changed = true;
                    false
                });
                let idle_for = run.last_request.elapsed() >= idle;
                // Instances beyond the floor stop when idle.
                let floor = usize::try_from(floor).unwrap_or(usize::MAX);
                while idle_for
                    && run.extra.len() + usize::from(run.instance.is_some()) > floor
                    && run.extra.last().is_some_and(|s| s.in_flight() == 0)
                {
                    if let Some(mut slot) = run.extra.pop() {
                        slot.instance.stop();
                        tracing::info!(app = %name, "idle extra instance stopped");
                        changed = true;
                    }
                }
                let idle_now = run.phase == Phase::Ready
                    && run.instance.as_ref().is_some_and(|s| s.in_flight() == 0)
                    && floor == 0
                    && idle_for;
                if idle_now {
                    if let Some(mut slot) = run.instance.take() {
                        slot.instance.stop();
                    }
                    run.phase = Phase::Stopped;
                    drop(run);
                    r.bump();
                    p.metrics.idle_stop(&name);
                    tracing::info!(app = %name, "idle instance stopped");
                    changed = true;
                }
            }
            p.follow_assignments(&apps);
            if changed {
                p.changed.notify_one();
            }
        }
    }

    fn app_for(&self, host: &str) -> Option<App> {
        let g = self.apps.lock().unwrap_or_else(PoisonError::into_inner);
        by_host(&g.0, host).cloned()
    }

    /// The app for `host`, reading the configuration again if it is not
    /// known, so a new app answers at once. Requests that miss together
    /// share one read: a read that started after a request arrived
    /// answers for it.
    async fn lookup(&self, host: &str) -> Option<App> {
        if let Some(a) = self.app_for(host) {
            return Some(a);
        }
        let arrived = Instant::now();
        let _reading = self.reading.lock().await;
        let fresh = self
            .apps
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .1
            .is_some_and(|t| t >= arrived);
        if !fresh {
            self.read_apps().await;
        }
        self.app_for(host)
    }

    async fn handle(self: &Arc<Self>, req: Request<Incoming>) -> Response<Body> {
        let started = Instant::now();
        let host = req
            .headers()
            .get(HOST)
            .and_then(|h| h.to_str().ok())
            .map(str::to_string)
            .or_else(|| req.uri().authority().map(|a| a.to_string()))
            .unwrap_or_default();
        let Some(app) = self.lookup(&host).await else {
            if req.uri().path() == "/metrics" {
                return text(StatusCode::OK, self.render_metrics());
            }
            return text(
                StatusCode::NOT_FOUND,
                format!("no app for host {host:?} (see `elton app ls`)\n"),
            );
        };
        let name = app.spec.name.clone();
        let resp = match self.route(&app, req).await {
            Ok(r) => r,
            Err(Refusal(code, why)) => {
                let mut r = text(code, format!("app {name:?}: {why}\n"));
                if code == StatusCode::SERVICE_UNAVAILABLE {
                    r.headers_mut()
                        .insert(RETRY_AFTER, HeaderValue::from_static("1"));
                }
                r
            }
        };
        self.metrics
            .request(&name, resp.status().as_u16(), started.elapsed());
        resp
    }

    fn run_of(&self, name: &str) -> Arc<AppRun> {
        self.runs
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(name.to_string())
            .or_insert_with(|| {
                Arc::new(AppRun {
                    run: Mutex::new(Run {
                        phase: Phase::Stopped,
                        instance: None,
                        replacing: false,
                        replace_failed: None,
                        draining: Vec::new(),
                        extra: Vec::new(),
                        extra_starting: 0,
                        extra_failed: None,
                        waiting: 0,
                        last_request: Instant::now(),
                        start_seq: 0,
                        failure: None,
                    }),
                    changed: watch::channel(0).0,
                })
            })
            .clone()
    }

    /// Finds or starts the app's instance and forwards `req` to it. A
    /// request whose instance refused the connection (it died, or its host
    /// did, and the registry does not show it yet) goes once more, to
    /// another instance or a new one: it never reached the app, so sending
    /// it again repeats nothing. That needs its body: one of up to
    /// [`REPLAYABLE_BODY_BYTES`] is read before it is forwarded, as a
    /// retrying proxy buffers what it may send twice; a larger one, or one
    /// of unknown length, streams and such a request gets the 502.
    async fn route(
        self: &Arc<Self>,
        app: &App,
        req: Request<Incoming>,
    ) -> Result<Response<Body>, Refusal> {
        let r = self.run_of(&app.spec.name);
        let (parts, body) = req.into_parts();
        let (body, replay) = match replayable(&parts.headers, &body) {
            Some(limit) => {
                let bytes = Limited::new(body, limit)
                    .collect()
                    .await
                    .map_err(|e| {
                        Refusal(
                            StatusCode::BAD_REQUEST,
                            format!("reading the request body: {e}"),
                        )
                    })?
                    .to_bytes();
                (full(bytes.clone()), Some(bytes))
            }
            None => (body.boxed(), None),
        };
        let again = replay.map(|bytes| {
            let mut b = Request::builder()
                .method(parts.method.clone())
                .uri(parts.uri.clone())
                .version(parts.version);
            if let Some(h) = b.headers_mut() {
                h.clone_from(&parts.headers);
            }
            (b, bytes)
        });
        let first = self
            .forward(app, &r, Request::from_parts(parts, body))
            .await;
        match (first, again) {
            (Err(Failed::Unreached(addr, why)), Some((again, bytes))) => {
                tracing::info!(app = %app.spec.name, %addr, "instance refused the connection; trying another");
                self.unreachable
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .mark(addr, Instant::now());
                let Ok(req) = again.body(full(bytes)) else {
                    return Err(why);
                };
                self.forward(app, &r, req).await.map_err(Failed::refusal)
            }
            (first, _) => first.map_err(Failed::refusal),
        }
    }

    /// One attempt: a ready instance, then the request to it.
    async fn forward(
        self: &Arc<Self>,
        app: &App,
        r: &Arc<AppRun>,
        req: Request<Body>,
    ) -> Result<Response<Body>, Failed> {
        let (addr, _user) = self.ready_addr(app, r).await?;
        let (mut parts, body) = req.into_parts();
        let pq = parts
            .uri
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .to_string();
        parts.uri = format!("http://{addr}{pq}")
            .parse()
            .map_err(|e| Refusal(StatusCode::BAD_REQUEST, format!("bad path {pq:?}: {e}")))?;
        let result = self.client.request(Request::from_parts(parts, body)).await;
        r.lock().last_request = Instant::now();
        match result {
            Ok(resp) => Ok(resp.map(|b| b.boxed())),
            Err(e) => {
                let failed = |refusal| {
                    if e.is_connect() {
                        Failed::Unreached(addr, refusal)
                    } else {
                        Failed::Other(refusal)
                    }
                };
                // A dead instance is forgotten, so the next request starts
                // a new one.
                let mut run = r.lock();
                let died = run
                    .instance
                    .as_mut()
                    .filter(|s| s.instance.addr() == addr)
                    .and_then(|s| s.instance.exited());
                // Its other local instances too: one of them may be the
                // one that refused, and the next attempt must not pick it.
                let extras_gone = e.is_connect() && forget_dead_extras(&app.spec.name, &mut run);
                if extras_gone && died.is_none() {
                    drop(run);
                    r.bump();
                    return Err(failed(Refusal(
                        StatusCode::BAD_GATEWAY,
                        format!("its instance at {addr} stopped"),
                    )));
                }
                if let Some(why) = &died {
                    run.instance = None;
                    run.phase = Phase::Stopped;
                    drop(run);
                    r.bump();
                    return Err(failed(Refusal(
                        StatusCode::BAD_GATEWAY,
                        format!("its instance stopped: {why}"),
                    )));
                }
                Err(failed(Refusal(
                    StatusCode::BAD_GATEWAY,
                    format!("its instance at {addr} did not answer: {e}"),
                )))
            }
        }
    }

    /// The address of a ready instance (and a hold on it while the request
    /// is forwarded), starting one if needed and waiting (in the bounded
    /// queue) for it to listen. An instance of an older configuration
    /// keeps serving while its replacement starts.
    async fn ready_addr(
        self: &Arc<Self>,
        app: &App,
        r: &Arc<AppRun>,
    ) -> Result<(SocketAddr, Arc<()>), Refusal> {
        let deadline = tokio::time::Instant::now() + self.settings.ready_timeout + WAIT_GRACE;
        let mut rx = r.changed.subscribe();
        let mut mine: Option<u64> = None;
        let mut queued = false;
        let result = loop {
            {
                let mut run = r.lock();
                if let (Some(seq), Some((failed, code, why))) = (mine, &run.failure)
                    && *failed == seq
                    && run.phase == Phase::Stopped
                {
                    break Err(Refusal(*code, why.clone()));
                }
                // Several instances (extras here, others' on other hosts):
                // the least busy takes it; the first instance goes the
                // usual way below (which also replaces it on a deploy).
                let remote = self.remote_holds(app);
                if let Some(hold) = choose(app, &mut run, remote) {
                    break Ok(hold);
                }
                let waiting = run.waiting - usize::from(queued);
                match admission::admit(&run.phase, waiting, self.settings.queue) {
                    Admit::Forward => {
                        let Run {
                            instance,
                            replacing,
                            replace_failed,
                            ..
                        } = &mut *run;
                        if let Some(slot) = instance {
                            let stale = slot.generation < app.updated
                                && !*replacing
                                && *replace_failed != Some(app.updated);
                            if stale {
                                *replacing = true;
                                self.clone().spawn_replace(app.clone(), r.clone());
                            }
                            let hold = (slot.instance.addr(), slot.users.clone());
                            run.last_request = Instant::now();
                            break Ok(hold);
                        }
                        run.phase = Phase::Stopped;
                        continue;
                    }
                    Admit::Busy => {
                        break Err(Refusal(
                            StatusCode::SERVICE_UNAVAILABLE,
                            format!(
                                "{} requests already wait for it to start; retry",
                                run.waiting
                            ),
                        ));
                    }
                    Admit::Start => {
                        run.phase = Phase::Starting;
                        run.start_seq += 1;
                        run.failure = None;
                        mine = Some(run.start_seq);
                        self.clone()
                            .spawn_start(app.clone(), r.clone(), run.start_seq);
                    }
                    Admit::Wait => mine = Some(run.start_seq),
                }
                if !queued {
                    run.waiting += 1;
                    queued = true;
                }
            }
            match tokio::time::timeout_at(deadline, rx.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) | Err(_) => {
                    break Err(Refusal(
                        StatusCode::GATEWAY_TIMEOUT,
                        format!(
                            "no instance was ready within {}s",
                            self.settings.ready_timeout.as_secs_f64()
                        ),
                    ));
                }
            }
        };
        if queued {
            let mut run = r.lock();
            run.waiting = run.waiting.saturating_sub(1);
        }
        if result.is_ok() {
            r.lock().last_request = Instant::now();
        }
        result
    }

    /// Holds on the ready instances of `app` on other hosts (from the
    /// registry) that run its version.
    fn remote_holds(&self, app: &App) -> Vec<(SocketAddr, Arc<()>)> {
        let addrs: Vec<SocketAddr> = {
            let fleet = self.fleet.lock().unwrap_or_else(PoisonError::into_inner);
            let skipped = self
                .unreachable
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            let now = Instant::now();
            fleet
                .remote_ready(&app.spec.name, &self.settings.host)
                .filter(|(_, i)| i.version == app.spec.version)
                .filter_map(|(_, i)| i.addr.parse().ok())
                .filter(|a| !skipped.skips(a, now))
                .collect()
        };
        if addrs.is_empty() {
            return Vec::new();
        }
        let mut users = self
            .remote_users
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        addrs
            .into_iter()
            .map(|a| (a, users.entry(a).or_default().clone()))
            .collect()
    }

    /// Starts an instance and watches it until its port accepts (Ready),
    /// it exits (502 with the reason) or the deadline passes (504).
    fn spawn_start(self: Arc<Self>, app: App, r: Arc<AppRun>, seq: u64) {
        tokio::spawn(async move {
            let name = app.spec.name.clone();
            let deadline = tokio::time::Instant::now() + self.settings.ready_timeout;
            let outcome = match self.runtime.start(&app.spec).await {
                Ok(instance) => wait_ready(instance, deadline, self.settings.ready_timeout).await,
                Err(e) => Err((
                    StatusCode::BAD_GATEWAY,
                    format!("it could not start: {e:#}"),
                )),
            };
            self.metrics.start(&name, outcome.is_ok());
            let mut run = r.lock();
            match outcome {
                Ok(instance) => {
                    tracing::info!(app = %name, addr = %instance.addr(), "instance ready");
                    run.instance = Some(Slot::new(instance, &app));
                    run.replace_failed = None;
                    run.phase = Phase::Ready;
                    run.last_request = Instant::now();
                }
                Err((code, why)) => {
                    tracing::warn!(app = %name, "start failed: {why}");
                    run.phase = Phase::Stopped;
                    run.failure = Some((seq, code, why));
                }
            }
            drop(run);
            r.bump();
            self.changed.notify_one();
        });
    }

    /// Starts an instance of the app's newer configuration beside the
    /// serving one; once it listens it takes the requests and the old one
    /// drains (stopped by the idle loop when nothing is in flight on it).
    /// If it fails, the old one keeps serving.
    fn spawn_replace(self: Arc<Self>, app: App, r: Arc<AppRun>) {
        tokio::spawn(async move {
            let name = app.spec.name.clone();
            let deadline = tokio::time::Instant::now() + self.settings.ready_timeout;
            let outcome = match self.runtime.start(&app.spec).await {
                Ok(instance) => wait_ready(instance, deadline, self.settings.ready_timeout).await,
                Err(e) => Err((
                    StatusCode::BAD_GATEWAY,
                    format!("it could not start: {e:#}"),
                )),
            };
            self.metrics.start(&name, outcome.is_ok());
            let mut run = r.lock();
            run.replacing = false;
            match outcome {
                Ok(instance) if run.phase == Phase::Ready => {
                    tracing::info!(app = %name, generation = app.updated, "instance replaced");
                    let new = Slot::new(instance, &app);
                    if let Some(old) = run.instance.replace(new) {
                        run.draining.push(old);
                    }
                }
                // Stopped meanwhile (idle): the next start is of the new
                // configuration anyway.
                Ok(mut instance) => instance.stop(),
                Err((_, why)) => {
                    tracing::warn!(app = %name, "replacement failed, the old instance serves on: {why}");
                    run.replace_failed = Some(app.updated);
                }
            }
            drop(run);
            r.bump();
            self.changed.notify_one();
        });
    }

    fn render_metrics(&self) -> String {
        let running: BTreeMap<String, usize> = self
            .runs
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .map(|(k, v)| {
                let run = v.lock();
                (
                    k.clone(),
                    usize::from(run.instance.is_some()) + run.draining.len() + run.extra.len(),
                )
            })
            .collect();
        self.metrics.render(&running)
    }
}

/// Polls the instance's port until it accepts; stops the instance if it
/// does not in time.
async fn wait_ready(
    mut instance: Box<dyn Instance>,
    deadline: tokio::time::Instant,
    timeout: Duration,
) -> Result<Box<dyn Instance>, (StatusCode, String)> {
    let addr = instance.addr();
    loop {
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            return Ok(instance);
        }
        if let Some(why) = instance.exited() {
            return Err((
                StatusCode::BAD_GATEWAY,
                format!("its command failed: {why}"),
            ));
        }
        if tokio::time::Instant::now() >= deadline {
            instance.stop();
            return Err((
                StatusCode::GATEWAY_TIMEOUT,
                format!(
                    "its command did not listen on port {} within {}s",
                    addr.port(),
                    timeout.as_secs_f64()
                ),
            ));
        }
        tokio::time::sleep(READY_POLL).await;
    }
}

/// A request body held in memory (empty: no body at all).
fn full(bytes: Bytes) -> Body {
    if bytes.is_empty() {
        return http_body_util::Empty::new().map_err(|e| match e {}).boxed();
    }
    Full::new(bytes).map_err(|e| match e {}).boxed()
}

/// The bound for reading a request's body before forwarding it, if the
/// request may be sent twice (see [`Proxy::route`]): no body, or one whose
/// declared length is at most [`REPLAYABLE_BODY_BYTES`].
fn replayable(headers: &HeaderMap, body: &Incoming) -> Option<usize> {
    if body.is_end_stream() {
        return Some(0);
    }
    let declared: u64 = headers.get(CONTENT_LENGTH)?.to_str().ok()?.parse().ok()?;
    (declared <= REPLAYABLE_BODY_BYTES as u64).then_some(REPLAYABLE_BODY_BYTES)
}

fn text(code: StatusCode, body: String) -> Response<Body> {
    let mut r = Response::new(Full::new(Bytes::from(body)).map_err(|e| match e {}).boxed());
    *r.status_mut() = code;
    r
}

/// The least busy of the app's instances when it has more than the first
/// (extras here, or ready ones on other hosts); `None` leaves the request
/// to the first instance's admission (start, wait, forward).
fn choose(
    app: &App,
    run: &mut Run,
    remote: Vec<(SocketAddr, Arc<()>)>,
) -> Option<(SocketAddr, Arc<()>)> {
    if run.extra.is_empty() && remote.is_empty() {
        return None;
    }
    let first = run.instance.as_ref().filter(|_| run.phase == Phase::Ready);
    let mut holds: Vec<(SocketAddr, Arc<()>)> = Vec::new();
    let mut cands: Vec<Candidate> = Vec::new();
    if let Some(s) = first {
        holds.push((s.instance.addr(), s.users.clone()));
        cands.push(Candidate {
            in_flight: s.in_flight(),
            local: true,
        });
    }
    for s in run.extra.iter().filter(|s| s.generation >= app.updated) {
        holds.push((s.instance.addr(), s.users.clone()));
        cands.push(Candidate {
            in_flight: s.in_flight(),
            local: true,
        });
    }
    for (addr, users) in remote {
        cands.push(Candidate {
            in_flight: Arc::strong_count(&users) - 1,
            local: false,
        });
        holds.push((addr, users));
    }
    let i = balance::pick(&cands)?;
    // The first instance keeps its own path (deploy replacement).
    if first.is_some() && i == 0 {
        return None;
    }
    holds.into_iter().nth(i)
}

/// Forgets the app's instances that exited (killed by hand, crashed);
/// whether any did.
fn forget_dead(name: &str, run: &mut Run) -> bool {
    let mut gone = false;
    if let Some(slot) = run.instance.as_mut()
        && let Some(why) = slot.instance.exited()
    {
        tracing::warn!(app = %name, "instance exited: {why}");
        run.instance = None;
        if run.phase == Phase::Ready {
            run.phase = Phase::Stopped;
        }
        gone = true;
    }
    forget_dead_extras(name, run) || gone
}

/// [`forget_dead`] for the instances beside the first one.
fn forget_dead_extras(name: &str, run: &mut Run) -> bool {
    let mut gone = false;
    for list in [&mut run.extra, &mut run.draining] {
        list.retain_mut(|slot| match slot.instance.exited() {
            Some(why) => {
                tracing::warn!(app = %name, "instance exited: {why}");
                gone = true;
                false
            }
            None => true,
        });
    }
    gone
}
