//! Drift detection: has someone else changed our table since we programmed it? The cheap part is
//! the ruleset generation (one round trip): unchanged since our last commit means nobody
//! committed anything. Only when it moved do we dump our table (chains, rule counts, sets and
//! element counts) and compare it with what we programmed.
//!
//! What this cannot see: an element deleted and re-added with other data in one transaction by
//! someone else (counts unchanged), or a rule replaced in place. Both need deliberate editing of
//! our table; deletions, flushes and additions — what tools and people do — are seen.

use std::collections::BTreeMap;

use nftproxy_nft_wire::consts::*;

use crate::netlink::{NftSocket, attrs, name_attr, str_attr};
use crate::ruleset::{Ruleset, TABLE};

/// Our table as the kernel has it, reduced to what we compare.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Observed {
    /// Chain → number of rules.
    pub chains: BTreeMap<String, usize>,
    /// Set → number of elements (None: filled by packets, not compared).
    pub sets: BTreeMap<String, Option<usize>>,
}

/// Dumps our table of a family; None when it does not exist. Element counts only with
/// `elements` (a dump of every element: 80 ms at 10,000 services, 1.3 s at 50,000).
pub fn observe(sock: &mut NftSocket, nfproto: u8, elements: bool) -> std::io::Result<Option<Observed>> {
    if !sock.table_exists(nfproto, TABLE)? {
        return Ok(None);
    }
    let mut obs = Observed::default();
    for msg in sock.dump(NFT_MSG_GETCHAIN, nfproto, &name_attr(NFTA_CHAIN_TABLE, TABLE))? {
        if let Some(n) = dumped_chain(&msg) {
            obs.chains.entry(n).or_insert(0);
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
    for (name, flags) in sets {
        if flags & NFT_SET_EVAL != 0 || !elements {
            obs.sets.insert(name, None);
            continue;
        }
        let mut filter = name_attr(NFTA_SET_ELEM_LIST_TABLE, TABLE);
        filter.extend(name_attr(NFTA_SET_ELEM_LIST_SET, &name));
        let count = sock.dump(NFT_MSG_GETSETELEM, nfproto, &filter)?.iter().map(|msg| counted_elements(msg)).sum();
        obs.sets.insert(name, Some(count));
    }
    Ok(Some(obs))
}

// The parsing of the dumps, apart from the socket (property tests feed them any bytes). Each
// takes one answer's attributes (after the nfgenmsg).

/// The name of a chain (NFT_MSG_NEWCHAIN answer).
pub(crate) fn dumped_chain(msg: &[u8]) -> Option<String> {
    attrs(msg).find(|(t, _)| *t == NFTA_CHAIN_NAME).map(|(_, n)| str_attr(n))
}

/// The chain of a rule (NFT_MSG_NEWRULE answer).
pub(crate) fn dumped_rule_chain(msg: &[u8]) -> Option<String> {
    attrs(msg).find(|(t, _)| *t == NFTA_RULE_CHAIN).map(|(_, n)| str_attr(n))
}

/// A set's name and flags (NFT_MSG_NEWSET answer; flags 0 when absent or short).
pub(crate) fn dumped_set(msg: &[u8]) -> Option<(String, u32)> {
    let mut name = None;
    let mut flags = 0u32;
    for (t, v) in attrs(msg) {
        match t {
            NFTA_SET_NAME => name = Some(str_attr(v)),
            NFTA_SET_FLAGS if v.len() >= 4 => flags = u32::from_be_bytes(v[..4].try_into().unwrap()),
            _ => {}
        }
    }
    Some((name?, flags))
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
                t == NFTA_SET_ELEM_FLAGS
                    && v.len() >= 4
                    && u32::from_be_bytes(v[..4].try_into().unwrap()) & NFT_SET_ELEM_INTERVAL_END != 0
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
                let want_n = want.elements.get(name).map_or(0, BTreeMap::len);
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
    use crate::family::Family;
    use nftproxy_model::NodeContext;

    fn observed_of(r: &Ruleset) -> Observed {
        Observed {
            chains: r.chains.iter().map(|(k, c)| (k.clone(), c.rules.len())).collect(),
            sets: r.elements.iter().map(|(k, e)| (k.clone(), Some(e.len()))).collect(),
        }
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
