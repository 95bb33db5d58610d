//! The proxy loop's decisions over the in-memory netfilter, without root: the first sync waits
//! for every list and is full, later ones are partial; a refused sync keeps its changes, counts a
//! failure and the next one is full; drift found by another program's commit is repaired in the
//! same sync and counted; the element audit of large maps runs in steps between syncs; the
//! take-over of other proxies' leftovers runs once, after the first successful sync. The kernel
//! runs the same loop in `crates/kube-nftproxy/tests/run.rs` and `faults.rs`.

use std::fmt::Write;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use nftproxy_model::{ClusterState, ListedKind, SourceEvent};
use nftproxy_nftables::fake::FakeNetfilter;
use nftproxy_nftables::{Family, Netfilter, NftablesBackend, TABLE};

use crate::config::Settings;
use crate::daemon::Proxy;
use crate::migrate::{Migration, Ours};

fn settings() -> Settings {
    Settings {
        node_ips: vec!["192.168.0.2".parse().unwrap()],
        min_sync_period: Duration::ZERO,
        metrics_bind_address: None,
        healthz_bind_address: None,
        ..Settings::default()
    }
}

fn no_leftovers(_: Ours) -> Migration {
    Migration::default()
}

/// `n` ClusterIP Services with `eps` endpoints each.
fn cluster(n: u32, eps: u32) -> ClusterState {
    let mut y = String::new();
    for i in 0..n {
        let _ = write!(
            y,
            "---\napiVersion: v1\nkind: Service\nmetadata: {{name: svc-{i}, namespace: ns}}\n\
             spec: {{clusterIP: 10.96.{}.{}, ports: [{{name: http, port: 80}}]}}\n\
             ---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
             metadata: {{name: svc-{i}-1, namespace: ns, labels: {{kubernetes.io/service-name: svc-{i}}}}}\n\
             addressType: IPv4\nports: [{{name: http, port: 8080}}]\nendpoints:\n",
            i / 250,
            i % 250 + 1
        );
        for e in 0..eps {
            let _ = writeln!(y, "- {{addresses: [10.244.{}.{}], nodeName: node-b}}", e + 1, i % 250 + 1);
        }
    }
    let mut l = nftproxy_manifest::Loaded::default();
    l.add_text("test", &y);
    l.state
}

/// What the sources say at start: every list, and no Node object.
fn listed(proxy: &mut Proxy<FakeNetfilter>, st: &ClusterState) {
    let services = st.services.values().cloned().map(SourceEvent::ServiceApplied);
    let slices = st.slices().values().cloned().map(SourceEvent::SliceApplied);
    for e in SourceEvent::list(ListedKind::Services, services)
        .into_iter()
        .chain(SourceEvent::list(ListedKind::EndpointSlices, slices))
    {
        proxy.event(e);
    }
    assert!(proxy.next_sync().is_none(), "no sync before the Node's watch has answered too");
    proxy.event(SourceEvent::Node { node: None, eligible: true });
}

/// What a fresh engine programs for `st` on this proxy's node, IPv4.
fn fresh(proxy: &Proxy<FakeNetfilter>, st: &ClusterState) -> Option<String> {
    let fake = FakeNetfilter::new();
    NftablesBackend::over(fake.clone()).sync_cluster(st, &proxy.context()).unwrap();
    fake.dump(Family::V4, TABLE)
}

/// A proxy over a fresh fake netfilter, every list given and the first sync done.
async fn first_synced(services: u32, eps: u32) -> (FakeNetfilter, Proxy<FakeNetfilter>, ClusterState) {
    let fake = FakeNetfilter::new();
    let mut proxy = Proxy::over(settings(), "node-a".into(), fake.clone(), no_leftovers);
    let st = cluster(services, eps);
    listed(&mut proxy, &st);
    proxy.sync().await;
    (fake, proxy, st)
}

fn count(h: &prometheus::HistogramVec) -> u64 {
    h.with_label_values(&["IPv4"]).get_sample_count()
}

static TAKE_OVERS: AtomicUsize = AtomicUsize::new(0);

fn counted_take_over(ours: Ours) -> Migration {
    assert_eq!(ours, Ours::Nftables);
    TAKE_OVERS.fetch_add(1, Ordering::SeqCst);
    Migration { removed: vec!["nftables table ip kube-proxy (kube-proxy)".into()], errors: vec![] }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_first_sync_is_full_after_every_list_and_later_ones_are_partial() {
    let fake = FakeNetfilter::new();
    let mut proxy = Proxy::over(settings(), "node-a".into(), fake.clone(), counted_take_over);
    let st = cluster(20, 2);
    listed(&mut proxy, &st);
    assert!(proxy.next_sync().is_some());
    proxy.sync().await;
    assert_eq!(fake.dump(Family::V4, TABLE), fresh(&proxy, &st));
    assert_eq!((count(&proxy.metrics.sync_full_duration), count(&proxy.metrics.sync_partial_duration)), (1, 0));
    proxy.migration_done().await;
    assert_eq!(TAKE_OVERS.load(Ordering::SeqCst), 1, "leftovers are removed after the first sync");
    assert_eq!(proxy.metrics.services.with_label_values(&["IPv4"]).get(), 20);

    // One Service more: a partial sync of one small transaction.
    let more = cluster(21, 2);
    let new = nftproxy_model::ServiceName::new("ns", "svc-20");
    proxy.event(SourceEvent::ServiceApplied(more.services[&new].clone()));
    for s in more.slices_of(&new) {
        proxy.event(SourceEvent::SliceApplied(s.clone()));
    }
    let commits = fake.commits().len();
    proxy.sync().await;
    assert_eq!((count(&proxy.metrics.sync_full_duration), count(&proxy.metrics.sync_partial_duration)), (1, 1));
    assert_eq!(fake.commits().len(), commits + 1, "one transaction (IPv4)");
    assert!(fake.commits()[commits].messages.len() <= 4, "{:?}", fake.commits()[commits]);
    assert_eq!(fake.dump(Family::V4, TABLE), fresh(&proxy, &more));
    proxy.migration_done().await;
    assert_eq!(TAKE_OVERS.load(Ordering::SeqCst), 1, "once only");
    assert!(proxy.health.healthy());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_refused_sync_keeps_its_changes_is_counted_and_the_next_one_is_full() {
    let (fake, mut proxy, st) = first_synced(10, 3).await;
    let held = fake.dump(Family::V4, TABLE);
    let gone = nftproxy_model::ServiceName::new("ns", "svc-4");
    proxy.event(SourceEvent::ServiceDeleted(gone.clone()));
    fake.fail_commit(0, 0, libc::ENOMEM);
    proxy.sync().await;
    assert_eq!(proxy.metrics.nftables_sync_failures.with_label_values(&["IPv4"]).get(), 1);
    assert_eq!(fake.dump(Family::V4, TABLE), held, "the previous rules stay");
    assert!(proxy.tracker.pending(), "the change waits for the next sync");
    assert!(proxy.next_sync().is_some());
    let full = count(&proxy.metrics.sync_full_duration);
    proxy.sync().await;
    assert_eq!(count(&proxy.metrics.sync_full_duration), full + 1, "a full sync follows a failure");
    let mut after = st.clone();
    after.remove_service(&gone);
    assert_eq!(fake.dump(Family::V4, TABLE), fresh(&proxy, &after));
    assert!(!proxy.tracker.pending());
}

#[tokio::test(flavor = "multi_thread")]
async fn drift_is_repaired_in_the_same_sync_and_counted() {
    let (mut fake, mut proxy, st) = first_synced(10, 2).await;
    let mut other = nftproxy_nft_wire::Batch::new(5000);
    other.flush_chain(Family::V4.nfproto(), TABLE, "services");
    fake.commit(&other.finish()).unwrap();
    proxy.sync().await;
    assert_eq!(proxy.metrics.drift_repairs.get(), 1);
    assert_eq!(fake.dump(Family::V4, TABLE), fresh(&proxy, &st));
    // A drift check that cannot read the kernel makes the next sync full too, and repairs
    // nothing that was not broken.
    fake.fail_reads(Some(libc::EIO));
    fake.commit(&{
        let mut b = nftproxy_nft_wire::Batch::new(6000);
        b.add_table(Family::V4.nfproto(), "someone-else", None);
        b.finish()
    })
    .unwrap();
    let full = count(&proxy.metrics.sync_full_duration);
    proxy.sync().await;
    fake.fail_reads(None);
    proxy.sync().await;
    assert_eq!(count(&proxy.metrics.sync_full_duration), full + 1);
    assert_eq!(proxy.metrics.drift_repairs.get(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_element_audit_of_large_maps_runs_in_steps_between_syncs_and_outlives_our_commits() {
    let mut fake = FakeNetfilter::new();
    // The deep check runs at most once per sync period: a short one, so that every sync has it.
    let settings = Settings { sync_period: Duration::from_millis(1), ..settings() };
    let mut proxy = Proxy::over(settings, "node-a".into(), fake.clone(), no_leftovers);
    let st = cluster(1500, 1);
    listed(&mut proxy, &st);
    proxy.sync().await;
    assert!(proxy.next_audit().is_none(), "nobody else committed: no audit");
    fake.commit(&{
        let mut b = nftproxy_nft_wire::Batch::new(7000);
        b.add_table(Family::V4.nfproto(), "someone-else", None);
        b.finish()
    })
    .unwrap();
    tokio::time::sleep(Duration::from_millis(2)).await;
    proxy.sync().await;
    assert!(proxy.next_audit().is_some(), "another program committed: the audit begins");
    proxy.audit_step();
    // A new Service between two steps: our own commit does not end the pass.
    let more = cluster(1501, 1);
    let new = nftproxy_model::ServiceName::new("ns", "svc-1500");
    proxy.event(SourceEvent::ServiceApplied(more.services[&new].clone()));
    for s in more.slices_of(&new) {
        proxy.event(SourceEvent::SliceApplied(s.clone()));
    }
    proxy.sync().await;
    assert_eq!(count(&proxy.metrics.sync_partial_duration), 2, "the periodic sync and the +1 Service");
    assert!(proxy.next_audit().is_some(), "our commit did not end the pass");
    let mut steps = 0;
    while proxy.next_audit().is_some() {
        proxy.audit_step();
        steps += 1;
        assert!(steps < 100, "the audit ends");
    }
    // 1,500 elements in windows of 256: six windows, two in the syncs' deep checks, one step
    // before the +1 Service.
    assert!(steps >= 3, "{steps} steps");
    assert_eq!(proxy.metrics.drift_repairs.get(), 0, "nothing was changed");
    // The generation counts as seen: the next deep check starts no audit.
    tokio::time::sleep(Duration::from_millis(2)).await;
    proxy.sync().await;
    assert!(proxy.next_audit().is_none());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_context_change_is_a_full_sync_that_keeps_the_base_chains_hooked() {
    let (fake, mut proxy, st) = first_synced(10, 2).await;
    let commits = fake.commits().len();
    // The ServiceCIDR list answers after the first sync (it does not hold the first sync back).
    proxy.event(SourceEvent::ServiceCidrApplied(("kubernetes".into(), vec!["10.96.0.0/16".parse().unwrap()])));
    assert!(proxy.next_sync().is_some());
    let full = count(&proxy.metrics.sync_full_duration);
    proxy.sync().await;
    assert_eq!(count(&proxy.metrics.sync_full_duration), full + 1, "kube-proxy's full sync after a context change");
    // Everything sent again in one transaction per family (as kube-proxy's full sync does; a
    // diff against the mirror would need a second whole table in memory), but the table and
    // its base chains are flushed, not deleted: a base chain added again is hooked anew at the
    // commit, and a packet between the new hook and the old one went un-NATed.
    let sent = &fake.commits()[commits..];
    assert_eq!(sent.len(), 2, "one transaction per family");
    for m in sent.iter().flat_map(|c| &c.messages) {
        assert!(!m.starts_with("delete table"), "{m}");
        for base in ["nat-prerouting", "nat-output", "nat-postrouting"] {
            assert_ne!(m, &format!("delete chain {base}"));
            assert_ne!(m, &format!("add chain {base}"));
        }
    }
    assert!(sent[0].messages.contains(&"flush chain nat-prerouting".to_string()));
    assert_eq!(fake.dump(Family::V4, TABLE), fresh(&proxy, &st));
}
