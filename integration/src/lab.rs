//! A proxy lab: a node namespace running the nftables backend, an off-cluster client, pods with
//! responders, each pod on its own routed veth into the node (as CNIs wire pods).
//!
//! ```text
//! client 10.0.1.2 ── 10.0.1.1 node ── 10.244.N.1 ── podN 10.244.N.2   (N = 1..pods, 50 = pod client)
//!        fd00:1::2 ── fd00:1::1     ── fd00:244:N::1 ── fd00:244:N::2
//!                     10.0.2.1  ──  upstream 10.0.2.2 (default route of the node)
//! ```
//! The upstream router has an `unreachable` default route and no route back to the client: what
//! the node routes on, un-NATed, goes nowhere, so it looks like a drop (a timeout) unless a test
//! gives the upstream addresses and a route back (see the parity suite's ServiceCIDR test).
//! The node is `node-a` with node IPs 10.0.1.1 and fd00:1::1 and cluster CIDRs 10.244.0.0/16 and
//! fd00:244::/48. Nothing but namespaces of this lab ever sees its addresses.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use nftproxy_manifest::Loaded;
use nftproxy_model::{NodeContext, NodePortAddresses};
use nftproxy_nftables::{NftablesBackend, SyncError, SyncReport};

use crate::{Ns, Proto, Tally, Topology, tally};

pub const NODE: &str = "node-a";
pub const NODE_IP: &str = "10.0.1.1";
pub const CLIENT_IP: &str = "10.0.1.2";
pub const POD_CLIENT_IP: &str = "10.244.50.2";
/// The port every pod's responders listen on (TCP and UDP).
pub const POD_PORT: u16 = 8080;

pub fn pod_ip(n: usize) -> String {
    format!("10.244.{n}.2")
}
pub fn pod_ip6(n: usize) -> String {
    format!("fd00:244:{n}::2")
}
/// The node's address on pod N's link: what a pod sees when traffic is masqueraded.
pub fn pod_gw(n: usize) -> String {
    format!("10.244.{n}.1")
}

pub struct Lab {
    pub topo: Topology,
    pub node: Ns,
    /// The node's default router: answers what reaches it with ICMP unreachable.
    pub upstream: Ns,
    pub client: Ns,
    pub pod_client: Ns,
    pub pods: Vec<Ns>,
    pub backend: NftablesBackend,
    pub ctx: NodeContext,
}

impl Lab {
    /// A node, a client, a pod client and `pods` pods named ep1…epN answering on TCP and UDP 8080.
    pub fn new(pods: usize) -> Lab {
        let mut topo = Topology::new();
        let node = topo.netns("node");
        let client = topo.netns("client");
        topo.forwarding(&node);
        topo.veth(&node, "eth0", &client, "eth0");
        topo.addr(&node, "eth0", "10.0.1.1/24");
        topo.addr(&client, "eth0", "10.0.1.2/24");
        topo.addr(&node, "eth0", "fd00:1::1/64");
        topo.addr(&client, "eth0", "fd00:1::2/64");
        topo.route(&client, "default", "10.0.1.1");
        topo.route(&client, "default", "fd00:1::1");
        let upstream = topo.netns("upstream");
        topo.veth(&node, "eth1", &upstream, "eth0");
        topo.addr(&node, "eth1", "10.0.2.1/24");
        topo.addr(&upstream, "eth0", "10.0.2.2/24");
        topo.addr(&node, "eth1", "fd00:2::1/64");
        topo.addr(&upstream, "eth0", "fd00:2::2/64");
        topo.route(&node, "default", "10.0.2.2");
        topo.route(&node, "default", "fd00:2::2");
        upstream.ip(&["-4", "route", "add", "unreachable", "default"]);
        upstream.ip(&["-6", "route", "add", "unreachable", "default"]);
        for ns in [&node, &upstream] {
            topo.unlimited_icmp(ns);
        }
        let mut pod_nss = Vec::new();
        for n in (1..=pods).chain([50]) {
            let role = if n == 50 { "podclient".to_string() } else { format!("ep{n}") };
            let pod = topo.netns(&role);
            let link = format!("pod{n}");
            topo.veth(&node, &link, &pod, "eth0");
            topo.addr(&node, &link, &format!("10.244.{n}.1/24"));
            topo.addr(&pod, "eth0", &format!("10.244.{n}.2/24"));
            topo.addr(&node, &link, &format!("fd00:244:{n}::1/64"));
            topo.addr(&pod, "eth0", &format!("fd00:244:{n}::2/64"));
            topo.route(&pod, "default", &format!("10.244.{n}.1"));
            topo.route(&pod, "default", &format!("fd00:244:{n}::1"));
            if n != 50 {
                topo.responder(&pod, &role, pod_ip(n).parse().unwrap(), &[POD_PORT], &[POD_PORT]);
                topo.responder(&pod, &role, pod_ip6(n).parse().unwrap(), &[POD_PORT], &[POD_PORT]);
                pod_nss.push(pod);
            } else {
                topo.responder(&pod, "podclient", POD_CLIENT_IP.parse().unwrap(), &[POD_PORT], &[POD_PORT]);
                pod_nss.push(pod);
            }
        }
        let pod_client = pod_nss.pop().unwrap();
        let backend = node.run(|| NftablesBackend::new().expect("netlink socket in the node namespace"));
        let ctx = NodeContext {
            node_name: NODE.into(),
            node_ips: vec![NODE_IP.parse().unwrap(), "fd00:1::1".parse().unwrap()],
            zone: None,
            cluster_cidrs: vec!["10.244.0.0/16".parse().unwrap(), "fd00:244::/48".parse().unwrap()],
            masquerade_all: false,
            nodeport_addresses: NodePortAddresses::Primary,
            ..Default::default()
        };
        Lab { topo, node, upstream, client, pod_client, pods: pod_nss, backend, ctx }
    }

    /// Loads manifests (YAML) and syncs the node's tables to them.
    pub fn sync(&mut self, manifests: &str) -> Result<SyncReport, SyncError> {
        let mut l = Loaded::default();
        l.add_text("test", manifests);
        assert!(l.warnings.is_empty(), "test manifests have warnings: {:?}", l.warnings);
        let mut ctx = self.ctx.clone();
        ctx.service_cidrs = l.state.service_cidrs();
        self.backend.sync_cluster(&l.state, &ctx)
    }

    /// Programs the node with the iptables backend instead (kube-proxy's iptables mode), in
    /// iptables-legacy.
    pub fn sync_iptables(&self, manifests: &str) -> Result<(), nftproxy_iptables::IptablesError> {
        self.sync_iptables_in(nftproxy_iptables::Variant::Legacy, manifests)
    }

    /// Programs the node with the iptables backend in one iptables variant.
    pub fn sync_iptables_in(
        &self,
        variant: nftproxy_iptables::Variant,
        manifests: &str,
    ) -> Result<(), nftproxy_iptables::IptablesError> {
        let mut l = Loaded::default();
        l.add_text("test", manifests);
        assert!(l.warnings.is_empty(), "test manifests have warnings: {:?}", l.warnings);
        let opts = self.iptables_options();
        // Child processes inherit the network namespace of the thread that starts them.
        self.node.run(|| {
            for fam in [nftproxy_model::IpFamily::V4, nftproxy_model::IpFamily::V6] {
                let text = nftproxy_iptables::render_cluster(fam, &l.state, &self.ctx, &opts);
                nftproxy_iptables::sync(variant, fam, &text, opts.localhost_nodeports)?;
            }
            Ok(())
        })
    }

    /// kube-proxy's iptables options for this node: localhost NodePorts only when the NodePort
    /// addresses include IPv4 loopback (its `ContainsIPv4Loopback`).
    pub fn iptables_options(&self) -> nftproxy_iptables::Options {
        nftproxy_iptables::Options::default().for_nodeport_addresses(&self.ctx.nodeport_addresses)
    }

    /// `nft list ruleset` in the node namespace.
    pub fn ruleset(&self) -> String {
        self.node.exec("nft", &["list", "ruleset"])
    }

    /// `n` requests from `from` to `to`, each on a new socket.
    pub fn tally(&self, from: &Ns, proto: Proto, to: &str, n: usize) -> Tally {
        let to: SocketAddr = to.parse().unwrap_or_else(|_| panic!("bad address {to}"));
        tally(from, proto, to, None, n, Duration::from_secs(1))
    }
}

/// Parses an address, for assertions.
pub fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}
