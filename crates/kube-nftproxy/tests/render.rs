//! `kube-nftproxy render` for both backends.

use std::process::Command;

fn render(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_kube-nftproxy"))
        .arg("render")
        .arg("--from")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples/demo.yaml"))
        .args(["--hostname-override", "node-a", "--node-ip", "10.0.1.1", "--cluster-cidr", "10.244.0.0/16"])
        .args(args)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn nftables_render_is_an_nft_file_for_both_families() {
    let text = render(&[]);
    assert!(text.starts_with("table ip kube-nftproxy\ndelete table ip kube-nftproxy\n"));
    assert!(text.contains("table ip6 kube-nftproxy {"));
    assert!(text.contains("set cluster-3-frontends {"), "{text}");
    assert!(text.contains("10.96.0.10 . tcp . 80 comment \"demo/web:http\""), "{text}");
    assert!(text.contains("ip daddr . meta l4proto . th dport @cluster-3-frontends goto cluster-3"), "{text}");
}

#[test]
fn iptables_render_follows_kube_proxys_flags() {
    let default = render(&["--backend", "iptables"]);
    assert!(default.contains("-j MASQUERADE --random-fully"));
    assert!(default.contains(":KUBE-FIREWALL - [0:0]"));
    assert!(default.contains("-A KUBE-FORWARD -m conntrack --ctstate INVALID -j DROP"));
    let changed = render(&[
        "--backend",
        "iptables",
        "--iptables-localhost-nodeports=false",
        "--iptables-random-fully=false",
        "--conntrack-tcp-be-liberal",
        "--iptables-masquerade-bit",
        "15",
    ]);
    assert!(!changed.contains("--random-fully") && !changed.contains("KUBE-FIREWALL") && !changed.contains("INVALID"));
    assert!(changed.contains("-A KUBE-MARK-MASQ -j MARK --or-mark 0x8000"));
}

#[test]
fn nodeport_addresses_default_to_each_kube_proxy_modes_default() {
    // iptables mode: every local address, localhost included (kube-proxy's default).
    let ipt = render(&["--backend", "iptables"]);
    assert!(
        ipt.contains("-m addrtype --dst-type LOCAL -j KUBE-NODEPORTS") && !ipt.contains("-d 10.0.1.1 -j KUBE-NODEPORTS"),
        "{ipt}"
    );
    // A CIDR list without loopback turns localhost NodePorts off, as kube-proxy does.
    let cidrs = render(&["--backend", "iptables", "--nodeport-addresses", "10.0.1.0/24"]);
    assert!(cidrs.contains("-d 10.0.1.1 -j KUBE-NODEPORTS") && !cidrs.contains("KUBE-FIREWALL"), "{cidrs}");
    // nftables mode: the primary node IP.
    let nft = render(&[]);
    assert!(nft.contains("comment \"IPs that accept NodePort traffic\"\n\t\telements = { 10.0.1.1 }"), "{nft}");
    assert!(!nft.contains("fib daddr type local"), "{nft}");
    // Local-traffic detection by interface, in both renders.
    let by_if = ["--detect-local-mode", "InterfaceNamePrefix", "--pod-interface-name-prefix", "veth"];
    assert!(render(&by_if).contains("iifname != \"veth*\" jump mark-for-masquerade"));
    let ipt = render(&[&by_if[..], &["--backend", "iptables"]].concat());
    assert!(ipt.contains("! -i veth+ -j KUBE-MARK-MASQ"), "{ipt}");
}
