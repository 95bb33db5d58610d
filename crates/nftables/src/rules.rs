//! Rule building blocks: each returns the `nft` text and the bytecode `nft` itself generates for
//! that text (checked against `nft --debug=netlink`), so our rules decompile unchanged.

use ipnet::IpNet;
use nftproxy_nft_wire::consts::NFT_REG_VERDICT;
use nftproxy_nft_wire::expr::*;
use nftproxy_nft_wire::{CmpOp, CtKey, Expr, MetaKey, NatKind, PayloadBase, Verdict, concat_reg};

use crate::family::Family;
use crate::ruleset::{Rule, verdict_text};


fn cmp(op: CmpOp, data: Vec<u8>) -> Expr {
    Expr::Cmp { sreg: 1, op, data }
}

fn bitwise(mask: Vec<u8>, xor: Vec<u8>, spelled: bool) -> Expr {
    Expr::Bitwise { sreg: 1, dreg: 1, mask, xor, spelled }
}

fn lookup(set: &str, dreg: Option<u32>) -> Expr {
    Expr::Lookup { sreg: 1, dreg, set: set.into(), set_id: None, invert: false }
}

pub fn verdict(v: Verdict) -> Rule {
    Rule::new(verdict_text(&v), vec![Expr::Immediate(v)])
}

pub fn jump(chain: &str) -> Rule {
    verdict(Verdict::Jump(chain.into()))
}

pub fn goto(chain: &str) -> Rule {
    verdict(Verdict::Goto(chain.into()))
}

/// `ct state new`
pub fn ct_state_new() -> Rule {
    Rule::new(
        "ct state new",
        vec![
            Expr::Ct { dreg: 1, key: CtKey::State },
            bitwise(8u32.to_ne_bytes().to_vec(), vec![0; 4], false),
            cmp(CmpOp::Neq, vec![0; 4]),
        ],
    )
}

/// `ct status dnat`
pub fn ct_status_dnat() -> Rule {
    Rule::new(
        "ct status dnat",
        vec![
            Expr::Ct { dreg: 1, key: CtKey::Status },
            bitwise(0x20u32.to_ne_bytes().to_vec(), vec![0; 4], false),
            cmp(CmpOp::Neq, vec![0; 4]),
        ],
    )
}

fn daddr(f: Family, reg: u32) -> Expr {
    Expr::Payload { dreg: reg, base: PayloadBase::Network, offset: f.daddr_offset(), len: f.addr_len() }
}

fn saddr(f: Family, reg: u32) -> Expr {
    Expr::Payload { dreg: reg, base: PayloadBase::Network, offset: f.saddr_offset(), len: f.addr_len() }
}

fn l4proto(reg: u32) -> Expr {
    Expr::Meta { dreg: reg, key: MetaKey::L4proto }
}

fn th_dport(reg: u32) -> Expr {
    Expr::Payload { dreg: reg, base: PayloadBase::Transport, offset: 2, len: 2 }
}

/// Words (32-bit registers) an address takes in a concatenation.
fn addr_words(f: Family) -> u32 {
    f.addr_len() / 4
}

/// The frontend key `ip daddr . meta l4proto . th dport`, concatenated in the registers.
fn daddr_proto_port(f: Family) -> Rule {
    let w = addr_words(f);
    Rule::new(
        format!("{} daddr . meta l4proto . th dport", f.word()),
        vec![daddr(f, concat_reg(0)), l4proto(concat_reg(w)), th_dport(concat_reg(w + 1))],
    )
}

/// The node-port key `meta l4proto . th dport`.
fn proto_port() -> Rule {
    Rule::new("meta l4proto . th dport", vec![l4proto(concat_reg(0)), th_dport(concat_reg(1))])
}

/// `vmap @map` on the key loaded before.
fn vmap(map: &str) -> Rule {
    Rule::new(format!("vmap @{map}"), vec![lookup(map, Some(NFT_REG_VERDICT))])
}

/// `@set` membership of the key loaded before.
fn member_of(set: &str) -> Rule {
    Rule::new(format!("@{set}"), vec![lookup(set, None)])
}

/// `ip daddr . meta l4proto . th dport vmap @map`
pub fn daddr_proto_port_vmap(f: Family, map: &str) -> Rule {
    daddr_proto_port(f).then(vmap(map))
}

/// `ip daddr . meta l4proto . th dport @set`
pub fn daddr_proto_port_in(f: Family, set: &str) -> Rule {
    daddr_proto_port(f).then(member_of(set))
}

/// `meta l4proto . th dport @set`
pub fn proto_port_in(set: &str) -> Rule {
    proto_port().then(member_of(set))
}

/// `meta l4proto . th dport vmap @map`
pub fn proto_port_vmap(map: &str) -> Rule {
    proto_port().then(vmap(map))
}

/// `ip daddr @set`
pub fn daddr_in(f: Family, set: &str) -> Rule {
    Rule::new(format!("{} daddr @{set}", f.word()), vec![daddr(f, 1), lookup(set, None)])
}

/// `ip saddr . ip daddr @set`
pub fn saddr_daddr_in(f: Family, set: &str) -> Rule {
    Rule::new(
        format!("{0} saddr . {0} daddr @{set}", f.word()),
        vec![saddr(f, concat_reg(0)), daddr(f, concat_reg(addr_words(f))), lookup(set, None)],
    )
}

fn fib_local(which: u32, word: &str) -> Rule {
    Rule::new(
        format!("fib {word} type local"),
        vec![
            Expr::Fib { dreg: 1, flags: which, result: NFT_FIB_RESULT_ADDRTYPE },
            cmp(CmpOp::Eq, RTN_LOCAL.to_ne_bytes().to_vec()),
        ],
    )
}

/// `fib daddr type local`
pub fn fib_daddr_local() -> Rule {
    fib_local(NFTA_FIB_F_DADDR, "daddr")
}

/// `fib saddr type local`
pub fn fib_saddr_local() -> Rule {
    fib_local(NFTA_FIB_F_SADDR, "saddr")
}

/// `ip daddr != 127.0.0.0/8` / `ip6 daddr != ::1`: no NodePorts on loopback.
pub fn daddr_not_loopback(f: Family) -> Rule {
    match f {
        Family::V4 => addr_match(f, f.daddr_offset(), "daddr", &"127.0.0.0/8".parse().unwrap(), true),
        _ => addr_match(f, f.daddr_offset(), "daddr", &"::1/128".parse().unwrap(), true),
    }
}

/// `ip daddr 10.96.0.10`
pub fn daddr_is(f: Family, ip: std::net::IpAddr) -> Rule {
    let net = IpNet::new(ip, (f.addr_len() * 8) as u8).expect("full-length prefix");
    addr_match(f, f.daddr_offset(), "daddr", &net, false)
}

/// `ip saddr [!=] CIDR`, encoded as nft does: whole bytes of a byte-aligned prefix are compared
/// directly, other prefixes are masked first — `/0` too (a compare of zero bytes is refused by
/// the kernel with EINVAL: `loadBalancerSourceRanges: [0.0.0.0/0]` once failed every sync).
pub fn saddr_in_cidr(f: Family, net: &IpNet, negate: bool) -> Rule {
    addr_match(f, f.saddr_offset(), "saddr", net, negate)
}

fn addr_match(f: Family, offset: u32, field: &str, net: &IpNet, negate: bool) -> Rule {
    let net = net.trunc();
    let bytes = match net.network() {
        std::net::IpAddr::V4(a) => a.octets().to_vec(),
        std::net::IpAddr::V6(a) => a.octets().to_vec(),
    };
    let prefix = u32::from(net.prefix_len());
    let op = if negate { CmpOp::Neq } else { CmpOp::Eq };
    let shown = if prefix == f.addr_len() * 8 { net.addr().to_string() } else { net.to_string() };
    let text = format!("{} {field} {}{shown}", f.word(), if negate { "!= " } else { "" });
    let exprs = if prefix % 8 == 0 && prefix > 0 {
        let len = prefix / 8;
        vec![
            Expr::Payload { dreg: 1, base: PayloadBase::Network, offset, len },
            cmp(op, bytes[..len as usize].to_vec()),
        ]
    } else {
        let mask: Vec<u8> = match net.netmask() {
            std::net::IpAddr::V4(m) => m.octets().to_vec(),
            std::net::IpAddr::V6(m) => m.octets().to_vec(),
        };
        vec![
            Expr::Payload { dreg: 1, base: PayloadBase::Network, offset, len: f.addr_len() },
            bitwise(mask, vec![0; bytes.len()], false),
            cmp(op, bytes),
        ]
    };
    Rule::new(text, exprs)
}

/// `iifname "br0"`, `iifname != "veth*"`: the input interface, by exact name or name prefix.
/// As nft encodes it: an exact name is compared over all of IFNAMSIZ (16 bytes, NUL-padded), a
/// prefix (`*`) over its own bytes only.
pub fn iifname(name: &str, prefix: bool, negate: bool) -> Rule {
    let data = if prefix {
        name.as_bytes().to_vec()
    } else {
        let mut d = name.as_bytes().to_vec();
        d.resize(16, 0);
        d
    };
    let shown = if prefix { format!("{name}*") } else { name.to_string() };
    Rule::new(
        format!("iifname {}\"{shown}\"", if negate { "!= " } else { "" }),
        vec![Expr::Meta { dreg: 1, key: MetaKey::Iifname }, cmp(if negate { CmpOp::Neq } else { CmpOp::Eq }, data)],
    )
}

/// kube-proxy's local-traffic detector as a match (`IfLocalNFT` / `IfNotLocalNFT`); None when
/// there is no detector.
pub fn local_traffic(f: Family, lt: &nftproxy_model::LocalTraffic, negate: bool) -> Option<Rule> {
    use nftproxy_model::LocalTraffic;
    match lt {
        LocalTraffic::Unknown => None,
        LocalTraffic::Cidr(net) => Some(saddr_in_cidr(f, net, negate)),
        LocalTraffic::Interface(name) => Some(iifname(name, false, negate)),
        LocalTraffic::InterfacePrefix(p) => Some(iifname(p, true, negate)),
    }
}

/// `ip daddr 10.96.0.0/12 drop`-style match of a destination CIDR.
pub fn daddr_in_cidr(f: Family, net: &IpNet) -> Rule {
    addr_match(f, f.daddr_offset(), "daddr", net, false)
}

fn meta_mark_op(text: String, mask: u32, xor: u32) -> Rule {
    Rule::new(
        text,
        vec![
            Expr::Meta { dreg: 1, key: MetaKey::Mark },
            bitwise(mask.to_ne_bytes().to_vec(), xor.to_ne_bytes().to_vec(), true),
            Expr::MetaSet { sreg: 1, key: MetaKey::Mark },
        ],
    )
}

/// `meta mark set meta mark | 0x00004000`
pub fn mark_set_or(bits: u32) -> Rule {
    meta_mark_op(format!("meta mark set meta mark | {bits:#010x}"), !bits, bits)
}

/// `meta mark set meta mark ^ 0x00004000`
pub fn mark_set_xor(bits: u32) -> Rule {
    meta_mark_op(format!("meta mark set meta mark ^ {bits:#010x}"), u32::MAX, bits)
}

/// `meta mark & 0x00004000 == 0x00000000`
pub fn mark_clear(bits: u32) -> Rule {
    Rule::new(
        format!("meta mark & {bits:#010x} == 0x00000000"),
        vec![
            Expr::Meta { dreg: 1, key: MetaKey::Mark },
            bitwise(bits.to_ne_bytes().to_vec(), vec![0; 4], true),
            cmp(CmpOp::Eq, vec![0; 4]),
        ],
    )
}

/// `masquerade fully-random`
pub fn masquerade_fully_random() -> Rule {
    Rule::new("masquerade fully-random", vec![Expr::Masq { flags: NAT_FLAG_FULLY_RANDOM }])
}

/// `reject` (ICMP / ICMPv6 port unreachable).
pub fn reject(f: Family) -> Rule {
    Rule::new("reject", vec![Expr::Reject { kind: NFT_REJECT_ICMP_UNREACH, code: f.reject_code() }])
}

/// Which frontend fields key an endpoint map.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BackendKey {
    /// `ip daddr . meta l4proto . th dport . numgen` (cluster, external and LB IPs)
    Daddr,
    /// `meta l4proto . th dport . numgen` (node ports, on any node address)
    NodePort,
}

/// `meta l4proto tcp dnat ip to ip daddr . meta l4proto . th dport . numgen random mod N map @m`:
/// pick one of N endpoints at random. The protocol match is there because `nft` requires one
/// before a DNAT with a port; one rule per protocol keeps the chain free of anonymous sets.
pub fn dnat_random(f: Family, proto: u8, key: BackendKey, n: u32, map: &str) -> Rule {
    let w = addr_words(f);
    let (mut exprs, key_text, next) = match key {
        BackendKey::Daddr => (
            vec![daddr(f, concat_reg(0)), l4proto(concat_reg(w)), th_dport(concat_reg(w + 1))],
            format!("{} daddr . meta l4proto . th dport", f.word()),
            w + 2,
        ),
        BackendKey::NodePort => {
            (vec![l4proto(concat_reg(0)), th_dport(concat_reg(1))], "meta l4proto . th dport".to_string(), 2)
        }
    };
    exprs.push(Expr::Numgen { dreg: concat_reg(next), modulus: n, random: true });
    exprs.push(lookup(map, Some(1)));
    exprs.push(Expr::Nat {
        kind: NatKind::Dnat,
        family: f.nfproto(),
        addr_min: 1,
        proto_min: Some(concat_reg(w)),
        flags: None,
    });
    let proto_name = match proto {
        6 => "tcp",
        17 => "udp",
        _ => "sctp",
    };
    let mut all = vec![l4proto(1), cmp(CmpOp::Eq, vec![proto])];
    all.extend(exprs);
    Rule::new(
        format!("meta l4proto {proto_name} dnat {0} to {key_text} . numgen random mod {n} map @{map}", f.word()),
        all,
    )
}

/// `ip saddr @set`
pub fn saddr_in(f: Family, set: &str) -> Rule {
    Rule::new(format!("{} saddr @{set}", f.word()), vec![saddr(f, 1), lookup(set, None)])
}

/// `update @set { ip saddr }`: remember (or refresh) this client in a dynamic set.
pub fn update_saddr(f: Family, set: &str) -> Rule {
    Rule::new(
        format!("update @{set} {{ {} saddr }}", f.word()),
        vec![saddr(f, 1), Expr::Dynset { sreg_key: 1, op: DYNSET_UPDATE, set: set.into(), set_id: None }],
    )
}

/// `numgen random mod K == 0`: true with probability 1/K (kube-proxy iptables' statistic match).
pub fn numgen_one_in(k: u32) -> Rule {
    Rule::new(
        format!("numgen random mod {k} == 0"),
        vec![Expr::Numgen { dreg: 1, modulus: k, random: true }, cmp(CmpOp::Eq, vec![0; 4])],
    )
}

/// `meta l4proto tcp dnat ip to 10.0.0.1:80` / `dnat ip6 to [fd00::1]:80`
pub fn dnat_to(f: Family, proto: u8, ip: std::net::IpAddr, port: u16) -> Rule {
    let (addr_bytes, shown) = match ip {
        std::net::IpAddr::V4(a) => (a.octets().to_vec(), format!("{a}:{port}")),
        std::net::IpAddr::V6(a) => (a.octets().to_vec(), format!("[{a}]:{port}")),
    };
    let proto_name = match proto {
        6 => "tcp",
        17 => "udp",
        _ => "sctp",
    };
    Rule::new(
        format!("meta l4proto {proto_name} dnat {} to {shown}", f.word()),
        vec![
            l4proto(1),
            cmp(CmpOp::Eq, vec![proto]),
            Expr::ImmediateData { dreg: 1, data: addr_bytes },
            Expr::ImmediateData { dreg: 2, data: port.to_be_bytes().to_vec() },
            Expr::Nat {
                kind: NatKind::Dnat,
                family: f.nfproto(),
                addr_min: 1,
                proto_min: Some(2),
                flags: Some(NAT_FLAG_PROTO_SPECIFIED),
            },
        ],
    )
}
