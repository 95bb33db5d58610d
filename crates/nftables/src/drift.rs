//! Drift detection: has someone else changed our table since we programmed it? The cheap part is
//! the ruleset generation (one round trip): unchanged since our last commit means nobody
//! committed anything. Only when it moved do we dump our table's chains, rule counts and sets
//! and compare them with what we programmed. The elements are looked at by the deep check (at
//! most once per sync period), in a cost that does not grow with the cluster:
//! - a set of at most [`COUNTED_SET_MAX`] elements is dumped and its elements counted (one or
//!   two netlink answers);
//! - a larger set is audited: a window of [`AUDIT_WINDOW`] of its elements, the next ones each
//!   time (wrapping), is asked for by key (NFT_MSG_GETSETELEM, not a dump) and each answer's
//!   data compared with ours. The deep check does the first window; the daemon runs the next
//!   ones as separate short steps (`NftablesBackend::audit_step`) until every element was looked
//!   at, and only then counts the generation as seen.
//!   Counting a large set instead would cost a dump whose kernel work grows with the square of
//!   the set (a dump resumes by skipping the elements already sent): 68 ms at 10,000 Services ×
//!   3, 2.2 s at 50,000 × 3, 29.6 s at 50,000 × 10, all of it on the sync loop.
//!
//! What this cannot see: an element someone added to a large set (a count would; the audit only
//! asks for ours), an element of a large set changed or deleted until the window reaches it, an
//! element of a small set deleted and re-added with other data in one transaction, a rule
//! replaced in place (at 500,000 elements the audit needs 1,954 steps to reach every one).
//! Deletions, flushes and new or removed chains and sets — what tools and people do — are seen at
//! the next check.

use std::collections::BTreeMap;

use nftproxy_nft_wire::consts::*;
use nftproxy_nft_wire::{BaseChain, ChainType, ElemData, Hook, Verdict};

use crate::family::Family;
use crate::netfilter::Netfilter;
use crate::netlink::NftSocket;
use crate::ruleset::{ElemValue, Key, Ruleset, SetElements, TABLE};
use nftproxy_nft_wire::Elem;
use nftproxy_nft_wire::netlink::{attrs, be32_attr, be64_attr, name_attr, str_attr};

/// Sets up to this size are counted by a dump at the deep check.
pub const COUNTED_SET_MAX: usize = 1024;
/// Elements of one larger set asked for by key per audit step (one netlink message of keys;
/// ~0.3 ms of kernel and socket work here).
pub const AUDIT_WINDOW: usize = 256;

/// Our table as the kernel has it, reduced to what we compare.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Observed {
    /// Chain → number of rules.
    pub chains: BTreeMap<String, usize>,
    /// Set → number of elements (None: not counted — filled by packets, or audited instead).
    pub sets: BTreeMap<String, Option<usize>>,
    /// The base chains among `chains`: type, hook and priority. A rebuild in place keeps those
    /// that are as we want them ([`crate::plan::rebuild_in_place`]).
    pub bases: BTreeMap<String, BaseChain>,
    /// The sets among `sets` that packets fill (ClientIP affinity): what they are declared as. A
    /// rebuild in place keeps those that are as we want them, and so the clients they remember.
    pub filled_by_packets: Vec<DumpedSet>,
}

/// A set as a dump declares it, reduced to what decides whether we would declare it the same.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DumpedSet {
    pub name: String,
    pub flags: u32,
    pub key_len: u32,
    pub timeout_ms: Option<u64>,
}

impl DumpedSet {
    /// What a dump of the set `spec` declares would say.
    pub fn of(spec: &nftproxy_nft_wire::SetSpec) -> DumpedSet {
        DumpedSet { name: spec.name.clone(), flags: spec.flags, key_len: spec.key_len, timeout_ms: spec.timeout_ms }
    }

    /// Whether `spec` declares this set as the kernel holds it but perhaps for its timeout,
    /// which an add of the set updates in place: the set can stay, with its elements.
    pub fn kept_as(&self, spec: &nftproxy_nft_wire::SetSpec) -> bool {
        (self.name.as_str(), self.flags, self.key_len) == (spec.name.as_str(), spec.flags, spec.key_len)
    }
}

/// Dumps our table of a family; None when it does not exist. The elements of the sets `count`
/// names are counted (a dump of each). The kernel side of [`Netfilter::observe`].
pub fn observe(
    sock: &mut NftSocket,
    nfproto: nftproxy_nft_wire::NfFamily,
    count: &dyn Fn(&str) -> bool,
) -> std::io::Result<Option<Observed>> {
    if !sock.table_exists(nfproto, TABLE)? {
        return Ok(None);
    }
    let mut obs = Observed::default();
    for msg in sock.dump(NFT_MSG_GETCHAIN, nfproto, &name_attr(NFTA_CHAIN_TABLE, TABLE))? {
        if let Some(n) = dumped_chain(&msg) {
            obs.chains.entry(n).or_insert(0);
        }
        if let Some((n, base)) = dumped_base_chain(&msg) {
            obs.bases.insert(n, base);
        }
    }
    for msg in sock.dump(NFT_MSG_GETRULE, nfproto, &name_attr(NFTA_RULE_TABLE, TABLE))? {
        if let Some(n) = dumped_rule_chain(&msg) {
            *obs.chains.entry(n).or_insert(0) += 1;
        }
    }
    let mut sets = Vec::new();
    for msg in sock.dump(NFT_MSG_GETSET, nfproto, &name_attr(NFTA_SET_TABLE, TABLE))? {
        if let Some(set) = dumped_set(&msg) {
            sets.push(set);
        }
    }
    for set in sets {
        if set.flags & NFT_SET_EVAL != 0 {
            obs.sets.insert(set.name.clone(), None);
            obs.filled_by_packets.push(set);
            continue;
        }
        let name = set.name;
        if !count(&name) {
            obs.sets.insert(name, None);
            continue;
        }
        let mut filter = name_attr(NFTA_SET_ELEM_LIST_TABLE, TABLE);
        filter.extend(name_attr(NFTA_SET_ELEM_LIST_SET, &name));
        let count = sock.dump(NFT_MSG_GETSETELEM, nfproto, &filter)?.iter().map(|msg| counted_elements(msg)).sum();
        obs.sets.insert(name, Some(count));
    }
    // In name order, as the fake lists them (the kernel lists sets as created).
    obs.filled_by_packets.sort_unstable_by(|a, b| a.name.cmp(&b.name));
    Ok(Some(obs))
}

/// The window of a large set to audit: up to [`AUDIT_WINDOW`] elements after `after` (from the
/// start when None), wrapping around to the first ones. Returns them and the cursor for next
/// time (the last key of the window).
pub fn audit_window<'a>(
    elements: &'a SetElements,
    after: Option<&Key>,
) -> (Vec<(&'a Key, &'a ElemValue)>, Option<Key>) {
    let mut window: Vec<(&Key, &ElemValue)> = elements.after(after).take(AUDIT_WINDOW).collect();
    if window.len() < AUDIT_WINDOW {
        let more = AUDIT_WINDOW.min(elements.len()) - window.len();
        window.extend(elements.iter().take(more).filter(|(k, _)| after.is_none_or(|a| *k <= a)));
    }
    let cursor = window.last().map(|(k, _)| *(*k));
    (window, cursor)
}

/// Asks the kernel for these elements of `set` by key; the first one missing or holding other
/// data than ours is the difference.
pub fn audit(
    nf: &mut (impl Netfilter + ?Sized),
    family: Family,
    set: &str,
    window: &[(&Key, &ElemValue)],
) -> std::io::Result<Option<String>> {
    for chunk in window.chunks(nftproxy_nft_wire::batch::ELEMS_PER_MESSAGE) {
        let keys: Vec<&[u8]> = chunk.iter().map(|(k, _)| k.bytes()).collect();
        let answers = match nf.elements_by_key(family, set, &keys) {
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {
                return Ok(Some(format!("set {set} lost elements we programmed")));
            }
            other => other?,
        };
        if let Some(diff) = compare_answers(set, chunk, &answers) {
            return Ok(Some(diff));
        }
    }
    Ok(None)
}

/// The elements answered to a GETSETELEM by key against what we programmed for those keys.
pub(crate) fn compare_answers(set: &str, asked: &[(&Key, &ElemValue)], got: &[Elem]) -> Option<String> {
    if got.len() != asked.len() {
        return Some(format!("set {set}: {} of {} elements asked for by key were answered", got.len(), asked.len()));
    }
    for ((key, value), got) in asked.iter().zip(got) {
        let want = value.wire(key);
        if want.key != got.key {
            return Some(format!("set {set}: an element was answered for another key"));
        }
        if want.data != got.data {
            return Some(format!("set {set}: an element holds {:?}, we programmed {:?}", got.data, want.data));
        }
    }
    None
}

/// One element of a NEWSETELEM answer (a dump's or a get's), as far as we read them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct AnsweredElem {
    pub key: Vec<u8>,
    pub data: Option<ElemData>,
    pub userdata: Option<Vec<u8>>,
}

/// The elements of one NEWSETELEM answer; attributes we do not read (flags, expiration) are
/// skipped. Also `kube-nftproxy trace`'s reader of element comments.
pub(crate) fn answered_elements(msg: &[u8]) -> Vec<AnsweredElem> {
    let mut out = Vec::new();
    for (_, list) in attrs(msg).filter(|(t, _)| *t == NFTA_SET_ELEM_LIST_ELEMENTS) {
        for (_, elem) in attrs(list) {
            let mut a = AnsweredElem { key: Vec::new(), data: None, userdata: None };
            for (t, v) in attrs(elem) {
                match t {
                    NFTA_SET_ELEM_KEY => {
                        a.key =
                            attrs(v).find(|(t, _)| *t == NFTA_DATA_VALUE).map(|(_, k)| k.to_vec()).unwrap_or_default()
                    }
                    NFTA_SET_ELEM_DATA => a.data = answered_data(v),
                    NFTA_SET_ELEM_USERDATA => a.userdata = Some(v.to_vec()),
                    _ => {}
                }
            }
            out.push(a);
        }
    }
    out
}

fn answered_data(nest: &[u8]) -> Option<ElemData> {
    for (t, v) in attrs(nest) {
        match t {
            NFTA_DATA_VALUE => return Some(ElemData::Value(v.to_vec())),
            NFTA_DATA_VERDICT => {
                let mut code = None;
                let mut chain = None;
                for (t, v) in attrs(v) {
                    match t {
                        NFTA_VERDICT_CODE => code = be32_attr(v).map(|c| c as i32),
                        NFTA_VERDICT_CHAIN => chain = Some(str_attr(v)),
                        _ => {}
                    }
                }
                return Verdict::from_code(code?, chain).map(ElemData::Verdict);
            }
            _ => {}
        }
    }
    None
}

// The parsing of the dumps, apart from the socket (property tests feed them any bytes). Each
// takes one answer's attributes (after the nfgenmsg).

/// The name of a chain (NFT_MSG_NEWCHAIN answer).
pub(crate) fn dumped_chain(msg: &[u8]) -> Option<String> {
    attrs(msg).find(|(t, _)| *t == NFTA_CHAIN_NAME).map(|(_, n)| str_attr(n))
}

/// A base chain's name, type, hook and priority (NFT_MSG_NEWCHAIN answer); None for a regular
/// chain or an unknown type or hook.
pub(crate) fn dumped_base_chain(msg: &[u8]) -> Option<(String, BaseChain)> {
    let (mut name, mut chain_type, mut hook, mut priority) = (None, None, None, None);
    for (t, v) in attrs(msg) {
        match t {
            NFTA_CHAIN_NAME => name = Some(str_attr(v)),
            NFTA_CHAIN_TYPE => chain_type = ChainType::from_name(&str_attr(v)),
            NFTA_CHAIN_HOOK => {
                for (t, v) in attrs(v) {
                    match t {
                        NFTA_HOOK_HOOKNUM => hook = be32_attr(v).and_then(Hook::from_number),
                        NFTA_HOOK_PRIORITY => priority = be32_attr(v).map(|p| p as i32),
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    Some((name?, BaseChain { chain_type: chain_type?, hook: hook?, priority: priority? }))
}

/// The chain of a rule (NFT_MSG_NEWRULE answer).
pub(crate) fn dumped_rule_chain(msg: &[u8]) -> Option<String> {
    attrs(msg).find(|(t, _)| *t == NFTA_RULE_CHAIN).map(|(_, n)| str_attr(n))
}

/// A set's name, flags, key length and timeout (NFT_MSG_NEWSET answer; 0 or None when absent
/// or short).
pub(crate) fn dumped_set(msg: &[u8]) -> Option<DumpedSet> {
    let mut name = None;
    let mut set = DumpedSet::default();
    for (t, v) in attrs(msg) {
        match t {
            NFTA_SET_NAME => name = Some(str_attr(v)),
            NFTA_SET_FLAGS => set.flags = be32_attr(v).unwrap_or(0),
            NFTA_SET_KEY_LEN => set.key_len = be32_attr(v).unwrap_or(0),
            NFTA_SET_TIMEOUT => set.timeout_ms = be64_attr(v), // milliseconds
            _ => {}
        }
    }
    set.name = name?;
    Some(set)
}

/// The elements of one NFT_MSG_NEWSETELEM answer, interval ends not counted.
pub(crate) fn counted_elements(msg: &[u8]) -> usize {
    let mut count = 0;
    for (t, list) in attrs(msg) {
        if t != NFTA_SET_ELEM_LIST_ELEMENTS {
            continue;
        }
        for (_, elem) in attrs(list) {
            // Interval sets hold a range as a start and an end element: count starts.
            let end = attrs(elem).any(|(t, v)| {
                t == NFTA_SET_ELEM_FLAGS && be32_attr(v).is_some_and(|f| f & NFT_SET_ELEM_INTERVAL_END != 0)
            });
            if !end {
                count += 1;
            }
        }
    }
    count
}

/// What differs between what we programmed and what the kernel has (first difference only),
/// or None. Sets observed without a count are compared by name only.
pub fn compare(want: &Ruleset, got: Option<&Observed>) -> Option<String> {
    let fam = want.family.word();
    let Some(got) = got else {
        return Some(format!("table {fam} {TABLE} is gone"));
    };
    for (name, chain) in &want.chains {
        match got.chains.get(name) {
            None => return Some(format!("chain {name} is gone")),
            Some(&n) if n != chain.rules.len() => {
                return Some(format!("chain {name} has {n} rules, we programmed {}", chain.rules.len()));
            }
            _ => {}
        }
    }
    // `kube-nftproxy trace` adds short-lived chains of its own: not drift.
    if let Some(extra) =
        got.chains.keys().find(|c| !want.chains.contains_key(*c) && !c.starts_with(crate::trace::TRACE_CHAIN_PREFIX))
    {
        return Some(format!("chain {extra} was added"));
    }
    for name in want.sets.keys() {
        match got.sets.get(name) {
            None => return Some(format!("set {name} is gone")),
            Some(Some(n)) => {
                let want_n = want.elements.get(name).map_or(0, SetElements::len);
                if *n != want_n {
                    return Some(format!("set {name} has {n} elements, we programmed {want_n}"));
                }
            }
            Some(None) => {}
        }
    }
    if let Some(extra) = got.sets.keys().find(|s| !want.sets.contains_key(*s)) {
        return Some(format!("set {extra} was added"));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use nftproxy_model::NodeContext;

    fn observed_of(r: &Ruleset) -> Observed {
        Observed {
            chains: r.chains.iter().map(|(k, c)| (k.clone(), c.rules.len())).collect(),
            sets: r.elements.iter().map(|(k, e)| (k.clone(), Some(e.len()))).collect(),
            ..Observed::default()
        }
    }

    use crate::ruleset::{ElemValue, Field, Key, Value};
    use nftproxy_nft_wire::Batch;

    fn elements(n: u32) -> SetElements {
        (0..n)
            .map(|i| {
                let key = Key::of(&[Field::Addr(std::net::Ipv4Addr::from(0x0a00_0000 + i).into()), Field::Port(80)]);
                let value = Value::Verdict(Verdict::Goto(format!("chain-{}", i % 3)));
                (key, ElemValue { value, comment: None })
            })
            .collect()
    }

    #[test]
    fn the_audit_window_rolls_over_every_element_and_wraps() {
        let n = 2 * AUDIT_WINDOW + AUDIT_WINDOW / 2;
        let set = elements(n as u32);
        let mut seen = std::collections::BTreeSet::new();
        let mut cursor = None;
        for round in 0..3 {
            let (window, next) = audit_window(&set, cursor.as_ref());
            assert_eq!(window.len(), AUDIT_WINDOW, "round {round}");
            seen.extend(window.iter().map(|(k, _)| **k));
            cursor = next;
        }
        assert_eq!(seen.len(), n, "three windows cover two and a half windows' worth");
        // The third window wrapped: it ends inside the first one.
        assert_eq!(cursor, Some(*set.keys().nth(3 * AUDIT_WINDOW - n - 1).unwrap()));
        let small = elements(10);
        let (window, _) = audit_window(&small, small.keys().nth(4));
        assert_eq!(window.len(), 10, "a set smaller than the window: each element once");
    }

    /// What the kernel answers to GETSETELEM has the layout of a NEWSETELEM message: encoded by
    /// our batch writer here, parsed back, and compared.
    #[test]
    fn answers_are_compared_key_and_data() {
        let set = elements(4);
        let asked: Vec<(&Key, &ElemValue)> = set.iter().collect();
        let answer = |elems: Vec<nftproxy_nft_wire::Elem>| {
            let mut b = Batch::new(1);
            b.add_elems(nftproxy_nft_wire::NfFamily::Ip, TABLE, "m", None, &elems);
            let fb = b.finish();
            let msgs = nftproxy_nft_wire::split_messages(&fb.bytes);
            // Between batch begin and end; the attributes after the nfgenmsg.
            let answers: Vec<Vec<u8>> = msgs[1..msgs.len() - 1].iter().map(|(_, _, p)| p[4..].to_vec()).collect();
            answers
                .iter()
                .flat_map(|a| answered_elements(a))
                .map(|a| nftproxy_nft_wire::Elem { key: a.key, data: a.data, timeout_ms: None, comment: None })
                .collect::<Vec<_>>()
        };
        let same: Vec<_> = asked.iter().map(|(k, v)| v.wire(k)).collect();
        assert_eq!(compare_answers("m", &asked, &answer(same.clone())), None);
        let mut other = same.clone();
        other[2].data = Some(ElemData::Verdict(Verdict::Goto("elsewhere".into())));
        let diff = compare_answers("m", &asked, &answer(other)).unwrap();
        assert!(diff.starts_with("set m: an element holds Some(Verdict(Goto(\"elsewhere\")))"), "{diff}");
        let diff = compare_answers("m", &asked, &answer(same[..3].to_vec())).unwrap();
        assert_eq!(diff, "set m: 3 of 4 elements asked for by key were answered");
        let request = nftproxy_nft_wire::get_elems_request(TABLE, "m", &[asked[0].0.bytes()]);
        let keys_only = AnsweredElem { key: asked[0].0.bytes().to_vec(), data: None, userdata: None };
        assert_eq!(answered_elements(&request), vec![keys_only], "a request is keys only");
    }

    #[test]
    fn differences_are_named() {
        let want = crate::fixed_table(Family::V4, &NodeContext::default());
        let same = observed_of(&want);
        assert_eq!(compare(&want, Some(&same)), None);
        assert_eq!(compare(&want, None).as_deref(), Some("table ip kube-nftproxy is gone"));
        let (chain, n) = same.chains.iter().find(|(_, n)| **n > 0).map(|(c, n)| (c.clone(), *n)).unwrap();
        let mut fewer = same.clone();
        fewer.chains.insert(chain.clone(), n - 1);
        assert_eq!(compare(&want, Some(&fewer)), Some(format!("chain {chain} has {} rules, we programmed {n}", n - 1)));
        let mut extra = same.clone();
        extra.chains.insert("debug".into(), 1);
        assert_eq!(compare(&want, Some(&extra)).as_deref(), Some("chain debug was added"));
        let set = same.sets.keys().next().unwrap().clone();
        let mut gone = same.clone();
        gone.sets.remove(&set);
        assert_eq!(compare(&want, Some(&gone)), Some(format!("set {set} is gone")));
        let mut dynamic = same.clone();
        dynamic.sets.insert(set, None);
        assert_eq!(compare(&want, Some(&dynamic)), None, "sets filled by packets are not counted");
    }
}
