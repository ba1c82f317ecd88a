//! `elton proxy`: FastContainer's per-host HTTP proxy. It routes each
//! request by `Host` to an app of the group's configuration DB; with no
//! instance ready it starts one (one start per app at a time, however many
//! requests wait), holds the requests until the instance's port accepts,
//! and forwards them through a pooled client. Idle instances stop.
//!
//! - [`admission`] (pure): forward, start, wait or turn away.
//! - [`instance`]: the [`instance::Runtime`] trait and the process runtime;
//!   [`docker`] the Docker one, [`by_image`] picks per app, [`mounts`]
//!   the read-only mounts both run apps from.
//! - [`metrics`]: per-app counters for `/metrics`.
//!
//! Errors become HTTP answers here only: 404 unknown host, 503 (with
//! `Retry-After`) a full queue, 504 an instance that does not listen
//! within the readiness deadline, 502 an instance that exited (naming the
//! reason from its output) or that cannot be reached.

pub mod admission;
pub mod by_image;
pub mod docker;
pub mod instance;
pub mod metrics;
pub mod mounts;

use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::Result;
use bytes::Bytes;
use elton_control::apps::App;
use elton_control::apps::config::by_host;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{HOST, HeaderValue, RETRY_AFTER};
use hyper::{Request, Response, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::sync::watch;

use admission::{Admit, Phase};
use instance::{Instance, Runtime};
use metrics::Metrics;

type Body = BoxBody<Bytes, hyper::Error>;

/// How often a starting instance's port is tried.
const READY_POLL: Duration = Duration::from_millis(2);
/// How often idle instances are looked for.
const IDLE_TICK: Duration = Duration::from_millis(250);
/// A waiting request gives up this long after the readiness deadline, so
/// the start's own verdict (which names the reason) reaches it first.
const WAIT_GRACE: Duration = Duration::from_secs(1);

/// Reads the group's apps (the CLI asks the control group).
pub type Fetch =
    Arc<dyn Fn() -> Pin<Box<dyn Future<Output = Result<Vec<App>>> + Send>> + Send + Sync>;

#[derive(Debug, Clone)]
pub struct Settings {
    /// An instance that does not listen within this is given up (504).
    pub ready_timeout: Duration,
    /// Requests held per app while it starts; more get 503.
    pub queue: usize,
    /// How often the configuration is read again.
    pub refresh: Duration,
}

/// A started instance, the configuration generation (`App::updated`) it
/// runs, and a count of the requests forwarded to it (each holds a clone
/// of `users` until its answer's head arrives).
struct Slot {
    instance: Box<dyn Instance>,
    generation: u64,
    users: Arc<()>,
}

impl Slot {
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
    fetch: Fetch,
    /// The apps, and when the read that gave them started.
    apps: Mutex<(BTreeMap<String, App>, Option<Instant>)>,
    /// Held while reading the apps: reads caused by unknown hosts
    /// coalesce.
    reading: tokio::sync::Mutex<()>,
    runs: Mutex<HashMap<String, Arc<AppRun>>>,
    runtime: Arc<dyn Runtime>,
    client: Client<HttpConnector, Incoming>,
    metrics: Metrics,
}

/// Why a request got no answer from its app.
struct Refusal(StatusCode, String);

impl Proxy {
    pub fn new(settings: Settings, fetch: Fetch, runtime: Arc<dyn Runtime>) -> Arc<Self> {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .build(connector);
        Arc::new(Self {
            settings,
            fetch,
            apps: Mutex::new((BTreeMap::new(), None)),
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
            if let Some(mut slot) = run.instance.take() {
                slot.instance.stop();
            }
            for mut slot in run.draining.drain(..) {
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
        match (self.fetch)().await {
            Ok(apps) => {
                let map = apps.into_iter().map(|a| (a.spec.name.clone(), a)).collect();
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
    /// `min`, which this host keeps at one while `min` > 0).
    async fn idle_loop(me: std::sync::Weak<Self>) {
        loop {
            tokio::time::sleep(IDLE_TICK).await;
            let Some(p) = me.upgrade() else { return };
            let apps = p
                .apps
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .0
                .clone();
            let runs: Vec<(String, Arc<AppRun>)> = p
                .runs
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            for (name, r) in runs {
                // A removed app's instance goes as soon as it is idle.
                let (idle, min) = apps.get(&name).map_or((Duration::ZERO, 0), |a| {
                    (Duration::from_millis(a.spec.idle_ms), a.spec.min)
                });
                let mut run = r.lock();
                run.draining.retain_mut(|slot| {
                    if slot.in_flight() > 0 {
                        return true;
                    }
                    slot.instance.stop();
                    tracing::info!(app = %name, "replaced instance stopped");
                    false
                });
                let idle_now = run.phase == Phase::Ready
                    && run.instance.as_ref().is_some_and(|s| s.in_flight() == 0)
                    && min == 0
                    && run.last_request.elapsed() >= idle;
                if idle_now {
                    if let Some(mut slot) = run.instance.take() {
                        slot.instance.stop();
                    }
                    run.phase = Phase::Stopped;
                    drop(run);
                    r.bump();
                    p.metrics.idle_stop(&name);
                    tracing::info!(app = %name, "idle instance stopped");
                }
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

    /// Finds or starts the app's instance and forwards `req` to it.
    async fn route(
        self: &Arc<Self>,
        app: &App,
        req: Request<Incoming>,
    ) -> Result<Response<Body>, Refusal> {
        let r = self.run_of(&app.spec.name);
        let (addr, _user) = self.ready_addr(app, &r).await?;
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
                // A dead instance is forgotten, so the next request starts
                // a new one.
                let mut run = r.lock();
                let died = run
                    .instance
                    .as_mut()
                    .filter(|s| s.instance.addr() == addr)
                    .and_then(|s| s.instance.exited());
                if let Some(why) = &died {
                    run.instance = None;
                    run.phase = Phase::Stopped;
                    drop(run);
                    r.bump();
                    return Err(Refusal(
                        StatusCode::BAD_GATEWAY,
                        format!("its instance stopped: {why}"),
                    ));
                }
                Err(Refusal(
                    StatusCode::BAD_GATEWAY,
                    format!("its instance at {addr} did not answer: {e}"),
                ))
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
        result
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
                    run.instance = Some(Slot {
                        instance,
                        generation: app.updated,
                        users: Arc::new(()),
                    });
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
                    let new = Slot {
                        instance,
                        generation: app.updated,
                        users: Arc::new(()),
                    };
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
                    usize::from(run.instance.is_some()) + run.draining.len(),
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

fn text(code: StatusCode, body: String) -> Response<Body> {
    let mut r = Response::new(Full::new(Bytes::from(body)).map_err(|e| match e {}).boxed());
    *r.status_mut() = code;
    r
}
