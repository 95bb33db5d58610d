//! Golden: the nftables render of examples/cluster.yaml on node-a. Regenerate with
//! `UPDATE_GOLDEN=1 cargo test -p nftproxy-nftables --test render` and review the diff.

use nftproxy_manifest::load_path;
use nftproxy_model::NodeContext;

#[test]
fn example_cluster_renders_as_the_golden_file() {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../..");
    let loaded = load_path(format!("{root}/examples/cluster.yaml").as_ref()).unwrap();
    let mut ctx = NodeContext {
        node_name: "node-a".into(),
        cluster_cidrs: vec!["10.244.0.0/16".parse().unwrap()],
        ..Default::default()
    };
    ctx.complete_from(&loaded.state.nodes["node-a"]);
    let text: String = nftproxy_nftables::desired(&loaded.state, &ctx).iter().map(|r| r.render()).collect();
    let golden = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/golden/cluster.nft");
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(golden, &text).unwrap();
    }
    assert_eq!(text, std::fs::read_to_string(golden).unwrap());
}
