//! `kube-nftproxy run`: the long-running proxy, with kube-proxy's flag names. Flags override the
//! `--config` file, which overrides the defaults (kube-proxy's precedence).

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::Args;
use nftproxy_daemon::config::{GoDuration, override_detect_local, parse_bind_address, parse_nodeport_addresses};
use nftproxy_daemon::validation::{Internal, failed_validate, validate};
use nftproxy_daemon::{KubeProxyConfiguration, ProxyMode, Settings, Source};

#[derive(Args, Debug, Default)]
pub struct RunArgs {
    /// A KubeProxyConfiguration file (kubeproxy.config.k8s.io/v1alpha1); flags override it.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// kubeconfig of the API server to watch. Default: the in-cluster service account.
    #[arg(long, value_name = "FILE")]
    kubeconfig: Option<PathBuf>,
    /// The API server address (overrides the kubeconfig's).
    #[arg(long, value_name = "URL")]
    master: Option<String>,
    /// Standalone: watch this manifest file or directory instead of an API server.
    #[arg(long, value_name = "PATH", conflicts_with_all = ["kubeconfig", "master"])]
    from: Option<PathBuf>,
    /// kube-proxy's node flags (shared with the other commands).
    #[command(flatten)]
    node: crate::node_args::NodeFlags,
    /// nftables (default) or iptables (kube-proxy's iptables rules, in the node's iptables:
    /// legacy or nft, detected as kube-proxy's image does).
    #[arg(long = "proxy-mode", value_name = "MODE", value_parser = |s: &str| s.parse::<ProxyMode>())]
    proxy_mode: Option<ProxyMode>,
    /// Minimum time between syncs (Go duration, default 1s). kube-proxy's name in every mode but
    /// IPVS; `--min-sync-period` is our older name for it.
    #[arg(long = "iptables-min-sync-period", visible_alias = "min-sync-period", value_name = "DURATION")]
    min_sync_period: Option<GoDuration>,
    /// Maximum time between syncs (Go duration, default 30s); `--sync-period` is our older name.
    #[arg(long = "iptables-sync-period", visible_alias = "sync-period", value_name = "DURATION")]
    sync_period: Option<GoDuration>,
    /// Overrides the node's primary IP (kube-proxy: the name is historical; nothing binds to it).
    /// 0.0.0.0 or :: (the default): the Node object's addresses.
    #[arg(long = "bind-address", value_name = "IP")]
    bind_address: Option<IpAddr>,
    /// A failure to bind the metrics or health server ends the process (default: retried every
    /// 5 s, as kube-proxy does).
    #[arg(long = "bind-address-hard-fail", value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    bind_address_hard_fail: Option<bool>,
    /// This process's oom_score_adj, -1000..1000 (default -999, as kube-proxy).
    #[arg(long = "oom-score-adj", value_name = "N", allow_hyphen_values = true)]
    oom_score_adj: Option<i32>,
    /// Do the one-time set-up (sysctls, conntrack limits, oom_score_adj) and exit.
    #[arg(long = "init-only")]
    init_only: bool,
    /// Write the effective configuration (kubeproxy.config.k8s.io/v1alpha1 YAML) to FILE and exit.
    #[arg(long = "write-config-to", value_name = "FILE")]
    write_config_to: Option<PathBuf>,
    /// Print the version and exit.
    #[arg(long)]
    version: bool,
    /// Log format: text (default) or json.
    #[arg(long = "logging-format", value_name = "FORMAT", value_parser = ["text", "json"])]
    logging_format: Option<String>,
    /// kube-proxy flags that do not apply here: accepted, each one warned about with the reason.
    #[command(flatten)]
    not_applicable: crate::commands::kube_proxy_flags::NotApplicable,
    /// ip:port of /metrics (default 127.0.0.1:10249; empty: off).
    #[arg(long = "metrics-bind-address", value_name = "IP:PORT")]
    metrics_bind_address: Option<String>,
    /// ip:port of /healthz and /livez (default 0.0.0.0:10256; empty: off).
    #[arg(long = "healthz-bind-address", value_name = "IP:PORT")]
    healthz_bind_address: Option<String>,
    /// The masquerade mark bit in iptables mode (default 14).
    #[arg(long = "iptables-masquerade-bit", value_name = "BIT", allow_hyphen_values = true)]
    iptables_masquerade_bit: Option<i32>,
    /// iptables mode: NodePorts on 127.0.0.1 too (default true; sets route_localnet).
    #[arg(long = "iptables-localhost-nodeports", value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    iptables_localhost_nodeports: Option<bool>,
    /// Conntrack entries per CPU (default 32768; 0: leave nf_conntrack_max alone).
    #[arg(long = "conntrack-max-per-core", value_name = "N", allow_hyphen_values = true)]
    conntrack_max_per_core: Option<i32>,
    /// Minimum conntrack entries, whatever the CPU count (default 131072).
    #[arg(long = "conntrack-min", value_name = "N", allow_hyphen_values = true)]
    conntrack_min: Option<i32>,
    /// Idle timeout of established TCP connections (default 24h0m0s; 0: leave it).
    #[arg(long = "conntrack-tcp-timeout-established", value_name = "DURATION")]
    conntrack_tcp_timeout_established: Option<GoDuration>,
    /// TCP CLOSE_WAIT timeout (default 1h0m0s; 0: leave it).
    #[arg(long = "conntrack-tcp-timeout-close-wait", value_name = "DURATION")]
    conntrack_tcp_timeout_close_wait: Option<GoDuration>,
    /// Set nf_conntrack_tcp_be_liberal (and, in iptables mode, no INVALID-drop rule).
    #[arg(long = "conntrack-tcp-be-liberal", value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    conntrack_tcp_be_liberal: Option<bool>,
    /// UDP conntrack timeout (0: leave it).
    #[arg(long = "conntrack-udp-timeout", value_name = "DURATION")]
    conntrack_udp_timeout: Option<GoDuration>,
    /// UDP stream conntrack timeout (0: leave it).
    #[arg(long = "conntrack-udp-timeout-stream", value_name = "DURATION")]
    conntrack_udp_timeout_stream: Option<GoDuration>,
    /// Standalone mode: a manifest source without a single object means "no Services" (without
    /// this flag it is refused like a file that does not parse, and the rules stay).
    #[arg(long = "allow-empty-manifests", requires = "from")]
    allow_empty_manifests: bool,
    /// Remove our rules (both modes) and exit.
    #[arg(long)]
    cleanup: bool,
    /// Log verbosity (kube-proxy's --v): 0–1 info, 2–3 debug, 4+ trace.
    #[arg(long = "v", short = 'v', value_name = "LEVEL", default_value_t = 0)]
    verbosity: u8,
}

impl RunArgs {
    /// The settings in force, with kube-proxy's precedence: with `--config`, the file replaces
    /// every flag that maps to a configuration field (each such flag given is warned about);
    /// `--hostname-override`, `--master`, the logging flags and our own flags still apply.
    pub fn settings(&self) -> Result<Settings> {
        let mut s = Settings::default();
        s.notes.extend(self.not_applicable.notes());
        if let Some(path) = &self.config {
            let text = std::fs::read_to_string(path).with_context(|| format!("--config {}", path.display()))?;
            let file = path.display().to_string();
            let (cfg, unknown) = KubeProxyConfiguration::parse(&file, &text)?;
            if !unknown.is_empty() {
                s.notes.push(format!(
                    "{file}: using lenient decoding as strict decoding failed: unknown field(s) {} (ignored, as kube-proxy does)",
                    unknown.join(", ")
                ));
            }
            s.apply_file(&file, &cfg)?;
            for flag in self.config_flags_given() {
                s.notes.push(format!("--{flag} is ignored: --config is given, and its file replaces every flag that maps to the configuration (as in kube-proxy)"));
            }
        } else {
            self.apply_config_flags(&mut s)?;
        }
        s.master = self.master.clone().or(s.master);
        s.from = self.from.clone();
        if self.from.is_some() {
            s.kubeconfig = None;
        }
        if let Some(h) = &self.node.hostname_override {
            if h.trim().is_empty() {
                bail!("--hostname-override: empty hostname-override is invalid");
            }
            s.hostname_override = Some(h.clone());
        }
        if !self.node.node_ip.is_empty() {
            s.node_ips = self.node.node_ip.clone();
        }
        if let Some(f) = &self.logging_format {
            s.logging_format = f.clone();
        }
        s.config_file = self.config.clone();
        Ok(s)
    }

    /// The flags given that map to KubeProxyConfiguration fields (kube-proxy's names).
    fn config_flags_given(&self) -> Vec<&'static str> {
        let mut given = Vec::new();
        let mut check = |set: bool, name: &'static str| {
            if set {
                given.push(name);
            }
        };
        check(self.kubeconfig.is_some(), "kubeconfig");
        check(self.proxy_mode.is_some(), "proxy-mode");
        check(self.node.cluster_cidr.is_some(), "cluster-cidr");
        check(self.node.nodeport_addresses.is_some(), "nodeport-addresses");
        check(self.node.masquerade_all.is_some(), "masquerade-all");
        check(self.min_sync_period.is_some(), "iptables-min-sync-period");
        check(self.sync_period.is_some(), "iptables-sync-period");
        check(self.metrics_bind_address.is_some(), "metrics-bind-address");
        check(self.healthz_bind_address.is_some(), "healthz-bind-address");
        check(self.iptables_masquerade_bit.is_some(), "iptables-masquerade-bit");
        check(self.node.detect_local_mode.is_some(), "detect-local-mode");
        check(self.node.pod_bridge_interface.is_some(), "pod-bridge-interface");
        check(self.node.pod_interface_name_prefix.is_some(), "pod-interface-name-prefix");
        check(self.iptables_localhost_nodeports.is_some(), "iptables-localhost-nodeports");
        check(self.conntrack_max_per_core.is_some(), "conntrack-max-per-core");
        check(self.conntrack_min.is_some(), "conntrack-min");
        check(self.conntrack_tcp_timeout_established.is_some(), "conntrack-tcp-timeout-established");
        check(self.conntrack_tcp_timeout_close_wait.is_some(), "conntrack-tcp-timeout-close-wait");
        check(self.conntrack_tcp_be_liberal.is_some(), "conntrack-tcp-be-liberal");
        check(self.conntrack_udp_timeout.is_some(), "conntrack-udp-timeout");
        check(self.conntrack_udp_timeout_stream.is_some(), "conntrack-udp-timeout-stream");
        check(self.bind_address.is_some(), "bind-address");
        check(self.bind_address_hard_fail.is_some(), "bind-address-hard-fail");
        check(self.oom_score_adj.is_some(), "oom-score-adj");
        given.extend(self.not_applicable.config_flags_given());
        given
    }

    /// The flags as kube-proxy's validation sees them (its defaults where a flag is not given).
    /// Our extensions stay out of its way: an empty bind address (off) and `all`.
    fn validation_view(&self) -> Internal {
        let mut v = Internal::default();
        v.mode = match self.proxy_mode {
            Some(ProxyMode::Iptables) => "iptables".into(),
            _ => "nftables".into(),
        };
        if let Some(b) = self.iptables_masquerade_bit {
            v.iptables_masquerade_bit = b.into();
        }
        v.conntrack_max_per_core = self.conntrack_max_per_core.map(i64::from).or(v.conntrack_max_per_core);
        v.conntrack_min = self.conntrack_min.map(i64::from).or(v.conntrack_min);
        v.oom_score_adj = self.oom_score_adj.map(i64::from).or(v.oom_score_adj);
        if let Some(GoDuration(d)) = self.sync_period {
            v.sync_period = d.into();
        }
        if let Some(GoDuration(d)) = self.min_sync_period {
            v.min_sync_period = d.into();
        }
        let addr = |flag: &Option<String>, port, default: String| match flag.as_deref().map(str::trim) {
            Some(a) if !a.is_empty() => nftproxy_daemon::validation::with_port(a, port),
            _ => default,
        };
        v.healthz_bind_address = addr(&self.healthz_bind_address, 10256, v.healthz_bind_address.clone());
        v.metrics_bind_address = addr(&self.metrics_bind_address, 10249, v.metrics_bind_address.clone());
        if let Some(n) = &self.node.nodeport_addresses {
            v.node_port_addresses = n.split(',').map(str::trim).filter(|a| !a.is_empty()).map(str::to_string).collect();
        }
        if let Some(m) = &self.node.detect_local_mode {
            v.detect_local_mode = m.clone();
        }
        v.bridge_interface = self.node.pod_bridge_interface.clone().unwrap_or_default();
        v.interface_name_prefix = self.node.pod_interface_name_prefix.clone().unwrap_or_default();
        if let Some(c) = self.node.cluster_cidr.as_deref().filter(|c| !c.trim().is_empty()) {
            v.cluster_cidrs = c.split(',').map(str::to_string).collect();
        }
        v
    }

    /// Without `--config`: the flags over the defaults.
    fn apply_config_flags(&self, s: &mut Settings) -> Result<()> {
        // kube-proxy's validation of what the flags make, with its texts.
        if let Some(e) = failed_validate(&validate(&self.validation_view())) {
            bail!("{e}");
        }
        if let Some(m) = self.proxy_mode {
            s.mode = m;
        }
        if let Some(k) = &self.kubeconfig {
            s.kubeconfig = Some(k.clone());
        }
        if let Some(ip) = self.bind_address.filter(|ip| !ip.is_unspecified()) {
            s.node_ips = vec![ip];
        }
        if let Some(v) = self.bind_address_hard_fail {
            s.bind_address_hard_fail = v;
        }
        if let Some(v) = self.oom_score_adj {
            s.oom_score_adj = Some(v); // validated: -1000..=1000
        }
        let notes = self.not_applicable.apply(s)?;
        s.notes.extend(notes);
        if let Some(c) = &self.node.cluster_cidr {
            s.cluster_cidrs = c
                .split(',')
                .map(str::trim)
                .filter(|c| !c.is_empty())
                .map(|c| {
                    c.parse::<ipnet::IpNet>()
                        .map(|n| n.trunc())
                        .with_context(|| format!("--cluster-cidr: {c:?} is not a CIDR"))
                })
                .collect::<Result<_>>()?;
        }
        if let Some(n) = self.node.nodeport_addresses.as_ref().filter(|n| !n.trim().is_empty()) {
            s.nodeport_addresses = Some(
                parse_nodeport_addresses(std::slice::from_ref(n))
                    .map_err(|e| anyhow::anyhow!("--nodeport-addresses: {e}"))?,
            );
        }
        // The flags complete the file's settings (kube-proxy: flags override field by field).
        s.detect_local = override_detect_local(
            &s.detect_local,
            self.node.detect_local_mode.as_deref(),
            self.node.pod_bridge_interface.as_deref(),
            self.node.pod_interface_name_prefix.as_deref(),
        )
        .map_err(|(flag, e)| anyhow::anyhow!("--{flag}: {e}"))?;
        if let Some(v) = self.iptables_localhost_nodeports {
            s.localhost_nodeports = v;
        }
        let c = &mut s.conntrack;
        if let Some(v) = self.conntrack_max_per_core {
            c.max_per_core = v;
        }
        if let Some(v) = self.conntrack_min {
            c.min = v;
        }
        for (flag, slot) in [
            (self.conntrack_tcp_timeout_established, &mut c.tcp_established_timeout),
            (self.conntrack_tcp_timeout_close_wait, &mut c.tcp_close_wait_timeout),
            (self.conntrack_udp_timeout, &mut c.udp_timeout),
            (self.conntrack_udp_timeout_stream, &mut c.udp_stream_timeout),
        ] {
            if let Some(GoDuration(d)) = flag {
                *slot = d;
            }
        }
        if let Some(v) = self.conntrack_tcp_be_liberal {
            c.tcp_be_liberal = v;
            s.conntrack_tcp_be_liberal = v;
        }
        if let Some(m) = self.node.masquerade_all {
            s.masquerade_all = m;
        }
        if let Some(GoDuration(d)) = self.min_sync_period {
            s.min_sync_period = d;
        }
        if let Some(GoDuration(d)) = self.sync_period {
            s.sync_period = d;
        }
        if let Some(a) = &self.metrics_bind_address {
            s.metrics_bind_address =
                parse_bind_address(a).map_err(|e| anyhow::anyhow!("--metrics-bind-address: {e}"))?;
        }
        if let Some(a) = &self.healthz_bind_address {
            s.healthz_bind_address =
                parse_bind_address(a).map_err(|e| anyhow::anyhow!("--healthz-bind-address: {e}"))?;
        }
        if let Some(b) = self.iptables_masquerade_bit {
            s.masquerade_bit = b as u8; // validated: 0..=31
        }
        Ok(())
    }
}

/// The flags of a command line as `--name=value` lines (`/flagz`): `--name value` pairs joined.
fn flagz_lines(args: impl Iterator<Item = String>) -> Vec<String> {
    let args: Vec<String> = args.collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < args.len() {
        let a = &args[i];
        if a.starts_with('-') && !a.contains('=') && args.get(i + 1).is_some_and(|v| !v.starts_with('-')) {
            out.push(format!("{a}={}", args[i + 1]));
            i += 2;
        } else {
            out.push(a.clone());
            i += 1;
        }
    }
    out
}

fn init_logging(verbosity: u8, format: &str) {
    let level = match verbosity {
        0 | 1 => "info",
        2 | 3 => "debug",
        _ => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new(format!(
            "warn,nftproxy_daemon={level},nftproxy_kube={level},kube_nftproxy={level}"
        ))
    });
    use std::io::IsTerminal;
    let fmt = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    let _ = if format == "json" {
        fmt.json().try_init()
    } else {
        fmt.with_ansi(std::io::stderr().is_terminal()).try_init()
    };
}

pub fn run(args: RunArgs) -> Result<()> {
    if args.version {
        println!("kube-nftproxy {} (kube-proxy v1.34 command line)", env!("CARGO_PKG_VERSION"));
        return Ok(());
    }
    let mut settings = args.settings()?;
    settings.flags = flagz_lines(std::env::args().skip_while(|a| a != "run").skip(1));
    init_logging(args.verbosity, &settings.logging_format);
    for note in &settings.notes {
        tracing::warn!("{note}");
    }
    if let Some(path) = &args.write_config_to {
        let node_name = settings.hostname_override.clone().map(|s| s.trim().to_lowercase());
        std::fs::write(path, settings.to_v1alpha1_yaml(node_name.as_deref()))
            .with_context(|| format!("--write-config-to {}", path.display()))?;
        tracing::info!(file = %path.display(), "wrote the configuration");
        return Ok(());
    }
    if args.cleanup {
        let kube_proxy = nftproxy_daemon::backend::cleanup_all().map_err(|e| anyhow::anyhow!("cleanup: {e}"))?;
        for r in &kube_proxy {
            tracing::info!("removed kube-proxy's leftover: {r}");
        }
        eprintln!(
            "removed kube-nftproxy's nftables tables and iptables chains{}",
            if kube_proxy.is_empty() {
                String::new()
            } else {
                format!(", and {} leftover(s) of kube-proxy", kube_proxy.len())
            }
        );
        return Ok(());
    }
    if args.init_only {
        nftproxy_daemon::daemon::init_node(&settings);
        tracing::info!("system initialized and --init-only given: exiting");
        return Ok(());
    }
    let node_name =
        settings.hostname_override.clone().map(|s| s.trim().to_lowercase()).unwrap_or_else(crate::node_args::host_name);
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    rt.block_on(async move {
        let source = match &settings.from {
            Some(path) => {
                // Refused at start if it would not load (a scan: nothing is converted or kept).
                nftproxy_manifest::check_path(path, args.allow_empty_manifests)
                    .with_context(|| format!("--from {}", path.display()))?;
                Source::Manifests(path.clone(), Duration::from_secs(1), args.allow_empty_manifests)
            }
            None => {
                let client = nftproxy_kube::client(settings.kubeconfig.as_deref(), settings.master.as_deref()).await?;
                Source::Api(client)
            }
        };
        nftproxy_daemon::run(settings, node_name, source).await?;
        Ok::<_, anyhow::Error>(())
    })
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    #[derive(Parser)]
    struct Wrap {
        #[command(flatten)]
        run: super::RunArgs,
    }

    fn settings(args: &[&str]) -> anyhow::Result<nftproxy_daemon::Settings> {
        Wrap::try_parse_from(std::iter::once("run").chain(args.iter().copied()))?.run.settings()
    }

    #[test]
    fn with_config_the_file_replaces_the_flags_that_map_to_it_as_in_kube_proxy() {
        let path = std::env::temp_dir().join(format!("knp-runcfg-{}.yaml", std::process::id()));
        std::fs::write(
            &path,
            "apiVersion: kubeproxy.config.k8s.io/v1alpha1\nkind: KubeProxyConfiguration\nmode: iptables\n\
             clusterCIDR: 10.244.0.0/16\nmetricsBindAddress: 0.0.0.0:9999\nhostnameOverride: from-file\n\
             iptables: {syncPeriod: 10s, minSyncPeriod: 2s, masqueradeBit: 12}\n",
        )
        .unwrap();
        let file = path.to_str().unwrap();
        let from_file = settings(&["--config", file]);
        let flags = settings(&[
            "--config",
            file,
            "--iptables-sync-period",
            "5s",
            "--proxy-mode",
            "nftables",
            "--hostname-override",
            "node-a",
            "--kube-api-qps",
            "50",
        ]);
        std::fs::remove_file(&path).unwrap();
        let f = from_file.unwrap();
        assert_eq!(f.mode, nftproxy_daemon::ProxyMode::Iptables);
        assert_eq!(f.sync_period, std::time::Duration::from_secs(10));
        assert_eq!(f.masquerade_bit, 12);
        assert_eq!(f.metrics_bind_address, Some("0.0.0.0:9999".parse().unwrap()));
        assert_eq!(f.healthz_bind_address, Some("0.0.0.0:10256".parse().unwrap()), "default kept");
        assert_eq!(f.cluster_cidrs, vec!["10.244.0.0/16".parse::<ipnet::IpNet>().unwrap()]);
        assert!(f.notes.is_empty(), "{:?}", f.notes);
        let g = flags.unwrap();
        assert_eq!(g.mode, nftproxy_daemon::ProxyMode::Iptables, "--proxy-mode is ignored with --config");
        assert_eq!(g.sync_period, std::time::Duration::from_secs(10), "--iptables-sync-period too");
        assert_eq!(g.hostname_override.as_deref(), Some("node-a"), "--hostname-override still wins");
        let ignored: Vec<&String> = g.notes.iter().filter(|n| n.contains("is ignored: --config is given")).collect();
        assert_eq!(ignored.len(), 3, "{:?}", g.notes);
        for flag in ["--proxy-mode", "--iptables-sync-period", "--kube-api-qps"] {
            assert!(ignored.iter().any(|n| n.starts_with(flag)), "{flag}: {:?}", g.notes);
        }
    }

    #[test]
    fn without_config_the_flags_apply() {
        let s =
            settings(&["--proxy-mode", "iptables", "--sync-period", "5s", "--iptables-min-sync-period", "0s"]).unwrap();
        assert_eq!(s.mode, nftproxy_daemon::ProxyMode::Iptables);
        assert_eq!((s.sync_period, s.min_sync_period), (std::time::Duration::from_secs(5), std::time::Duration::ZERO));
        let s =
            settings(&["--bind-address", "10.0.1.1", "--oom-score-adj", "-500", "--bind-address-hard-fail"]).unwrap();
        assert_eq!(s.node_ips, vec!["10.0.1.1".parse::<std::net::IpAddr>().unwrap()]);
        assert_eq!((s.oom_score_adj, s.bind_address_hard_fail), (Some(-500), true));
        assert!(settings(&["--bind-address", "0.0.0.0"]).unwrap().node_ips.is_empty(), "unspecified: the Node's");
        let s = settings(&["--healthz-port", "0", "--metrics-port", "10249"]).unwrap();
        assert_eq!((s.healthz_bind_address, s.metrics_bind_address.is_some()), (None, true));
        assert!(settings(&["--oom-score-adj", "-1001"]).is_err());
        let e = settings(&["--feature-gates", "Foo"]).unwrap_err().to_string();
        assert_eq!(e, "--feature-gates: \"Foo\" is not NAME=true|false");
    }

    #[test]
    fn every_kube_proxy_flag_that_does_not_apply_is_accepted_and_named_in_a_warning() {
        let args = [
            "--kube-api-content-type=application/vnd.kubernetes.protobuf",
            "--kube-api-qps=5",
            "--kube-api-burst=10",
            "--feature-gates=ServiceTrafficDistribution=true",
            "--config-sync-period=15m0s",
            "--profiling",
            "--show-hidden-metrics-for-version=1.33",
            "--ipvs-sync-period=30s",
            "--ipvs-min-sync-period=1s",
            "--ipvs-scheduler=rr",
            "--ipvs-exclude-cidrs=10.0.0.0/8",
            "--ipvs-strict-arp",
            "--ipvs-tcp-timeout=0s",
            "--ipvs-tcpfin-timeout=0s",
            "--ipvs-udp-timeout=0s",
            "--windows-service=false",
            "--source-vip=10.0.0.1",
            "--network-name=l2bridge",
            "--enable-dsr=false",
            "--root-hnsendpoint-name=cbr0",
            "--forward-healthcheck-vip=false",
            "--log-flush-frequency=5s",
            "--vmodule=proxier=4",
            "--log-text-split-stream",
            "--log-text-info-buffer-size=0",
            "--log-json-split-stream=false",
            "--log-json-info-buffer-size=0",
            "--boot-id-file=/proc/sys/kernel/random/boot_id",
            "--machine-id-file=/etc/machine-id",
        ];
        let s = settings(&args).unwrap();
        assert_eq!(s.notes.len(), args.len(), "{:#?}", s.notes);
        for a in args {
            let flag = a.split('=').next().unwrap();
            assert!(
                s.notes.iter().any(|n| n.starts_with(&format!("{flag}:")) || n.starts_with(&format!("{flag} "))),
                "{a}: {:#?}",
                s.notes
            );
        }
        assert!(s.notes.iter().all(|n| n.contains("accepted, no effect")), "{:#?}", s.notes);
    }

    #[test]
    fn kube_proxy_local_detection_conntrack_and_nodeport_flags() {
        use nftproxy_model::{DetectLocalMode, NodePortAddresses};
        let s = settings(&["--detect-local-mode", "BridgeInterface", "--pod-bridge-interface", "cbr0"]).unwrap();
        assert_eq!(s.detect_local, DetectLocalMode::BridgeInterface("cbr0".into()));
        let e = settings(&["--detect-local-mode", "InterfaceNamePrefix"]).unwrap_err().to_string();
        assert_eq!(
            e,
            "failed validate: KubeProxyConfiguration.DetectLocalConfiguration.InterfacePrefix: Invalid value: \"\": must not be empty"
        );
        let e = settings(&["--detect-local-mode", "Pods"]).unwrap_err().to_string();
        assert!(
            e.starts_with("failed validate: KubeProxyConfiguration.DetectLocalMode: Unsupported value: \"Pods\""),
            "{e}"
        );
        let s = settings(&[
            "--conntrack-max-per-core",
            "0",
            "--conntrack-udp-timeout",
            "30s",
            "--conntrack-tcp-be-liberal",
        ])
        .unwrap();
        assert_eq!((s.conntrack.max_per_core, s.conntrack.udp_timeout), (0, std::time::Duration::from_secs(30)));
        assert!(s.conntrack.tcp_be_liberal && s.conntrack_tcp_be_liberal);
        // NodePort addresses default by mode.
        assert_eq!(settings(&[]).unwrap().effective_nodeport_addresses(), NodePortAddresses::Primary);
        let ipt = settings(&["--proxy-mode", "iptables"]).unwrap();
        assert_eq!(ipt.effective_nodeport_addresses(), NodePortAddresses::All);
        assert!(ipt.effective_localhost_nodeports());
        let off = settings(&["--proxy-mode", "iptables", "--iptables-localhost-nodeports=false"]).unwrap();
        assert!(!off.effective_localhost_nodeports());
    }
}
