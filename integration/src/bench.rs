//! Shared pieces of the benchmarks: synthetic clusters, kube-proxy's nftables ruleset shape as
//! `nft` commands, bounded child processes, and statistics.

use std::fmt::Write;
use std::net::{IpAddr, Ipv4Addr};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nftproxy_model::*;

fn ip(base: [u8; 2], k: u32) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(base[0], base[1].wrapping_add((k >> 16) as u8), (k >> 8) as u8, k as u8))
}

/// The ClusterIP of synthetic service `i` (10.96.0.0/12 and up).
pub fn cluster_ip(i: u32) -> IpAddr {
    ip([10, 96], i)
}

/// N ClusterIP services (TCP 80 → 8080) with E ready endpoints each, every address distinct.
pub fn synthetic(n: u32, e: u32) -> ClusterState {
    let mut st = ClusterState::default();
    for i in 0..n {
        add_service(&mut st, i, e, 0);
    }
    st
}

/// Adds (or replaces) synthetic service `i`; `shift` moves its endpoint addresses.
pub fn add_service(st: &mut ClusterState, i: u32, e: u32, shift: u32) {
    let name = ServiceName::new("bench", format!("svc-{i}"));
    st.upsert_service(Service {
        name: name.clone(),
        service_type: ServiceType::ClusterIP,
        cluster_ips: vec![cluster_ip(i)],
        ports: vec![ServicePort {
            name: "http".into(),
            protocol: Protocol::Tcp,
            port: 80,
            node_port: None,
            target_port: TargetPort::Number(8080),
        }],
        external_ips: vec![],
        load_balancer_ips: vec![],
        load_balancer_source_ranges: vec![],
        external_traffic_policy: TrafficPolicy::Cluster,
        internal_traffic_policy: TrafficPolicy::Cluster,
        health_check_node_port: None,
        session_affinity_timeout: None,
        traffic_distribution: None,
    });
    let endpoints = (0..e)
        .map(|j| Endpoint {
            address: ip([10, 128], i * e + j + shift),
            ready: true,
            serving: true,
            terminating: false,
            node_name: Some("node-b".into()),
            zone: None,
            zone_hints: Default::default(),
            node_hints: Default::default(),
        })
        .collect();
    st.upsert_slice(EndpointSlice {
        namespace: "bench".into(),
        name: format!("svc-{i}-1").into(),
        service: name,
        address_type: AddressType::IPv4,
        endpoints,
        ports: vec![EndpointPort { name: "http".into(), protocol: Protocol::Tcp, port: 8080 }],
        trigger_time: None,
    });
}

/// Removes synthetic service `i`.
pub fn remove_service(st: &mut ClusterState, i: u32) {
    st.remove_service(&ServiceName::new("bench", format!("svc-{i}")));
    st.remove_slice("bench", &format!("svc-{i}-1"));
}

/// kube-proxy's nftables ruleset *shape* for ClusterIP services, as the `nft` commands knftables
/// sends: a chain per service holding `numgen random mod N vmap { … }` (an anonymous set each) and
/// a chain per endpoint. Not kube-proxy's full ruleset: the per-service cost it pays is the point.
pub struct KubeProxyShape;

impl KubeProxyShape {
    const T: &'static str = "ip kube-proxy";

    pub fn base() -> String {
        let t = Self::T;
        format!(
            "add table {t}\n\
             add map {t} service-ips {{ type ipv4_addr . inet_proto . inet_service : verdict ; }}\n\
             add chain {t} mark-for-masquerade\n\
             add rule {t} mark-for-masquerade mark set mark or 0x4000\n\
             add chain {t} services\n\
             add rule {t} services ip daddr . meta l4proto . th dport vmap @service-ips\n\
             add chain {t} nat-prerouting {{ type nat hook prerouting priority dstnat ; }}\n\
             add rule {t} nat-prerouting jump services\n"
        )
    }

    fn names(p: &ResolvedServicePort) -> (String, Vec<(String, &ResolvedEndpoint)>) {
        let s = &p.name.service;
        let base = format!("{}/{}/tcp/{}", s.namespace, s.name, p.name.port);
        let svc = format!("service-{}", short_hash(&base));
        let eps = p
            .internal
            .endpoints()
            .iter()
            .map(|e| (format!("endpoint-{}", short_hash(&format!("{base}__{}/{}", e.ip, e.port))), e))
            .collect();
        (svc, eps)
    }

    /// The commands that add (or rewrite) one service port.
    pub fn service(out: &mut String, p: &ResolvedServicePort) {
        let t = Self::T;
        let (svc, eps) = Self::names(p);
        if eps.is_empty() {
            return;
        }
        for (ep, e) in &eps {
            let _ = write!(
                out,
                "add chain {t} {ep}\nflush chain {t} {ep}\nadd rule {t} {ep} ip saddr {ip} jump mark-for-masquerade\nadd rule {t} {ep} meta l4proto tcp dnat to {ip}:{port}\n",
                ip = e.ip,
                port = e.port
            );
        }
        let vmap: Vec<String> = eps.iter().enumerate().map(|(i, (ep, _))| format!("{i} : goto {ep}")).collect();
        let _ = write!(
            out,
            "add chain {t} {svc}\nflush chain {t} {svc}\nadd rule {t} {svc} ip daddr {cip} tcp dport {port} ip saddr != 10.128.0.0/9 jump mark-for-masquerade\nadd rule {t} {svc} numgen random mod {n} vmap {{ {vmap} }}\nadd element {t} service-ips {{ {cip} . tcp . {port} : goto {svc} }}\n",
            cip = p.cluster_ip,
            port = p.port,
            n = eps.len(),
            vmap = vmap.join(" , ")
        );
    }

    /// The commands that remove one service port.
    pub fn remove(out: &mut String, p: &ResolvedServicePort) {
        let t = Self::T;
        let (svc, eps) = Self::names(p);
        let _ = writeln!(out, "delete element {t} service-ips {{ {} . tcp . {} }}", p.cluster_ip, p.port);
        let _ = writeln!(out, "flush chain {t} {svc}\ndelete chain {t} {svc}");
        for (ep, _) in eps {
            let _ = writeln!(out, "flush chain {t} {ep}\ndelete chain {t} {ep}");
        }
    }
}

fn short_hash(s: &str) -> String {
    nftproxy_iptables::hash16(s)[..8].to_string()
}

/// How a bounded child process ended.
pub enum Timed {
    Done(Duration),
    Failed(String),
    TimedOut(Duration),
}

/// Runs a command with `stdin` text, killed at `deadline`.
pub fn run_bounded(mut cmd: Command, stdin: Option<&str>, deadline: Duration) -> Timed {
    let start = Instant::now();
    let mut child = match cmd
        .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
    {
        Ok(c) => c,
        Err(e) => return Timed::Failed(e.to_string()),
    };
    if let Some(text) = stdin {
        use std::io::Write as _;
        let mut pipe = child.stdin.take().expect("piped");
        let text = text.to_string();
        std::thread::spawn(move || {
            let _ = pipe.write_all(text.as_bytes());
        });
    }
    loop {
        match child.try_wait() {
            Ok(Some(status)) => {
                let took = start.elapsed();
                if status.success() {
                    return Timed::Done(took);
                }
                let mut err = String::new();
                if let Some(mut e) = child.stderr.take() {
                    use std::io::Read as _;
                    let _ = e.read_to_string(&mut err);
                }
                return Timed::Failed(err.lines().take(3).collect::<Vec<_>>().join(" / "));
            }
            Ok(None) if start.elapsed() > deadline => {
                let _ = child.kill();
                let _ = child.wait();
                return Timed::TimedOut(start.elapsed());
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(5)),
            Err(e) => return Timed::Failed(e.to_string()),
        }
    }
}

/// Median, minimum and maximum.
pub fn stats(v: &[f64]) -> Option<(f64, f64, f64)> {
    if v.is_empty() {
        return None;
    }
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    Some((s[s.len() / 2], s[0], s[s.len() - 1]))
}

/// The p-th percentile (0–100) of sorted or unsorted samples.
pub fn percentile(v: &[f64], p: f64) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    if s.is_empty() {
        return f64::NAN;
    }
    let idx = ((p / 100.0) * (s.len() - 1) as f64).round() as usize;
    s[idx.min(s.len() - 1)]
}

/// Busy and total jiffies of all CPUs, from the first line of `/proc/stat` (`cpu user nice
/// system idle iowait irq softirq steal …`); idle and iowait are not busy.
pub fn cpu_jiffies(proc_stat: &str) -> Option<(u64, u64)> {
    let line = proc_stat.lines().next()?.strip_prefix("cpu ")?;
    let v: Vec<u64> = line.split_whitespace().take(8).map(|x| x.parse().ok()).collect::<Option<_>>()?;
    let total: u64 = v.iter().sum();
    let idle = v.get(3)? + v.get(4)?;
    Some((total - idle, total))
}

/// The busy share of the machine's CPUs between two `cpu_jiffies` readings (0.0–1.0).
pub fn busy_share(before: (u64, u64), after: (u64, u64)) -> f64 {
    let total = after.1.saturating_sub(before.1);
    if total == 0 { 0.0 } else { after.0.saturating_sub(before.0) as f64 / total as f64 }
}

/// A machine is quiet when less than this share of its CPUs is busy over a `SETTLE_STEP`.
pub const QUIET_SHARE: f64 = 0.15;
const SETTLE_STEP: Duration = Duration::from_millis(250);

/// Waits (at most `limit`) until the machine has been quiet for two steps in a row, says how
/// long that took on stderr (the bench's progress log). Why: a namespace
/// deleted with a big ruleset in it is freed by the kernel in the background (its netns cleanup
/// work), for seconds at 1 M elements, and a measurement started meanwhile shares the 2 CPUs
/// with it. The bench's control plane measured its 50k × 10 cold sync at 2.35 s (longest
/// transaction 65 ms) right after such a teardown, where the same sync alone took 1.6–2.0 s
/// (12–28 ms); the data plane's p50 moved with it.
pub fn settle(limit: Duration) {
    let read = || std::fs::read_to_string("/proc/stat").ok().as_deref().and_then(cpu_jiffies);
    let start = Instant::now();
    let mut quiet_steps = 0;
    let Some(mut last) = read() else { return };
    while quiet_steps < 2 && start.elapsed() < limit {
        std::thread::sleep(SETTLE_STEP);
        let Some(now) = read() else { break };
        quiet_steps = if busy_share(last, now) < QUIET_SHARE { quiet_steps + 1 } else { 0 };
        last = now;
    }
    eprintln!("  machine settled in {:.1} s", start.elapsed().as_secs_f64());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_jiffies_count_idle_and_iowait_as_not_busy() {
        let stat = "cpu  100 5 50 800 20 3 2 0 0 0\ncpu0 50 2 25 400 10 1 1 0 0 0\n";
        assert_eq!(cpu_jiffies(stat), Some((160, 980)));
        assert_eq!(cpu_jiffies("intr 1 2 3\n"), None);
        assert_eq!(cpu_jiffies(""), None);
    }

    #[test]
    fn busy_share_is_the_busy_part_of_the_jiffies_between_two_readings() {
        assert_eq!(busy_share((160, 980), (260, 1180)), 0.5);
        assert_eq!(busy_share((160, 980), (160, 980)), 0.0);
        assert!(busy_share((160, 980), (170, 1180)) < QUIET_SHARE);
    }
}
