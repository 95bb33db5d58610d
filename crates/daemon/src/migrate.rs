//! Taking over a node from kube-proxy (or from our own other mode): the rules left behind keep
//! acting on packets next to ours, so they go, each removal logged. kube-proxy removes the
//! other modes' leftovers before it starts; we remove them right after our first sync has put
//! every Service in place, so that no packet meets a node without service rules in between.
//!
//! | our mode | removed |
//! |---|---|
//! | nftables | kube-proxy's `ip`/`ip6 kube-proxy` tables; kube-proxy's iptables chains in iptables-legacy and iptables-nft (they are also our iptables mode's) |
//! | iptables in variant V | kube-proxy's `kube-proxy` tables and our `kube-nftproxy` tables; kube-proxy's (and our) chains in the other variant (those in V are the ones we now program) |
//!
//! IPVS leftovers are out of scope: kube-nftproxy has no IPVS mode.

use nftproxy_iptables::Variant;
use nftproxy_iptables::leftovers::remove_kube_proxy_leftovers;
use nftproxy_model::IpFamily;
use nftproxy_nftables::{Family, NftablesBackend};

/// What this node's proxy programs now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ours {
    Nftables,
    /// kube-proxy's iptables rules, in this variant (legacy or nft).
    Iptables(Variant),
}

/// kube-proxy's nftables mode's table name (both families).
pub const KUBE_PROXY_TABLE: &str = "kube-proxy";

/// What was removed (one line each) and what could not be (errors), for the log.
#[derive(Debug, Default)]
pub struct Migration {
    pub removed: Vec<String>,
    pub errors: Vec<String>,
}

/// Removes the leftovers that `ours` does not own (see the module's table).
pub fn remove_leftovers(ours: Ours) -> Migration {
    let mut m = Migration::default();
    match NftablesBackend::new() {
        Ok(mut nft) => {
            for family in [Family::V4, Family::V6] {
                match nft.delete_foreign_table(family, KUBE_PROXY_TABLE) {
                    Ok(true) => {
                        m.removed.push(format!("nftables table {} {KUBE_PROXY_TABLE} (kube-proxy)", family.word()))
                    }
                    Ok(false) => {}
                    Err(e) => m.errors.push(e.to_string()),
                }
            }
            if matches!(ours, Ours::Iptables(_)) {
                // Our nftables mode's tables: gone as a whole (both families).
                let had: Vec<&str> = [Family::V4, Family::V6]
                    .into_iter()
                    .filter(|f| nft.table_exists(*f).unwrap_or(false))
                    .map(|f| f.word())
                    .collect();
                match nft.cleanup() {
                    Ok(()) => m
                        .removed
                        .extend(had.iter().map(|w| format!("nftables table {w} kube-nftproxy (our nftables mode)"))),
                    Err(e) => m.errors.push(e.to_string()),
                }
            }
        }
        Err(e) => m.errors.push(format!("netlink: {e}")),
    }
    let variants: Vec<Variant> = match ours {
        Ours::Nftables => Variant::ALL.to_vec(),
        Ours::Iptables(v) => vec![v.other()],
    };
    for variant in variants {
        for family in [IpFamily::V4, IpFamily::V6] {
            match remove_kube_proxy_leftovers(family, variant) {
                Ok(lines) => m.removed.extend(lines.into_iter().map(|l| format!("{}: {l}", variant.name(family)))),
                Err(e) => m.errors.push(e.to_string()),
            }
        }
    }
    m
}
