//! `kube-nftproxy inspect` on the example kubectl List: the acceptance case.

use std::process::Command;

fn inspect(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_kube-nftproxy"))
        .arg("inspect")
        .arg("--from")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples/cluster.yaml"))
        .args(args)
        .output()
        .unwrap();
    (out.status.success(), String::from_utf8(out.stdout).unwrap(), String::from_utf8(out.stderr).unwrap())
}

fn row<'a>(table: &'a str, port: &str) -> &'a str {
    table.lines().find(|l| l.starts_with(&format!("{port} "))).unwrap_or_else(|| panic!("no row {port} in\n{table}"))
}

#[test]
fn inspect_prints_kube_proxys_endpoints_and_one_warning() {
    let (ok, table, err) = inspect(&["--hostname-override", "node-a"]);
    assert!(ok, "{err}");
    assert_eq!(
        err.trim(),
        "warning: Service shop/broken: spec.ports[0].port: 70000 is out of range 1-65535 (object skipped)"
    );
    // Multi-port service, endpoints from two slices (the not-ready one left out).
    assert!(row(&table, "shop/web:http").contains("10.244.1.11:8080, 10.244.2.12:8080, 10.244.3.13:8080"));
    assert!(row(&table, "shop/web:dns").starts_with("shop/web:dns              UDP/IPv4"));
    // Only terminating endpoints: the serving one is used.
    assert!(row(&table, "shop/drain:http").contains("10.244.1.21:8080 (terminating)"));
    assert!(!row(&table, "shop/drain:http").contains("10.244.2.22"));
    // Zone hints: only this node's zone.
    let zonal = row(&table, "shop/zonal:http");
    assert!(zonal.contains("10.244.1.31:8080") && !zonal.contains("10.244.2.32") && zonal.contains("PreferSameZone"));
    // ETP=Local LoadBalancer: node-local endpoint for external traffic.
    let ingress = row(&table, "edge/ingress:https");
    assert!(ingress.contains("loadbalancer IP 203.0.113.10:443") && ingress.contains("node port *:30443"));
    assert!(ingress.contains("ETP=Local"));
}

#[test]
fn inspect_on_another_node_sees_other_local_endpoints() {
    let (ok, table, _) = inspect(&["--hostname-override", "node-b"]);
    assert!(ok);
    // node-b is in zone-b: two endpoints carry zone-b hints.
    assert!(row(&table, "shop/zonal:http").contains("10.244.2.32:8080, 10.244.3.33:8080"));
    assert!(row(&table, "edge/ingress:https").contains("10.244.2.42:8443"));
}

#[test]
fn inspect_json_is_machine_readable() {
    let (ok, json, _) = inspect(&["--hostname-override", "node-a", "--output", "json"]);
    assert!(ok);
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["warnings"].as_array().unwrap().len(), 1);
    let ports = v["servicePorts"].as_array().unwrap();
    let ingress = ports.iter().find(|p| p["name"]["service"]["name"] == "ingress").unwrap();
    assert_eq!(ingress["external"]["verdict"], "endpoints");
    assert_eq!(ingress["external"]["endpoints"][0]["ip"], "10.244.1.41");
}

#[test]
fn bad_flag_value_fails_with_the_flag_named() {
    let (ok, _, err) = inspect(&["--nodeport-addresses", "10.0.0.0/40"]);
    assert!(!ok);
    assert!(err.contains("--nodeport-addresses"), "{err}");
}
