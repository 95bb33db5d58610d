//! Our tables as the kernel holds them, in a form two runs can be compared in: what `nft -j
//! list table` prints for `ip` and `ip6 kube-nftproxy`, with handles, counters and timeouts
//! dropped, set elements sorted (the kernel lists hash sets in hash order, which depends on the
//! insertion history) and rules kept in their order within each chain. The fault suite uses it to
//! show that a daemon killed or disturbed at any point converges to exactly what a fresh full
//! sync programs.

use std::collections::BTreeMap;

use serde_json::Value;

use crate::Ns;

pub const TABLE: &str = "kube-nftproxy";

/// Canonical objects by key (`chain ip services`, `rules ip services`, `map ip backends`, …).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TableSnapshot(pub BTreeMap<String, String>);

impl TableSnapshot {
    /// Set and map elements over both families.
    pub fn elements(&self) -> usize {
        self.0
            .iter()
            .filter(|(k, _)| k.starts_with("set ") || k.starts_with("map "))
            .map(|(_, v)| {
                serde_json::from_str::<Value>(v).ok().and_then(|o| o["elem"].as_array().map(|a| a.len())).unwrap_or(0)
            })
            .sum()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The keys that differ (for a readable assertion message).
    pub fn differences(&self, other: &TableSnapshot) -> Vec<String> {
        let mut keys: Vec<&String> = self.0.keys().chain(other.0.keys()).collect();
        keys.sort();
        keys.dedup();
        keys.into_iter()
            .filter(|k| self.0.get(*k) != other.0.get(*k))
            .map(|k| {
                let short = |v: Option<&String>| v.map(|s| s.chars().take(300).collect::<String>());
                format!("{k}: {:?} vs {:?}", short(self.0.get(k)), short(other.0.get(k)))
            })
            .collect()
    }
}

/// Drops what differs between equal rulesets: handles, counter values, element expiry.
fn strip(v: &mut Value) {
    match v {
        Value::Object(m) => {
            m.remove("handle");
            m.remove("expires");
            for key in ["packets", "bytes"] {
                m.remove(key);
            }
            for (_, x) in m.iter_mut() {
                strip(x);
            }
        }
        Value::Array(a) => a.iter_mut().for_each(strip),
        _ => {}
    }
}

/// Both families' tables of ours in `ns` (an absent table contributes nothing).
pub fn snapshot(ns: &Ns) -> TableSnapshot {
    let mut out = BTreeMap::new();
    for family in ["ip", "ip6"] {
        let o = ns.command("nft").args(["-j", "list", "table", family, TABLE]).output().expect("spawn nft");
        if !o.status.success() {
            continue; // no such table
        }
        let v: Value = serde_json::from_slice(&o.stdout).expect("nft -j prints JSON");
        let mut rules: BTreeMap<String, Vec<Value>> = BTreeMap::new();
        for item in v["nftables"].as_array().into_iter().flatten() {
            let Some((kind, body)) = item.as_object().and_then(|m| m.iter().next()) else { continue };
            let mut body = body.clone();
            strip(&mut body);
            match kind.as_str() {
                "metainfo" => {}
                "rule" => {
                    let chain = body["chain"].as_str().unwrap_or("?").to_string();
                    rules.entry(chain).or_default().push(body);
                }
                "set" | "map" => {
                    if let Some(elems) = body.get_mut("elem").and_then(|e| e.as_array_mut()) {
                        elems.sort_by_key(|e| e.to_string());
                    }
                    let name = body["name"].as_str().unwrap_or("?").to_string();
                    out.insert(format!("{kind} {family} {name}"), body.to_string());
                }
                _ => {
                    let name = body["name"].as_str().unwrap_or("").to_string();
                    out.insert(format!("{kind} {family} {name}"), body.to_string());
                }
            }
        }
        for (chain, list) in rules {
            out.insert(format!("rules {family} {chain}"), Value::Array(list).to_string());
        }
    }
    TableSnapshot(out)
}

/// Deletes our tables in `ns` (what is absent is fine).
pub fn delete_tables(ns: &Ns) {
    for family in ["ip", "ip6"] {
        let _ = ns.command("nft").args(["delete", "table", family, TABLE]).output();
    }
}
