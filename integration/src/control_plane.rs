//! A real Kubernetes control plane for end-to-end tests: etcd (Debian's etcd-server, unpacked) and
//! kube-apiserver (built from its Go module), provided by `integration/peers/build-peers.sh` and
//! run **inside a control-plane
//! namespace** of the test topology. Nothing listens in the root namespace: the API server binds
//! 10.0.9.1:6443 (and loopback) in its namespace, the node reaches it over a veth, and the test
//! talks to it with curl run inside that namespace.
//!
//! Identities (static tokens): `admin` (system:masters) for the test, and the service account
//! user `system:serviceaccount:kube-system:kube-nftproxy` for the proxy, so the proxy runs with
//! exactly the RBAC of `deploy/`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::{Ns, Topology};

pub const API_IP: &str = "10.0.9.1";
pub const NODE_SIDE_IP: &str = "10.0.9.2";
pub const ADMIN_TOKEN: &str = "knp-admin-token";
pub const PROXY_TOKEN: &str = "knp-proxy-token";
pub const PROXY_USER: &str = "system:serviceaccount:kube-system:kube-nftproxy";
pub const SERVICE_CIDR: &str = "10.96.0.0/16";
/// The IPv6 Service range of a dual-stack control plane ([`ControlPlane::start_alone`]).
pub const SERVICE_CIDR_V6: &str = "fd00:96::/112";

/// The directory with kube-apiserver, etcd and kube-proxy: `$KNP_PEERS_BIN`, else whatever
/// `build-peers.sh` prints (it builds them once into its cache, then only prints the path).
pub fn peers_dir() -> PathBuf {
    if let Some(p) = std::env::var_os("KNP_PEERS_BIN") {
        return p.into();
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("peers/build-peers.sh");
    let out = Command::new("bash").arg(&script).stderr(Stdio::inherit()).output().expect("run build-peers.sh");
    assert!(out.status.success(), "{} failed", script.display());
    let text = String::from_utf8_lossy(&out.stdout);
    PathBuf::from(text.lines().last().expect("build-peers.sh printed nothing").trim())
}

/// A child process killed (and reaped) on drop.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub struct ControlPlane {
    pub ns: Ns,
    pub dir: PathBuf,
    peers: PathBuf,
    etcd: Option<Proc>,
    apiservers: Vec<(u16, Option<Proc>)>,
    /// `--service-cluster-ip-range`.
    service_cidrs: String,
}

impl ControlPlane {
    /// Creates the control-plane namespace, wires it to `node` (10.0.9.1 ↔ 10.0.9.2), and starts
    /// etcd and one kube-apiserver on port 6443. Blocks until the API server is ready.
    pub fn start(topo: &mut Topology, node: &Ns) -> ControlPlane {
        let ns = topo.netns("cp");
        topo.veth(node, "cp0", &ns, "eth0");
        topo.addr(node, "cp0", &format!("{NODE_SIDE_IP}/24"));
        topo.addr(&ns, "eth0", &format!("{API_IP}/24"));
        Self::start_in(ns, SERVICE_CIDR.to_string())
    }

    /// A dual-stack control plane in a namespace of its own topology, linked to no node yet:
    /// nodes join with [`ControlPlane::connect`] (several node namespaces with identical
    /// addresses can watch the same API server, each over its own link).
    pub fn start_alone(topo: &mut Topology) -> ControlPlane {
        let ns = topo.netns("cp");
        topo.addr(&ns, "lo", &format!("{API_IP}/32"));
        Self::start_in(ns, format!("{SERVICE_CIDR},{SERVICE_CIDR_V6}"))
    }

    /// Links node namespace `node` to the API server over link number `k` (1..=250): the node
    /// reaches it at 10.1.k.1 (node side 10.1.k.2). Returns the address to use in a kubeconfig.
    pub fn connect(&self, topo: &Topology, node: &Ns, k: u8) -> String {
        let cp_if = format!("node{k}");
        topo.veth(node, "cp0", &self.ns, &cp_if);
        topo.addr(node, "cp0", &format!("10.1.{k}.2/24"));
        topo.addr(&self.ns, &cp_if, &format!("10.1.{k}.1/24"));
        format!("10.1.{k}.1")
    }

    fn start_in(ns: Ns, service_cidrs: String) -> ControlPlane {
        let peers = peers_dir();
        let dir = std::env::temp_dir().join(&ns.name);
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("certs")).unwrap();
        std::fs::write(
            dir.join("tokens.csv"),
            format!(
                "{ADMIN_TOKEN},admin,admin-uid,system:masters\n{PROXY_TOKEN},{PROXY_USER},proxy-uid,\"system:serviceaccounts,system:serviceaccounts:kube-system\"\n"
            ),
        )
        .unwrap();
        let key = dir.join("sa.key");
        let out = Command::new("openssl")
            .args(["genrsa", "-out"])
            .arg(&key)
            .arg("2048")
            .stderr(Stdio::null())
            .output()
            .expect("openssl");
        assert!(out.status.success(), "openssl genrsa failed");
        let mut cp = ControlPlane { ns, dir, peers, etcd: None, apiservers: Vec::new(), service_cidrs };
        cp.start_etcd();
        cp.start_apiserver(6443);
        cp
    }

    fn spawn(&self, program: &Path, args: &[String], log: &str) -> Proc {
        let log = std::fs::File::create(self.dir.join(log)).unwrap();
        let child = self
            .ns
            .command(program.to_str().unwrap())
            .args(args)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", program.display()));
        Proc(child)
    }

    /// Starts (or restarts, on the same data directory) etcd.
    pub fn start_etcd(&mut self) {
        let data = self.dir.join("etcd");
        let args: Vec<String> = [
            "--name=cp",
            &format!("--data-dir={}", data.display()),
            "--listen-client-urls=http://127.0.0.1:2379",
            "--advertise-client-urls=http://127.0.0.1:2379",
            "--listen-peer-urls=http://127.0.0.1:2380",
            "--initial-advertise-peer-urls=http://127.0.0.1:2380",
            "--initial-cluster=cp=http://127.0.0.1:2380",
            // Both etcd 3.4 (Debian's) and 3.5+ take these.
            "--logger=zap",
            "--log-level=warn",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        self.etcd = Some(self.spawn(&self.peers.join("etcd"), &args, "etcd.log"));
    }

    /// Starts (or restarts) a kube-apiserver on `port`, sharing the one etcd.
    pub fn start_apiserver(&mut self, port: u16) {
        let d = self.dir.display();
        let args: Vec<String> = vec![
            "--etcd-servers=http://127.0.0.1:2379".into(),
            "--bind-address=0.0.0.0".into(),
            format!("--secure-port={port}"),
            format!("--advertise-address={API_IP}"),
            format!("--cert-dir={d}/certs-{port}"),
            format!("--token-auth-file={d}/tokens.csv"),
            "--authorization-mode=RBAC".into(),
            format!("--service-cluster-ip-range={}", self.service_cidrs),
            "--service-account-issuer=https://kubernetes.default.svc".into(),
            format!("--service-account-key-file={d}/sa.key"),
            format!("--service-account-signing-key-file={d}/sa.key"),
            "--allow-privileged=true".into(),
            "--enable-priority-and-fairness=false".into(),
            // Only one API server owns the `kubernetes` Service's endpoints.
            format!("--endpoint-reconciler-type={}", if port == 6443 { "lease" } else { "none" }),
            "--v=0".into(),
        ];
        let proc = self.spawn(&self.peers.join("kube-apiserver"), &args, &format!("apiserver-{port}.log"));
        self.apiservers.retain(|(p, _)| *p != port);
        self.apiservers.push((port, Some(proc)));
        self.wait_ready(port);
    }

    /// Kills etcd (SIGKILL; the data directory stays for [`ControlPlane::start_etcd`]).
    pub fn stop_etcd(&mut self) {
        self.etcd.take();
    }

    /// Kills the API server on `port` (SIGKILL; etcd and the data stay).
    pub fn stop_apiserver(&mut self, port: u16) {
        for (p, proc) in &mut self.apiservers {
            if *p == port {
                proc.take();
            }
        }
    }

    fn wait_ready(&self, port: u16) {
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            let out = self.curl_raw(port, "GET", "/readyz", None);
            if out.as_deref() == Some("ok") {
                return;
            }
            if Instant::now() > deadline {
                let log = std::fs::read_to_string(self.dir.join(format!("apiserver-{port}.log"))).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(30).collect();
                panic!("kube-apiserver on {port} not ready after 90 s; log tail:\n{}", tail.join("\n"));
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    fn curl_raw(&self, port: u16, method: &str, path: &str, body: Option<&Value>) -> Option<String> {
        self.curl_as(ADMIN_TOKEN, port, method, path, body)
    }

    fn curl_as(&self, token: &str, port: u16, method: &str, path: &str, body: Option<&Value>) -> Option<String> {
        let mut c = self.ns.command("curl");
        c.args(["-sk", "--max-time", "10", "-X", method, "-H", &format!("Authorization: Bearer {token}")]);
        if body.is_some() {
            c.args(["-H", "Content-Type: application/json", "--data-binary", "@-"]);
        }
        c.arg(format!("https://127.0.0.1:{port}{path}"));
        c.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::null());
        let mut child = c.spawn().expect("curl");
        if let Some(b) = body {
            use std::io::Write;
            child.stdin.take().unwrap().write_all(b.to_string().as_bytes()).unwrap();
        } else {
            drop(child.stdin.take());
        }
        let out = child.wait_with_output().ok()?;
        out.status.success().then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// An API call with `token` on the API server at `port`: the JSON answer (a Status object
    /// when refused), or an error when there was no answer at all.
    pub fn try_api_as(
        &self,
        token: &str,
        port: u16,
        method: &str,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Value, String> {
        let text = self
            .curl_as(token, port, method, path, body)
            .ok_or_else(|| format!("{method} {path} on :{port}: no answer"))?;
        serde_json::from_str(&text).map_err(|_| format!("{method} {path}: not JSON: {text}"))
    }

    /// An API call as admin that may fail (the API server or etcd may be down): the JSON
    /// answer, or an error for no answer or a Status failure.
    pub fn try_api_on(&self, port: u16, method: &str, path: &str, body: Option<&Value>) -> Result<Value, String> {
        let v = self.try_api_as(ADMIN_TOKEN, port, method, path, body)?;
        if v["kind"] == "Status" && v["status"] == "Failure" {
            return Err(format!("{method} {path}: {}", v["message"]));
        }
        Ok(v)
    }

    /// An API call as admin on the API server at `port`; returns the JSON answer. Panics on a
    /// transport error or a Status failure.
    pub fn api_on(&self, port: u16, method: &str, path: &str, body: Option<&Value>) -> Value {
        let text = self.curl_raw(port, method, path, body).unwrap_or_else(|| panic!("{method} {path}: no answer"));
        let v: Value = serde_json::from_str(&text).unwrap_or_else(|_| panic!("{method} {path}: not JSON: {text}"));
        if v["kind"] == "Status" && v["status"] == "Failure" {
            panic!("{method} {path}: {}", v["message"]);
        }
        v
    }

    pub fn api(&self, method: &str, path: &str, body: Option<&Value>) -> Value {
        self.api_on(6443, method, path, body)
    }

    /// Creates an object from its JSON (the path comes from its kind).
    pub fn create(&self, obj: &Value) -> Value {
        self.api("POST", &collection_path(obj), Some(obj))
    }

    /// Replaces an object (GET for its resourceVersion, then PUT).
    pub fn replace_on(&self, port: u16, obj: &Value) -> Value {
        let path = object_path(obj);
        let current = self.api_on(port, "GET", &path, None);
        let mut obj = obj.clone();
        obj["metadata"]["resourceVersion"] = current["metadata"]["resourceVersion"].clone();
        self.api_on(port, "PUT", &path, Some(&obj))
    }

    pub fn replace(&self, obj: &Value) -> Value {
        self.replace_on(6443, obj)
    }

    pub fn delete(&self, obj: &Value) -> Value {
        self.api("DELETE", &object_path(obj), None)
    }

    /// A kubeconfig for the proxy's identity, reaching the API server at 10.0.9.1:`port`.
    pub fn proxy_kubeconfig(&self, port: u16) -> PathBuf {
        self.kubeconfig(API_IP, port, PROXY_TOKEN, "proxy")
    }

    /// A kubeconfig for `token`, reaching the API server at `ip:port` (file named after `name`).
    pub fn kubeconfig(&self, ip: &str, port: u16, token: &str, name: &str) -> PathBuf {
        let path = self.dir.join(format!("{name}-{ip}-{port}.kubeconfig"));
        std::fs::write(
            &path,
            format!(
                "apiVersion: v1\nkind: Config\nclusters:\n- name: test\n  cluster:\n    server: https://{ip}:{port}\n    insecure-skip-tls-verify: true\nusers:\n- name: {name}\n  user:\n    token: {token}\ncontexts:\n- name: test\n  context: {{cluster: test, user: {name}}}\ncurrent-context: test\n"
            ),
        )
        .unwrap();
        path
    }

    /// Writes an object's `status` (the status subresource: a create ignores it), e.g. a
    /// LoadBalancer Service's ingress IPs as a cloud controller would.
    pub fn update_status(&self, obj: &Value) -> Value {
        let path = format!("{}/status", object_path(obj));
        let mut current = self.api("GET", &object_path(obj), None);
        current["status"] = obj["status"].clone();
        self.api("PUT", &path, Some(&current))
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        self.apiservers.clear();
        self.etcd.take();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The REST path of an object's collection, from apiVersion, kind and namespace.
pub fn collection_path(obj: &Value) -> String {
    let api_version = obj["apiVersion"].as_str().expect("apiVersion");
    let kind = obj["kind"].as_str().expect("kind");
    let plural = match kind {
        "Service" => "services",
        "EndpointSlice" => "endpointslices",
        "Node" => "nodes",
        "Namespace" => "namespaces",
        "ConfigMap" => "configmaps",
        "ServiceAccount" => "serviceaccounts",
        "DaemonSet" => "daemonsets",
        "ClusterRole" => "clusterroles",
        "ClusterRoleBinding" => "clusterrolebindings",
        "ServiceCIDR" => "servicecidrs",
        other => panic!("no REST path known for kind {other}"),
    };
    let group = if api_version.contains('/') { format!("/apis/{api_version}") } else { format!("/api/{api_version}") };
    match obj["metadata"]["namespace"].as_str() {
        Some(ns) => format!("{group}/namespaces/{ns}/{plural}"),
        None if matches!(kind, "Node" | "Namespace" | "ClusterRole" | "ClusterRoleBinding" | "ServiceCIDR") => {
            format!("{group}/{plural}")
        }
        None => format!("{group}/namespaces/default/{plural}"),
    }
}

pub fn object_path(obj: &Value) -> String {
    format!("{}/{}", collection_path(obj), obj["metadata"]["name"].as_str().expect("metadata.name"))
}
