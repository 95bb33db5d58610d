//! The constant part of our table: sets and maps, base chains at kube-proxy nftables' hooks and
//! priorities, and the fixed chains between them. Services only ever add map elements and, per
//! endpoint count in use, one small chain.

use nftproxy_nft_wire::consts::*;
use nftproxy_nft_wire::{BaseChain, ChainType, Hook, SetSpec, Udata, Verdict};

use crate::family::Family;
use crate::rules;
use crate::ruleset::{Ruleset, SetDecl};
use crate::schema_udata as ud;

pub const CLUSTER_IPS: &str = "cluster-ips";
pub const NODEPORT_IPS: &str = "nodeport-ips";
pub const HAIRPIN: &str = "hairpin";
pub const SERVICE_IPS: &str = "service-ips";
pub const SERVICE_NODEPORTS: &str = "service-nodeports";
pub const NO_ENDPOINT_SERVICES: &str = "no-endpoint-services";
pub const NO_ENDPOINT_NODEPORTS: &str = "no-endpoint-nodeports";
pub const FIREWALL_IPS: &str = "firewall-ips";
pub const BACKENDS: &str = "backends";
pub const CLUSTER_BACKENDS: &str = "cluster-backends";
pub const NODEPORT_BACKENDS: &str = "nodeport-backends";
pub const NODEPORT_CLUSTER_BACKENDS: &str = "nodeport-cluster-backends";

pub const SERVICES: &str = "services";
/// NodePort traffic, reached from `services` once the destination is a node address.
pub const NODEPORTS: &str = "nodeports";
pub const MASQUERADING: &str = "masquerading";
pub const MARK_FOR_MASQUERADE: &str = "mark-for-masquerade";
pub const REJECT_CHAIN: &str = "reject-chain";
pub const SERVICE_ENDPOINTS_CHECK: &str = "service-endpoints-check";
pub const NODEPORT_ENDPOINTS_CHECK: &str = "nodeport-endpoints-check";
pub const CLUSTER_IPS_CHECK: &str = "cluster-ips-check";
pub const FIREWALL_CHECK: &str = "firewall-check";

const TYPE_INET_PROTO: u32 = 12;
const TYPE_INET_SERVICE: u32 = 13;
const TYPE_INTEGER: u32 = 4;

fn concat(types: &[u32]) -> u32 {
    types.iter().fold(0, |acc, t| (acc << 6) | t)
}

fn decl(
    name: &str,
    flags: u32,
    key: &[u32],
    key_len: u32,
    data: Option<(u32, u32)>,
    udata: &[u8],
    type_text: String,
    comment: &'static str,
    stage: u8,
) -> SetDecl {
    let comment = Some(std::borrow::Cow::Borrowed(comment));
    SetDecl {
        spec: SetSpec {
            name: name.into(),
            flags,
            key_type: concat(key),
            key_len,
            data,
            timeout_ms: None,
            udata: udata.to_vec(),
        },
        type_text,
        comment,
        stage,
    }
}

/// Every set and map of the table. The comments must equal those inside the captured userdata
/// (tools/capture-set-udata.sh); a unit test checks it.
pub fn sets(f: Family) -> Vec<SetDecl> {
    let v4 = f == Family::V4;
    let pick = |a: &'static [u8], b: &'static [u8]| if v4 { a } else { b };
    let (at, al, w) = (f.addr_type_id(), f.addr_len(), f.word());
    let addr = f.addr_type();
    let vmap = Some((NFT_DATA_VERDICT, 0));
    let endpoint = Some((concat(&[at, TYPE_INET_SERVICE]), al + 4));
    let svc_key = [at, TYPE_INET_PROTO, TYPE_INET_SERVICE];
    let backend_key = [at, TYPE_INET_PROTO, TYPE_INET_SERVICE, TYPE_INTEGER];
    let np_backend_key = [TYPE_INET_PROTO, TYPE_INET_SERVICE, TYPE_INTEGER];
    let backend_type =
        format!("typeof {w} daddr . meta l4proto . th dport . numgen random mod 1 : {w} daddr . th dport");
    let np_backend_type = format!("typeof meta l4proto . th dport . numgen random mod 1 : {w} daddr . th dport");
    vec![
        decl(
            CLUSTER_IPS,
            0,
            &[at],
            al,
            None,
            pick(ud::V4_CLUSTER_IPS, ud::V6_CLUSTER_IPS),
            format!("type {addr}"),
            "Active ClusterIPs",
            1,
        ),
        decl(
            NODEPORT_IPS,
            0,
            &[at],
            al,
            None,
            pick(ud::V4_NODEPORT_IPS, ud::V6_NODEPORT_IPS),
            format!("type {addr}"),
            "IPs that accept NodePort traffic",
            0,
        ),
        decl(
            HAIRPIN,
            0,
            &[at, at],
            al * 2,
            None,
            pick(ud::V4_HAIRPIN, ud::V6_HAIRPIN),
            format!("type {addr} . {addr}"),
            "endpoint . endpoint: a pod reaching itself through a service is masqueraded",
            0,
        ),
        decl(
            SERVICE_IPS,
            NFT_SET_MAP,
            &svc_key,
            al + 8,
            vmap,
            pick(ud::V4_SERVICE_IPS, ud::V6_SERVICE_IPS),
            format!("type {addr} . inet_proto . inet_service : verdict"),
            "ClusterIP, ExternalIP and LoadBalancer IP traffic",
            1,
        ),
        decl(
            SERVICE_NODEPORTS,
            NFT_SET_MAP,
            &[TYPE_INET_PROTO, TYPE_INET_SERVICE],
            8,
            vmap,
            pick(ud::V4_SERVICE_NODEPORTS, ud::V6_SERVICE_NODEPORTS),
            "type inet_proto . inet_service : verdict".into(),
            "NodePort traffic",
            1,
        ),
        decl(
            NO_ENDPOINT_SERVICES,
            NFT_SET_MAP,
            &svc_key,
            al + 8,
            vmap,
            pick(ud::V4_NO_ENDPOINT_SERVICES, ud::V6_NO_ENDPOINT_SERVICES),
            format!("type {addr} . inet_proto . inet_service : verdict"),
            "vmap to drop or reject packets to services with no endpoints",
            1,
        ),
        decl(
            NO_ENDPOINT_NODEPORTS,
            NFT_SET_MAP,
            &[TYPE_INET_PROTO, TYPE_INET_SERVICE],
            8,
            vmap,
            pick(ud::V4_NO_ENDPOINT_NODEPORTS, ud::V6_NO_ENDPOINT_NODEPORTS),
            "type inet_proto . inet_service : verdict".into(),
            "vmap to drop or reject packets to service nodeports with no endpoints",
            1,
        ),
        decl(
            FIREWALL_IPS,
            NFT_SET_MAP,
            &svc_key,
            al + 8,
            vmap,
            pick(ud::V4_FIREWALL_IPS, ud::V6_FIREWALL_IPS),
            format!("type {addr} . inet_proto . inet_service : verdict"),
            "destinations that are subject to LoadBalancerSourceRanges",
            1,
        ),
        decl(
            BACKENDS,
            NFT_SET_MAP,
            &backend_key,
            al + 12,
            endpoint,
            pick(ud::V4_BACKENDS, ud::V6_BACKENDS),
            backend_type.clone(),
            "frontend . index : endpoint",
            0,
        ),
        decl(
            CLUSTER_BACKENDS,
            NFT_SET_MAP,
            &backend_key,
            al + 12,
            endpoint,
            pick(ud::V4_CLUSTER_BACKENDS, ud::V6_CLUSTER_BACKENDS),
            backend_type,
            "frontend . index : cluster endpoint (ETP=Local short-circuit)",
            0,
        ),
        decl(
            NODEPORT_BACKENDS,
            NFT_SET_MAP,
            &np_backend_key,
            12,
            endpoint,
            pick(ud::V4_NODEPORT_BACKENDS, ud::V6_NODEPORT_BACKENDS),
            np_backend_type.clone(),
            "node port . index : endpoint",
            0,
        ),
        decl(
            NODEPORT_CLUSTER_BACKENDS,
            NFT_SET_MAP,
            &np_backend_key,
            12,
            endpoint,
            pick(ud::V4_NODEPORT_CLUSTER_BACKENDS, ud::V6_NODEPORT_CLUSTER_BACKENDS),
            np_backend_type,
            "node port . index : cluster endpoint (ETP=Local short-circuit)",
            0,
        ),
    ]
}

/// The frontends a pick chain serves: `addr . proto . port` (or `proto . port` for node ports),
/// matched by one route rule `… @<pick>-frontends goto <pick>`. A plain set, not a verdict
/// map: the kernel walks every element of a looked-up verdict map on each commit that adds a
/// jump (its loop check): one more element cost 5 ms at 50k frontends against 0.09 ms at 1k
/// (examples/commit_cost.rs), a set element 0.006 ms at both.
pub fn frontend_set(f: Family, pick: &str, nodeport: bool) -> SetDecl {
    let (key, key_len, type_text) = if nodeport {
        (concat(&[TYPE_INET_PROTO, TYPE_INET_SERVICE]), 8, "type inet_proto . inet_service".to_string())
    } else {
        (concat(&[f.addr_type_id(), TYPE_INET_PROTO, TYPE_INET_SERVICE]), f.addr_len() + 8, format!("type {} . inet_proto . inet_service", f.addr_type()))
    };
    // What nft writes for a concatenated `type` set (captured for `hairpin`: key byte order and
    // the concatenation's field description), then the comment.
    let concat_udata = &ud::V4_HAIRPIN[..16];
    let comment = format!("frontends routed to {pick}");
    let udata = Udata(concat_udata.to_vec()).put_str(NFTNL_UDATA_SET_COMMENT, &comment).0;
    SetDecl {
        spec: SetSpec { name: frontend_set_name(pick), flags: 0, key_type: key, key_len, data: None, timeout_ms: None, udata },
        type_text,
        comment: Some(comment.into()),
        stage: 1,
    }
}

const FRONTENDS_SUFFIX: &str = "-frontends";

pub fn frontend_set_name(pick: &str) -> String {
    format!("{pick}{FRONTENDS_SUFFIX}")
}

/// Whether a set of ours is the frontend set of a pick chain (its elements name Services).
pub fn is_frontend_set(name: &str) -> bool {
    name.ends_with(FRONTENDS_SUFFIX)
}

/// A per-endpoint ClientIP affinity set (kube-proxy's shape): source addresses seen recently,
/// each forgotten `timeout` seconds after its last connection.
pub fn affinity_set(f: Family, name: &str, timeout_s: u32) -> SetDecl {
    SetDecl {
        spec: SetSpec {
            name: name.into(),
            flags: NFT_SET_TIMEOUT | NFT_SET_EVAL,
            key_type: f.addr_type_id(),
            key_len: f.addr_len(),
            data: None,
            timeout_ms: Some(u64::from(timeout_s) * 1000),
            // What nft writes for such a set: the key's byte order (big endian).
            udata: Udata::default().put_u32(NFTNL_UDATA_SET_KEYBYTEORDER, 2).0,
        },
        type_text: format!("type {}\n\t\tflags dynamic,timeout\n\t\ttimeout {timeout_s}s", f.addr_type()),
        comment: None,
        stage: 0,
    }
}

fn base(chain_type: ChainType, hook: Hook, priority: i32) -> Option<BaseChain> {
    Some(BaseChain { chain_type, hook, priority })
}

/// How NodePorts are recognised: by a set of node addresses, or as any local address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NodePortMatch {
    Set,
    AnyLocal,
}

/// The sets, base chains and fixed chains (with their rules).
pub fn fixed(f: Family, nodeports: NodePortMatch, masq_mark: u32, service_cidrs: &[ipnet::IpNet]) -> Ruleset {
    let mut r = Ruleset::new(f);
    for s in sets(f) {
        r.set(s);
    }
    let prio_dstnat = -100;
    // Hooks and priorities as kube-proxy's nftables mode (v1.34): other components can rely on
    // the same ordering.
    r.chain("filter-prerouting-pre-dnat", base(ChainType::Filter, Hook::Prerouting, prio_dstnat - 10));
    r.chain("filter-output-pre-dnat", base(ChainType::Filter, Hook::Output, prio_dstnat - 10));
    r.chain("filter-input", base(ChainType::Filter, Hook::Input, 0));
    r.chain("filter-forward", base(ChainType::Filter, Hook::Forward, 0));
    r.chain("filter-output", base(ChainType::Filter, Hook::Output, 0));
    r.chain("nat-prerouting", base(ChainType::Nat, Hook::Prerouting, prio_dstnat));
    r.chain("nat-output", base(ChainType::Nat, Hook::Output, prio_dstnat));
    r.chain("nat-postrouting", base(ChainType::Nat, Hook::Postrouting, 100));

    let new_jump = |c: &str| rules::ct_state_new().then(rules::jump(c));
    r.add_rule("filter-input", new_jump(NODEPORT_ENDPOINTS_CHECK));
    r.add_rule("filter-input", new_jump(SERVICE_ENDPOINTS_CHECK));
    r.add_rule("filter-forward", new_jump(SERVICE_ENDPOINTS_CHECK));
    r.add_rule("filter-forward", new_jump(CLUSTER_IPS_CHECK));
    r.add_rule("filter-output", new_jump(SERVICE_ENDPOINTS_CHECK));
    r.add_rule("filter-output", new_jump(CLUSTER_IPS_CHECK));
    // loadBalancerSourceRanges are checked before DNAT, on the original destination.
    r.add_rule("filter-prerouting-pre-dnat", new_jump(FIREWALL_CHECK));
    r.add_rule("filter-output-pre-dnat", new_jump(FIREWALL_CHECK));
    r.add_rule(FIREWALL_CHECK, rules::daddr_proto_port_vmap(f, FIREWALL_IPS));
    r.add_rule("nat-prerouting", rules::jump(SERVICES));
    r.add_rule("nat-output", rules::jump(SERVICES));
    r.add_rule("nat-postrouting", rules::jump(MASQUERADING));

    // Frontends with a per-service chain (ClientIP affinity) first, then the route rules of
    // the pick chains in use (placed at the slot by the table), then NodePorts: a ClusterIP or
    // external IP that is also a node address wins.
    r.add_rule(SERVICES, rules::daddr_proto_port_vmap(f, SERVICE_IPS));
    r.route_slots.insert(SERVICES.into(), 1);
    let nodeport_dst = match nodeports {
        NodePortMatch::Set => rules::daddr_in(f, NODEPORT_IPS),
        NodePortMatch::AnyLocal => rules::fib_daddr_local().then(rules::daddr_not_loopback(f)),
    };
    r.add_rule(SERVICES, nodeport_dst.clone().then(rules::goto(NODEPORTS)));
    r.add_rule(NODEPORTS, rules::proto_port_vmap(SERVICE_NODEPORTS));
    r.route_slots.insert(NODEPORTS.into(), 1);
    r.add_rule(SERVICE_ENDPOINTS_CHECK, rules::daddr_proto_port_vmap(f, NO_ENDPOINT_SERVICES));
    r.add_rule(NODEPORT_ENDPOINTS_CHECK, nodeport_dst.then(rules::proto_port_vmap(NO_ENDPOINT_NODEPORTS)));
    r.add_rule(
        CLUSTER_IPS_CHECK,
        rules::daddr_in(f, CLUSTER_IPS).then(rules::reject(f)).comment("Reject traffic to invalid ports of ClusterIPs"),
    );
    // kube-proxy (OnServiceCIDRsChanged): an address of a Service CIDR that no Service holds is
    // dropped rather than routed off the node un-NATed. A rule per CIDR (a cluster has one or
    // two) instead of kube-proxy's anonymous set: no anonymous sets in our table.
    for net in service_cidrs {
        r.add_rule(
            CLUSTER_IPS_CHECK,
            rules::daddr_in_cidr(f, net).then(rules::verdict(Verdict::Drop)).comment("Drop traffic to unallocated ClusterIPs"),
        );
    }
    r.add_rule(REJECT_CHAIN, rules::reject(f).comment("helper for @no-endpoint-services / @no-endpoint-nodeports"));
    r.add_rule(MARK_FOR_MASQUERADE, rules::mark_set_or(masq_mark));
    // Hairpin: a pod that reached itself through a service must be masqueraded, or it would answer
    // itself directly. One set of `ep . ep` pairs replaces kube-proxy's rule per endpoint chain.
    r.add_rule(
        MASQUERADING,
        rules::ct_status_dnat().then(rules::saddr_daddr_in(f, HAIRPIN)).then(rules::jump(MARK_FOR_MASQUERADE)),
    );
    r.add_rule(MASQUERADING, rules::mark_clear(masq_mark).then(rules::verdict(Verdict::Return)));
    r.add_rule(MASQUERADING, rules::mark_set_xor(masq_mark));
    r.add_rule(MASQUERADING, rules::masquerade_fully_random());
    r
}
