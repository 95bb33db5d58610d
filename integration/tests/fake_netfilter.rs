//! The kernel judges the fake: every batch goes to both the kernel (in a throwaway namespace) and
//! the in-memory [`FakeNetfilter`] the sync engine's unit tests run on, and both must give the
//! same answer — committed, or refused at the same message with the same errno — and then hold
//! the same: tables, chains with their rule counts, sets with their element counts, and each
//! element's data asked for by key. First batches written to provoke every refusal the fake
//! claims to model, then the sync engine itself driving both through random clusters.

use nftproxy_integration::Topology;
use nftproxy_model::ServiceName;
use nftproxy_nft_wire::consts::NFT_SET_EVAL;
use nftproxy_nft_wire::{Batch, Elem, ElemData, Expr, FinishedBatch, NfFamily, Verdict};
use nftproxy_nftables::conntrack::{ConntrackTable, CtEntry};
use nftproxy_nftables::drift::Observed;
use nftproxy_nftables::fake::FakeNetfilter;
use nftproxy_nftables::fake::fixtures::{affinity_set, goto, value, value_map, verdict_map};
use nftproxy_nftables::netlink::{CommitStats, NetlinkError, NftSocket};
use nftproxy_nftables::{Family, Netfilter, NftablesBackend, TABLE};
use proptest::strategy::{Strategy, ValueTree};
use proptest::test_runner::{Config, TestRunner};

/// The kernel and the fake side by side; every operation on both, answers compared.
struct Both {
    kernel: NftSocket,
    fake: FakeNetfilter,
    /// Kernel generation minus fake generation (the namespace's starts anywhere).
    offset: u32,
    commits: usize,
    refused: usize,
}

fn outcome(r: &Result<CommitStats, NetlinkError>) -> Result<(), (String, i32)> {
    match r {
        Ok(_) => Ok(()),
        Err(NetlinkError::Rejected(e)) => Err((e[0].what.clone(), e[0].errno)),
        Err(e) => panic!("not a kernel verdict: {e}"),
    }
}

impl Both {
    fn new(kernel: NftSocket) -> Both {
        let mut b = Both { kernel, fake: FakeNetfilter::new(), offset: 0, commits: 0, refused: 0 };
        b.offset = b.kernel.generation().unwrap().wrapping_sub(b.fake.current_generation());
        b
    }

    /// Both hold the same for our table of each family.
    fn same_state(&mut self) {
        for fam in [Family::V4, Family::V6] {
            let k = Netfilter::observe(&mut self.kernel, fam, &|_| true).unwrap();
            let f = self.fake.observe(fam, &|_| true).unwrap();
            assert_eq!(k, f, "{fam:?}: kernel vs fake");
        }
    }

    /// Both answer the same for these keys of `set`.
    fn same_elements(&mut self, fam: Family, set: &str, keys: &[&[u8]]) {
        let k = self.kernel.elements_by_key(fam, set, keys).map_err(|e| e.raw_os_error());
        let f = self.fake.elements_by_key(fam, set, keys).map_err(|e| e.raw_os_error());
        let data =
            |r: Result<Vec<Elem>, Option<i32>>| r.map(|v| v.into_iter().map(|e| (e.key, e.data)).collect::<Vec<_>>());
        assert_eq!(data(k), data(f), "elements {keys:?} of {set}");
    }
}

impl ConntrackTable for Both {
    fn dump(&mut self, family: NfFamily) -> std::io::Result<Vec<CtEntry>> {
        ConntrackTable::dump(&mut self.kernel, family)
    }
    fn delete(&mut self, e: &CtEntry) -> std::io::Result<()> {
        ConntrackTable::delete(&mut self.kernel, e)
    }
}

impl Netfilter for Both {
    fn commit(&mut self, batch: &FinishedBatch) -> Result<CommitStats, NetlinkError> {
        let k = Netfilter::commit(&mut self.kernel, batch);
        let f = self.fake.commit(batch);
        if let (Err(NetlinkError::Rejected(e)), Ok(_)) = (&k, &f) {
            let d = nftproxy_nft_wire::decode_batch(&batch.bytes).unwrap();
            let i = batch.msgs.iter().position(|m| m.what == e[0].what).unwrap();
            eprintln!("REFUSED by the kernel only: {:#?}", d.messages[i]);
        }
        assert_eq!(
            outcome(&k),
            outcome(&f),
            "kernel vs fake on {:?}",
            batch.msgs.iter().map(|m| &m.what).collect::<Vec<_>>()
        );
        self.commits += 1;
        self.refused += usize::from(k.is_err());
        k
    }
    fn generation(&mut self) -> std::io::Result<u32> {
        let k = Netfilter::generation(&mut self.kernel)?;
        assert_eq!(k.wrapping_sub(self.offset), self.fake.generation()?, "generations moved alike");
        Ok(k)
    }
    fn table_exists(&mut self, family: Family, name: &str) -> std::io::Result<bool> {
        let k = Netfilter::table_exists(&mut self.kernel, family, name)?;
        assert_eq!(k, self.fake.table_exists(family, name)?);
        Ok(k)
    }
    fn observe(&mut self, family: Family, count: &dyn Fn(&str) -> bool) -> std::io::Result<Option<Observed>> {
        let k = Netfilter::observe(&mut self.kernel, family, count)?;
        assert_eq!(k, self.fake.observe(family, count)?);
        Ok(k)
    }
    fn elements_by_key(&mut self, family: Family, set: &str, keys: &[&[u8]]) -> std::io::Result<Vec<Elem>> {
        self.same_elements(family, set, keys);
        self.kernel.elements_by_key(family, set, keys)
    }
}

const V4: NfFamily = NfFamily::Ip;

fn lookup(set: &str, dreg: Option<u32>) -> Expr {
    Expr::Lookup { sreg: 1, dreg, set: set.into(), set_id: None, invert: false }
}

fn load_daddr() -> Expr {
    Expr::Payload { dreg: 1, base: nftproxy_nft_wire::PayloadBase::Network, offset: 16, len: 4 }
}

/// One batch, sent to both through `f` with consecutive sequence numbers.
fn send(both: &mut Both, seq: &mut u32, f: impl FnOnce(&mut Batch)) -> Result<(), (String, i32)> {
    let mut b = Batch::new(*seq);
    f(&mut b);
    let fin = b.finish();
    *seq = fin.next_seq;
    let r = outcome(&Netfilter::commit(both, &fin));
    both.same_state();
    r
}

#[test]
fn kernel_and_fake_refuse_the_same_batches_alike() {
    let mut topo = Topology::new();
    let ns = topo.netns("fake");
    let mut both = Both::new(ns.run(|| NftSocket::open().expect("netlink socket")));
    let mut seq = 1;
    let t = TABLE;
    // The base: table, chains a and b, a verdict map looked up by a rule, a value map.
    send(&mut both, &mut seq, |b| {
        b.add_table(V4, t, Some("rules for kube-nftproxy"));
        b.add_set(V4, t, &verdict_map("m"), 1);
        b.add_set(V4, t, &value_map("v"), 2);
        b.add_chain(V4, t, "a", None);
        b.add_chain(V4, t, "b", None);
        b.add_rule(V4, t, "a", &[load_daddr(), lookup("m", Some(0))], None);
        b.add_rule(V4, t, "b", &[Expr::Immediate(Verdict::Accept)], Some("b's rule"));
        b.add_elems(V4, t, "m", None, &[goto([10, 0, 0, 1], "b")]);
        b.add_elems(V4, t, "v", None, &[value([10, 0, 0, 1], [1, 2, 3, 4])]);
        b.add_set(V4, t, &affinity_set("s", 600), 3);
        b.add_elems(V4, t, "s", None, &[Elem { key: vec![10, 0, 0, 1], data: None, timeout_ms: None, comment: None }]);
    })
    .expect("the base is valid");
    // (what, the batch, the errno both must refuse it with).
    type Case = (&'static str, Box<dyn FnOnce(&mut Batch)>, Option<i32>);
    let cases: Vec<Case> = vec![
        (
            "a rule jumping to a missing chain",
            Box::new(|b| b.add_rule(V4, t, "a", &[Expr::Immediate(Verdict::Jump("nowhere".into()))], None)),
            Some(libc::ENOENT),
        ),
        (
            "a rule in a missing chain",
            Box::new(|b| b.add_rule(V4, t, "nowhere", &[Expr::Immediate(Verdict::Accept)], None)),
            Some(libc::ENOENT),
        ),
        (
            "a lookup of a missing set",
            Box::new(|b| b.add_rule(V4, t, "a", &[load_daddr(), lookup("nowhere", None)], None)),
            Some(libc::ENOENT),
        ),
        ("a chain in a missing table", Box::new(|b| b.add_chain(V4, "nowhere", "c", None)), Some(libc::ENOENT)),
        ("a chain a map element goes to", Box::new(|b| b.del_chain(V4, t, "b")), Some(libc::EBUSY)),
        ("a set a rule looks up", Box::new(|b| b.del_set(V4, t, "m")), Some(libc::EBUSY)),
        (
            "an element of a missing set",
            Box::new(|b| b.add_elems(V4, t, "nowhere", None, &[goto([1, 1, 1, 1], "b")])),
            Some(libc::ENOENT),
        ),
        (
            "an element going to a missing chain",
            Box::new(|b| b.add_elems(V4, t, "m", None, &[goto([1, 1, 1, 1], "nowhere")])),
            Some(libc::ENOENT),
        ),
        (
            "an element with a short key",
            Box::new(|b| b.add_elems(V4, t, "m", None, &[Elem { key: vec![1, 1, 1], ..goto([0; 4], "b") }])),
            Some(libc::EINVAL),
        ),
        (
            "value data in a verdict map",
            Box::new(|b| b.add_elems(V4, t, "m", None, &[value([1, 1, 1, 1], [1, 2, 3, 4])])),
            Some(libc::EINVAL),
        ),
        (
            "short value data",
            Box::new(|b| {
                b.add_elems(
                    V4,
                    t,
                    "v",
                    None,
                    &[Elem { data: Some(ElemData::Value(vec![1, 2])), ..value([1, 1, 1, 1], [0; 4]) }],
                )
            }),
            Some(libc::EINVAL),
        ),
        (
            "a verdict in a value map",
            Box::new(|b| b.add_elems(V4, t, "v", None, &[goto([1, 1, 1, 1], "b")])),
            Some(libc::EINVAL),
        ),
        (
            "a key again with other data",
            Box::new(|b| b.add_elems(V4, t, "m", None, &[goto([10, 0, 0, 1], "a")])),
            Some(nftproxy_nftables::fake::ELEMENT_CLASH),
        ),
        (
            "a value key again with other data",
            Box::new(|b| b.add_elems(V4, t, "v", None, &[value([10, 0, 0, 1], [9, 9, 9, 9])])),
            Some(nftproxy_nftables::fake::ELEMENT_CLASH),
        ),
        (
            "a key again with the same data",
            Box::new(|b| b.add_elems(V4, t, "m", None, &[goto([10, 0, 0, 1], "b")])),
            None,
        ),
        (
            "deleting a missing element",
            Box::new(|b| b.del_elems(V4, t, "m", &[goto([9, 9, 9, 9], "b")])),
            Some(libc::ENOENT),
        ),
        ("deleting a missing chain", Box::new(|b| b.del_chain(V4, t, "nowhere")), Some(libc::ENOENT)),
        ("deleting a missing table", Box::new(|b| b.del_table(NfFamily::Ip6, t)), Some(libc::ENOENT)),
        ("a set again with another spec", Box::new(|b| b.add_set(V4, t, &value_map("m"), 9)), Some(libc::EEXIST)),
        ("a set again, the same", Box::new(|b| b.add_set(V4, t, &verdict_map("m"), 9)), None),
        // What declaring a ClientIP affinity set with a new timeout does (kube-proxy's tx.Add of
        // it, and ours): updated in place since Linux 6.10; the observed timeouts are compared.
        ("a set again with another timeout", Box::new(|b| b.add_set(V4, t, &affinity_set("s", 900), 9)), None),
        (
            "a set again with other flags",
            Box::new(|b| {
                let spec = affinity_set("s", 900);
                b.add_set(V4, t, &nftproxy_nft_wire::SetSpec { flags: spec.flags & !NFT_SET_EVAL, ..spec }, 9)
            }),
            Some(libc::EEXIST),
        ),
        ("a chain again", Box::new(|b| b.add_chain(V4, t, "a", None)), None),
        (
            "a later message refused: the earlier ones are not kept",
            Box::new(|b| {
                b.add_chain(V4, t, "c", None);
                b.add_elems(V4, t, "m", None, &[goto([10, 0, 0, 2], "c")]);
                b.del_chain(V4, t, "c");
            }),
            Some(libc::EBUSY),
        ),
        (
            "a chain with its own rules, nothing jumping to it",
            Box::new(|b| {
                b.add_chain(V4, t, "d", None);
                b.add_rule(V4, t, "d", &[Expr::Immediate(Verdict::Accept)], None);
                b.del_chain(V4, t, "d");
            }),
            None,
        ),
        (
            "element out, chain out, in one transaction",
            Box::new(|b| {
                b.del_elems(V4, t, "m", &[goto([10, 0, 0, 1], "b")]);
                b.del_chain(V4, t, "b");
            }),
            None,
        ),
        (
            "rules flushed, then their set",
            Box::new(|b| {
                b.flush_chain(V4, t, "a");
                b.del_set(V4, t, "m");
            }),
            None,
        ),
        ("flushing a set", Box::new(|b| b.flush_set(V4, t, "v")), None),
        ("flushing an empty set", Box::new(|b| b.flush_set(V4, t, "v")), None),
        ("flushing an empty chain", Box::new(|b| b.flush_chain(V4, t, "a")), None),
        ("a table again", Box::new(|b| b.add_table(V4, t, None)), None),
    ];
    for (what, f, want) in cases {
        let got = send(&mut both, &mut seq, f);
        assert_eq!(
            got.as_ref().err().map(|e| e.1),
            want,
            "{what}: kernel and fake agree, but not as expected: {got:?}"
        );
        both.same_elements(Family::V4, "v", &[&[10, 0, 0, 1]]);
        both.same_elements(Family::V4, "s", &[&[10, 0, 0, 1]]);
        // A batch that changed nothing leaves the generation, in both.
        both.generation().unwrap();
    }
    // The timeout set's element outlived its set's update (both agree, and it is there).
    let timeouts = both.fake.observe(Family::V4, &|_| true).unwrap().unwrap().filled_by_packets;
    assert_eq!(timeouts.iter().map(|s| s.timeout_ms).collect::<Vec<_>>(), [Some(900_000)]);
    assert_eq!(both.fake.elements_by_key(Family::V4, "s", &[&[10, 0, 0, 1]]).unwrap().len(), 1);
    // Everything goes with the table.
    send(&mut both, &mut seq, |b| b.del_table(V4, t)).unwrap();
    assert_eq!(both.generation().unwrap().wrapping_sub(both.offset), both.fake.current_generation());
    drop(topo);
}

/// The sync engine over both: random clusters, cold start, partial syncs, another program's
/// changes found by the drift check and repaired, cleanup. Every batch the engine sends gets the
/// same verdict from both, and both hold the same after each.
#[test]
fn the_sync_engine_drives_kernel_and_fake_alike() {
    let mut topo = Topology::new();
    let ns = topo.netns("fake");
    let both = Both::new(ns.run(|| NftSocket::open().expect("netlink socket")));
    let mut engine = NftablesBackend::over(both);
    let mut runner = TestRunner::new_with_rng(
        Config::default(),
        proptest::test_runner::TestRng::deterministic_rng(proptest::test_runner::RngAlgorithm::ChaCha),
    );
    let clusters = nftproxy_model::arbitrary::cluster();
    let ctx = nftproxy_model::arbitrary::node_context().new_tree(&mut runner).unwrap().current();
    let mut prev = None::<nftproxy_model::ClusterState>;
    for round in 0..24 {
        let st = clusters.new_tree(&mut runner).unwrap().current().state();
        match &prev {
            None => {
                engine.sync_cluster(&st, &ctx).unwrap();
            }
            Some(p) => {
                let changed: std::collections::BTreeSet<ServiceName> =
                    p.services.keys().chain(st.services.keys()).cloned().collect();
                let r = engine.sync_services(&st, &ctx, &changed).unwrap();
                assert!(r.full.is_empty(), "round {round}: partial");
            }
        }
        engine.netfilter().same_state();
        if round % 6 == 5 {
            // Another program flushes our dispatch chain: found, and repaired by a full sync.
            let mut b = Batch::new(100_000 + round);
            b.flush_chain(V4, TABLE, "services");
            let fin = b.finish();
            let _ = Netfilter::commit(engine.netfilter(), &fin);
            let diff = engine.verify(true).unwrap();
            assert!(
                diff.is_some() || engine.programmed(Family::V4).is_some_and(|r| r.chains["services"].rules.is_empty()),
                "round {round}"
            );
            engine.sync_services(&st, &ctx, &Default::default()).unwrap();
            engine.netfilter().same_state();
            assert_eq!(engine.verify(true).unwrap(), None, "round {round}: repaired");
        }
        prev = Some(st);
    }
    engine.cleanup().unwrap();
    engine.netfilter().same_state();
    let both = engine.netfilter();
    eprintln!("{} batches, {} refused, every one alike in kernel and fake", both.commits, both.refused);
    assert_eq!(both.refused, 0, "the engine never sends a batch the kernel refuses");
    assert!(both.commits > 24);
    drop(topo);
}
