//! Parity: the same cluster (examples/parity.yaml) programmed by the nftables backend and by the
//! iptables-legacy backend (kube-proxy's iptables mode, byte for byte) in identical labs; every
//! flow must give the same observable answer from both — which endpoints answered, which source
//! address they saw, or refused vs dropped — and the answer kube-proxy gives.
//!
//! Deliberate differences between kube-proxy's nftables and iptables modes are separate tests,
//! named after the difference, asserting each backend's own documented behaviour.

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use nftproxy_integration::lab::*;
use nftproxy_integration::{Ns, Outcome, Proto, Tally, tally};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Backend {
    Nftables,
    Iptables,
}

const BACKENDS: [Backend; 2] = [Backend::Nftables, Backend::Iptables];

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
        Backend::Iptables => lab.sync_iptables(&m).unwrap(),
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
            Backend::Iptables => Outcome::Timeout,
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
            Backend::Iptables => {
                lab.node.sysctl("net.ipv4.conf.all.route_localnet", "1");
                lab.sync_iptables(&m).unwrap();
            }
        }
        let t = tally(&lab.node, Proto::Tcp, "127.0.0.1:30080".parse().unwrap(), None, 4, Duration::from_secs(1));
        let answered = t.count(|o| matches!(o, Outcome::Answered { .. }));
        match b {
            Backend::Nftables => assert_eq!(answered, 0, "{b:?}: {t:?}"),
            Backend::Iptables => assert_eq!(answered, 4, "{b:?}: {t:?}"),
        }
        // Both serve the node's own address.
        let t = tally(&lab.client, Proto::Tcp, "10.0.1.1:30080".parse().unwrap(), None, 4, Duration::from_secs(1));
        assert_eq!(t.count(|o| matches!(o, Outcome::Answered { .. })), 4, "{b:?}: {t:?}");
    }
}
