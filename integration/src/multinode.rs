//! A multi-node cluster in network namespaces: the real control plane ([`ControlPlane`]) and N
//! node namespaces, each with its pods on a bridge, joined by a routed fabric; an off-cluster
//! client and a "load balancer" namespace on the fabric reach every node. IPv4 only.
//!
//! ```text
//!                      fabric namespace: bridge fab0 (10.0.0.0/24, no address of its own)
//!   gw     10.0.0.1 ───┤ (the nodes' default route; routes nowhere)
//!   client 10.0.0.3 ───┤
//!   lb     10.0.0.2 ───┤
//!   node-k 10.0.0.(10+k) ─ eth0      node-k: cbr0 10.244.k.1/24 ── pods 10.244.k.(10+j)
//!                                     routes 10.244.j.0/24 via 10.0.0.(10+j) for every other j
//!   node-k cp0 10.1.k.2 ── 10.1.k.1 control plane (one link per node)
//! ```
//!
//! The pod bridges are plain Linux bridges as the bridge CNI plugin makes them: pod ports in
//! hairpin mode, and br_netfilter's `bridge-nf-call-iptables` as the kernel leaves it in a new
//! namespace (on where the module is loaded, as kubeadm requires), so Service traffic between
//! pods of one node is NATed on the bridge as in a real cluster.
//!
//! Pods answer on TCP and UDP 8080 with `<pod name> <source address seen>`; a pod is named
//! `nK-pJ`. The fabric only bridges: nothing on it routes anywhere else, and the root namespace
//! holds none of these addresses. Pod CIDRs are reachable from every node (static routes, as a
//! simple CNI would set them) but not from the client or the load balancer, which reach Services
//! through node IPs only. Each node's proxy process is the caller's (see the cluster tests);
//! everything else here is removed when the [`Topology`] drops.

use std::net::IpAddr;

use serde_json::{Value, json};

use crate::control_plane::ControlPlane;
use crate::{Ns, Topology};

/// The port every pod's responders listen on (TCP and UDP), as in the one-node lab.
pub use crate::lab::POD_PORT;
pub const CLIENT_IP: &str = "10.0.0.3";
pub const LB_IP: &str = "10.0.0.2";
/// The nodes' default router (see [`MultiNode::new`]).
pub const GW_IP: &str = "10.0.0.1";
/// The cluster CIDR (every node's pod CIDR is a /24 in it).
pub const CLUSTER_CIDR: &str = "10.244.0.0/16";

/// Node `k`'s name (1-based).
pub fn node_name(k: usize) -> String {
    format!("node-{k}")
}
/// Node `k`'s address on the fabric.
pub fn node_ip(k: usize) -> String {
    format!("10.0.0.{}", 10 + k)
}
/// Pod `j` of node `k` (1-based): its address.
pub fn pod_ip(k: usize, j: usize) -> String {
    format!("10.244.{k}.{}", 10 + j)
}
/// Pod `j` of node `k`: the name its responders answer with.
pub fn pod_name(k: usize, j: usize) -> String {
    format!("n{k}-p{j}")
}
/// Node `k`'s address on its pod bridge: the source a pod sees when its node masquerades.
pub fn node_bridge_ip(k: usize) -> String {
    format!("10.244.{k}.1")
}

pub struct Node {
    pub k: usize,
    pub name: String,
    pub ns: Ns,
    pub pods: Vec<Ns>,
    /// The address of the API server over this node's own link.
    pub api_ip: String,
}

pub struct MultiNode {
    pub topo: Topology,
    pub cp: ControlPlane,
    pub fabric: Ns,
    pub client: Ns,
    pub lb: Ns,
    pub nodes: Vec<Node>,
}

impl MultiNode {
    /// The control plane, `nodes` nodes with `pods` pods each, the fabric, a client and a load
    /// balancer. Nodes are registered in the API (Node objects with address, pod CIDR, hostname
    /// and zone labels: node k is in zone `zone-a` when k is odd, `zone-b` when even).
    pub fn new(nodes: usize, pods: usize) -> MultiNode {
        assert!((1..=200).contains(&nodes) && pods <= 200);
        let mut topo = Topology::new();
        let cp = ControlPlane::start_alone(&mut topo);
        let fabric = topo.netns("fabric");
        topo.bridge(&fabric, "fab0");
        let mut port = 0;
        let mut plug = |topo: &Topology, ns: &Ns, cidr: &str| {
            port += 1;
            let f_if = format!("f{port}");
            topo.veth(&fabric, &f_if, ns, "eth0");
            topo.attach(&fabric, &f_if, "fab0");
            topo.addr(ns, "eth0", cidr);
        };
        let client = topo.netns("client");
        plug(&topo, &client, &format!("{CLIENT_IP}/24"));
        let lb = topo.netns("lb");
        plug(&topo, &lb, &format!("{LB_IP}/24"));
        // The nodes' default router, as real nodes have one: it routes nowhere (an
        // `unreachable` default, forwarding off), so what a node routes un-NATed towards a
        // Service IP reaches its forward hook and then goes nowhere, as in the one-node lab.
        let gw = topo.netns("gw");
        plug(&topo, &gw, &format!("{GW_IP}/24"));
        gw.ip(&["-4", "route", "add", "unreachable", "default"]);
        let mut out = Vec::new();
        for k in 1..=nodes {
            let ns = topo.netns(&format!("n{k}"));
            plug(&topo, &ns, &format!("{}/24", node_ip(k)));
            topo.forwarding(&ns);
            topo.route(&ns, "default", GW_IP);
            topo.unlimited_icmp(&ns);
            topo.bridge(&ns, "cbr0");
            topo.addr(&ns, "cbr0", &format!("{}/24", node_bridge_ip(k)));
            let mut pod_nss = Vec::new();
            for j in 1..=pods {
                let pod = topo.netns(&format!("n{k}p{j}"));
                let link = format!("p{j}");
                topo.veth(&ns, &link, &pod, "eth0");
                topo.attach(&ns, &link, "cbr0");
                // As the bridge CNI plugin with hairpinMode (and kubelet's hairpin-veth): with
                // br_netfilter, a pod's traffic to a Service is DNATed on the bridge, and when
                // it leads back to the pod itself the bridge must send it out the port it came in.
                ns.ip(&["link", "set", "dev", &link, "type", "bridge_slave", "hairpin", "on"]);
                topo.addr(&pod, "eth0", &format!("{}/24", pod_ip(k, j)));
                topo.route(&pod, "default", &node_bridge_ip(k));
                let ip: IpAddr = pod_ip(k, j).parse().unwrap();
                topo.responder(&pod, &pod_name(k, j), ip, &[POD_PORT], &[POD_PORT]);
                pod_nss.push(pod);
            }
            let api_ip = cp.connect(&topo, &ns, k as u8);
            out.push(Node { k, name: node_name(k), ns, pods: pod_nss, api_ip });
        }
        for a in &out {
            for b in out.iter().filter(|b| b.k != a.k) {
                topo.route(&a.ns, &format!("10.244.{}.0/24", b.k), &node_ip(b.k));
            }
        }
        let mn = MultiNode { topo, cp, fabric, client, lb, nodes: out };
        for n in &mn.nodes {
            mn.cp.create(&node_object(n.k));
        }
        mn
    }

    pub fn node(&self, k: usize) -> &Node {
        &self.nodes[k - 1]
    }
}

/// Node `k` as kubelet registers it.
pub fn node_object(k: usize) -> Value {
    let zone = if k % 2 == 1 { "zone-a" } else { "zone-b" };
    json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": node_name(k), "labels": {
            "kubernetes.io/hostname": node_name(k),
            "topology.kubernetes.io/zone": zone,
        }},
        "spec": {"podCIDR": format!("10.244.{k}.0/24"), "podCIDRs": [format!("10.244.{k}.0/24")]},
        "status": {"addresses": [{"type": "InternalIP", "address": node_ip(k)}]}
    })
}

/// A Service `name` in namespace `default` on TCP and UDP port 80 → 8080, with extra spec fields.
pub fn service(name: &str, cluster_ip: &str, spec_extra: Value) -> Value {
    let mut spec = json!({
        "clusterIP": cluster_ip,
        "ports": [
            {"name": "tcp", "port": 80, "protocol": "TCP", "targetPort": POD_PORT},
            {"name": "udp", "port": 80, "protocol": "UDP", "targetPort": POD_PORT}
        ]
    });
    for (k, v) in spec_extra.as_object().unwrap() {
        spec[k] = v.clone();
    }
    json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": "default"}, "spec": spec})
}

/// A NodePort Service (TCP and UDP port 80 → 8080 on `node_port`), externalTrafficPolicy Cluster.
pub fn node_port_service(name: &str, cluster_ip: &str, node_port: u16) -> Value {
    service(
        name,
        cluster_ip,
        json!({"type": "NodePort", "ports": [
            {"name": "tcp", "port": 80, "protocol": "TCP", "targetPort": POD_PORT, "nodePort": node_port},
            {"name": "udp", "port": 80, "protocol": "UDP", "targetPort": POD_PORT, "nodePort": node_port}]}),
    )
}

/// One endpoint of a slice: pod `j` of node `k`, with its conditions and optional zone hint.
#[derive(Clone, Debug)]
pub struct Ep {
    pub k: usize,
    pub j: usize,
    pub ready: bool,
    pub serving: bool,
    pub terminating: bool,
    pub zone_hint: Option<&'static str>,
    /// `hints.forNodes` (PreferSameNode): the endpoint's own node.
    pub node_hint: bool,
}

impl Ep {
    pub fn ready(k: usize, j: usize) -> Ep {
        Ep { k, j, ready: true, serving: true, terminating: false, zone_hint: None, node_hint: false }
    }
    /// Serving but terminating (a pod being deleted that still answers).
    pub fn terminating(k: usize, j: usize) -> Ep {
        Ep { k, j, ready: false, serving: true, terminating: true, zone_hint: None, node_hint: false }
    }
    pub fn hinted(mut self, zone: &'static str) -> Ep {
        self.zone_hint = Some(zone);
        self
    }
    /// Hinted for its own node, as the EndpointSlice controller does for PreferSameNode (which
    /// also sets the zone hint).
    pub fn for_own_node(mut self) -> Ep {
        self.node_hint = true;
        self.zone_hint = Some(if self.k % 2 == 1 { "zone-a" } else { "zone-b" });
        self
    }
}

/// The EndpointSlice `name-1` of Service `name`, stamped with the controller's trigger time.
pub fn slice(name: &str, eps: &[Ep]) -> Value {
    let endpoints: Vec<Value> = eps
        .iter()
        .map(|e| {
            let mut v = json!({
                "addresses": [pod_ip(e.k, e.j)],
                "conditions": {"ready": e.ready, "serving": e.serving, "terminating": e.terminating},
                "nodeName": node_name(e.k),
                "zone": if e.k % 2 == 1 { "zone-a" } else { "zone-b" },
            });
            if let Some(z) = e.zone_hint {
                v["hints"] = json!({"forZones": [{"name": z}]});
            }
            if e.node_hint {
                v["hints"]["forNodes"] = json!([{"name": node_name(e.k)}]);
            }
            v
        })
        .collect();
    json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {
            "name": format!("{name}-1"), "namespace": "default",
            "labels": {"kubernetes.io/service-name": name},
            "annotations": {"endpoints.kubernetes.io/last-change-trigger-time": crate::trigger_time_now()}
        },
        "addressType": "IPv4",
        "endpoints": endpoints,
        "ports": [{"name": "tcp", "port": POD_PORT, "protocol": "TCP"}, {"name": "udp", "port": POD_PORT, "protocol": "UDP"}]
    })
}
