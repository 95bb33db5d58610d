//! Desired state → batches. Pure: the differences between what we programmed last and what we
//! want become the messages of one atomic transaction; a cold start is split into several, each
//! complete in itself.

use std::collections::BTreeMap;

use nftproxy_nft_wire::{Batch, Elem};

use crate::ruleset::{ElemValue, Key, Ruleset, TABLE, TABLE_COMMENT};
use crate::table::Delta;

fn schema(b: &mut Batch, r: &Ruleset) {
    let fam = r.family.nfproto();
    for (i, decl) in r.sets.values().enumerate() {
        b.add_set(fam, TABLE, &decl.spec, i as u32 + 1);
    }
    for (name, c) in &r.chains {
        b.add_chain(fam, TABLE, name, c.base.as_ref());
    }
    for (name, c) in &r.chains {
        for rule in c.rules.iter() {
            b.add_rule(fam, TABLE, name, &rule.exprs, rule.comment.as_deref());
        }
    }
}

/// Every element as (set, elements) runs: backend maps first (stage 0), then the maps that
/// lead to them (stage 1), cut so that no run holds more than `max` elements. Lazy: a run is
/// encoded into the batch before the next one is built, so wire forms never all exist at once.
fn staged_elements(r: &Ruleset, max: usize) -> impl Iterator<Item = (&str, Vec<Elem>)> + '_ {
    let mut sets: Vec<_> = r.sets.values().collect();
    sets.sort_by_key(|d| d.stage);
    sets.into_iter().flat_map(move |d| {
        let name = d.spec.name.as_str();
        let mut it = r.elements[name].iter().peekable();
        std::iter::from_fn(move || {
            it.peek()?;
            Some((name, it.by_ref().take(max).map(|(k, v)| v.wire(k)).collect()))
        })
    })
}

/// Elements per run when nothing else bounds it (an atomic replace): only limits memory.
const RUN: usize = 4096;

/// Replaces the table in one transaction (creating it if missing): what was there before stays
/// in force until the kernel commits the new one, so no packet sees a half-built ruleset.
pub fn replace(r: &Ruleset, first_seq: u32) -> Batch {
    let fam = r.family.nfproto();
    let mut b = Batch::new(first_seq);
    b.add_table(fam, TABLE, None);
    b.del_table(fam, TABLE);
    b.add_table(fam, TABLE, Some(TABLE_COMMENT));
    schema(&mut b, r);
    for (set, elems) in staged_elements(r, RUN) {
        b.add_elems(fam, TABLE, set, None, &elems);
    }
    b
}

/// A cold start (no table yet) in transactions of at most `max_elements` elements each: the
/// first creates the table with all chains and rules; endpoint maps are filled before the maps
/// that lead to them, so every transaction leaves a consistent ruleset in which each service is
/// either fully programmed or not yet present. Holding the nftables mutex briefly many times keeps
/// other users of nftables on the node responsive.
///
/// Lazy: each transaction is encoded when the caller asks for it, after the previous one was
/// sent, so only one is in memory (all of them at once were ~4 MiB at 10,000 Services × 3).
pub fn cold_start(r: &Ruleset, first_seq: u32, max_elements: usize) -> impl Iterator<Item = Batch> + '_ {
    let fam = r.family.nfproto();
    let mut first = Batch::new(first_seq);
    first.add_table(fam, TABLE, Some(TABLE_COMMENT));
    schema(&mut first, r);
    // Fill transactions run by run, never beyond `max_elements` each.
    let max = max_elements.max(1);
    let mut runs = staged_elements(r, max).peekable();
    let mut next = Some(first);
    std::iter::from_fn(move || {
        let mut b = next.take()?;
        let mut in_batch = 0;
        while let Some((_, elems)) = runs.peek() {
            if in_batch + elems.len() > max && in_batch > 0 {
                next = Some(Batch::new(b.seq_after()));
                return Some(b);
            }
            let (set, elems) = runs.next().expect("peeked");
            in_batch += elems.len();
            b.add_elems(fam, TABLE, set, None, &elems);
        }
        Some(b)
    })
}

/// Only the differences between two states of the same table, as one transaction. Order
/// matters to the kernel: chains exist before elements and rules that jump to them, and
/// elements that jump to a chain are gone before it is deleted.
pub fn incremental(prev: &Ruleset, next: &Ruleset, first_seq: u32) -> Batch {
    let fam = next.family.nfproto();
    let mut b = Batch::new(first_seq);
    for (i, (name, decl)) in next.sets.iter().enumerate() {
        if !prev.sets.contains_key(name) {
            b.add_set(fam, TABLE, &decl.spec, i as u32 + 1);
        }
    }
    for (name, c) in &next.chains {
        if !prev.chains.contains_key(name) {
            b.add_chain(fam, TABLE, name, c.base.as_ref());
        }
    }
    for (name, c) in &next.chains {
        match prev.chains.get(name) {
            Some(p) if p.rules == c.rules => continue,
            Some(_) => b.flush_chain(fam, TABLE, name),
            None => {}
        }
        for rule in c.rules.iter() {
            b.add_rule(fam, TABLE, name, &rule.exprs, rule.comment.as_deref());
        }
    }
    let empty = BTreeMap::new();
    let mut adds: Vec<(&str, Vec<Elem>)> = Vec::new();
    for name in next.sets.keys() {
        let old = prev.elements.get(name).unwrap_or(&empty);
        let new = &next.elements[name];
        let (del, add) = element_diff(old, new);
        if !del.is_empty() {
            b.del_elems(fam, TABLE, name, &del);
        }
        if !add.is_empty() {
            adds.push((name, add));
        }
    }
    for (name, add) in adds {
        b.add_elems(fam, TABLE, name, None, &add);
    }
    let gone: Vec<&str> = prev.chains.keys().filter(|n| !next.chains.contains_key(*n)).map(String::as_str).collect();
    delete_chains(&mut b, fam, &gone);
    for name in prev.sets.keys() {
        if !next.sets.contains_key(name) {
            b.del_set(fam, TABLE, name);
        }
    }
    b
}

/// Deletes chains that nothing jumps to any more: flushed first, so that jumps between the
/// doomed chains themselves (`service-…` → `endpoint-…`) never make a delete fail.
fn delete_chains(b: &mut Batch, fam: u8, names: &[&str]) {
    for name in names {
        b.flush_chain(fam, TABLE, name);
    }
    for name in names {
        b.del_chain(fam, TABLE, name);
    }
}

/// The messages for what a fragment swap touched (see [`crate::table`]): proportional to the
/// changed Services, whatever the size of the table.
pub fn delta(table: &Ruleset, d: &Delta, first_seq: u32) -> Batch {
    let fam = table.family.nfproto();
    let mut b = Batch::new(first_seq);
    for (i, (name, before)) in d.sets.iter().enumerate() {
        if let (None, Some(decl)) = (before, table.sets.get(name)) {
            b.add_set(fam, TABLE, &decl.spec, i as u32 + 1);
        }
    }
    for (name, before) in &d.chains {
        if let (None, Some(c)) = (before, table.chains.get(name)) {
            b.add_chain(fam, TABLE, name, c.base.as_ref());
        }
    }
    for (name, before) in &d.chains {
        let Some(now) = table.chains.get(name) else {
            continue;
        };
        match before {
            Some(old) if old.rules == now.rules => continue,
            Some(_) => b.flush_chain(fam, TABLE, name),
            None => {}
        }
        for rule in now.rules.iter() {
            b.add_rule(fam, TABLE, name, &rule.exprs, rule.comment.as_deref());
        }
    }
    let mut dels: BTreeMap<&str, Vec<Elem>> = BTreeMap::new();
    let mut adds: BTreeMap<&str, Vec<Elem>> = BTreeMap::new();
    for ((set, key), before) in &d.elements {
        let now = table.elements.get(set).and_then(|e| e.get(key));
        if before.as_ref() == now {
            continue;
        }
        if let Some(v) = before {
            // A set that is itself going away takes its elements with it.
            if table.sets.contains_key(set) {
                dels.entry(set).or_default().push(v.wire(key));
            }
        }
        if let Some(v) = now {
            adds.entry(set).or_default().push(v.wire(key));
        }
    }
    for (set, e) in &dels {
        b.del_elems(fam, TABLE, set, e);
    }
    for (set, e) in &adds {
        b.add_elems(fam, TABLE, set, None, e);
    }
    let gone: Vec<&str> = d.chains.keys().filter(|n| !table.chains.contains_key(*n)).map(String::as_str).collect();
    delete_chains(&mut b, fam, &gone);
    for name in d.sets.keys() {
        if !table.sets.contains_key(name) {
            b.del_set(fam, TABLE, name);
        }
    }
    b
}

/// (to delete, to add): changed values are deleted and added again, since the kernel refuses to
/// overwrite an element's data.
fn element_diff(old: &BTreeMap<Key, ElemValue>, new: &BTreeMap<Key, ElemValue>) -> (Vec<Elem>, Vec<Elem>) {
    let del = old.iter().filter(|(k, v)| new.get(*k) != Some(*v)).map(|(k, v)| v.wire(k)).collect();
    let add = new.iter().filter(|(k, v)| old.get(*k) != Some(*v)).map(|(k, v)| v.wire(k)).collect();
    (del, add)
}

/// Deletes one table: ours (cleanup), or kube-proxy's when taking over from it.
pub fn delete(family: crate::Family, table: &str, first_seq: u32) -> Batch {
    let mut b = Batch::new(first_seq);
    b.del_table(family.nfproto(), table);
    b
}
