//! Golden: examples/parity.yaml rendered for node-a, both families. Regenerate with
//! `UPDATE_GOLDEN=1 cargo test -p nftproxy-iptables --test golden` and review the diff against
//! kube-proxy's iptables proxier (rule by rule; see the README's parity section).

use nftproxy_iptables::{Options, render};
use nftproxy_manifest::load_path;
use nftproxy_model::{IpFamily, NodeContext, resolve};

fn check(name: &str, text: &str) {
    let golden = format!("{}/tests/golden/{name}", env!("CARGO_MANIFEST_DIR"));
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&golden, text).unwrap();
    }
    assert_eq!(text, std::fs::read_to_string(&golden).unwrap(), "{name}");
}

#[test]
fn parity_cluster_renders_as_the_golden_files() {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../..");
    let loaded = load_path(format!("{root}/examples/parity.yaml").as_ref()).unwrap();
    assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
    let ctx = NodeContext {
        node_name: "node-a".into(),
        node_ips: vec!["10.0.1.1".parse().unwrap(), "fd00:1::1".parse().unwrap()],
        cluster_cidrs: vec!["10.244.0.0/16".parse().unwrap(), "fd00:244::/48".parse().unwrap()],
        ..Default::default()
    };
    for (fam, file) in [(IpFamily::V4, "parity-ipv4.rules"), (IpFamily::V6, "parity-ipv6.rules")] {
        check(file, &render(fam, &resolve(&loaded.state, &ctx, fam), &ctx, &Options::default()));
    }
}
