//! The iptables backend applied in a namespace, in iptables-legacy and in iptables-nft:
//! iptables-save shows exactly the chains and rule counts of the rendered text plus kube-proxy's
//! jumps, chains that are not ours survive sync and cleanup, stale service chains go away on the
//! next sync, and the other variant is never written. The variant detection reads kubelet's hint
//! chain from a real node namespace.

use std::collections::BTreeMap;

use nftproxy_iptables::Variant;
use nftproxy_integration::lab::*;
use nftproxy_model::IpFamily;

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
fn iptables_save_shows_our_chains_and_keeps_everyone_elses_in_both_variants() {
    for variant in Variant::ALL {
        assert!(variant.installed(), "make deps installs iptables (both variants)");
        save_shows_our_chains(variant);
    }
}

fn save_shows_our_chains(variant: Variant) {
    let lab = Lab::new(1);
    let ipt = variant.name(IpFamily::V4);
    let save = |table: &str| lab.node.exec(&variant.tool(IpFamily::V4, "save"), &["-t", table]);
    lab.node.exec(&ipt, &["-N", "SOMEONE-ELSE"]);
    lab.node.exec(&ipt, &["-A", "SOMEONE-ELSE", "-j", "RETURN"]);
    lab.node.exec(&ipt, &["-A", "FORWARD", "-j", "SOMEONE-ELSE"]);
    let manifests = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/parity.yaml")).unwrap();
    lab.sync_iptables_in(variant, &manifests).unwrap();
    let other = lab.node.exec(&variant.other().tool(IpFamily::V4, "save"), &[]);
    assert!(!other.contains("KUBE-"), "{variant}: nothing in iptables-{}:\n{other}", variant.other());

    let mut l = nftproxy_manifest::Loaded::default();
    l.add_text("parity", &manifests);
    let text = nftproxy_iptables::render_cluster(IpFamily::V4, &l.state, &lab.ctx, &lab.iptables_options());
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
    lab.sync_iptables_in(variant, &fewer).unwrap();
    let nat = save("nat");
    assert!(!nat.contains("KUBE-SVC-X5PC66KOAI2PPM22"), "stale chain left: {nat}");
    assert_eq!(nat.matches("-A PREROUTING").count(), 1);

    lab.node.run(|| nftproxy_iptables::cleanup(variant, IpFamily::V4)).unwrap();
    let filter = save("filter");
    assert!(!filter.contains("KUBE-"), "{filter}");
    assert!(filter.contains("-A FORWARD -j SOMEONE-ELSE"), "{filter}");
    assert!(!save("nat").contains("KUBE-"));
}

/// kube-proxy's image's detection, on a real node namespace: kubelet's hint chain decides, the
/// nft one first; nothing means nft.
#[test]
fn the_variant_follows_kubelets_hint_chain() {
    let detect = |lab: &Lab| lab.node.run(nftproxy_iptables::detect);
    let lab = Lab::new(1);
    let d = detect(&lab);
    assert_eq!(d.variant, Variant::Nft, "{}", d.reason);
    assert!(d.reason.contains("the default"), "{}", d.reason);
    // The legacy probe reads every table: it must not have created the mangle table.
    assert!(!lab.node.exec("iptables-legacy-save", &[]).contains("*mangle"));

    lab.node.exec("iptables-legacy", &["-t", "mangle", "-N", "KUBE-IPTABLES-HINT"]);
    let d = detect(&lab);
    assert_eq!(d.variant, Variant::Legacy, "{}", d.reason);
    assert_eq!(d.reason, "kubelet's chains are in iptables-legacy-save");

    // Both: nft is looked at first (the wrapper's order).
    lab.node.exec("ip6tables-nft", &["-t", "mangle", "-N", "KUBE-KUBELET-CANARY"]);
    let d = detect(&lab);
    assert_eq!(d.variant, Variant::Nft, "{}", d.reason);
    assert_eq!(d.reason, "kubelet's chains are in ip6tables-nft-save -t mangle");
}
