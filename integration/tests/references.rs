//! A check that can never let a dangling reference reach the kernel again (the class of bug where
//! the iptables render jumped to a `KUBE-SVC-` chain it never declared, so `iptables-restore`
//! refused the whole node's rules): over seeded random clusters — every Service type, both
//! traffic policies in every combination, affinity, source ranges, endpoints none / local /
//! remote / terminating / not ready — every iptables jump target is a declared chain (or a
//! built-in target) and every nftables jump, goto, map verdict and set lookup names an object of
//! the table. Then the renders are loaded for real: `iptables-legacy-restore --test` and a
//! kernel commit of the nftables tables, in a throwaway namespace.

use std::collections::BTreeSet;
use std::io::Write;
use std::process::Stdio;

use nftproxy_integration::Topology;
use nftproxy_integration::clusters::{GEN_NODE, cluster, manifests};
use nftproxy_manifest::Loaded;
use nftproxy_model::{DetectLocalMode, IpFamily, NodeContext, NodePortAddresses};
use nftproxy_nft_wire::{Expr, Verdict};
use nftproxy_nftables::ruleset::{Ruleset, Value};

/// Seeds checked on every `make test` (fixed: a failure is reproducible by its seed).
const SEEDS: std::ops::Range<u64> = 1..41;
const SERVICES: usize = 80;

fn contexts() -> Vec<NodeContext> {
    let base = NodeContext {
        node_name: GEN_NODE.into(),
        node_ips: vec!["10.0.1.1".parse().unwrap(), "fd00:1::1".parse().unwrap()],
        cluster_cidrs: vec!["10.244.0.0/16".parse().unwrap(), "fd00:244::/48".parse().unwrap()],
        service_cidrs: vec!["10.96.0.0/16".parse().unwrap()],
        ..Default::default()
    };
    vec![
        base.clone(),
        NodeContext {
            nodeport_addresses: NodePortAddresses::All,
            detect_local: DetectLocalMode::InterfaceNamePrefix("veth".into()),
            masquerade_bit: 3,
            ..base.clone()
        },
        NodeContext { masquerade_all: true, cluster_cidrs: vec![], ..base },
    ]
}

fn load(seed: u64) -> Loaded {
    let mut l = Loaded::default();
    l.add_text(&format!("seed {seed}"), &manifests(&cluster(seed, SERVICES)));
    assert!(l.warnings.is_empty(), "seed {seed}: {:?}", l.warnings);
    l
}

const IPTABLES_TARGETS: [&str; 7] = ["ACCEPT", "DROP", "REJECT", "RETURN", "MARK", "MASQUERADE", "DNAT"];

/// Dangling references of an iptables-restore text: rules in, or jumps to, chains their table
/// does not declare.
fn iptables_dangling(text: &str) -> Vec<String> {
    let mut bad = Vec::new();
    for section in text.split('*').skip(1) {
        let table = section.lines().next().unwrap_or("");
        let declared: BTreeSet<&str> =
            section.lines().filter_map(|l| l.strip_prefix(':')).filter_map(|c| c.split_whitespace().next()).collect();
        for line in section.lines().filter(|l| l.starts_with("-A ")) {
            let words: Vec<&str> = line.split_whitespace().collect();
            if !declared.contains(words[1]) {
                bad.push(format!("{table}: chain {} not declared: {line}", words[1]));
            }
            if let Some(i) = words.iter().position(|w| *w == "-j") {
                let target = words[i + 1];
                if !IPTABLES_TARGETS.contains(&target) && !declared.contains(target) {
                    bad.push(format!("{table}: jump to undeclared {target}: {line}"));
                }
            }
        }
    }
    bad
}

/// Dangling references of an nftables table: jumps, gotos and map verdicts to chains that do not
/// exist, lookups of sets that do not exist.
fn nftables_dangling(r: &Ruleset) -> Vec<String> {
    let mut bad = Vec::new();
    let chain_ok = |v: &Verdict, what: &str, bad: &mut Vec<String>| {
        if let Verdict::Jump(c) | Verdict::Goto(c) = v
            && !r.chains.contains_key(c)
        {
            bad.push(format!("{what}: {c} does not exist"));
        }
    };
    for (name, chain) in &r.chains {
        for rule in chain.rules.iter() {
            for e in &rule.exprs {
                match e {
                    Expr::Immediate(v) => chain_ok(v, &format!("chain {name} rule {:?}", rule.text), &mut bad),
                    Expr::Lookup { set, .. } | Expr::Dynset { set, .. } if !r.sets.contains_key(set) => {
                        bad.push(format!("chain {name} rule {:?}: set {set} does not exist", rule.text))
                    }
                    _ => {}
                }
            }
        }
    }
    for (set, elems) in &r.elements {
        if !r.sets.contains_key(set) {
            bad.push(format!("elements of the missing set {set}"));
        }
        for (key, v) in elems {
            if let Value::Verdict(v) = &v.value {
                chain_ok(v, &format!("element {key:?} of {set}"), &mut bad);
            }
        }
    }
    bad
}

#[test]
fn every_reference_of_random_clusters_resolves_in_both_renders() {
    let mut checked = 0;
    for seed in SEEDS {
        let l = load(seed);
        for (c, ctx) in contexts().iter().enumerate() {
            for fam in [IpFamily::V4, IpFamily::V6] {
                let opts = nftproxy_iptables::Options::default();
                let text = nftproxy_iptables::render_cluster(fam, &l.state, ctx, &opts);
                let bad = iptables_dangling(&text);
                assert!(bad.is_empty(), "seed {seed}, context {c}, {fam}: iptables render:\n{}", bad.join("\n"));
            }
            for table in nftproxy_nftables::desired(&l.state, ctx) {
                let bad = nftables_dangling(&table);
                assert!(bad.is_empty(), "seed {seed}, context {c}: nftables:\n{}", bad.join("\n"));
            }
            checked += 1;
        }
    }
    // The checker itself finds what it is there to find.
    let broken = "*nat\n:KUBE-SERVICES - [0:0]\n-A KUBE-SERVICES -j KUBE-SVC-XYZ\nCOMMIT\n";
    assert_eq!(iptables_dangling(broken).len(), 1);
    eprintln!("references: {checked} cluster renders × 2 backends checked, {} services each", SERVICES);
}

fn restore_test(ns: &nftproxy_integration::Ns, tool: &str, text: &str) -> Result<(), String> {
    let mut child = ns
        .command(tool)
        .arg("--test")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| e.to_string())?;
    child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    if out.status.success() { Ok(()) } else { Err(String::from_utf8_lossy(&out.stderr).into_owned()) }
}

#[test]
fn random_cluster_renders_are_accepted_by_the_kernel() {
    let mut topo = Topology::new();
    let ns = topo.netns("refs");
    let mut loaded = 0;
    for seed in SEEDS.step_by(4) {
        let l = load(seed);
        for (c, ctx) in contexts().iter().enumerate() {
            for (fam, tool) in [(IpFamily::V4, "iptables-legacy-restore"), (IpFamily::V6, "ip6tables-legacy-restore")] {
                let text = nftproxy_iptables::render_cluster(fam, &l.state, ctx, &Default::default());
                if let Err(e) = restore_test(&ns, tool, &text) {
                    panic!("seed {seed}, context {c}: {tool} --test refused the render: {e}");
                }
            }
            // A real commit (a fresh backend each time: a cold start, then the next seed is an
            // atomic replace of it).
            let mut backend = ns.run(|| nftproxy_nftables::NftablesBackend::new().unwrap());
            ns.run(|| backend.sync_cluster(&l.state, ctx))
                .unwrap_or_else(|e| panic!("seed {seed}, context {c}: the kernel refused our tables: {e}"));
            loaded += 1;
        }
    }
    eprintln!("references: {loaded} random clusters loaded by iptables-legacy-restore --test and nf_tables");
}
