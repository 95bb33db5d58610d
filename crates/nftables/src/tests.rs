//! Unit tests of the pure parts: schema consistency and the planner's message counts.

use nftproxy_model::*;

use crate::ruleset::Ruleset;
use crate::{Family, build, plan, schema};

pub(crate) fn ctx() -> NodeContext {
    NodeContext {
        node_name: "node-a".into(),
        node_ips: vec!["192.168.0.2".parse().unwrap()],
        cluster_cidrs: vec!["10.244.0.0/16".parse().unwrap()],
        ..Default::default()
    }
}

fn port(name: &str, cip: &str, eps: &[&str]) -> ResolvedServicePort {
    let endpoints: Vec<ResolvedEndpoint> = eps
        .iter()
        .map(|ip| ResolvedEndpoint {
            ip: ip.parse().unwrap(),
            port: 8080,
            node_name: Some("node-b".into()),
            is_local: false,
            ready: true,
            serving: true,
            terminating: false,
        })
        .collect();
    ResolvedServicePort {
        name: ServicePortName { service: ServiceName::new("ns", name), port: "http".into(), protocol: Protocol::Tcp },
        family: IpFamily::V4,
        service_type: ServiceType::ClusterIP,
        cluster_ip: cip.parse().unwrap(),
        port: 80,
        protocol: Protocol::Tcp,
        node_port: None,
        external_ips: vec![],
        load_balancer_ips: vec![],
        load_balancer_source_ranges: vec![],
        internal_policy_local: false,
        external_policy_local: false,
        health_check_node_port: None,
        affinity_timeout: None,
        topology_mode: None,
        has_any_endpoints: !endpoints.is_empty(),
        internal: if endpoints.is_empty() {
            EndpointChoice::Reject
        } else {
            EndpointChoice::Endpoints(endpoints.clone())
        },
        external: None,
        cluster_endpoints: endpoints,
        local_endpoints: vec![],
    }
}

fn table(ports: &[ResolvedServicePort]) -> Ruleset {
    build(Family::V4, ports, &ctx())
}

#[test]
fn every_set_comment_is_the_one_nft_stored_in_its_userdata() {
    for f in [Family::V4, Family::V6] {
        for s in schema::sets(f) {
            let c = s.comment.expect("schema sets have comments");
            let needle = [&[7u8, (c.len() + 1) as u8][..], c.as_bytes(), &[0]].concat();
            assert!(
                s.spec.udata.windows(needle.len()).any(|w| w == needle),
                "{}: comment {c:?} not in udata",
                s.spec.name
            );
        }
    }
}

#[test]
fn an_unchanged_state_plans_nothing() {
    let a = table(&[port("web", "10.96.0.10", &["10.244.1.2", "10.244.2.2"])]);
    assert!(plan::incremental(&a, &a.clone(), 1).is_empty());
}

#[test]
fn one_endpoint_change_is_one_delete_and_one_add_per_touched_map() {
    let a =
        table(&[port("web", "10.96.0.10", &["10.244.1.2", "10.244.2.2"]), port("db", "10.96.0.11", &["10.244.3.2"])]);
    let b =
        table(&[port("web", "10.96.0.10", &["10.244.1.2", "10.244.4.2"]), port("db", "10.96.0.11", &["10.244.3.2"])]);
    let batch = plan::incremental(&a, &b, 1);
    let what: Vec<&str> = batch.messages().iter().map(|m| m.what.as_str()).collect();
    assert_eq!(
        what,
        [
            "delete elements 0..1 of backends",
            "delete elements 0..1 of hairpin",
            "add elements 0..1 of backends",
            "add elements 0..1 of hairpin"
        ]
    );
}

#[test]
fn a_new_endpoint_count_adds_its_pick_chain_and_retargets_the_service() {
    let a = table(&[port("web", "10.96.0.10", &["10.244.1.2", "10.244.2.2"])]);
    let b = table(&[port("web", "10.96.0.10", &["10.244.1.2", "10.244.2.2", "10.244.3.2"])]);
    let batch = plan::incremental(&a, &b, 1);
    let what: Vec<&str> = batch.messages().iter().map(|m| m.what.as_str()).collect();
    let at = |w: &str| what.iter().position(|m| *m == w).unwrap_or_else(|| panic!("no {w:?} in {what:?}"));
    // The new pick chain and its frontend set exist before the route rule that uses them.
    assert!(at("add set cluster-3-frontends") < at("flush chain services"), "{what:?}");
    assert!(at("add chain cluster-3") < at("flush chain services"), "{what:?}");
    // The old route rule is gone (services rebuilt) before its chain and set are deleted.
    assert!(at("flush chain services") < at("delete chain cluster-2"), "{what:?}");
    assert_eq!(what[what.len() - 2..], ["delete chain cluster-2", "delete set cluster-2-frontends"], "{what:?}");
}

/// kube-proxy's `svc5` (its `proxier_test.go`): one endpoint, ClientIP affinity of `timeout` s.
fn sticky_svc5(timeout: u32) -> ResolvedServicePort {
    let mut p = port("svc5", "172.30.0.45", &["10.180.0.3"]);
    p.name = ServicePortName { service: ServiceName::new("ns5", "svc5"), port: "p80".into(), protocol: Protocol::Tcp };
    for e in &mut p.cluster_endpoints {
        e.port = 80;
    }
    p.internal = EndpointChoice::Endpoints(p.cluster_endpoints.clone());
    p.affinity_timeout = Some(timeout);
    p
}

/// Named as kube-proxy names it, without the timeout: a new timeout declares the same set again
/// (kube-proxy's `tx.Add`), which updates it in place and keeps its clients. Both planners,
/// the one between whole tables and the one of fragment swaps, send just that one message.
#[test]
fn a_new_affinity_timeout_is_the_same_set_declared_again() {
    use crate::table::{Delta, Table};
    use std::collections::BTreeMap;
    const SET: &str = "affinity-GTK6MW7G-ns5/svc5/tcp/p80__10.180.0.3/80";
    let (a, b) = (table(&[sticky_svc5(10800)]), table(&[sticky_svc5(600)]));
    assert_eq!(a.sets[SET].spec.timeout_ms, Some(10_800_000));
    assert_eq!(b.sets[SET].spec.timeout_ms, Some(600_000));
    let what = |batch: nftproxy_nft_wire::Batch| -> Vec<String> {
        batch.messages().iter().map(|m| m.what.clone()).collect()
    };
    assert_eq!(what(plan::incremental(&a, &b, 1)), [format!("add set {SET}")]);
    let c = ctx();
    let frags = |p: ResolvedServicePort| crate::fragments(Family::V4, &[p], &c).collect::<BTreeMap<_, _>>();
    let mut t = Table::new(crate::fixed_table(Family::V4, &c), frags(sticky_svc5(10800)));
    let mut d = Delta::default();
    let svc = ServiceName::new("ns5", "svc5");
    t.swap(&svc, frags(sticky_svc5(600)).remove(&svc), &mut d);
    assert_eq!(t.table, Table::new(crate::fixed_table(Family::V4, &c), frags(sticky_svc5(600))).table);
    assert_eq!(what(plan::delta(&t.table, &d, 1)), [format!("add set {SET}")]);
}

#[test]
fn a_service_without_endpoints_is_rejected_through_the_no_endpoint_map() {
    let r = table(&[port("empty", "10.96.0.12", &[])]);
    let text = r.render();
    assert!(text.contains("10.96.0.12 . tcp . 80 comment \"ns/empty:http\" : goto reject-chain"), "{text}");
    assert!(r.elements["service-ips"].is_empty());
}

#[test]
fn cold_start_chunks_fill_endpoint_maps_before_entry_maps() {
    let ports: Vec<_> =
        (0..50).map(|i| port(&format!("s{i}"), &format!("10.96.1.{i}"), &["10.244.1.2", "10.244.2.2"])).collect();
    let r = table(&ports);
    let batches: Vec<_> = plan::cold_start(&r, 1, 40).collect();
    assert!(batches.len() > 3, "{} batches", batches.len());
    let order: Vec<String> = batches
        .iter()
        .flat_map(|b| b.messages().iter().map(|m| m.what.clone()))
        .filter(|w| w.contains("elements"))
        .collect();
    let first_entry = order.iter().position(|w| w.ends_with("-frontends") || w.ends_with("cluster-ips")).unwrap();
    let last_backend = order.iter().rposition(|w| w.ends_with("of backends")).unwrap();
    assert!(last_backend < first_entry, "{order:?}");
}

#[test]
fn swapping_fragments_gives_the_table_a_full_build_gives() {
    use crate::table::{Delta, Table};
    use std::collections::BTreeMap;
    let c = ctx();
    let ports = |eps: &[&[&str]]| -> Vec<ResolvedServicePort> {
        eps.iter().enumerate().map(|(i, e)| port(&format!("s{i}"), &format!("10.96.0.{}", i + 1), e)).collect()
    };
    let frags = |ps: &[ResolvedServicePort]| crate::fragments(Family::V4, ps, &c).collect::<BTreeMap<_, _>>();
    // s0 and s1 share an endpoint (hairpin) and an endpoint count (cluster-2).
    let before = ports(&[&["10.244.1.2", "10.244.2.2"], &["10.244.1.2", "10.244.3.2"], &["10.244.4.2"]]);
    let after = ports(&[&["10.244.1.2", "10.244.2.2", "10.244.5.2"], &["10.244.3.2"], &[]]);
    let mut t = Table::new(crate::fixed_table(Family::V4, &c), frags(&before));
    let mut d = Delta::default();
    let new = frags(&after);
    for i in 0..3 {
        let svc = ServiceName::new("ns", format!("s{i}"));
        t.swap(&svc, new.get(&svc).cloned(), &mut d);
    }
    let want = Table::new(crate::fixed_table(Family::V4, &c), new);
    assert_eq!(t.table, want.table);
    // Removing everything leaves the fixed table.
    let mut d = Delta::default();
    for i in 0..3 {
        t.swap(&ServiceName::new("ns", format!("s{i}")), None, &mut d);
    }
    assert_eq!(t.table, Table::new(crate::fixed_table(Family::V4, &c), BTreeMap::new()).table);
    assert!(!plan::delta(&t.table, &d, 1).is_empty());
}

/// A table past 64k elements is rebuilt with full nodes while `Table::new` fills it: what it
/// holds must be what the same fragments swapped in one by one give, shared elements (an
/// endpoint in two Services: hairpin) counted across the rebuilds, and taking them all out
/// again must leave the fixed part.
#[test]
fn a_table_rebuilt_while_it_grows_equals_one_swapped_together() {
    use crate::table::{Delta, Table};
    use std::collections::BTreeMap;
    let c = ctx();
    let ip = |k: u32| format!("10.{}.{}.{}", 100 + (k >> 16), (k >> 8) & 255, k & 255);
    let ports: Vec<ResolvedServicePort> = (0..9000u32)
        .map(|i| {
            // Every 100th Service shares its first endpoint with the previous one.
            let first = if i % 100 == 99 { (i - 1) * 3 } else { i * 3 };
            let eps = [ip(first), ip(i * 3 + 1), ip(i * 3 + 2)];
            let eps: Vec<&str> = eps.iter().map(String::as_str).collect();
            port(&format!("s{i}"), &format!("10.96.{}.{}", i / 250, i % 250 + 1), &eps)
        })
        .collect();
    let frags: BTreeMap<_, _> = crate::fragments(Family::V4, &ports, &c).collect();
    let built = Table::new(crate::fixed_table(Family::V4, &c), frags.clone());
    assert!(built.table.element_count() > 70_000, "{} elements", built.table.element_count());
    let mut swapped = Table::new(crate::fixed_table(Family::V4, &c), BTreeMap::new());
    let mut d = Delta::default();
    for (svc, frag) in &frags {
        swapped.swap(svc, Some(frag.clone()), &mut d);
    }
    assert_eq!(built.table, swapped.table);
    let mut built = built;
    let mut d = Delta::default();
    for svc in frags.keys() {
        built.swap(svc, None, &mut d);
    }
    assert_eq!(built.table, Table::new(crate::fixed_table(Family::V4, &c), BTreeMap::new()).table);
}

/// A prefix of length 0 is encoded as nft encodes it (`nft --debug=netlink` on
/// `ip saddr 0.0.0.0/0 return`): the whole address loaded, masked with zeros, compared with
/// zeros. A zero-length load and compare is refused by the kernel (EINVAL), which made every
/// sync of a cluster with `loadBalancerSourceRanges: [0.0.0.0/0]` fail (found by the
/// kernel-vs-fake test, `integration/tests/fake_netfilter.rs`).
#[test]
fn a_zero_length_prefix_is_masked_never_a_zero_length_compare() {
    use nftproxy_nft_wire::{CmpOp, Expr, PayloadBase};
    for (fam, net, len) in [(Family::V4, "0.0.0.0/0", 4usize), (Family::V6, "::/0", 16)] {
        let r = crate::rules::saddr_in_cidr(fam, &net.parse().unwrap(), false);
        assert_eq!(r.text, format!("{} saddr {net}", fam.word()));
        assert_eq!(
            r.exprs,
            [
                Expr::Payload { dreg: 1, base: PayloadBase::Network, offset: fam.saddr_offset(), len: len as u32 },
                Expr::Bitwise { sreg: 1, dreg: 1, mask: vec![0; len], xor: vec![0; len], spelled: false },
                Expr::Cmp { sreg: 1, op: CmpOp::Eq, data: vec![0; len] },
            ]
        );
    }
}

/// The one place that orders a transaction's messages: what a rebuild in place clears, new
/// sets, new chains, rules, elements out, elements in, doomed chains flushed then deleted, sets
/// deleted — whatever order the planner filled it in.
#[test]
fn a_transaction_orders_its_messages_as_the_kernel_needs() {
    use crate::plan::{ChainRules, Cleared, Elements, TableChange, Transaction};
    let r = table(&[port("web", "10.96.0.10", &["10.244.1.2", "10.244.2.2"])]);
    let mut t = Transaction::new(Family::V4, TableChange::Kept);
    let existing = crate::drift::Observed {
        chains: [("nat-prerouting".to_string(), 3), ("stale".to_string(), 1)].into(),
        sets: [("stale-map".to_string(), None)].into(),
        ..Default::default()
    };
    t.cleared = Some(Cleared { existing: &existing, kept_bases: vec!["nat-prerouting"], kept_sets: Default::default() });
    t.deleted_sets.push("old-set");
    t.deleted_chains.push("old-chain");
    t.added_elements.push(("backends", Elements::All(&r.elements["backends"])));
    t.deleted_elements.push(("backends", Elements::Some(r.elements["backends"].iter().take(1).collect())));
    t.rules.push(ChainRules { chain: "services", flush: true, rules: &r.chains["services"].rules });
    t.new_chains.push(("cluster-2", None));
    t.new_sets.push(&r.sets["cluster-2-frontends"]);
    let b = t.into_batch(1);
    let what: Vec<&str> = b.messages().iter().map(|m| m.what.as_str()).collect();
    let n = r.chains["services"].rules.len();
    let mut want = vec![
        "flush chain nat-prerouting",
        "flush chain stale",
        "flush set stale-map",
        "delete set stale-map",
        "delete chain stale",
        "add set cluster-2-frontends",
        "add chain cluster-2",
        "flush chain services",
    ];
    want.extend(std::iter::repeat_n("add rule to services", n));
    want.extend([
        "delete elements 0..1 of backends",
        "add elements 0..2 of backends",
        "flush chain old-chain",
        "delete chain old-chain",
        "delete set old-set",
    ]);
    assert_eq!(what, want);
}
