//! The programmed table as the sum of per-Service fragments, so that a partial sync costs what
//! the changed Services cost, not what the cluster costs.
//!
//! Fragments may share objects: pick chains (every service with N endpoints uses `cluster-N`)
//! and hairpin elements (an endpoint in several services). The table counts references and
//! removes a shared object when its last user goes. Swapping a fragment records a [`Delta`]:
//! the state before of every key it touched, so unchanged keys cost nothing on the wire.
//!
//! A pick chain's route rule (`… @cluster-3-frontends goto cluster-3`) comes and goes with the
//! chain and lives in a chain of the fixed part (`services`, `nodeports`) at a slot among that
//! chain's own rules: when a pick chain comes or goes (rare), that fixed chain is rebuilt and
//! replaced as a whole in the same transaction.

use std::collections::{BTreeMap, BTreeSet};

use rustc_hash::FxHashMap as HashMap;

use nftproxy_model::ServiceName;

use crate::ruleset::{Chain, ElemValue, Key, Put, Route, Rule, Ruleset, SetDecl};

/// What a fragment swap touched, with the value each key had before the first touch.
#[derive(Debug, Default)]
pub struct Delta {
    pub elements: BTreeMap<(String, Key), Option<ElemValue>>,
    pub chains: BTreeMap<String, Option<Chain>>,
    pub sets: BTreeMap<String, Option<SetDecl>>,
}

/// What one step of [`Table::grow`] added: a cold start's transaction for that step. A table
/// grown from nothing has no old state to record, so this is lists, not a [`Delta`]'s maps (per
/// element a name and an ordered insertion).
#[derive(Debug, Default)]
pub struct Grown {
    /// Sets and chains that came with the step's fragments.
    pub sets: Vec<String>,
    pub chains: Vec<String>,
    /// Chains of the fixed part whose rules the step rewrote: the routes to new pick chains.
    pub rewritten: Vec<String>,
    /// Elements the table did not hold before, per set, as added, with their value at the
    /// end of the step.
    pub elements: BTreeMap<String, Vec<(Key, ElemValue)>>,
    /// Elements an earlier step added whose value this step changed (two Services claiming
    /// one key: the last one added holds it, as in a table built at once), with the value
    /// the kernel holds: out before the new value goes in.
    pub replaced: BTreeMap<String, Vec<(Key, ElemValue)>>,
}

/// Where a table grown in steps stands in its schedule of rebuilds (see [`Table::new`]).
#[derive(Debug, Clone, Copy)]
pub struct Growth {
    count: usize,
    compacted: usize,
    next_compaction: usize,
}

impl Default for Growth {
    fn default() -> Growth {
        Growth { count: 0, compacted: 0, next_compaction: COMPACT_FROM }
    }
}

#[derive(Debug, Clone)]
pub struct Table {
    /// The whole table: fixed part plus every fragment.
    pub table: Ruleset,
    /// What each Service's fragment holds, by name and key: enough to take it out again.
    fragments: BTreeMap<ServiceName, FragmentIndex>,
    /// Per set, per key: how many fragments hold the element, for shared elements only (two or
    /// more users: hairpin pairs, ClusterIPs of multi-port Services). An element of the table
    /// without an entry has one user, so the common unshared element keeps no second copy of its
    /// key here.
    elem_refs: HashMap<String, HashMap<Key, u32>>,
    chain_refs: HashMap<String, u32>,
    set_refs: HashMap<String, u32>,
    /// The route rules of the chains in the table, per fixed chain and in slot order (by the
    /// name of the chain they lead to): an index of `table.chains`' routes.
    routes: BTreeMap<&'static str, BTreeMap<String, Rule>>,
    /// Chains with a route slot: their own rules and where the routes go among them.
    slotted: BTreeMap<String, (Vec<Rule>, usize)>,
    /// Slotted chains whose routes changed since they were last rebuilt.
    dirty: BTreeSet<&'static str>,
    names: Names,
}

/// A fragment's objects, names as indices into [`Table::names`]: one allocation per Service for
/// its elements instead of a name and a list per set (~400 bytes less per Service).
#[derive(Debug, Clone, Default)]
struct FragmentIndex {
    sets: Vec<NameId>,
    chains: Vec<NameId>,
    elements: ElementIndex,
}

/// The keys of a fragment's elements, packed: per run of keys, the set (LEB128), the key's field
/// kinds (2 bytes), its length (1 byte), how many keys the run holds (LEB128) and the first key's
/// bytes. A run is keys that differ only in a last index field counting up by one — an endpoint
/// map's `frontend . 0`, `frontend . 1`, … — so a Service's endpoint elements take one entry.
/// At 50k Services × 10 endpoints (1.1 M elements) a list of (set id, key) took 40 bytes per
/// element, 44 MB; this takes ~9 MB (mostly hairpin pairs, 13 bytes each).
#[derive(Debug, Clone, Default)]
struct ElementIndex(Box<[u8]>);

/// Builds an [`ElementIndex`] from keys in the order a fragment holds them.
#[derive(Default)]
struct ElementIndexBuilder {
    out: Vec<u8>,
    /// The open run: set, first key, last key, count.
    run: Option<(NameId, Key, Key, u32)>,
}

impl ElementIndexBuilder {
    fn push(&mut self, set: NameId, key: Key) {
        if let Some((id, _, last, n)) = &mut self.run
            && *id == set
            && last.next_index() == Some(key)
        {
            *last = key;
            *n += 1;
            return;
        }
        self.flush();
        self.run = Some((set, key, key, 1));
    }

    fn flush(&mut self) {
        let Some((set, first, _, n)) = self.run.take() else { return };
        leb128(&mut self.out, set);
        self.out.extend_from_slice(&first.kinds().to_le_bytes());
        self.out.push(first.bytes().len() as u8);
        leb128(&mut self.out, n);
        self.out.extend_from_slice(first.bytes());
    }

    fn finish(mut self) -> ElementIndex {
        self.flush();
        ElementIndex(self.out.into_boxed_slice())
    }
}

fn leb128(out: &mut Vec<u8>, mut v: u32) {
    loop {
        let b = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            out.push(b);
            return;
        }
        out.push(b | 0x80);
    }
}

fn read_leb128(b: &[u8], at: &mut usize) -> u32 {
    let mut v = 0u32;
    for shift in (0..35).step_by(7) {
        let byte = b[*at];
        *at += 1;
        v |= u32::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            break;
        }
    }
    v
}

impl ElementIndex {
    /// Every (set, key), runs expanded, in the order they were pushed.
    fn iter(&self) -> impl Iterator<Item = (NameId, Key)> + '_ {
        self.runs().flat_map(|(set, first, n)| {
            std::iter::successors(Some(first), Key::next_index).take(n as usize).map(move |k| (set, k))
        })
    }

    /// The runs as stored: set, first key, number of keys.
    fn runs(&self) -> impl Iterator<Item = (NameId, Key, u32)> + '_ {
        let b = &self.0;
        let mut at = 0usize;
        std::iter::from_fn(move || {
            if at >= b.len() {
                return None;
            }
            let set = read_leb128(b, &mut at);
            let kinds = u16::from_le_bytes([b[at], b[at + 1]]);
            let len = b[at + 2] as usize;
            at += 3;
            let n = read_leb128(b, &mut at);
            let key = Key::from_parts(kinds, &b[at..at + len]).expect("an index holds keys it was given");
            at += len;
            Some((set, key, n))
        })
    }
}

type NameId = u32;

/// The table size at which [`Table::new`] first rebuilds its maps with full nodes.
const COMPACT_FROM: usize = 1 << 16;

/// Set and chain names, each stored once; never shrinks (a table has tens of distinct names).
#[derive(Debug, Clone, Default)]
struct Names {
    ids: HashMap<String, NameId>,
    names: Vec<String>,
}

impl Names {
    fn id(&mut self, name: &str) -> NameId {
        if let Some(id) = self.ids.get(name) {
            return *id;
        }
        let id = self.names.len() as NameId;
        self.names.push(name.to_string());
        self.ids.insert(name.to_string(), id);
        id
    }
    fn name(&self, id: NameId) -> &String {
        &self.names[id as usize]
    }
}

impl Table {
    /// Merges fragments one by one as the iterator yields them: with a lazy iterator, only one
    /// fragment exists at a time (building all first cost ~10 KiB per Service at the peak).
    pub fn new(fixed: Ruleset, fragments: impl IntoIterator<Item = (ServiceName, Ruleset)>) -> Table {
        let mut t = Table::fixed(fixed);
        let mut growth = Growth::default();
        t.grow(&mut growth, &mut fragments.into_iter().peekable(), usize::MAX, None);
        t.grown_up(growth);
        t
    }

    /// The fixed part alone: no Service yet.
    pub fn fixed(fixed: Ruleset) -> Table {
        let slotted = fixed
            .route_slots
            .iter()
            .map(|(chain, at)| {
                let own = fixed.chains.get(chain).map(|c| c.rules.to_vec()).unwrap_or_default();
                (chain.clone(), (own, *at))
            })
            .collect();
        Table {
            table: fixed,
            fragments: BTreeMap::new(),
            elem_refs: HashMap::default(),
            chain_refs: HashMap::default(),
            set_refs: HashMap::default(),
            routes: BTreeMap::new(),
            slotted,
            dirty: BTreeSet::new(),
            names: Names::default(),
        }
    }

    /// Adds fragments as the iterator yields them, until the next one would take the step
    /// past `budget` elements (a step takes at least one), then puts the routes of new pick
    /// chains in place. With `grown`, records what the step added.
    ///
    /// Elements arrive Service by Service, in no order of their keys, which leaves the maps'
    /// B-tree nodes about two-thirds full. Rebuilt from their own sorted iteration they are
    /// built full (bulk build): at 50k Services × 10, 1.1 M elements, the mirror went from
    /// 237 to 152 bytes per element, 249 to 159 MiB (`mem_breakdown`). In place: no copy.
    /// Rebuilt at the end only ([`Table::grown_up`]), the half-full tree was the daemon's peak,
    /// so they are also rebuilt each time the table has doubled: the nodes freed by one rebuild
    /// hold the next elements (twice the element moves of one rebuild in all; at 1.5× the
    /// daemon peaked 2 MiB lower but the build took 0.5 s more at 50k × 10).
    /// Counted per fragment: the table's own count walks every set, and Services with
    /// affinity each add sets.
    pub fn grow<I: Iterator<Item = (ServiceName, Ruleset)>>(
        &mut self,
        growth: &mut Growth,
        fragments: &mut std::iter::Peekable<I>,
        budget: usize,
        mut grown: Option<&mut Grown>,
    ) {
        let mut step = 0usize;
        while let Some((_, next)) = fragments.peek() {
            let n = next.element_count();
            if step > 0 && step.saturating_add(n) > budget {
                break;
            }
            let (svc, frag) = fragments.next().expect("peeked");
            step += n;
            growth.count += n;
            let idx = self.add(frag, None, grown.as_deref_mut());
            self.fragments.insert(svc, idx);
            if growth.count >= growth.next_compaction {
                self.compact();
                (growth.compacted, growth.next_compaction) = (growth.count, growth.count * 2);
            }
        }
        match grown {
            Some(g) => {
                self.settle_replaced(g);
                let mut d = Delta::default();
                self.rebuild_slotted(Some(&mut d));
                g.rewritten = d.chains.into_keys().collect();
            }
            None => self.rebuild_slotted(None),
        }
    }

    /// Gives the elements a step replaced their value at the step's end: in the step's own
    /// additions when the step added them, else as a replacement of what an earlier step sent.
    /// [`Table::add`] files every replacement under `replaced` with the value before it; rare
    /// (conflicting Services), so the search of the step's additions is a linear one.
    fn settle_replaced(&mut self, g: &mut Grown) {
        for (set, replaced) in std::mem::take(&mut g.replaced) {
            let Some(now) = self.table.elements.get(&set) else { continue };
            let mut settled: Vec<(Key, ElemValue)> = Vec::new();
            for (key, before) in replaced {
                let Some(value) = now.get(&key) else { continue };
                let added = g.elements.get_mut(&set).and_then(|a| a.iter_mut().find(|(k, _)| *k == key));
                if let Some((_, v)) = added {
                    *v = value.clone();
                } else if !settled.iter().any(|(k, _)| *k == key) {
                    // The first replacement's "before" is what the kernel holds.
                    settled.push((key, before));
                    g.elements.entry(set.clone()).or_default().push((key, value.clone()));
                }
            }
            if !settled.is_empty() {
                g.replaced.insert(set, settled);
            }
        }
    }

    /// The last rebuild of a grown table, unless one during the growth was recent: a rebuild
    /// moves every element to fill the nodes the newest quarter left two-thirds full (~2 MB at
    /// 50k × 10, where rebuilding 1.1 M elements once more took ~0.1 s).
    pub fn grown_up(&mut self, growth: Growth) {
        if growth.count - growth.compacted > growth.compacted / 4 {
            self.compact();
        }
    }

    fn compact(&mut self) {
        for m in self.table.elements.values_mut() {
            m.compact();
        }
    }

    /// Replaces one Service's fragment (None: the Service is gone), recording what changed.
    pub fn swap(&mut self, svc: &ServiceName, new: Option<Ruleset>, delta: &mut Delta) {
        if let Some(old) = self.fragments.remove(svc) {
            self.remove(&old, delta);
        }
        if let Some(new) = new {
            let idx = self.add(new, Some(delta), None);
            self.fragments.insert(svc.clone(), idx);
        }
        self.rebuild_slotted(Some(delta));
    }

    /// Puts the route rules in force into their chains (those whose routes changed).
    fn rebuild_slotted(&mut self, mut delta: Option<&mut Delta>) {
        for name in std::mem::take(&mut self.dirty) {
            let (Some((own, at)), Some(chain)) = (self.slotted.get(name), self.table.chains.get_mut(name)) else {
                continue;
            };
            let at = (*at).min(own.len());
            let mut rules: Vec<Rule> = own[..at].to_vec();
            rules.extend(self.routes.get(name).into_iter().flat_map(|r| r.values().cloned()));
            rules.extend(own[at..].iter().cloned());
            if *chain.rules == rules {
                continue;
            }
            if let Some(d) = delta.as_deref_mut() {
                d.chains.entry(name.to_string()).or_insert_with(|| Some(chain.clone()));
            }
            chain.rules = std::sync::Arc::new(rules);
        }
    }

    /// Adds a fragment's objects (moving them into the table); `delta` is None when building
    /// from scratch, where nobody needs to know what changed.
    fn add(&mut self, frag: Ruleset, mut delta: Option<&mut Delta>, mut grown: Option<&mut Grown>) -> FragmentIndex {
        let mut idx = FragmentIndex::default();
        for (name, decl) in frag.sets {
            let rc = self.set_refs.entry(name.clone()).or_default();
            *rc += 1;
            if *rc == 1 {
                if let Some(d) = delta.as_deref_mut() {
                    d.sets.entry(name.clone()).or_insert_with(|| self.table.sets.get(&name).cloned());
                }
                self.table.elements.entry(name.clone()).or_default();
                self.table.sets.insert(name.clone(), decl);
                if let Some(g) = grown.as_deref_mut() {
                    g.sets.push(name.clone());
                }
            }
            idx.sets.push(self.names.id(&name));
        }
        for (name, chain) in frag.chains {
            let rc = self.chain_refs.entry(name.clone()).or_default();
            *rc += 1;
            if *rc == 1 {
                if let Some(d) = delta.as_deref_mut() {
                    d.chains.entry(name.clone()).or_insert_with(|| self.table.chains.get(&name).cloned());
                }
                if let Some(Route { from, rule }) = &chain.route {
                    self.routes.entry(*from).or_default().insert(name.clone(), rule.clone());
                    self.dirty.insert(*from);
                }
                self.table.chains.insert(name.clone(), chain);
                if let Some(g) = grown.as_deref_mut() {
                    g.chains.push(name.clone());
                }
            }
            idx.chains.push(self.names.id(&name));
        }
        let mut keys = ElementIndexBuilder::default();
        for (set, elems) in frag.elements {
            let id = self.names.id(&set);
            let refs = self.elem_refs.entry(set.clone()).or_default();
            let current = self.table.elements.entry(set.clone()).or_default();
            let mut log = grown.as_deref_mut().map(|g| {
                if !g.elements.contains_key(&set) {
                    g.elements.insert(set.clone(), Vec::new());
                }
                g.elements.get_mut(&set).expect("just made sure")
            });
            let mut replaced = Vec::new();
            for (k, v) in elems {
                // One search per element (a B-tree search is mostly cache misses: three of them
                // per element made key comparison the top of a cold build's profile).
                let logged = log.as_ref().map(|_| v.clone());
                match current.put(k, v) {
                    Put::Added => {
                        if let Some(d) = delta.as_deref_mut() {
                            d.elements.entry((set.clone(), k)).or_insert(None);
                        }
                        if let (Some(log), Some(v)) = (log.as_deref_mut(), logged) {
                            log.push((k, v));
                        }
                    }
                    existing => {
                        // One more user of an element that exists (implicitly one user so far).
                        *refs.entry(k).or_insert(1) += 1;
                        if let Put::Replaced(before) = existing {
                            if let Some(d) = delta.as_deref_mut() {
                                d.elements.entry((set.clone(), k)).or_insert(Some(before));
                            } else if log.is_some() {
                                replaced.push((k, before));
                            }
                        }
                    }
                }
                keys.push(id, k);
            }
            if let Some(g) = grown.as_deref_mut()
                && !replaced.is_empty()
            {
                g.replaced.entry(set).or_default().extend(replaced);
            }
        }
        idx.elements = keys.finish();
        idx
    }

    fn remove(&mut self, frag: &FragmentIndex, delta: &mut Delta) {
        for (id, k) in frag.elements.iter() {
            let set = self.names.name(id);
            let Some(refs) = self.elem_refs.get_mut(set) else {
                continue;
            };
            if release_shared(refs, &k)
                && let Some(current) = self.table.elements.get_mut(set)
            {
                let before = current.remove(&k);
                delta.elements.entry((set.to_string(), k)).or_insert(before);
            }
        }
        for id in &frag.chains {
            let name = self.names.name(*id);
            if release(&mut self.chain_refs, name) {
                let before = self.table.chains.remove(name);
                if let Some(Route { from, .. }) = before.as_ref().and_then(|c| c.route.as_ref()) {
                    if let Some(r) = self.routes.get_mut(from) {
                        r.remove(name);
                    }
                    self.dirty.insert(*from);
                }
                delta.chains.entry(name.clone()).or_insert(before);
            }
        }
        for id in &frag.sets {
            let name = self.names.name(*id);
            if release(&mut self.set_refs, name) {
                let before = self.table.sets.remove(name);
                self.table.elements.remove(name);
                delta.sets.entry(name.clone()).or_insert(before);
            }
        }
    }
}

/// Drops one user of an element counted only when shared (see `Table::elem_refs`); true when
/// it was the last.
fn release_shared(refs: &mut HashMap<Key, u32>, k: &Key) -> bool {
    match refs.get_mut(k) {
        Some(rc) if *rc > 2 => {
            *rc -= 1;
            false
        }
        Some(_) => {
            refs.remove(k);
            false
        }
        None => true,
    }
}

/// Drops one reference; true when it was the last.
fn release<K: std::hash::Hash + Eq + Clone>(refs: &mut HashMap<K, u32>, k: &K) -> bool {
    match refs.get_mut(k) {
        Some(rc) if *rc > 1 => {
            *rc -= 1;
            false
        }
        Some(_) => {
            refs.remove(k);
            true
        }
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ruleset::Field;

    fn key(fields: &[Field]) -> Key {
        Key::of(fields)
    }

    /// Runs of endpoint-map keys collapse to one entry each; everything else is kept key by key,
    /// and the index gives back exactly what it was given, in order.
    #[test]
    fn element_index_round_trips_and_collapses_index_runs() {
        let ip = |s: &str| Field::Addr(s.parse().unwrap());
        let mut given = Vec::new();
        for i in 0..10 {
            given.push((3, key(&[ip("10.96.0.1"), Field::Proto(6), Field::Port(80), Field::Index(i)])));
        }
        // A gap in the indices starts a new run; so does another set or another frontend.
        given.push((3, key(&[ip("10.96.0.1"), Field::Proto(6), Field::Port(80), Field::Index(12)])));
        given.push((4, key(&[ip("10.96.0.1"), Field::Proto(6), Field::Port(80), Field::Index(13)])));
        given.push((4, key(&[ip("10.96.0.2"), Field::Proto(6), Field::Port(80), Field::Index(0)])));
        given.push((4, key(&[ip("10.96.0.2"), Field::Proto(6), Field::Port(80), Field::Index(1)])));
        // Keys without an index, IPv6 pairs (32 bytes), a set id past one LEB128 byte.
        given.push((300, key(&[ip("10.0.0.1"), ip("10.0.0.1")])));
        given.push((300, key(&[ip("10.0.0.2"), ip("10.0.0.2")])));
        given.push((7, key(&[ip("fd00::1"), ip("fd00::1")])));
        given.push((7, key(&[Field::Index(u32::MAX)])));
        given.push((7, key(&[Field::Index(0)])));
        let mut b = ElementIndexBuilder::default();
        for (id, k) in &given {
            b.push(*id, *k);
        }
        let idx = b.finish();
        assert_eq!(idx.iter().collect::<Vec<_>>(), given);
        // 10 + 1 + 1 + 2 keys with an index make 4 runs; 5 more keys stand alone.
        assert_eq!(idx.runs().count(), 4 + 5);
        assert_eq!(ElementIndexBuilder::default().finish().iter().count(), 0);
    }
}
