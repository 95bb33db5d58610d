//! Desired state → batches. Pure: the differences between what we programmed last and what we
//! want become the messages of one atomic transaction; a cold start is split into several, each
//! complete in itself.

use std::collections::BTreeMap;

use nftproxy_nft_wire::{Batch, Elem};

use crate::ruleset::{ElemValue, Key, Ruleset, TABLE, TABLE_COMMENT};

fn schema(b: &mut Batch, r: &Ruleset) {
    let fam = r.family.nfproto();
    for (i, decl) in r.sets.values().enumerate() {
        b.add_set(fam, TABLE, &decl.spec, i as u32 + 1);
    }
    for (name, c) in &r.chains {
        b.add_chain(fam, TABLE, name, c.base.as_ref());
    }
    for (name, c) in &r.chains {
        for rule in &c.rules {
            b.add_rule(fam, TABLE, name, &rule.exprs, rule.comment.as_deref());
        }
    }
}

/// Every element, backend maps first (stage 0), then the maps that lead to them (stage 1).
fn staged_elements(r: &Ruleset) -> Vec<(&str, Elem)> {
    let mut sets: Vec<_> = r.sets.values().collect();
    sets.sort_by_key(|d| d.stage);
    sets.into_iter()
        .flat_map(|d| {
            let name = d.spec.name.as_str();
            r.elements[name].iter().map(move |(k, v)| (name, v.wire(k)))
        })
        .collect()
}

fn add_grouped(b: &mut Batch, fam: u8, elems: &[(&str, Elem)]) {
    let mut i = 0;
    while i < elems.len() {
        let set = elems[i].0;
        let run: Vec<Elem> = elems[i..]
            .iter()
            .take_while(|(s, _)| *s == set)
            .map(|(_, e)| e.clone())
            .collect();
        i += run.len();
        b.add_elems(fam, TABLE, set, None, &run);
    }
}

/// Replaces the table in one transaction (creating it if missing): what was there before stays
/// in force until the kernel commits the new one, so no packet sees a half-built ruleset.
pub fn replace(r: &Ruleset, first_seq: u32) -> Batch {
    let fam = r.family.nfproto();
    let mut b = Batch::new(first_seq);
    b.add_table(fam, TABLE, None);
    b.del_table(fam, TABLE);
    b.add_table(fam, TABLE, Some(TABLE_COMMENT));
    schema(&mut b, r);
    add_grouped(&mut b, fam, &staged_elements(r));
    b
}

/// A cold start (no table yet) in transactions of at most `max_elements` elements each: the
/// first creates the table with all chains and rules; endpoint maps are filled before the maps
/// that lead to them, so every transaction leaves a consistent ruleset in which each service is
/// either fully programmed or not yet present. Holding the nftables mutex briefly many times keeps
/// other users of nftables on the node responsive.
pub fn cold_start(r: &Ruleset, first_seq: u32, max_elements: usize) -> Vec<Batch> {
    let fam = r.family.nfproto();
    let mut b = Batch::new(first_seq);
    b.add_table(fam, TABLE, Some(TABLE_COMMENT));
    schema(&mut b, r);
    let elems = staged_elements(r);
    let mut out = Vec::new();
    let mut chunks = elems.chunks(max_elements.max(1));
    if let Some(c) = chunks.next() {
        add_grouped(&mut b, fam, c);
    }
    let mut seq = first_seq + b.messages().len() as u32 + 2;
    out.push(b);
    for c in chunks {
        let mut b = Batch::new(seq);
        add_grouped(&mut b, fam, c);
        seq += b.messages().len() as u32 + 2;
        out.push(b);
    }
    out
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
        for rule in &c.rules {
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
    // Alphabetical order deletes `*-local-*` chains before the `*-shortcut-*` chains they jump to.
    for name in prev.chains.keys() {
        if !next.chains.contains_key(name) {
            b.del_chain(fam, TABLE, name);
        }
    }
    for name in prev.sets.keys() {
        if !next.sets.contains_key(name) {
            b.del_set(fam, TABLE, name);
        }
    }
    b
}

/// (to delete, to add): changed values are deleted and added again, since the kernel refuses to
/// overwrite an element's data.
fn element_diff(
    old: &BTreeMap<Key, ElemValue>,
    new: &BTreeMap<Key, ElemValue>,
) -> (Vec<Elem>, Vec<Elem>) {
    let del = old
        .iter()
        .filter(|(k, v)| new.get(*k) != Some(*v))
        .map(|(k, v)| v.wire(k))
        .collect();
    let add = new
        .iter()
        .filter(|(k, v)| old.get(*k) != Some(*v))
        .map(|(k, v)| v.wire(k))
        .collect();
    (del, add)
}

/// Deletes our table (and nothing else).
pub fn delete(family: crate::Family, first_seq: u32) -> Batch {
    let mut b = Batch::new(first_seq);
    b.del_table(family.nfproto(), TABLE);
    b
}
