//! The programmed table as the sum of per-Service fragments, so that a partial sync costs what
//! the changed Services cost, not what the cluster costs.
//!
//! Fragments may share objects: pick chains (every service with N endpoints uses `cluster-N`)
//! and hairpin elements (an endpoint in several services). The table counts references and
//! removes a shared object when its last user goes. Swapping a fragment records a [`Delta`]:
//! the state before of every key it touched, so unchanged keys cost nothing on the wire.

use std::collections::BTreeMap;

use rustc_hash::FxHashMap as HashMap;

use nftproxy_model::ServiceName;

use crate::ruleset::{Chain, ElemValue, Key, Ruleset, SetDecl};

/// What a fragment swap touched, with the value each key had before the first touch.
#[derive(Debug, Default)]
pub struct Delta {
    pub elements: BTreeMap<(String, Key), Option<ElemValue>>,
    pub chains: BTreeMap<String, Option<Chain>>,
    pub sets: BTreeMap<String, Option<SetDecl>>,
}

#[derive(Debug, Clone)]
pub struct Table {
    /// The whole table: fixed part plus every fragment.
    pub table: Ruleset,
    /// What each Service's fragment holds, by name and key: enough to take it out again.
    fragments: BTreeMap<ServiceName, FragmentIndex>,
    /// Per set, per key: how many fragments hold the element.
    elem_refs: HashMap<String, HashMap<Key, u32>>,
    chain_refs: HashMap<String, u32>,
    set_refs: HashMap<String, u32>,
}

#[derive(Debug, Clone, Default)]
struct FragmentIndex {
    sets: Vec<String>,
    chains: Vec<String>,
    elements: Vec<(String, Vec<Key>)>,
}

impl Table {
    /// Merges fragments one by one as the iterator yields them: with a lazy iterator, only one
    /// fragment exists at a time (building all first cost ~10 KiB per Service at the peak).
    pub fn new(fixed: Ruleset, fragments: impl IntoIterator<Item = (ServiceName, Ruleset)>) -> Table {
        let mut t = Table {
            table: fixed,
            fragments: BTreeMap::new(),
            elem_refs: HashMap::default(),
            chain_refs: HashMap::default(),
            set_refs: HashMap::default(),
        };
        for (svc, frag) in fragments {
            let idx = t.add(frag, None);
            t.fragments.insert(svc, idx);
        }
        t
    }

    /// Replaces one Service's fragment (None: the Service is gone), recording what changed.
    pub fn swap(&mut self, svc: &ServiceName, new: Option<Ruleset>, delta: &mut Delta) {
        if let Some(old) = self.fragments.remove(svc) {
            self.remove(&old, delta);
        }
        if let Some(new) = new {
            let idx = self.add(new, Some(delta));
            self.fragments.insert(svc.clone(), idx);
        }
    }

    /// Adds a fragment's objects (moving them into the table); `delta` is None when building
    /// from scratch, where nobody needs to know what changed.
    fn add(&mut self, frag: Ruleset, mut delta: Option<&mut Delta>) -> FragmentIndex {
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
            }
            idx.sets.push(name);
        }
        for (name, chain) in frag.chains {
            let rc = self.chain_refs.entry(name.clone()).or_default();
            *rc += 1;
            if *rc == 1 {
                if let Some(d) = delta.as_deref_mut() {
                    d.chains.entry(name.clone()).or_insert_with(|| self.table.chains.get(&name).cloned());
                }
                self.table.chains.insert(name.clone(), chain);
            }
            idx.chains.push(name);
        }
        for (set, elems) in frag.elements {
            let refs = self.elem_refs.entry(set.clone()).or_default();
            let current = self.table.elements.entry(set.clone()).or_default();
            let mut keys = Vec::with_capacity(elems.len());
            for (k, v) in elems {
                *refs.entry(k.clone()).or_default() += 1;
                match current.get_mut(&k) {
                    Some(cur) if *cur == v => {}
                    Some(cur) => {
                        if let Some(d) = delta.as_deref_mut() {
                            d.elements.entry((set.clone(), k.clone())).or_insert_with(|| Some(cur.clone()));
                        }
                        *cur = v;
                    }
                    None => {
                        if let Some(d) = delta.as_deref_mut() {
                            d.elements.entry((set.clone(), k.clone())).or_insert(None);
                        }
                        current.insert(k.clone(), v);
                    }
                }
                keys.push(k);
            }
            idx.elements.push((set, keys));
        }
        idx
    }

    fn remove(&mut self, frag: &FragmentIndex, delta: &mut Delta) {
        for (set, keys) in &frag.elements {
            let Some(refs) = self.elem_refs.get_mut(set) else {
                continue;
            };
            for k in keys {
                if release(refs, k)
                    && let Some(current) = self.table.elements.get_mut(set)
                {
                    let before = current.remove(k);
                    delta.elements.entry((set.clone(), k.clone())).or_insert(before);
                }
            }
        }
        for name in &frag.chains {
            if release(&mut self.chain_refs, name) {
                let before = self.table.chains.remove(name);
                delta.chains.entry(name.clone()).or_insert(before);
            }
        }
        for name in &frag.sets {
            if release(&mut self.set_refs, name) {
                let before = self.table.sets.remove(name);
                self.table.elements.remove(name);
                delta.sets.entry(name.clone()).or_insert(before);
            }
        }
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
