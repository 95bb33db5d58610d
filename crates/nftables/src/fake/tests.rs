//! The fake's own rules: what it refuses, with which errno, and that a refused batch changes
//! nothing. (The kernel agrees: `integration/tests/fake_netfilter.rs`.)

use nftproxy_nft_wire::{Batch, Elem, ElemData, Expr, NfFamily, Verdict};

use super::fixtures::{goto, verdict_map};
use super::*;

const V4: NfFamily = NfFamily::Ip;

/// A table with chains `a` and `b`, a verdict map `m` whose one element goes to `b`, and a rule in
/// `a` that looks `m` up.
fn base() -> Batch {
    let mut b = Batch::new(1);
    b.add_table(V4, TABLE, Some(TABLE_COMMENT));
    b.add_set(V4, TABLE, &verdict_map("m"), 1);
    b.add_chain(V4, TABLE, "a", None);
    b.add_chain(V4, TABLE, "b", None);
    let lookup = Expr::Lookup { sreg: 1, dreg: Some(0), set: "m".into(), set_id: Some(1), invert: false };
    b.add_rule(V4, TABLE, "a", &[lookup], None);
    b.add_elems(V4, TABLE, "m", None, &[goto([10, 0, 0, 1], "b")]);
    b
}

fn errno(r: Result<CommitStats, NetlinkError>) -> (String, i32) {
    match r {
        Err(NetlinkError::Rejected(e)) => (e[0].what.clone(), e[0].errno),
        other => panic!("expected a refusal, got {other:?}"),
    }
}

fn fake_with_base() -> FakeNetfilter {
    let mut f = FakeNetfilter::new();
    f.commit(&base().finish()).expect("the base batch is valid");
    f
}

#[test]
fn a_refused_batch_changes_nothing_and_names_the_message() {
    let mut f = fake_with_base();
    let before = f.dump(Family::V4, TABLE);
    let mut b = Batch::new(100);
    b.add_chain(V4, TABLE, "c", None);
    b.add_rule(V4, TABLE, "c", &[Expr::Immediate(Verdict::Jump("nowhere".into()))], None);
    assert_eq!(errno(f.commit(&b.finish())), ("add rule to c".into(), libc::ENOENT));
    assert_eq!(f.dump(Family::V4, TABLE), before, "chain c was not kept");
    assert_eq!(f.generation().unwrap(), 1, "only the base batch was committed");
    assert_eq!(f.commits().iter().map(|c| c.committed).collect::<Vec<_>>(), [true, false]);
}

#[test]
fn what_is_used_cannot_go_until_its_users_are_gone() {
    let mut f = fake_with_base();
    let del_chain = |first| {
        let mut b = Batch::new(first);
        b.del_chain(V4, TABLE, "b");
        b.finish()
    };
    assert_eq!(errno(f.commit(&del_chain(10))).1, libc::EBUSY, "a map element goes to b");
    let mut b = Batch::new(20);
    b.del_elems(V4, TABLE, "m", &[goto([10, 0, 0, 1], "b")]);
    b.del_chain(V4, TABLE, "b");
    f.commit(&b.finish()).expect("element first, then the chain");
    let mut b = Batch::new(30);
    b.del_set(V4, TABLE, "m");
    assert_eq!(errno(f.commit(&b.finish())).1, libc::EBUSY, "a rule looks m up");
    let mut b = Batch::new(40);
    b.flush_chain(V4, TABLE, "a");
    b.del_set(V4, TABLE, "m");
    b.del_chain(V4, TABLE, "a");
    f.commit(&b.finish()).expect("rules first, then the set");
    let mut b = Batch::new(50);
    b.del_table(V4, TABLE);
    f.commit(&b.finish()).unwrap();
    assert_eq!(f.dump(Family::V4, TABLE), None);
    let mut b = Batch::new(60);
    b.del_table(V4, TABLE);
    assert_eq!(errno(f.commit(&b.finish())).1, libc::ENOENT);
}

#[test]
fn elements_must_fit_their_set() {
    let mut f = fake_with_base();
    let add = |first, e: Elem| {
        let mut b = Batch::new(first);
        b.add_elems(V4, TABLE, "m", None, &[e]);
        b.finish()
    };
    let short = Elem { key: vec![10, 0, 0], ..goto([0; 4], "b") };
    assert_eq!(errno(f.commit(&add(10, short))).1, libc::EINVAL, "key length");
    let value = Elem { data: Some(ElemData::Value(vec![1, 2, 3, 4])), ..goto([10, 0, 0, 2], "b") };
    assert_eq!(errno(f.commit(&add(20, value))).1, libc::EINVAL, "value data in a verdict map");
    assert_eq!(errno(f.commit(&add(30, goto([10, 0, 0, 2], "nowhere")))).1, libc::ENOENT, "dangling goto");
    assert_eq!(errno(f.commit(&add(40, goto([10, 0, 0, 1], "a")))).1, ELEMENT_CLASH, "same key, other data");
    f.commit(&add(50, goto([10, 0, 0, 1], "b"))).expect("the same element again is fine");
    let mut b = Batch::new(60);
    b.del_elems(V4, TABLE, "m", &[goto([10, 9, 9, 9], "b")]);
    assert_eq!(errno(f.commit(&b.finish())).1, libc::ENOENT, "deleting what is not there");
    let mut b = Batch::new(70);
    b.del_elems(V4, TABLE, "m", &[goto([10, 0, 0, 1], "b")]);
    b.add_elems(V4, TABLE, "m", None, &[goto([10, 0, 0, 1], "a")]);
    f.commit(&b.finish()).expect("other data: deleted and added again in one transaction");
    let got = f.elements_by_key(Family::V4, "m", &[&[10, 0, 0, 1]]).unwrap();
    assert_eq!(got[0].data, Some(ElemData::Verdict(Verdict::Goto("a".into()))));
    let missing = f.elements_by_key(Family::V4, "m", &[&[10, 0, 0, 1], &[1, 1, 1, 1]]).unwrap_err();
    assert_eq!(missing.raw_os_error(), Some(libc::ENOENT));
}

#[test]
fn planned_failures_and_read_errors_happen_when_asked() {
    let mut f = FakeNetfilter::new();
    f.fail_commit(1, 3, libc::ENOMEM);
    f.commit(&base().finish()).expect("the first commit is not the planned one");
    let mut b = Batch::new(10);
    b.add_chain(V4, TABLE, "c", None);
    b.add_chain(V4, TABLE, "d", None);
    assert_eq!(errno(f.commit(&b.finish())), ("add chain d".into(), libc::ENOMEM), "clamped to the last message");
    f.fail_reads(Some(libc::EIO));
    assert_eq!(f.generation().unwrap_err().raw_os_error(), Some(libc::EIO));
    assert!(f.observe(Family::V4, &|_| true).is_err());
    f.fail_reads(None);
    let obs = f.observe(Family::V4, &|_| true).unwrap().unwrap();
    assert_eq!(obs.chains.get("a"), Some(&1));
    assert_eq!(obs.sets.get("m"), Some(&Some(1)));
    assert!(!f.table_exists(Family::V6, TABLE).unwrap());
}
