//! kube-proxy's configuration: the `KubeProxyConfiguration` file (kubeproxy.config.k8s.io/v1alpha1)
//! and the effective settings after flags override it. Decoding is kube-proxy's: strict first;
//! when the only trouble is unknown fields, the file is used anyway (lenient decoding) and the
//! unknown fields are reported. A bad value is an error naming the field.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use ipnet::IpNet;
use nftproxy_model::{DetectLocalMode, NodePortAddresses};

use crate::validation::{Internal, failed_validate, validate, with_port};
use serde::Deserialize;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{file}: {field}: {message}")]
    Field { file: String, field: String, message: String },
    #[error("{file}: {message}")]
    File { file: String, message: String },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum ProxyMode {
    #[default]
    Nftables,
    Iptables,
}

impl std::str::FromStr for ProxyMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "" | "nftables" => Ok(ProxyMode::Nftables),
            "iptables" => Ok(ProxyMode::Iptables),
            other => Err(format!("unsupported proxy mode {other:?} (want nftables or iptables)")),
        }
    }
}

/// A Go duration as kube-proxy's `metav1.Duration` writes it: `30s`, `1m0s`, `500ms`, `1h2m3.5s`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct GoDuration(pub Duration);

impl std::str::FromStr for GoDuration {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        parse_go_duration(s).map(GoDuration)
    }
}

impl<'de> Deserialize<'de> for GoDuration {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// A duration in the configuration file as kube-proxy reads it (`metav1.Duration`): a sign is
/// allowed, and kube-proxy's validation (see [`crate::validation`]) rejects negative values with
/// its own text naming the field.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct FileDuration {
    pub negative: bool,
    pub magnitude: Duration,
}

impl FileDuration {
    /// The duration, unless negative.
    pub fn std(self) -> Option<Duration> {
        (!self.negative || self.magnitude.is_zero()).then_some(self.magnitude)
    }
    pub fn is_zero(self) -> bool {
        self.magnitude.is_zero()
    }
    pub fn is_negative(self) -> bool {
        self.negative && !self.magnitude.is_zero()
    }
    /// Go's `time.Duration.String()`: `-1m0s`, `30s`.
    pub fn go_string(self) -> String {
        let text = go_duration_string(self.magnitude);
        if self.is_negative() { format!("-{text}") } else { text }
    }
}

impl From<Duration> for FileDuration {
    fn from(magnitude: Duration) -> FileDuration {
        FileDuration { negative: false, magnitude }
    }
}

impl<'de> Deserialize<'de> for FileDuration {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        let t = s.trim();
        let (negative, rest) = match t.strip_prefix('-') {
            Some(rest) => (true, rest),
            None => (false, t),
        };
        parse_go_duration(rest)
            .map(|magnitude| FileDuration { negative, magnitude })
            .map_err(|_| serde::de::Error::custom(format!("invalid duration {s:?} (want e.g. 1s, 500ms, 1m30s)")))
    }
}

/// A duration as Go's `time.Duration.String()` writes it (`0s`, `500ms`, `30s`, `1m30s`,
/// `24h0m0s`), which is how kube-proxy writes its configuration.
pub fn go_duration_string(d: Duration) -> String {
    fn frac(v: u128, div: u128) -> String {
        let (whole, rest) = (v / div, v % div);
        if rest == 0 {
            return whole.to_string();
        }
        let width = div.to_string().len() - 1;
        format!("{whole}.{}", format!("{rest:0width$}").trim_end_matches('0'))
    }
    let ns = d.as_nanos();
    if ns == 0 {
        return "0s".into();
    }
    if ns < 1_000_000_000 {
        let (div, unit) = match ns {
            ..1_000 => (1, "ns"),
            ..1_000_000 => (1_000, "µs"),
            _ => (1_000_000, "ms"),
        };
        return format!("{}{unit}", frac(ns, div));
    }
    let (h, rem) = (ns / 3_600_000_000_000, ns % 3_600_000_000_000);
    let (m, s) = (rem / 60_000_000_000, rem % 60_000_000_000);
    let mut out = String::new();
    if h > 0 {
        out.push_str(&format!("{h}h"));
    }
    if h > 0 || m > 0 {
        out.push_str(&format!("{m}m"));
    }
    out.push_str(&format!("{}s", frac(s, 1_000_000_000)));
    out
}

pub fn parse_go_duration(s: &str) -> Result<Duration, String> {
    let bad = || format!("invalid duration {s:?} (want e.g. 1s, 500ms, 1m30s)");
    let t = s.trim();
    if t == "0" {
        return Ok(Duration::ZERO);
    }
    if t.is_empty() || t.starts_with('-') {
        return Err(bad());
    }
    let mut total = 0f64;
    let mut rest = t.strip_prefix('+').unwrap_or(t);
    while !rest.is_empty() {
        let num_len = rest.find(|c: char| !(c.is_ascii_digit() || c == '.')).ok_or_else(bad)?;
        if num_len == 0 {
            return Err(bad());
        }
        let value: f64 = rest[..num_len].parse().map_err(|_| bad())?;
        rest = &rest[num_len..];
        let unit_len = rest.find(|c: char| c.is_ascii_digit() || c == '.').unwrap_or(rest.len());
        let scale = match &rest[..unit_len] {
            "ns" => 1e-9,
            "us" | "µs" | "μs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return Err(bad()),
        };
        total += value * scale;
        rest = &rest[unit_len..];
    }
    Ok(Duration::from_secs_f64(total))
}

/// `KubeProxyConfiguration` (v1alpha1). Fields kube-proxy has but that do not apply to us (IPVS,
/// Windows, client rate limits, …) are read and warned about (see [`Settings::apply_file`]);
/// fields kube-proxy does not know are reported by [`KubeProxyConfiguration::parse`].
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct KubeProxyConfiguration {
    pub api_version: Option<String>,
    pub kind: Option<String>,
    pub feature_gates: Option<BTreeMap<String, bool>>,
    pub client_connection: Option<ClientConnection>,
    pub logging: Option<serde_yaml::Value>,
    pub hostname_override: Option<String>,
    pub bind_address: Option<String>,
    pub healthz_bind_address: Option<String>,
    pub metrics_bind_address: Option<String>,
    pub bind_address_hard_fail: Option<bool>,
    pub enable_profiling: Option<bool>,
    pub show_hidden_metrics_for_version: Option<String>,
    pub mode: Option<String>,
    pub iptables: Option<ModeConfig>,
    pub ipvs: Option<serde_yaml::Value>,
    pub nftables: Option<ModeConfig>,
    pub winkernel: Option<serde_yaml::Value>,
    pub detect_local_mode: Option<String>,
    pub detect_local: Option<DetectLocal>,
    #[serde(rename = "clusterCIDR")]
    pub cluster_cidr: Option<String>,
    pub node_port_addresses: Option<Vec<String>>,
    pub oom_score_adj: Option<i32>,
    pub conntrack: Option<Conntrack>,
    pub config_sync_period: Option<FileDuration>,
    pub port_range: Option<String>,
    pub windows_run_as_service: Option<bool>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ClientConnection {
    pub kubeconfig: Option<String>,
    pub accept_content_types: Option<String>,
    pub content_type: Option<String>,
    pub qps: Option<f64>,
    pub burst: Option<i64>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ModeConfig {
    pub masquerade_bit: Option<i64>,
    pub masquerade_all: Option<bool>,
    pub localhost_node_ports: Option<bool>,
    pub sync_period: Option<FileDuration>,
    pub min_sync_period: Option<FileDuration>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DetectLocal {
    pub bridge_interface: Option<String>,
    pub interface_name_prefix: Option<String>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Conntrack {
    pub max_per_core: Option<i32>,
    pub min: Option<i32>,
    pub tcp_established_timeout: Option<FileDuration>,
    pub tcp_close_wait_timeout: Option<FileDuration>,
    pub tcp_be_liberal: Option<bool>,
    pub udp_timeout: Option<FileDuration>,
    pub udp_stream_timeout: Option<FileDuration>,
}

impl KubeProxyConfiguration {
    /// Parses the file's text (YAML or JSON). `file` names it in errors. Also returns the paths
    /// of unknown fields: kube-proxy's strict decoding fails on them and its lenient decoding
    /// then uses the file without them (logging that it did), and so do we.
    pub fn parse(file: &str, text: &str) -> Result<(KubeProxyConfiguration, Vec<String>), ConfigError> {
        let mut unknown = Vec::new();
        // serde_ignored writes `?` for the Some of an Option: not part of the field's name.
        let mut note_unknown = |path: serde_ignored::Path<'_>| {
            unknown.push(path.to_string().split('.').filter(|s| *s != "?").collect::<Vec<_>>().join("."))
        };
        let de = serde_ignored::Deserializer::new(serde_yaml::Deserializer::from_str(text), &mut note_unknown);
        let cfg: KubeProxyConfiguration = serde_path_to_error::deserialize(de).map_err(|e| {
            let field = e.path().to_string();
            let mut message = e.inner().to_string();
            // serde_yaml prefixes the key path the error is under; we print the full path already.
            if let Some((head, rest)) = message.split_once(": ")
                && !head.contains(' ')
            {
                message = rest.to_string();
            }
            if field == "." {
                ConfigError::File { file: file.into(), message }
            } else {
                ConfigError::Field { file: file.into(), field, message }
            }
        })?;
        let field_err =
            |field: &str, message: String| ConfigError::Field { file: file.into(), field: field.into(), message };
        match cfg.api_version.as_deref() {
            None | Some("kubeproxy.config.k8s.io/v1alpha1") => {}
            Some(v) => return Err(field_err("apiVersion", format!("{v:?} (want kubeproxy.config.k8s.io/v1alpha1)"))),
        }
        match cfg.kind.as_deref() {
            None | Some("KubeProxyConfiguration") => {}
            Some(k) => return Err(field_err("kind", format!("{k:?} (want KubeProxyConfiguration)"))),
        }
        Ok((cfg, unknown))
    }
}

/// What `run` runs with, after the file and flags.
#[derive(Clone, Debug, PartialEq)]
pub struct Settings {
    pub kubeconfig: Option<PathBuf>,
    pub master: Option<String>,
    /// Standalone: manifests instead of an API server.
    pub from: Option<PathBuf>,
    pub hostname_override: Option<String>,
    pub node_ips: Vec<std::net::IpAddr>,
    pub mode: ProxyMode,
    pub cluster_cidrs: Vec<IpNet>,
    /// None: the mode's default (kube-proxy: `primary` in nftables mode, every local address
    /// in iptables mode).
    pub nodeport_addresses: Option<NodePortAddresses>,
    pub masquerade_all: bool,
    pub masquerade_bit: u8,
    pub localhost_nodeports: bool,
    pub min_sync_period: Duration,
    pub sync_period: Duration,
    /// None: no metrics server.
    pub metrics_bind_address: Option<SocketAddr>,
    /// None: no health server.
    pub healthz_bind_address: Option<SocketAddr>,
    pub conntrack_tcp_be_liberal: bool,
    /// `--detect-local-mode` with its interface flags.
    pub detect_local: DetectLocalMode,
    /// The conntrack sysctls kube-proxy sets at start.
    pub conntrack: ConntrackSettings,
    /// Written to /proc/self/oom_score_adj at start (None: left alone).
    pub oom_score_adj: Option<i32>,
    /// A metrics or health server that cannot bind ends the process; otherwise it is retried
    /// every 5 s (kube-proxy's `bindAddressHardFail`).
    pub bind_address_hard_fail: bool,
    /// `text` or `json`.
    pub logging_format: String,
    /// Warnings for the log at start: settings accepted that change nothing here, and why.
    pub notes: Vec<String>,
    /// The `--config` file: when it changes, the process exits so that it restarts with the new
    /// configuration (kube-proxy's behaviour).
    pub config_file: Option<PathBuf>,
    /// The command line's flags as `--name=value`, for `/flagz`.
    pub flags: Vec<String>,
}

/// kube-proxy's conntrack settings (v1alpha1 defaults). A zero value means "leave the sysctl
/// alone", as in kube-proxy.
#[derive(Clone, Debug, PartialEq)]
pub struct ConntrackSettings {
    pub max_per_core: i32,
    pub min: i32,
    pub tcp_established_timeout: Duration,
    pub tcp_close_wait_timeout: Duration,
    pub tcp_be_liberal: bool,
    pub udp_timeout: Duration,
    pub udp_stream_timeout: Duration,
}

impl Default for ConntrackSettings {
    fn default() -> Self {
        ConntrackSettings {
            max_per_core: 32 * 1024,
            min: 128 * 1024,
            tcp_established_timeout: Duration::from_secs(24 * 3600),
            tcp_close_wait_timeout: Duration::from_secs(3600),
            tcp_be_liberal: false,
            udp_timeout: Duration::ZERO,
            udp_stream_timeout: Duration::ZERO,
        }
    }
}

/// `current` with some of kube-proxy's detect-local settings given again (flags over the file,
/// field by field): what is not given keeps its current value.
pub fn override_detect_local(
    current: &DetectLocalMode,
    mode: Option<&str>,
    bridge: Option<&str>,
    prefix: Option<&str>,
) -> Result<DetectLocalMode, (&'static str, String)> {
    let (cur_mode, cur_bridge, cur_prefix) = match current {
        DetectLocalMode::ClusterCidr => ("ClusterCIDR", None, None),
        DetectLocalMode::NodeCidr => ("NodeCIDR", None, None),
        DetectLocalMode::BridgeInterface(b) => ("BridgeInterface", Some(b.as_str()), None),
        DetectLocalMode::InterfaceNamePrefix(p) => ("InterfaceNamePrefix", None, Some(p.as_str())),
    };
    detect_local_mode(Some(mode.unwrap_or(cur_mode)), bridge.or(cur_bridge), prefix.or(cur_prefix))
}

/// kube-proxy's `--detect-local-mode` with `--pod-bridge-interface` / `--pod-interface-name-prefix`
/// (or the file's `detectLocalMode` / `detectLocal`). Errors name the flag (without `--`) that
/// is wrong.
pub fn detect_local_mode(
    mode: Option<&str>,
    bridge: Option<&str>,
    prefix: Option<&str>,
) -> Result<DetectLocalMode, (&'static str, String)> {
    let mode = mode.map(str::trim).unwrap_or("");
    Ok(match mode {
        "" | "ClusterCIDR" => DetectLocalMode::ClusterCidr,
        "NodeCIDR" => DetectLocalMode::NodeCidr,
        "BridgeInterface" => match bridge.map(str::trim).filter(|b| !b.is_empty()) {
            Some(b) => DetectLocalMode::BridgeInterface(b.to_string()),
            None => {
                return Err((
                    "pod-bridge-interface",
                    "must not be empty with --detect-local-mode BridgeInterface".into(),
                ));
            }
        },
        "InterfaceNamePrefix" => match prefix.map(str::trim).filter(|p| !p.is_empty()) {
            Some(p) => DetectLocalMode::InterfaceNamePrefix(p.to_string()),
            None => {
                return Err((
                    "pod-interface-name-prefix",
                    "must not be empty with --detect-local-mode InterfaceNamePrefix".into(),
                ));
            }
        },
        other => {
            return Err((
                "detect-local-mode",
                format!("unknown mode {other:?} (want ClusterCIDR, NodeCIDR, BridgeInterface or InterfaceNamePrefix)"),
            ));
        }
    })
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            kubeconfig: None,
            master: None,
            from: None,
            hostname_override: None,
            node_ips: Vec::new(),
            mode: ProxyMode::Nftables,
            cluster_cidrs: Vec::new(),
            nodeport_addresses: None,
            masquerade_all: false,
            masquerade_bit: 14,
            localhost_nodeports: true,
            min_sync_period: Duration::from_secs(1),
            sync_period: Duration::from_secs(30),
            metrics_bind_address: Some("127.0.0.1:10249".parse().unwrap()),
            healthz_bind_address: Some("0.0.0.0:10256".parse().unwrap()),
            conntrack_tcp_be_liberal: false,
            detect_local: DetectLocalMode::ClusterCidr,
            conntrack: ConntrackSettings::default(),
            oom_score_adj: Some(-999),
            bind_address_hard_fail: false,
            logging_format: "text".into(),
            notes: Vec::new(),
            config_file: None,
            flags: Vec::new(),
        }
    }
}

/// Why a kube-proxy setting changes nothing here: one text for a flag and its file field.
pub mod no_effect {
    pub const CONTENT_TYPE: &str = "kube-nftproxy's API client (kube-rs) sends and accepts JSON only";
    pub const RATE_LIMIT: &str = "kube-nftproxy makes one list and one watch request per resource and reconnects with its own backoff (100 ms doubling to 1 s); it has no client-side rate limiter";
    pub const FEATURE_GATES: &str = "kube-nftproxy implements kube-proxy v1.34 with every gate at its default";
    pub const CONFIG_SYNC_PERIOD: &str = "kube-rs watchers keep no informer cache to resync from; every change arrives once and the sync period bounds drift";
    pub const PROFILING: &str = "Go's pprof endpoints do not exist in a Rust binary";
    pub const HIDDEN_METRICS: &str = "kube-nftproxy hides no metrics";
    pub const IPVS: &str = "IPVS mode is not implemented; IPVS settings apply only in mode ipvs";
    pub const WINDOWS: &str = "a Windows (winkernel) setting; it has no meaning on Linux";
}

/// Warnings for the file's fields that change nothing here, each with the reason.
fn not_applicable_fields(file: &str, cfg: &KubeProxyConfiguration) -> Vec<String> {
    let mut out = Vec::new();
    let mut note = |set: bool, field: &str, why: &str| {
        if set {
            out.push(format!("{file}: {field}: accepted, no effect: {why}"));
        }
    };
    // Zero values are kube-proxy's "unset" (kubeadm writes every field): only others are noted.
    let cc = cfg.client_connection.clone().unwrap_or_default();
    let text = |v: &Option<String>| v.as_deref().is_some_and(|t| !t.is_empty());
    note(
        text(&cc.content_type) || text(&cc.accept_content_types),
        "clientConnection.contentType",
        no_effect::CONTENT_TYPE,
    );
    note(
        cc.qps.is_some_and(|q| q != 0.0) || cc.burst.is_some_and(|b| b != 0),
        "clientConnection.qps/burst",
        no_effect::RATE_LIMIT,
    );
    note(cfg.feature_gates.as_ref().is_some_and(|g| !g.is_empty()), "featureGates", no_effect::FEATURE_GATES);
    note(cfg.config_sync_period.is_some_and(|d| !d.is_zero()), "configSyncPeriod", no_effect::CONFIG_SYNC_PERIOD);
    note(cfg.enable_profiling == Some(true), "enableProfiling", no_effect::PROFILING);
    note(
        cfg.show_hidden_metrics_for_version.as_ref().is_some_and(|v| !v.is_empty()),
        "showHiddenMetricsForVersion",
        no_effect::HIDDEN_METRICS,
    );
    note(cfg.ipvs.as_ref().is_some_and(set_to_something), "ipvs", no_effect::IPVS);
    note(cfg.winkernel.as_ref().is_some_and(set_to_something), "winkernel", no_effect::WINDOWS);
    note(cfg.windows_run_as_service == Some(true), "windowsRunAsService", no_effect::WINDOWS);
    note(
        cfg.port_range.as_ref().is_some_and(|p| !p.is_empty()),
        "portRange",
        "the userspace proxy's setting, removed from kube-proxy; nothing uses it",
    );
    out
}

/// Whether a section holds anything but zero values (null, false, 0, "", "0s", empty).
fn set_to_something(v: &serde_yaml::Value) -> bool {
    use serde_yaml::Value;
    match v {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64() != Some(0.0),
        Value::String(s) => !(s.is_empty() || parse_go_duration(s).is_ok_and(|d| d.is_zero())),
        Value::Sequence(items) => items.iter().any(set_to_something),
        Value::Mapping(m) => m.values().any(set_to_something),
        Value::Tagged(t) => set_to_something(&t.value),
    }
}


/// kube-proxy's bind-address form: `ip:port`, or empty to disable.
pub fn parse_bind_address(s: &str) -> Result<Option<SocketAddr>, String> {
    let s = s.trim();
    if s.is_empty() {
        return Ok(None);
    }
    s.parse().map(Some).map_err(|_| format!("{s:?} is not ip:port"))
}

pub fn parse_nodeport_addresses(items: &[String]) -> Result<NodePortAddresses, String> {
    let items: Vec<&str> = items.iter().flat_map(|s| s.split(',')).map(str::trim).filter(|s| !s.is_empty()).collect();
    match items.as_slice() {
        [] | ["primary"] => Ok(NodePortAddresses::Primary),
        ["all"] => Ok(NodePortAddresses::All),
        list => list
            .iter()
            .map(|c| {
                c.parse::<IpNet>()
                    .map(|n| n.trunc())
                    .map_err(|_| format!("{c:?} is not a CIDR (want primary, all, or CIDRs)"))
            })
            .collect::<Result<Vec<_>, _>>()
            .map(NodePortAddresses::Cidrs),
    }
}

impl Settings {
    /// Applies a configuration file over the defaults (flags are applied after, by the caller).
    pub fn apply_file(&mut self, file: &str, cfg: &KubeProxyConfiguration) -> Result<(), ConfigError> {
        let err = |field: &str, message: String| ConfigError::Field { file: file.into(), field: field.into(), message };
        // kube-proxy's validation first, with its texts; what follows reads validated values.
        if let Some(message) = failed_validate(&validate(&Internal::from_file(cfg))) {
            return Err(ConfigError::File { file: file.into(), message });
        }
        if let Some(k) = cfg.client_connection.as_ref().and_then(|c| c.kubeconfig.as_ref()).filter(|k| !k.is_empty()) {
            self.kubeconfig = Some(k.into());
        }
        if let Some(h) = cfg.hostname_override.as_ref().filter(|h| !h.is_empty()) {
            self.hostname_override = Some(h.clone());
        }
        if let Some(m) = &cfg.mode {
            self.mode = m.parse().map_err(|e| err("mode", e))?;
        }
        // kube-proxy's v1alpha1 defaulting: an empty address is the default one (kubeadm writes
        // `""` for both), a bare IP gets the default port.
        if let Some(a) = cfg.healthz_bind_address.as_deref().filter(|a| !a.trim().is_empty()) {
            self.healthz_bind_address =
                parse_bind_address(&with_port(a, 10256)).map_err(|e| err("healthzBindAddress", e))?;
        }
        if let Some(a) = cfg.metrics_bind_address.as_deref().filter(|a| !a.trim().is_empty()) {
            self.metrics_bind_address =
                parse_bind_address(&with_port(a, 10249)).map_err(|e| err("metricsBindAddress", e))?;
        }
        if let Some(a) = cfg.bind_address.as_ref().filter(|a| !a.trim().is_empty()) {
            let ip: std::net::IpAddr =
                a.trim().parse().map_err(|_| err("bindAddress", format!("{a:?} is not an IP address")))?;
            if !ip.is_unspecified() {
                self.node_ips = vec![ip];
            }
        }
        if let Some(v) = cfg.bind_address_hard_fail {
            self.bind_address_hard_fail = v;
        }
        if let Some(v) = cfg.oom_score_adj {
            self.oom_score_adj = Some(v);
        }
        if let Some(f) = cfg.logging.as_ref().and_then(|l| l.get("format")).and_then(|f| f.as_str()) {
            match f {
                "text" | "json" => self.logging_format = f.to_string(),
                other => {
                    return Err(err("logging.format", format!("unsupported format {other:?} (want text or json)")));
                }
            }
        }
        self.notes.extend(not_applicable_fields(file, cfg));
        if let Some(c) = cfg.cluster_cidr.as_ref().filter(|c| !c.is_empty()) {
            self.cluster_cidrs = c
                .split(',')
                .map(|s| {
                    s.trim()
                        .parse::<IpNet>()
                        .map(|n| n.trunc())
                        .map_err(|_| err("clusterCIDR", format!("{s:?} is not a CIDR")))
                })
                .collect::<Result<_, _>>()?;
        }
        if let Some(n) = cfg.node_port_addresses.as_ref().filter(|n| !n.is_empty()) {
            self.nodeport_addresses = Some(parse_nodeport_addresses(n).map_err(|e| err("nodePortAddresses", e))?);
        }
        if let Some(ct) = &cfg.conntrack {
            self.conntrack_tcp_be_liberal = ct.tcp_be_liberal.unwrap_or(false);
            let c = &mut self.conntrack;
            c.tcp_be_liberal = self.conntrack_tcp_be_liberal;
            if let Some(v) = ct.max_per_core {
                c.max_per_core = v;
            }
            if let Some(v) = ct.min {
                c.min = v;
            }
            for (value, slot) in [
                (ct.tcp_established_timeout, &mut c.tcp_established_timeout),
                (ct.tcp_close_wait_timeout, &mut c.tcp_close_wait_timeout),
                (ct.udp_timeout, &mut c.udp_timeout),
                (ct.udp_stream_timeout, &mut c.udp_stream_timeout),
            ] {
                if let Some(d) = value.and_then(FileDuration::std) {
                    *slot = d;
                }
            }
        }
        if cfg.detect_local_mode.is_some() || cfg.detect_local.is_some() {
            let dl = cfg.detect_local.clone().unwrap_or_default();
            self.detect_local = detect_local_mode(
                cfg.detect_local_mode.as_deref(),
                dl.bridge_interface.as_deref(),
                dl.interface_name_prefix.as_deref(),
            )
            .map_err(|(flag, e)| {
                let field = match flag {
                    "pod-bridge-interface" => "detectLocal.bridgeInterface",
                    "pod-interface-name-prefix" => "detectLocal.interfaceNamePrefix",
                    _ => "detectLocalMode",
                };
                err(field, e)
            })?;
        }
        // The section of the mode in use counts (kube-proxy reads iptables.* in iptables mode and
        // nftables.* in nftables mode).
        let (section, name) = match self.mode {
            ProxyMode::Nftables => (&cfg.nftables, "nftables"),
            ProxyMode::Iptables => (&cfg.iptables, "iptables"),
        };
        if let Some(m) = section {
            if let Some(v) = m.masquerade_all {
                self.masquerade_all = v;
            }
            if let Some(v) = m.masquerade_bit {
                self.masquerade_bit = u8::try_from(v).map_err(|_| err(&format!("{name}.masqueradeBit"), format!("{v}")))?;
            }
            if let Some(v) = m.localhost_node_ports {
                self.localhost_nodeports = v;
            }
            // Zero means unset in the file (kube-proxy's defaulting: 30s and 1s).
            if let Some(d) = m.sync_period.filter(|d| !d.is_zero()).and_then(FileDuration::std) {
                self.sync_period = d;
            }
            if let Some(d) = m.min_sync_period.filter(|d| !d.is_zero()).and_then(FileDuration::std) {
                self.min_sync_period = d;
            }
        }
        Ok(())
    }

    /// The NodePort addresses in force: the configured ones, else the mode's default.
    pub fn effective_nodeport_addresses(&self) -> NodePortAddresses {
        self.nodeport_addresses.clone().unwrap_or(match self.mode {
            ProxyMode::Nftables => NodePortAddresses::Primary,
            ProxyMode::Iptables => NodePortAddresses::All,
        })
    }

    /// The iptables renderer's options for these settings.
    pub fn iptables_options(&self) -> nftproxy_iptables::Options {
        nftproxy_iptables::Options {
            masquerade_bit: self.masquerade_bit,
            localhost_nodeports: self.localhost_nodeports,
            conntrack_tcp_be_liberal: self.conntrack_tcp_be_liberal,
            ..Default::default()
        }
        .for_nodeport_addresses(&self.effective_nodeport_addresses())
    }

    /// The settings as a kubeproxy.config.k8s.io/v1alpha1 file (`--write-config-to`): what
    /// kube-proxy writes for the same settings, with the mode's section holding the sync periods.
    /// Reading it back with `--config` gives the same settings.
    pub fn to_v1alpha1_yaml(&self, hostname: Option<&str>) -> String {
        serde_yaml::to_string(&self.to_v1alpha1(hostname)).expect("a JSON value is YAML")
    }

    /// The settings as a kubeproxy.config.k8s.io/v1alpha1 object (also `/configz`'s content).
    pub fn to_v1alpha1(&self, hostname: Option<&str>) -> serde_json::Value {
        use serde_json::json;
        let addr = |a: &Option<SocketAddr>| a.map(|a| a.to_string()).unwrap_or_default();
        let c = &self.conntrack;
        let (mode, bridge, prefix) = match &self.detect_local {
            DetectLocalMode::ClusterCidr => ("ClusterCIDR", "", ""),
            DetectLocalMode::NodeCidr => ("NodeCIDR", "", ""),
            DetectLocalMode::BridgeInterface(b) => ("BridgeInterface", b.as_str(), ""),
            DetectLocalMode::InterfaceNamePrefix(p) => ("InterfaceNamePrefix", "", p.as_str()),
        };
        let nodeports: Option<Vec<String>> = self.nodeport_addresses.as_ref().map(|n| match n {
            NodePortAddresses::Primary => vec!["primary".to_string()],
            NodePortAddresses::All => vec!["0.0.0.0/0".to_string(), "::/0".to_string()],
            NodePortAddresses::Cidrs(c) => c.iter().map(|n| n.to_string()).collect(),
        });
        let mut section = json!({
            "masqueradeAll": self.masquerade_all,
            "masqueradeBit": self.masquerade_bit,
            "minSyncPeriod": go_duration_string(self.min_sync_period),
            "syncPeriod": go_duration_string(self.sync_period),
        });
        if self.mode == ProxyMode::Iptables {
            section["localhostNodePorts"] = json!(self.localhost_nodeports);
        }
        let mode_name = match self.mode {
            ProxyMode::Nftables => "nftables",
            ProxyMode::Iptables => "iptables",
        };
        let mut doc = json!({
            "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
            "kind": "KubeProxyConfiguration",
            "bindAddress": self.node_ips.first().map_or("0.0.0.0".to_string(), |ip| ip.to_string()),
            "bindAddressHardFail": self.bind_address_hard_fail,
            "clientConnection": {"kubeconfig": self.kubeconfig.as_ref().map(|k| k.display().to_string()).unwrap_or_default()},
            "clusterCIDR": self.cluster_cidrs.iter().map(|n| n.to_string()).collect::<Vec<_>>().join(","),
            "conntrack": {
                "maxPerCore": c.max_per_core,
                "min": c.min,
                "tcpBeLiberal": c.tcp_be_liberal,
                "tcpCloseWaitTimeout": go_duration_string(c.tcp_close_wait_timeout),
                "tcpEstablishedTimeout": go_duration_string(c.tcp_established_timeout),
                "udpStreamTimeout": go_duration_string(c.udp_stream_timeout),
                "udpTimeout": go_duration_string(c.udp_timeout),
            },
            "detectLocal": {"bridgeInterface": bridge, "interfaceNamePrefix": prefix},
            "detectLocalMode": mode,
            "healthzBindAddress": addr(&self.healthz_bind_address),
            "hostnameOverride": hostname.unwrap_or(""),
            "logging": {"format": self.logging_format},
            "metricsBindAddress": addr(&self.metrics_bind_address),
            "mode": mode_name,
            "nodePortAddresses": nodeports,
        });
        doc[mode_name] = section;
        if let Some(v) = self.oom_score_adj {
            doc["oomScoreAdj"] = json!(v);
        }
        doc
    }

    /// Whether localhost NodePorts are on in iptables mode (see [`Settings::iptables_options`]).
    pub fn effective_localhost_nodeports(&self) -> bool {
        self.iptables_options().localhost_nodeports
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_duration_strings_read_back() {
        for (d, text) in [
            (Duration::ZERO, "0s"),
            (Duration::from_millis(500), "500ms"),
            (Duration::from_micros(1500), "1.5ms"),
            (Duration::from_secs(30), "30s"),
            (Duration::from_millis(1500), "1.5s"),
            (Duration::from_secs(90), "1m30s"),
            (Duration::from_secs(3600), "1h0m0s"),
            (Duration::from_secs(24 * 3600), "24h0m0s"),
        ] {
            assert_eq!(go_duration_string(d), text);
            assert_eq!(parse_go_duration(text).unwrap(), d, "{text}");
        }
    }

    #[test]
    fn unknown_fields_are_reported_and_the_rest_is_used() {
        let (cfg, unknown) = KubeProxyConfiguration::parse(
            "kp.yaml",
            "apiVersion: kubeproxy.config.k8s.io/v1alpha1\nkind: KubeProxyConfiguration\nmode: iptables\n\
             futureField: 1\niptables: {syncPeriod: 10s, newKnob: true}\n",
        )
        .unwrap();
        assert_eq!(unknown, vec!["futureField".to_string(), "iptables.newKnob".to_string()]);
        let mut s = Settings::default();
        s.apply_file("kp.yaml", &cfg).unwrap();
        assert_eq!((s.mode, s.sync_period), (ProxyMode::Iptables, Duration::from_secs(10)));
    }

    #[test]
    fn fields_that_do_not_apply_are_warned_about_and_new_ones_applied() {
        let (cfg, _) = KubeProxyConfiguration::parse(
            "kp.yaml",
            "clientConnection: {qps: 50, burst: 100}\nipvs: {scheduler: rr}\nbindAddress: 10.0.1.1\n\
             oomScoreAdj: -500\nbindAddressHardFail: true\nlogging: {format: json}\n",
        )
        .unwrap();
        let mut s = Settings::default();
        s.apply_file("kp.yaml", &cfg).unwrap();
        assert_eq!(s.node_ips, vec!["10.0.1.1".parse::<std::net::IpAddr>().unwrap()]);
        assert_eq!((s.oom_score_adj, s.bind_address_hard_fail, s.logging_format.as_str()), (Some(-500), true, "json"));
        assert_eq!(s.notes.len(), 2, "{:?}", s.notes);
        assert!(s.notes[0].starts_with("kp.yaml: clientConnection.qps/burst: accepted, no effect:"), "{:?}", s.notes);
        assert!(s.notes[1].starts_with("kp.yaml: ipvs: accepted, no effect: IPVS mode"), "{:?}", s.notes);
        let (bad, _) = KubeProxyConfiguration::parse("kp.yaml", "oomScoreAdj: 2000\n").unwrap();
        let e = Settings::default().apply_file("kp.yaml", &bad).unwrap_err().to_string();
        assert_eq!(
            e,
            "kp.yaml: failed validate: KubeProxyConfiguration.KubeProxyLinuxConfiguration.OOMScoreAdj: Invalid value: 2000: must be within the range [-1000, 1000]"
        );
    }

    #[test]
    fn written_configuration_reads_back_as_the_same_settings() {
        let mut s = Settings::default();
        s.mode = ProxyMode::Iptables;
        s.cluster_cidrs = vec!["10.244.0.0/16".parse().unwrap(), "fd00:10::/56".parse().unwrap()];
        s.sync_period = Duration::from_secs(90);
        s.min_sync_period = Duration::from_millis(500);
        s.detect_local = DetectLocalMode::BridgeInterface("cbr0".into());
        s.nodeport_addresses = Some(NodePortAddresses::Cidrs(vec!["10.0.0.0/8".parse().unwrap()]));
        s.conntrack.udp_timeout = Duration::from_secs(30);
        s.metrics_bind_address = Some("0.0.0.0:9999".parse().unwrap());
        s.kubeconfig = Some("/var/lib/kube-proxy/kubeconfig.conf".into());
        let text = s.to_v1alpha1_yaml(Some("node-a"));
        let (cfg, unknown) = KubeProxyConfiguration::parse("written", &text).unwrap();
        assert!(unknown.is_empty(), "{unknown:?}\n{text}");
        let mut back = Settings::default();
        back.apply_file("written", &cfg).unwrap();
        assert_eq!(cfg.hostname_override.as_deref(), Some("node-a"));
        back.hostname_override = None;
        assert_eq!(back, s, "{text}");
    }

    /// kubeadm's and kind's kube-proxy ConfigMaps (every field, zero values for "default") give
    /// kube-proxy's defaults and no warning.
    #[test]
    fn kubeadm_and_kind_configmaps_give_kube_proxys_defaults() {
        for (name, text) in [
            ("kubeadm", include_str!("../tests/fixtures/kubeadm-kube-proxy.conf")),
            ("kind", include_str!("../tests/fixtures/kind-kube-proxy.conf")),
        ] {
            let (cfg, unknown) = KubeProxyConfiguration::parse(name, text).unwrap();
            assert!(unknown.is_empty(), "{name}: {unknown:?}");
            let mut s = Settings::default();
            s.apply_file(name, &cfg).unwrap();
            assert!(s.notes.is_empty(), "{name}: {:?}", s.notes);
            assert_eq!(s.mode, ProxyMode::Nftables, "{name}");
            assert_eq!(s.sync_period, Duration::from_secs(30), "{name}");
            assert_eq!(s.min_sync_period, Duration::from_secs(1), "{name}");
            assert_eq!(s.healthz_bind_address, Some("0.0.0.0:10256".parse().unwrap()), "{name}");
            assert_eq!(s.masquerade_bit, 14, "{name}");
            assert_eq!(s.detect_local, DetectLocalMode::ClusterCidr, "{name}");
            assert_eq!(s.cluster_cidrs, vec!["10.244.0.0/16".parse::<IpNet>().unwrap()], "{name}");
            assert_eq!(s.kubeconfig, Some(PathBuf::from("__KUBECONFIG__")), "{name}");
            assert_eq!((s.oom_score_adj, s.conntrack.min), (Some(-999), 128 * 1024), "{name}");
        }
        let (kind, _) =
            KubeProxyConfiguration::parse("kind", include_str!("../tests/fixtures/kind-kube-proxy.conf")).unwrap();
        let mut s = Settings::default();
        s.apply_file("kind", &kind).unwrap();
        assert_eq!(s.conntrack.max_per_core, 0);
        assert_eq!(s.metrics_bind_address, Some("0.0.0.0:10249".parse().unwrap()));
        let (kubeadm, _) =
            KubeProxyConfiguration::parse("kubeadm", include_str!("../tests/fixtures/kubeadm-kube-proxy.conf"))
                .unwrap();
        let mut s = Settings::default();
        s.apply_file("kubeadm", &kubeadm).unwrap();
        assert_eq!(s.metrics_bind_address, Some("127.0.0.1:10249".parse().unwrap()), "\"\" is the default address");
        let (bare, _) = KubeProxyConfiguration::parse("kp", "healthzBindAddress: 10.0.1.1\n").unwrap();
        let mut s = Settings::default();
        s.apply_file("kp", &bare).unwrap();
        assert_eq!(s.healthz_bind_address, Some("10.0.1.1:10256".parse().unwrap()), "a bare IP gets the port");
    }

    #[test]
    fn go_durations() {
        let d = |s: &str| parse_go_duration(s).unwrap();
        assert_eq!(d("30s"), Duration::from_secs(30));
        assert_eq!(d("1m0s"), Duration::from_secs(60));
        assert_eq!(d("500ms"), Duration::from_millis(500));
        assert_eq!(d("1h2m3.5s"), Duration::from_millis(3_723_500));
        assert_eq!(d("0"), Duration::ZERO);
        for bad in ["", "10", "s", "1x", "-1s", "1.2.3s"] {
            assert!(parse_go_duration(bad).is_err(), "{bad:?} accepted");
        }
    }

    const FILE: &str = r#"
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
mode: nftables
clientConnection:
  kubeconfig: /var/lib/kube-proxy/kubeconfig.conf
  qps: 5
clusterCIDR: 10.244.0.0/16,fd00:244::/48
metricsBindAddress: 0.0.0.0:10249
healthzBindAddress: ""
nodePortAddresses: ["primary"]
nftables:
  masqueradeAll: true
  syncPeriod: 1m0s
  minSyncPeriod: 250ms
iptables:
  syncPeriod: 10s
ipvs:
  scheduler: rr
conntrack:
  tcpBeLiberal: true
"#;

    #[test]
    fn file_sets_what_it_names() {
        let cfg = KubeProxyConfiguration::parse("kp.yaml", FILE).unwrap().0;
        let mut s = Settings::default();
        s.apply_file("kp.yaml", &cfg).unwrap();
        assert_eq!(s.kubeconfig.as_deref(), Some(std::path::Path::new("/var/lib/kube-proxy/kubeconfig.conf")));
        assert_eq!(s.cluster_cidrs.len(), 2);
        assert_eq!(s.metrics_bind_address, Some("0.0.0.0:10249".parse().unwrap()));
        assert_eq!(
            s.healthz_bind_address,
            Some("0.0.0.0:10256".parse().unwrap()),
            "an empty address is kube-proxy's default, as its defaulting makes it"
        );
        assert!(s.masquerade_all);
        // nftables mode reads the nftables section, not the iptables one.
        assert_eq!(s.sync_period, Duration::from_secs(60));
        assert_eq!(s.min_sync_period, Duration::from_millis(250));
        assert!(s.conntrack_tcp_be_liberal);
    }

    #[test]
    fn iptables_mode_reads_its_own_section() {
        let text = FILE.replace("mode: nftables", "mode: iptables");
        let cfg = KubeProxyConfiguration::parse("kp.yaml", &text).unwrap().0;
        let mut s = Settings::default();
        s.apply_file("kp.yaml", &cfg).unwrap();
        assert_eq!(s.mode, ProxyMode::Iptables);
        assert_eq!(s.sync_period, Duration::from_secs(10));
        assert!(!s.masquerade_all);
    }

    #[test]
    fn errors_name_the_field() {
        let e = KubeProxyConfiguration::parse("kp.yaml", "nftables:\n  syncPeriod: soon\n").unwrap_err().to_string();
        assert!(e.starts_with("kp.yaml: nftables.syncPeriod: invalid duration \"soon\""), "{e}");
        // Unknown fields are kube-proxy's lenient case: reported, not an error.
        let (_, unknown) = KubeProxyConfiguration::parse("kp.yaml", "nftable:\n  syncPeriod: 1s\n").unwrap();
        assert_eq!(unknown, vec!["nftable".to_string()]);
        let e = KubeProxyConfiguration::parse("kp.yaml", "kind: KubeletConfiguration\n").unwrap_err().to_string();
        assert_eq!(e, "kp.yaml: kind: \"KubeletConfiguration\" (want KubeProxyConfiguration)");
        let cfg = KubeProxyConfiguration::parse("kp.yaml", "mode: ipvs\n").unwrap().0;
        let e = Settings::default().apply_file("kp.yaml", &cfg).unwrap_err().to_string();
        assert_eq!(e, "kp.yaml: mode: unsupported proxy mode \"ipvs\" (want nftables or iptables)");
        let cfg =
            KubeProxyConfiguration::parse("kp.yaml", "nftables:\n  minSyncPeriod: 1m\n  syncPeriod: 30s\n").unwrap().0;
        let e = Settings::default().apply_file("kp.yaml", &cfg).unwrap_err().to_string();
        assert_eq!(
            e,
            "kp.yaml: failed validate: KubeProxyConfiguration.SyncPeriod: Invalid value: \"1m0s\": must be greater than or equal to KubeProxyConfiguration.MinSyncPeriod"
        );
        let cfg = KubeProxyConfiguration::parse("kp.yaml", "metricsBindAddress: localhost\n").unwrap().0;
        let e = Settings::default().apply_file("kp.yaml", &cfg).unwrap_err().to_string();
        assert_eq!(
            e,
            "kp.yaml: failed validate: KubeProxyConfiguration.MetricsBindAddress: Invalid value: \"localhost\": must be IP:port"
        );
    }
}

#[cfg(test)]
mod deploy_tests {
    use super::*;

    /// The ConfigMap in deploy/ holds a configuration `run --config` accepts.
    #[test]
    fn deploy_configmap_is_a_valid_configuration() {
        let text = include_str!("../../../deploy/kube-nftproxy.yaml");
        let cm = text
            .split("\n---\n")
            .map(|d| serde_yaml::from_str::<serde_yaml::Value>(d).unwrap())
            .find(|d| d["kind"] == "ConfigMap")
            .expect("a ConfigMap");
        let conf = cm["data"]["config.conf"].as_str().unwrap();
        let cfg = KubeProxyConfiguration::parse("config.conf", conf).unwrap().0;
        let mut s = Settings::default();
        s.apply_file("config.conf", &cfg).unwrap();
        assert_eq!(s.mode, ProxyMode::Nftables);
        assert_eq!(s.kubeconfig, None, "in-cluster service account");
        assert_eq!(s.healthz_bind_address, Some("0.0.0.0:10256".parse().unwrap()));
        assert_eq!(s.sync_period, Duration::from_secs(30));
    }
}
