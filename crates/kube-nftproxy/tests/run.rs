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
    assert!(e.contains("invalid value 'soon' for '--iptables-sync-period <DURATION>'"), "{e}");
    let e = run_err(&["--proxy-mode", "ipvs"]);
    assert!(e.contains("'--proxy-mode <MODE>'") && e.contains("unsupported proxy mode \"ipvs\""), "{e}");
    let e = run_err(&["--min-sync-period", "1m", "--sync-period", "30s"]);
    assert_eq!(
        e.trim(),
        "kube-nftproxy: failed validate: KubeProxyConfiguration.SyncPeriod: Invalid value: \"1m0s\": must be greater than or equal to KubeProxyConfiguration.MinSyncPeriod"
    );
    let e = run_err(&["--metrics-bind-address", "localhost"]);
    assert_eq!(
        e.trim(),
        "kube-nftproxy: failed validate: KubeProxyConfiguration.MetricsBindAddress: Invalid value: \"localhost\": must be IP:port"
    );
    // The same flags given to the real kube-proxy v1.34.4 printed exactly this (its `err="…"`).
    let e = run_err(&[
        "--proxy-mode",
        "nftables",
        "--iptables-masquerade-bit=40",
        "--oom-score-adj=2000",
        "--iptables-min-sync-period=1m",
        "--iptables-sync-period=10s",
        "--healthz-bind-address=1.2.3.4:0",
        "--nodeport-addresses=bad",
        "--detect-local-mode=Foo",
        "--conntrack-min=-1",
        "--cluster-cidr=10.0.0.0/8,10.1.0.0/8",
    ]);
    assert_eq!(
        e.trim(),
        r#"kube-nftproxy: failed validate: [KubeProxyConfiguration.KubeProxyIPTablesConfiguration.MasqueradeBit: Invalid value: 40: must be within the range [0, 31], KubeProxyConfiguration.KubeProxyLinuxConfiguration.KubeProxyConntrackConfiguration.Min: Invalid value: -1: must be greater than or equal to 0, KubeProxyConfiguration.KubeProxyLinuxConfiguration.OOMScoreAdj: Invalid value: 2000: must be within the range [-1000, 1000], KubeProxyConfiguration.SyncPeriod: Invalid value: "1m0s": must be greater than or equal to KubeProxyConfiguration.MinSyncPeriod, KubeProxyConfiguration.HealthzBindAddress: Invalid value: "0": must be a valid port, KubeProxyConfiguration.NodePortAddresses[0]: Invalid value: "bad": must be a valid CIDR, KubeProxyConfiguration.DetectLocalMode: Unsupported value: "Foo": supported values: "ClusterCIDR", "NodeCIDR", "BridgeInterface", "InterfaceNamePrefix", ""]"#
    );
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

const NODEPORT: &str = r#"
---
apiVersion: v1
kind: Service
metadata: {name: np, namespace: demo}
spec:
  type: NodePort
  clusterIP: 10.96.0.20
  ports: [{name: http, port: 80, protocol: TCP, targetPort: 8080, nodePort: 30080}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: np-1, namespace: demo, labels: {kubernetes.io/service-name: np}}
addressType: IPv4
ports: [{name: http, port: 8080, protocol: TCP}]
endpoints:
- {addresses: [10.244.1.2], nodeName: node-b}
- {addresses: [10.244.2.2], nodeName: node-b}
"#;

/// Answered by every one of `want` (and nobody else) within `secs`, from `ns` to `to`; returns
/// the source addresses the endpoints saw.
fn answered_by(
    ns: &nftproxy_integration::Ns,
    to: &str,
    want: &[&str],
    secs: u64,
) -> std::collections::BTreeSet<std::net::IpAddr> {
    let deadline = Instant::now() + Duration::from_secs(secs);
    let (mut seen, mut sources) = (std::collections::BTreeSet::new(), std::collections::BTreeSet::new());
    while Instant::now() < deadline {
        match ns.run(|| request(Proto::Tcp, to.parse().unwrap(), None, Duration::from_millis(300))) {
            Outcome::Answered { responder, seen_source } if want.contains(&responder.as_str()) => {
                seen.insert(responder);
                sources.insert(seen_source);
                if seen.len() == want.len() {
                    return sources;
                }
            }
            Outcome::Answered { .. } => {
                seen.clear();
                sources.clear();
            }
            _ => std::thread::sleep(Duration::from_millis(50)),
        }
    }
    panic!("{to} was never answered by exactly {want:?} within {secs} s");
}

/// A plain HTTP GET from inside `ns`: (status code, body).
fn http_get(ns: &nftproxy_integration::Ns, addr: &str, path: &str) -> (u16, String) {
    use std::io::{Read, Write};
    ns.run(|| {
        let mut s = std::net::TcpStream::connect_timeout(&addr.parse().unwrap(), Duration::from_secs(2)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        let code = out.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
        (code, out.split("\r\n\r\n").nth(1).unwrap_or("").to_string())
    })
}

/// `run --config CFG --from FILE` as node-a (10.0.1.1) in the lab's node; stderr piped.
fn standalone_with_config(lab: &Lab, cfg: &std::path::Path, file: &std::path::Path) -> std::process::Child {
    lab.node
        .command(env!("CARGO_BIN_EXE_kube-nftproxy"))
        .args(["run", "--config", cfg.to_str().unwrap(), "--from", file.to_str().unwrap()])
        .args(["--hostname-override", NODE, "--node-ip", "10.0.1.1"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// kube-proxy's settings through a KubeProxyConfiguration on the kernel: no Node object and
/// still healthy; nftables.masqueradeBit; conntrack timeouts written into the node's namespace
/// (nf_conntrack_max is read-only there: skipped with a warning, never silently); pod traffic
/// recognised by interface name prefix; NodePorts on interface addresses inside
/// nodePortAddresses, following an address added while running.
#[test]
fn standalone_applies_kube_proxy_settings_and_follows_interface_addresses() {
    let lab = Lab::new(2);
    let dir = TempDir::new(&format!("{}settings", lab.topo.prefix()));
    let file = dir.join("cluster.yaml");
    std::fs::write(&file, manifest(&[1, 2]) + NODEPORT).unwrap();
    let cfg = dir.join("config.yaml");
    std::fs::write(
        &cfg,
        "apiVersion: kubeproxy.config.k8s.io/v1alpha1\nkind: KubeProxyConfiguration\nmode: nftables\n\
         nftables: {masqueradeBit: 12}\n\
         conntrack: {tcpEstablishedTimeout: 2h, tcpCloseWaitTimeout: 30m, udpTimeout: 45s}\n\
         detectLocalMode: InterfaceNamePrefix\ndetectLocal: {interfaceNamePrefix: pod}\n\
         nodePortAddresses: [10.0.1.0/24, 10.0.3.0/24]\n\
         metricsBindAddress: \"\"\nhealthzBindAddress: 0.0.0.0:10256\n",
    )
    .unwrap();
    let child = standalone_with_config(&lab, &cfg, &file);
    // Off-cluster traffic is masqueraded with the configured mark; pod traffic (arriving on a
    // "pod…" interface) keeps its source.
    let masq = answered_by(&lab.client, "10.96.0.10:80", &["ep1", "ep2"], 10);
    assert_eq!(masq, ["10.244.1.1".parse().unwrap(), "10.244.2.1".parse().unwrap()].into());
    let kept = answered_by(&lab.pod_client, "10.96.0.10:80", &["ep1", "ep2"], 5);
    assert_eq!(kept, ["10.244.50.2".parse().unwrap()].into());
    let table = lab.node.exec("nft", &["list", "table", "ip", "kube-nftproxy"]);
    assert!(table.contains("meta mark set meta mark | 0x00001000"), "{table}");
    assert!(table.contains("iifname != \"pod*\" jump mark-for-masquerade"), "{table}");
    // No Node object anywhere: healthy (kube-proxy counts the node eligible until told).
    let (code, body) = http_get(&lab.client, "10.0.1.1:10256", "/healthz");
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("\"nodeEligible\":true"), "{body}");
    // Conntrack settings of this namespace.
    let sysctl = |k: &str| lab.node.exec("cat", &[&format!("/proc/sys/net/netfilter/{k}")]).trim().to_string();
    assert_eq!(sysctl("nf_conntrack_tcp_timeout_established"), "7200");
    assert_eq!(sysctl("nf_conntrack_tcp_timeout_close_wait"), "1800");
    assert_eq!(sysctl("nf_conntrack_udp_timeout"), "45");
    // A NodePort on an address the node gets while running, inside nodePortAddresses.
    answered_by(&lab.client, "10.0.1.1:30080", &["ep1", "ep2"], 5);
    lab.client.ip(&["route", "add", "10.0.3.0/24", "via", "10.0.1.1"]);
    lab.topo.addr(&lab.node, "eth0", "10.0.3.1/24");
    let start = Instant::now();
    answered_by(&lab.client, "10.0.3.1:30080", &["ep1", "ep2"], 5);
    eprintln!("NodePort on a new interface address proxied {:?} after the address was added", start.elapsed());
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let out = child.wait_with_output().unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{log}");
    assert!(log.contains("net.netfilter.nf_conntrack_max") && log.contains("not set"), "skipped with a warning: {log}");
    assert!(log.contains("nf_conntrack hashsize") && log.contains("initial network namespace"), "{log}");
}

#[test]
fn iptables_mode_and_cleanup() {
    let lab = Lab::new(2);
    let dir = TempDir::new(&format!("{}ipt", lab.topo.prefix()));
    let file = dir.join("cluster.yaml");
    std::fs::write(&file, manifest(&[1, 2]) + NODEPORT).unwrap();
    // kubelet on an iptables-legacy node leaves its hint chain there: the rules follow it.
    lab.node.exec("iptables-legacy", &["-t", "mangle", "-N", "KUBE-IPTABLES-HINT"]);
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
    // kube-proxy's iptables defaults: NodePorts on every local address, localhost included,
    // with route_localnet set as kube-proxy sets it.
    assert!(save.contains("-m addrtype --dst-type LOCAL -j KUBE-NODEPORTS"), "{save}");
    assert_eq!(lab.node.exec("cat", &["/proc/sys/net/ipv4/conf/all/route_localnet"]).trim(), "1");
    answered_by(&lab.node, "127.0.0.1:30080", &["ep1", "ep2"], 5);
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    assert!(child.wait().unwrap().success());
    assert!(lab.node.exec("iptables-legacy-save", &[]).contains("KUBE-SVC-"), "SIGTERM keeps the rules");
    assert!(!lab.node.exec("iptables-nft-save", &[]).contains("KUBE-"), "nothing in iptables-nft");

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
    assert!(!save.replace(":KUBE-IPTABLES-HINT ", "").contains("KUBE-"), "{save}");
    assert!(save.contains(":KUBE-IPTABLES-HINT "), "kubelet's chain stays: {save}");
    assert!(save.contains(":SOMEONE-ELSE"), "other chains stay: {save}");
    assert_eq!(lab.node.exec("nft", &["list", "tables"]).trim(), "table inet someone-else");
}

/// Last good state wins: a manifest overwritten with text that does not parse (an editor's
/// interrupted save), emptied, or truncated changes nothing — the rules stay, the error names the
/// file and line, a metric counts it — and an atomic rename of a good file is followed. `sync`
/// with such a file exits non-zero and leaves the table as it was.
#[test]
fn standalone_keeps_the_last_good_state_when_the_file_breaks() {
    let lab = Lab::new(2);
    let dir = TempDir::new(&format!("{}lastgood", lab.topo.prefix()));
    let file = dir.join("live.yaml");
    let good = manifest(&[1, 2]);
    std::fs::write(&file, &good).unwrap();
    let child = lab
        .node
        .command(env!("CARGO_BIN_EXE_kube-nftproxy"))
        .args(["run", "--from", file.to_str().unwrap(), "--hostname-override", NODE, "--node-ip", "10.0.1.1"])
        .args(["--cluster-cidr", "10.244.0.0/16", "--metrics-bind-address", "127.0.0.1:10249"])
        .args(["--healthz-bind-address", "", "--conntrack-max-per-core", "0"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    answered_by(&lab.client, "10.96.0.10:80", &["ep1", "ep2"], 10);
    let table = || lab.node.exec("nft", &["list", "table", "ip", "kube-nftproxy"]);
    let before = table();
    for broken in
        ["garbage: [\n".to_string(), String::new(), good[..good.len() * 2 / 3].to_string() + "- {addresses: [10.244"]
    {
        std::fs::write(&file, &broken).unwrap();
        std::thread::sleep(Duration::from_millis(2200));
        answered_by(&lab.client, "10.96.0.10:80", &["ep1", "ep2"], 3);
        assert_eq!(table(), before, "a broken file changed the rules: {broken:?}");
    }
    let (code, metrics) = http_get(&lab.node, "127.0.0.1:10249", "/metrics");
    assert_eq!(code, 200);
    assert!(metrics.contains("kubenftproxy_manifest_load_failures_total 3"), "{metrics}");
    // An editor's atomic save: a new file renamed over the old one.
    let tmp = dir.join(".live.yaml.swp");
    std::fs::write(&tmp, manifest(&[2])).unwrap();
    std::fs::rename(&tmp, &file).unwrap();
    answered_by(&lab.client, "10.96.0.10:80", &["ep2"], 5);
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let out = child.wait_with_output().unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(log.contains(&format!("{} (document 1, line 1)", file.display())), "file and line named: {log}");
    assert!(log.contains("no Kubernetes objects") && log.contains("the previous rules stay"), "{log}");

    // `sync --from` a broken file: non-zero exit, nothing changed.
    let before = table();
    std::fs::write(&file, "garbage: [\n").unwrap();
    let out = lab
        .node
        .command(env!("CARGO_BIN_EXE_kube-nftproxy"))
        .args(["sync", "--from", file.to_str().unwrap(), "--hostname-override", NODE])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "sync of a broken file succeeded: {err}");
    assert!(err.contains("line 1"), "{err}");
    assert_eq!(table(), before);
    std::fs::write(&file, "").unwrap();
    let out = lab
        .node
        .command(env!("CARGO_BIN_EXE_kube-nftproxy"))
        .args(["sync", "--from", file.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!out.status.success(), "an empty file is refused without --allow-empty-manifests");
    assert_eq!(table(), before);
}

/// kube-proxy's one-shot modes: `--version`, `--write-config-to` (the effective configuration,
/// which reads back to itself), `--init-only` (set-up, then exit).
#[test]
fn version_write_config_to_and_init_only() {
    let bin = env!("CARGO_BIN_EXE_kube-nftproxy");
    let out = Command::new(bin).args(["run", "--version"]).output().unwrap();
    assert!(out.status.success() && String::from_utf8_lossy(&out.stdout).starts_with("kube-nftproxy "));
    let dir = TempDir::new(&format!("knp-wcfg-{}", std::process::id()));
    let (first, second) = (dir.join("first.yaml"), dir.join("second.yaml"));
    let out = Command::new(bin)
        .args(["run", "--write-config-to", first.to_str().unwrap(), "--hostname-override", "Node-A "])
        .args(["--proxy-mode", "iptables", "--iptables-sync-period", "45s", "--cluster-cidr", "10.244.0.0/16"])
        .args(["--kube-api-qps", "20"])
        .output()
        .unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{log}");
    assert!(log.contains("--kube-api-qps: accepted, no effect"), "{log}");
    let text = std::fs::read_to_string(&first).unwrap();
    for want in ["mode: iptables", "syncPeriod: 45s", "hostnameOverride: node-a", "clusterCIDR: 10.244.0.0/16"] {
        assert!(text.contains(want), "{want}:\n{text}");
    }
    let out = Command::new(bin)
        .args(["run", "--config", first.to_str().unwrap(), "--write-config-to", second.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(std::fs::read_to_string(&second).unwrap(), text, "written, read and written again: the same");

    let lab = Lab::new(1);
    let out = lab
        .node
        .command(bin)
        .args(["run", "--init-only", "--conntrack-max-per-core", "0", "--conntrack-udp-timeout", "33s"])
        .args(["--oom-score-adj", "-10"])
        .output()
        .unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && log.contains("--init-only"), "{log}");
    let udp = lab.node.exec("cat", &["/proc/sys/net/netfilter/nf_conntrack_udp_timeout"]);
    assert_eq!(udp.trim(), "33");
    assert!(lab.node.exec("nft", &["list", "tables"]).trim().is_empty(), "--init-only programs no rules");
}

/// `/configz` and `/flagz` on the metrics port, and kube-proxy's restart when its `--config` file
/// changes (the process exits; its DaemonSet starts it again with the new file).
#[test]
fn component_pages_and_exit_on_configuration_change() {
    let lab = Lab::new(2);
    let dir = TempDir::new(&format!("{}cfgz", lab.topo.prefix()));
    let file = dir.join("cluster.yaml");
    std::fs::write(&file, manifest(&[1, 2])).unwrap();
    let cfg = dir.join("config.yaml");
    std::fs::write(
        &cfg,
        "apiVersion: kubeproxy.config.k8s.io/v1alpha1\nkind: KubeProxyConfiguration\nmode: nftables\n\
         metricsBindAddress: 127.0.0.1:10249\nhealthzBindAddress: \"\"\nfutureField: 1\n",
    )
    .unwrap();
    let mut child = standalone_with_config(&lab, &cfg, &file);
    answered_by(&lab.client, "10.96.0.10:80", &["ep1", "ep2"], 10);
    let (code, body) = http_get(&lab.node, "127.0.0.1:10249", "/configz");
    assert_eq!(code, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    let c = &v["kubeproxy.config.k8s.io"];
    assert_eq!((c["mode"].as_str(), c["hostnameOverride"].as_str()), (Some("nftables"), Some(NODE)), "{body}");
    // `""` in the file is kube-proxy's default address, not "off" (kubeadm writes `""`).
    assert_eq!(c["healthzBindAddress"], "0.0.0.0:10256", "{body}");
    let (code, body) = http_get(&lab.node, "127.0.0.1:10249", "/flagz");
    assert_eq!(code, 200, "{body}");
    assert!(body.starts_with("kube-proxy flags\n") && body.contains(&format!("--hostname-override={NODE}")), "{body}");
    // An edit of the file: the process ends, non-zero, saying why; the rules stay.
    std::fs::write(&cfg, std::fs::read_to_string(&cfg).unwrap() + "# edited\n").unwrap();
    let start = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(start.elapsed() < Duration::from_secs(10), "still running 10 s after the configuration changed");
        std::thread::sleep(Duration::from_millis(100));
    };
    let mut log = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut log).unwrap();
    assert!(!status.success(), "{log}");
    assert!(log.contains("changed: exiting so that the restart reads it"), "{log}");
    assert!(log.contains("lenient decoding") && log.contains("futureField"), "{log}");
    answered_by(&lab.client, "10.96.0.10:80", &["ep1", "ep2"], 5);
}
