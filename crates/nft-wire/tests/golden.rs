//! Byte-exact: every message we build for `fixtures/reference.nft` equals what `nft` 1.0.6 sent
//! for it (`nft --debug=mnl -f reference.nft | tools/mnl2hex.py` → `reference.hex`). Payloads
//! are compared from the nfgenmsg on; the nlmsghdr differs only in seq and flags.

mod capture;

use nftproxy_nft_wire::consts::*;
use nftproxy_nft_wire::expr::*;
use nftproxy_nft_wire::*;

const T: &str = "kube-nftproxy";
const V4: NfFamily = NfFamily::Ip;

/// A capture without its batch begin and end.
fn parse_fixture(text: &str) -> Vec<(u16, Vec<u8>)> {
    capture::lines(text).into_iter().filter(|(t, _)| *t != NFNL_MSG_BATCH_BEGIN && *t != NFNL_MSG_BATCH_END).collect()
}

fn fixture() -> Vec<(u16, Vec<u8>)> {
    parse_fixture(include_str!("fixtures/reference.hex"))
}

/// Our batch, message by message, equals nft's capture (payloads from the nfgenmsg on).
fn assert_same_messages(b: Batch, fix: &[(u16, Vec<u8>)]) {
    let ours: Vec<(u16, Vec<u8>)> = b
        .finish()
        .split()
        .into_iter()
        .filter(|(t, _, _)| *t != NFNL_MSG_BATCH_BEGIN && *t != NFNL_MSG_BATCH_END)
        .map(|(t, _, p)| (t, p.to_vec()))
        .collect();
    assert_eq!(ours.len(), fix.len(), "message count");
    for (i, (o, f)) in ours.iter().zip(fix).enumerate() {
        assert_eq!(o.0, f.0, "message {i}: type");
        assert_eq!(hex(&o.1), hex(&f.1), "message {i} (type {}) differs", o.0);
    }
}

fn reg(w: u32) -> u32 {
    concat_reg(w)
}

fn payload(dreg: u32, base: PayloadBase, offset: u32, len: u32) -> Expr {
    Expr::Payload { dreg, base, offset, len }
}

fn jump(c: &str) -> Expr {
    Expr::Immediate(Verdict::Jump(c.into()))
}

#[test]
fn messages_equal_nfts_bytes() {
    let fix = fixture();
    let mut b = Batch::new(1);
    b.add_table(V4, T, Some("rules for kube-nftproxy"));
    for c in ["mark-for-masquerade", "masquerading", "cluster-3", "reject-chain", "services"] {
        b.add_chain(V4, T, c, None);
    }
    b.add_chain(
        V4,
        T,
        "filter-forward",
        Some(&BaseChain { chain_type: ChainType::Filter, hook: Hook::Forward, priority: 0 }),
    );
    b.add_chain(
        V4,
        T,
        "nat-prerouting",
        Some(&BaseChain { chain_type: ChainType::Nat, hook: Hook::Prerouting, priority: -100 }),
    );

    let sets = [
        ("cluster-ips", 0, 7, 4, None),
        ("hairpin", 0, 0x1c7, 8, None),
        ("service-ips", NFT_SET_MAP, 0x730d, 12, Some((NFT_DATA_VERDICT, 0))),
        ("service-nodeports", NFT_SET_MAP, 0x30d, 8, Some((NFT_DATA_VERDICT, 0))),
        ("backends", NFT_SET_MAP, 0x1cc344, 16, Some((0x1cd, 8))),
    ];
    for (id, (name, flags, key_type, key_len, data)) in sets.into_iter().enumerate() {
        let spec = SetSpec {
            name: name.into(),
            flags,
            key_type,
            key_len,
            data,
            timeout_ms: None,
            udata: capture::set_udata(&fix, name).unwrap_or_default(),
        };
        b.add_set(V4, T, &spec, id as u32 + 1);
    }

    let mark = |dreg| Expr::Meta { dreg, key: MetaKey::Mark };
    let set_mark = Expr::MetaSet { sreg: 1, key: MetaKey::Mark };
    let bits_with = |mask: u32, xor: u32, spelled| Expr::Bitwise {
        sreg: 1,
        dreg: 1,
        mask: mask.to_ne_bytes().to_vec(),
        xor: xor.to_ne_bytes().to_vec(),
        spelled,
    };
    let bits = |mask, xor| bits_with(mask, xor, false);
    let cmp = |op, data: &[u8]| Expr::Cmp { sreg: 1, op, data: data.to_vec() };
    b.add_rule(V4, T, "mark-for-masquerade", &[mark(1), bits_with(0xffff_bfff, 0x4000, true), set_mark.clone()], None);
    b.add_rule(
        V4,
        T,
        "masquerading",
        &[
            Expr::Ct { dreg: 1, key: CtKey::Status },
            bits(0x20, 0),
            cmp(CmpOp::Neq, &0u32.to_ne_bytes()),
            payload(reg(0), PayloadBase::Network, 12, 4),
            payload(reg(1), PayloadBase::Network, 16, 4),
            Expr::Lookup { sreg: 1, dreg: None, set: "hairpin".into(), set_id: Some(2), invert: false },
            jump("mark-for-masquerade"),
        ],
        None,
    );
    b.add_rule(
        V4,
        T,
        "masquerading",
        &[mark(1), bits_with(0x4000, 0, true), cmp(CmpOp::Eq, &0u32.to_ne_bytes()), Expr::Immediate(Verdict::Return)],
        None,
    );
    b.add_rule(V4, T, "masquerading", &[mark(1), bits_with(0xffff_ffff, 0x4000, true), set_mark], None);
    b.add_rule(V4, T, "masquerading", &[Expr::Masq { flags: NAT_FLAG_FULLY_RANDOM }], None);
    b.add_rule(
        V4,
        T,
        "cluster-3",
        &[
            payload(1, PayloadBase::Network, 12, 4),
            Expr::Bitwise { sreg: 1, dreg: 1, mask: vec![255, 240, 0, 0], xor: vec![0; 4], spelled: false },
            cmp(CmpOp::Neq, &[10, 240, 0, 0]),
            jump("mark-for-masquerade"),
        ],
        None,
    );
    b.add_rule(
        V4,
        T,
        "cluster-3",
        &[
            Expr::Meta { dreg: 1, key: MetaKey::L4proto },
            cmp(CmpOp::Eq, &[6]),
            payload(reg(0), PayloadBase::Network, 16, 4),
            Expr::Meta { dreg: reg(1), key: MetaKey::L4proto },
            payload(reg(2), PayloadBase::Transport, 2, 2),
            Expr::Numgen { dreg: reg(3), modulus: 3, random: true },
            Expr::Lookup { sreg: 1, dreg: Some(1), set: "backends".into(), set_id: Some(5), invert: false },
            Expr::Nat { kind: NatKind::Dnat, family: V4, addr_min: 1, proto_min: Some(reg(1)), flags: None },
        ],
        None,
    );
    b.add_rule(V4, T, "reject-chain", &[Expr::Reject { kind: NFT_REJECT_ICMP_UNREACH, code: 3 }], None);
    b.add_rule(
        V4,
        T,
        "services",
        &[
            payload(reg(0), PayloadBase::Network, 16, 4),
            Expr::Meta { dreg: reg(1), key: MetaKey::L4proto },
            payload(reg(2), PayloadBase::Transport, 2, 2),
            Expr::Lookup {
                sreg: 1,
                dreg: Some(NFT_REG_VERDICT),
                set: "service-ips".into(),
                set_id: Some(3),
                invert: false,
            },
        ],
        None,
    );
    b.add_rule(
        V4,
        T,
        "services",
        &[
            Expr::Fib { dreg: 1, flags: NFTA_FIB_F_DADDR, result: NFT_FIB_RESULT_ADDRTYPE },
            cmp(CmpOp::Eq, &RTN_LOCAL.to_ne_bytes()),
            payload(1, PayloadBase::Network, 16, 1),
            cmp(CmpOp::Neq, &[127]),
            Expr::Meta { dreg: reg(0), key: MetaKey::L4proto },
            payload(reg(1), PayloadBase::Transport, 2, 2),
            Expr::Lookup {
                sreg: 1,
                dreg: Some(NFT_REG_VERDICT),
                set: "service-nodeports".into(),
                set_id: Some(4),
                invert: false,
            },
        ],
        Some("x"),
    );
    b.add_rule(
        V4,
        T,
        "filter-forward",
        &[
            Expr::Ct { dreg: 1, key: CtKey::State },
            bits(8, 0),
            cmp(CmpOp::Neq, &0u32.to_ne_bytes()),
            jump("reject-chain"),
        ],
        None,
    );
    b.add_rule(V4, T, "nat-prerouting", &[jump("services")], None);

    let key = |parts: &[&[u8]]| {
        let mut k = Vec::new();
        for p in parts {
            k.extend_from_slice(p);
            k.resize(k.len().next_multiple_of(4), 0);
        }
        k
    };
    b.add_elems(
        V4,
        T,
        "service-ips",
        Some(3),
        &[Elem {
            key: key(&[&[10, 96, 0, 10], &[6], &80u16.to_be_bytes()]),
            data: Some(ElemData::Verdict(Verdict::Goto("cluster-3".into()))),
            timeout_ms: None,
            comment: Some("ns/web:http".into()),
        }],
    );
    b.add_elems(
        V4,
        T,
        "backends",
        Some(5),
        &[Elem {
            key: key(&[&[10, 96, 0, 10], &[6], &80u16.to_be_bytes(), &1u32.to_ne_bytes()]),
            data: Some(ElemData::Value(key(&[&[10, 244, 1, 2], &8080u16.to_be_bytes()]))),
            timeout_ms: None,
            comment: None,
        }],
    );
    b.add_elems(
        V4,
        T,
        "hairpin",
        Some(2),
        &[Elem { key: key(&[&[10, 244, 1, 1], &[10, 244, 1, 1]]), data: None, timeout_ms: None, comment: None }],
    );

    assert_same_messages(b, &fix);
}

fn hex(b: &[u8]) -> String {
    b.chunks(4).map(|c| c.iter().map(|x| format!("{x:02x}")).collect::<String>()).collect::<Vec<_>>().join(" ")
}

/// `fixtures/affinity.nft`: a dynamic set with a timeout, `update @set { ip saddr }`, a random
/// `numgen … == 0` branch and a DNAT to a constant address and port.
#[test]
fn affinity_messages_equal_nfts_bytes() {
    let fix = parse_fixture(include_str!("fixtures/affinity.hex"));
    let t = "t";
    let mut b = Batch::new(1);
    b.add_table(V4, t, None);
    b.add_chain(V4, t, "affinity-X-0", None);
    b.add_chain(V4, t, "affinity-X", None);
    let spec = SetSpec {
        name: "affinity-X-0".into(),
        flags: NFT_SET_TIMEOUT | NFT_SET_EVAL,
        key_type: 7,
        key_len: 4,
        data: None,
        timeout_ms: Some(10_800_000),
        udata: Udata::default().put_u32(NFTNL_UDATA_SET_KEYBYTEORDER, 2).0,
    };
    b.add_set(V4, t, &spec, 1);
    let saddr = payload(1, PayloadBase::Network, 12, 4);
    b.add_rule(
        V4,
        t,
        "affinity-X-0",
        &[saddr.clone(), Expr::Dynset { sreg_key: 1, op: DYNSET_UPDATE, set: "affinity-X-0".into(), set_id: Some(1) }],
        None,
    );
    b.add_rule(
        V4,
        t,
        "affinity-X-0",
        &[
            Expr::Meta { dreg: 1, key: MetaKey::L4proto },
            Expr::Cmp { sreg: 1, op: CmpOp::Eq, data: vec![6] },
            Expr::ImmediateData { dreg: 1, data: vec![10, 244, 1, 2] },
            Expr::ImmediateData { dreg: 2, data: 8080u16.to_be_bytes().to_vec() },
            Expr::Nat {
                kind: NatKind::Dnat,
                family: V4,
                addr_min: 1,
                proto_min: Some(2),
                flags: Some(NAT_FLAG_PROTO_SPECIFIED),
            },
        ],
        None,
    );
    b.add_rule(
        V4,
        t,
        "affinity-X",
        &[
            saddr,
            Expr::Lookup { sreg: 1, dreg: None, set: "affinity-X-0".into(), set_id: Some(1), invert: false },
            Expr::Immediate(Verdict::Goto("affinity-X-0".into())),
        ],
        None,
    );
    b.add_rule(
        V4,
        t,
        "affinity-X",
        &[
            Expr::Numgen { dreg: 1, modulus: 3, random: true },
            Expr::Cmp { sreg: 1, op: CmpOp::Eq, data: vec![0; 4] },
            Expr::Immediate(Verdict::Goto("affinity-X-0".into())),
        ],
        None,
    );
    b.add_rule(V4, t, "affinity-X", &[Expr::Immediate(Verdict::Goto("affinity-X-0".into()))], None);
    assert_same_messages(b, &fix);
}
