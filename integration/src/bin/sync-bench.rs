//! Control-plane benchmark of the nftables backend: cold sync of N services × E endpoints,
//! adding one service, changing one endpoint, full replace, against `nft -f` of the same ruleset,
//! each in a fresh network namespace. Prints a markdown table of medians (min–max).
//!
//!     sync-bench [--services 10000] [--endpoints 3] [--runs 5]

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr};
use std::process::Command;
use std::time::{Duration, Instant};

use nftproxy_integration::Topology;
use nftproxy_model::*;
use nftproxy_nftables::NftablesBackend;

fn ip(base: [u8; 2], k: u32) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(base[0], base[1], (k >> 8) as u8, k as u8))
}

/// N ClusterIP services with E ready endpoints each, every endpoint address distinct.
pub fn synthetic(n: u32, e: u32) -> ClusterState {
    let mut st = ClusterState::default();
    for i in 0..n {
        add_service(&mut st, i, e, 0);
    }
    st
}

fn add_service(st: &mut ClusterState, i: u32, e: u32, endpoint_shift: u32) {
    let name = ServiceName::new("bench", format!("svc-{i}"));
    st.upsert_service(Service {
        name: name.clone(),
        service_type: ServiceType::ClusterIP,
        cluster_ips: vec![ip([10, 96 + (i >> 16) as u8], i & 0xffff)],
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
        .map(|j| {
            let k = i * e + j + endpoint_shift;
            Endpoint {
                address: ip([10, 128 + (k >> 16) as u8], k & 0xffff),
                ready: true,
                serving: true,
                terminating: false,
                node_name: Some("node-b".into()),
                zone: None,
                zone_hints: BTreeSet::new(),
                node_hints: BTreeSet::new(),
            }
        })
        .collect();
    st.upsert_slice(EndpointSlice {
        namespace: "bench".into(),
        name: format!("svc-{i}-1"),
        service: name,
        address_type: AddressType::IPv4,
        endpoints,
        ports: vec![EndpointPort {
            name: "http".into(),
            protocol: Protocol::Tcp,
            port: 8080,
        }],
        trigger_time: None,
    });
}

fn ctx() -> NodeContext {
    NodeContext {
        node_name: "node-a".into(),
        node_ips: vec!["10.0.1.1".parse().unwrap()],
        cluster_cidrs: vec!["10.128.0.0/9".parse().unwrap()],
        ..Default::default()
    }
}

#[derive(Default)]
struct Samples(Vec<(&'static str, Duration)>);

impl Samples {
    fn add(&mut self, what: &'static str, d: Duration) {
        self.0.push((what, d));
    }
    fn stats(&self, what: &str) -> Option<(Duration, Duration, Duration)> {
        let mut v: Vec<Duration> = self
            .0
            .iter()
            .filter(|(w, _)| *w == what)
            .map(|(_, d)| *d)
            .collect();
        if v.is_empty() {
            return None;
        }
        v.sort();
        Some((v[v.len() / 2], v[0], v[v.len() - 1]))
    }
}

fn fmt(d: Duration) -> String {
    if d < Duration::from_millis(10) {
        format!("{:.2} ms", d.as_secs_f64() * 1e3)
    } else {
        format!("{:.3} s", d.as_secs_f64())
    }
}

fn main() {
    let mut args = std::env::args().skip(1);
    let (mut n, mut e, mut runs) = (10_000u32, 3u32, 5usize);
    while let Some(a) = args.next() {
        let v = args.next().expect("flag value");
        match a.as_str() {
            "--services" => n = v.parse().unwrap(),
            "--endpoints" => e = v.parse().unwrap(),
            "--runs" => runs = v.parse().unwrap(),
            _ => panic!("unknown flag {a}"),
        }
    }
    let ctx = ctx();
    let state = synthetic(n, e);
    let mut plus_one = state.clone();
    add_service(&mut plus_one, n, e, 0);
    let mut one_changed_plus = plus_one.clone();
    add_service(&mut one_changed_plus, 0, e, n * e + 7);
    let render: String = nftproxy_nftables::desired(&state, &ctx)
        .iter()
        .map(|r| r.render())
        .collect();
    let file = std::env::temp_dir().join(format!("sync-bench-{}.nft", std::process::id()));
    std::fs::write(&file, &render).unwrap();

    if std::env::var_os("PHASES").is_some() {
        use nftproxy_nftables::{Family, fixed_table, fragments, table::Table};
        let t = Instant::now();
        let ports = resolve(&state, &ctx, IpFamily::V4);
        let t1 = t.elapsed();
        let f = fragments(Family::V4, &ports, &ctx);
        let t2 = t.elapsed();
        let table = Table::new(fixed_table(Family::V4, &ctx), f);
        let t3 = t.elapsed();
        let batches = nftproxy_nftables::plan::cold_start(&table.table, 1, 20_000);
        let t4 = t.elapsed();
        let fin: Vec<_> = batches.into_iter().map(|b| b.finish()).collect();
        let t5 = t.elapsed();
        eprintln!(
            "resolve {t1:?} fragments {:?} table {:?} plan {:?} encode {:?} ({} batches)",
            t2 - t1,
            t3 - t2,
            t4 - t3,
            t5 - t4,
            fin.len()
        );
    }
    let mut s = Samples::default();
    let mut longest = Duration::ZERO;
    let mut messages = (0, 0, 0);
    for run in 0..runs {
        eprintln!("run {}/{runs}", run + 1);
        let mut topo = Topology::new();
        let ns = topo.netns("bench");
        let mut backend = ns.run(|| NftablesBackend::new().unwrap());
        let t = Instant::now();
        let cold = backend.sync_cluster(&state, &ctx).unwrap();
        s.add("cold sync (netlink)", t.elapsed());
        longest = longest.max(cold.longest_transaction);
        // Partial syncs, as the daemon does them: only the changed Service is rebuilt.
        let new_svc = BTreeSet::from([ServiceName::new("bench", format!("svc-{n}"))]);
        let t = Instant::now();
        let add = backend.sync_services(&plus_one, &ctx, &new_svc).unwrap();
        s.add("+1 service (netlink)", t.elapsed());
        let svc0 = BTreeSet::from([ServiceName::new("bench", "svc-0")]);
        let t = Instant::now();
        let chg = backend
            .sync_services(&one_changed_plus, &ctx, &svc0)
            .unwrap();
        s.add("1 endpoint changed (netlink)", t.elapsed());
        let t = Instant::now();
        backend.sync_cluster(&one_changed_plus, &ctx).unwrap();
        s.add("full resync, nothing changed (netlink)", t.elapsed());
        backend.force_full_sync();
        let t = Instant::now();
        backend.sync_cluster(&state, &ctx).unwrap();
        s.add("full replace of the table (netlink)", t.elapsed());
        messages = (cold.messages, add.messages, chg.messages);

        let fresh = topo.netns("nft");
        let t = Instant::now();
        let ok = Command::new("ip")
            .args(["netns", "exec", &fresh.name, "nft", "-f"])
            .arg(&file)
            .status()
            .unwrap();
        s.add("cold load of the same ruleset (nft -f)", t.elapsed());
        assert!(ok.success());
        drop(topo);
        // Tearing down a large ruleset continues in the kernel after the namespace is gone.
        std::thread::sleep(Duration::from_millis(500));
    }
    let _ = std::fs::remove_file(&file);

    println!("Control plane, {n} services × {e} endpoints, {runs} runs (median, min–max):\n");
    println!("| operation | median | min – max |");
    println!("|---|---|---|");
    for what in [
        "cold sync (netlink)",
        "cold load of the same ruleset (nft -f)",
        "+1 service (netlink)",
        "1 endpoint changed (netlink)",
        "full resync, nothing changed (netlink)",
        "full replace of the table (netlink)",
    ] {
        if let Some((med, lo, hi)) = s.stats(what) {
            println!("| {what} | {} | {} – {} |", fmt(med), fmt(lo), fmt(hi));
        }
    }
    println!(
        "\nLongest single cold-start transaction: {}. Netlink messages: cold {}, +1 service {}, 1 endpoint changed {}.",
        fmt(longest),
        messages.0,
        messages.1,
        messages.2
    );
}
