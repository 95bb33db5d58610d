//! kube-proxy's node-context flags, shared by every subcommand that resolves services.

use std::net::IpAddr;

use anyhow::{Context, Result, bail};
use clap::Args;
use ipnet::IpNet;
use nftproxy_model::{ClusterState, NodeContext, NodePortAddresses};

/// kube-proxy's node flags, one definition for every command: `run` (where a `--config` file
/// may set the same fields, so each is kept as given, or None) and the commands that resolve
/// Services for a node (`sync`, `render`, `inspect`, `explain`, `trace`), which build a
/// [`NodeContext`] from them with [`NodeFlags::context`].
#[derive(Args, Debug, Clone, Default)]
pub struct NodeFlags {
    /// This node's name (kube-proxy's --hostname-override). Default: the host name.
    #[arg(long = "hostname-override", value_name = "NAME")]
    pub hostname_override: Option<String>,
    /// This node's IP (repeatable). Default: the InternalIP/ExternalIP addresses of its Node object.
    #[arg(long = "node-ip", value_name = "IP")]
    pub node_ip: Vec<IpAddr>,
    /// Pod CIDRs of the cluster, comma-separated, for local-traffic detection: traffic from
    /// outside them to a ClusterIP is masqueraded.
    #[arg(long = "cluster-cidr", value_name = "CIDR[,CIDR]")]
    pub cluster_cidr: Option<String>,
    /// Masquerade all traffic sent to Service IPs.
    #[arg(long = "masquerade-all", num_args = 0..=1, default_missing_value = "true", value_name = "BOOL")]
    pub masquerade_all: Option<bool>,
    /// Addresses that accept NodePort traffic: `primary` (the primary node IPs; the nftables
    /// default), `all` (every local address; the iptables default), or comma-separated CIDRs
    /// (the node's interface addresses inside them).
    #[arg(long = "nodeport-addresses", value_name = "primary|all|CIDR,...")]
    pub nodeport_addresses: Option<String>,
    /// How pod traffic is recognised: ClusterCIDR (default), NodeCIDR (the Node's
    /// spec.podCIDRs), BridgeInterface, InterfaceNamePrefix.
    #[arg(long = "detect-local-mode", value_name = "MODE")]
    pub detect_local_mode: Option<String>,
    /// The bridge pods are attached to (--detect-local-mode BridgeInterface).
    #[arg(long = "pod-bridge-interface", value_name = "NAME")]
    pub pod_bridge_interface: Option<String>,
    /// The name prefix of pods' interfaces (--detect-local-mode InterfaceNamePrefix).
    #[arg(long = "pod-interface-name-prefix", value_name = "PREFIX")]
    pub pod_interface_name_prefix: Option<String>,
}

/// `--cluster-cidr`'s CIDRs (comma-separated; empty: none).
pub fn parse_cluster_cidrs(s: &str) -> Result<Vec<IpNet>> {
    s.split(',')
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .map(|c| c.parse::<IpNet>().map(|n| n.trunc()).with_context(|| format!("--cluster-cidr: {c:?} is not a CIDR")))
        .collect()
}

pub fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_lowercase())
        .unwrap_or_else(|_| "localhost".into())
}

impl NodeFlags {
    /// Builds the node context for a backend (kube-proxy's defaults differ by mode: NodePorts on
    /// the primary node IPs in nftables mode, on every local address in iptables mode); the Node
    /// object of this node and the ServiceCIDRs (if present in `state`) fill what flags left open.
    pub fn context(&self, state: &ClusterState, iptables: bool) -> Result<NodeContext> {
        let node_name = self.hostname_override.clone().map(|s| s.trim().to_lowercase()).unwrap_or_else(host_name);
        let nodeport_addresses =
            parse_nodeport_addresses(self.nodeport_addresses.as_deref(), iptables).context("--nodeport-addresses")?;
        let detect_local = nftproxy_daemon::config::detect_local_mode(
            self.detect_local_mode.as_deref(),
            self.pod_bridge_interface.as_deref(),
            self.pod_interface_name_prefix.as_deref(),
        )
        .map_err(|(flag, e)| anyhow::anyhow!("--{flag}: {e}"))?;
        let mut ctx = NodeContext {
            node_name,
            node_ips: self.node_ip.clone(),
            cluster_cidrs: parse_cluster_cidrs(self.cluster_cidr.as_deref().unwrap_or(""))?,
            masquerade_all: self.masquerade_all.unwrap_or(false),
            nodeport_addresses,
            detect_local,
            ..Default::default()
        };
        ctx.complete_from_state(state);
        Ok(ctx)
    }
}

fn parse_nodeport_addresses(s: Option<&str>, iptables: bool) -> Result<NodePortAddresses> {
    Ok(match s.map(str::trim) {
        None | Some("") if iptables => NodePortAddresses::All,
        None | Some("") | Some("primary") => NodePortAddresses::Primary,
        Some("all") => NodePortAddresses::All,
        Some(list) => {
            let mut cidrs = Vec::new();
            for c in list.split(',').map(str::trim).filter(|c| !c.is_empty()) {
                match c.parse::<IpNet>() {
                    Ok(n) => cidrs.push(n.trunc()),
                    Err(_) => bail!("{c:?} is not a CIDR (want primary, all, or CIDRs)"),
                }
            }
            NodePortAddresses::Cidrs(cidrs)
        }
    })
}

/// kube-proxy's flags that change its iptables-mode output (defaults are kube-proxy's).
#[derive(Args, Debug, Clone)]
pub struct IptablesArgs {
    /// Accept NodePorts on 127.0.0.1 (IPv4), guarded by the KUBE-FIREWALL rule.
    #[arg(long = "iptables-localhost-nodeports", default_value_t = true, action = clap::ArgAction::Set, value_name = "BOOL")]
    pub localhost_nodeports: bool,
    /// Masquerade with --random-fully (iptables >= 1.6.2).
    #[arg(long = "iptables-random-fully", default_value_t = true, action = clap::ArgAction::Set, value_name = "BOOL")]
    pub random_fully: bool,
    /// Count with nfacct (the counters must exist; kube-proxy creates them).
    #[arg(long = "iptables-nfacct")]
    pub nfacct: bool,
    /// Conntrack is liberal about TCP: no INVALID-drop rule in KUBE-FORWARD.
    #[arg(long = "conntrack-tcp-be-liberal")]
    pub conntrack_tcp_be_liberal: bool,
    /// The masquerade mark is 1 << this bit.
    #[arg(long = "iptables-masquerade-bit", default_value_t = 14, value_parser = clap::value_parser!(u8).range(0..=31))]
    pub masquerade_bit: u8,
    /// Which iptables `sync` and `cleanup` use: `auto` detects it as kube-proxy's image does
    /// (kubelet's KUBE-IPTABLES-HINT chain in iptables-nft, else in iptables-legacy, else nft).
    #[arg(long = "iptables-variant", value_enum, default_value = "auto")]
    pub variant: VariantArg,
}

/// `--iptables-variant`.
#[derive(Clone, Copy, Debug, clap::ValueEnum, PartialEq, Eq)]
pub enum VariantArg {
    Auto,
    Legacy,
    Nft,
}

impl VariantArg {
    /// The variant to program, and why (for the message).
    pub fn resolve(self) -> nftproxy_iptables::Detection {
        let chosen = |variant| nftproxy_iptables::Detection { variant, reason: "--iptables-variant".into() };
        match self {
            VariantArg::Auto => nftproxy_iptables::detect(),
            VariantArg::Legacy => chosen(nftproxy_iptables::Variant::Legacy),
            VariantArg::Nft => chosen(nftproxy_iptables::Variant::Nft),
        }
    }
}

impl IptablesArgs {
    pub fn options(&self) -> nftproxy_iptables::Options {
        nftproxy_iptables::Options {
            masquerade_bit: self.masquerade_bit,
            random_fully: self.random_fully,
            localhost_nodeports: self.localhost_nodeports,
            nfacct: self.nfacct,
            conntrack_tcp_be_liberal: self.conntrack_tcp_be_liberal,
        }
    }
}
