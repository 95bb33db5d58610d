//! The service model → one table's desired [`Ruleset`]. Pure.
//!
//! Services are data: a frontend (`addr . proto . port`, or `proto . nodeport`) is an element of
//! the frontend set of a *pick chain* shared by every service with the same number of endpoints
//! (`… @cluster-3-frontends goto cluster-3`, one rule per pick chain in use); the pick chain
//! DNATs through `numgen random mod N` into an endpoint map keyed by frontend and index. Adding a
//! service adds elements, never chains or rules (unless its endpoint count is new), and no
//! element carries a jump, so the kernel's work per commit does not grow with the number of
//! services (a verdict map of frontends did: see `schema::frontend_set`).

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use ipnet::IpNet;
use nftproxy_model::{
    ClusterState, EndpointChoice, LocalTraffic, NodeContext, NodePortIps, ResolvedEndpoint, ResolvedServicePort,
    ServiceName, resolve_service,
};
use nftproxy_nft_wire::Verdict;

use crate::family::Family;
use crate::names;
use crate::rules::{self, BackendKey};
use crate::ruleset::{Chain, Comment, Field, Fields, Key, Route, Ruleset, SetDecl, Value};
use crate::schema::*;
use crate::table::Table;

const PROTOCOLS: [u8; 3] = [6, 17, 132];

/// A pick chain: how traffic is marked and which endpoint map it draws from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Pick {
    /// ClusterIP traffic: masquerade off-cluster sources, pick from `backends`.
    Cluster(u32),
    /// External/LB IP traffic, externalTrafficPolicy Cluster: always masquerade.
    External(u32),
    NodePort(u32),
    /// externalTrafficPolicy Local: N local endpoints, M cluster endpoints for the short-circuit
    /// of pod and host traffic.
    ExternalLocal(u32, u32),
    NodePortLocal(u32, u32),
    ExternalShortcut(u32),
    NodePortShortcut(u32),
}

impl Pick {
    /// The fixed chain holding this pick's route rule, and whether its frontends are node
    /// ports; None for the short-circuit chains, reached only from other pick chains.
    fn route(self) -> Option<(&'static str, bool)> {
        match self {
            Pick::Cluster(_) | Pick::External(_) | Pick::ExternalLocal(..) => Some((SERVICES, false)),
            Pick::NodePort(_) | Pick::NodePortLocal(..) => Some((NODEPORTS, true)),
            Pick::ExternalShortcut(_) | Pick::NodePortShortcut(_) => None,
        }
    }

    fn name(self) -> String {
        match self {
            Pick::Cluster(n) => format!("cluster-{n}"),
            Pick::External(n) => format!("external-{n}"),
            Pick::NodePort(n) => format!("nodeport-{n}"),
            Pick::ExternalLocal(n, m) => format!("external-local-{n}-{m}"),
            Pick::NodePortLocal(n, m) => format!("nodeport-local-{n}-{m}"),
            Pick::ExternalShortcut(m) => format!("external-shortcut-{m}"),
            Pick::NodePortShortcut(m) => format!("nodeport-shortcut-{m}"),
        }
    }
}

struct Builder<'a> {
    f: Family,
    r: Ruleset,
    ctx: &'a NodeContext,
    /// kube-proxy's local-traffic detector for this family.
    local: LocalTraffic,
    picks: BTreeSet<Pick>,
    /// Pick chains (with their frontend sets) already built for other fragments: the same for
    /// every service.
    cache: &'a mut BTreeMap<Pick, (Chain, Option<SetDecl>)>,
}

/// Builds the table for one family from that family's resolved service ports.
pub fn build(f: Family, ports: &[ResolvedServicePort], ctx: &NodeContext) -> Ruleset {
    Table::new(fixed_table(f, ctx), fragments(f, ports, ctx)).table
}

/// What does not depend on services: the schema, the node's NodePort addresses, the masquerade
/// mark and the Service CIDRs.
pub fn fixed_table(f: Family, ctx: &NodeContext) -> Ruleset {
    let (nodeports, ips) = match ctx.nodeport_ips(f.0) {
        NodePortIps::AnyLocal => (NodePortMatch::AnyLocal, Vec::new()),
        // kube-proxy's nftables mode never takes NodePorts on loopback addresses.
        NodePortIps::Ips(ips) => (NodePortMatch::Set, ips.into_iter().filter(|ip| !ip.is_loopback()).collect()),
    };
    let service_cidrs: Vec<IpNet> = ctx.service_cidrs(f.0).copied().collect();
    let mut r = fixed(f, nodeports, ctx.masquerade_mark(), &service_cidrs);
    for ip in ips {
        r.element(NODEPORT_IPS, Key::of(&[Field::Addr(ip)]), Value::None, None);
    }
    r
}

/// One fragment per Service: everything its ports add to the table in this family.
pub fn fragments<'a>(
    f: Family,
    ports: &'a [ResolvedServicePort],
    ctx: &'a NodeContext,
) -> impl Iterator<Item = (ServiceName, Ruleset)> + 'a {
    let mut by_service: BTreeMap<ServiceName, Vec<&ResolvedServicePort>> = BTreeMap::new();
    for p in ports.iter().filter(|p| f.matches(&p.cluster_ip)) {
        by_service.entry(p.name.service.clone()).or_default().push(p);
    }
    // Lazy: the caller merges each fragment before the next is built.
    let mut cache = BTreeMap::new();
    by_service.into_iter().map(move |(svc, ports)| {
        let frag = fragment_with(f, &ports, ctx, &mut cache);
        (svc, frag)
    })
}

/// Like [`fragments`], resolving each Service only when its fragment is wanted: a cold sync never
/// holds the resolved ports of the whole cluster (~1 KiB per Service at the peak otherwise).
pub fn fragments_of_state<'a>(
    f: Family,
    state: &'a ClusterState,
    ctx: &'a NodeContext,
) -> impl Iterator<Item = (ServiceName, Ruleset)> + 'a {
    let mut cache = BTreeMap::new();
    state.services.values().filter_map(move |svc| {
        let ports = resolve_service(state, ctx, f.0, svc);
        let ports: Vec<&ResolvedServicePort> = ports.iter().filter(|p| f.matches(&p.cluster_ip)).collect();
        (!ports.is_empty()).then(|| (svc.name.clone(), fragment_with(f, &ports, ctx, &mut cache)))
    })
}

/// The elements, chains and sets one Service's ports add (pick chains included: the table
/// counts references to the ones services share).
pub fn fragment(f: Family, ports: &[&ResolvedServicePort], ctx: &NodeContext) -> Ruleset {
    fragment_with(f, ports, ctx, &mut BTreeMap::new())
}

fn fragment_with(
    f: Family,
    ports: &[&ResolvedServicePort],
    ctx: &NodeContext,
    cache: &mut BTreeMap<Pick, (Chain, Option<SetDecl>)>,
) -> Ruleset {
    let mut b = Builder { f, r: Ruleset::new(f), ctx, local: ctx.local_traffic(f.0), picks: BTreeSet::new(), cache };
    for p in ports {
        b.service_port(p);
    }
    for pick in std::mem::take(&mut b.picks) {
        b.pick_chain(pick);
    }
    b.r
}

fn endpoint_value(e: &ResolvedEndpoint) -> Value {
    Value::Fields(Fields::of(&[Field::Addr(e.ip), Field::Port(e.port)]))
}

/// Where a frontend leads: an entry map for service traffic and the maps its endpoints live in.
struct Maps {
    entry: &'static str,
    no_endpoints: &'static str,
    backends: &'static str,
    cluster_backends: &'static str,
}

const ADDRESS_MAPS: Maps = Maps {
    entry: SERVICE_IPS,
    no_endpoints: NO_ENDPOINT_SERVICES,
    backends: BACKENDS,
    cluster_backends: CLUSTER_BACKENDS,
};
const NODEPORT_MAPS: Maps = Maps {
    entry: SERVICE_NODEPORTS,
    no_endpoints: NO_ENDPOINT_NODEPORTS,
    backends: NODEPORT_BACKENDS,
    cluster_backends: NODEPORT_CLUSTER_BACKENDS,
};

impl Builder<'_> {
    fn service_port(&mut self, p: &ResolvedServicePort) {
        let comment: Comment = std::sync::Arc::new(p.name.to_string());
        let proto = p.protocol.number();
        let addr_key = |ip: IpAddr, port: u16| Key::of(&[Field::Addr(ip), Field::Proto(proto), Field::Port(port)]);

        self.r.element(CLUSTER_IPS, Key::of(&[Field::Addr(p.cluster_ip)]), Value::None, None);
        let cluster_key = addr_key(p.cluster_ip, p.port);
        match &p.internal {
            EndpointChoice::Endpoints(eps) if p.affinity_timeout.is_some() => {
                let chain = self.affinity_pick(p, eps, p.internal_policy_local);
                let masq = self.masquerade_off_cluster().map(|m| rules::daddr_is(self.f, p.cluster_ip).then(m));
                if let Some(m) = masq {
                    // Internal traffic enters here; external traffic arrives by goto from
                    // external-… with another daddr, so only the ClusterIP is matched.
                    let rules =
                        std::sync::Arc::make_mut(&mut self.r.chains.get_mut(&chain).expect("affinity chain").rules);
                    if !rules.contains(&m) {
                        rules.insert(0, m);
                    }
                }
                self.r.element(SERVICE_IPS, cluster_key, Value::Verdict(Verdict::Goto(chain)), Some(&comment));
            }
            EndpointChoice::Endpoints(eps) => {
                self.frontend(Pick::Cluster(eps.len() as u32), cluster_key, &comment);
                self.backends(BACKENDS, &cluster_key, eps, &comment);
            }
            EndpointChoice::Reject => self.no_endpoints(NO_ENDPOINT_SERVICES, cluster_key, true, &comment),
            EndpointChoice::Drop => self.no_endpoints(NO_ENDPOINT_SERVICES, cluster_key, false, &comment),
        }

        // kube-proxy's nftables mode checks source ranges before anything else, endpoints or
        // not: a blocked source is dropped even when an allowed one would be rejected.
        if !p.load_balancer_source_ranges.is_empty() {
            self.firewall(p, &comment);
        }
        if p.external.is_some() {
            let ext_ips: Vec<IpAddr> = p.external_ips.iter().chain(&p.load_balancer_ips).copied().collect();
            for ip in ext_ips {
                self.external(p, &ADDRESS_MAPS, addr_key(ip, p.port), &comment);
            }
            if let Some(np) = p.node_port {
                self.external(p, &NODEPORT_MAPS, Key::of(&[Field::Proto(proto), Field::Port(np)]), &comment);
            }
        }
    }

    /// A frontend reached from outside: external IP, load-balancer IP or node port.
    fn external(&mut self, p: &ResolvedServicePort, maps: &Maps, key: Key, comment: &Comment) {
        let nodeport = maps.entry == SERVICE_NODEPORTS;
        if !p.has_any_endpoints {
            return self.no_endpoints(maps.no_endpoints, key, true, comment);
        }
        if p.affinity_timeout.is_some() {
            let chain = self.affinity_external(p);
            self.r.element(maps.entry, key, Value::Verdict(Verdict::Goto(chain)), Some(comment));
            if p.external_policy_local && p.local_endpoints.is_empty() {
                self.no_endpoints(maps.no_endpoints, key, false, comment);
            }
            return;
        }
        if p.external_policy_local {
            let (n, m) = (p.local_endpoints.len() as u32, p.cluster_endpoints.len() as u32);
            if m > 0 {
                self.pick(if nodeport { Pick::NodePortShortcut(m) } else { Pick::ExternalShortcut(m) });
            }
            self.frontend(
                if nodeport { Pick::NodePortLocal(n, m) } else { Pick::ExternalLocal(n, m) },
                key,
                comment,
            );
            self.backends(maps.backends, &key, &p.local_endpoints, comment);
            self.backends(maps.cluster_backends, &key, &p.cluster_endpoints, comment);
            if n == 0 {
                // Not short-circuited and no local endpoint: dropped in the filter hooks.
                self.no_endpoints(maps.no_endpoints, key, false, comment);
            }
        } else if let Some(EndpointChoice::Endpoints(eps)) = &p.external {
            let n = eps.len() as u32;
            self.frontend(if nodeport { Pick::NodePort(n) } else { Pick::External(n) }, key, comment);
            self.backends(maps.backends, &key, eps, comment);
        }
    }

    /// ClientIP affinity, in kube-proxy's shape because it needs per-client state: a chain per
    /// service port and endpoint list (`service-…` for cluster-wide endpoints, `local-…` for
    /// node-local ones), a chain and a dynamic set per endpoint. Only affinity services get them.
    fn affinity_pick(&mut self, p: &ResolvedServicePort, eps: &[ResolvedEndpoint], local: bool) -> String {
        let base = names::service_base(p);
        let chain = format!("{}-{base}", if local { "local" } else { "service" });
        if self.r.chains.contains_key(&chain) {
            return chain;
        }
        let timeout = p.affinity_timeout.unwrap_or(nftproxy_model::DEFAULT_AFFINITY_TIMEOUT_SECONDS);
        let proto = p.protocol.number();
        let mut targets = Vec::new();
        for e in eps {
            let eb = names::endpoint_base(p, e);
            let (set, ep_chain) = (names::affinity_set_name(p, e), format!("endpoint-{eb}"));
            if !self.r.chains.contains_key(&ep_chain) {
                self.r.set(affinity_set(self.f, &set, timeout));
                self.r.add_rule(&ep_chain, rules::update_saddr(self.f, &set));
                self.r.add_rule(&ep_chain, rules::dnat_to(self.f, proto, e.ip, e.port));
                self.r.element(HAIRPIN, Key::of(&[Field::Addr(e.ip), Field::Addr(e.ip)]), Value::None, None);
            }
            targets.push((set, ep_chain));
        }
        self.r.chain(&chain, None);
        for (set, ep_chain) in &targets {
            self.r.add_rule(&chain, rules::saddr_in(self.f, set).then(rules::goto(ep_chain)));
        }
        // Endpoint i is taken with probability 1/(N-i) if none before it was: an even spread,
        // as kube-proxy's iptables statistic rules do it.
        let n = targets.len();
        for (i, (_, ep_chain)) in targets.iter().enumerate() {
            let r = if i + 1 < n {
                rules::numgen_one_in((n - i) as u32).then(rules::goto(ep_chain))
            } else {
                rules::goto(ep_chain)
            };
            self.r.add_rule(&chain, r);
        }
        chain
    }

    /// The external traffic chain of an affinity service: masquerade and pick (ETP=Cluster), or
    /// kube-proxy's short-circuits then the local pick (ETP=Local).
    fn affinity_external(&mut self, p: &ResolvedServicePort) -> String {
        let chain = format!("external-{}", names::service_base(p));
        if self.r.chains.contains_key(&chain) {
            return chain;
        }
        self.r.chain(&chain, None);
        if !p.external_policy_local {
            let pick = self.affinity_pick(p, &p.cluster_endpoints, false);
            self.r.add_rule(&chain, rules::jump(MARK_FOR_MASQUERADE));
            self.r.add_rule(&chain, rules::goto(&pick));
            return chain;
        }
        if !p.cluster_endpoints.is_empty() {
            let cluster = self.affinity_pick(p, &p.cluster_endpoints, false);
            self.short_circuits(&chain, &cluster);
        }
        if !p.local_endpoints.is_empty() {
            let local = self.affinity_pick(p, &p.local_endpoints, true);
            self.r.add_rule(&chain, rules::goto(&local));
        }
        chain
    }

    /// loadBalancerSourceRanges: traffic to the service's load-balancer IPs from elsewhere is
    /// dropped before DNAT. One named chain per such service port, a `return` per allowed range.
    /// Node ports are not subject to source ranges (as in kube-proxy).
    fn firewall(&mut self, p: &ResolvedServicePort, comment: &Comment) {
        let chain = format!("firewall-{}", names::service_base(p));
        let mut allowed: Vec<IpNet> = p.load_balancer_source_ranges.clone();
        // If a range holds the (primary) node IP, traffic from the node may come back to the VIP
        // with the VIP itself as source (kube-proxy allows the LB IPs then too).
        if self.ctx.source_ranges_allow_node(&p.load_balancer_source_ranges, self.f.0) {
            allowed.extend(p.load_balancer_ips.iter().map(|ip| IpNet::from(*ip)));
        }
        self.r.chain(&chain, None);
        for net in &allowed {
            self.r.add_rule(&chain, rules::saddr_in_cidr(self.f, net, false).then(rules::verdict(Verdict::Return)));
        }
        self.r.add_rule(&chain, rules::verdict(Verdict::Drop).comment("not in loadBalancerSourceRanges"));
        let proto = p.protocol.number();
        for ip in &p.load_balancer_ips {
            let key = Key::of(&[Field::Addr(*ip), Field::Proto(proto), Field::Port(p.port)]);
            self.r.element(FIREWALL_IPS, key, Value::Verdict(Verdict::Goto(chain.clone())), Some(comment));
        }
    }

    /// kube-proxy's short-circuits for externalTrafficPolicy=Local: pods and the node itself
    /// reach the service through all its endpoints (`target`); only traffic from outside keeps
    /// its source and is limited to local endpoints.
    fn short_circuits(&mut self, chain: &str, target: &str) {
        if let Some(m) = rules::local_traffic(self.f, &self.local, false) {
            self.r.add_rule(chain, m.then(rules::goto(target)).comment("short-circuit pod traffic"));
        }
        let r = rules::fib_saddr_local().then(rules::jump(MARK_FOR_MASQUERADE));
        self.r.add_rule(chain, r.comment("masquerade local traffic"));
        let r = rules::fib_saddr_local().then(rules::goto(target));
        self.r.add_rule(chain, r.comment("short-circuit local traffic"));
    }

    fn pick(&mut self, p: Pick) -> String {
        self.picks.insert(p);
        p.name()
    }

    /// A frontend served by pick chain `p`: an element of its frontend set.
    fn frontend(&mut self, p: Pick, key: Key, comment: &Comment) {
        let name = self.pick(p);
        self.r.element(&frontend_set_name(&name), key, Value::None, Some(comment));
    }

    fn backends(&mut self, map: &str, frontend: &Key, eps: &[ResolvedEndpoint], comment: &Comment) {
        for (i, e) in eps.iter().enumerate() {
            let mut key = *frontend;
            key.push(Field::Index(i as u32));
            self.r.element(map, key, endpoint_value(e), Some(comment));
            self.r.element(HAIRPIN, Key::of(&[Field::Addr(e.ip), Field::Addr(e.ip)]), Value::None, None);
        }
    }

    fn no_endpoints(&mut self, map: &str, key: Key, reject: bool, comment: &Comment) {
        let v = if reject { Verdict::Goto(REJECT_CHAIN.into()) } else { Verdict::Drop };
        self.r.element(map, key, Value::Verdict(v), Some(comment));
    }

    fn masquerade_off_cluster(&self) -> Option<crate::ruleset::Rule> {
        if self.ctx.masquerade_all {
            return Some(rules::jump(MARK_FOR_MASQUERADE));
        }
        // kube-proxy's "IfNotLocal": traffic that is not from a pod is masqueraded. Without a
        // detector nothing is masqueraded here.
        Some(rules::local_traffic(self.f, &self.local, true)?.then(rules::jump(MARK_FOR_MASQUERADE)))
    }

    fn dnat_rules(&mut self, chain: &str, key: BackendKey, n: u32, map: &str) {
        for proto in PROTOCOLS {
            self.r.add_rule(chain, rules::dnat_random(self.f, proto, key, n, map));
        }
    }

    /// The pick chain (with its route rule), and for a routed pick its frontend set.
    fn pick_chain(&mut self, pick: Pick) {
        let name = pick.name();
        let (chain, frontends) = match self.cache.get(&pick) {
            Some(c) => c.clone(),
            None => {
                self.build_pick_chain(pick);
                let frontends = pick.route().map(|(_, nodeport)| frontend_set(self.f, &name, nodeport));
                let built = (self.r.chains[&name].clone(), frontends);
                self.cache.insert(pick, built.clone());
                built
            }
        };
        self.r.chains.insert(name, chain);
        if let Some(set) = frontends {
            self.r.set(set);
        }
    }

    fn build_pick_chain(&mut self, pick: Pick) {
        let name = pick.name();
        let route = pick.route().map(|(from, nodeport)| {
            let set = frontend_set_name(&name);
            let m = if nodeport { rules::proto_port_in(&set) } else { rules::daddr_proto_port_in(self.f, &set) };
            Route { from, rule: m.then(rules::goto(&name)) }
        });
        self.r.chain(&name, None).route = route;
        match pick {
            Pick::Cluster(n) => {
                if let Some(m) = self.masquerade_off_cluster() {
                    self.r.add_rule(&name, m);
                }
                self.dnat_rules(&name, BackendKey::Daddr, n, BACKENDS);
            }
            Pick::External(n) | Pick::NodePort(n) => {
                self.r.add_rule(&name, rules::jump(MARK_FOR_MASQUERADE));
                let (key, map) = match pick {
                    Pick::External(_) => (BackendKey::Daddr, BACKENDS),
                    _ => (BackendKey::NodePort, NODEPORT_BACKENDS),
                };
                self.dnat_rules(&name, key, n, map);
            }
            Pick::ExternalLocal(n, m) | Pick::NodePortLocal(n, m) => {
                let (shortcut, key, map) = match pick {
                    Pick::ExternalLocal(..) => (Pick::ExternalShortcut(m), BackendKey::Daddr, BACKENDS),
                    _ => (Pick::NodePortShortcut(m), BackendKey::NodePort, NODEPORT_BACKENDS),
                };
                if m > 0 {
                    self.short_circuits(&name, &shortcut.name());
                }
                if n > 0 {
                    self.dnat_rules(&name, key, n, map);
                }
            }
            Pick::ExternalShortcut(m) => self.dnat_rules(&name, BackendKey::Daddr, m, CLUSTER_BACKENDS),
            Pick::NodePortShortcut(m) => self.dnat_rules(&name, BackendKey::NodePort, m, NODEPORT_CLUSTER_BACKENDS),
        }
    }
}
