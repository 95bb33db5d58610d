//! kube-proxy's iptables rules left in a node we take over: its chains as kube-proxy's own
//! `CleanupLeftovers` lists them (fixed chains, canaries, per-service prefixes), and every rule
//! elsewhere that jumps to them, in either iptables (legacy x_tables or iptables-nft: kube-proxy
//! uses whichever its image's wrapper detected). kubelet's chains (KUBE-FIREWALL,
//! KUBE-KUBELET-CANARY, KUBE-IPTABLES-HINT, KUBE-MARK-DROP) are never touched.
//!
//! The plan is pure (save text in, restore text out); [`remove_kube_proxy_leftovers`] runs it.

use std::collections::BTreeSet;

use nftproxy_model::IpFamily;

use crate::apply::{IptablesError, SERVICE_PREFIXES, run};
use crate::variant::{Variant, on_path};

/// kube-proxy v1.34's `CleanupLeftovers` chains, per table.
const FIXED: &[(&str, &str)] = &[
    ("nat", "KUBE-SERVICES"),
    ("nat", "KUBE-NODEPORTS"),
    ("nat", "KUBE-POSTROUTING"),
    ("nat", "KUBE-MARK-MASQ"),
    ("nat", "KUBE-PROXY-CANARY"),
    ("filter", "KUBE-SERVICES"),
    ("filter", "KUBE-EXTERNAL-SERVICES"),
    ("filter", "KUBE-FORWARD"),
    ("filter", "KUBE-NODEPORTS"),
    ("filter", "KUBE-PROXY-FIREWALL"),
    ("filter", "KUBE-PROXY-CANARY"),
    ("mangle", "KUBE-PROXY-CANARY"),
];

fn is_kube_proxy_chain(table: &str, chain: &str) -> bool {
    FIXED.iter().any(|(t, c)| *t == table && *c == chain)
        || (table == "nat" && SERVICE_PREFIXES.iter().any(|p| chain.starts_with(p)))
}

/// Splits a save line into words, keeping double-quoted words whole (comments).
fn words(line: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut rest = line.trim_start();
    while !rest.is_empty() {
        let end = if rest.starts_with('"') {
            rest[1..].find('"').map_or(rest.len(), |i| i + 2)
        } else {
            rest.find(char::is_whitespace).unwrap_or(rest.len())
        };
        out.push(&rest[..end]);
        rest = rest[end..].trim_start();
    }
    out
}

/// One table's removal: the restore text (`--noflush`) and what it removes, for the log.
#[derive(Debug, PartialEq, Eq)]
pub struct Removal {
    pub table: String,
    pub script: String,
    pub removed: Vec<String>,
}

/// From `iptables-save` text (every table), what removes kube-proxy's chains: the rules of other
/// chains that jump or go to them first, then the chains (flushed, then deleted: they jump to
/// each other).
pub fn plan_removal(save: &str) -> Vec<Removal> {
    let mut out = Vec::new();
    let mut table: Option<String> = None;
    let mut doomed: BTreeSet<String> = BTreeSet::new();
    let mut rules: Vec<(String, String)> = Vec::new();
    let finish = |table: &str, doomed: &BTreeSet<String>, rules: &[(String, String)], out: &mut Vec<Removal>| {
        let jumps: Vec<&(String, String)> = rules
            .iter()
            .filter(|(chain, spec)| {
                !doomed.contains(chain) && {
                    let w = words(spec);
                    w.windows(2).any(|p| (p[0] == "-j" || p[0] == "-g") && doomed.contains(p[1]))
                }
            })
            .collect();
        if doomed.is_empty() {
            return;
        }
        let mut script = format!("*{table}\n");
        let mut removed = Vec::new();
        for (chain, spec) in &jumps {
            script.push_str(&format!("-D {chain} {spec}\n"));
            removed.push(format!("{table} rule -A {chain} {spec}"));
        }
        for c in doomed {
            script.push_str(&format!("-F {c}\n"));
        }
        for c in doomed {
            script.push_str(&format!("-X {c}\n"));
            removed.push(format!("{table} chain {c}"));
        }
        script.push_str("COMMIT\n");
        out.push(Removal { table: table.to_string(), script, removed });
    };
    for line in save.lines() {
        if let Some(t) = line.strip_prefix('*') {
            table = Some(t.trim().to_string());
            doomed.clear();
            rules.clear();
        } else if line.trim() == "COMMIT" {
            if let Some(t) = table.take() {
                finish(&t, &doomed, &rules, &mut out);
            }
        } else if let (Some(t), Some(decl)) = (&table, line.strip_prefix(':')) {
            let chain = decl.split_whitespace().next().unwrap_or("");
            if is_kube_proxy_chain(t, chain) {
                doomed.insert(chain.to_string());
            }
        } else if let (Some(_), Some(rule)) = (&table, line.strip_prefix("-A ")) {
            if let Some((chain, spec)) = rule.split_once(' ') {
                rules.push((chain.to_string(), spec.to_string()));
            }
        }
    }
    out
}

/// Removes kube-proxy's iptables leftovers of one family in one variant (nothing when that
/// iptables is not installed or holds none). Returns what it removed.
pub fn remove_kube_proxy_leftovers(family: IpFamily, variant: Variant) -> Result<Vec<String>, IptablesError> {
    let save = variant.tool(family, "save");
    if !on_path(&save) {
        return Ok(Vec::new());
    }
    // Every table at once: `-t mangle` would make iptables-legacy create a table that is not there.
    let text = run(&save, &[], None)?;
    let mut removed = Vec::new();
    for r in plan_removal(&text) {
        run(&variant.tool(family, "restore"), &["-w", "--noflush"], Some(&r.script))?;
        removed.extend(r.removed);
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A node after kube-proxy's iptables mode (trimmed `iptables-save`), with kubelet's chains
    /// and someone else's rules beside it.
    const SAVE: &str = r#"# Generated by iptables-nft-save v1.8.9
*mangle
:PREROUTING ACCEPT [0:0]
:KUBE-IPTABLES-HINT - [0:0]
:KUBE-KUBELET-CANARY - [0:0]
:KUBE-PROXY-CANARY - [0:0]
COMMIT
*filter
:INPUT ACCEPT [0:0]
:FORWARD ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:KUBE-EXTERNAL-SERVICES - [0:0]
:KUBE-FIREWALL - [0:0]
:KUBE-FORWARD - [0:0]
:KUBE-NODEPORTS - [0:0]
:KUBE-PROXY-FIREWALL - [0:0]
:KUBE-SERVICES - [0:0]
-A INPUT -m conntrack --ctstate NEW -m comment --comment "kubernetes load balancer firewall" -j KUBE-PROXY-FIREWALL
-A INPUT -m comment --comment "kubernetes health check service ports" -j KUBE-NODEPORTS
-A INPUT -j KUBE-FIREWALL
-A INPUT -p tcp --dport 22 -j ACCEPT
-A FORWARD -m comment --comment "kubernetes forwarding rules" -j KUBE-FORWARD
-A KUBE-FIREWALL ! -s 127.0.0.0/8 -d 127.0.0.0/8 -j DROP
-A KUBE-FORWARD -m conntrack --ctstate INVALID -j DROP
COMMIT
*nat
:PREROUTING ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
:KUBE-MARK-MASQ - [0:0]
:KUBE-POSTROUTING - [0:0]
:KUBE-SEP-ABC - [0:0]
:KUBE-SERVICES - [0:0]
:KUBE-SVC-XYZ - [0:0]
:CNI-HOSTPORT-DNAT - [0:0]
-A PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
-A PREROUTING -m addrtype --dst-type LOCAL -j CNI-HOSTPORT-DNAT
-A POSTROUTING -m comment --comment "kubernetes postrouting rules" -j KUBE-POSTROUTING
-A KUBE-SERVICES -d 10.96.0.10/32 -p tcp -m comment --comment "ns/web:http cluster IP" -m tcp --dport 80 -j KUBE-SVC-XYZ
-A KUBE-SVC-XYZ -j KUBE-SEP-ABC
-A KUBE-SEP-ABC -p tcp -m tcp -j DNAT --to-destination 10.244.1.2:8080
COMMIT
"#;

    #[test]
    fn removes_kube_proxys_chains_and_the_jumps_to_them_and_nothing_of_kubelet_or_others() {
        let plan = plan_removal(SAVE);
        let tables: Vec<&str> = plan.iter().map(|r| r.table.as_str()).collect();
        assert_eq!(tables, ["mangle", "filter", "nat"]);
        assert_eq!(plan[0].script, "*mangle\n-F KUBE-PROXY-CANARY\n-X KUBE-PROXY-CANARY\nCOMMIT\n");
        let filter = &plan[1].script;
        assert!(filter.contains(
            "-D INPUT -m conntrack --ctstate NEW -m comment --comment \"kubernetes load balancer firewall\" -j KUBE-PROXY-FIREWALL\n"
        ));
        assert!(filter.contains("-D FORWARD -m comment --comment \"kubernetes forwarding rules\" -j KUBE-FORWARD\n"));
        assert!(!filter.contains("KUBE-FIREWALL\n") && !filter.contains("--dport 22"), "{filter}");
        let nat = &plan[2].script;
        assert!(nat.contains("-D PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n"));
        assert!(!nat.contains("CNI-HOSTPORT-DNAT"), "{nat}");
        // Rules inside doomed chains go with their chain: flushed, not deleted one by one.
        assert!(!nat.contains("-D KUBE-SVC-XYZ"), "{nat}");
        for c in ["KUBE-MARK-MASQ", "KUBE-POSTROUTING", "KUBE-SEP-ABC", "KUBE-SERVICES", "KUBE-SVC-XYZ"] {
            assert!(nat.contains(&format!("-F {c}\n")) && nat.contains(&format!("-X {c}\n")), "{c}: {nat}");
        }
        assert!(plan[2].removed.iter().any(|r| r == "nat chain KUBE-SVC-XYZ"));
    }

    #[test]
    fn nothing_to_do_on_a_node_without_kube_proxy() {
        let clean =
            "*filter\n:INPUT ACCEPT [0:0]\n-A INPUT -j ACCEPT\nCOMMIT\n*nat\n:PREROUTING ACCEPT [0:0]\nCOMMIT\n";
        assert!(plan_removal(clean).is_empty());
    }

    #[test]
    fn quoted_comments_stay_one_word() {
        assert_eq!(
            words(r#"-m comment --comment "a -j KUBE-SERVICES b" -j X"#),
            ["-m", "comment", "--comment", "\"a -j KUBE-SERVICES b\"", "-j", "X"]
        );
    }
}
