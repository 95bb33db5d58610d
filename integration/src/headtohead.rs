//! Head to head with the real kube-proxy: each proxy process in turn, fed by the same real
//! kube-apiserver and the same objects, in a fresh node namespace: cold start, +1 Service and an
//! endpoint replaced (API call returned → traffic follows, probed with real packets), the proxy's
//! own sync time (its `kubeproxy_sync_proxy_rules_duration_seconds`), CPU seconds and peak RSS of
//! the proxy process (and of its children: kube-proxy runs `nft` and `iptables-restore`).
//!
//! Everything is bounded: a proxy that misses the deadline is reported as "> N s" and skipped
//! for the rest of that size.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::control_plane::{ADMIN_TOKEN, ControlPlane, peers_dir};
use crate::lab::{Lab, NODE, POD_PORT, pod_ip};
use crate::peer::Mode;
use crate::{Outcome, Proto, Topology, descendants, proc_status_kb, request};

pub const NAMESPACE: &str = "bench";
const LATE_IP: &str = "10.96.255.250";

/// The proxies compared.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Proxy {
    KubeProxyNftables,
    KubeProxyIptables,
    OursNftables,
    OursIptables,
    /// Our daemon in nftables mode fed by a manifest file holding the same objects (`run
    /// --from DIR`), its changes written into the file.
    OursStandalone,
}

impl Proxy {
    pub const ALL: [Proxy; 5] = [
        Proxy::OursNftables,
        Proxy::KubeProxyNftables,
        Proxy::OursIptables,
        Proxy::KubeProxyIptables,
        Proxy::OursStandalone,
    ];
    /// At the sizes where only our daemon runs (`--real-ours`).
    pub const OURS: [Proxy; 2] = [Proxy::OursNftables, Proxy::OursStandalone];
    pub fn label(self) -> &'static str {
        match self {
            Proxy::KubeProxyNftables => "kube-proxy v1.34.4, nftables",
            Proxy::KubeProxyIptables => "kube-proxy v1.34.4, iptables (iptables-nft)",
            Proxy::OursNftables => "kube-nftproxy, nftables",
            Proxy::OursIptables => "kube-nftproxy, iptables",
            Proxy::OursStandalone => "kube-nftproxy, nftables, standalone (`run --from` a manifest)",
        }
    }
}

/// One proxy's figures at one size.
#[derive(Clone, Debug, Default)]
pub struct Figures {
    /// Process start → the late Service (created after all others) answers; None: deadline.
    pub cold_start: Option<Duration>,
    /// The proxy's own sync time summed over the syncs until then (its metric).
    pub cold_reported: Option<f64>,
    /// API call returned → traffic reaches the new Service (median of samples).
    pub plus_one: Vec<Duration>,
    /// The proxy's own mean sync time over those changes.
    pub plus_one_reported: Option<f64>,
    /// API call returned → traffic goes to the replacement endpoint only.
    pub churn: Vec<Duration>,
    pub cpu_seconds: f64,
    /// The process's high-water mark over its whole life: cold start and every change above.
    pub peak_rss_mib: f64,
    /// Its resident set at the end, a second after the last change.
    pub steady_rss_mib: f64,
    /// With children (kube-proxy's `nft` / `iptables-restore`), sampled every 100 ms.
    pub peak_tree_rss_mib: f64,
    pub note: String,
}

/// The objects of N Services × E endpoints (fake endpoint addresses: nothing answers them; the
/// probes use their own Services backed by the lab's pods).
pub fn objects(n: usize, e: usize) -> Vec<Vec<Value>> {
    let ip = |base: u32, i: usize| {
        let v = base + i as u32;
        format!("{}.{}.{}.{}", v >> 24, (v >> 16) & 255, (v >> 8) & 255, v & 255)
    };
    let (mut services, mut slices) = (Vec::with_capacity(n), Vec::with_capacity(n));
    for i in 0..n {
        let name = format!("s{i}");
        services.push(json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": NAMESPACE},
            "spec": {"clusterIP": ip(0x0A60_0100, i), "ports": [{"name": "http", "port": 80, "protocol": "TCP", "targetPort": 8080}]}}));
        let eps: Vec<Value> = (0..e)
            .map(|j| json!({"addresses": [ip(0x0A80_0000, i * e + j)], "nodeName": "node-b", "conditions": {"ready": true}}))
            .collect();
        slices.push(json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": format!("{name}-1"), "namespace": NAMESPACE, "labels": {"kubernetes.io/service-name": name}},
            "addressType": "IPv4", "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}], "endpoints": eps}));
    }
    vec![services, slices]
}

fn probe_service(name: &str, ip: &str, pod: usize) -> (Value, Value) {
    (
        json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": NAMESPACE},
               "spec": {"clusterIP": ip, "ports": [{"name": "http", "port": 80, "protocol": "TCP", "targetPort": POD_PORT}]}}),
        probe_slice(name, pod),
    )
}

fn probe_slice(name: &str, pod: usize) -> Value {
    json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
           "metadata": {"name": format!("{name}-1"), "namespace": NAMESPACE, "labels": {"kubernetes.io/service-name": name}},
           "addressType": "IPv4", "ports": [{"name": "http", "port": POD_PORT, "protocol": "TCP"}],
           "endpoints": [{"addresses": [pod_ip(pod)], "nodeName": "node-b", "conditions": {"ready": true}}]})
}

/// The bench's control plane with N × E objects and the late probe Service loaded.
pub struct Cluster {
    topo: Topology,
    pub cp: ControlPlane,
    pub load_time: Duration,
    links: u8,
    n: usize,
    e: usize,
}

impl Cluster {
    /// A control plane holding nothing: for the standalone daemon alone, whose objects are in
    /// its manifest (loading 50k Services through this API server takes it most of an hour).
    pub fn empty(n: usize, e: usize) -> Cluster {
        let mut topo = Topology::new();
        let cp = ControlPlane::start_alone(&mut topo);
        Cluster { topo, cp, load_time: Duration::ZERO, links: 1, n, e }
    }

    pub fn load(n: usize, e: usize) -> Cluster {
        let mut topo = Topology::new();
        let cp = ControlPlane::start_alone(&mut topo);
        cp.create(&json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}}));
        cp.create(&json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": NODE},
            "status": {"addresses": [{"type": "InternalIP", "address": "10.0.1.1"}]}}));
        let load_time = crate::loader::create_all(&cp, &objects(n, e), 64);
        let (svc, slice) = probe_service("late", LATE_IP, 1);
        cp.create(&svc);
        cp.create(&slice);
        Cluster { topo, cp, load_time, links: 1, n, e }
    }

    /// The same N Services with E endpoints each now: every slice replaced through the API.
    /// Services stay as they are, so a 50k × 10 run can follow a 50k × 3 one on the same API
    /// server instead of waiting ~20 minutes for its ClusterIP allocator to create 50k Services
    /// again (`Makefile`, bench). The proxies measured next start cold against these objects,
    /// exactly as against freshly created ones. Returns how long the replacing took.
    pub fn regrow(&mut self, e: usize) -> Duration {
        let slices = objects(self.n, e).swap_remove(1);
        let took = crate::loader::replace_all(&self.cp, &[slices], 64);
        self.e = e;
        took
    }
}

/// Where a proxy's objects come from and where the measured changes go: the API server, or a
/// manifest file (`kind: List`) that is rewritten whole and renamed into place for each change.
enum Feed {
    Api,
    File { dir: PathBuf, items: Vec<Value>, extra: BTreeMap<String, Value> },
}

impl Feed {
    fn file(c: &Cluster, logs: &Path) -> Feed {
        let dir = logs.join(format!("standalone-{}x{}", c.n, c.e));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let mut items: Vec<Value> = objects(c.n, c.e).into_iter().flatten().collect();
        items.push(json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": NODE},
            "status": {"addresses": [{"type": "InternalIP", "address": "10.0.1.1"}]}}));
        let (svc, slice) = probe_service("late", LATE_IP, 1);
        items.push(svc);
        let mut f = Feed::File { dir, items, extra: BTreeMap::new() };
        f.put_file(slice);
        f
    }
    fn dir(&self) -> Option<&Path> {
        match self {
            Feed::Api => None,
            Feed::File { dir, .. } => Some(dir),
        }
    }
    /// Creates or replaces an object (by kind and name).
    fn put(&mut self, c: &Cluster, obj: Value, create: bool) {
        match self {
            Feed::Api if create => {
                c.cp.create(&obj);
            }
            Feed::Api => {
                c.cp.replace(&obj);
            }
            Feed::File { .. } => self.put_file(obj),
        }
    }
    fn put_file(&mut self, obj: Value) {
        let Feed::File { dir, items, extra } = self else { return };
        extra.insert(format!("{}/{}", obj["kind"], obj["metadata"]["name"]), obj);
        let list = json!({"apiVersion": "v1", "kind": "List",
            "items": items.iter().chain(extra.values()).collect::<Vec<_>>()});
        let tmp = dir.with_extension("tmp");
        std::fs::write(&tmp, serde_json::to_vec(&list).unwrap()).unwrap();
        std::fs::rename(&tmp, dir.join("cluster.json")).unwrap();
    }
}

/// A running proxy process, killed on drop, with an RSS sampler over its process tree.
struct Running {
    child: Child,
    stop: Arc<AtomicBool>,
    peak_tree_kb: Arc<AtomicU64>,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// utime + stime + cutime + cstime of a process, in seconds (children once reaped).
pub fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit_once(") ").map(|(_, r)| r).unwrap_or("");
    let f: Vec<f64> = after.split_whitespace().map(|x| x.parse().unwrap_or(0.0)).collect();
    // Fields 14–17 of stat are utime, stime, cutime, cstime; `after` starts at field 3.
    let ticks: f64 = f.get(11..15).map(|s| s.iter().sum()).unwrap_or(0.0);
    ticks / 100.0
}

fn start(p: Proxy, lab: &Lab, kubeconfig: &Path, ours_bin: &Path, log: &Path, feed: &Feed) -> Running {
    let file = std::fs::File::create(log).unwrap();
    let mut cmd = match p {
        Proxy::OursStandalone => {
            let mut c = lab.node.command(ours_bin.to_str().unwrap());
            c.args(["run", "--proxy-mode", "nftables", "--hostname-override", NODE, "--cluster-cidr", "10.244.0.0/16"])
                .arg("--from")
                .arg(feed.dir().expect("a manifest directory"))
                .args(["--min-sync-period", "0s", "--conntrack-max-per-core", "0"])
                .args(["--metrics-bind-address", "127.0.0.1:10249", "--healthz-bind-address", "127.0.0.1:10256"]);
            c
        }
        Proxy::OursNftables | Proxy::OursIptables => {
            let mut c = lab.node.command(ours_bin.to_str().unwrap());
            let mode = if p == Proxy::OursNftables { "nftables" } else { "iptables" };
            c.args(["run", "--proxy-mode", mode, "--hostname-override", NODE, "--cluster-cidr", "10.244.0.0/16"])
                .arg("--kubeconfig")
                .arg(kubeconfig)
                .args(["--min-sync-period", "0s", "--conntrack-max-per-core", "0"])
                .args(["--metrics-bind-address", "127.0.0.1:10249", "--healthz-bind-address", "127.0.0.1:10256"]);
            c
        }
        Proxy::KubeProxyNftables | Proxy::KubeProxyIptables => {
            let mode = if p == Proxy::KubeProxyNftables { Mode::Nftables } else { Mode::Iptables };
            crate::peer::command(&peers_dir(), &lab.node, kubeconfig, mode, NODE, "10.244.0.0/16")
        }
    };
    let child = cmd.stdin(Stdio::null()).stdout(file.try_clone().unwrap()).stderr(file).spawn().expect("spawn proxy");
    let (stop, peak) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicU64::new(0)));
    let (s, pk, pid) = (stop.clone(), peak.clone(), child.id());
    std::thread::spawn(move || {
        while !s.load(Ordering::Relaxed) {
            let total: u64 = descendants(pid).into_iter().map(|p| proc_status_kb(p, "VmRSS:")).sum();
            pk.fetch_max(total, Ordering::Relaxed);
            std::thread::sleep(Duration::from_millis(100));
        }
    });
    Running { child, stop, peak_tree_kb: peak }
}

/// The proxy's sync metric once it has observed a sync (None when none was by the deadline, or
/// the proxy has no such metric).
fn first_sync_done(lab: &Lab, since: Instant, limit: Duration) -> Option<(f64, f64)> {
    loop {
        match sync_metric(lab) {
            Some((s, n)) if n >= 1.0 => return Some((s, n)),
            _ if since.elapsed() >= limit => return None,
            _ => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}

/// The proxy's own sync metric: (sum of seconds, count).
fn sync_metric(lab: &Lab) -> Option<(f64, f64)> {
    let out =
        lab.node.command("curl").args(["-s", "--max-time", "3", "http://127.0.0.1:10249/metrics"]).output().ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    // One family's series when the metric has them (ours observes each sync for both).
    let v4_only = text.contains("kubeproxy_sync_proxy_rules_duration_seconds_sum{ip_family=\"IPv4\"}");
    let get = |suffix: &str| {
        text.lines()
            .filter(|l| l.starts_with(&format!("kubeproxy_sync_proxy_rules_duration_seconds_{suffix}")))
            .filter(|l| !v4_only || l.contains("ip_family=\"IPv4\""))
            .filter_map(|l| l.split_whitespace().last().and_then(|v| v.parse::<f64>().ok()))
            .fold(None, |acc: Option<f64>, v| Some(acc.unwrap_or(0.0) + v))
    };
    Some((get("sum")?, get("count")?))
}

/// How long one probe waits for its answer while a proxy starts.
const COLD_ATTEMPT: Duration = Duration::from_millis(200);
/// ... and after a change. Traffic to a ClusterIP the proxy does not know yet is dropped (as
/// kube-proxy drops traffic to unallocated ClusterIPs), so a probe sent just before the rule
/// lands waits out its whole timeout: with 200 ms, one +1 Service at 50k × 3 measured 205.6 ms
/// where the proxy's own sync took 0.2 ms. An answer in these namespaces takes well under 1 ms;
/// one that misses the 5 ms is simply probed again.
const CHANGE_ATTEMPT: Duration = Duration::from_millis(5);

/// The pause after a probe answered wrongly (refused, unreachable) before the next: a tenth of
/// the time measured so far, at most 2 ms. A fixed 2 ms made the figure of a change that lands
/// in ~1 ms either ~0.5 ms (the first probe answered) or ~2.7 ms (one refusal, by the Service
/// before its EndpointSlice had arrived, then the pause): make bench of 83a3887 measured our
/// +1 Service at 10k × 3 as 0.6, 2.7 and 3.0 ms while its own syncs took 0.2 ms. The cap keeps a
/// proxy that takes seconds from being probed thousands of times a second.
fn retry_pause(elapsed: Duration) -> Duration {
    (elapsed / 10).min(Duration::from_millis(2))
}

/// Polls `to` from the lab's client until `ok` holds for `streak` answers in a row; the time
/// from `since`, or None after `limit`.
fn until(
    lab: &Lab,
    to: &str,
    since: Instant,
    limit: Duration,
    streak: usize,
    attempt: Duration,
    ok: impl Fn(&Outcome) -> bool + Sync,
) -> Option<Duration> {
    let to = to.parse().unwrap();
    let mut first_ok: Option<Duration> = None;
    let mut n = 0;
    lab.client.run(|| {
        while since.elapsed() < limit {
            let o = request(Proto::Tcp, to, None, attempt);
            if ok(&o) {
                first_ok.get_or_insert(since.elapsed());
                n += 1;
                if n >= streak {
                    return first_ok;
                }
            } else {
                first_ok = None;
                n = 0;
                if !matches!(o, Outcome::Timeout) {
                    // (a timeout has waited already)
                    std::thread::sleep(retry_pause(since.elapsed()));
                }
            }
        }
        None
    })
}

fn answered_by(who: &'static str) -> impl Fn(&Outcome) -> bool + Sync {
    move |o| matches!(o, Outcome::Answered { responder, .. } if responder == who)
}

/// Runs one proxy against the loaded cluster: cold start, `samples` × (+1 Service), `samples` ×
/// endpoint replaced. Leaves the cluster as it found it.
pub fn measure(c: &mut Cluster, p: Proxy, ours_bin: &Path, deadline: Duration, samples: usize, logs: &Path) -> Figures {
    let lab = Lab::new(2);
    let ip = c.cp.connect(&c.topo, &lab.node, c.links);
    c.links += 1;
    let kubeconfig = c.cp.kubeconfig(&ip, 6443, ADMIN_TOKEN, &format!("bench{}", c.links));
    let mut feed = if p == Proxy::OursStandalone { Feed::file(c, logs) } else { Feed::Api };
    let log: PathBuf = logs.join(format!("{:?}-{}x{}.log", p, c.n, c.e));
    let mut f = Figures::default();
    // The previous proxy's namespaces (1.1 M elements at 50k × 10) are freed by the kernel in the
    // background, and the API server may still be busy with the objects just written: a proxy
    // started beside that measured both. make bench of be56467, without this wait: our daemon's
    // first sync at 50k × 10 took 2.91 s fed by the API server (just after 50k EndpointSlices
    // were replaced) and 3.10 s standalone (just after the API-fed run's namespace was deleted),
    // where the same standalone sync on a quiet machine took 1.97-2.15 s.
    crate::bench::settle(Duration::from_secs(60));
    let t0 = Instant::now();
    let running = start(p, &lab, &kubeconfig, ours_bin, &log, &feed);
    f.cold_start = until(&lab, &format!("{LATE_IP}:80"), t0, deadline, 3, COLD_ATTEMPT, answered_by("ep1"));
    if f.cold_start.is_none() {
        f.note = format!("> {} s (stopped)", deadline.as_secs());
        finish(&mut f, &running);
        return f;
    }
    // The late Service can answer before the proxy's first sync has ended: in a long cold sync
    // (ours at 50k, split into transactions of at most 40 ms) its rule may land in an early
    // transaction. Changes are measured once that sync is over, as everywhere else: before this
    // wait, a +1 Service created during our 50k × 3 cold sync measured 184 ms (its sync ran when
    // the cold one ended), and neither proxy's own sync time could be read at 50k (no sync
    // observed yet: the metric has no series).
    let before = first_sync_done(&lab, t0, deadline);
    f.cold_reported = before.map(|(s, _)| s);
    for k in 0..samples {
        let name = format!("plus{k}");
        let ip = probe_ip(k);
        let (svc, slice) = probe_service(&name, &ip, 2);
        feed.put(c, svc, true);
        feed.put(c, slice, true);
        let t = Instant::now();
        match until(&lab, &format!("{ip}:80"), t, deadline, 1, CHANGE_ATTEMPT, answered_by("ep2")) {
            Some(d) => f.plus_one.push(d),
            None => f.note = format!("+1 Service > {} s", deadline.as_secs()),
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    if let (Some((s0, n0)), Some((s1, n1))) = (before, sync_metric(&lab))
        && n1 > n0
    {
        f.plus_one_reported = Some((s1 - s0) / (n1 - n0));
    }
    for k in 0..samples {
        // The late Service's endpoint moves between the two pods.
        let to = if k % 2 == 0 { 2 } else { 1 };
        feed.put(c, probe_slice("late", to), false);
        let t = Instant::now();
        let who = if to == 1 { "ep1" } else { "ep2" };
        match until(&lab, &format!("{LATE_IP}:80"), t, deadline, 3, CHANGE_ATTEMPT, answered_by(who)) {
            Some(d) => f.churn.push(d),
            None => f.note = format!("endpoint change > {} s", deadline.as_secs()),
        }
    }
    std::thread::sleep(Duration::from_secs(1));
    finish(&mut f, &running);
    if let Feed::File { dir, .. } = &feed {
        let _ = std::fs::remove_dir_all(dir);
        return f;
    }
    // Put the cluster back: no extra Services, the late one on ep1.
    for k in 0..samples {
        let (svc, slice) = probe_service(&format!("plus{k}"), &probe_ip(k), 2);
        c.cp.delete(&slice);
        c.cp.delete(&svc);
    }
    c.cp.replace(&probe_slice("late", 1));
    f
}

fn finish(f: &mut Figures, r: &Running) {
    let pid = r.child.id();
    f.cpu_seconds = descendants(pid).into_iter().map(cpu_seconds).sum();
    f.peak_rss_mib = proc_status_kb(pid, "VmHWM:") as f64 / 1024.0;
    f.steady_rss_mib = proc_status_kb(pid, "VmRSS:") as f64 / 1024.0;
    let tree = descendants(pid).into_iter().map(|p| proc_status_kb(p, "VmRSS:")).sum::<u64>();
    r.peak_tree_kb.fetch_max(tree, Ordering::Relaxed);
    f.peak_tree_rss_mib = r.peak_tree_kb.load(Ordering::Relaxed) as f64 / 1024.0;
}

/// The ClusterIP of the `k`-th +1 Service: in the API server's service range
/// (`control_plane::SERVICE_CIDR`, 10.96.0.0/16), above the loaded Services' (from 10.96.1.0 up:
/// 10.96.196.80 at 50k) and below the late Service's 10.96.255.250: up to 1,250 samples.
fn probe_ip(k: usize) -> String {
    assert!(k < 1250, "at most 1,250 +1 Service samples");
    format!("10.96.{}.{}", 250 + k / 250, k % 250 + 1)
}

/// The median of a sample, for tables.
pub fn median(v: &[Duration]) -> Option<Duration> {
    let mut v = v.to_vec();
    v.sort();
    v.get(v.len() / 2).copied()
}

/// The `p`-th percentile of a sample (nearest rank).
pub fn percentile(v: &[Duration], p: usize) -> Option<Duration> {
    let mut v = v.to_vec();
    v.sort();
    let rank = (v.len() * p).div_ceil(100).max(1);
    v.get(rank - 1).copied()
}

/// Every proxy at every size, as a markdown table.
/// `sizes`: every proxy; `ours_sizes`: our daemon only (fed by the API server and standalone),
/// for the memory table at sizes where kube-proxy would take an hour; `standalone_sizes`: our
/// standalone daemon only, no objects in the API server.
pub fn run(
    sizes: &[(usize, usize)],
    ours_sizes: &[(usize, usize)],
    standalone_sizes: &[(usize, usize)],
    ours_bin: &Path,
    deadline: Duration,
    samples: usize,
    out: &Path,
) -> String {
    use std::fmt::Write as _;
    let mut results: BTreeMap<(usize, usize, Proxy), Figures> = BTreeMap::new();
    let mut load_times = Vec::new();
    let runs = sizes
        .iter()
        .map(|s| (s, &Proxy::ALL[..]))
        .chain(ours_sizes.iter().map(|s| (s, &Proxy::OURS[..])))
        .chain(standalone_sizes.iter().map(|s| (s, &[Proxy::OursStandalone][..])));
    // The last cluster loaded through the API, kept while the next size has as many Services
    // (dropped, with its API server, before another one starts).
    let mut kept: Option<Cluster> = None;
    for (&(n, e), proxies) in runs {
        let standalone = proxies == [Proxy::OursStandalone];
        let mut c = match kept.take().filter(|c| c.n == n && !standalone) {
            Some(mut c) => {
                let was = c.e;
                let took = c.regrow(e);
                load_times.push(format!(
                    "{n} × {e}: the {n} EndpointSlices of {n} × {was} replaced in {:.1} s",
                    took.as_secs_f64()
                ));
                eprintln!("head to head {n} × {e}: slices of {n} × {was} replaced in {took:.1?}");
                c
            }
            None if standalone => Cluster::empty(n, e),
            None => {
                let c = Cluster::load(n, e);
                load_times.push(format!("{n} × {e}: {} objects in {:.1} s", 2 * n + 2, c.load_time.as_secs_f64()));
                eprintln!("head to head {n} × {e}: objects loaded in {:.1?}", c.load_time);
                c
            }
        };
        for &p in proxies {
            let f = measure(&mut c, p, ours_bin, deadline, samples, out);
            eprintln!("head to head {n} × {e} {}: {f:?}", p.label());
            results.insert((n, e, p), f);
        }
        if !standalone {
            kept = Some(c);
        }
    }
    let ms = |d: Option<Duration>| d.map_or("–".to_string(), |d| format!("{:.1} ms", d.as_secs_f64() * 1000.0));
    let s = |d: Option<Duration>| d.map_or("–".to_string(), |d| format!("{:.2} s", d.as_secs_f64()));
    let mut md = String::new();
    let _ = writeln!(
        md,
        "### Head to head with the real kube-proxy (same kube-apiserver and objects, one proxy at a time, medians of {samples} sample(s))\n"
    );
    let _ = writeln!(
        md,
        "| services × endpoints | proxy | cold start (process start → late Service answers) | its own sync time until then | +1 Service (API → traffic) | +1 Service, its own sync | endpoint replaced (API → traffic) | CPU s | peak RSS | peak RSS with children |"
    );
    let _ = writeln!(md, "|---|---|---|---|---|---|---|---|---|---|");
    for ((n, e, p), f) in
        results.iter().filter(|((n, e, p), _)| *p != Proxy::OursStandalone && sizes.contains(&(*n, *e)))
    {
        let cold = if f.cold_start.is_none() { f.note.clone() } else { s(f.cold_start) };
        let _ = writeln!(
            md,
            "| {n} × {e} | {} | {cold} | {} | {} | {} | {} | {:.2} | {:.0} MiB | {:.0} MiB |",
            p.label(),
            f.cold_reported.map_or("–".into(), |x| format!("{x:.2} s")),
            ms(median(&f.plus_one)),
            f.plus_one_reported.map_or("–".into(), |x| format!("{:.1} ms", x * 1000.0)),
            ms(median(&f.churn)),
            f.cpu_seconds,
            f.peak_rss_mib,
            f.peak_tree_rss_mib
        );
    }
    let _ = writeln!(md, "\nObjects created through the API (kube-rs, 64 in flight): {}.", load_times.join("; "));
    let _ = writeln!(
        md,
        "\n### Memory of the proxy process over its whole life (cold start, {samples} × +1 Service, {samples} × endpoint replaced)\n"
    );
    let _ = writeln!(
        md,
        "| services × endpoints | proxy | peak RSS | steady RSS (1 s after the last change) | peak RSS with children | cold start | +1 Service (change → traffic), median / p99 |"
    );
    let _ = writeln!(md, "|---|---|---|---|---|---|---|");
    let mut rows: Vec<_> = results.iter().collect();
    rows.sort_by_key(|((n, e, p), _)| (*n, *e, *p));
    for ((n, e, p), f) in rows {
        let cold = if f.cold_start.is_none() { f.note.clone() } else { s(f.cold_start) };
        let _ = writeln!(
            md,
            "| {n} × {e} | {} | {:.0} MiB | {:.0} MiB | {:.0} MiB | {cold} | {} |",
            p.label(),
            f.peak_rss_mib,
            f.steady_rss_mib,
            f.peak_tree_rss_mib,
            format!("{} / {}", ms(median(&f.plus_one)), ms(percentile(&f.plus_one, 99))),
        );
    }
    let _ = writeln!(
        md,
        "\nStandalone: the same objects in one JSON `kind: List` file, each change written whole and renamed into place; the daemon polls the file every second, which bounds its +1 Service figure."
    );
    md
}

#[cfg(test)]
mod percentile_tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let v: Vec<Duration> = (1..=100).rev().map(Duration::from_millis).collect();
        assert_eq!(percentile(&v, 99), Some(Duration::from_millis(99)));
        assert_eq!(percentile(&v, 50), Some(Duration::from_millis(50)));
        assert_eq!(percentile(&v[..3], 99), Some(Duration::from_millis(100)), "few samples: the largest");
        assert_eq!(percentile(&[], 99), None);
        assert_ne!(probe_ip(0), probe_ip(250));
        assert_eq!(probe_ip(250), "10.96.251.1");
        assert_eq!(probe_ip(1249), "10.96.254.250", "below the late Service's 10.96.255.250");
    }

    #[test]
    fn the_retry_pause_is_a_tenth_of_the_time_so_far_up_to_2_ms() {
        assert_eq!(retry_pause(Duration::ZERO), Duration::ZERO);
        assert_eq!(retry_pause(Duration::from_micros(500)), Duration::from_micros(50));
        assert_eq!(retry_pause(Duration::from_millis(20)), Duration::from_millis(2));
        assert_eq!(retry_pause(Duration::from_secs(14)), Duration::from_millis(2));
    }
}
