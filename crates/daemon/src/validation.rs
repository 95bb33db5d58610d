//! kube-proxy's validation of its configuration (`pkg/proxy/apis/config/validation`, v1.34), with
//! its rules, its order and its error texts, so that a ConfigMap or command line kube-proxy
//! refuses is refused here with the same words: `failed validate: KubeProxyConfiguration.X:
//! Invalid value: …: …`, several errors as `[e1, e2]` (apimachinery's aggregate). The texts were
//! checked against the real kube-proxy v1.34.4 binary (`tests` below quote its output).
//!
//! It runs on [`Internal`]: the fields kube-proxy's validation reads, as kube-proxy's v1alpha1
//! defaulting and conversion leave them — zero durations and empty addresses take their
//! defaults, the sync periods come from the section of the mode in use, `clusterCIDR` is split
//! into the local-detection CIDRs. Values that do not parse at all (a word where a number goes)
//! fail earlier, in decoding, as they do in kube-proxy.
//!
//! Differences, each deliberate: mode `ipvs` passes here and is refused afterwards (no IPVS
//! mode); `nodePortAddresses: [all]` is our extension and passes.

use std::net::IpAddr;
use std::time::Duration;

use crate::config::{FileDuration, KubeProxyConfiguration, ProxyMode};

/// kube-proxy's version whose previous minor `showHiddenMetricsForVersion` may name.
const PREVIOUS_MINOR: &str = "1.33";

/// The fields of kube-proxy's internal configuration that its validation reads, after defaulting.
#[derive(Clone, Debug, PartialEq)]
pub struct Internal {
    pub mode: String,
    pub iptables_masquerade_bit: i64,
    /// Validated in nftables mode only (kube-proxy validates the section of the mode in use).
    pub nftables_masquerade_bit: i64,
    pub conntrack_max_per_core: Option<i64>,
    pub conntrack_min: Option<i64>,
    pub tcp_established_timeout: FileDuration,
    pub tcp_close_wait_timeout: FileDuration,
    pub udp_timeout: FileDuration,
    pub udp_stream_timeout: FileDuration,
    pub oom_score_adj: Option<i64>,
    pub burst: i64,
    pub config_sync_period: FileDuration,
    pub sync_period: FileDuration,
    pub min_sync_period: FileDuration,
    pub bind_address: String,
    pub healthz_bind_address: String,
    pub metrics_bind_address: String,
    pub node_port_addresses: Vec<String>,
    pub show_hidden_metrics_for_version: String,
    pub detect_local_mode: String,
    pub bridge_interface: String,
    pub interface_name_prefix: String,
    pub cluster_cidrs: Vec<String>,
}

impl Default for Internal {
    /// kube-proxy's defaults (v1alpha1 `SetDefaults_KubeProxyConfiguration`).
    fn default() -> Internal {
        // One source of kube-proxy's defaults: the settings' own.
        let s = crate::config::Settings::default();
        let c = &s.conntrack;
        let addr = |a: Option<std::net::SocketAddr>| a.map(|a| a.to_string()).unwrap_or_default();
        Internal {
            mode: String::new(),
            iptables_masquerade_bit: s.masquerade_bit.into(),
            nftables_masquerade_bit: s.masquerade_bit.into(),
            conntrack_max_per_core: Some(c.max_per_core.into()),
            conntrack_min: Some(c.min.into()),
            tcp_established_timeout: c.tcp_established_timeout.into(),
            tcp_close_wait_timeout: c.tcp_close_wait_timeout.into(),
            udp_timeout: c.udp_timeout.into(),
            udp_stream_timeout: c.udp_stream_timeout.into(),
            oom_score_adj: s.oom_score_adj.map(i64::from),
            // Settings without a counterpart here (we have no client rate limit, no informer
            // resync): kube-proxy's v1alpha1 defaults.
            burst: 10,
            config_sync_period: Duration::from_secs(15 * 60).into(),
            sync_period: s.sync_period.into(),
            min_sync_period: s.min_sync_period.into(),
            bind_address: "0.0.0.0".into(),
            healthz_bind_address: addr(s.healthz_bind_address),
            metrics_bind_address: addr(s.metrics_bind_address),
            node_port_addresses: Vec::new(),
            show_hidden_metrics_for_version: String::new(),
            detect_local_mode: "ClusterCIDR".into(),
            bridge_interface: String::new(),
            interface_name_prefix: String::new(),
            cluster_cidrs: Vec::new(),
        }
    }
}

/// kube-proxy's `AppendPortIfNeeded`: a bare IP gets the default port.
pub fn with_port(addr: &str, port: u16) -> String {
    let a = addr.trim();
    match a.parse::<IpAddr>() {
        Ok(IpAddr::V6(ip)) => format!("[{ip}]:{port}"),
        Ok(ip) => format!("{ip}:{port}"),
        Err(_) => a.to_string(),
    }
}

impl Internal {
    /// A v1alpha1 file after kube-proxy's defaulting and conversion. `mode` picks the section the
    /// sync periods and the nftables masquerade bit come from (ours: `""` is nftables).
    pub fn from_file(cfg: &KubeProxyConfiguration) -> Internal {
        let mut c = Internal::default();
        let text = |v: &Option<String>| v.as_deref().map(str::trim).filter(|t| !t.is_empty()).map(str::to_string);
        c.mode = cfg.mode.clone().unwrap_or_default();
        let mode: ProxyMode = c.mode.parse().unwrap_or_default();
        if let Some(b) = cfg.iptables.as_ref().and_then(|m| m.masquerade_bit) {
            c.iptables_masquerade_bit = b;
        }
        if let Some(b) = cfg.nftables.as_ref().and_then(|m| m.masquerade_bit) {
            c.nftables_masquerade_bit = b;
        }
        let section = match mode {
            ProxyMode::Nftables => &cfg.nftables,
            ProxyMode::Iptables => &cfg.iptables,
        };
        if let Some(m) = section {
            // Non-pointer durations: zero is unset.
            if let Some(d) = m.sync_period.filter(|d| !d.is_zero()) {
                c.sync_period = d;
            }
            if let Some(d) = m.min_sync_period.filter(|d| !d.is_zero()) {
                c.min_sync_period = d;
            }
        }
        if let Some(ct) = &cfg.conntrack {
            // Pointers: only absent is unset.
            if let Some(v) = ct.max_per_core {
                c.conntrack_max_per_core = Some(v.into());
            }
            if let Some(v) = ct.min {
                c.conntrack_min = Some(v.into());
            }
            for (value, slot) in [
                (ct.tcp_established_timeout, &mut c.tcp_established_timeout),
                (ct.tcp_close_wait_timeout, &mut c.tcp_close_wait_timeout),
                (ct.udp_timeout, &mut c.udp_timeout),
                (ct.udp_stream_timeout, &mut c.udp_stream_timeout),
            ] {
                if let Some(d) = value {
                    *slot = d;
                }
            }
        }
        if let Some(v) = cfg.oom_score_adj {
            c.oom_score_adj = Some(v.into());
        }
        if let Some(b) = cfg.client_connection.as_ref().and_then(|cc| cc.burst).filter(|b| *b != 0) {
            c.burst = b;
        }
        if let Some(d) = cfg.config_sync_period.filter(|d| !d.is_zero()) {
            c.config_sync_period = d;
        }
        if let Some(a) = text(&cfg.bind_address) {
            c.bind_address = a;
        }
        if let Some(a) = text(&cfg.healthz_bind_address) {
            c.healthz_bind_address = with_port(&a, 10256);
        }
        if let Some(a) = text(&cfg.metrics_bind_address) {
            c.metrics_bind_address = with_port(&a, 10249);
        }
        c.node_port_addresses = cfg.node_port_addresses.clone().unwrap_or_default();
        c.show_hidden_metrics_for_version = cfg.show_hidden_metrics_for_version.clone().unwrap_or_default();
        if let Some(m) = text(&cfg.detect_local_mode) {
            c.detect_local_mode = m;
        }
        if let Some(dl) = &cfg.detect_local {
            c.bridge_interface = dl.bridge_interface.clone().unwrap_or_default();
            c.interface_name_prefix = dl.interface_name_prefix.clone().unwrap_or_default();
        }
        if let Some(cidrs) = text(&cfg.cluster_cidr) {
            c.cluster_cidrs = cidrs.split(',').map(str::to_string).collect();
        }
        c
    }
}

/// One field error as apimachinery's `field.Error` prints it.
fn invalid(path: &str, value: Value, detail: &str) -> String {
    format!("KubeProxyConfiguration.{path}: Invalid value: {value}: {detail}")
}

/// A bad value as apimachinery prints it: numbers plain, everything else as JSON.
enum Value<'a> {
    Int(i64),
    Text(&'a str),
    Duration(FileDuration),
    List(&'a [String]),
}

impl std::fmt::Display for Value<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Value::Int(v) => write!(f, "{v}"),
            Value::Text(t) => write!(f, "{}", serde_json::Value::from(*t)),
            Value::Duration(d) => write!(f, "{}", serde_json::Value::from(d.go_string())),
            Value::List(l) => write!(f, "{}", serde_json::to_string(l).expect("strings are JSON")),
        }
    }
}

fn is_ip(s: &str) -> bool {
    s.parse::<IpAddr>().is_ok()
}

fn is_cidr(s: &str) -> bool {
    s.parse::<ipnet::IpNet>().is_ok()
}

/// Go's `net.SplitHostPort`, as far as validation needs it.
fn split_host_port(s: &str) -> Option<(&str, &str)> {
    if let Some(rest) = s.strip_prefix('[') {
        let (host, after) = rest.split_once(']')?;
        return Some((host, after.strip_prefix(':')?));
    }
    let (host, port) = s.rsplit_once(':')?;
    (!host.contains(':')).then_some((host, port))
}

fn host_port(input: &str, path: &str, errs: &mut Vec<String>) {
    let Some((host, port)) = split_host_port(input) else {
        errs.push(invalid(path, Value::Text(input), "must be IP:port"));
        return;
    };
    if !is_ip(host) {
        errs.push(invalid(path, Value::Text(host), "must be a valid IP"));
    }
    if !port.parse::<i64>().is_ok_and(|p| (1..=65535).contains(&p)) {
        errs.push(invalid(path, Value::Text(port), "must be a valid port"));
    }
}

fn at_least_zero(v: Option<i64>, path: &str, errs: &mut Vec<String>) {
    if let Some(v) = v.filter(|v| *v < 0) {
        errs.push(invalid(path, Value::Int(v), "must be greater than or equal to 0"));
    }
}

fn duration_at_least_zero(d: FileDuration, path: &str, errs: &mut Vec<String>) {
    if d.is_negative() {
        errs.push(invalid(path, Value::Duration(d), "must be greater than or equal to 0"));
    }
}

fn masquerade_bit(v: i64, path: &str, errs: &mut Vec<String>) {
    if !(0..=31).contains(&v) {
        errs.push(invalid(path, Value::Int(v), "must be within the range [0, 31]"));
    }
}

/// kube-proxy's `Validate`: every error, in its order.
pub fn validate(c: &Internal) -> Vec<String> {
    let mut errs = Vec::new();
    masquerade_bit(c.iptables_masquerade_bit, "KubeProxyIPTablesConfiguration.MasqueradeBit", &mut errs);
    if c.mode == "nftables" {
        masquerade_bit(c.nftables_masquerade_bit, "KubeProxyNFTablesConfiguration.MasqueradeBit", &mut errs);
    }
    let ct = "KubeProxyLinuxConfiguration.KubeProxyConntrackConfiguration";
    at_least_zero(c.conntrack_max_per_core, &format!("{ct}.MaxPerCore"), &mut errs);
    at_least_zero(c.conntrack_min, &format!("{ct}.Min"), &mut errs);
    for (d, name) in [
        (c.tcp_established_timeout, "TCPEstablishedTimeout"),
        (c.tcp_close_wait_timeout, "TCPCloseWaitTimeout"),
        (c.udp_timeout, "UDPTimeout"),
        (c.udp_stream_timeout, "UDPStreamTimeout"),
    ] {
        duration_at_least_zero(d, &format!("{ct}.{name}"), &mut errs);
    }
    if let Some(v) = c.oom_score_adj.filter(|v| !(-1000..=1000).contains(v)) {
        errs.push(invalid(
            "KubeProxyLinuxConfiguration.OOMScoreAdj",
            Value::Int(v),
            "must be within the range [-1000, 1000]",
        ));
    }
    if !["", "iptables", "ipvs", "nftables"].contains(&c.mode.as_str()) {
        errs.push(invalid(
            "Mode.ProxyMode",
            Value::Text(&c.mode),
            "must be iptables, ipvs, nftables or blank (blank means the best-available proxy [currently iptables])",
        ));
    }
    if c.burst < 0 {
        errs.push(invalid("ClientConnection.Burst", Value::Int(c.burst), "must be greater than or equal to 0"));
    }
    let positive = |d: FileDuration| !d.negative && !d.is_zero();
    if !positive(c.config_sync_period) {
        errs.push(invalid("ConfigSyncPeriod", Value::Duration(c.config_sync_period), "must be greater than 0"));
    }
    if !positive(c.sync_period) {
        errs.push(invalid("SyncPeriod", Value::Duration(c.sync_period), "must be greater than 0"));
    }
    duration_at_least_zero(c.min_sync_period, "MinSyncPeriod", &mut errs);
    let signed = |d: FileDuration| if d.is_negative() { -(d.magnitude.as_nanos() as i128) } else { d.magnitude.as_nanos() as i128 };
    if signed(c.min_sync_period) > signed(c.sync_period) {
        errs.push(invalid(
            "SyncPeriod",
            Value::Duration(c.min_sync_period),
            "must be greater than or equal to KubeProxyConfiguration.MinSyncPeriod",
        ));
    }
    if !is_ip(c.bind_address.trim()) {
        errs.push(invalid(
            "BindAddress",
            Value::Text(&c.bind_address),
            "not a valid textual representation of an IP address",
        ));
    }
    if !c.healthz_bind_address.is_empty() {
        host_port(&c.healthz_bind_address, "HealthzBindAddress", &mut errs);
    }
    host_port(&c.metrics_bind_address, "MetricsBindAddress", &mut errs);
    let all_alone = c.node_port_addresses.len() == 1 && c.node_port_addresses[0] == "all";
    for (i, a) in c.node_port_addresses.iter().enumerate().filter(|_| !all_alone) {
        if a == "primary" {
            if i != 0 || c.node_port_addresses.len() != 1 {
                errs.push(invalid(&format!("NodePortAddresses[{i}]"), Value::Text(a), "can't use both 'primary' and CIDRs"));
            }
            break;
        }
        if !is_cidr(a) {
            errs.push(invalid(&format!("NodePortAddresses[{i}]"), Value::Text(a), "must be a valid CIDR"));
        }
    }
    let v = &c.show_hidden_metrics_for_version;
    if !v.is_empty() && v != PREVIOUS_MINOR {
        errs.push(invalid(
            "ShowHiddenMetricsForVersion",
            Value::Text(v),
            &format!(
                "--show-hidden-metrics-for-version must be omitted or have the value '{PREVIOUS_MINOR}'. Only the previous minor version is allowed"
            ),
        ));
    }
    const LOCAL_MODES: [&str; 5] = ["ClusterCIDR", "NodeCIDR", "BridgeInterface", "InterfaceNamePrefix", ""];
    if !LOCAL_MODES.contains(&c.detect_local_mode.as_str()) {
        let supported: Vec<String> = LOCAL_MODES.iter().map(|m| serde_json::Value::from(*m).to_string()).collect();
        errs.push(format!(
            "KubeProxyConfiguration.DetectLocalMode: Unsupported value: {}: supported values: {}",
            Value::Text(&c.detect_local_mode),
            supported.join(", ")
        ));
    }
    let dl = "DetectLocalConfiguration";
    match c.detect_local_mode.as_str() {
        "BridgeInterface" if c.bridge_interface.is_empty() => {
            errs.push(invalid(&format!("{dl}.InterfaceName"), Value::Text(""), "must not be empty"))
        }
        "InterfaceNamePrefix" if c.interface_name_prefix.is_empty() => {
            errs.push(invalid(&format!("{dl}.InterfacePrefix"), Value::Text(""), "must not be empty"))
        }
        "ClusterCIDR" if !c.cluster_cidrs.is_empty() => {
            let cidrs = &c.cluster_cidrs;
            const PAIR: &str = "must be a either a single CIDR or dual-stack pair of CIDRs (e.g. [10.100.0.0/16, fde4:8dba:82e1::/48]";
            if cidrs.len() > 2 {
                errs.push(invalid(&format!("{dl}.ClusterCIDRs"), Value::List(cidrs), PAIR));
            } else {
                for (i, s) in cidrs.iter().enumerate() {
                    if !is_cidr(s) {
                        errs.push(invalid(
                            &format!("{dl}.ClusterCIDRs[{i}]"),
                            Value::Text(s),
                            "must be a valid CIDR block (e.g. 10.100.0.0/16 or fde4:8dba:82e1::/48)",
                        ));
                    }
                }
                if let [a, b] = cidrs.as_slice()
                    && let (Ok(a), Ok(b)) = (a.parse::<ipnet::IpNet>(), b.parse::<ipnet::IpNet>())
                    && matches!(a, ipnet::IpNet::V4(_)) == matches!(b, ipnet::IpNet::V4(_))
                {
                    errs.push(invalid(&format!("{dl}.ClusterCIDRs"), Value::List(cidrs), PAIR));
                }
            }
        }
        _ => {}
    }
    errs
}

/// apimachinery's aggregate of the errors (duplicates once), as kube-proxy reports them:
/// `failed validate: e` or `failed validate: [e1, e2]`; None without errors.
pub fn failed_validate(errs: &[String]) -> Option<String> {
    let mut seen: Vec<&String> = Vec::new();
    for e in errs {
        if !seen.contains(&e) {
            seen.push(e);
        }
    }
    match seen.as_slice() {
        [] => None,
        [one] => Some(format!("failed validate: {one}")),
        many => Some(format!(
            "failed validate: [{}]",
            many.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ")
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(yaml: &str) -> Option<String> {
        let (cfg, unknown) = KubeProxyConfiguration::parse("kp.yaml", yaml).unwrap();
        assert!(unknown.is_empty(), "{unknown:?}");
        failed_validate(&validate(&Internal::from_file(&cfg)))
    }

    /// `kube-proxy --config` (v1.34.4) on the same files printed exactly these (`err="…"`, with
    /// Go's quoting of the quotes undone).
    #[test]
    fn the_real_kube_proxys_texts() {
        let every_field = r#"
mode: iptables
bindAddress: "x"
healthzBindAddress: "1.2.3.4:0"
metricsBindAddress: "nothost"
oomScoreAdj: 2000
iptables: {masqueradeBit: 40, syncPeriod: -1s, minSyncPeriod: -2s}
nftables: {masqueradeBit: -1}
conntrack: {maxPerCore: -1, min: -5, tcpEstablishedTimeout: -1s, udpTimeout: -3s}
clientConnection: {burst: -1}
configSyncPeriod: -1m
portRange: "10-5"
nodePortAddresses: ["10.0.0.0/8", "primary", "bad"]
showHiddenMetricsForVersion: "1.20"
detectLocalMode: Foo
clusterCIDR: "10.0.0.0/8,10.1.0.0/16,x"
"#;
        assert_eq!(
            check(every_field).unwrap(),
            r#"failed validate: [KubeProxyConfiguration.KubeProxyIPTablesConfiguration.MasqueradeBit: Invalid value: 40: must be within the range [0, 31], KubeProxyConfiguration.KubeProxyLinuxConfiguration.KubeProxyConntrackConfiguration.MaxPerCore: Invalid value: -1: must be greater than or equal to 0, KubeProxyConfiguration.KubeProxyLinuxConfiguration.KubeProxyConntrackConfiguration.Min: Invalid value: -5: must be greater than or equal to 0, KubeProxyConfiguration.KubeProxyLinuxConfiguration.KubeProxyConntrackConfiguration.TCPEstablishedTimeout: Invalid value: "-1s": must be greater than or equal to 0, KubeProxyConfiguration.KubeProxyLinuxConfiguration.KubeProxyConntrackConfiguration.UDPTimeout: Invalid value: "-3s": must be greater than or equal to 0, KubeProxyConfiguration.KubeProxyLinuxConfiguration.OOMScoreAdj: Invalid value: 2000: must be within the range [-1000, 1000], KubeProxyConfiguration.ClientConnection.Burst: Invalid value: -1: must be greater than or equal to 0, KubeProxyConfiguration.ConfigSyncPeriod: Invalid value: "-1m0s": must be greater than 0, KubeProxyConfiguration.SyncPeriod: Invalid value: "-1s": must be greater than 0, KubeProxyConfiguration.MinSyncPeriod: Invalid value: "-2s": must be greater than or equal to 0, KubeProxyConfiguration.BindAddress: Invalid value: "x": not a valid textual representation of an IP address, KubeProxyConfiguration.HealthzBindAddress: Invalid value: "0": must be a valid port, KubeProxyConfiguration.MetricsBindAddress: Invalid value: "nothost": must be IP:port, KubeProxyConfiguration.NodePortAddresses[1]: Invalid value: "primary": can't use both 'primary' and CIDRs, KubeProxyConfiguration.ShowHiddenMetricsForVersion: Invalid value: "1.20": --show-hidden-metrics-for-version must be omitted or have the value '1.33'. Only the previous minor version is allowed, KubeProxyConfiguration.DetectLocalMode: Unsupported value: "Foo": supported values: "ClusterCIDR", "NodeCIDR", "BridgeInterface", "InterfaceNamePrefix", ""]"#
        );
        let mode = every_field.replace("mode: iptables", "mode: foo");
        assert!(check(&mode).unwrap().contains(r#", KubeProxyConfiguration.Mode.ProxyMode: Invalid value: "foo": must be iptables, ipvs, nftables or blank (blank means the best-available proxy [currently iptables]), KubeProxyConfiguration.ClientConnection.Burst"#));

        assert_eq!(
            check(
                r#"
mode: nftables
healthzBindAddress: "300.1.1.1:80"
metricsBindAddress: "1.2.3.4:x"
nftables: {masqueradeBit: 32, syncPeriod: 10s, minSyncPeriod: 1m}
iptables: {masqueradeBit: 31}
nodePortAddresses: ["bad", "10.0.0.0/8", "primary"]
clusterCIDR: "10.0.0.0/8,10.1.0.0/16"
"#
            )
            .unwrap(),
            r#"failed validate: [KubeProxyConfiguration.KubeProxyNFTablesConfiguration.MasqueradeBit: Invalid value: 32: must be within the range [0, 31], KubeProxyConfiguration.SyncPeriod: Invalid value: "1m0s": must be greater than or equal to KubeProxyConfiguration.MinSyncPeriod, KubeProxyConfiguration.HealthzBindAddress: Invalid value: "300.1.1.1": must be a valid IP, KubeProxyConfiguration.MetricsBindAddress: Invalid value: "x": must be a valid port, KubeProxyConfiguration.NodePortAddresses[0]: Invalid value: "bad": must be a valid CIDR, KubeProxyConfiguration.NodePortAddresses[2]: Invalid value: "primary": can't use both 'primary' and CIDRs, KubeProxyConfiguration.DetectLocalConfiguration.ClusterCIDRs: Invalid value: ["10.0.0.0/8","10.1.0.0/16"]: must be a either a single CIDR or dual-stack pair of CIDRs (e.g. [10.100.0.0/16, fde4:8dba:82e1::/48]]"#
        );
        assert_eq!(
            check("mode: nftables\nclusterCIDR: \"x,10.1.0.0/16,fd00::/8\"\ndetectLocalMode: BridgeInterface\n").unwrap(),
            r#"failed validate: KubeProxyConfiguration.DetectLocalConfiguration.InterfaceName: Invalid value: "": must not be empty"#
        );
        assert_eq!(
            check("mode: nftables\nclusterCIDR: \"x,fd00::/8\"\nconntrack: {tcpCloseWaitTimeout: -1h, udpStreamTimeout: -1ms}\n").unwrap(),
            r#"failed validate: [KubeProxyConfiguration.KubeProxyLinuxConfiguration.KubeProxyConntrackConfiguration.TCPCloseWaitTimeout: Invalid value: "-1h0m0s": must be greater than or equal to 0, KubeProxyConfiguration.KubeProxyLinuxConfiguration.KubeProxyConntrackConfiguration.UDPStreamTimeout: Invalid value: "-1ms": must be greater than or equal to 0, KubeProxyConfiguration.DetectLocalConfiguration.ClusterCIDRs[0]: Invalid value: "x": must be a valid CIDR block (e.g. 10.100.0.0/16 or fde4:8dba:82e1::/48)]"#
        );
        assert_eq!(
            check(
                "mode: nftables\nclusterCIDR: \"10.0.0.0/8,10.2.0.0/16,10.3.0.0/16\"\ndetectLocalMode: InterfaceNamePrefix\n\
                 healthzBindAddress: \"1.2.3.4\"\nmetricsBindAddress: \":99999\"\n"
            )
            .unwrap(),
            r#"failed validate: [KubeProxyConfiguration.MetricsBindAddress: Invalid value: "": must be a valid IP, KubeProxyConfiguration.MetricsBindAddress: Invalid value: "99999": must be a valid port, KubeProxyConfiguration.DetectLocalConfiguration.InterfacePrefix: Invalid value: "": must not be empty]"#
        );
    }

    #[test]
    fn stock_files_and_zero_values_pass() {
        for f in ["kubeadm-kube-proxy.conf", "kind-kube-proxy.conf"] {
            let text = std::fs::read_to_string(format!("{}/tests/fixtures/{f}", env!("CARGO_MANIFEST_DIR"))).unwrap();
            assert_eq!(check(&text), None, "{f}");
        }
        assert_eq!(check("{}"), None);
        assert_eq!(check("nodePortAddresses: [all]\nmode: ipvs\nbindAddress: \"::\"\nhealthzBindAddress: \"[::1]:1\"\n"), None);
    }
}
