//! Parity: the same cluster (examples/parity.yaml) programmed by the nftables backend and by the
//! iptables backend (kube-proxy's iptables mode, byte for byte) in identical labs, the iptables
//! one in both iptables variants (legacy x_tables and iptables-nft, as kube-proxy runs on nodes
//! of either kind); every
//! flow must give the same observable answer from both — which endpoints answered, which source
//! address they saw, or refused vs dropped — and the answer kube-proxy gives.
//!
//! Deliberate differences between kube-proxy's nftables and iptables modes are separate tests,
//! named after the difference, asserting each backend's own documented behaviour.

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use nftproxy_integration::lab::*;
use nftproxy_iptables::Variant;
use nftproxy_integration::{Ns, Outcome, Proto, Tally, tally};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Backend {
    Nftables,
    Iptables(Variant),
}

const BACKENDS: [Backend; 3] =
    [Backend::Nftables, Backend::Iptables(Variant::Legacy), Backend::Iptables(Variant::Nft)];

fn parity_manifests() -> String {
    std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/parity.yaml")).unwrap()
}

fn lab(b: Backend) -> Lab {
    let mut lab = Lab::new(3);
    let m = parity_manifests();
    match b {
        Backend::Nftables => {
            lab.sync(&m).unwrap();
        }
        Backend::Iptables(v) => lab.sync_iptables_in(v, &m).unwrap(),
    }
    lab
}

#[derive(Clone, Copy, Debug)]
enum Sender {
    Client,
    PodClient,
    Node,
    Pod(usize),
}

/// What the source addresses seen by the endpoints should be.
#[derive(Clone, Copy, Debug)]
enum Source {
    /// The node's address on each answering endpoint's link (masqueraded).
    Masqueraded,
    /// The sender's own address (not masqueraded).
    Kept,
}

#[derive(Clone, Debug)]
enum Expect {
    /// Answered by exactly these endpoints (over all requests), with this kind of source.
    Spread(&'static [&'static str], Source),
    /// Answered by exactly one of these (session affinity pins the client).
    Pinned(&'static [&'static str], Source),
    Refused,
    Dropped,
}

struct Flow {
    name: &'static str,
    from: Sender,
    proto: Proto,
    to: &'static str,
    n: usize,
    expect: Expect,
}

const ALL3: &[&str] = &["ep1", "ep2", "ep3"];

fn flows() -> Vec<Flow> {
    use Expect::*;
    use Sender::*;
    use Source::*;
    let f = |name, from, proto, to, n, expect| Flow { name, from, proto, to, n, expect };
    vec![
        f("ClusterIP TCP, three endpoints", Client, Proto::Tcp, "10.96.1.10:80", 60, Spread(ALL3, Masqueraded)),
        f("ClusterIP UDP, three endpoints", Client, Proto::Udp, "10.96.1.10:53", 60, Spread(ALL3, Masqueraded)),
        f("ClusterIP from a pod keeps its source", PodClient, Proto::Tcp, "10.96.1.10:80", 40, Spread(ALL3, Kept)),
        f("ClusterIP from the node itself", Node, Proto::Udp, "10.96.1.10:53", 40, Spread(ALL3, Kept)),
        f(
            "NodePort from outside the node",
            Client,
            Proto::Tcp,
            "10.0.1.1:30080",
            40,
            Spread(&["ep1", "ep2"], Masqueraded),
        ),
        f("LB IP, ETP=Local, no local endpoint: dropped", Client, Proto::Tcp, "203.0.113.30:80", 2, Dropped),
        f("NodePort, ETP=Local, no local endpoint: dropped", Client, Proto::Tcp, "10.0.1.1:30081", 2, Dropped),
        f(
            "LB IP, ETP=Local, from a pod: short-circuited",
            PodClient,
            Proto::Tcp,
            "203.0.113.30:80",
            10,
            Spread(&["ep1"], Kept),
        ),
        f(
            "ExternalIP, ETP=Local: local endpoint, client IP kept",
            Client,
            Proto::Tcp,
            "198.51.100.40:80",
            20,
            Spread(&["ep1"], Kept),
        ),
        f(
            "ExternalIP, ETP=Local, from a pod: every endpoint",
            PodClient,
            Proto::Tcp,
            "198.51.100.40:80",
            40,
            Spread(&["ep1", "ep2"], Kept),
        ),
        f(
            "LB IP inside loadBalancerSourceRanges (affinity)",
            Client,
            Proto::Tcp,
            "203.0.113.50:80",
            10,
            Pinned(&["ep2", "ep3"], Masqueraded),
        ),
        f("LB IP outside loadBalancerSourceRanges: dropped", PodClient, Proto::Tcp, "203.0.113.50:80", 2, Dropped),
        f(
            "ClientIP affinity on the ClusterIP",
            Client,
            Proto::Tcp,
            "10.96.1.50:80",
            20,
            Pinned(&["ep2", "ep3"], Masqueraded),
        ),
        f(
            "NodePort is not subject to source ranges",
            PodClient,
            Proto::Tcp,
            "10.0.1.1:30082",
            10,
            Pinned(&["ep2", "ep3"], Masqueraded),
        ),
        f("no endpoints: rejected", Client, Proto::Tcp, "10.96.1.60:80", 2, Refused),
        f("ITP=Local, no local endpoint: dropped", PodClient, Proto::Tcp, "10.96.1.70:80", 2, Dropped),
        f(
            "only terminating endpoints: the serving one is used",
            Client,
            Proto::Tcp,
            "10.96.1.80:80",
            10,
            Spread(&["ep3"], Masqueraded),
        ),
        f(
            "IPv6 ClusterIP of a dual-stack service",
            Client,
            Proto::Tcp,
            "[fd00:96::100]:80",
            40,
            Spread(&["ep1", "ep2"], Masqueraded),
        ),
        f("the IPv4 ClusterIP of that service has no IPv4 endpoints", Client, Proto::Tcp, "10.96.1.100:80", 2, Refused),
        f(
            "NodePort, ITP and ETP Local, from a pod: short-circuited to every endpoint",
            PodClient,
            Proto::Tcp,
            "10.0.1.1:30083",
            10,
            Spread(&["ep1"], Kept),
        ),
        f(
            "NodePort, ITP and ETP Local, from the node: short-circuited, masqueraded",
            Node,
            Proto::Tcp,
            "10.0.1.1:30083",
            10,
            Spread(&["ep1"], Masqueraded),
        ),
        f("NodePort, ITP and ETP Local, from outside: dropped", Client, Proto::Tcp, "10.0.1.1:30083", 2, Dropped),
        f("ClusterIP, ITP and ETP Local, no local endpoint: dropped", PodClient, Proto::Tcp, "10.96.1.120:80", 2, Dropped),
        f("ClusterIP written with leading zeros", Client, Proto::Tcp, "10.96.1.130:80", 10, Spread(&["ep2"], Masqueraded)),
        f(
            "LB IP, source inside loadBalancerSourceRanges, no endpoints: rejected",
            Client,
            Proto::Tcp,
            "203.0.113.51:80",
            2,
            Refused,
        ),
        f(
            "hairpin: a pod reaching itself through its service",
            Pod(1),
            Proto::Tcp,
            "10.96.1.110:80",
            5,
            Spread(&["ep1"], Masqueraded),
        ),
    ]
}

fn ns(lab: &Lab, from: Sender) -> Ns {
    match from {
        Sender::Client => lab.client.clone(),
        Sender::PodClient => lab.pod_client.clone(),
        Sender::Node => lab.node.clone(),
        Sender::Pod(n) => lab.pods[n - 1].clone(),
    }
}

/// What a flow looked like from outside.
#[derive(Debug, PartialEq, Eq)]
struct Observed {
    responders: BTreeSet<String>,
    sources: BTreeSet<IpAddr>,
    refused: usize,
    timeout: usize,
}

fn observe(lab: &Lab, flow: &Flow) -> Observed {
    let to: SocketAddr = flow.to.parse().unwrap();
    let t: Tally = tally(&ns(lab, flow.from), flow.proto, to, None, flow.n, Duration::from_secs(1));
    Observed {
        responders: t.by_responder().into_keys().collect(),
        sources: t.seen_sources().into_iter().collect(),
        refused: t.count(|o| *o == Outcome::Refused),
        timeout: t.count(|o| *o == Outcome::Timeout),
    }
}

/// The address a sender in `from` uses towards the lab, for "source kept".
fn sender_ip(from: Sender, v6: bool, responder: &str) -> String {
    let n: usize = responder.trim_start_matches("ep").parse().unwrap();
    match (from, v6) {
        (Sender::Client, false) => CLIENT_IP.into(),
        (Sender::Client, true) => "fd00:1::2".into(),
        (Sender::PodClient, _) => POD_CLIENT_IP.into(),
        (Sender::Pod(p), _) => pod_ip(p),
        // The node talks to a pod from its address on that pod's link.
        (Sender::Node, false) => pod_gw(n),
        (Sender::Node, true) => format!("fd00:244:{n}::1"),
    }
}

fn check(flow: &Flow, o: &Observed, b: Backend) {
    let v6 = flow.to.starts_with('[');
    let sources_for = |eps: &BTreeSet<String>, kind: Source| -> BTreeSet<IpAddr> {
        eps.iter()
            .map(|e| {
                let n: usize = e.trim_start_matches("ep").parse().unwrap();
                let s = match (kind, v6) {
                    (Source::Masqueraded, false) => pod_gw(n),
                    (Source::Masqueraded, true) => format!("fd00:244:{n}::1"),
                    (Source::Kept, _) => sender_ip(flow.from, v6, e),
                };
                s.parse().unwrap()
            })
            .collect()
    };
    let ctx = format!("{b:?}, {}: {o:?}", flow.name);
    match &flow.expect {
        Expect::Spread(eps, kind) => {
            let want: BTreeSet<String> = eps.iter().map(|s| s.to_string()).collect();
            assert_eq!(o.responders, want, "{ctx}");
            assert_eq!((o.refused, o.timeout), (0, 0), "{ctx}");
            assert_eq!(o.sources, sources_for(&want, *kind), "{ctx}");
        }
        Expect::Pinned(eps, kind) => {
            assert_eq!(o.responders.len(), 1, "{ctx}");
            assert!(eps.contains(&o.responders.iter().next().unwrap().as_str()), "{ctx}");
            assert_eq!((o.refused, o.timeout), (0, 0), "{ctx}");
            assert_eq!(o.sources, sources_for(&o.responders, *kind), "{ctx}");
        }
        Expect::Refused => assert_eq!((o.responders.len(), o.refused), (0, flow.n), "{ctx}"),
        Expect::Dropped => assert_eq!((o.responders.len(), o.timeout), (0, flow.n), "{ctx}"),
    }
}

#[test]
fn every_flow_gets_the_same_answer_from_both_backends() {
    let labs: Vec<(Backend, Lab)> = BACKENDS.iter().map(|b| (*b, lab(*b))).collect();
    let mut report = Vec::new();
    for flow in flows() {
        let observed: Vec<Observed> = labs
            .iter()
            .map(|(b, lab)| {
                let o = observe(lab, &flow);
                check(&flow, &o, *b);
                o
            })
            .collect();
        // Pinned flows may pin to different endpoints in the two labs: both are right.
        if !matches!(flow.expect, Expect::Pinned(..)) {
            assert_eq!(observed[0], observed[1], "{}: nftables vs iptables", flow.name);
        }
        report.push(flow.name);
    }
    eprintln!("parity: {} flows identical on nftables and iptables: {report:#?}", report.len());
}

#[test]
fn sctp_reaches_the_same_endpoints_masqueraded_on_both_backends() {
    use nftproxy_integration::sctp::send_inits;
    let mut seen_by_backend = Vec::new();
    for b in BACKENDS {
        let mut lab = lab(b);
        let pods = lab.pods.clone();
        let sniffers: Vec<_> =
            pods.iter().enumerate().map(|(i, ns)| lab.topo.sctp_sniffer(ns, &format!("ep{}", i + 1))).collect();
        send_inits(&lab.client, "10.96.1.90:80".parse().unwrap(), 31000..31060);
        std::thread::sleep(Duration::from_millis(300));
        let mut seen = BTreeSet::new();
        let mut total = 0;
        for s in &sniffers {
            for p in s.lock().unwrap().iter() {
                let n: usize = p.endpoint.trim_start_matches("ep").parse().unwrap();
                assert_eq!((p.dst, p.dport), (ip(&pod_ip(n)), 8080), "{b:?}");
                seen.insert((p.endpoint.clone(), p.src));
                total += 1;
            }
        }
        assert_eq!(total, 60, "{b:?}");
        seen_by_backend.push(seen);
    }
    let want: BTreeSet<(String, IpAddr)> = (1..=3).map(|n| (format!("ep{n}"), ip(&pod_gw(n)))).collect();
    assert_eq!(seen_by_backend[0], want);
    assert_eq!(seen_by_backend[1], want);
}

/// Difference: kube-proxy's nftables mode rejects traffic to a ClusterIP on a port the Service
/// does not have; its iptables mode does not match it at all, so the packet is routed on. With an
/// upstream that silently drops, the client sees a reject from one and a timeout from the other.
#[test]
fn difference_unused_cluster_ip_ports_are_rejected_by_nftables_only() {
    for b in BACKENDS {
        let lab = lab(b);
        lab.upstream.ip(&["-4", "route", "replace", "blackhole", "default"]);
        let t = tally(&lab.client, Proto::Tcp, "10.96.1.10:81".parse().unwrap(), None, 2, Duration::from_secs(1));
        let want = match b {
            Backend::Nftables => Outcome::Refused,
            Backend::Iptables(_) => Outcome::Timeout,
        };
        assert_eq!(t.count(|o| *o == want), 2, "{b:?}: {t:?}");
    }
}

/// Difference: kube-proxy's iptables mode serves NodePorts on 127.0.0.1 (with route_localnet,
/// which it sets); its nftables mode, and ours, never do.
#[test]
fn difference_localhost_node_ports_exist_in_iptables_mode_only() {
    for b in BACKENDS {
        let mut lab = Lab::new(3);
        lab.ctx.nodeport_addresses = nftproxy_model::NodePortAddresses::All;
        let m = parity_manifests();
        match b {
            Backend::Nftables => {
                lab.sync(&m).unwrap();
            }
            Backend::Iptables(v) => {
                lab.node.sysctl("net.ipv4.conf.all.route_localnet", "1");
                lab.sync_iptables_in(v, &m).unwrap();
            }
        }
        let t = tally(&lab.node, Proto::Tcp, "127.0.0.1:30080".parse().unwrap(), None, 4, Duration::from_secs(1));
        let answered = t.count(|o| matches!(o, Outcome::Answered { .. }));
        match b {
            Backend::Nftables => assert_eq!(answered, 0, "{b:?}: {t:?}"),
            Backend::Iptables(_) => assert_eq!(answered, 4, "{b:?}: {t:?}"),
        }
        // Both serve the node's own address.
        let t = tally(&lab.client, Proto::Tcp, "10.0.1.1:30080".parse().unwrap(), None, 4, Duration::from_secs(1));
        assert_eq!(t.count(|o| matches!(o, Outcome::Answered { .. })), 4, "{b:?}: {t:?}");
    }
}

/// Difference: kube-proxy's nftables mode checks loadBalancerSourceRanges before anything else,
/// so a source outside them is dropped even when the Service has no endpoints; its iptables mode
/// only sends traffic through KUBE-FW- when there are endpoints, so the same packet is rejected.
#[test]
fn difference_source_ranges_without_endpoints_drop_in_nftables_mode_reject_in_iptables_mode() {
    for b in BACKENDS {
        let lab = lab(b);
        let t = tally(&lab.pod_client, Proto::Tcp, "203.0.113.51:80".parse().unwrap(), None, 2, Duration::from_secs(1));
        let want = match b {
            Backend::Nftables => Outcome::Timeout,
            Backend::Iptables(_) => Outcome::Refused,
        };
        assert_eq!(t.count(|o| *o == want), 2, "{b:?}: {t:?}");
    }
}

/// Difference: kube-proxy's nftables mode drops traffic to an address of a ServiceCIDR that no
/// Service holds (`cluster-ips-check`); its iptables mode does not know ServiceCIDRs, so the
/// packet is routed on un-NATed. Here the upstream owns those addresses, so what is routed on is
/// answered there (a TCP reset: refused) and what the node drops times out.
#[test]
fn difference_unallocated_cluster_ips_are_dropped_by_nftables_mode_only() {
    for b in BACKENDS {
        let lab = lab(b);
        for net in ["10.96.0.0/16", "10.97.0.0/16", "fd00:96::/112"] {
            lab.upstream.ip(&["route", "add", "local", net, "dev", "lo"]);
        }
        lab.upstream.ip(&["route", "add", "10.0.1.0/24", "via", "10.0.2.1"]);
        lab.upstream.ip(&["route", "add", "fd00:1::/64", "via", "fd00:2::1"]);
        for to in ["10.96.7.7:80", "[fd00:96::7]:80"] {
            let t = tally(&lab.client, Proto::Tcp, to.parse().unwrap(), None, 2, Duration::from_secs(1));
            let want = match b {
                Backend::Nftables => Outcome::Timeout,
                Backend::Iptables(_) => Outcome::Refused,
            };
            assert_eq!(t.count(|o| *o == want), 2, "{b:?} {to}: {t:?}");
        }
        // Outside the Service CIDRs nothing changes: routed on, refused upstream.
        let t = tally(&lab.client, Proto::Tcp, "10.97.0.1:80".parse().unwrap(), None, 2, Duration::from_secs(1));
        assert_eq!(t.count(|o| *o == Outcome::Refused), 2, "{b:?}: {t:?}");
    }
}

/// kube-proxy's `--detect-local-mode`: which traffic counts as coming from a pod (not
/// masqueraded to ClusterIPs; short-circuited to every endpoint on an ETP=Local frontend). The
/// lab's pods arrive on the node's links pod1, pod2, …, the pod client on pod50 (10.244.50.2).
#[test]
fn local_traffic_detection_modes_agree_on_both_backends() {
    use nftproxy_model::DetectLocalMode;
    use Expect::*;
    use Sender::*;
    use Source::*;
    let f = |name, from, to, n, expect| Flow { name, from, proto: Proto::Tcp, to, n, expect };
    let modes: Vec<(DetectLocalMode, Vec<ipnet::IpNet>, bool)> = vec![
        // (mode, this node's pod CIDRs, is pod2 local?)
        (DetectLocalMode::NodeCidr, vec!["10.244.50.0/24".parse().unwrap()], false),
        (DetectLocalMode::BridgeInterface("pod50".into()), vec![], false),
        (DetectLocalMode::InterfaceNamePrefix("pod".into()), vec![], true),
    ];
    for (mode, pod_cidrs, pod2_local) in modes {
        for b in BACKENDS {
            let mut lab = Lab::new(3);
            lab.ctx.detect_local = mode.clone();
            lab.ctx.pod_cidrs = pod_cidrs.clone();
            let m = parity_manifests();
            match b {
                Backend::Nftables => {
                    lab.sync(&m).unwrap();
                }
                Backend::Iptables(v) => lab.sync_iptables_in(v, &m).unwrap(),
            }
            let flows = [
                f("pod client to a ClusterIP: kept", PodClient, "10.96.1.10:80", 30, Spread(ALL3, Kept)),
                f("off-cluster client to a ClusterIP: masqueraded", Client, "10.96.1.10:80", 30, Spread(ALL3, Masqueraded)),
                f("pod client to an ETP=Local LB IP: short-circuit", PodClient, "203.0.113.30:80", 10, Spread(&["ep1"], Kept)),
                if pod2_local {
                    f("pod 2 to an ETP=Local LB IP: short-circuit", Pod(2), "203.0.113.30:80", 10, Spread(&["ep1"], Kept))
                } else {
                    f("pod 2 to an ETP=Local LB IP: not local, dropped", Pod(2), "203.0.113.30:80", 2, Dropped)
                },
            ];
            for flow in &flows {
                let o = observe(&lab, flow);
                check(flow, &o, b);
            }
            eprintln!("local detection {mode:?} on {b:?}: {} flows as kube-proxy", flows.len());
        }
    }
}

/// A dual-stack NodePort Service for the NodePort-address test (IPv6 endpoint: ep1).
const NODEPORT6: &str = r#"
---
apiVersion: v1
kind: Service
metadata: {name: np6, namespace: parity}
spec:
  type: NodePort
  clusterIP: 10.96.1.150
  clusterIPs: [10.96.1.150, "fd00:96::150"]
  ipFamilies: [IPv4, IPv6]
  ports: [{name: http, port: 80, protocol: TCP, targetPort: 8080, nodePort: 30090}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: np6-v6, namespace: parity, labels: {kubernetes.io/service-name: np6}}
addressType: IPv6
ports: [{name: http, port: 8080, protocol: TCP}]
endpoints:
- {addresses: ["fd00:244:1::2"], nodeName: node-b, conditions: {ready: true}}
"#;

/// `--nodeport-addresses CIDR,…` takes the node's *interface* addresses inside the CIDRs
/// (kube-proxy's GetNodeIPs), not only its node IP: a secondary address of the node (IPv4 and
/// IPv6) serves NodePorts when a CIDR holds it, and is left to the node's own stack when none
/// does.
#[test]
fn nodeport_cidrs_select_the_nodes_interface_addresses_on_both_backends() {
    let cases = [
        (vec!["10.0.1.0/24", "10.0.3.0/24", "fd00:1::/64", "fd00:3::/64"], true),
        (vec!["10.0.1.0/24", "fd00:1::/64"], false),
    ];
    for b in BACKENDS {
        for (cidrs, secondary_proxied) in &cases {
            let mut lab = Lab::new(3);
            lab.topo.addr(&lab.node, "eth0", "10.0.3.1/24");
            lab.topo.addr(&lab.node, "eth0", "fd00:3::1/64");
            lab.client.ip(&["route", "add", "10.0.3.0/24", "via", "10.0.1.1"]);
            lab.client.ip(&["-6", "route", "add", "fd00:3::/64", "via", "fd00:1::1"]);
            lab.ctx.local_addresses = Some(lab.node.run(|| nftproxy_nftables::addrs::interface_addresses().unwrap()));
            for a in ["10.0.3.1", "fd00:3::1"] {
                assert!(lab.ctx.local_addresses.as_ref().unwrap().contains(&ip(a)), "{a} read over rtnetlink");
            }
            lab.ctx.nodeport_addresses =
                nftproxy_model::NodePortAddresses::Cidrs(cidrs.iter().map(|c| c.parse().unwrap()).collect());
            let m = parity_manifests() + NODEPORT6;
            match b {
                Backend::Nftables => {
                    lab.sync(&m).unwrap();
                }
                Backend::Iptables(v) => lab.sync_iptables_in(v, &m).unwrap(),
            }
            let flow = |to: &str, eps: &'static [&'static str]| Flow {
                name: "NodePort",
                from: Sender::Client,
                proto: Proto::Tcp,
                to: Box::leak(to.to_string().into_boxed_str()),
                n: 20,
                expect: Expect::Spread(eps, Source::Masqueraded),
            };
            for (primary, secondary, eps) in [
                ("10.0.1.1:30080", "10.0.3.1:30080", &["ep1", "ep2"][..]),
                ("[fd00:1::1]:30090", "[fd00:3::1]:30090", &["ep1"][..]),
            ] {
                let eps: &'static [&'static str] = Box::leak(eps.to_vec().into_boxed_slice());
                let p = flow(primary, eps);
                check(&p, &observe(&lab, &p), b);
                let s = flow(secondary, eps);
                let o = observe(&lab, &s);
                if *secondary_proxied {
                    check(&s, &o, b);
                } else {
                    // Nothing listens on the node itself: its own stack resets the connection.
                    assert_eq!((o.responders.len(), o.refused), (0, 20), "{b:?} {secondary} {cidrs:?}: {o:?}");
                }
            }
        }
    }
}

/// kube-proxy's `allowFromNode`: when a source range holds the (primary) node IP, the LB IPs
/// themselves are allowed sources too — a node that has the VIP bound locally reaches it with the
/// VIP as source address. parity/fw's range 10.0.1.0/30 holds the node IP 10.0.1.1.
#[test]
fn lb_ip_from_the_node_with_the_vip_as_source_passes_the_source_ranges_on_both_backends() {
    for b in BACKENDS {
        let lab = lab(b);
        lab.node.ip(&["addr", "add", "203.0.113.50/32", "dev", "lo"]);
        let vip: IpAddr = ip("203.0.113.50");
        let t = tally(&lab.node, Proto::Tcp, "203.0.113.50:80".parse().unwrap(), Some(vip), 5, Duration::from_secs(1));
        assert_eq!(t.count(|o| matches!(o, Outcome::Answered { .. })), 5, "{b:?}: {t:?}");
        // Any other address of the node outside the ranges is still dropped.
        let t = tally(
            &lab.node,
            Proto::Tcp,
            "203.0.113.50:80".parse().unwrap(),
            Some(ip("10.244.50.1")),
            2,
            Duration::from_secs(1),
        );
        // (A bound source makes the timed-out connect show as "in progress": no answer either way.)
        assert_eq!(t.count(|o| matches!(o, Outcome::Answered { .. } | Outcome::Refused)), 0, "{b:?}: {t:?}");
    }
}
