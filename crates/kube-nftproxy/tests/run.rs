//! `kube-nftproxy run`: flag and configuration errors (one line naming the flag or field, non-zero
//! exit), and standalone mode (`--from`) on the kernel: programs a node namespace, follows edits
//! of the manifest, and leaves the rules in place on SIGTERM.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nftproxy_integration::lab::{Lab, NODE};
use nftproxy_integration::{Outcome, Proto, TempDir, request};

fn run_err(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_kube-nftproxy")).arg("run").args(args).output().unwrap();
    assert!(!out.status.success(), "{args:?} was accepted");
    String::from_utf8(out.stderr).unwrap()
}

#[test]
fn bad_flags_and_config_fail_with_one_line_naming_them() {
    let e = run_err(&["--sync-period", "soon"]);
    assert!(e.contains("invalid value 'soon' for '--sync-period <DURATION>'"), "{e}");
    let e = run_err(&["--proxy-mode", "ipvs"]);
    assert!(e.contains("'--proxy-mode <MODE>'") && e.contains("unsupported proxy mode \"ipvs\""), "{e}");
    let e = run_err(&["--min-sync-period", "1m", "--sync-period", "30s"]);
    assert_eq!(e.trim(), "kube-nftproxy: --min-sync-period: 60s must be less than or equal to syncPeriod 30s");
    let e = run_err(&["--metrics-bind-address", "localhost"]);
    assert_eq!(e.trim(), "kube-nftproxy: --metrics-bind-address: \"localhost\" is not ip:port");
    let dir = TempDir::new(&format!("knp-run-{}", std::process::id()));
    let cfg = dir.join("config.yaml");
    std::fs::write(
        &cfg,
        "apiVersion: kubeproxy.config.k8s.io/v1alpha1\nkind: KubeProxyConfiguration\nnftables:\n  syncPeriod: 30\n",
    )
    .unwrap();
    let e = run_err(&["--config", cfg.to_str().unwrap()]);
    assert!(
        e.starts_with(&format!("kube-nftproxy: {}: nftables.syncPeriod: invalid duration \"30\"", cfg.display())),
        "{e}"
    );
    assert_eq!(e.trim().lines().count(), 1, "{e}");
    let e = run_err(&["--config", dir.join("missing.yaml").to_str().unwrap()]);
    assert!(e.contains("--config") && e.contains("No such file"), "{e}");
}

const WEB: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: web, namespace: demo}
spec:
  clusterIP: 10.96.0.10
  ports: [{name: http, port: 80, protocol: TCP, targetPort: 8080}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-1, namespace: demo, labels: {kubernetes.io/service-name: web}}
addressType: IPv4
ports: [{name: http, port: 8080, protocol: TCP}]
endpoints:
"#;

fn manifest(eps: &[usize]) -> String {
    let mut s = WEB.to_string();
    for n in eps {
        s.push_str(&format!("- {{addresses: [10.244.{n}.2], conditions: {{ready: true}}}}\n"));
    }
    s
}

#[test]
fn standalone_follows_the_manifest_and_leaves_rules_on_sigterm() {
    let lab = Lab::new(2);
    let dir = TempDir::new(&format!("{}manifests", lab.topo.prefix()));
    let file = dir.join("cluster.yaml");
    std::fs::write(&file, manifest(&[1, 2])).unwrap();
    let child = lab
        .node
        .command(env!("CARGO_BIN_EXE_kube-nftproxy"))
        .args(["run", "--from", file.to_str().unwrap(), "--hostname-override", NODE, "--node-ip", "10.0.1.1"])
        .args(["--cluster-cidr", "10.244.0.0/16", "--metrics-bind-address", "", "--healthz-bind-address", ""])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let ask =
        || lab.client.run(|| request(Proto::Tcp, "10.96.0.10:80".parse().unwrap(), None, Duration::from_millis(300)));
    let wait_for = |want: &[&str]| {
        let start = Instant::now();
        let mut seen = std::collections::BTreeSet::new();
        while start.elapsed() < Duration::from_secs(5) {
            if let Outcome::Answered { responder, .. } = ask() {
                if !want.contains(&responder.as_str()) {
                    seen.clear();
                    continue;
                }
                seen.insert(responder);
                if seen.len() == want.len() {
                    return start.elapsed();
                }
            }
        }
        panic!("never answered by exactly {want:?}");
    };
    wait_for(&["ep1", "ep2"]);
    // An edit of the file is picked up (polled every second).
    std::thread::sleep(Duration::from_millis(1100));
    std::fs::write(&file, manifest(&[2])).unwrap();
    let took = wait_for(&["ep2"]);
    assert!(took < Duration::from_secs(3), "file change applied in {took:?}");
    // A broken edit is reported and changes nothing.
    std::fs::write(&file, "apiVersion: v1\nkind: Service\nmetadata: {name: broken, namespace: demo}\nspec: {clusterIP: 10.96.0.99, ports: [{port: 99999}]}\n---\n".to_string() + &manifest(&[2])).unwrap();
    std::thread::sleep(Duration::from_millis(2500));
    wait_for(&["ep2"]);
    // SIGTERM: clean exit, rules stay.
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let out = child.wait_with_output().unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{log}");
    assert!(log.contains("demo/broken") && log.contains("spec.ports[0].port"), "the bad object is named: {log}");
    assert!(log.contains("rules left in place"), "{log}");
    wait_for(&["ep2"]);
}

#[test]
fn iptables_mode_and_cleanup() {
    let lab = Lab::new(2);
    let dir = TempDir::new(&format!("{}ipt", lab.topo.prefix()));
    let file = dir.join("cluster.yaml");
    std::fs::write(&file, manifest(&[1, 2])).unwrap();
    let mut child = lab
        .node
        .command(env!("CARGO_BIN_EXE_kube-nftproxy"))
        .args(["run", "--proxy-mode", "iptables", "--from", file.to_str().unwrap(), "--hostname-override", NODE])
        .args(["--node-ip", "10.0.1.1", "--cluster-cidr", "10.244.0.0/16"])
        .args(["--metrics-bind-address", "", "--healthz-bind-address", ""])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut seen = std::collections::BTreeSet::new();
    while seen.len() < 2 && Instant::now() < deadline {
        let o =
            lab.client.run(|| request(Proto::Tcp, "10.96.0.10:80".parse().unwrap(), None, Duration::from_millis(300)));
        if let Outcome::Answered { responder, .. } = o {
            seen.insert(responder);
        }
    }
    assert_eq!(seen.len(), 2, "both endpoints answer through kube-proxy's iptables rules");
    let save = lab.node.exec("iptables-legacy-save", &[]);
    assert!(save.contains("-A KUBE-SERVICES") && save.contains("demo/web:http"), "{save}");
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    assert!(child.wait().unwrap().success());
    assert!(lab.node.exec("iptables-legacy-save", &[]).contains("KUBE-SVC-"), "SIGTERM keeps the rules");

    // `run --cleanup` removes our rules of both modes, and nothing else.
    lab.node.exec("iptables-legacy", &["-t", "filter", "-N", "SOMEONE-ELSE"]);
    lab.node.exec("nft", &["add", "table", "inet", "someone-else"]);
    lab.node.exec(
        env!("CARGO_BIN_EXE_kube-nftproxy"),
        &["sync", "--from", file.to_str().unwrap(), "--hostname-override", NODE],
    );
    let out = lab.node.command(env!("CARGO_BIN_EXE_kube-nftproxy")).args(["run", "--cleanup"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let save = lab.node.exec("iptables-legacy-save", &[]);
    assert!(!save.contains("KUBE-"), "{save}");
    assert!(save.contains(":SOMEONE-ELSE"), "other chains stay: {save}");
    assert_eq!(lab.node.exec("nft", &["list", "tables"]).trim(), "table inet someone-else");
}
