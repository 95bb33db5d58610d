//! The proxy's main loop: source events → change tracker → bounded-frequency syncs → backend,
//! with kube-proxy's metrics and health servers beside it.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use nftproxy_model::SourceEvent;
use nftproxy_model::{IpFamily, NodeContext, NodePortAddresses};
use tokio::sync::mpsc;

use nftproxy_nftables::Netfilter;
use nftproxy_nftables::netlink::NftSocket;

use crate::backend::Backend;
use crate::config::Settings;
use crate::health::{ProxyHealth, ServiceHealthServers};
use crate::metrics::Metrics;
use crate::migrate::{Migration, Ours};
use crate::runner::{BoundedFrequency, RunnerState};
use crate::stats::Stats;
use crate::tracker::{ChangeTracker, Changes};

/// Where the cluster comes from.
pub enum Source {
    /// The Kubernetes API (kube-rs watchers).
    Api(kube::Client),
    /// Manifests on disk, polled at this interval; whether a source without objects means "no
    /// Services" (else it is an error, like a file that does not parse).
    Manifests(std::path::PathBuf, Duration, bool),
}

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("--metrics-bind-address {addr}: {source}")]
    MetricsBind { addr: std::net::SocketAddr, source: std::io::Error },
    #[error("--healthz-bind-address {addr}: {source}")]
    HealthzBind { addr: std::net::SocketAddr, source: std::io::Error },
    #[error("netlink socket: {0}")]
    Backend(std::io::Error),
    /// kube-proxy exits when its `--config` file changes, to be restarted with the new one.
    #[error("the configuration file {0} changed: exiting so that the restart reads it")]
    ConfigChanged(String),
}

fn family_label(f: IpFamily) -> &'static str {
    match f {
        IpFamily::V4 => "IPv4",
        IpFamily::V6 => "IPv6",
    }
}

fn unix_now() -> f64 {
    SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default().as_secs_f64()
}

/// The running proxy (everything but the source task and the HTTP servers). Generic over the
/// netfilter its backend programs: the kernel's socket when it runs, the in-memory fake in unit
/// tests of the loop's decisions (`crate::daemon_tests`).
pub struct Proxy<N: Netfilter = NftSocket> {
    pub settings: Settings,
    pub node_name: String,
    pub tracker: ChangeTracker,
    backend: Backend<N>,
    pub metrics: Arc<Metrics>,
    pub health: Arc<ProxyHealth>,
    service_health: ServiceHealthServers,
    need_full: bool,
    last_sync: Option<Instant>,
    last_failure: bool,
    last_deep_check: Option<Instant>,
    stats: Stats,
    trimmer: crate::heap::Trimmer,
    /// This node's interface addresses (rtnetlink), for `--nodeport-addresses CIDR,…` and
    /// `primary`; None until read.
    local_addresses: Option<Vec<IpAddr>>,
    /// Whether kube-proxy's (and our other mode's) leftovers were looked for: once, after the
    /// first successful sync (see [`crate::migrate`]).
    migrated: bool,
    /// That look, while it runs beside the loop (see [`Proxy::migration_done`]).
    migration: Option<tokio::task::JoinHandle<()>>,
    /// When the next step of an element audit runs (see [`Proxy::audit_step`]).
    next_audit: Option<Instant>,
    /// Removes the leftovers of kube-proxy and of our other mode ([`crate::migrate`]).
    take_over: fn(Ours) -> Migration,
}

/// Between two steps of an element audit: each step is ~1 ms of netlink work per large set, so
/// the loop stays free for syncs (+1 Service) in between; 500,000 elements take ~3 minutes.
const AUDIT_STEP_INTERVAL: Duration = Duration::from_millis(100);

impl Proxy<NftSocket> {
    /// The proxy over the kernel of this network namespace.
    pub fn new(settings: Settings, node_name: String) -> Result<Proxy, DaemonError> {
        let netfilter = NftSocket::open().map_err(DaemonError::Backend)?;
        Ok(Proxy::over(settings, node_name, netfilter, crate::migrate::remove_leftovers))
    }
}

impl<N: Netfilter> Proxy<N> {
    /// The proxy over any netfilter; `take_over` removes other proxies' leftovers once, after
    /// the first successful sync.
    pub fn over(settings: Settings, node_name: String, netfilter: N, take_over: fn(Ours) -> Migration) -> Proxy<N> {
        let backend = Backend::over(&settings, netfilter);
        let health = Arc::new(ProxyHealth::new(settings.sync_period));
        Proxy {
            service_health: ServiceHealthServers::new(health.clone(), Vec::new()),
            tracker: ChangeTracker::default(),
            metrics: Arc::new(Metrics::new()),
            health,
            backend,
            node_name,
            settings,
            need_full: true,
            last_sync: None,
            last_failure: false,
            last_deep_check: None,
            stats: Stats::default(),
            trimmer: crate::heap::Trimmer::new(Duration::from_secs(10)),
            local_addresses: None,
            migrated: false,
            migration: None,
            next_audit: None,
            take_over,
        }
    }

    /// Reads the interface addresses again; a change makes the next sync a full one (NodePort
    /// addresses are part of the fixed table).
    pub fn refresh_local_addresses(&mut self) {
        match nftproxy_nftables::addrs::interface_addresses() {
            Ok(a) => {
                if self.local_addresses.as_ref() != Some(&a) {
                    if self.local_addresses.is_some() {
                        tracing::info!(addresses = ?a, "interface addresses changed");
                    }
                    self.local_addresses = Some(a);
                    self.tracker.context_changed();
                }
            }
            Err(e) => tracing::warn!("reading the interface addresses (rtnetlink): {e}"),
        }
    }

    /// The node context: flags, completed by this node's Node object.
    pub fn context(&self) -> NodeContext {
        let mut ctx = NodeContext {
            node_name: self.node_name.clone(),
            node_ips: self.settings.node_ips.clone(),
            cluster_cidrs: self.settings.cluster_cidrs.clone(),
            detect_local: self.settings.detect_local.clone(),
            masquerade_all: self.settings.masquerade_all,
            masquerade_bit: self.settings.masquerade_bit,
            nodeport_addresses: self.settings.effective_nodeport_addresses(),
            local_addresses: self.local_addresses.clone(),
            ..Default::default()
        };
        if let Some(node) = &self.tracker.node {
            ctx.complete_from(node);
        }
        ctx.service_cidrs = self.tracker.state.service_cidrs();
        ctx
    }

    /// Takes one source event.
    pub fn event(&mut self, ev: SourceEvent) {
        match &ev {
            SourceEvent::Warning(w) => tracing::warn!("{w}"),
            SourceEvent::SourceFailed(e) => {
                tracing::error!("{e}; nothing changed, the previous rules stay");
                self.metrics.manifest_load_failures.inc();
            }
            SourceEvent::WatchError { kind, error } => tracing::warn!(kind, "watch failed, retrying: {error}"),
            SourceEvent::Node { eligible, .. } => self.health.set_node_eligible(*eligible),
            SourceEvent::LocalAddressesChanged => self.refresh_local_addresses(),
            // With the sync's own log lines, where the time from the API to the kernel goes.
            SourceEvent::ServiceApplied(_) | SourceEvent::ServiceDeleted(_) => tracing::trace!("a Service change taken"),
            SourceEvent::SliceApplied(_) | SourceEvent::SliceDeleted { .. } => {
                tracing::trace!("an EndpointSlice change taken")
            }
            _ => {}
        }
        let (svc0, ep0) = (self.tracker.service_changes_total, self.tracker.endpoint_changes_total);
        if self.tracker.apply(ev) {
            self.health.queued();
            for f in ["IPv4", "IPv6"] {
                self.metrics.last_queued_timestamp.with_label_values(&[f]).set(unix_now());
            }
        }
        self.metrics.service_changes_total.inc_by(self.tracker.service_changes_total - svc0);
        self.metrics.endpoint_changes_total.inc_by(self.tracker.endpoint_changes_total - ep0);
        let (s, e) = self.tracker.pending_counts();
        self.metrics.service_changes_pending.set(s as i64);
        self.metrics.endpoint_changes_pending.set(e as i64);
    }

    /// When the next sync is due (None: not before the lists are complete); see
    /// [`crate::runner`].
    pub fn next_sync(&self) -> Option<Instant> {
        let runner = BoundedFrequency { min: self.settings.min_sync_period, max: self.settings.sync_period };
        runner.due(RunnerState {
            ready: self.tracker.ready(),
            last_sync: self.last_sync,
            pending: self.tracker.pending() || self.need_full,
            failed: self.last_failure,
        })
    }

    /// What a drift check or audit step found: a difference makes the next sync a full one.
    fn drift_checked(&mut self, checked: Result<Option<String>, String>) {
        match checked {
            Ok(Some(diff)) => {
                tracing::warn!("our rules were changed by someone else ({diff}): restoring them");
                self.metrics.drift_repairs.inc();
                self.need_full = true;
            }
            Ok(None) => {}
            Err(e) => {
                tracing::warn!("drift check failed: {e}");
                self.need_full = true;
            }
        }
        self.next_audit = self.backend.audit_pending().then(|| Instant::now() + AUDIT_STEP_INTERVAL);
    }

    /// When the next element-audit step is due (None: no audit under way).
    pub fn next_audit(&self) -> Option<Instant> {
        self.next_audit
    }

    /// One step of the element audit of large sets, between syncs.
    pub fn audit_step(&mut self) {
        let t = Instant::now();
        let checked = tokio::task::block_in_place(|| self.backend.audit_step());
        tracing::trace!(seconds = t.elapsed().as_secs_f64(), "element audit step");
        self.drift_checked(checked);
    }

    /// One sync: drift check, then the pending changes (or everything).
    pub async fn sync(&mut self) {
        self.last_sync = Some(Instant::now());
        let changes: Changes = self.tracker.take();
        // The elements (small sets counted, the first audit window of large ones; the rest of the
        // audit runs in steps between syncs) at most once per sync period, and before every full
        // sync: a full sync repairs any drift, so it must look first or the repair goes uncounted
        // (seen: a map flushed just before a Node-triggered full sync).
        let deep = self.need_full
            || changes.node
            || self.last_deep_check.is_none_or(|t| t.elapsed() >= self.settings.sync_period);
        if deep {
            self.last_deep_check = Some(Instant::now());
        }
        let t_verify = Instant::now();
        let checked = tokio::task::block_in_place(|| self.backend.verify(deep)).map_err(|e| e.to_string());
        tracing::debug!(deep, seconds = t_verify.elapsed().as_secs_f64(), "drift check");
        self.drift_checked(checked);
        let ctx = self.context();
        let full = self.need_full || changes.node;
        let start = Instant::now();
        let result =
            tokio::task::block_in_place(|| self.backend.sync(&self.tracker.state, &ctx, &changes.services, full));
        let took = start.elapsed().as_secs_f64();
        self.metrics.service_changes_pending.set(0);
        self.metrics.endpoint_changes_pending.set(0);
        match result {
            Ok(done) => {
                self.need_full = false;
                self.last_failure = false;
                for f in ["IPv4", "IPv6"] {
                    self.metrics.sync_duration.with_label_values(&[f]).observe(took);
                    let h =
                        if done.full { &self.metrics.sync_full_duration } else { &self.metrics.sync_partial_duration };
                    h.with_label_values(&[f]).observe(took);
                    self.metrics.last_timestamp.with_label_values(&[f]).set(unix_now());
                    self.health.updated(f);
                    if done.conntrack_deleted > 0 {
                        self.metrics.conntrack_deleted.with_label_values(&[f]).inc_by(done.conntrack_deleted as u64);
                    }
                }
                if let Some(e) = &done.conntrack_error {
                    tracing::warn!("UDP conntrack cleanup failed (rules are in place; retried next sync): {e}");
                    self.metrics.conntrack_cleanup_failures.inc();
                }
                self.metrics.last_sync_messages.set(done.messages as f64);
                self.observe_programming_latency(&changes.trigger_times);
                let t_stats = Instant::now();
                self.update_stats(&ctx, &changes, done.full).await;
                tracing::debug!(seconds = t_stats.elapsed().as_secs_f64(), "gauges and health-check counts updated");
                tracing::info!(
                    full = done.full,
                    services = changes.services.len(),
                    messages = done.messages,
                    seconds = took,
                    "synced"
                );
                if let Some(t) = self.trimmer.after_sync(done.full) {
                    tracing::debug!(seconds = t.as_secs_f64(), "free heap pages returned to the kernel");
                }
                if !self.migrated {
                    self.migrated = true;
                    let ours = self.backend.programs();
                    let take_over = self.take_over;
                    // Beside the loop: it runs four *-save tools and more (0.1–0.3 s, seen in
                    // strace after a cold start), and a change that arrives meanwhile (the
                    // bench's first +1 Service) waited for it. It touches only what is not ours.
                    self.migration = Some(tokio::task::spawn_blocking(move || {
                        let m = take_over(ours);
                        for r in &m.removed {
                            tracing::info!("removed a leftover rule set: {r}");
                        }
                        for e in &m.errors {
                            tracing::warn!("removing leftovers of kube-proxy or of our other mode: {e}");
                        }
                    }));
                }
            }
            Err(e) => {
                tracing::error!("{e}; the previous rules stay in place, a full sync follows");
                let fam = family_label(e.family);
                match self.settings.mode {
                    crate::config::ProxyMode::Nftables => {
                        self.metrics.nftables_sync_failures.with_label_values(&[fam]).inc()
                    }
                    crate::config::ProxyMode::Iptables => {
                        self.metrics.iptables_restore_failures.with_label_values(&[fam]).inc()
                    }
                }
                self.need_full = true;
                self.last_failure = true;
                self.tracker.give_back(changes);
            }
        }
    }

    /// Waits for the removal of kube-proxy's leftovers if it is running (after the first sync).
    pub async fn migration_done(&mut self) {
        if let Some(m) = self.migration.take()
            && let Err(e) = m.await
        {
            tracing::warn!("removing leftovers of kube-proxy or of our other mode: {e}");
        }
    }

    /// kube-proxy's network programming latency: from the trigger time the EndpointSlice
    /// controller stamped on a slice to the moment its rules are in the kernel.
    fn observe_programming_latency(&self, trigger_times: &[String]) {
        let now = jiff::Timestamp::now();
        for t in trigger_times {
            let Ok(ts) = t.parse::<jiff::Timestamp>() else {
                tracing::debug!("unparsable trigger time {t:?}");
                continue;
            };
            let secs = now.duration_since(ts).as_secs_f64();
            if secs >= 0.0 {
                for f in ["IPv4", "IPv6"] {
                    self.metrics.network_programming_duration.with_label_values(&[f]).observe(secs);
                }
            }
        }
    }

    /// Gauges and health-check servers, from [`Stats`] kept up to date with the changed Services
    /// only (all of them after a full sync).
    async fn update_stats(&mut self, ctx: &NodeContext, changes: &Changes, full: bool) {
        if full || changes.node {
            self.stats.rebuild(&self.tracker.state, ctx);
        } else {
            self.stats.update(&self.tracker.state, ctx, &changes.services);
        }
        for fam in [IpFamily::V4, IpFamily::V6] {
            let (l, t) = (family_label(fam), self.stats.totals(fam));
            self.metrics.services.with_label_values(&[l]).set(t.services);
            self.metrics.service_ports.with_label_values(&[l]).set(t.service_ports);
            self.metrics.endpoints.with_label_values(&[l]).set(t.endpoints);
            self.metrics.no_local_endpoints.with_label_values(&["internal", l]).set(t.no_local_internal);
            self.metrics.no_local_endpoints.with_label_values(&["external", l]).set(t.no_local_external);
        }
        let addrs = self.health_check_addresses(ctx);
        if addrs != self.service_health.addresses {
            // New addresses: every server is started again on them.
            self.service_health = ServiceHealthServers::new(self.health.clone(), addrs);
        }
        self.service_health.sync(self.stats.health().clone()).await;
    }

    /// Addresses the healthCheckNodePort servers listen on: kube-proxy's NodePort addresses.
    fn health_check_addresses(&self, ctx: &NodeContext) -> Vec<IpAddr> {
        match &ctx.nodeport_addresses {
            NodePortAddresses::Primary if !ctx.node_ips.is_empty() => ctx.node_ips.clone(),
            _ => vec![IpAddr::V4(Ipv4Addr::UNSPECIFIED), IpAddr::V6(Ipv6Addr::UNSPECIFIED)],
        }
    }
}

/// Binds the metrics and health servers. Errors name the flag.
pub async fn serve_http<N: Netfilter>(proxy: &Proxy<N>) -> Result<(), DaemonError> {
    let hard_fail = proxy.settings.bind_address_hard_fail;
    if let Some(addr) = proxy.settings.metrics_bind_address {
        let (m, mode) = (proxy.metrics.clone(), proxy.settings.mode);
        // kube-proxy's component pages: the configuration in force and the flags given.
        let configz = serde_json::json!({
            "kubeproxy.config.k8s.io": proxy.settings.to_v1alpha1(Some(&proxy.node_name))
        })
        .to_string();
        let flagz = format!(
            "kube-proxy flags\nWarning: This endpoint is not meant to be machine parseable, has no formatting compatibility guarantees and is for debugging purposes only.\n\n{}\n",
            proxy.settings.flags.join("\n")
        );
        let app = axum::Router::new()
            .route(
                "/metrics",
                axum::routing::get(move || async move {
                    ([(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4")], m.render())
                }),
            )
            .route(
                "/proxyMode",
                axum::routing::get(move || async move {
                    match mode {
                        crate::config::ProxyMode::Nftables => "nftables",
                        crate::config::ProxyMode::Iptables => "iptables",
                    }
                }),
            )
            .route(
                "/configz",
                axum::routing::get(move || async move {
                    ([(axum::http::header::CONTENT_TYPE, "application/json")], configz)
                }),
            )
            .route(
                "/flagz",
                axum::routing::get(move || async move {
                    ([(axum::http::header::CONTENT_TYPE, "text/plain; charset=utf-8")], flagz)
                }),
            )
            .merge(crate::health::router(proxy.health.clone(), proxy.metrics.clone()));
        serve_on(addr, app, hard_fail, "--metrics-bind-address", |addr, source| DaemonError::MetricsBind {
            addr,
            source,
        })
        .await?;
    }
    if let Some(addr) = proxy.settings.healthz_bind_address {
        let app = crate::health::router(proxy.health.clone(), proxy.metrics.clone());
        serve_on(addr, app, hard_fail, "--healthz-bind-address", |addr, source| DaemonError::HealthzBind {
            addr,
            source,
        })
        .await?;
    }
    Ok(())
}

/// Serves `app` on `addr`. A failed bind ends the process with `hard_fail`; otherwise it is
/// retried every 5 s while the proxy runs (kube-proxy's `bindAddressHardFail: false`, its default).
async fn serve_on(
    addr: std::net::SocketAddr,
    app: axum::Router,
    hard_fail: bool,
    flag: &'static str,
    error: fn(std::net::SocketAddr, std::io::Error) -> DaemonError,
) -> Result<(), DaemonError> {
    let first = match tokio::net::TcpListener::bind(addr).await {
        Ok(l) => Some(l),
        Err(e) if hard_fail => return Err(error(addr, e)),
        Err(e) => {
            tracing::warn!("{flag} {addr}: {e}: retrying every 5 s (--bind-address-hard-fail makes this fatal)");
            None
        }
    };
    tokio::spawn(async move {
        let mut listener = first;
        while listener.is_none() {
            tokio::time::sleep(Duration::from_secs(5)).await;
            listener = tokio::net::TcpListener::bind(addr).await.ok();
            if listener.is_some() {
                tracing::info!("{flag} {addr}: bound");
            }
        }
        let _ = axum::serve(listener.expect("bound above"), app).await;
    });
    Ok(())
}

/// kube-proxy's one-time node set-up: the sysctls and conntrack limits, and this process's
/// oom_score_adj. `run --init-only` does this and exits.
pub fn init_node(settings: &Settings) {
    crate::sysctls::apply_at_start(settings);
    if let Some(v) = settings.oom_score_adj {
        match std::fs::write("/proc/self/oom_score_adj", v.to_string()) {
            Ok(()) => tracing::debug!(value = v, "oom_score_adj set"),
            Err(e) => tracing::warn!("oom_score_adj {v}: {e}"),
        }
    }
}

/// Follows the kernel's address changes (rtnetlink multicast) on a thread of its own: each one
/// becomes a `LocalAddressesChanged` event, so NodePort addresses follow the interfaces.
fn spawn_address_monitor(tx: mpsc::Sender<SourceEvent>) {
    let mut monitor = match nftproxy_nftables::addrs::AddressMonitor::open() {
        Ok(m) => m,
        Err(e) => {
            tracing::warn!("cannot follow interface address changes (rtnetlink): {e}");
            return;
        }
    };
    std::thread::Builder::new()
        .name("address-monitor".into())
        .spawn(move || {
            while monitor.wait().is_ok() {
                // Several changes in a row (an interface going down) become one look.
                std::thread::sleep(Duration::from_millis(50));
                if tx.blocking_send(SourceEvent::LocalAddressesChanged).is_err() {
                    return;
                }
            }
        })
        .ok();
}

/// Runs until SIGTERM or SIGINT. The rules stay in place when it returns (like kube-proxy: a
/// restart must not interrupt traffic).
/// Until `at`; forever without one.
async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(t) => tokio::time::sleep_until(t.into()).await,
        None => std::future::pending().await,
    }
}

pub async fn run(settings: Settings, node_name: String, source: Source) -> Result<(), DaemonError> {
    let mut proxy = Proxy::new(settings, node_name.clone())?;
    init_node(&proxy.settings);
    proxy.refresh_local_addresses();
    serve_http(&proxy).await?;
    let (tx, mut rx) = mpsc::channel::<SourceEvent>(1024);
    spawn_address_monitor(tx.clone());
    let source_task = match source {
        Source::Api(client) => {
            let (c, n) = (client.clone(), node_name.clone());
            tokio::spawn(async move {
                if let Err(e) = nftproxy_kube::announce_start(c, &n).await {
                    tracing::warn!("could not post the Starting event: {e}");
                }
            });
            tokio::spawn(nftproxy_kube::watch(client, node_name, tx))
        }
        Source::Manifests(path, every, allow_empty) => {
            tokio::spawn(crate::manifests::watch(path, node_name, every, allow_empty, tx))
        }
    };
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
    let config_file = proxy.settings.config_file.clone();
    let config_stamp = config_file.as_deref().map(crate::manifests::file_stamp);
    let mut config_poll = tokio::time::interval(Duration::from_secs(1));
    tracing::info!(mode = ?proxy.settings.mode, node = %proxy.node_name, "waiting for the complete lists of Services and EndpointSlices");
    loop {
        let sleep = sleep_until(proxy.next_sync());
        let audit_sleep = sleep_until(proxy.next_audit());
        tokio::select! {
            ev = rx.recv() => {
                let Some(ev) = ev else { break };
                proxy.event(ev);
                // Take whatever else is queued before deciding when to sync.
                while let Ok(ev) = rx.try_recv() {
                    proxy.event(ev);
                }
            }
            _ = sleep => proxy.sync().await,
            _ = audit_sleep => proxy.audit_step(),
            _ = config_poll.tick(), if config_file.is_some() => {
                let path = config_file.as_deref().expect("checked");
                if Some(crate::manifests::file_stamp(path)) != config_stamp {
                    source_task.abort();
                    return Err(DaemonError::ConfigChanged(path.display().to_string()));
                }
            }
            _ = term.recv() => { tracing::info!("SIGTERM: exiting, rules left in place"); break }
            _ = tokio::signal::ctrl_c() => { tracing::info!("interrupted: exiting, rules left in place"); break }
        }
    }
    source_task.abort();
    proxy.migration_done().await;
    Ok(())
}
