//! The real kube-proxy as the judge: one kube-apiserver, and twin node namespaces with identical
//! addresses, pods and routes — kube-proxy v1.34.4 in one, `kube-nftproxy run` in the other,
//! both watching the same Services, EndpointSlices, Node and ServiceCIDRs. Seeded random
//! clusters (see `nftproxy_integration::difftest`), then every flow from the off-cluster client,
//! a pod, the node itself and an endpoint's own pod to every frontend, through both proxies:
//! kube-proxy nftables vs our nftables, kube-proxy iptables vs our iptables. The answers
//! (endpoints that answered, sources they saw, refused / dropped) must be equal, except where
//! `INTENDED_DIFFERENCES` says otherwise. A difference prints the seed, the Service's objects,
//! the flow and both answers.
//!
//! `make test` runs one seed of a small cluster; `make difftest` runs `KNP_DIFFTEST_SEEDS`
//! (default 1-20) of `KNP_DIFFTEST_SERVICES` (default 150) Services.

use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use nftproxy_integration::control_plane::{ADMIN_TOKEN, ControlPlane, peers_dir};
use nftproxy_integration::difftest::{
    self, DiffCluster, INTENDED_DIFFERENCES, SENTINEL_IP, Seen, equivalent, merge, observe_all, reproducer,
};
use nftproxy_integration::lab::{Lab, NODE};
use nftproxy_integration::peer::{self, KubeProxy, Mode};
use nftproxy_integration::{Ns, Outcome, Proto, Topology, request};

const PODS: usize = 4;
const CLUSTER_CIDRS: &str = "10.244.0.0/16,fd00:244::/48";

/// `kube-nftproxy run`, killed on drop.
struct Ours(Child);

impl Drop for Ours {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_ours(node: &Ns, kubeconfig: &std::path::Path, mode: Mode, log: std::path::PathBuf) -> Ours {
    let file = std::fs::File::create(log).unwrap();
    let child = node
        .command(env!("CARGO_BIN_EXE_kube-nftproxy"))
        .arg("run")
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args(["--proxy-mode", mode.flag(), "--hostname-override", NODE, "--cluster-cidr", CLUSTER_CIDRS])
        .args(["--min-sync-period", "0s", "--conntrack-max-per-core", "0"])
        .args(["--metrics-bind-address", "127.0.0.1:10249", "--healthz-bind-address", "127.0.0.1:10256"])
        // KNP_DIFFTEST_OURS_EXTRA: extra flags for our proxy only, to check that the suite sees a
        // difference when there is one (e.g. --masquerade-all).
        .args(std::env::var("KNP_DIFFTEST_OURS_EXTRA").map(|v| v.split_whitespace().map(String::from).collect()).unwrap_or_else(|_| Vec::<String>::new()))
        .stdin(Stdio::null())
        .stdout(file.try_clone().unwrap())
        .stderr(file)
        .spawn()
        .expect("spawn kube-nftproxy run");
    Ours(child)
}

fn seeds() -> Vec<u64> {
    let spec = std::env::var("KNP_DIFFTEST_SEEDS").unwrap_or_else(|_| "1".into());
    spec.split(',')
        .flat_map(|part| match part.split_once('-') {
            Some((a, b)) => (a.trim().parse::<u64>().unwrap()..=b.trim().parse::<u64>().unwrap()).collect::<Vec<_>>(),
            None => vec![part.trim().parse().unwrap()],
        })
        .collect()
}

fn services() -> usize {
    std::env::var("KNP_DIFFTEST_SERVICES").ok().and_then(|s| s.parse().ok()).unwrap_or(30)
}

/// Waits until the sentinel Service (created last) answers in `lab`.
fn wait_programmed(lab: &Lab, what: &str, limit: Duration) -> Duration {
    let start = Instant::now();
    while start.elapsed() < limit {
        let o = lab.client.run(|| {
            request(Proto::Tcp, format!("{SENTINEL_IP}:80").parse().unwrap(), None, Duration::from_millis(300))
        });
        if matches!(o, Outcome::Answered { .. }) {
            return start.elapsed();
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("{what}: the sentinel Service never answered within {limit:?}");
}

fn create_all(cp: &ControlPlane, c: &DiffCluster) {
    for obj in c.objects() {
        if obj["kind"] == "Service" && obj.get("status").is_some() {
            cp.update_status(&obj);
        } else {
            cp.create(&obj);
        }
    }
}

fn delete_all(cp: &ControlPlane, c: &DiffCluster) {
    for obj in c.objects().iter().filter(|o| o.get("status").is_none()) {
        cp.delete(obj);
    }
}

/// Every flow's answer in `lab`: twenty-four flows at a time, except ClientIP-affinity flows, which go
/// one at a time afterwards. Affinity state is per Service port and client address, shared by all
/// frontends of the port: two frontends probed at once from one client can both pick before
/// either has recorded the client, and see two endpoints — a race of the probe, not of the proxy
/// (the 20-seed run found one in kube-proxy's iptables mode, seed 8).
fn observe(lab: &Lab, flows: &[difftest::FlowSpec]) -> Vec<Seen> {
    let (pinned, free): (Vec<usize>, Vec<usize>) = (0..flows.len()).partition(|&i| flows[i].pinned);
    let pick = |idx: &[usize]| idx.iter().map(|&i| flows[i].clone()).collect::<Vec<_>>();
    let mut out: Vec<Option<Seen>> = vec![None; flows.len()];
    for (idx, seen) in [(&free, observe_all(lab, &pick(&free), 12, 24)), (&pinned, observe_all(lab, &pick(&pinned), 12, 1))] {
        for (&i, s) in idx.iter().zip(seen) {
            out[i] = Some(s);
        }
    }
    out.into_iter().map(|s| s.expect("observed")).collect()
}

/// One seed, one mode: twin labs, both proxies, every flow. Returns (flows compared,
/// differences as reproducers).
fn compare(cp: &ControlPlane, topo: &Topology, c: &DiffCluster, mode: Mode, link: &mut u8) -> (usize, Vec<String>) {
    let peers = peers_dir();
    let ours_lab = Lab::new(PODS);
    let theirs_lab = Lab::new(PODS);
    let ip_ours = cp.connect(topo, &ours_lab.node, *link);
    let ip_theirs = cp.connect(topo, &theirs_lab.node, *link + 1);
    *link += 2;
    let kc_ours = cp.kubeconfig(&ip_ours, 6443, ADMIN_TOKEN, "ours");
    let kc_theirs = cp.kubeconfig(&ip_theirs, 6443, ADMIN_TOKEN, "theirs");
    let _ours = start_ours(&ours_lab.node, &kc_ours, mode, cp.dir.join(format!("ours-{}-{}.log", c.seed, mode.flag())));
    let mut cmd = peer::command(&peers, &theirs_lab.node, &kc_theirs, mode, NODE, CLUSTER_CIDRS);
    cmd.arg("--v=2");
    let log = cp.dir.join(format!("kube-proxy-{}-{}.log", c.seed, mode.flag()));
    let mut theirs = KubeProxy::start(cmd, &theirs_lab.node, log);
    let t_ours = wait_programmed(&ours_lab, "kube-nftproxy", Duration::from_secs(60));
    let t_theirs = wait_programmed(&theirs_lab, "kube-proxy", Duration::from_secs(120));
    theirs.assert_running();
    let flows = difftest::flows(c);
    let (ours, theirs_seen) = (observe(&ours_lab, &flows), observe(&theirs_lab, &flows));
    let kinds = |seen: &[Seen]| {
        let mut k = std::collections::BTreeMap::new();
        for s in seen {
            let name = match s {
                Seen::Answered { .. } => "answered",
                Seen::Pinned { .. } => "pinned",
                Seen::Refused => "refused",
                Seen::Dropped => "dropped",
                Seen::Mixed(_) => "mixed",
            };
            *k.entry(name).or_insert(0) += 1;
        }
        k
    };
    eprintln!("kube-proxy {}: {:?}; kube-nftproxy: {:?}", mode.flag(), kinds(&theirs_seen), kinds(&ours));
    let v6: Vec<usize> = (0..flows.len()).filter(|&i| flows[i].to.is_ipv6()).collect();
    let answered = |seen: &[Seen]| {
        v6.iter().filter(|&&i| matches!(seen[i], Seen::Answered { .. } | Seen::Pinned { .. })).count()
    };
    eprintln!(
        "IPv6 flows: {}, answered by kube-proxy {}, by kube-nftproxy {}",
        v6.len(),
        answered(&theirs_seen),
        answered(&ours)
    );
    for (i, f) in flows.iter().enumerate() {
        if let Seen::Mixed(m) = &theirs_seen[i] {
            eprintln!("mixed answers from kube-proxy {}: {} {:?} {:?}: {m:.300}", mode.flag(), f.what, f.from, f.proto);
        }
    }
    let mut differences = Vec::new();
    for (i, f) in flows.iter().enumerate() {
        let (mut a, mut b) = (theirs_seen[i].clone(), ours[i].clone());
        let one = |lab: &Lab| observe_all(lab, std::slice::from_ref(f), 48, 1).remove(0);
        if !equivalent(&a, &b) && matches!((&a, &b), (Seen::Answered { .. }, Seen::Answered { .. })) {
            // Random endpoint choice: look longer before calling it a difference.
            a = merge(&a, &one(&theirs_lab));
            b = merge(&b, &one(&ours_lab));
        }
        if !equivalent(&a, &b) && matches!((&a, &b), (Seen::Mixed(_), _) | (_, Seen::Mixed(_))) {
            // A lost reply under load (twelve flows at once): ask both again, one flow alone.
            (a, b) = (one(&theirs_lab), one(&ours_lab));
        }
        if !equivalent(&a, &b) {
            match INTENDED_DIFFERENCES.iter().find(|d| (d.applies)(f, &a, &b)) {
                Some(d) => eprintln!("intended difference {}: {} ({})", d.name, f.what, d.why),
                None => {
                    let r = reproducer(c, f, &a, &b, mode.flag());
                    eprintln!("DIFFERENCE {r}");
                    differences.push(r);
                }
            }
        }
    }
    eprintln!(
        "difftest seed {} {} mode: {} flows over {} Services; programmed after {:?} (ours) / {:?} (kube-proxy); {} difference(s)",
        c.seed,
        mode.flag(),
        flows.len(),
        c.services.len(),
        t_ours,
        t_theirs,
        differences.len()
    );
    (flows.len(), differences)
}

#[test]
fn kube_proxy_and_kube_nftproxy_answer_every_flow_alike() {
    let mut topo = Topology::new();
    let cp = ControlPlane::start_alone(&mut topo);
    cp.create(&difftest::namespace_object());
    cp.create(&difftest::node_object());
    let mut link = 1u8;
    let (mut total, mut all) = (0, Vec::new());
    for seed in seeds() {
        let c = difftest::cluster(seed, services(), PODS);
        create_all(&cp, &c);
        for mode in [Mode::Nftables, Mode::Iptables] {
            let (n, d) = compare(&cp, &topo, &c, mode, &mut link);
            total += n;
            all.extend(d);
        }
        delete_all(&cp, &c);
    }
    eprintln!("difftest: {total} flows compared, {} unexplained difference(s)", all.len());
    assert!(all.is_empty(), "{} difference(s):\n{}", all.len(), all.join("\n\n"));
}
