//! What one more frontend costs the kernel at commit time, for two shapes of the frontend map
//! (issue 13): a verdict map whose elements `goto` a pick chain (our ruleset until 2026-12), and a
//! data map of frontend → route id followed by a small verdict map of route id → pick chain.
//!
//! Runs in a network namespace of its own (unshare), so nothing touches the caller's rules:
//!
//! ```text
//! cargo run --release -p nftproxy-nftables --example commit_cost -- 1000 50000
//! ```
//!
//! For each size it fills the map, then times 31 commits that each add one element, and prints
//! the median and the 90th percentile. The kernel re-validates the jump graph of a table on a
//! commit that adds a jump or goto, walking every element of every verdict map a rule looks up
//! (nft_table_validate → nft_lookup_validate → set walk); data maps are not walked.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use nftproxy_nft_wire::consts::*;
use nftproxy_nft_wire::{
    BaseChain, Batch, ChainType, Elem, ElemData, Expr, Hook, MetaKey, PayloadBase, SetSpec, Verdict, concat_reg,
};
use nftproxy_nftables::netlink::NftSocket;

const TABLE: &str = "commit-cost";
const PICKS: u32 = 8;
const FAMILY: nftproxy_nft_wire::NfFamily = nftproxy_nft_wire::NfFamily::Ip;

#[derive(Clone, Copy, Debug, PartialEq)]
enum Shape {
    /// `ip daddr . meta l4proto . th dport vmap @frontends`, elements `goto pick-N`.
    VerdictMap,
    /// `... map @frontend-routes` into a register, then `vmap @routes` on it. Cheap to commit,
    /// but nft 1.0.6 cannot list such a rule (it aborts in netlink_parse_concat_expr).
    RouteIds,
    /// A plain set of frontends per pick chain, one rule each:
    /// `ip daddr . meta l4proto . th dport @pick-N-frontends goto pick-N`.
    RouteSets,
}

fn key(i: u32) -> Vec<u8> {
    // 10.x.y.z . tcp . 80, padded as nft pads concatenations (4-byte words).
    let mut k = vec![10, (i >> 16) as u8, (i >> 8) as u8, i as u8];
    k.extend_from_slice(&[6, 0, 0, 0]);
    k.extend_from_slice(&[0, 80, 0, 0]);
    k
}

fn frontend_key_exprs() -> Vec<Expr> {
    vec![
        Expr::Payload { dreg: concat_reg(0), base: PayloadBase::Network, offset: 16, len: 4 },
        Expr::Meta { dreg: concat_reg(1), key: MetaKey::L4proto },
        Expr::Payload { dreg: concat_reg(2), base: PayloadBase::Transport, offset: 2, len: 2 },
    ]
}

fn elem(shape: Shape, i: u32) -> Elem {
    let pick = i % PICKS + 1;
    let data = match shape {
        Shape::VerdictMap => ElemData::Verdict(Verdict::Goto(format!("pick-{pick}"))),
        Shape::RouteIds => ElemData::Value(pick.to_ne_bytes().to_vec()),
        Shape::RouteSets => return Elem { key: key(i), data: None, timeout_ms: None, comment: None },
    };
    Elem { key: key(i), data: Some(data), timeout_ms: None, comment: None }
}

fn set(name: &str, key_type: u32, key_len: u32, data: (u32, u32)) -> SetSpec {
    SetSpec {
        name: name.into(),
        flags: NFT_SET_MAP,
        key_type,
        key_len,
        data: Some(data),
        timeout_ms: None,
        udata: vec![],
    }
}

fn setup(sock: &mut NftSocket, shape: Shape, n: u32) {
    let mut b = Batch::new(1);
    b.del_table(FAMILY, TABLE);
    let _ = sock.commit(&b.finish());
    let mut b = Batch::new(1);
    b.add_table(FAMILY, TABLE, None);
    // ipv4_addr . inet_proto . inet_service
    let fe_type = (7 << 12) | (12 << 6) | 13;
    for p in 1..=PICKS {
        b.add_chain(FAMILY, TABLE, &format!("pick-{p}"), None);
        b.add_rule(FAMILY, TABLE, &format!("pick-{p}"), &[Expr::Counter, Expr::Immediate(Verdict::Accept)], None);
    }
    b.add_chain(FAMILY, TABLE, "services", None);
    for (chain, hook) in [("nat-prerouting", Hook::Prerouting), ("nat-output", Hook::Output)] {
        b.add_chain(FAMILY, TABLE, chain, Some(&BaseChain { chain_type: ChainType::Nat, hook, priority: -100 }));
        b.add_rule(FAMILY, TABLE, chain, &[Expr::Immediate(Verdict::Jump("services".into()))], None);
    }
    let lookup = |set: &str, sreg, dreg| Expr::Lookup { sreg, dreg, set: set.into(), set_id: None, invert: false };
    // The rules of `services`: the frontend key, then what the shape does with it.
    let rules: Vec<Vec<Expr>> = match shape {
        Shape::VerdictMap => {
            b.add_set(FAMILY, TABLE, &set("frontends", fe_type, 12, (NFT_DATA_VERDICT, 0)), 1);
            vec![vec![lookup("frontends", NFT_REG_1, Some(NFT_REG_VERDICT))]]
        }
        Shape::RouteIds => {
            b.add_set(FAMILY, TABLE, &set("frontend-routes", fe_type, 12, (4, 4)), 1);
            b.add_set(FAMILY, TABLE, &set("routes", 4, 4, (NFT_DATA_VERDICT, 0)), 2);
            let routes: Vec<Elem> = (1..=PICKS)
                .map(|p| Elem {
                    key: p.to_ne_bytes().to_vec(),
                    data: Some(ElemData::Verdict(Verdict::Goto(format!("pick-{p}")))),
                    timeout_ms: None,
                    comment: None,
                })
                .collect();
            b.add_elems(FAMILY, TABLE, "routes", None, &routes);
            vec![vec![
                lookup("frontend-routes", NFT_REG_1, Some(NFT_REG_1)),
                lookup("routes", NFT_REG_1, Some(NFT_REG_VERDICT)),
            ]]
        }
        Shape::RouteSets => (1..=PICKS)
            .map(|p| {
                let name = format!("pick-{p}-frontends");
                let spec = SetSpec {
                    name: name.clone(),
                    flags: 0,
                    key_type: fe_type,
                    key_len: 12,
                    data: None,
                    timeout_ms: None,
                    udata: vec![],
                };
                b.add_set(FAMILY, TABLE, &spec, p + 10);
                vec![lookup(&name, NFT_REG_1, None), Expr::Immediate(Verdict::Goto(format!("pick-{p}")))]
            })
            .collect(),
    };
    for tail in rules {
        let mut rule = frontend_key_exprs();
        rule.extend(tail);
        b.add_rule(FAMILY, TABLE, "services", &rule, None);
    }
    sock.commit(&b.finish()).expect("the table");
    for chunk in (0..n).collect::<Vec<_>>().chunks(10_000) {
        let mut by_set: BTreeMap<String, Vec<Elem>> = BTreeMap::new();
        for &i in chunk {
            by_set.entry(map_of(shape, i)).or_default().push(elem(shape, i));
        }
        let mut b = Batch::new(1);
        for (set, elems) in &by_set {
            b.add_elems(FAMILY, TABLE, set, None, elems);
        }
        sock.commit(&b.finish()).expect("elements");
    }
}

/// The map or set that frontend `i` goes into.
fn map_of(shape: Shape, i: u32) -> String {
    match shape {
        Shape::VerdictMap => "frontends".into(),
        Shape::RouteIds => "frontend-routes".into(),
        Shape::RouteSets => format!("pick-{}-frontends", i % PICKS + 1),
    }
}

fn plus_one(sock: &mut NftSocket, shape: Shape, n: u32, rounds: u32) -> Vec<Duration> {
    (0..rounds)
        .map(|r| {
            let mut b = Batch::new(1);
            b.add_elems(FAMILY, TABLE, &map_of(shape, n + r), None, &[elem(shape, n + r)]);
            let bytes = b.finish();
            let t = Instant::now();
            sock.commit(&bytes).expect("+1 element");
            t.elapsed()
        })
        .collect()
}

fn main() {
    // SAFETY: unshare only moves this (single-threaded) process into a new network namespace.
    if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
        eprintln!("unshare(CLONE_NEWNET): {} (run as root)", std::io::Error::last_os_error());
        std::process::exit(1);
    }
    let sizes: Vec<u32> = std::env::args().skip(1).map(|a| a.parse().expect("a size")).collect();
    let sizes = if sizes.is_empty() { vec![1_000, 50_000] } else { sizes };
    let mut sock = NftSocket::open().expect("netlink socket");
    println!("shape          frontends  +1 element commit: median   p90");
    for shape in [Shape::VerdictMap, Shape::RouteIds, Shape::RouteSets] {
        for &n in &sizes {
            setup(&mut sock, shape, n);
            let mut t = plus_one(&mut sock, shape, n, 31);
            t.sort();
            println!(
                "{:<14} {n:>9}  {:>26.3} ms {:>6.3} ms",
                format!("{shape:?}"),
                t[15].as_secs_f64() * 1e3,
                t[27].as_secs_f64() * 1e3
            );
            if std::env::var_os("COMMIT_COST_LIST").is_some() {
                // What `nft` makes of the shape (it must be able to list it).
                let out = std::process::Command::new("nft").args(["list", "chain", "ip", TABLE, "services"]).output();
                if let Ok(o) = out {
                    print!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
                }
            }
        }
    }
}
