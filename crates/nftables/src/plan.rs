//! Desired state → batches. Pure: the differences between what we programmed last and what we
//! want become one atomic [`Transaction`] (typed: new sets and chains, rewritten chains,
//! elements out and in, chains and sets gone), which alone decides the order of the messages;
//! a cold start is split into several, each complete in itself.

use std::collections::{BTreeMap, BTreeSet};

use nftproxy_nft_wire::{BaseChain, Batch, ElemRef};

use crate::drift::Observed;
use crate::family::Family;
use crate::ruleset::{ElemValue, Key, Rule, Ruleset, SetDecl, SetElements, TABLE, TABLE_COMMENT};
use crate::table::{Delta, Grown};

/// The elements of one set that a transaction adds or deletes: all of them, or some. Encoded
/// lazily, [`RUN`] at a time, so that wire forms never all exist at once.
pub enum Elements<'a> {
    All(&'a SetElements),
    Some(Vec<(&'a Key, &'a ElemValue)>),
}

impl Elements<'_> {
    fn len(&self) -> usize {
        match self {
            Elements::All(m) => m.len(),
            Elements::Some(v) => v.len(),
        }
    }
    fn iter(&self) -> Box<dyn Iterator<Item = (&Key, &ElemValue)> + '_> {
        match self {
            Elements::All(m) => Box::new(m.iter()),
            Elements::Some(v) => Box::new(v.iter().copied()),
        }
    }
}

/// What happens to our table itself in a transaction.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum TableChange {
    /// It exists and stays: only what the other fields name changes.
    #[default]
    Kept,
    /// It does not exist yet: created with its comment.
    Created,
}

/// A chain's rules as a transaction writes them: all of them, after removing the old ones when
/// the chain existed.
pub struct ChainRules<'a> {
    pub chain: &'a str,
    pub flush: bool,
    pub rules: &'a [Rule],
}

/// One transaction on our table of one family, by kind of change: what the planner decides.
/// [`Transaction::into_batch`] is the one place that knows the order the kernel needs.
pub struct Transaction<'a> {
    pub family: Family,
    pub table: TableChange,
    /// Sets added, or added again as declared now: an add of an existing set with another
    /// timeout updates the timeout and keeps the elements (Linux 6.10 and later; earlier
    /// kernels accept it and keep the old timeout, for kube-proxy's sets too). Any other
    /// difference the kernel refuses (EEXIST); nothing else of ours changes under one name.
    pub new_sets: Vec<&'a SetDecl>,
    pub new_chains: Vec<(&'a str, Option<&'a BaseChain>)>,
    pub rules: Vec<ChainRules<'a>>,
    pub deleted_elements: Vec<(&'a str, Elements<'a>)>,
    pub added_elements: Vec<(&'a str, Elements<'a>)>,
    pub deleted_chains: Vec<&'a str>,
    pub deleted_sets: Vec<&'a str>,
    /// What the table held, emptied first (a rebuild in place, [`rebuild_in_place`]).
    pub cleared: Option<Cleared<'a>>,
}

/// An existing table emptied at the start of a transaction: every chain flushed, every set
/// flushed and deleted but the sets packets fill that we declare the same but perhaps for their
/// timeout (the clients ClientIP affinity remembers), every chain deleted but the base chains
/// kept (hooked as we want them).
pub struct Cleared<'a> {
    pub existing: &'a Observed,
    pub kept_bases: Vec<&'a str>,
    pub kept_sets: BTreeSet<&'a str>,
}

impl<'a> Transaction<'a> {
    pub fn new(family: Family, table: TableChange) -> Transaction<'a> {
        Transaction {
            family,
            table,
            new_sets: Vec::new(),
            new_chains: Vec::new(),
            rules: Vec::new(),
            deleted_elements: Vec::new(),
            added_elements: Vec::new(),
            deleted_chains: Vec::new(),
            deleted_sets: Vec::new(),
            cleared: None,
        }
    }

    /// Every set, chain and rule of `r`, as new (a created or replaced table).
    fn schema(mut self, r: &'a Ruleset) -> Transaction<'a> {
        self.new_sets = r.sets.values().collect();
        self.new_chains = r.chains.iter().map(|(n, c)| (n.as_str(), c.base.as_ref())).collect();
        self.rules = r.chains.iter().map(|(n, c)| ChainRules { chain: n, flush: false, rules: &c.rules }).collect();
        self
    }

    /// The batch, in the order the kernel needs: the table; sets and chains before the rules
    /// and elements that use them; an element's old version out before its new one goes in
    /// (the kernel refuses to overwrite an element's data); elements that jump to a chain and
    /// rules that use a set gone before the chain (flushed first, so that jumps between the
    /// doomed chains themselves never make a delete fail) and the set are deleted.
    pub fn into_batch(self, first_seq: u32) -> Batch {
        let fam = self.family.nfproto();
        let mut b = Batch::new(first_seq);
        match self.table {
            TableChange::Kept => {}
            TableChange::Created => b.add_table(fam, TABLE, Some(TABLE_COMMENT)),
        }
        if let Some(Cleared { existing: old, kept_bases, kept_sets }) = &self.cleared {
            // Rules first (they use sets and jump to chains), then the elements (a verdict
            // map's elements hold references to chains), then the sets and chains themselves.
            for name in old.chains.keys() {
                b.flush_chain(fam, TABLE, name);
            }
            for name in old.sets.keys().filter(|n| !kept_sets.contains(n.as_str())) {
                b.flush_set(fam, TABLE, name);
                b.del_set(fam, TABLE, name);
            }
            for name in old.chains.keys().filter(|n| !kept_bases.contains(&n.as_str())) {
                b.del_chain(fam, TABLE, name);
            }
        }
        for (i, decl) in self.new_sets.iter().enumerate() {
            b.add_set(fam, TABLE, &decl.spec, i as u32 + 1);
        }
        for (name, base) in &self.new_chains {
            b.add_chain(fam, TABLE, name, *base);
        }
        for c in &self.rules {
            if c.flush {
                b.flush_chain(fam, TABLE, c.chain);
            }
            for rule in c.rules {
                b.add_rule(fam, TABLE, c.chain, &rule.exprs, rule.comment.as_deref());
            }
        }
        for (set, elems) in &self.deleted_elements {
            encode_runs(elems, |run| b.del_elem_refs(fam, TABLE, set, run));
        }
        for (set, elems) in &self.added_elements {
            encode_runs(elems, |run| b.add_elem_refs(fam, TABLE, set, None, run));
        }
        for name in &self.deleted_chains {
            b.flush_chain(fam, TABLE, name);
        }
        for name in &self.deleted_chains {
            b.del_chain(fam, TABLE, name);
        }
        for name in &self.deleted_sets {
            b.del_set(fam, TABLE, name);
        }
        b
    }
}

/// Elements per encoded run: only bounds the wire forms alive at once.
const RUN: usize = 4096;

fn encode_runs(elems: &Elements, mut put: impl FnMut(&[ElemRef])) {
    let mut it = elems.iter().peekable();
    while it.peek().is_some() {
        let run: Vec<ElemRef> = it.by_ref().take(RUN).map(|(k, v)| v.wire_ref(k)).collect();
        put(&run);
    }
}

/// Every element as (set, elements) runs of at most `max`: backend maps first (stage 0), then
/// the maps that lead to them (stage 1).
fn staged_runs(r: &Ruleset, max: usize) -> impl Iterator<Item = (&str, Elements<'_>)> + '_ {
    let mut sets: Vec<_> = r.sets.values().collect();
    sets.sort_by_key(|d| d.stage);
    sets.into_iter().flat_map(move |d| {
        let name = d.spec.name.as_str();
        let mut it = r.elements[name].iter().peekable();
        std::iter::from_fn(move || {
            it.peek()?;
            Some((name, Elements::Some(it.by_ref().take(max).collect())))
        })
    })
}

/// Replaces what our existing table holds in one transaction without deleting its base chains
/// when they are as we want them: they are flushed and refilled, everything else is deleted and
/// added again, but for the sets packets fill (ClientIP affinity) that we declare the same but
/// perhaps for their timeout: they stay, with the clients they remember (a new timeout is
/// updated in place). Deleting a base chain and adding it back (as deleting the whole table and adding
/// it back did until 49078ed) unhooks the old chain and hooks the new one at the commit; a packet that passed the
/// new hook just before the commit (the new chain still empty) and the old one just after (its
/// rules gone) was not NATed by either, and the ClusterIP check then rejected it: one refused
/// connection in 1,103 in a take-over test under traffic, on a full sync a second after the
/// first. kube-proxy's nftables mode likewise recreates its base chains once at start, and
/// then flushes them on every full sync.
pub fn rebuild_in_place<'a>(r: &'a Ruleset, existing: &'a Observed, first_seq: u32) -> Batch {
    let mut t = Transaction::new(r.family, TableChange::Kept).schema(r);
    let kept_bases: Vec<&str> = existing
        .bases
        .iter()
        .filter(|(name, base)| r.chains.get(*name).and_then(|c| c.base.as_ref()) == Some(*base))
        .map(|(name, _)| name.as_str())
        .collect();
    t.new_chains.retain(|(name, _)| !kept_bases.contains(name));
    // kube-proxy never deletes an affinity set it still uses (it adds it again, unflushed, on
    // every sync and at start): a client keeps its endpoint across a restart or a full sync.
    // A kept set is added again only when its timeout changed: that add updates it.
    let kept: BTreeMap<&str, Option<u64>> = existing
        .filled_by_packets
        .iter()
        .filter(|set| r.sets.get(&set.name).is_some_and(|d| set.kept_as(&d.spec)))
        .map(|set| (set.name.as_str(), set.timeout_ms))
        .collect();
    t.new_sets.retain(|d| kept.get(d.spec.name.as_str()).is_none_or(|timeout| *timeout != d.spec.timeout_ms));
    let kept_sets: BTreeSet<&str> = kept.into_keys().collect();
    t.cleared = Some(Cleared { existing, kept_bases, kept_sets });
    // Endpoint maps before the maps that lead to them, as in a cold start.
    let mut sets: Vec<_> = r.sets.values().collect();
    sets.sort_by_key(|d| d.stage);
    t.added_elements =
        sets.into_iter().map(|d| (d.spec.name.as_str(), Elements::All(&r.elements[&d.spec.name]))).collect();
    t.into_batch(first_seq)
}

/// A cold start (no table yet) in transactions of at most `max_elements` elements each: the
/// first creates the table with all chains and rules; endpoint maps are filled before the maps
/// that lead to them, so every transaction leaves a consistent ruleset in which each service is
/// either fully programmed or not yet present. Holding the nftables mutex briefly many times keeps
/// other users of nftables on the node responsive.
///
/// Lazy: each transaction is encoded when the caller asks for it, so only the few the caller
/// holds are in memory (all of them at once were ~4 MiB at 10,000 Services × 3). A sync's cold
/// start uses this for the fixed part only; its Services go in by [`grown`] steps.
pub fn cold_start(r: &Ruleset, first_seq: u32, max_elements: usize) -> impl Iterator<Item = Batch> + '_ {
    let max = max_elements.max(1);
    let mut runs = staged_runs(r, max).peekable();
    let mut next = Some(Transaction::new(r.family, TableChange::Created).schema(r));
    let mut seq = first_seq;
    std::iter::from_fn(move || {
        let mut t = next.take()?;
        let mut in_batch = 0;
        while let Some((_, elems)) = runs.peek() {
            if in_batch + elems.len() > max && in_batch > 0 {
                next = Some(Transaction::new(r.family, TableChange::Kept));
                break;
            }
            let (set, elems) = runs.next().expect("peeked");
            in_batch += elems.len();
            t.added_elements.push((set, elems));
        }
        let b = t.into_batch(seq);
        seq = b.seq_after();
        Some(b)
    })
}

/// One step of a cold start grown by [`crate::table::Table::grow`], as one transaction: the
/// step's new sets and chains, the chains of the fixed part it rewrote (routes to new pick
/// chains), and its elements. Each Service of the step is whole in it, so every transaction
/// leaves a ruleset in which a Service is either fully programmed or not yet present.
pub fn grown<'a>(table: &'a Ruleset, g: &'a Grown, first_seq: u32) -> Batch {
    let mut t = Transaction::new(table.family, TableChange::Kept);
    t.new_sets = g.sets.iter().filter_map(|n| table.sets.get(n)).collect();
    let chains = g.chains.iter().map(|n| (n, false)).chain(g.rewritten.iter().map(|n| (n, true)));
    for (name, existed) in chains {
        let Some((name, c)) = table.chains.get_key_value(name) else { continue };
        if !existed {
            t.new_chains.push((name.as_str(), c.base.as_ref()));
        }
        t.rules.push(ChainRules { chain: name, flush: existed, rules: &c.rules });
    }
    let runs = |m: &'a BTreeMap<String, Vec<(Key, ElemValue)>>| -> Vec<(&'a str, Elements<'a>)> {
        m.iter()
            .filter(|(_, e)| !e.is_empty())
            .map(|(set, e)| (set.as_str(), Elements::Some(e.iter().map(|(k, v)| (k, v)).collect())))
            .collect()
    };
    t.deleted_elements = runs(&g.replaced);
    t.added_elements = runs(&g.elements);
    t.into_batch(first_seq)
}

/// Whether a set is added (again) in a transaction: it is new, or declared otherwise than
/// `before`. Only an affinity set's timeout changes under one name, and adding the set again
/// updates it in place (see [`Transaction::new_sets`]).
fn declared_anew(before: Option<&SetDecl>, now: &SetDecl) -> bool {
    before.is_none_or(|b| b.spec != now.spec)
}

/// Only the differences between two states of the same table, as one transaction.
pub fn incremental(prev: &Ruleset, next: &Ruleset, first_seq: u32) -> Batch {
    let mut t = Transaction::new(next.family, TableChange::Kept);
    t.new_sets = next.sets.iter().filter(|(n, d)| declared_anew(prev.sets.get(*n), d)).map(|(_, d)| d).collect();
    t.new_chains = next
        .chains
        .iter()
        .filter(|(n, _)| !prev.chains.contains_key(*n))
        .map(|(n, c)| (n.as_str(), c.base.as_ref()))
        .collect();
    for (name, c) in &next.chains {
        match prev.chains.get(name) {
            Some(p) if p.rules == c.rules => {}
            p => t.rules.push(ChainRules { chain: name, flush: p.is_some(), rules: &c.rules }),
        }
    }
    let empty = SetElements::default();
    for name in next.sets.keys() {
        let (old, new) = (prev.elements.get(name).unwrap_or(&empty), &next.elements[name]);
        // Changed values are deleted and added again: the kernel refuses to overwrite data.
        let del: Vec<_> = old.iter().filter(|(k, v)| new.get(*k) != Some(*v)).collect();
        let add: Vec<_> = new.iter().filter(|(k, v)| old.get(*k) != Some(*v)).collect();
        if !del.is_empty() {
            t.deleted_elements.push((name, Elements::Some(del)));
        }
        if !add.is_empty() {
            t.added_elements.push((name, Elements::Some(add)));
        }
    }
    t.deleted_chains = prev.chains.keys().filter(|n| !next.chains.contains_key(*n)).map(String::as_str).collect();
    t.deleted_sets = prev.sets.keys().filter(|n| !next.sets.contains_key(*n)).map(String::as_str).collect();
    t.into_batch(first_seq)
}

/// The messages for what a fragment swap touched (see [`crate::table`]): proportional to the
/// changed Services, whatever the size of the table.
pub fn delta<'a>(table: &'a Ruleset, d: &'a Delta, first_seq: u32) -> Batch {
    let mut t = Transaction::new(table.family, TableChange::Kept);
    t.new_sets = d
        .sets
        .iter()
        .filter_map(|(n, before)| table.sets.get(n).filter(|now| declared_anew(before.as_ref(), now)))
        .collect();
    for (name, before) in &d.chains {
        let Some(now) = table.chains.get(name) else { continue };
        if before.is_none() {
            t.new_chains.push((name, now.base.as_ref()));
        }
        match before {
            Some(old) if old.rules == now.rules => {}
            _ => t.rules.push(ChainRules { chain: name, flush: before.is_some(), rules: &now.rules }),
        }
    }
    let mut dels: BTreeMap<&str, Vec<(&Key, &ElemValue)>> = BTreeMap::new();
    let mut adds: BTreeMap<&str, Vec<(&Key, &ElemValue)>> = BTreeMap::new();
    for ((set, key), before) in &d.elements {
        let now = table.elements.get(set).and_then(|e| e.get(key));
        if before.as_ref() == now {
            continue;
        }
        // A set that is itself going away takes its elements with it.
        if let Some(v) = before
            && table.sets.contains_key(set)
        {
            dels.entry(set).or_default().push((key, v));
        }
        if let Some(v) = now {
            adds.entry(set).or_default().push((key, v));
        }
    }
    t.deleted_elements = dels.into_iter().map(|(s, e)| (s, Elements::Some(e))).collect();
    t.added_elements = adds.into_iter().map(|(s, e)| (s, Elements::Some(e))).collect();
    t.deleted_chains = d.chains.keys().filter(|n| !table.chains.contains_key(*n)).map(String::as_str).collect();
    t.deleted_sets = d.sets.keys().filter(|n| !table.sets.contains_key(*n)).map(String::as_str).collect();
    t.into_batch(first_seq)
}

/// Deletes one table: ours (cleanup), or kube-proxy's when taking over from it.
pub fn delete(family: crate::Family, table: &str, first_seq: u32) -> Batch {
    let mut b = Batch::new(first_seq);
    b.del_table(family.nfproto(), table);
    b
}
