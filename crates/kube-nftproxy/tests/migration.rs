//! Taking over a node from the real kube-proxy (v1.34.4, both modes) under traffic, then
//! switching our own mode both ways: no request fails, and no rule of the one replaced remains.
//!
//! kube-proxy programs the node and is killed (its rules stay, as when its DaemonSet's image is
//! changed); a client keeps opening new TCP connections to the Service while `kube-nftproxy run`
//! starts with kube-proxy's own command line and ConfigMap — kubeadm's (after kube-proxy's
//! nftables mode) and kind's (after its iptables mode), from `crates/daemon/tests/fixtures` —
//! syncs, and removes kube-proxy's leftovers after its first sync.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::*;
use nftproxy_integration::control_plane::{ADMIN_TOKEN, API_IP, ControlPlane, peers_dir};
use nftproxy_integration::lab::{Lab, NODE};
use nftproxy_integration::peer::{self, KubeProxy, Mode};
use nftproxy_integration::{Ns, Proto};
use serde_json::json;

fn sh(ns: &Ns, cmd: &str) -> String {
    let out = ns.command("sh").args(["-c", cmd]).output().unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// kubelet's chains: never removed (kube-proxy's own cleanup leaves them too).
const KUBELET_CHAINS: &[&str] =
    &[":KUBE-FIREWALL ", ":KUBE-KUBELET-CANARY ", ":KUBE-IPTABLES-HINT ", ":KUBE-MARK-DROP "];

/// kube-proxy's or our rules in the node, one line per kind present.
fn rules_present(node: &Ns) -> Vec<String> {
    let mut out = Vec::new();
    let tables = sh(node, "nft list tables");
    for t in ["ip kube-proxy", "ip6 kube-proxy", "ip kube-nftproxy", "ip6 kube-nftproxy"] {
        if tables.lines().any(|l| l.trim() == format!("table {t}")) {
            out.push(format!("nftables {t}"));
        }
    }
    for tool in ["iptables-nft-save", "ip6tables-nft-save", "iptables-legacy-save", "ip6tables-legacy-save"] {
        let save = sh(node, &format!("{tool} 2>/dev/null"));
        let kube: Vec<&str> = save
            .lines()
            .filter(|l| l.starts_with(":KUBE-") && !KUBELET_CHAINS.iter().any(|k| l.starts_with(k)))
            .collect();
        if !kube.is_empty() {
            out.push(format!("{tool}: {} KUBE-* chains", kube.len()));
        }
    }
    out
}

/// Runs the load while `switch` runs and for a second after it returns; asserts nothing failed.
fn under_load(lab: &Lab, what: &str, switch: impl FnOnce()) -> usize {
    let vip = format!("{CLUSTER_IP}:80");
    let stop = Arc::new(AtomicBool::new(false));
    let handle = load(&lab.client, &vip, stop.clone());
    std::thread::sleep(Duration::from_millis(300));
    switch();
    std::thread::sleep(Duration::from_secs(1));
    stop.store(true, Ordering::Relaxed);
    let (ok, failed) = handle.join().unwrap();
    assert!(
        failed.is_empty(),
        "{what}: {} of {} requests failed: {:?}",
        failed.len(),
        ok + failed.len(),
        &failed[..failed.len().min(5)]
    );
    assert!(ok > 50, "{what}: only {ok} requests made");
    eprintln!("{what}: {ok} requests, 0 failed");
    ok
}

/// Polls until `cond` holds (or panics with `what` after `limit`).
fn wait_for(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while start.elapsed() < limit {
        if cond() {
            return start.elapsed();
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("{what}: not within {limit:?}");
}

fn take_over_from(mode: Mode, configmap: &str) {
    let mut lab = Lab::new(3);
    // Source ports: the whole range, so that no test reuses one (see `load`).
    lab.client.exec("sysctl", &["-qw", "net.ipv4.ip_local_port_range=1024 65535"]);
    // kubelet on an iptables-nft node (Debian's default `iptables`, which kube-proxy uses here)
    // leaves its hint chain; our iptables mode follows it below.
    lab.node.exec("iptables-nft", &["-t", "mangle", "-N", "KUBE-IPTABLES-HINT"]);
    let cp = ControlPlane::start(&mut lab.topo, &lab.node);
    apply_deploy(&cp);
    cp.create(&node_obj());
    cp.create(&service(json!({})));
    cp.create(&slice(&[1, 2, 3]));
    let vip = format!("{CLUSTER_IP}:80");

    // kube-proxy programs the node, then goes away without cleaning up.
    let kc = cp.kubeconfig(API_IP, 6443, ADMIN_TOKEN, "kube-proxy");
    let cmd = peer::command(&peers_dir(), &lab.node, &kc, mode, NODE, "10.244.0.0/16");
    let mut kp = KubeProxy::start(cmd, &lab.node, cp.dir.join(format!("kube-proxy-{}.log", mode.flag())));
    settle(
        &lab.client,
        Proto::Tcp,
        &vip,
        Instant::now(),
        Duration::from_secs(60),
        "kube-proxy",
        answered_by(&["ep1", "ep2", "ep3"]),
    );
    kp.assert_running();
    drop(kp);
    let left = rules_present(&lab.node);
    assert!(!left.is_empty(), "kube-proxy {} left rules behind", mode.flag());
    eprintln!("kube-proxy {} left: {left:?}", mode.flag());

    // kube-nftproxy takes over under traffic, run as the DaemonSet runs kube-proxy:
    // `--config=<the ConfigMap's config.conf> --hostname-override=$(NODE_NAME)`.
    let fixture =
        std::fs::read_to_string(format!("{}/../daemon/tests/fixtures/{configmap}", env!("CARGO_MANIFEST_DIR")))
            .unwrap()
            .replace("__KUBECONFIG__", cp.proxy_kubeconfig(6443).to_str().unwrap());
    let config = cp.dir.join("config.conf");
    std::fs::write(&config, fixture).unwrap();
    let (config_arg, node_arg) = (format!("--config={}", config.display()), format!("--hostname-override={NODE}"));
    let log = cp.dir.join("ours-nftables.log");
    let mut ours: Option<Daemon> = None;
    let n = under_load(&lab, &format!("kube-proxy {} → kube-nftproxy nftables ({configmap})", mode.flag()), || {
        ours = Some(Daemon::start_exact(&lab.node, log.clone(), &[&config_arg, &node_arg]));
        wait_for("kube-proxy's rules removed", Duration::from_secs(20), || {
            rules_present(&lab.node) == ["nftables ip kube-nftproxy", "nftables ip6 kube-nftproxy"]
        });
    });
    let text = ours.as_ref().unwrap().log_text();
    assert!(text.contains("removed a leftover rule set"), "the removals are logged:\n{text}");
    assert!(
        !text.contains("accepted, no effect") && !text.contains("is ignored"),
        "no warning for a stock ConfigMap:\n{text}"
    );
    eprintln!("take-over from kube-proxy {}: {n} requests", mode.flag());

    // Our mode switch, both ways, under traffic: the other mode's rules go.
    ours.take().unwrap().terminate();
    let mut ipt: Option<Daemon> = None;
    under_load(&lab, "kube-nftproxy nftables → iptables", || {
        ipt = Some(Daemon::start(
            &lab.node,
            &cp.proxy_kubeconfig(6443),
            cp.dir.join("ours-iptables.log"),
            &["--proxy-mode", "iptables"],
        ));
        wait_for("our nftables tables removed", Duration::from_secs(20), || {
            let now = rules_present(&lab.node);
            !now.iter().any(|r| r.starts_with("nftables") || r.contains("-legacy-save"))
                && now.iter().any(|r| r.starts_with("iptables-nft-save"))
        });
    });
    let ipt_log = ipt.as_ref().unwrap().log_text();
    assert!(
        ipt_log.contains("iptables mode uses iptables-nft: kubelet's chains are in iptables-nft-save -t mangle"),
        "the variant kubelet's hint names, logged:\n{ipt_log}"
    );
    ipt.take().unwrap().terminate();
    let mut back: Option<Daemon> = None;
    under_load(&lab, "kube-nftproxy iptables → nftables", || {
        back = Some(Daemon::start(&lab.node, &cp.proxy_kubeconfig(6443), cp.dir.join("ours-back.log"), &[]));
        wait_for("our iptables chains removed", Duration::from_secs(20), || {
            rules_present(&lab.node) == ["nftables ip kube-nftproxy", "nftables ip6 kube-nftproxy"]
        });
    });
    back.take().unwrap().terminate();
}

#[test]
fn taking_over_from_kube_proxy_nftables_under_traffic_with_kubeadms_configmap() {
    take_over_from(Mode::Nftables, "kubeadm-kube-proxy.conf");
}

#[test]
fn taking_over_from_kube_proxy_iptables_under_traffic_with_kinds_configmap() {
    take_over_from(Mode::Iptables, "kind-kube-proxy.conf");
}
