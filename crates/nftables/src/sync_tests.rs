//! The sync engine's decisions over the in-memory netfilter ([`crate::fake`]), without root:
//! cold start, partial syncs that build exactly what a fresh sync builds, what a refused commit
//! does, replacing a table an earlier run left, drift found and repaired (structure and the
//! element audit of large maps), and the UDP conntrack cleanup with its retry.

use std::collections::BTreeSet;
use std::fmt::Write;

use nftproxy_model::{ClusterState, ServiceName};
use proptest::prelude::*;

use crate::fake::{FakeNetfilter, wire_dump};
use crate::netfilter::Netfilter;
use crate::tests::ctx;
use crate::{Family, NftablesBackend, SyncError, TABLE};
use nftproxy_nft_wire::{BaseChain, Batch, ChainType, Hook, NfFamily};

/// `n` ClusterIP Services `svc-i` (10.96.x.y:80/TCP and :53/UDP), each with `eps` endpoints on
/// other nodes, plus `extra` as more manifest text.
fn cluster(n: u32, eps: u32, extra: &str) -> ClusterState {
    let mut y = String::new();
    for i in 0..n {
        let ip = format!("10.96.{}.{}", i / 250, i % 250 + 1);
        let _ = write!(
            y,
            "---\napiVersion: v1\nkind: Service\nmetadata: {{name: svc-{i}, namespace: ns}}\n\
             spec: {{clusterIP: {ip}, ports: [{{name: http, port: 80}}, {{name: dns, port: 53, protocol: UDP}}]}}\n\
             ---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
             metadata: {{name: svc-{i}-1, namespace: ns, labels: {{kubernetes.io/service-name: svc-{i}}}}}\n\
             addressType: IPv4\nports: [{{name: http, port: 8080}}, {{name: dns, port: 5353, protocol: UDP}}]\nendpoints:\n"
        );
        for e in 0..eps {
            let _ = writeln!(y, "- {{addresses: [10.244.{}.{}], nodeName: node-b}}", e + 1, i % 250 + 1);
        }
    }
    y.push_str(extra);
    let mut l = nftproxy_manifest::Loaded::default();
    l.add_text("test", &y);
    assert!(l.warnings.is_empty(), "{:?}", l.warnings);
    l.state
}

fn names(st: &ClusterState) -> BTreeSet<ServiceName> {
    st.services.keys().cloned().collect()
}

/// What a fresh engine on an empty netfilter programs for `st`, per family.
fn fresh(st: &ClusterState) -> [Option<String>; 2] {
    let fake = FakeNetfilter::new();
    NftablesBackend::over(fake.clone()).sync_cluster(st, &ctx()).expect("a fresh sync");
    [fake.dump(Family::V4, TABLE), fake.dump(Family::V6, TABLE)]
}

fn dumps(fake: &FakeNetfilter) -> [Option<String>; 2] {
    [fake.dump(Family::V4, TABLE), fake.dump(Family::V6, TABLE)]
}

/// The engine's own record of what it programmed is what the netfilter holds.
fn assert_mirror(b: &mut NftablesBackend<FakeNetfilter>, fake: &FakeNetfilter) {
    for fam in [Family::V4, Family::V6] {
        let want = b.programmed(fam).map(wire_dump);
        assert_eq!(fake.dump(fam, TABLE), want, "{fam:?}: what the kernel holds vs the engine's mirror");
    }
}

/// One Service added, one Service's endpoints changed, one deleted.
fn changed_cluster() -> (ClusterState, BTreeSet<ServiceName>) {
    let mut st = cluster(20, 3, "");
    let extra = cluster(21, 3, "");
    let new = ServiceName::new("ns", "svc-20");
    st.upsert_service(extra.services[&new].clone());
    for s in extra.slices_of(&new) {
        st.upsert_slice(s.clone());
    }
    // svc-3's endpoints move to other pods (as many as before: no new pick chain).
    let moved = cluster(
        0,
        0,
        "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
         metadata: {name: svc-3-1, namespace: ns, labels: {kubernetes.io/service-name: svc-3}}\n\
         addressType: IPv4\nports: [{name: http, port: 8080}, {name: dns, port: 5353, protocol: UDP}]\n\
         endpoints: [{addresses: [10.244.9.1]}, {addresses: [10.244.9.2]}, {addresses: [10.244.9.3]}]\n",
    );
    for s in moved.slices().values() {
        st.upsert_slice(s.clone());
    }
    st.remove_service(&ServiceName::new("ns", "svc-7"));
    let changed = ["svc-20", "svc-3", "svc-7"].into_iter().map(|n| ServiceName::new("ns", n)).collect();
    (st, changed)
}

#[test]
fn partial_syncs_build_what_a_fresh_sync_builds_in_one_small_transaction() {
    let fake = FakeNetfilter::new();
    let mut b = NftablesBackend::over(fake.clone());
    let before = cluster(20, 3, "");
    let r = b.sync_cluster(&before, &ctx()).unwrap();
    assert_eq!(r.full, [Family::V4, Family::V6], "nothing programmed: both families whole");
    assert_eq!(dumps(&fake), fresh(&before));
    assert_mirror(&mut b, &fake);
    let (after, changed) = changed_cluster();
    let commits = fake.commits().len();
    let r = b.sync_services(&after, &ctx(), &changed).unwrap();
    assert!(r.full.is_empty(), "a partial sync: {r:?}");
    assert_eq!(r.transactions, 1, "IPv4 only: the IPv6 table has no Service to change");
    assert_eq!(fake.commits().len(), commits + 1);
    assert!(r.messages <= 12, "proportional to three Services: {:?}", fake.commits().last());
    assert_eq!(dumps(&fake), fresh(&after));
    assert_mirror(&mut b, &fake);
}

#[test]
fn a_cold_start_is_cut_into_transactions_each_complete_in_itself() {
    let fake = FakeNetfilter::new();
    let mut b = NftablesBackend::over(fake.clone());
    b.cold_start_max_elements = 16;
    let st = cluster(40, 2, "");
    let r = b.sync_cluster(&st, &ctx()).unwrap();
    assert!(r.transactions > 8, "{r:?}");
    assert!(fake.commits().iter().all(|c| c.committed));
    assert_eq!(dumps(&fake), fresh(&st));
}

/// Two Services claim one key (the same external IP and port, neither with endpoints) and a
/// cold start in steps of one Service sends them in different transactions: the second
/// replaces the first's element (out, then in), as in a table built at once, where the last
/// Service added holds it.
#[test]
fn a_key_claimed_again_in_a_later_cold_start_step_holds_the_last_claim() {
    let claim = |name: &str, ip: &str| {
        format!(
            "---\napiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: ns}}\n\
             spec: {{clusterIP: {ip}, externalIPs: [198.51.100.2], ports: [{{port: 443}}]}}\n"
        )
    };
    let st = cluster(3, 1, &(claim("claim-a", "10.96.9.1") + &claim("claim-b", "10.96.9.2")));
    let fake = FakeNetfilter::new();
    let mut b = NftablesBackend::over(fake.clone());
    b.cold_start_max_elements = 1;
    b.sync_cluster(&st, &ctx()).unwrap();
    let dump = fake.dump(Family::V4, TABLE).unwrap();
    let held: Vec<&str> = dump.lines().filter(|l| l.trim_start().starts_with("c6336402")).collect();
    assert_eq!(held.len(), 1, "{dump}");
    assert!(held[0].ends_with("comment \"ns/claim-b\""), "{held:?}");
    assert_mirror(&mut b, &fake);
    assert_eq!(dumps(&fake), fresh(&st));
}

#[test]
fn a_refused_commit_changes_nothing_and_the_next_sync_replaces_the_table() {
    let fake = FakeNetfilter::new();
    let mut b = NftablesBackend::over(fake.clone());
    let before = cluster(20, 3, "");
    b.sync_cluster(&before, &ctx()).unwrap();
    let held = dumps(&fake);
    let (after, changed) = changed_cluster();
    fake.fail_commit(0, 2, libc::ENOMEM);
    match b.sync_services(&after, &ctx(), &changed) {
        Err(SyncError::Netlink { family, .. }) => assert_eq!(family, Family::V4),
        other => panic!("the refusal must reach the caller: {other:?}"),
    }
    assert_eq!(dumps(&fake), held, "a refused batch leaves the previous ruleset");
    assert!(b.programmed(Family::V4).is_none(), "the engine no longer claims to know IPv4");
    let r = b.sync_services(&after, &ctx(), &changed).unwrap();
    assert_eq!(r.full, [Family::V4], "after a failure: full for the family that failed");
    let last = fake.commits().pop().unwrap();
    assert_rebuilt_in_place(&last.messages, b.programmed(Family::V4).unwrap());
    assert_eq!(dumps(&fake), fresh(&after));
    assert_mirror(&mut b, &fake);
}

/// A rebuild in place: one transaction that flushes the base chains and never deletes or adds
/// them (their hooks stay registered), after which everything else is deleted and added again.
fn assert_rebuilt_in_place(messages: &[String], want: &crate::ruleset::Ruleset) {
    let bases: Vec<&String> = want.chains.iter().filter(|(_, c)| c.base.is_some()).map(|(n, _)| n).collect();
    assert!(bases.len() >= 4, "{bases:?}");
    assert!(!messages.iter().any(|m| m.starts_with("delete table")), "{:?}", &messages[..3]);
    for name in bases {
        assert!(messages.contains(&format!("flush chain {name}")), "{name} flushed");
        assert!(
            !messages.iter().any(|m| m == &format!("delete chain {name}") || m == &format!("add chain {name}")),
            "base chain {name} kept"
        );
    }
    assert!(messages.iter().any(|m| m.starts_with("delete set ")), "the other objects are replaced");
}

#[test]
fn a_table_left_by_an_earlier_run_is_replaced_atomically() {
    let fake = FakeNetfilter::new();
    NftablesBackend::over(fake.clone()).sync_cluster(&cluster(30, 2, ""), &ctx()).unwrap();
    let (after, _) = changed_cluster();
    let mut restarted = NftablesBackend::over(fake.clone());
    let commits = fake.commits().len();
    let r = restarted.sync_cluster(&after, &ctx()).unwrap();
    assert_eq!(r.transactions, 2, "one rebuild per family, never an empty table in between");
    for (c, family) in fake.commits()[commits..].iter().zip([Family::V4, Family::V6]) {
        assert_rebuilt_in_place(&c.messages, restarted.programmed(family).unwrap());
    }
    assert_eq!(dumps(&fake), fresh(&after));
    assert_mirror(&mut restarted, &fake);
}

#[test]
fn a_base_chain_left_with_another_priority_is_created_again() {
    let fake = FakeNetfilter::new();
    let st = cluster(5, 2, "");
    NftablesBackend::over(fake.clone()).sync_cluster(&st, &ctx()).unwrap();
    // An earlier version of ours hooked nat-prerouting elsewhere.
    let mut b = Batch::new(1);
    let nat = BaseChain { chain_type: ChainType::Nat, hook: Hook::Prerouting, priority: -90 };
    b.flush_chain(NfFamily::Ip, TABLE, "nat-prerouting");
    b.del_chain(NfFamily::Ip, TABLE, "nat-prerouting");
    b.add_chain(NfFamily::Ip, TABLE, "nat-prerouting", Some(&nat));
    fake.clone().commit(&b.finish()).unwrap();
    let mut restarted = NftablesBackend::over(fake.clone());
    restarted.sync_cluster(&st, &ctx()).unwrap();
    let commits = fake.commits();
    let (v4, v6) = (&commits[commits.len() - 2].messages, &commits[commits.len() - 1].messages);
    for m in ["flush chain nat-prerouting", "delete chain nat-prerouting", "add chain nat-prerouting"] {
        assert!(v4.contains(&m.to_string()), "{m}: {v4:?}");
    }
    assert!(!v6.iter().any(|m| m == "delete chain nat-prerouting"), "IPv6 kept its own");
    assert_eq!(dumps(&fake), fresh(&st));
}

/// A ClusterIP Service `sticky` (10.96.99.1:80) with ClientIP affinity of `timeout` seconds and
/// two endpoints, as manifest text for [`cluster`]'s `extra`.
fn sticky(timeout: u32) -> String {
    format!(
        "---\napiVersion: v1\nkind: Service\nmetadata: {{name: sticky, namespace: ns}}\n\
         spec: {{clusterIP: 10.96.99.1, ports: [{{name: http, port: 80}}], sessionAffinity: ClientIP,\
         sessionAffinityConfig: {{clientIP: {{timeoutSeconds: {timeout}}}}}}}\n\
         ---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
         metadata: {{name: sticky-1, namespace: ns, labels: {{kubernetes.io/service-name: sticky}}}}\n\
         addressType: IPv4\nports: [{{name: http, port: 8080}}]\nendpoints:\n\
         - {{addresses: [10.244.9.1], nodeName: node-b}}\n- {{addresses: [10.244.9.2], nodeName: node-b}}\n"
    )
}

fn affinity_sets(fake: &FakeNetfilter) -> Vec<String> {
    let dump = fake.dump(Family::V4, TABLE).unwrap();
    dump.lines()
        .filter_map(|l| l.trim().strip_prefix("set affinity-"))
        .map(|l| format!("affinity-{}", l.split(' ').next().unwrap()))
        .collect()
}

#[test]
fn a_rebuild_in_place_keeps_the_clients_an_affinity_set_remembers() {
    let fake = FakeNetfilter::new();
    let st = cluster(5, 2, &sticky(600));
    NftablesBackend::over(fake.clone()).sync_cluster(&st, &ctx()).unwrap();
    let sets = affinity_sets(&fake);
    assert_eq!(sets.len(), 2, "one per endpoint");
    // A client's packet went to the first endpoint; then the proxy restarts.
    fake.fill_by_packet(Family::V4, &sets[0], &[10, 0, 9, 9]);
    let remembered = fake.dump(Family::V4, TABLE).unwrap();
    let mut restarted = NftablesBackend::over(fake.clone());
    restarted.sync_cluster(&st, &ctx()).unwrap();
    let commits = fake.commits();
    let v4 = &commits[commits.len() - 2].messages;
    assert_rebuilt_in_place(v4, restarted.programmed(Family::V4).unwrap());
    for set in &sets {
        for m in ["flush set", "delete set", "add set"] {
            assert!(!v4.contains(&format!("{m} {set}")), "{m} {set}: {v4:?}");
        }
    }
    // Everything else as programmed before (the mirror holds no packet-filled elements, so this
    // whole table, not assert_mirror, is the check).
    assert_eq!(fake.dump(Family::V4, TABLE).unwrap(), remembered, "the client is still remembered");
    // A new timeout is the same set declared again (its name, like kube-proxy's, has no
    // timeout): added again, which updates the timeout and keeps the client, on a restart's
    // rebuild in place and on an incremental sync alike, as kube-proxy's `tx.Add` of the set.
    let with_timeout = |s: u32| remembered.replace("timeout 600000ms", &format!("timeout {}ms", s * 1000));
    let mut restarted = NftablesBackend::over(fake.clone());
    restarted.sync_cluster(&cluster(5, 2, &sticky(900)), &ctx()).unwrap();
    let commits = fake.commits();
    let v4 = &commits[commits.len() - 2].messages;
    assert_rebuilt_in_place(v4, restarted.programmed(Family::V4).unwrap());
    for set in &sets {
        assert!(v4.contains(&format!("add set {set}")), "{set}: {v4:?}");
        for m in ["flush set", "delete set"] {
            assert!(!v4.contains(&format!("{m} {set}")), "{m} {set}: {v4:?}");
        }
    }
    assert_eq!(fake.dump(Family::V4, TABLE).unwrap(), with_timeout(900), "updated, the client still remembered");
    restarted.sync_cluster(&cluster(5, 2, &sticky(300)), &ctx()).unwrap();
    let commits = fake.commits();
    let want: Vec<String> = sets.iter().map(|s| format!("add set {s}")).collect();
    assert_eq!(commits[commits.len() - 1].messages, want, "an incremental sync: the sets declared again");
    assert_eq!(fake.dump(Family::V4, TABLE).unwrap(), with_timeout(300));
    // Without affinity the sets go, and what they remembered with them.
    let plain = cluster(5, 2, &sticky(300).replace("sessionAffinity: ClientIP,", ""));
    restarted.sync_cluster(&plain, &ctx()).unwrap();
    assert!(affinity_sets(&fake).is_empty());
    assert_eq!(dumps(&fake), fresh(&plain));
}

#[test]
fn drift_in_the_structure_is_found_and_repaired_by_a_full_sync() {
    let mut fake = FakeNetfilter::new();
    let mut b = NftablesBackend::over(fake.clone());
    let st = cluster(10, 2, "");
    b.sync_cluster(&st, &ctx()).unwrap();
    assert_eq!(b.verify(true).unwrap(), None, "nobody else committed");
    assert_eq!(b.verify(true).unwrap(), None);
    // Someone flushes one of our chains.
    let mut other = nftproxy_nft_wire::Batch::new(9000);
    other.flush_chain(Family::V4.nfproto(), TABLE, "services");
    fake.commit(&other.finish()).unwrap();
    let diff = b.verify(false).unwrap().expect("found");
    assert!(diff.starts_with("chain services has 0 rules"), "{diff}");
    let r = b.sync_services(&st, &ctx(), &BTreeSet::new()).unwrap();
    assert_eq!(r.full, [Family::V4, Family::V6], "a difference makes the next sync full");
    assert_eq!(dumps(&fake), fresh(&st));
    // A failed read is an error, not "no drift".
    fake.commit(&{
        let mut b = nftproxy_nft_wire::Batch::new(9100);
        b.add_table(Family::V4.nfproto(), "someone-else", None);
        b.finish()
    })
    .unwrap();
    fake.fail_reads(Some(libc::EIO));
    assert!(b.verify(false).is_err());
}

/// Once a structural check found our tables intact, a check without `deep` reads nothing more
/// while only we commit (a generation query: the daemon runs one before every sync); another
/// program's commit makes the next one read the structure again, and find what it changed.
#[test]
fn a_structure_seen_intact_is_read_again_only_after_someone_else_commits() {
    let mut fake = FakeNetfilter::new();
    let mut b = NftablesBackend::over(fake.clone());
    b.sync_cluster(&cluster(10, 2, ""), &ctx()).unwrap();
    let read = fake.observations();
    assert_eq!(b.verify(false).unwrap(), None);
    assert!(fake.observations() > read, "nothing seen since the cold start: the structure is read");
    for n in [11, 12, 11] {
        b.sync_cluster(&cluster(n, 2, ""), &ctx()).unwrap();
        let read = fake.observations();
        assert_eq!(b.verify(false).unwrap(), None);
        assert_eq!(fake.observations(), read, "only our commits since: nothing read");
    }
    let mut other = nftproxy_nft_wire::Batch::new(9000);
    other.flush_chain(Family::V4.nfproto(), TABLE, "services");
    fake.commit(&other.finish()).unwrap();
    let diff = b.verify(false).unwrap().expect("found");
    assert!(diff.starts_with("chain services has 0 rules"), "{diff}");
}

#[test]
fn an_element_replaced_in_a_large_map_is_found_by_the_audit_and_nothing_in_an_intact_one() {
    let mut fake = FakeNetfilter::new();
    let mut b = NftablesBackend::over(fake.clone());
    let st = cluster(1100, 1, "");
    b.sync_cluster(&st, &ctx()).unwrap();
    let v4 = b.programmed(Family::V4).unwrap().clone();
    let (set, elements) = v4
        .elements
        .iter()
        .filter(|(n, e)| e.len() > crate::drift::COUNTED_SET_MAX && v4.sets[*n].spec.data.is_some())
        .max_by_key(|(_, e)| e.len())
        .expect("a map larger than the counted ones");
    // Another program commits elsewhere: the audit looks at every element, finds nothing.
    let mut elsewhere = nftproxy_nft_wire::Batch::new(9000);
    elsewhere.add_table(Family::V4.nfproto(), "someone-else", None);
    fake.commit(&elsewhere.finish()).unwrap();
    assert_eq!(b.verify(true).unwrap(), None);
    let mut steps = 0;
    while b.audit_pending() {
        assert_eq!(b.audit_step().unwrap(), None);
        steps += 1;
    }
    assert!(steps >= elements.len() / crate::drift::AUDIT_WINDOW - 1, "{steps} steps");
    assert_eq!(b.verify(true).unwrap(), None, "the generation counts as seen");
    assert!(!b.audit_pending());
    // One element near the end replaced with other data in one outside transaction: counts
    // stay the same, only the audit can see it.
    let (key, value) = elements.iter().nth(elements.len() - 3).unwrap();
    let mut wire = value.wire(key);
    let mut other = nftproxy_nft_wire::Batch::new(9100);
    other.del_elems(Family::V4.nfproto(), TABLE, set, std::slice::from_ref(&wire));
    wire.data = match wire.data {
        Some(nftproxy_nft_wire::ElemData::Value(mut v)) => {
            v[0] ^= 1;
            Some(nftproxy_nft_wire::ElemData::Value(v))
        }
        Some(nftproxy_nft_wire::ElemData::Verdict(_)) => {
            Some(nftproxy_nft_wire::ElemData::Verdict(nftproxy_nft_wire::Verdict::Drop))
        }
        None => unreachable!("a map"),
    };
    other.add_elems(Family::V4.nfproto(), TABLE, set, None, &[wire]);
    fake.commit(&other.finish()).unwrap();
    let mut found = b.verify(true).unwrap();
    while found.is_none() && b.audit_pending() {
        found = b.audit_step().unwrap();
    }
    let diff = found.expect("the audit reaches every element");
    assert!(diff.contains(&format!("set {set}: an element holds")), "{diff}");
    b.sync_services(&st, &ctx(), &BTreeSet::new()).unwrap();
    assert_eq!(dumps(&fake), fresh(&st), "repaired");
}

#[test]
fn stale_udp_conntrack_entries_go_and_a_failed_cleanup_is_retried() {
    use crate::conntrack::CtEntry;
    let fake = FakeNetfilter::new();
    let mut b = NftablesBackend::over(fake.clone());
    let st = cluster(3, 2, "");
    let flow = |ep: &str| CtEntry {
        proto: 17,
        orig_src: "10.244.9.9".parse().unwrap(),
        orig_dst: "10.96.0.1".parse().unwrap(),
        orig_sport: 40000,
        orig_dport: 53,
        reply_src: ep.parse().unwrap(),
        reply_sport: 5353,
    };
    fake.add_conntrack(flow("10.244.1.1"));
    fake.add_conntrack(flow("10.244.7.1"));
    fake.fail_conntrack(Some(libc::ENOBUFS));
    let r = b.sync_cluster(&st, &ctx()).unwrap();
    assert!(r.conntrack_error.is_some(), "the rules are in, the cleanup failed");
    assert_eq!(fake.conntrack_entries().len(), 2);
    fake.fail_conntrack(None);
    // A sync that touches no UDP Service still retries the failed cleanup.
    let r = b.sync_services(&st, &ctx(), &BTreeSet::new()).unwrap();
    assert_eq!((r.conntrack_deleted, r.conntrack_error), (1, None));
    assert_eq!(fake.conntrack_entries(), [flow("10.244.1.1")], "the serving endpoint's flow stays");
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// Any cluster, then any other: the partial sync of every Service of either is accepted by
    /// the netfilter (no dangling reference, no object removed while in use) and leaves what a
    /// fresh sync of the second leaves.
    #[test]
    fn prop_any_change_synced_partially_equals_a_fresh_sync(
        a in nftproxy_model::arbitrary::cluster(),
        b in nftproxy_model::arbitrary::cluster(),
        ctx in nftproxy_model::arbitrary::node_context(),
    ) {
        let (a, b) = (a.state(), b.state());
        let fake = FakeNetfilter::new();
        let mut engine = NftablesBackend::over(fake.clone());
        engine.sync_cluster(&a, &ctx).unwrap();
        let changed: BTreeSet<ServiceName> = names(&a).union(&names(&b)).cloned().collect();
        let r = engine.sync_services(&b, &ctx, &changed).unwrap();
        prop_assert!(r.full.is_empty());
        let f2 = FakeNetfilter::new();
        NftablesBackend::over(f2.clone()).sync_cluster(&b, &ctx).unwrap();
        for fam in [Family::V4, Family::V6] {
            prop_assert_eq!(fake.dump(fam, TABLE), f2.dump(fam, TABLE));
        }
    }

    /// A cold start in steps of any size, down to one Service each, is accepted step by step
    /// (every transaction refers only to what exists) and leaves what the table built at once
    /// holds, which is also the engine's mirror — Services that claim one key included (the
    /// last one added holds it, whichever step sent the first).
    #[test]
    fn prop_a_cold_start_in_steps_leaves_the_table_built_at_once(
        a in nftproxy_model::arbitrary::cluster(),
        ctx in nftproxy_model::arbitrary::node_context(),
        max in 1usize..24,
    ) {
        let st = a.state();
        let fake = FakeNetfilter::new();
        let mut engine = NftablesBackend::over(fake.clone());
        engine.cold_start_max_elements = max;
        let r = engine.sync_cluster(&st, &ctx).unwrap();
        prop_assert!(fake.commits().iter().all(|c| c.committed));
        for fam in [Family::V4, Family::V6] {
            let at_once = crate::table::Table::new(
                crate::fixed_table(fam, &ctx),
                crate::fragments_of_state(fam, &st, &ctx),
            );
            prop_assert_eq!(fake.dump(fam, TABLE), Some(wire_dump(&at_once.table)), "{:?}", fam);
            prop_assert_eq!(engine.programmed(fam).map(wire_dump), Some(wire_dump(&at_once.table)));
        }
        prop_assert_eq!(r.transactions, fake.commits().len());
    }
}
