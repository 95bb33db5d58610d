//! The restore text, line for line as kube-proxy's iptables proxier (v1.34 era, `syncProxyRules`)
//! writes it for a full sync. Facts re-implemented, not code copied: same chain names (sha256 +
//! base32 hashes), comments and quoting, argument order, `%0.10f` probabilities, `recent`-module
//! affinity, mark-based masquerade. Services are emitted sorted by name: kube-proxy walks a Go
//! map, so its service order is unspecified (its own tests sort before comparing).

use std::collections::BTreeSet;
use std::fmt::Write;
use std::net::IpAddr;

use data_encoding::BASE32;
use nftproxy_model::{
    ClusterState, IpFamily, LocalTraffic, NodeContext, NodePortIps, ResolvedEndpoint, ResolvedServicePort, resolve,
};
use sha2::{Digest, Sha256};

/// Options that change kube-proxy's output; defaults are kube-proxy's on a current system.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Options {
    /// `--iptables-masquerade-bit` (14): the mark is `1 << bit`.
    pub masquerade_bit: u8,
    /// `iptables` ≥ 1.6.2 supports `--random-fully` (kube-proxy checks; true on current systems).
    pub random_fully: bool,
    /// `--iptables-localhost-nodeports` (true): IPv4 NodePorts also on 127.0.0.1, guarded by the
    /// `KUBE-FIREWALL` rule kubelet also writes. Needs `route_localnet`, which we never set, so
    /// they do not actually work through our `sync`; the text is kube-proxy's either way.
    pub localhost_nodeports: bool,
    /// nfacct counters present (kube-proxy creates them when the kernel has nfacct); adds
    /// `-m nfacct` matches. False by default: we do not create the counters.
    pub nfacct: bool,
    /// `--conntrack-tcp-be-liberal` (false): when false, INVALID packets are dropped in KUBE-FORWARD.
    pub conntrack_tcp_be_liberal: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            masquerade_bit: 14,
            random_fully: true,
            localhost_nodeports: true,
            nfacct: false,
            conntrack_tcp_be_liberal: false,
        }
    }
}

impl Options {
    /// kube-proxy's iptables NewProxier: localhost NodePorts only when the NodePort addresses
    /// hold an IPv4 loopback address (`ContainsIPv4Loopback`).
    pub fn for_nodeport_addresses(mut self, addresses: &nftproxy_model::NodePortAddresses) -> Options {
        self.localhost_nodeports &= addresses.contains_ipv4_loopback();
        self
    }
}

/// kube-proxy switches to "large cluster mode" above this many endpoints: endpoint comments go.
pub const LARGE_CLUSTER_ENDPOINTS: usize = 1000;

const KUBE_SERVICES: &str = "KUBE-SERVICES";
const KUBE_EXTERNAL_SERVICES: &str = "KUBE-EXTERNAL-SERVICES";
const KUBE_FORWARD: &str = "KUBE-FORWARD";
const KUBE_NODEPORTS: &str = "KUBE-NODEPORTS";
const KUBE_PROXY_FIREWALL: &str = "KUBE-PROXY-FIREWALL";
const KUBE_FIREWALL: &str = "KUBE-FIREWALL";
const KUBE_POSTROUTING: &str = "KUBE-POSTROUTING";
const KUBE_MARK_MASQ: &str = "KUBE-MARK-MASQ";

/// The first 16 characters of base32(sha256(s)), kube-proxy's `portProtoHash`.
pub fn hash16(s: &str) -> String {
    BASE32.encode(&Sha256::digest(s.as_bytes()))[..16].to_string()
}

/// `KUBE-SVC-…` etc.: prefix + hash of `ns/svc:port` + protocol.
pub fn service_chain(prefix: &str, p: &ResolvedServicePort) -> String {
    format!("{prefix}{}", hash16(&format!("{}{}", p.name, p.protocol.lower())))
}

/// `KUBE-SEP-…`: hash of `ns/svc:port` + protocol + `ip:port`.
pub fn endpoint_chain(p: &ResolvedServicePort, e: &ResolvedEndpoint) -> String {
    format!("KUBE-SEP-{}", hash16(&format!("{}{}{e}", p.name, p.protocol.lower())))
}

/// kube-proxy's probability text: 1/n with ten decimals.
pub fn probability(n: usize) -> String {
    format!("{:.10}", 1.0 / n as f64)
}

/// kube-proxy's most common rule: traffic to `ip:port` of a protocol, with a comment, goes to
/// `target`.
fn dest_rule(lines: &mut Lines, chain: &str, comment: &str, proto: &str, ip: &str, port: &str, target: &str) {
    lines.commented(chain, comment, &["-m", proto, "-p", proto, "-d", ip, "--dport", port, "-j", target]);
}

/// One line buffer (kube-proxy's LineBuffer): words joined by spaces.
#[derive(Default)]
struct Lines(String);

impl Lines {
    fn write(&mut self, words: &[&str]) {
        self.0.push_str(&words.join(" "));
        self.0.push('\n');
    }
    /// `-A chain -m comment --comment comment rest…`: how kube-proxy starts most rules.
    fn commented(&mut self, chain: &str, comment: &str, rest: &[&str]) {
        let mut words = vec!["-A", chain, "-m", "comment", "--comment", comment];
        words.extend_from_slice(rest);
        self.write(&words);
    }
    fn chain(&mut self, name: &str) {
        let _ = writeln!(self.0, ":{name} - [0:0]");
    }
}

/// A comment kube-proxy writes pre-quoted: `"…"`.
fn q(s: String) -> String {
    format!("\"{s}\"")
}

/// The restore text for one family of a whole cluster, resolved for this node.
pub fn render_cluster(family: IpFamily, state: &ClusterState, ctx: &NodeContext, opts: &Options) -> String {
    render(family, &resolve(state, ctx, family), ctx, opts)
}

/// The restore text for one family (`iptables-restore` or `ip6tables-restore` input).
pub fn render(family: IpFamily, ports: &[ResolvedServicePort], ctx: &NodeContext, opts: &Options) -> String {
    let mark = format!("{:#x}", 1u32 << opts.masquerade_bit);
    let mark_mask = format!("{mark}/{mark}");
    let v6 = family == IpFamily::V6;
    let (mut filter_chains, mut filter_rules, mut nat_chains, mut nat_rules) =
        (Lines::default(), Lines::default(), Lines::default(), Lines::default());
    for c in [KUBE_SERVICES, KUBE_EXTERNAL_SERVICES, KUBE_FORWARD, KUBE_NODEPORTS, KUBE_PROXY_FIREWALL] {
        filter_chains.chain(c);
    }
    for c in [KUBE_SERVICES, KUBE_NODEPORTS, KUBE_POSTROUTING, KUBE_MARK_MASQ] {
        nat_chains.chain(c);
    }
    nat_rules.write(&["-A", KUBE_POSTROUTING, "-m", "mark", "!", "--mark", &mark_mask, "-j", "RETURN"]);
    nat_rules.write(&["-A", KUBE_POSTROUTING, "-j", "MARK", "--xor-mark", &mark]);
    let mut masq = vec![
        "-A",
        KUBE_POSTROUTING,
        "-m",
        "comment",
        "--comment",
        "\"kubernetes service traffic requiring SNAT\"",
        "-j",
        "MASQUERADE",
    ];
    if opts.random_fully {
        masq.push("--random-fully");
    }
    nat_rules.write(&masq);
    nat_rules.write(&["-A", KUBE_MARK_MASQ, "-j", "MARK", "--or-mark", &mark]);
    if !v6 && opts.localhost_nodeports {
        filter_chains.chain(KUBE_FIREWALL);
        filter_rules.commented(
            KUBE_FIREWALL,
            "\"block incoming localnet connections\"",
            &[
                "-d",
                "127.0.0.0/8",
                "!",
                "-s",
                "127.0.0.0/8",
                "-m",
                "conntrack",
                "!",
                "--ctstate",
                "RELATED,ESTABLISHED,DNAT",
                "-j",
                "DROP",
            ],
        );
    }

    let mut ports: Vec<&ResolvedServicePort> = ports.iter().filter(|p| p.family == family).collect();
    ports.sort_by_key(|p| (p.name.to_string(), p.protocol));
    let total_endpoints: usize = ports.iter().map(|p| all_endpoints(p).len()).sum();
    let large = total_endpoints > LARGE_CLUSTER_ENDPOINTS;
    // kube-proxy's local-traffic detector (one per family).
    let local = LocalArgs::new(&ctx.local_traffic(family));

    for p in &ports {
        ServicePortRules { p, opts, large, local: local.as_ref(), ctx }.write(
            &mut filter_rules,
            &mut nat_chains,
            &mut nat_rules,
        );
    }

    // The NodePort dispatch, last in KUBE-SERVICES.
    let np_comment = "\"kubernetes service nodeports; NOTE: this must be the last rule in this chain\"";
    match ctx.nodeport_ips(family) {
        NodePortIps::AnyLocal => {
            let mut r = vec![
                "-A",
                KUBE_SERVICES,
                "-m",
                "comment",
                "--comment",
                np_comment,
                "-m",
                "addrtype",
                "--dst-type",
                "LOCAL",
            ];
            if v6 {
                r.extend(["!", "-d", "::1/128"]);
            } else if !opts.localhost_nodeports {
                r.extend(["!", "-d", "127.0.0.0/8"]);
            }
            r.extend(["-j", KUBE_NODEPORTS]);
            nat_rules.write(&r);
        }
        NodePortIps::Ips(ips) => {
            // kube-proxy skips loopback addresses that cannot take NodePorts (IPv6 never; IPv4
            // only with localhost NodePorts).
            let ips: Vec<IpAddr> =
                ips.into_iter().filter(|ip| !ip.is_loopback() || (!v6 && opts.localhost_nodeports)).collect();
            for ip in ips {
                let ip = ip.to_string();
                nat_rules.commented(KUBE_SERVICES, np_comment, &["-d", &ip, "-j", KUBE_NODEPORTS]);
            }
        }
    }

    if !opts.conntrack_tcp_be_liberal {
        let mut r = vec!["-A", KUBE_FORWARD, "-m", "conntrack", "--ctstate", "INVALID"];
        if opts.nfacct {
            r.extend(["-m", "nfacct", "--nfacct-name", "ct_state_invalid_dropped_pkts"]);
        }
        r.extend(["-j", "DROP"]);
        filter_rules.write(&r);
    }
    filter_rules.commented(
        KUBE_FORWARD,
        "\"kubernetes forwarding rules\"",
        &["-m", "mark", "--mark", &mark_mask, "-j", "ACCEPT"],
    );
    filter_rules.commented(
        KUBE_FORWARD,
        "\"kubernetes forwarding conntrack rule\"",
        &["-m", "conntrack", "--ctstate", "RELATED,ESTABLISHED", "-j", "ACCEPT"],
    );

    format!("*filter\n{}{}COMMIT\n*nat\n{}{}COMMIT\n", filter_chains.0, filter_rules.0, nat_chains.0, nat_rules.0)
}

/// kube-proxy's `allLocallyReachableEndpoints`: cluster and local endpoints as the policies use
/// them (kube-proxy builds the union through a Go map; sorted here).
fn all_endpoints(p: &ResolvedServicePort) -> Vec<ResolvedEndpoint> {
    let (uses_cluster, uses_local) = uses(p);
    let mut set: BTreeSet<(String, ResolvedEndpoint)> = BTreeSet::new();
    if uses_cluster {
        set.extend(p.cluster_endpoints.iter().map(|e| (e.to_string(), e.clone())));
    }
    if uses_local {
        set.extend(p.local_endpoints.iter().map(|e| (e.to_string(), e.clone())));
    }
    set.into_iter().map(|(_, e)| e).collect()
}

/// (UsesClusterEndpoints, UsesLocalEndpoints)
fn uses(p: &ResolvedServicePort) -> (bool, bool) {
    (
        ResolvedServicePort::uses_cluster_endpoints(p.internal_policy_local, p.external.is_some()),
        ResolvedServicePort::uses_local_endpoints(p.internal_policy_local, p.external_policy_local),
    )
}

/// kube-proxy's local-traffic detector as iptables arguments (`IfLocal` / `IfNotLocal`).
struct LocalArgs {
    if_local: Vec<String>,
    if_not_local: Vec<String>,
}

impl LocalArgs {
    fn new(lt: &LocalTraffic) -> Option<LocalArgs> {
        let (flag, value) = match lt {
            LocalTraffic::Unknown => return None,
            LocalTraffic::Cidr(n) => ("-s", n.to_string()),
            LocalTraffic::Interface(i) => ("-i", i.clone()),
            LocalTraffic::InterfacePrefix(p) => ("-i", format!("{p}+")),
        };
        Some(LocalArgs {
            if_local: vec![flag.to_string(), value.clone()],
            if_not_local: vec!["!".to_string(), flag.to_string(), value],
        })
    }
}

struct ServicePortRules<'a> {
    p: &'a ResolvedServicePort,
    opts: &'a Options,
    large: bool,
    local: Option<&'a LocalArgs>,
    ctx: &'a NodeContext,
}

impl ServicePortRules<'_> {
    fn write(&self, filter_rules: &mut Lines, nat_chains: &mut Lines, nat_rules: &mut Lines) {
        let p = self.p;
        let proto = p.protocol.lower();
        let name = p.name.to_string();
        let port = p.port.to_string();
        let cip = p.cluster_ip.to_string();
        let (uses_cluster, uses_local) = uses(p);
        let cluster_chain = service_chain("KUBE-SVC-", p);
        let local_chain = service_chain("KUBE-SVL-", p);
        let ext_chain = service_chain("KUBE-EXT-", p);
        let fw_chain = service_chain("KUBE-FW-", p);
        let has_endpoints = p.has_any_endpoints;
        let uses_cluster_chain = !p.cluster_endpoints.is_empty() && uses_cluster;
        let uses_local_chain = !p.local_endpoints.is_empty() && uses_local;
        let (internal_chain, has_internal) = if p.internal_policy_local {
            (&local_chain, has_endpoints && !p.local_endpoints.is_empty())
        } else {
            (&cluster_chain, has_endpoints)
        };
        let (external_policy_chain, has_external) = if p.external_policy_local {
            (&local_chain, has_endpoints && !p.local_endpoints.is_empty())
        } else {
            (&cluster_chain, has_endpoints)
        };
        let accessible = p.external.is_some();
        let uses_ext_chain = has_endpoints && accessible;
        let uses_fw = has_endpoints && !p.load_balancer_ips.is_empty() && !p.load_balancer_source_ranges.is_empty();
        let lb_chain = if uses_fw { &fw_chain } else { &ext_chain };

        let (int_target, int_comment, ext_target, ext_comment) = if !has_endpoints {
            let c = q(format!("{name} has no endpoints"));
            ("REJECT", c.clone(), "REJECT", c)
        } else {
            let nl = q(format!("{name} has no local endpoints"));
            (
                if has_internal { "" } else { "DROP" },
                if has_internal { String::new() } else { nl.clone() },
                if has_external { "" } else { "DROP" },
                if has_external { String::new() } else { nl },
            )
        };

        let cluster_ip_comment = q(format!("{name} cluster IP"));
        if has_internal {
            dest_rule(nat_rules, KUBE_SERVICES, &cluster_ip_comment, proto, &cip, &port, internal_chain);
        } else {
            dest_rule(filter_rules, KUBE_SERVICES, &int_comment, proto, &cip, &port, int_target);
        }

        let ext_ip_comment = q(format!("{name} external IP"));
        for ip in &p.external_ips {
            let ip = ip.to_string();
            if has_endpoints {
                dest_rule(nat_rules, KUBE_SERVICES, &ext_ip_comment, proto, &ip, &port, &ext_chain);
            }
            if !has_external {
                dest_rule(filter_rules, KUBE_EXTERNAL_SERVICES, &ext_comment, proto, &ip, &port, ext_target);
            }
        }

        let lb_comment = q(format!("{name} loadbalancer IP"));
        let fw_drop_comment = q(format!("{name} traffic not accepted by {fw_chain}"));
        for ip in &p.load_balancer_ips {
            let ip = ip.to_string();
            if has_endpoints {
                dest_rule(nat_rules, KUBE_SERVICES, &lb_comment, proto, &ip, &port, lb_chain);
            }
            if uses_fw {
                dest_rule(filter_rules, KUBE_PROXY_FIREWALL, &fw_drop_comment, proto, &ip, &port, "DROP");
            }
        }
        if !has_external {
            for ip in &p.load_balancer_ips {
                let ip = ip.to_string();
                dest_rule(filter_rules, KUBE_EXTERNAL_SERVICES, &ext_comment, proto, &ip, &port, ext_target);
            }
        }

        if let Some(np) = p.node_port {
            let np = np.to_string();
            if has_endpoints {
                if self.opts.localhost_nodeports && p.family == IpFamily::V4 && self.opts.nfacct {
                    nat_rules.commented(
                        KUBE_NODEPORTS,
                        &name,
                        &[
                            "-m",
                            proto,
                            "-p",
                            proto,
                            "-d",
                            "127.0.0.0/8",
                            "--dport",
                            &np,
                            "-m",
                            "nfacct",
                            "--nfacct-name",
                            "localhost_nps_accepted_pkts",
                            "-j",
                            &ext_chain,
                        ],
                    );
                }
                nat_rules.commented(
                    KUBE_NODEPORTS,
                    &name,
                    &["-m", proto, "-p", proto, "--dport", &np, "-j", &ext_chain],
                );
            }
            if !has_external {
                filter_rules.commented(
                    KUBE_EXTERNAL_SERVICES,
                    &ext_comment,
                    &[
                        "-m",
                        "addrtype",
                        "--dst-type",
                        "LOCAL",
                        "-m",
                        proto,
                        "-p",
                        proto,
                        "--dport",
                        &np,
                        "-j",
                        ext_target,
                    ],
                );
            }
        }

        if let Some(hc) = p.health_check_node_port {
            let hc = hc.to_string();
            let c = q(format!("{name} health check node port"));
            filter_rules.commented(KUBE_NODEPORTS, &c, &["-m", "tcp", "-p", "tcp", "--dport", &hc, "-j", "ACCEPT"]);
        }

        if has_internal {
            let args = [
                "-m",
                "comment",
                "--comment",
                &cluster_ip_comment,
                "-m",
                proto,
                "-p",
                proto,
                "-d",
                &cip,
                "--dport",
                &port,
            ];
            if self.ctx.masquerade_all {
                let mut r = vec!["-A", internal_chain.as_str()];
                r.extend(args);
                r.extend(["-j", KUBE_MARK_MASQ]);
                nat_rules.write(&r);
            } else if let Some(local) = self.local {
                let mut r = vec!["-A", internal_chain.as_str()];
                r.extend(args);
                r.extend(local.if_not_local.iter().map(String::as_str));
                r.extend(["-j", KUBE_MARK_MASQ]);
                nat_rules.write(&r);
            }
        }

        if uses_ext_chain {
            nat_chains.chain(&ext_chain);
            if !p.external_policy_local {
                let c = q(format!("masquerade traffic for {name} external destinations"));
                nat_rules.commented(&ext_chain, &c, &["-j", KUBE_MARK_MASQ]);
            } else {
                if let Some(local) = self.local {
                    let c = q(format!("pod traffic for {name} external destinations"));
                    let mut r: Vec<&str> = local.if_local.iter().map(String::as_str).collect();
                    r.extend(["-j", &cluster_chain]);
                    nat_rules.commented(&ext_chain, &c, &r);
                }
                let c = q(format!("masquerade LOCAL traffic for {name} external destinations"));
                nat_rules.commented(&ext_chain, &c, &["-m", "addrtype", "--src-type", "LOCAL", "-j", KUBE_MARK_MASQ]);
                let c = q(format!("route LOCAL traffic for {name} external destinations"));
                nat_rules.commented(&ext_chain, &c, &["-m", "addrtype", "--src-type", "LOCAL", "-j", &cluster_chain]);
            }
            if has_external {
                nat_rules.write(&["-A", &ext_chain, "-j", external_policy_chain]);
            }
        }

        if uses_fw {
            nat_chains.chain(&fw_chain);
            for cidr in &p.load_balancer_source_ranges {
                let c = cidr.to_string();
                nat_rules.commented(&fw_chain, &lb_comment, &["-s", &c, "-j", &ext_chain]);
            }
            if self.ctx.source_ranges_allow_node(&p.load_balancer_source_ranges, p.family) {
                for ip in &p.load_balancer_ips {
                    let ip = ip.to_string();
                    nat_rules.commented(&fw_chain, &lb_comment, &["-s", &ip, "-j", &ext_chain]);
                }
            }
            let c = q(format!("other traffic to {name} will be dropped by KUBE-PROXY-FIREWALL"));
            nat_rules.write(&["-A", &fw_chain, "-m", "comment", "--comment", &c]);
        }

        if uses_cluster_chain {
            nat_chains.chain(&cluster_chain);
            self.service_to_endpoints(nat_rules, &cluster_chain, &p.cluster_endpoints);
        }
        if uses_local_chain {
            nat_chains.chain(&local_chain);
            self.service_to_endpoints(nat_rules, &local_chain, &p.local_endpoints);
        }

        for e in all_endpoints(p) {
            let sep = endpoint_chain(p, &e);
            nat_chains.chain(&sep);
            let mut args = vec!["-A".to_string(), sep.clone()];
            if !self.large {
                args.extend(["-m", "comment", "--comment", &name].map(String::from));
            }
            let ip = e.ip.to_string();
            let mut hairpin = args.clone();
            hairpin.extend(["-s", &ip, "-j", KUBE_MARK_MASQ].map(String::from));
            nat_rules.write(&hairpin.iter().map(String::as_str).collect::<Vec<_>>());
            if p.affinity_timeout.is_some() {
                args.extend(["-m", "recent", "--name", &sep, "--set"].map(String::from));
            }
            let dest = e.to_string();
            args.extend(["-m", proto, "-p", proto, "-j", "DNAT", "--to-destination", &dest].map(String::from));
            nat_rules.write(&args.iter().map(String::as_str).collect::<Vec<_>>());
        }
    }

    /// kube-proxy's `writeServiceToEndpointRules`.
    fn service_to_endpoints(&self, nat_rules: &mut Lines, chain: &str, eps: &[ResolvedEndpoint]) {
        let name = self.p.name.to_string();
        if let Some(timeout) = self.p.affinity_timeout {
            let seconds = timeout.to_string();
            for e in eps {
                let sep = endpoint_chain(self.p, e);
                let mut args = vec!["-A".to_string(), chain.to_string()];
                if !self.large {
                    args.extend(["-m".into(), "comment".into(), "--comment".into(), q(format!("{name} -> {e}"))]);
                }
                args.extend(
                    ["-m", "recent", "--name", &sep, "--rcheck", "--seconds", &seconds, "--reap", "-j", &sep]
                        .map(String::from),
                );
                nat_rules.write(&args.iter().map(String::as_str).collect::<Vec<_>>());
            }
        }
        let n = eps.len();
        for (i, e) in eps.iter().enumerate() {
            let mut args = vec!["-A".to_string(), chain.to_string()];
            if !self.large {
                args.extend(["-m".into(), "comment".into(), "--comment".into(), q(format!("{name} -> {e}"))]);
            }
            if i + 1 < n {
                args.extend(["-m", "statistic", "--mode", "random", "--probability"].map(String::from));
                args.push(probability(n - i));
            }
            args.extend(["-j".to_string(), endpoint_chain(self.p, e)]);
            nat_rules.write(&args.iter().map(String::as_str).collect::<Vec<_>>());
        }
    }
}
