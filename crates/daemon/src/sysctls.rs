//! The kernel settings kube-proxy applies at start: the conntrack table size and timeouts
//! (`conntrack.*`, `--conntrack-*`) and, in iptables mode with localhost NodePorts,
//! `net.ipv4.conf.all.route_localnet`. Which values to write is a pure function
//! ([`plan`]); writing them is [`apply`], which reads each value first and writes only a
//! different one, and skips with a warning what it may not write — never silently.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::config::{ConntrackSettings, ProxyMode, Settings};

/// One setting to make.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sysctl {
    /// A path under /proc/sys, or the nf_conntrack module's hashsize parameter in /sys.
    pub path: PathBuf,
    pub value: u64,
    /// Only raise it (the hashsize: kube-proxy never shrinks the hash table).
    pub raise_only: bool,
    /// The setting's name for logs (`net.netfilter.nf_conntrack_max`, …).
    pub name: &'static str,
}

const PROC: &str = "/proc/sys";
pub const HASHSIZE: &str = "/sys/module/nf_conntrack/parameters/hashsize";

fn secs(d: Duration) -> u64 {
    d.as_secs()
}

/// kube-proxy's `getConntrackMax`: max(maxPerCore × CPUs, min), or 0 (leave it) when
/// maxPerCore is 0.
pub fn conntrack_max(c: &ConntrackSettings, cpus: usize) -> u64 {
    if c.max_per_core <= 0 {
        return 0;
    }
    let scaled = c.max_per_core as u64 * cpus as u64;
    scaled.max(c.min.max(0) as u64)
}

/// What kube-proxy writes at start for these settings on a machine with `cpus` CPUs.
pub fn plan(s: &Settings, cpus: usize) -> Vec<Sysctl> {
    let proc = |rel: &str| Path::new(PROC).join(rel);
    let c = &s.conntrack;
    let mut out = Vec::new();
    let max = conntrack_max(c, cpus);
    if max > 0 {
        out.push(Sysctl {
            path: proc("net/netfilter/nf_conntrack_max"),
            value: max,
            raise_only: false,
            name: "net.netfilter.nf_conntrack_max",
        });
        // kube-proxy's SetMax: the hash table gets max/4 buckets unless it already has as many.
        out.push(Sysctl { path: HASHSIZE.into(), value: max / 4, raise_only: true, name: "nf_conntrack hashsize" });
    }
    let timeouts = [
        (c.tcp_established_timeout, "net/netfilter/nf_conntrack_tcp_timeout_established", "net.netfilter.nf_conntrack_tcp_timeout_established"),
        (c.tcp_close_wait_timeout, "net/netfilter/nf_conntrack_tcp_timeout_close_wait", "net.netfilter.nf_conntrack_tcp_timeout_close_wait"),
        (c.udp_timeout, "net/netfilter/nf_conntrack_udp_timeout", "net.netfilter.nf_conntrack_udp_timeout"),
        (c.udp_stream_timeout, "net/netfilter/nf_conntrack_udp_timeout_stream", "net.netfilter.nf_conntrack_udp_timeout_stream"),
    ];
    for (d, rel, name) in timeouts {
        if secs(d) > 0 {
            out.push(Sysctl { path: proc(rel), value: secs(d), raise_only: false, name });
        }
    }
    if c.tcp_be_liberal {
        out.push(Sysctl {
            path: proc("net/netfilter/nf_conntrack_tcp_be_liberal"),
            value: 1,
            raise_only: false,
            name: "net.netfilter.nf_conntrack_tcp_be_liberal",
        });
    }
    if s.mode == ProxyMode::Iptables && s.effective_localhost_nodeports() {
        // Localhost NodePorts are DNATed away from 127.0.0.0/8, which the kernel only routes
        // with route_localnet (kube-proxy's iptables NewProxier sets it).
        out.push(Sysctl {
            path: proc("net/ipv4/conf/all/route_localnet"),
            value: 1,
            raise_only: false,
            name: "net.ipv4.conf.all.route_localnet",
        });
    }
    out
}

/// What [`apply`] did with one setting.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    Unchanged,
    Written { from: u64 },
    /// Not written, and why (read-only in this network namespace, not ours to change, …).
    Skipped(String),
}

/// Whether this process runs in the machine's initial network namespace. The conntrack hash
/// size is one module parameter for the whole machine: outside the initial namespace (a test's
/// node namespace, a pod without hostNetwork) it is not ours to change.
pub fn in_initial_netns() -> bool {
    use std::os::unix::fs::MetadataExt;
    match (std::fs::metadata("/proc/self/ns/net"), std::fs::metadata("/proc/1/ns/net")) {
        (Ok(a), Ok(b)) => a.ino() == b.ino() && a.dev() == b.dev(),
        _ => false,
    }
}

/// Writes one setting if it differs; never fails: what cannot be written is reported.
pub fn apply_one(s: &Sysctl, initial_netns: bool) -> Outcome {
    if s.path == Path::new(HASHSIZE) && !initial_netns {
        return Outcome::Skipped("machine-wide module parameter; not in the initial network namespace".into());
    }
    let current = match std::fs::read_to_string(&s.path) {
        Ok(t) => t.trim().parse::<u64>().ok(),
        Err(e) => return Outcome::Skipped(format!("cannot read it: {e}")),
    };
    match current {
        Some(v) if v == s.value || (s.raise_only && v >= s.value) => return Outcome::Unchanged,
        _ => {}
    }
    match std::fs::write(&s.path, s.value.to_string()) {
        Ok(()) => Outcome::Written { from: current.unwrap_or(0) },
        Err(e) => Outcome::Skipped(format!("not writable here: {e}")),
    }
}

/// Applies [`plan`] and logs every setting written or skipped.
pub fn apply_at_start(settings: &Settings) -> Vec<(Sysctl, Outcome)> {
    let cpus = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let initial = in_initial_netns();
    let mut done = Vec::new();
    for s in plan(settings, cpus) {
        let outcome = apply_one(&s, initial);
        match &outcome {
            Outcome::Unchanged => tracing::debug!(setting = s.name, value = s.value, "already set"),
            Outcome::Written { from } => tracing::info!(setting = s.name, from, to = s.value, "set"),
            Outcome::Skipped(why) => {
                tracing::warn!(setting = s.name, value = s.value, "not set: {why}")
            }
        }
        done.push((s, outcome));
    }
    done
}

#[cfg(test)]
mod tests {
    use super::*;
    use nftproxy_model::NodePortAddresses;

    #[test]
    fn kube_proxy_defaults() {
        let s = Settings::default();
        let p = plan(&s, 2);
        let names: Vec<(&str, u64)> = p.iter().map(|s| (s.name, s.value)).collect();
        assert_eq!(
            names,
            vec![
                // max(32768 × 2, 131072)
                ("net.netfilter.nf_conntrack_max", 131072),
                ("nf_conntrack hashsize", 32768),
                ("net.netfilter.nf_conntrack_tcp_timeout_established", 86400),
                ("net.netfilter.nf_conntrack_tcp_timeout_close_wait", 3600),
            ]
        );
        assert_eq!(conntrack_max(&s.conntrack, 8), 262144, "maxPerCore × CPUs when above min");
    }

    #[test]
    fn zero_leaves_the_setting_alone_and_iptables_sets_route_localnet() {
        let mut s = Settings::default();
        s.conntrack = ConntrackSettings {
            max_per_core: 0,
            tcp_established_timeout: Duration::ZERO,
            tcp_close_wait_timeout: Duration::ZERO,
            udp_timeout: Duration::from_secs(30),
            tcp_be_liberal: true,
            ..Default::default()
        };
        s.mode = ProxyMode::Iptables;
        let names: Vec<&str> = plan(&s, 2).iter().map(|s| s.name).collect();
        assert_eq!(
            names,
            [
                "net.netfilter.nf_conntrack_udp_timeout",
                "net.netfilter.nf_conntrack_tcp_be_liberal",
                "net.ipv4.conf.all.route_localnet"
            ]
        );
        // kube-proxy: NodePort addresses without IPv4 loopback turn localhost NodePorts off.
        s.nodeport_addresses = Some(NodePortAddresses::Cidrs(vec!["10.0.0.0/8".parse().unwrap()]));
        assert!(!plan(&s, 2).iter().any(|s| s.name.contains("route_localnet")));
        s.localhost_nodeports = false;
        s.nodeport_addresses = None;
        assert!(!plan(&s, 2).iter().any(|s| s.name.contains("route_localnet")));
    }

    #[test]
    fn apply_reports_what_it_cannot_write() {
        let dir = std::env::temp_dir().join(format!("knp-sysctl-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("v");
        std::fs::write(&f, "10\n").unwrap();
        let s = Sysctl { path: f.clone(), value: 20, raise_only: false, name: "x" };
        assert_eq!(apply_one(&s, true), Outcome::Written { from: 10 });
        assert_eq!(std::fs::read_to_string(&f).unwrap(), "20");
        assert_eq!(apply_one(&s, true), Outcome::Unchanged);
        let lower = Sysctl { value: 5, raise_only: true, ..s.clone() };
        assert_eq!(apply_one(&lower, true), Outcome::Unchanged, "raise-only never shrinks");
        let missing = Sysctl { path: dir.join("nope"), ..s.clone() };
        assert!(matches!(apply_one(&missing, true), Outcome::Skipped(_)));
        let hash = Sysctl { path: HASHSIZE.into(), ..s };
        assert!(matches!(apply_one(&hash, false), Outcome::Skipped(m) if m.contains("initial network namespace")));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
