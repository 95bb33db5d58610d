//! An in-memory netfilter for unit tests of the sync engine and the daemon (no root, no kernel),
//! in the spirit of knftables' `fake.go`: a batch is decoded from its wire bytes and applied,
//! message by message, to a copy of the ruleset; the first message the kernel would refuse
//! rejects the whole batch with the kernel's errno and leaves the ruleset as it was.
//!
//! What it enforces, as nf_tables does (`net/netfilter/nf_tables_api.c`):
//! - objects must exist where they are used: table of a chain or set (ENOENT), chain of a rule,
//!   chain a rule or a verdict-map element jumps to, set a rule looks up or updates, set of an
//!   element, element deleted (ENOENT);
//! - objects in use cannot go: a chain other rules or map elements jump to, a set rules use
//!   (EBUSY); a chain's own rules go with it, a table takes everything with it;
//! - an existing object added again is fine when it is the same (a set with another spec is
//!   EEXIST, but for its timeout, which the add updates, as Linux 6.10 and later do; an element
//!   with other data is EEXIST, [`ELEMENT_CLASH`]);
//! - an element's key and data have the set's lengths and kinds, a map has the map flag (EINVAL);
//! - every committed batch that changed something adds one to the generation; refused ones, and
//!   ones that change nothing (an element added again, an empty chain flushed), do not.
//!
//! Not modelled: chain loops, hook and priority validation, expression-level register checks,
//! packets (sets that packets fill stay empty), element timeouts. The kernel test
//! `integration/tests/fake_netfilter.rs` replays batches, good and bad, on both and compares.
//!
//! [`FakeNetfilter`] is a handle: clones share one ruleset, so a test keeps one clone to look at
//! (and tamper with, like another program would) what the engine under test programmed.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::io;
use std::sync::{Arc, Mutex, MutexGuard};

use nftproxy_nft_wire::consts::*;
use nftproxy_nft_wire::{
    BaseChain, Elem, ElemData, Expr, FinishedBatch, Message, NfFamily, SetSpec, Verdict, decode_batch,
};

use crate::conntrack::{ConntrackTable, CtEntry};
use crate::drift::{DumpedSet, Observed};
use crate::family::Family;
use crate::netfilter::Netfilter;
use crate::netlink::{CommitStats, KernelError, NetlinkError};
use crate::ruleset::{Ruleset, TABLE, TABLE_COMMENT, verdict_text};

/// The errno of adding an element whose key the set holds with other data (the kernel's
/// element clash).
pub const ELEMENT_CLASH: i32 = libc::EEXIST;

#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct FakeTable {
    comment: Option<String>,
    chains: BTreeMap<String, FakeChain>,
    sets: BTreeMap<String, FakeSet>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct FakeChain {
    base: Option<BaseChain>,
    rules: Vec<(Vec<Expr>, Option<String>)>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct FakeSet {
    spec: SetSpec,
    /// Key bytes → (data, comment).
    elements: BTreeMap<Vec<u8>, (Option<ElemData>, Option<String>)>,
}

/// The whole netfilter state of one fake network namespace.
#[derive(Clone, Debug, Default)]
struct State {
    generation: u32,
    /// (family, table name) → table.
    tables: BTreeMap<(NfFamily, String), FakeTable>,
}

/// A refusal planned by a test: the `skip`-th commit from now (0: the next one) is refused at
/// its `at_message`-th message (clamped to the last one) with `errno`.
#[derive(Clone, Copy, Debug)]
struct PlannedFailure {
    skip: usize,
    at_message: usize,
    errno: i32,
}

/// One commit as the fake saw it: what each message did, and whether it was committed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CommitRecord {
    pub messages: Vec<String>,
    pub committed: bool,
}

#[derive(Debug, Default)]
struct Inner {
    state: State,
    failures: Vec<PlannedFailure>,
    read_error: Option<i32>,
    conntrack: Vec<CtEntry>,
    conntrack_error: Option<i32>,
    commits: Vec<CommitRecord>,
    /// Dumps of a table's structure ([`Netfilter::observe`]) so far.
    observations: usize,
}

/// The fake netfilter (see the module documentation). Cheap to clone; clones share state.
#[derive(Clone, Debug, Default)]
pub struct FakeNetfilter(Arc<Mutex<Inner>>);

type Refusal = (usize, i32);

impl FakeNetfilter {
    pub fn new() -> FakeNetfilter {
        FakeNetfilter::default()
    }

    fn inner(&self) -> MutexGuard<'_, Inner> {
        // A test that panicked while holding the lock leaves consistent data: every change is
        // made on a copy and swapped in whole.
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The `skip`-th commit from now (0: the next) is refused at message `at_message` (clamped to
    /// its last message) with `errno`, as if the kernel had refused that message.
    pub fn fail_commit(&self, skip: usize, at_message: usize, errno: i32) {
        self.inner().failures.push(PlannedFailure { skip, at_message, errno });
    }

    /// How many times a table's structure was dumped ([`Netfilter::observe`]).
    pub fn observations(&self) -> usize {
        self.inner().observations
    }

    /// Every read (generation, dumps, elements by key) fails with `errno` until cleared with None.
    pub fn fail_reads(&self, errno: Option<i32>) {
        self.inner().read_error = errno;
    }

    /// Conntrack dumps fail with `errno` until cleared with None.
    pub fn fail_conntrack(&self, errno: Option<i32>) {
        self.inner().conntrack_error = errno;
    }

    /// Adds a conntrack entry (as a packet would).
    pub fn add_conntrack(&self, e: CtEntry) {
        self.inner().conntrack.push(e);
    }

    /// What a packet does to a set that packets fill (ClientIP affinity's `update @set`):
    /// `key` goes in, with no generation change. Panics unless the set exists and packets fill it.
    pub fn fill_by_packet(&self, family: Family, set: &str, key: &[u8]) {
        let mut inner = self.inner();
        let table = inner.state.tables.get_mut(&(family.nfproto(), TABLE.to_string())).expect("our table");
        let set = table.sets.get_mut(set).expect("the set");
        assert!(set.spec.flags & NFT_SET_EVAL != 0, "packets fill only dynamic sets");
        set.elements.insert(key.to_vec(), (None, None));
    }

    /// The conntrack entries left.
    pub fn conntrack_entries(&self) -> Vec<CtEntry> {
        self.inner().conntrack.clone()
    }

    /// Every commit so far, committed or refused.
    pub fn commits(&self) -> Vec<CommitRecord> {
        self.inner().commits.clone()
    }

    /// The current generation.
    pub fn current_generation(&self) -> u32 {
        self.inner().state.generation
    }

    /// Table `name` of `family` as text: chains with their rules as expressions (the kernel keeps
    /// no rule text), sets with their elements by key bytes. The same format as [`wire_dump`] of a
    /// [`Ruleset`], so what the engine programmed compares with what it meant to. None when the
    /// table does not exist.
    pub fn dump(&self, family: Family, name: &str) -> Option<String> {
        let inner = self.inner();
        let t = inner.state.tables.get(&(family.nfproto(), name.to_string()))?;
        Some(dump_table(family, name, t))
    }

    /// Applies a batch; the kernel's answer. Also what another program committing looks like.
    fn apply(&self, batch: &FinishedBatch) -> Result<CommitStats, NetlinkError> {
        let Some(_) = batch.last_seq else {
            return Ok(CommitStats::default());
        };
        let mut inner = self.inner();
        let decoded = match decode_batch(&batch.bytes) {
            Ok(d) => d,
            Err(e) => {
                let err = KernelError { what: format!("the batch ({e})"), errno: libc::EINVAL, message: None };
                return Err(NetlinkError::Rejected(vec![err]));
            }
        };
        let planned = inner.failures.iter().position(|f| f.skip == 0);
        for f in inner.failures.iter_mut() {
            f.skip = f.skip.saturating_sub(1);
        }
        let planned = planned.map(|i| inner.failures.remove(i));
        let mut next = inner.state.clone();
        let mut refused: Option<Refusal> = None;
        let mut changed = false;
        for (i, m) in decoded.messages.iter().enumerate() {
            if let Some(p) = planned
                && i == p.at_message.min(decoded.messages.len() - 1)
            {
                refused = Some((i, p.errno));
                break;
            }
            match next.apply(m) {
                Ok(c) => changed |= c,
                Err(errno) => {
                    refused = Some((i, errno));
                    break;
                }
            }
        }
        let record = CommitRecord {
            messages: batch.msgs.iter().map(|m| m.what.clone()).collect(),
            committed: refused.is_none(),
        };
        inner.commits.push(record);
        if let Some((i, errno)) = refused {
            let what = batch.msgs.get(i).map_or_else(|| format!("message {i}"), |m| m.what.clone());
            return Err(NetlinkError::Rejected(vec![KernelError { what, errno, message: None }]));
        }
        // A transaction that changed nothing is not a commit for the kernel: no new generation.
        if changed {
            next.generation = next.generation.wrapping_add(1);
        }
        inner.state = next;
        Ok(CommitStats { messages: batch.msgs.len(), bytes: batch.bytes.len() })
    }

    fn read<T>(&self, f: impl FnOnce(&State) -> io::Result<T>) -> io::Result<T> {
        let inner = self.inner();
        if let Some(e) = inner.read_error {
            return Err(io::Error::from_raw_os_error(e));
        }
        f(&inner.state)
    }
}

fn enoent<T>() -> Result<T, i32> {
    Err(libc::ENOENT)
}

impl State {
    fn table(&mut self, family: NfFamily, table: &str) -> Result<&mut FakeTable, i32> {
        self.tables.get_mut(&(family, table.to_string())).ok_or(libc::ENOENT)
    }

    /// One message, as the kernel's transaction would take it: Err(errno) refuses the batch;
    /// Ok(false) when it adds nothing to the transaction (the kernel's commit of a transaction
    /// holding nothing leaves the generation as it was).
    fn apply(&mut self, m: &Message) -> Result<bool, i32> {
        match m {
            Message::BatchBegin | Message::BatchEnd => Ok(false),
            Message::AddTable { family, name, comment } => {
                let key = (*family, name.clone());
                if self.tables.contains_key(&key) {
                    return Ok(false);
                }
                self.tables.insert(key, FakeTable { comment: comment.clone(), ..Default::default() });
                Ok(true)
            }
            Message::DelTable { family, name } => match self.tables.remove(&(*family, name.clone())) {
                Some(_) => Ok(true),
                None => enoent(),
            },
            Message::AddChain { family, table, name, base } => {
                let t = self.table(*family, table)?;
                match t.chains.get(name) {
                    Some(c) if c.base != *base => Err(libc::EEXIST),
                    // An update of an existing chain is a transaction of its own for the kernel.
                    Some(_) => Ok(true),
                    None => {
                        t.chains.insert(name.clone(), FakeChain { base: base.clone(), rules: Vec::new() });
                        Ok(true)
                    }
                }
            }
            Message::DelChain { family, table, name } => {
                let t = self.table(*family, table)?;
                if !t.chains.contains_key(name) {
                    return enoent();
                }
                if t.chain_in_use(name) {
                    return Err(libc::EBUSY);
                }
                t.chains.remove(name);
                Ok(true)
            }
            Message::FlushChain { family, table, chain } => {
                let t = self.table(*family, table)?;
                let rules = &mut t.chains.get_mut(chain).ok_or(libc::ENOENT)?.rules;
                let had = !rules.is_empty();
                rules.clear();
                Ok(had)
            }
            Message::AddRule { family, table, chain, exprs, comment } => {
                let t = self.table(*family, table)?;
                for e in exprs {
                    match e {
                        Expr::Immediate(Verdict::Jump(c) | Verdict::Goto(c)) if !t.chains.contains_key(c) => {
                            return enoent();
                        }
                        Expr::Lookup { set, dreg, .. } => {
                            let s = t.sets.get(set).ok_or(libc::ENOENT)?;
                            // A map lookup needs a map, a membership test a set.
                            if dreg.is_some() != s.spec.data.is_some() {
                                return Err(libc::EINVAL);
                            }
                        }
                        Expr::Dynset { set, .. } if !t.sets.contains_key(set) => return enoent(),
                        _ => {}
                    }
                }
                t.chains.get_mut(chain).ok_or(libc::ENOENT)?.rules.push((exprs.clone(), comment.clone()));
                Ok(true)
            }
            Message::AddSet { family, table, spec, .. } => {
                // A map says so in its flags, and only a map has data.
                if spec.data.is_some() != (spec.flags & NFT_SET_MAP != 0) {
                    return Err(libc::EINVAL);
                }
                let t = self.table(*family, table)?;
                match t.sets.get_mut(&spec.name) {
                    Some(s) if !same_set(&s.spec, spec) => Err(libc::EEXIST),
                    // As for chains: the kernel counts the update as a change. Since Linux 6.10
                    // it takes a new timeout (`nf_tables_newset`'s set update), elements kept.
                    Some(s) => {
                        s.spec.timeout_ms = spec.timeout_ms;
                        Ok(true)
                    }
                    None => {
                        t.sets.insert(spec.name.clone(), FakeSet { spec: spec.clone(), elements: BTreeMap::new() });
                        Ok(true)
                    }
                }
            }
            Message::DelSet { family, table, name } => {
                let t = self.table(*family, table)?;
                if !t.sets.contains_key(name) {
                    return enoent();
                }
                if t.set_in_use(name) {
                    return Err(libc::EBUSY);
                }
                t.sets.remove(name);
                Ok(true)
            }
            Message::AddElems { family, table, set, elems, .. } => {
                let t = self.table(*family, table)?;
                let chains: Vec<String> = t.chains.keys().cloned().collect();
                let s = t.sets.get_mut(set).ok_or(libc::ENOENT)?;
                let mut added = false;
                for e in elems {
                    check_element(&s.spec, e, &chains)?;
                    match s.elements.get(&e.key) {
                        Some((data, _)) if *data != e.data => return Err(ELEMENT_CLASH),
                        // The same element again: nothing for the transaction.
                        Some(_) => {}
                        None => {
                            s.elements.insert(e.key.clone(), (e.data.clone(), e.comment.clone()));
                            added = true;
                        }
                    }
                }
                Ok(added)
            }
            Message::DelElems { family, table, set, elems } => {
                let t = self.table(*family, table)?;
                let s = t.sets.get_mut(set).ok_or(libc::ENOENT)?;
                for e in elems {
                    s.elements.remove(&e.key).ok_or(libc::ENOENT)?;
                }
                Ok(true)
            }
            Message::FlushSet { family, table, set } => {
                let t = self.table(*family, table)?;
                let elements = &mut t.sets.get_mut(set).ok_or(libc::ENOENT)?.elements;
                let had = !elements.is_empty();
                elements.clear();
                Ok(had)
            }
        }
    }
}

/// Two declarations of one set the kernel takes as the same (an add of an existing set): all
/// but the timeout, which such an add updates.
fn same_set(a: &SetSpec, b: &SetSpec) -> bool {
    (a.flags, a.key_type, a.key_len, a.data) == (b.flags, b.key_type, b.key_len, b.data)
}

fn check_element(spec: &SetSpec, e: &Elem, chains: &[String]) -> Result<(), i32> {
    if e.key.len() != spec.key_len as usize {
        return Err(libc::EINVAL);
    }
    if e.timeout_ms.is_some() && spec.flags & NFT_SET_TIMEOUT == 0 {
        return Err(libc::EINVAL);
    }
    match (spec.data, &e.data) {
        (None, None) => Ok(()),
        (Some((NFT_DATA_VERDICT, _)), Some(ElemData::Verdict(v))) => match v {
            Verdict::Jump(c) | Verdict::Goto(c) if !chains.contains(c) => enoent(),
            _ => Ok(()),
        },
        (Some((ty, len)), Some(ElemData::Value(v))) if ty != NFT_DATA_VERDICT && v.len() == len as usize => Ok(()),
        _ => Err(libc::EINVAL),
    }
}

impl FakeTable {
    /// Whether anything but the chain's own rules jumps to it: rules of other chains, map
    /// elements.
    fn chain_in_use(&self, name: &str) -> bool {
        let jumps = |v: &Verdict| matches!(v, Verdict::Jump(c) | Verdict::Goto(c) if c == name);
        let from_rules = self.chains.iter().filter(|(n, _)| *n != name).any(|(_, c)| {
            c.rules.iter().flat_map(|(exprs, _)| exprs).any(|e| matches!(e, Expr::Immediate(v) if jumps(v)))
        });
        let from_elements = self
            .sets
            .values()
            .flat_map(|s| s.elements.values())
            .any(|(d, _)| matches!(d, Some(ElemData::Verdict(v)) if jumps(v)));
        from_rules || from_elements
    }

    /// Whether a rule looks the set up or updates it.
    fn set_in_use(&self, name: &str) -> bool {
        self.chains.values().flat_map(|c| &c.rules).flat_map(|(exprs, _)| exprs).any(|e| match e {
            Expr::Lookup { set, .. } | Expr::Dynset { set, .. } => set == name,
            _ => false,
        })
    }

    fn observe(&self, count: &dyn Fn(&str) -> bool) -> Observed {
        Observed {
            chains: self.chains.iter().map(|(n, c)| (n.clone(), c.rules.len())).collect(),
            sets: self
                .sets
                .iter()
                .map(|(n, s)| {
                    let counted = s.spec.flags & NFT_SET_EVAL == 0 && count(n);
                    (n.clone(), counted.then_some(s.elements.len()))
                })
                .collect(),
            bases: self.chains.iter().filter_map(|(n, c)| Some((n.clone(), c.base.clone()?))).collect(),
            filled_by_packets: self
                .sets
                .values()
                .filter(|s| s.spec.flags & NFT_SET_EVAL != 0)
                .map(|s| DumpedSet::of(&s.spec))
                .collect(),
        }
    }
}

impl ConntrackTable for FakeNetfilter {
    fn dump(&mut self, family: NfFamily) -> io::Result<Vec<CtEntry>> {
        let inner = self.inner();
        if let Some(e) = inner.conntrack_error {
            return Err(io::Error::from_raw_os_error(e));
        }
        let v4 = family == NfFamily::Ip;
        Ok(inner.conntrack.iter().filter(|e| e.orig_src.is_ipv4() == v4).cloned().collect())
    }

    fn delete(&mut self, e: &CtEntry) -> io::Result<()> {
        self.inner().conntrack.retain(|x| x != e);
        Ok(())
    }
}

impl Netfilter for FakeNetfilter {
    fn commit(&mut self, batch: &FinishedBatch) -> Result<CommitStats, NetlinkError> {
        self.apply(batch)
    }

    fn generation(&mut self) -> io::Result<u32> {
        self.read(|s| Ok(s.generation))
    }

    fn table_exists(&mut self, family: Family, name: &str) -> io::Result<bool> {
        self.read(|s| Ok(s.tables.contains_key(&(family.nfproto(), name.to_string()))))
    }

    fn observe(&mut self, family: Family, count: &dyn Fn(&str) -> bool) -> io::Result<Option<Observed>> {
        self.inner().observations += 1;
        self.read(|s| Ok(s.tables.get(&(family.nfproto(), TABLE.to_string())).map(|t| t.observe(count))))
    }

    fn elements_by_key(&mut self, family: Family, set: &str, keys: &[&[u8]]) -> io::Result<Vec<Elem>> {
        let missing = || io::Error::from_raw_os_error(libc::ENOENT);
        self.read(|s| {
            let t = s.tables.get(&(family.nfproto(), TABLE.to_string())).ok_or_else(missing)?;
            let set = t.sets.get(set).ok_or_else(missing)?;
            keys.iter()
                .map(|k| {
                    let (data, _) = set.elements.get(*k).ok_or_else(missing)?;
                    Ok(Elem { key: k.to_vec(), data: data.clone(), timeout_ms: None, comment: None })
                })
                .collect()
        })
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn dump_table(family: Family, name: &str, t: &FakeTable) -> String {
    let mut out = format!("table {} {name}", family.word());
    if let Some(c) = &t.comment {
        let _ = write!(out, " comment {c:?}");
    }
    out.push('\n');
    for (n, s) in &t.sets {
        let data = s.spec.data.map_or("-".to_string(), |(ty, len)| format!("{ty}/{len}"));
        let timeout = s.spec.timeout_ms.map_or(String::new(), |ms| format!(" timeout {ms}ms"));
        let (flags, key_type, key_len) = (s.spec.flags, s.spec.key_type, s.spec.key_len);
        let _ = writeln!(out, "  set {n} flags {flags:#x} key {key_type}/{key_len} data {data}{timeout}");
        for (k, (d, c)) in &s.elements {
            let _ = write!(out, "    {}", hex(k));
            match d {
                Some(ElemData::Verdict(v)) => {
                    let _ = write!(out, " : {}", verdict_text(v));
                }
                Some(ElemData::Value(v)) => {
                    let _ = write!(out, " : {}", hex(v));
                }
                None => {}
            }
            if let Some(c) = c {
                let _ = write!(out, " comment {c:?}");
            }
            out.push('\n');
        }
    }
    for (n, c) in &t.chains {
        let _ = writeln!(out, "  chain {n}");
        if let Some(b) = &c.base {
            let _ = writeln!(out, "    type {} hook {} priority {}", b.chain_type.name(), b.hook.name(), b.priority);
        }
        for (exprs, comment) in &c.rules {
            let _ = write!(out, "    rule {exprs:?}");
            if let Some(c) = comment {
                let _ = write!(out, " comment {c:?}");
            }
            out.push('\n');
        }
    }
    out
}

/// What the kernel holds after `r` was programmed, in [`FakeNetfilter::dump`]'s format, made
/// straight from the ruleset (no batch): the test that the batches the engine sent built what it
/// meant. Comments are cut as the encoder cuts them.
pub fn wire_dump(r: &Ruleset) -> String {
    let mut t = FakeTable { comment: Some(TABLE_COMMENT.to_string()), ..Default::default() };
    for (name, decl) in &r.sets {
        let elements = r.elements[name]
            .iter()
            .map(|(k, v)| {
                let e = v.wire(k);
                (e.key, (e.data, e.comment.map(|c| nftproxy_nft_wire::batch::comment(&c).to_string())))
            })
            .collect();
        t.sets.insert(name.clone(), FakeSet { spec: decl.spec.clone(), elements });
    }
    for (name, c) in &r.chains {
        let rules = c
            .rules
            .iter()
            .map(|rule| {
                (rule.exprs.clone(), rule.comment.as_deref().map(|c| nftproxy_nft_wire::batch::comment(c).to_string()))
            })
            .collect();
        t.chains.insert(name.clone(), FakeChain { base: c.base.clone(), rules });
    }
    dump_table(r.family, TABLE, &t)
}

/// Small objects for tests of the fake and of the kernel against it (an IPv4 address key, a
/// verdict map, a value map).
pub mod fixtures {
    use nftproxy_nft_wire::consts::{NFT_DATA_VERDICT, NFT_SET_EVAL, NFT_SET_MAP, NFT_SET_TIMEOUT};
    use nftproxy_nft_wire::{Elem, ElemData, SetSpec, Verdict};

    /// A map from an IPv4 address to a verdict.
    pub fn verdict_map(name: &str) -> SetSpec {
        SetSpec {
            name: name.into(),
            flags: NFT_SET_MAP,
            key_type: 7,
            key_len: 4,
            data: Some((NFT_DATA_VERDICT, 0)),
            timeout_ms: None,
            udata: vec![],
        }
    }

    /// A map from an IPv4 address to an IPv4 address.
    pub fn value_map(name: &str) -> SetSpec {
        SetSpec { data: Some((7, 4)), ..verdict_map(name) }
    }

    /// A set of IPv4 addresses that packets fill, each forgotten `timeout_s` seconds after it
    /// was last seen (ClientIP affinity's).
    pub fn affinity_set(name: &str, timeout_s: u64) -> SetSpec {
        SetSpec {
            flags: NFT_SET_TIMEOUT | NFT_SET_EVAL,
            data: None,
            timeout_ms: Some(timeout_s * 1000),
            ..verdict_map(name)
        }
    }

    /// A verdict-map element: `key : goto chain`, with a comment.
    pub fn goto(key: [u8; 4], chain: &str) -> Elem {
        Elem {
            key: key.to_vec(),
            data: Some(ElemData::Verdict(Verdict::Goto(chain.into()))),
            timeout_ms: None,
            comment: Some("ns/svc:p".into()),
        }
    }

    /// A value-map element.
    pub fn value(key: [u8; 4], v: [u8; 4]) -> Elem {
        Elem { key: key.to_vec(), data: Some(ElemData::Value(v.to_vec())), timeout_ms: None, comment: None }
    }
}

#[cfg(test)]
mod tests;
