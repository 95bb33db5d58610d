//! Where the daemon's memory goes at a given size: live heap bytes (glibc mallinfo2) after each
//! stage of what `run --from` holds — the cluster state, the per-family programmed tables
//! (nftables' mirror, built as a sync builds it, without a kernel), the daemon's stats.
//! `cargo run --release -p nftproxy-daemon --example mem_breakdown -- FILE`

use std::path::Path;

use nftproxy_daemon::heap::in_use_bytes;
use nftproxy_model::NodeContext;
use nftproxy_nftables::table::Table;
use nftproxy_nftables::{Family, fixed_table, fragments_of_state};

fn mib(b: u64) -> f64 {
    b as f64 / (1 << 20) as f64
}

fn main() {
    let path = std::env::args().nth(1).expect("a manifest file");
    let base = in_use_bytes().unwrap_or(0);
    let loaded = nftproxy_manifest::load_path(Path::new(&path)).expect("loads");
    let mut state = loaded.state;
    state.compact();
    let after_state = in_use_bytes().unwrap_or(0);
    let ctx = NodeContext {
        node_name: "node-a".into(),
        node_ips: vec!["10.0.1.1".parse().unwrap()],
        cluster_cidrs: vec!["10.244.0.0/16".parse().unwrap()],
        ..Default::default()
    };
    let t0 = std::time::Instant::now();
    let tables: Vec<Table> = [Family::V4, Family::V6]
        .into_iter()
        .map(|f| Table::new(fixed_table(f, &ctx), fragments_of_state(f, &state, &ctx)))
        .collect();
    let built = t0.elapsed();
    let after_tables = in_use_bytes().unwrap_or(0);
    let mut stats = nftproxy_daemon::stats::Stats::default();
    stats.rebuild(&state, &ctx);
    let after_stats = in_use_bytes().unwrap_or(0);
    let elements: usize = tables.iter().map(|t| t.table.element_count()).sum();
    println!("services {}, slices {}", state.services.len(), state.slices().len());
    println!("cluster state:      {:7.1} MiB", mib(after_state - base));
    println!(
        "programmed tables:  {:7.1} MiB ({elements} elements, {:.0} bytes each), built in {built:.2?}",
        mib(after_tables - after_state),
        (after_tables - after_state) as f64 / elements.max(1) as f64
    );
    println!("stats:              {:7.1} MiB", mib(after_stats - after_tables));
    for t in &tables {
        for (set, e) in &t.table.elements {
            if e.is_empty() {
                continue;
            }
            let verdicts =
                e.values().filter(|v| matches!(v.value, nftproxy_nftables::ruleset::Value::Verdict(_))).count();
            println!("  {:?} {set}: {} elements, {verdicts} with a verdict", t.table.family, e.len());
        }
    }
    println!(
        "sizes: Key {} B, ElemValue {} B, Service {} B, EndpointSlice {} B, Endpoint {} B",
        std::mem::size_of::<nftproxy_nftables::ruleset::Key>(),
        std::mem::size_of::<nftproxy_nftables::ruleset::ElemValue>(),
        std::mem::size_of::<nftproxy_model::Service>(),
        std::mem::size_of::<nftproxy_model::EndpointSlice>(),
        std::mem::size_of::<nftproxy_model::Endpoint>(),
    );
    drop((tables, stats, state));
}
