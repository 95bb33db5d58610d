//! An independent reader: rustables (not our netlink code) lists the tables and chains the
//! nftables backend programmed, and the rules of a few chains.

use nftproxy_integration::lab::*;
use nftproxy_integration::yaml::{ep, service, slice};
use nftproxy_nftables::Family;

#[test]
fn rustables_lists_our_tables_chains_and_rules() {
    let mut lab = Lab::new(2);
    let m = service("web", "10.96.0.10", "{name: http, port: 80, protocol: TCP, targetPort: 8080}", "")
        + &slice(
            "web",
            "web-1",
            "IPv4",
            "{name: http, port: 8080, protocol: TCP}",
            &[ep(&pod_ip(1), "node-b"), ep(&pod_ip(2), NODE)],
        );
    lab.sync(&m).unwrap();
    let want = lab.backend.programmed(Family::V4).unwrap().clone();

    let (tables, chains, services_rules) = lab.node.run(|| {
        let tables = rustables::list_tables().expect("list tables");
        let ours =
            tables.iter().find(|t| t.get_name().map(String::as_str) == Some("kube-nftproxy")).expect("kube-nftproxy");
        let chains = rustables::list_chains_for_table(ours).expect("list chains");
        // rustables decodes no 32-bit register (NFT_REG32_*), so it cannot read rules with
        // concatenations; a plain jump it can.
        let prerouting = chains.iter().find(|c| c.get_name().map(String::as_str) == Some("nat-prerouting")).unwrap();
        let rules = rustables::list_rules_for_chain(prerouting).expect("list rules");
        let names: Vec<String> = tables.iter().filter_map(|t| t.get_name().cloned()).collect();
        let chain_names: Vec<String> = chains.iter().filter_map(|c| c.get_name().cloned()).collect();
        (names, chain_names, rules.len())
    });
    // rustables' family getter is crate-private: the ip and ip6 tables show as two of one name.
    assert_eq!(tables, ["kube-nftproxy", "kube-nftproxy"]);
    let mut got = chains;
    got.sort();
    got.dedup();
    let mut expected: Vec<String> = want.chains.keys().cloned().collect();
    expected.extend(lab.backend.programmed(Family::V6).unwrap().chains.keys().cloned());
    expected.sort();
    expected.dedup();
    assert_eq!(got, expected);
    assert_eq!(services_rules, want.chains["nat-prerouting"].rules.len());
}
