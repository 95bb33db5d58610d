//! kube-proxy's metrics, under kube-proxy's names, label names and buckets
//! (pkg/proxy/metrics in Kubernetes 1.34), plus a few gauges of our own under `kubenftproxy_`.

use prometheus::{
    Encoder, Gauge, GaugeVec, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

pub struct Metrics {
    pub registry: Registry,
    pub sync_duration: HistogramVec,
    pub sync_full_duration: HistogramVec,
    pub sync_partial_duration: HistogramVec,
    pub last_timestamp: GaugeVec,
    pub last_queued_timestamp: GaugeVec,
    pub network_programming_duration: HistogramVec,
    pub endpoint_changes_pending: IntGauge,
    pub endpoint_changes_total: IntCounter,
    pub service_changes_pending: IntGauge,
    pub service_changes_total: IntCounter,
    pub nftables_sync_failures: IntCounterVec,
    pub iptables_restore_failures: IntCounterVec,
    pub healthz_total: IntCounterVec,
    pub livez_total: IntCounterVec,
    pub no_local_endpoints: IntGaugeVec,
    pub conntrack_deleted: IntCounterVec,
    /// Ours: Services, service ports and endpoints programmed in the last sync, per family.
    pub services: IntGaugeVec,
    pub service_ports: IntGaugeVec,
    pub endpoints: IntGaugeVec,
    pub drift_repairs: IntCounter,
    pub last_sync_messages: Gauge,
    /// Manifest sources that did not load as a whole (the previous state was kept).
    pub manifest_load_failures: IntCounter,
    /// UDP conntrack cleanups that failed (the sync itself succeeded; the next one retries).
    pub conntrack_cleanup_failures: IntCounter,
    /// Bytes in live heap allocations, read at each scrape (a leak shows here even while the
    /// allocator's caches hide it from the resident set).
    pub heap_in_use: IntGauge,
}

fn exponential(start: f64, factor: f64, n: usize) -> Vec<f64> {
    prometheus::exponential_buckets(start, factor, n).expect("valid buckets")
}

fn linear(start: f64, width: f64, n: usize) -> Vec<f64> {
    prometheus::linear_buckets(start, width, n).expect("valid buckets")
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let registry = Registry::new();
        let fam = &["ip_family"];
        let hist = |name: &str, help: &str, buckets: Vec<f64>| {
            let h = HistogramVec::new(HistogramOpts::new(name, help).subsystem("kubeproxy").buckets(buckets), fam)
                .expect("valid histogram");
            registry.register(Box::new(h.clone())).expect("register");
            h
        };
        let sync_duration =
            hist("sync_proxy_rules_duration_seconds", "SyncProxyRules latency in seconds", exponential(0.001, 2.0, 15));
        let sync_full_duration = hist(
            "sync_full_proxy_rules_duration_seconds",
            "SyncProxyRules latency in seconds for full resyncs",
            exponential(0.001, 2.0, 15),
        );
        let sync_partial_duration = hist(
            "sync_partial_proxy_rules_duration_seconds",
            "SyncProxyRules latency in seconds for partial resyncs",
            exponential(0.001, 2.0, 15),
        );
        let mut npd = linear(0.25, 0.25, 2);
        npd.extend(linear(1.0, 1.0, 59));
        npd.extend(linear(60.0, 5.0, 12));
        npd.extend(linear(120.0, 30.0, 7));
        let network_programming_duration =
            hist("network_programming_duration_seconds", "In Cluster Network Programming Latency in seconds", npd);
        let gauge_vec = |name: &str, help: &str, labels: &[&str]| {
            let g = GaugeVec::new(Opts::new(name, help).subsystem("kubeproxy"), labels).expect("valid gauge");
            registry.register(Box::new(g.clone())).expect("register");
            g
        };
        let last_timestamp = gauge_vec(
            "sync_proxy_rules_last_timestamp_seconds",
            "The last time proxy rules were successfully synced",
            fam,
        );
        let last_queued_timestamp = gauge_vec(
            "sync_proxy_rules_last_queued_timestamp_seconds",
            "The last time a sync of proxy rules was queued",
            fam,
        );
        let int_gauge = |name: &str, help: &str| {
            let g = IntGauge::with_opts(Opts::new(name, help).subsystem("kubeproxy")).expect("valid gauge");
            registry.register(Box::new(g.clone())).expect("register");
            g
        };
        let counter = |name: &str, help: &str| {
            let c = IntCounter::with_opts(Opts::new(name, help).subsystem("kubeproxy")).expect("valid counter");
            registry.register(Box::new(c.clone())).expect("register");
            c
        };
        let counter_vec = |subsystem: &str, name: &str, help: &str, labels: &[&str]| {
            let c = IntCounterVec::new(Opts::new(name, help).subsystem(subsystem), labels).expect("valid counter");
            registry.register(Box::new(c.clone())).expect("register");
            c
        };
        let int_gauge_vec = |subsystem: &str, name: &str, help: &str, labels: &[&str]| {
            let g = IntGaugeVec::new(Opts::new(name, help).subsystem(subsystem), labels).expect("valid gauge");
            registry.register(Box::new(g.clone())).expect("register");
            g
        };
        let m = Metrics {
            sync_duration,
            sync_full_duration,
            sync_partial_duration,
            last_timestamp,
            last_queued_timestamp,
            network_programming_duration,
            endpoint_changes_pending: int_gauge(
                "sync_proxy_rules_endpoint_changes_pending",
                "Pending proxy rules Endpoint changes",
            ),
            endpoint_changes_total: counter(
                "sync_proxy_rules_endpoint_changes_total",
                "Cumulative proxy rules Endpoint changes",
            ),
            service_changes_pending: int_gauge(
                "sync_proxy_rules_service_changes_pending",
                "Pending proxy rules Service changes",
            ),
            service_changes_total: counter(
                "sync_proxy_rules_service_changes_total",
                "Cumulative proxy rules Service changes",
            ),
            nftables_sync_failures: counter_vec(
                "kubeproxy",
                "sync_proxy_rules_nftables_sync_failures_total",
                "Cumulative proxy nftables sync failures",
                fam,
            ),
            iptables_restore_failures: counter_vec(
                "kubeproxy",
                "sync_proxy_rules_iptables_restore_failures_total",
                "Cumulative proxy iptables restore failures",
                fam,
            ),
            healthz_total: counter_vec(
                "kubeproxy",
                "proxy_healthz_total",
                "Cumulative proxy healthz HTTP status",
                &["code"],
            ),
            livez_total: counter_vec("kubeproxy", "proxy_livez_total", "Cumulative proxy livez HTTP status", &["code"]),
            no_local_endpoints: int_gauge_vec(
                "kubeproxy",
                "sync_proxy_rules_no_local_endpoints_total",
                "Number of services with a Local traffic policy and no endpoints",
                &["traffic_policy", "ip_family"],
            ),
            conntrack_deleted: counter_vec(
                "kubeproxy",
                "conntrack_reconciler_deleted_entries_total",
                "Cumulative conntrack flows deleted by conntrack reconciler",
                fam,
            ),
            services: int_gauge_vec("kubenftproxy", "services", "Services programmed by the last sync", fam),
            service_ports: int_gauge_vec(
                "kubenftproxy",
                "service_ports",
                "Service ports programmed by the last sync",
                fam,
            ),
            endpoints: int_gauge_vec(
                "kubenftproxy",
                "endpoints",
                "Endpoints (per service port) programmed by the last sync",
                fam,
            ),
            drift_repairs: {
                let c = IntCounter::with_opts(
                    Opts::new(
                        "drift_repairs_total",
                        "Syncs that found our rules changed by someone else and restored them",
                    )
                    .subsystem("kubenftproxy"),
                )
                .expect("valid counter");
                registry.register(Box::new(c.clone())).expect("register");
                c
            },
            conntrack_cleanup_failures: {
                let c = IntCounter::with_opts(
                    Opts::new(
                        "conntrack_cleanup_failures_total",
                        "UDP conntrack cleanups that failed; the rules were programmed and the next sync retries",
                    )
                    .subsystem("kubenftproxy"),
                )
                .expect("valid counter");
                registry.register(Box::new(c.clone())).expect("register");
                c
            },
            manifest_load_failures: {
                let c = IntCounter::with_opts(
                    Opts::new(
                        "manifest_load_failures_total",
                        "Manifest sources (--from) that did not load as a whole; the previous state was kept",
                    )
                    .subsystem("kubenftproxy"),
                )
                .expect("valid counter");
                registry.register(Box::new(c.clone())).expect("register");
                c
            },
            heap_in_use: {
                let g = IntGauge::with_opts(
                    Opts::new("heap_in_use_bytes", "Bytes in live heap allocations (glibc mallinfo2), read at scrape time")
                        .subsystem("kubenftproxy"),
                )
                .expect("valid gauge");
                registry.register(Box::new(g.clone())).expect("register");
                g
            },
            last_sync_messages: {
                let g = Gauge::with_opts(
                    Opts::new("last_sync_netlink_messages", "Netlink messages sent by the last sync")
                        .subsystem("kubenftproxy"),
                )
                .expect("valid gauge");
                registry.register(Box::new(g.clone())).expect("register");
                g
            },
            registry,
        };
        // process_resident_memory_bytes, process_cpu_seconds_total, …, as kube-proxy (client-go's
        // legacy registry) exposes them.
        #[cfg(target_os = "linux")]
        m.registry
            .register(Box::new(prometheus::process_collector::ProcessCollector::for_self()))
            .expect("register the process collector");
        // Families appear from the start, as kube-proxy's do after its first sync.
        for f in ["IPv4", "IPv6"] {
            m.nftables_sync_failures.with_label_values(&[f]);
            m.iptables_restore_failures.with_label_values(&[f]);
        }
        m
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        if let Some(b) = crate::heap::in_use_bytes() {
            self.heap_in_use.set(b as i64);
        }
        let mut buf = Vec::new();
        TextEncoder::new().encode(&self.registry.gather(), &mut buf).expect("text encoding");
        String::from_utf8(buf).expect("utf-8 metrics")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kube_proxy_names_and_buckets() {
        let m = Metrics::new();
        m.sync_duration.with_label_values(&["IPv4"]).observe(0.003);
        m.network_programming_duration.with_label_values(&["IPv4"]).observe(1.5);
        m.last_timestamp.with_label_values(&["IPv4"]).set(1.7e9);
        let text = m.render();
        for name in [
            "kubeproxy_sync_proxy_rules_duration_seconds_bucket{ip_family=\"IPv4\",le=\"0.004\"} 1",
            "kubeproxy_sync_proxy_rules_duration_seconds_bucket{ip_family=\"IPv4\",le=\"16.384\"} 1",
            "kubeproxy_network_programming_duration_seconds_bucket{ip_family=\"IPv4\",le=\"1\"} 0",
            "kubeproxy_network_programming_duration_seconds_bucket{ip_family=\"IPv4\",le=\"2\"} 1",
            "kubeproxy_network_programming_duration_seconds_bucket{ip_family=\"IPv4\",le=\"300\"} 1",
            "kubeproxy_sync_proxy_rules_last_timestamp_seconds{ip_family=\"IPv4\"} 1700000000",
            "kubeproxy_sync_proxy_rules_nftables_sync_failures_total{ip_family=\"IPv6\"} 0",
            "# TYPE kubeproxy_sync_proxy_rules_endpoint_changes_total counter",
            "# TYPE process_resident_memory_bytes gauge",
            "# TYPE kubenftproxy_heap_in_use_bytes gauge",
        ] {
            assert!(text.contains(name), "missing {name} in\n{text}");
        }
    }
}
