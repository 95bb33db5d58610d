//! Helpers shared by the end-to-end tests against a real kube-apiserver (`e2e_apiserver.rs`) and
//! the fault suite (`faults.rs`): the daemon as a child process in the node namespace, the
//! objects they create, and polling until traffic follows a change.
#![allow(dead_code)] // each test binary uses a different part

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use nftproxy_integration::control_plane::ControlPlane;
use nftproxy_integration::lab::{NODE, NODE_IP, POD_PORT, pod_ip};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use nftproxy_integration::{Ns, Outcome, Proto, request};
use serde_json::{Value, json};

pub const CLUSTER_IP: &str = "10.96.0.10";
/// What a change may take from the API call's return to traffic following it (the bar).
pub const CHANGE_BUDGET: Duration = Duration::from_secs(2);

/// `kube-nftproxy run` in the node namespace; killed on drop, SIGTERM on request.
pub struct Daemon {
    child: Option<Child>,
    log: PathBuf,
}

impl Daemon {
    pub fn start(node: &Ns, kubeconfig: &std::path::Path, log: PathBuf, extra: &[&str]) -> Daemon {
        Self::start_env(node, kubeconfig, log, extra, &[])
    }

    /// [`Daemon::start`] with extra environment variables.
    pub fn start_env(
        node: &Ns,
        kubeconfig: &std::path::Path,
        log: PathBuf,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Daemon {
        let mut cmd = node.command(env!("CARGO_BIN_EXE_kube-nftproxy"));
        cmd.arg("run")
            .arg("--kubeconfig")
            .arg(kubeconfig)
            .args(["--hostname-override", NODE, "--cluster-cidr", "10.244.0.0/16,fd00:244::/48"])
            .args(["--metrics-bind-address", "127.0.0.1:10249", "--healthz-bind-address", "0.0.0.0:10256"])
            // KNP_E2E_MIN_SYNC_PERIOD=0s measures the pipeline without kube-proxy's 1 s default.
            .args(
                std::env::var("KNP_E2E_MIN_SYNC_PERIOD")
                    .map(|v| vec!["--min-sync-period".to_string(), v])
                    .unwrap_or_default(),
            )
            .args(extra)
            .envs(env.iter().copied());
        Self::spawn(cmd, log)
    }

    /// `kube-nftproxy run` with exactly these arguments (a kube-proxy command line as a
    /// DaemonSet gives it).
    pub fn start_exact(node: &Ns, log: PathBuf, args: &[&str]) -> Daemon {
        let mut cmd = node.command(env!("CARGO_BIN_EXE_kube-nftproxy"));
        cmd.arg("run").args(args);
        Self::spawn(cmd, log)
    }

    fn spawn(mut cmd: std::process::Command, log: PathBuf) -> Daemon {
        let file = std::fs::OpenOptions::new().create(true).append(true).open(&log).unwrap();
        let child = cmd
            .stdin(Stdio::null())
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .spawn()
            .expect("spawn kube-nftproxy run");
        Daemon { child: Some(child), log }
    }

    /// SIGTERM, then wait for the exit (which must be clean).
    pub fn terminate(&mut self) {
        let mut c = self.child.take().unwrap();
        // SAFETY: signalling our own child process.
        unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
        let status = c.wait().unwrap();
        assert!(status.success(), "kube-nftproxy exited with {status} after SIGTERM; log:\n{}", self.log_text());
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The process id (`ip netns exec` execs the daemon in place).
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

pub fn node_obj() -> Value {
    json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": NODE, "labels": {"kubernetes.io/hostname": NODE}},
        "status": {"addresses": [{"type": "InternalIP", "address": NODE_IP}]}
    })
}

pub fn service(spec_extra: Value) -> Value {
    nftproxy_integration::multinode::service("web", CLUSTER_IP, spec_extra)
}

/// The Service's slice with endpoints on pods `eps` (all on this node), stamped with the
/// EndpointSlice controller's trigger-time annotation.
pub fn slice(eps: &[usize]) -> Value {
    let endpoints: Vec<Value> = eps
        .iter()
        .map(|&n| json!({"addresses": [pod_ip(n)], "conditions": {"ready": true}, "nodeName": NODE}))
        .collect();
    json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {
            "name": "web-1", "namespace": "default",
            "labels": {"kubernetes.io/service-name": "web"},
            "annotations": {"endpoints.kubernetes.io/last-change-trigger-time": nftproxy_integration::trigger_time_now()}
        },
        "addressType": "IPv4",
        "endpoints": endpoints,
        "ports": [{"name": "tcp", "port": POD_PORT, "protocol": "TCP"}, {"name": "udp", "port": POD_PORT, "protocol": "UDP"}]
    })
}

pub fn ask(from: &Ns, proto: Proto, to: &str) -> Outcome {
    let to: SocketAddr = to.parse().unwrap();
    from.run(|| request(proto, to, None, Duration::from_millis(300)))
}

/// Polls until `ok` holds for 10 consecutive requests; returns how long that took (from `since`)
/// or panics after `limit`.
pub fn settle(
    from: &Ns,
    proto: Proto,
    to: &str,
    since: Instant,
    limit: Duration,
    what: &str,
    ok: impl Fn(&Outcome) -> bool,
) -> Duration {
    let mut streak = 0;
    let mut first_ok: Option<Duration> = None;
    let mut last = None;
    while since.elapsed() < limit + Duration::from_secs(3) {
        let o = ask(from, proto, to);
        if ok(&o) {
            first_ok.get_or_insert(since.elapsed());
            streak += 1;
            if streak == 10 {
                let t = first_ok.unwrap();
                assert!(t <= limit, "{what}: took {t:?}, more than {limit:?}");
                return t;
            }
        } else {
            streak = 0;
            first_ok = None;
            last = Some(o);
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    panic!("{what}: not reached within {limit:?}; last outcome {last:?}");
}

pub fn answered_by(allowed: &'static [&'static str]) -> impl Fn(&Outcome) -> bool {
    move |o| matches!(o, Outcome::Answered { responder, .. } if allowed.contains(&responder.as_str()))
}

pub fn curl(ns: &Ns, url: &str) -> (u16, String) {
    let out = ns.command("curl").args(["-s", "--max-time", "3", "-w", "\n%{http_code}", url]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (code.trim().parse().unwrap_or(0), body.to_string())
}

pub fn metric(text: &str, name_and_labels: &str) -> Option<f64> {
    text.lines().find_map(|l| l.strip_prefix(name_and_labels).and_then(|v| v.trim().parse().ok()))
}

pub fn apply_deploy(cp: &ControlPlane) {
    let text =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../deploy/kube-nftproxy.yaml")).unwrap();
    let mut kinds = Vec::new();
    for doc in text.split("\n---\n") {
        let v: serde_yaml::Value = serde_yaml::from_str(doc).unwrap();
        if v.is_null() {
            continue;
        }
        let obj: Value = serde_json::to_value(v).unwrap();
        let created = cp.create(&obj);
        kinds.push(created["kind"].as_str().unwrap().to_string());
    }
    assert_eq!(kinds, ["ServiceAccount", "ClusterRole", "ClusterRoleBinding", "ConfigMap", "DaemonSet"]);
}

/// The lab node's flags, the same for `run --from` and the one-shot `sync`.
pub const NODE_FLAGS: &[&str] =
    &["--hostname-override", NODE, "--node-ip", "10.0.1.1", "--cluster-cidr", "10.244.0.0/16"];

/// `kube-nftproxy sync --from FILE` with [`NODE_FLAGS`] in `ns`, once.
pub fn sync_once(ns: &Ns, file: &std::path::Path) -> std::process::Output {
    ns.command(env!("CARGO_BIN_EXE_kube-nftproxy"))
        .args(["sync", "--from", file.to_str().unwrap()])
        .args(NODE_FLAGS)
        .output()
        .expect("spawn kube-nftproxy sync")
}

/// A control plane for the lab's node with a second API server on port 6444 (changes made while
/// the proxy's one is down), `deploy/`'s objects, the Node, and the Service `web` on pods 1–3.
pub fn control_plane_with_web(lab: &mut nftproxy_integration::lab::Lab) -> ControlPlane {
    let mut cp = ControlPlane::start(&mut lab.topo, &lab.node);
    cp.start_apiserver(6444);
    apply_deploy(&cp);
    cp.create(&node_obj());
    cp.create(&service(json!({})));
    cp.create(&slice(&[1, 2, 3]));
    cp
}

/// New TCP connections to the VIP from the client, one per millisecond or so, until stopped (at
/// most 60 s or 20,000 requests): (answered, failed outcomes). Paced: unpaced (3,500/s) the
/// client wraps its source ports within a test and meets the pods' TIME_WAIT sockets for the
/// same (masqueraded) 4-tuple, a failure of the load, not of the switch (seen once in 3,500).
pub fn load(client: &Ns, vip: &str, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<(usize, Vec<Outcome>)> {
    let (client, to) = (client.clone(), vip.parse().unwrap());
    std::thread::spawn(move || {
        client.run(|| {
            let (mut ok, mut failed) = (0, Vec::new());
            let start = Instant::now();
            while !stop.load(Ordering::Relaxed) && start.elapsed() < Duration::from_secs(60) && ok < 20_000 {
                match request(Proto::Tcp, to, None, Duration::from_secs(1)) {
                    Outcome::Answered { .. } => ok += 1,
                    other => failed.push(other),
                }
                std::thread::sleep(Duration::from_millis(1));
            }
            (ok, failed)
        })
    })
}
