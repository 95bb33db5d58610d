//! kube-proxy's health servers: `/healthz` and `/livez` on `--healthz-bind-address`, and one
//! healthCheckNodePort server per `externalTrafficPolicy: Local` LoadBalancer Service, answering
//! load balancers with the number of local endpoints. Same JSON, status codes and headers as
//! kube-proxy 1.34 (pkg/proxy/healthcheck).

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::IntoResponse;
use nftproxy_model::ServiceName;
use tokio::task::JoinHandle;

use crate::metrics::Metrics;

/// kube-proxy's ProxyHealthServer state: per family, when rules were last synced and the oldest
/// change still waiting for a sync.
pub struct ProxyHealth {
    timeout: Duration,
    inner: Mutex<HealthInner>,
}

#[derive(Default)]
struct HealthInner {
    last_updated: BTreeMap<&'static str, SystemTime>,
    oldest_pending: BTreeMap<&'static str, SystemTime>,
    node_eligible: bool,
}

#[derive(serde::Serialize)]
struct FamilyHealth {
    #[serde(rename = "lastUpdated")]
    last_updated: String,
    healthy: bool,
}

#[derive(serde::Serialize)]
struct HealthBody {
    #[serde(rename = "lastUpdated")]
    last_updated: String,
    #[serde(rename = "currentTime")]
    current_time: String,
    #[serde(rename = "nodeEligible", skip_serializing_if = "Option::is_none")]
    node_eligible: Option<bool>,
    healthy: bool,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    status: BTreeMap<&'static str, FamilyHealth>,
}

/// Go's time.Time JSON form (RFC 3339 with nanoseconds); the zero time for "never".
fn go_time(t: Option<SystemTime>) -> String {
    match t.and_then(|t| jiff::Timestamp::try_from(t).ok()) {
        Some(ts) => ts.to_string(),
        None => "0001-01-01T00:00:00Z".into(),
    }
}

pub const FAMILIES: [&str; 2] = ["IPv4", "IPv6"];

impl ProxyHealth {
    /// kube-proxy's health timeout is twice the sync period.
    /// The node counts as eligible until a Node event says otherwise (kube-proxy: "the node is
    /// eligible while it's starting up and until we've processed the first node event that
    /// indicates the contrary"), so a proxy without a Node object is not drained.
    pub fn new(sync_period: Duration) -> ProxyHealth {
        let inner = HealthInner { node_eligible: true, ..Default::default() };
        ProxyHealth { timeout: 2 * sync_period, inner: Mutex::new(inner) }
    }

    /// A change arrived that the next sync must program.
    pub fn queued(&self) {
        let mut i = self.inner.lock().unwrap();
        let now = SystemTime::now();
        for f in FAMILIES {
            i.oldest_pending.entry(f).or_insert(now);
        }
    }

    /// A sync of `family` succeeded.
    pub fn updated(&self, family: &'static str) {
        let mut i = self.inner.lock().unwrap();
        i.oldest_pending.remove(family);
        i.last_updated.insert(family, SystemTime::now());
    }

    pub fn set_node_eligible(&self, eligible: bool) {
        self.inner.lock().unwrap().node_eligible = eligible;
    }

    /// Whether every family is healthy: no change has waited longer than the timeout.
    pub fn healthy(&self) -> bool {
        self.body(false).1
    }

    fn body(&self, with_node: bool) -> (HealthBody, bool) {
        let i = self.inner.lock().unwrap();
        let now = SystemTime::now();
        let mut status = BTreeMap::new();
        let mut healthy = true;
        for (&f, &t) in &i.last_updated {
            let late =
                i.oldest_pending.get(f).is_some_and(|q| now.duration_since(*q).unwrap_or_default() >= self.timeout);
            healthy &= !late;
            status.insert(f, FamilyHealth { last_updated: go_time(Some(t)), healthy: !late });
        }
        let last = i.last_updated.values().max().copied();
        let node_eligible = with_node.then_some(i.node_eligible);
        let ok = healthy && node_eligible.unwrap_or(true);
        // Like kube-proxy: a healthy answer reports "now" as lastUpdated (older clients read it
        // as "the sync loop is alive").
        let last_updated = if ok { go_time(Some(now)) } else { go_time(last) };
        (HealthBody { last_updated, current_time: go_time(Some(now)), node_eligible, healthy, status }, ok)
    }
}

fn json_headers() -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    h.insert("X-Content-Type-Options", HeaderValue::from_static("nosniff"));
    h
}

/// The `/healthz` and `/livez` router. `/healthz` also requires this node to be eligible (its
/// Node exists and is not being deleted), `/livez` does not.
pub fn router(health: Arc<ProxyHealth>, metrics: Arc<Metrics>) -> axum::Router {
    let (h2, m2) = (health.clone(), metrics.clone());
    axum::Router::new()
        .route(
            "/healthz",
            axum::routing::get(move || {
                let (body, ok) = health.body(true);
                metrics.healthz_total.with_label_values(&[if ok { "200" } else { "503" }]).inc();
                answer(ok, serde_json::to_string(&body).unwrap())
            }),
        )
        .route(
            "/livez",
            axum::routing::get(move || {
                let (body, ok) = h2.body(false);
                m2.livez_total.with_label_values(&[if ok { "200" } else { "503" }]).inc();
                answer(ok, serde_json::to_string(&body).unwrap())
            }),
        )
}

async fn answer(ok: bool, body: String) -> impl IntoResponse {
    let code = if ok { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (code, json_headers(), body)
}

/// What a healthCheckNodePort server reports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceHealthEntry {
    pub port: u16,
    pub local_endpoints: usize,
}

struct Running {
    port: u16,
    count: Arc<Mutex<usize>>,
    tasks: Vec<JoinHandle<()>>,
}

/// The healthCheckNodePort servers: started, updated and stopped to match each sync.
pub struct ServiceHealthServers {
    health: Arc<ProxyHealth>,
    running: BTreeMap<ServiceName, Running>,
    /// Addresses to listen on (kube-proxy: the NodePort addresses; unspecified = all).
    pub addresses: Vec<IpAddr>,
}

impl ServiceHealthServers {
    pub fn new(health: Arc<ProxyHealth>, addresses: Vec<IpAddr>) -> Self {
        ServiceHealthServers { health, running: BTreeMap::new(), addresses }
    }

    /// Brings the servers to `want`. A port that cannot be bound is logged and skipped, like
    /// kube-proxy (the Service's other rules are unaffected).
    pub async fn sync(&mut self, want: BTreeMap<ServiceName, ServiceHealthEntry>) {
        let stale: Vec<ServiceName> = self
            .running
            .iter()
            .filter(|(k, r)| want.get(*k).is_none_or(|w| w.port != r.port))
            .map(|(k, _)| k.clone())
            .collect();
        for k in stale {
            if let Some(r) = self.running.remove(&k) {
                for t in r.tasks {
                    t.abort();
                }
            }
        }
        for (name, entry) in want {
            if let Some(r) = self.running.get(&name) {
                *r.count.lock().unwrap() = entry.local_endpoints;
                continue;
            }
            let count = Arc::new(Mutex::new(entry.local_endpoints));
            let mut tasks = Vec::new();
            for addr in &self.addresses {
                let sa = SocketAddr::new(*addr, entry.port);
                let listener = match tokio::net::TcpListener::bind(sa).await {
                    Ok(l) => l,
                    Err(e) => {
                        tracing::error!(service = %name, address = %sa, error = %e, "healthCheckNodePort server not started");
                        continue;
                    }
                };
                let app = service_router(name.clone(), count.clone(), self.health.clone());
                tasks.push(tokio::spawn(async move {
                    let _ = axum::serve(listener, app).await;
                }));
            }
            self.running.insert(name, Running { port: entry.port, count, tasks });
        }
    }
}

fn service_router(name: ServiceName, count: Arc<Mutex<usize>>, health: Arc<ProxyHealth>) -> axum::Router {
    axum::Router::new().fallback(move || {
        let n = *count.lock().unwrap();
        let healthy = health.healthy();
        let ok = n != 0 && healthy;
        let mut h = json_headers();
        h.insert("X-Load-Balancing-Endpoint-Weight", HeaderValue::from(n));
        let body = format!(
            "{{\n\t\"service\": {{\n\t\t\"namespace\": {:?},\n\t\t\"name\": {:?}\n\t}},\n\t\"localEndpoints\": {n},\n\t\"serviceProxyHealthy\": {healthy}\n}}",
            name.namespace, name.name
        );
        async move { (if ok { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE }, h, body) }
    })
}

impl Drop for ServiceHealthServers {
    fn drop(&mut self) {
        for r in self.running.values() {
            for t in &r.tasks {
                t.abort();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unhealthy_only_when_a_change_waits_too_long() {
        let h = ProxyHealth::new(Duration::from_millis(10));
        assert!(h.healthy(), "starting up is healthy");
        h.updated("IPv4");
        h.queued();
        assert!(h.healthy(), "a fresh change is not late");
        std::thread::sleep(Duration::from_millis(30));
        assert!(!h.healthy(), "a change older than 2 × sync period is late");
        h.updated("IPv4");
        h.updated("IPv6");
        assert!(h.healthy());
        let (body, ok) = h.body(true);
        assert!(ok, "no Node event yet: eligible, as kube-proxy starts");
        assert_eq!(body.node_eligible, Some(true));
        h.set_node_eligible(false);
        let (body, ok) = h.body(true);
        assert!(!ok, "a Node event made it ineligible");
        assert_eq!(body.node_eligible, Some(false));
        assert!(h.body(false).1, "/livez ignores eligibility");
    }

    #[test]
    fn go_time_format() {
        assert_eq!(go_time(None), "0001-01-01T00:00:00Z");
        let t = SystemTime::UNIX_EPOCH + Duration::from_millis(1_700_000_000_250);
        assert_eq!(go_time(Some(t)), "2023-11-14T22:13:20.25Z");
    }
}
