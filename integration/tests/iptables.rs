//! The iptables-legacy backend applied in a namespace: iptables-legacy-save shows exactly the
//! chains and rule counts of the rendered text plus kube-proxy's jumps, chains that are not ours
//! survive sync and cleanup, and stale service chains go away on the next sync.

use std::collections::BTreeMap;

use nftproxy_integration::lab::*;

fn rules_per_chain(text: &str, table: &str) -> BTreeMap<String, usize> {
    let mut in_table = false;
    let mut out = BTreeMap::new();
    for line in text.lines() {
        if let Some(t) = line.strip_prefix('*') {
            in_table = t == table;
        } else if in_table {
            if let Some(c) = line.strip_prefix(':') {
                out.entry(c.split_whitespace().next().unwrap().to_string()).or_insert(0);
            } else if let Some(r) = line.strip_prefix("-A ") {
                *out.entry(r.split_whitespace().next().unwrap().to_string()).or_insert(0) += 1;
            }
        }
    }
    out
}

#[test]
fn iptables_save_shows_our_chains_and_keeps_everyone_elses() {
    let lab = Lab::new(1);
    let save = |table: &str| lab.node.exec("iptables-legacy-save", &["-t", table]);
    lab.node.exec("iptables-legacy", &["-N", "SOMEONE-ELSE"]);
    lab.node.exec("iptables-legacy", &["-A", "SOMEONE-ELSE", "-j", "RETURN"]);
    lab.node.exec("iptables-legacy", &["-A", "FORWARD", "-j", "SOMEONE-ELSE"]);
    let manifests = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/parity.yaml")).unwrap();
    lab.sync_iptables(&manifests).unwrap();

    let mut l = nftproxy_manifest::Loaded::default();
    l.add_text("parity", &manifests);
    let text = nftproxy_iptables::render_cluster(nftproxy_model::IpFamily::V4, &l.state, &lab.ctx, &lab.iptables_options());
    for table in ["filter", "nat"] {
        let saved = rules_per_chain(&save(table), table);
        for (chain, n) in rules_per_chain(&text, table) {
            assert_eq!(saved.get(&chain), Some(&n), "{table} {chain}");
        }
    }
    let filter = save("filter");
    assert!(filter.contains("-A FORWARD -j SOMEONE-ELSE") && filter.contains("-A SOMEONE-ELSE -j RETURN"), "{filter}");
    assert!(filter.contains("-A INPUT -m conntrack --ctstate NEW -m comment --comment \"kubernetes externally-visible service portals\" -j KUBE-EXTERNAL-SERVICES"), "{filter}");
    assert!(save("nat").contains("-A PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES"));

    // A resync with one service fewer deletes its chains; syncing twice adds no duplicate jump.
    let fewer = manifests.replace("name: hair, namespace: parity", "name: hair-gone, namespace: parity");
    lab.sync_iptables(&fewer).unwrap();
    let nat = save("nat");
    assert!(!nat.contains("KUBE-SVC-X5PC66KOAI2PPM22"), "stale chain left: {nat}");
    assert_eq!(nat.matches("-A PREROUTING").count(), 1);

    lab.node.run(|| nftproxy_iptables::cleanup(nftproxy_model::IpFamily::V4)).unwrap();
    let filter = save("filter");
    assert!(!filter.contains("KUBE-"), "{filter}");
    assert!(filter.contains("-A FORWARD -j SOMEONE-ELSE"), "{filter}");
    assert!(!save("nat").contains("KUBE-"));
}
