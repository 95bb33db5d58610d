//! `kube-nftproxy run`: the long-running proxy, with kube-proxy's flag names. Flags override the
//! `--config` file, which overrides the defaults (kube-proxy's precedence).

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::Args;
use nftproxy_daemon::config::{GoDuration, override_detect_local, parse_bind_address, parse_nodeport_addresses};
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
    /// This node's name. Default: the host name.
    #[arg(long = "hostname-override", value_name = "NAME")]
    hostname_override: Option<String>,
    /// This node's IP (repeatable). Default: the addresses of its Node object.
    #[arg(long = "node-ip", value_name = "IP")]
    node_ip: Vec<IpAddr>,
    /// nftables (default) or iptables (kube-proxy's iptables-legacy rules).
    #[arg(long = "proxy-mode", value_name = "MODE", value_parser = |s: &str| s.parse::<ProxyMode>())]
    proxy_mode: Option<ProxyMode>,
    /// Pod CIDRs (comma-separated): traffic from outside them to a ClusterIP is masqueraded.
    #[arg(long = "cluster-cidr", value_name = "CIDR[,CIDR]")]
    cluster_cidr: Option<String>,
    /// `primary` (default), `all`, or CIDRs (comma-separated) of addresses that take NodePorts.
    #[arg(long = "nodeport-addresses", value_name = "primary|all|CIDR,...")]
    nodeport_addresses: Option<String>,
    /// Masquerade all traffic sent to Service IPs.
    #[arg(long = "masquerade-all", num_args = 0..=1, default_missing_value = "true", value_name = "BOOL")]
    masquerade_all: Option<bool>,
    /// Minimum time between syncs (Go duration, default 1s).
    #[arg(long = "min-sync-period", value_name = "DURATION")]
    min_sync_period: Option<GoDuration>,
    /// Maximum time between syncs (Go duration, default 30s).
    #[arg(long = "sync-period", value_name = "DURATION")]
    sync_period: Option<GoDuration>,
    /// ip:port of /metrics (default 127.0.0.1:10249; empty: off).
    #[arg(long = "metrics-bind-address", value_name = "IP:PORT")]
    metrics_bind_address: Option<String>,
    /// ip:port of /healthz and /livez (default 0.0.0.0:10256; empty: off).
    #[arg(long = "healthz-bind-address", value_name = "IP:PORT")]
    healthz_bind_address: Option<String>,
    /// The masquerade mark bit in iptables mode (default 14).
    #[arg(long = "iptables-masquerade-bit", value_name = "BIT", value_parser = clap::value_parser!(u8).range(0..=31))]
    iptables_masquerade_bit: Option<u8>,
    /// How pod traffic is recognised: ClusterCIDR (default), NodeCIDR, BridgeInterface,
    /// InterfaceNamePrefix.
    #[arg(long = "detect-local-mode", value_name = "MODE")]
    detect_local_mode: Option<String>,
    /// The pods' bridge (--detect-local-mode BridgeInterface).
    #[arg(long = "pod-bridge-interface", value_name = "NAME")]
    pod_bridge_interface: Option<String>,
    /// The prefix of the pods' interface names (--detect-local-mode InterfaceNamePrefix).
    #[arg(long = "pod-interface-name-prefix", value_name = "PREFIX")]
    pod_interface_name_prefix: Option<String>,
    /// iptables mode: NodePorts on 127.0.0.1 too (default true; sets route_localnet).
    #[arg(long = "iptables-localhost-nodeports", value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    iptables_localhost_nodeports: Option<bool>,
    /// Conntrack entries per CPU (default 32768; 0: leave nf_conntrack_max alone).
    #[arg(long = "conntrack-max-per-core", value_name = "N", value_parser = clap::value_parser!(i32).range(0..))]
    conntrack_max_per_core: Option<i32>,
    /// Minimum conntrack entries, whatever the CPU count (default 131072).
    #[arg(long = "conntrack-min", value_name = "N", value_parser = clap::value_parser!(i32).range(0..))]
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
    pub fn settings(&self) -> Result<Settings> {
        let mut s = Settings::default();
        // The mode decides which section of the file counts: flags first for that.
        if let Some(m) = self.proxy_mode {
            s.mode = m;
        }
        if let Some(path) = &self.config {
            let text = std::fs::read_to_string(path).with_context(|| format!("--config {}", path.display()))?;
            let file = path.display().to_string();
            let mut cfg = KubeProxyConfiguration::parse(&file, &text)?;
            if self.proxy_mode.is_some() {
                // The flag wins over the file's mode.
                cfg.mode = None;
            }
            s.apply_file(&file, &cfg)?;
        }
        if let Some(k) = &self.kubeconfig {
            s.kubeconfig = Some(k.clone());
        }
        s.master = self.master.clone().or(s.master);
        s.from = self.from.clone();
        if self.from.is_some() {
            s.kubeconfig = None;
        }
        if let Some(h) = &self.hostname_override {
            s.hostname_override = Some(h.clone());
        }
        if !self.node_ip.is_empty() {
            s.node_ips = self.node_ip.clone();
        }
        if let Some(c) = &self.cluster_cidr {
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
        if let Some(n) = self.nodeport_addresses.as_ref().filter(|n| !n.trim().is_empty()) {
            s.nodeport_addresses = Some(
                parse_nodeport_addresses(std::slice::from_ref(n))
                    .map_err(|e| anyhow::anyhow!("--nodeport-addresses: {e}"))?,
            );
        }
        // The flags complete the file's settings (kube-proxy: flags override field by field).
        s.detect_local = override_detect_local(
            &s.detect_local,
            self.detect_local_mode.as_deref(),
            self.pod_bridge_interface.as_deref(),
            self.pod_interface_name_prefix.as_deref(),
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
        if let Some(m) = self.masquerade_all {
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
            s.masquerade_bit = b;
        }
        if let Err((field, msg)) = s.validate() {
            let flag = if field == "syncPeriod" { "--sync-period" } else { "--min-sync-period" };
            bail!("{flag}: {msg}");
        }
        Ok(s)
    }
}

fn init_logging(verbosity: u8) {
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
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .try_init();
}

pub fn run(args: RunArgs) -> Result<()> {
    let settings = args.settings()?;
    init_logging(args.verbosity);
    if args.cleanup {
        nftproxy_daemon::backend::cleanup_all().map_err(|e| anyhow::anyhow!("cleanup: {e}"))?;
        eprintln!("removed kube-nftproxy's nftables tables and iptables chains");
        return Ok(());
    }
    let node_name =
        settings.hostname_override.clone().map(|s| s.trim().to_lowercase()).unwrap_or_else(crate::node_args::host_name);
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    rt.block_on(async move {
        let source = match &settings.from {
            Some(path) => {
                nftproxy_manifest::load_path_with(path, args.allow_empty_manifests)
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
    fn flags_override_the_file_and_the_file_overrides_defaults() {
        let path = std::env::temp_dir().join(format!("knp-runcfg-{}.yaml", std::process::id()));
        std::fs::write(
            &path,
            "apiVersion: kubeproxy.config.k8s.io/v1alpha1\nkind: KubeProxyConfiguration\nmode: iptables\n\
             clusterCIDR: 10.244.0.0/16\nmetricsBindAddress: 0.0.0.0:9999\n\
             iptables: {syncPeriod: 10s, minSyncPeriod: 2s, masqueradeBit: 12}\n",
        )
        .unwrap();
        let file = path.to_str().unwrap();
        let from_file = settings(&["--config", file]);
        let flags = settings(&["--config", file, "--sync-period", "5s", "--proxy-mode", "nftables"]);
        std::fs::remove_file(&path).unwrap();
        let f = from_file.unwrap();
        assert_eq!(f.mode, nftproxy_daemon::ProxyMode::Iptables);
        assert_eq!(f.sync_period, std::time::Duration::from_secs(10));
        assert_eq!(f.masquerade_bit, 12);
        assert_eq!(f.metrics_bind_address, Some("0.0.0.0:9999".parse().unwrap()));
        assert_eq!(f.healthz_bind_address, Some("0.0.0.0:10256".parse().unwrap()), "default kept");
        let g = flags.unwrap();
        assert_eq!(g.mode, nftproxy_daemon::ProxyMode::Nftables, "--proxy-mode wins over the file");
        assert_eq!(g.sync_period, std::time::Duration::from_secs(5), "--sync-period wins");
        // In nftables mode the file's iptables section does not apply.
        assert_eq!(g.min_sync_period, std::time::Duration::from_secs(1));
        assert_eq!(g.cluster_cidrs, vec!["10.244.0.0/16".parse::<ipnet::IpNet>().unwrap()]);
    }

    #[test]
    fn kube_proxy_local_detection_conntrack_and_nodeport_flags() {
        use nftproxy_model::{DetectLocalMode, NodePortAddresses};
        let s = settings(&["--detect-local-mode", "BridgeInterface", "--pod-bridge-interface", "cbr0"]).unwrap();
        assert_eq!(s.detect_local, DetectLocalMode::BridgeInterface("cbr0".into()));
        let e = settings(&["--detect-local-mode", "InterfaceNamePrefix"]).unwrap_err().to_string();
        assert_eq!(e, "--pod-interface-name-prefix: must not be empty with --detect-local-mode InterfaceNamePrefix");
        let e = settings(&["--detect-local-mode", "Pods"]).unwrap_err().to_string();
        assert!(e.starts_with("--detect-local-mode: unknown mode \"Pods\""), "{e}");
        let s = settings(&["--conntrack-max-per-core", "0", "--conntrack-udp-timeout", "30s", "--conntrack-tcp-be-liberal"])
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
