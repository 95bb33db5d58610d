//! The decoder on bytes it did not write: the captures of `nft --debug=mnl` in `fixtures/`
//! (one `<type> <payload hex>` line per message, from the nfgenmsg on) decode to the objects
//! the `.nft` files describe, and each decoded message re-encodes to nft's bytes exactly.

mod capture;

use capture::lines;
use nftproxy_nft_wire::consts::*;
use nftproxy_nft_wire::expr::*;
use nftproxy_nft_wire::*;

const V4: NfFamily = NfFamily::Ip;

/// Decodes every line, checking that each message re-encodes to the captured payload.
fn decode_all(fix: &[(u16, Vec<u8>)]) -> Vec<Message> {
    fix.iter()
        .enumerate()
        .map(|(i, (ty, payload))| {
            let m = decode_message(*ty, payload).unwrap_or_else(|e| panic!("line {i} (type {ty}): {e}"));
            if !matches!(m, Message::BatchBegin | Message::BatchEnd) {
                let mut b = Batch::new(0);
                m.encode_into(&mut b);
                let fin = b.finish();
                let split = fin.split();
                assert_eq!(split.len(), 3, "line {i}: one message");
                assert_eq!(split[1].0, *ty, "line {i}: type");
                assert_eq!(split[1].2, &payload[..], "line {i}: re-encoded bytes");
            }
            m
        })
        .collect()
}

fn s(x: &str) -> String {
    x.to_string()
}

fn payload(dreg: u32, base: PayloadBase, offset: u32, len: u32) -> Expr {
    Expr::Payload { dreg, base, offset, len }
}

fn cmp(op: CmpOp, data: &[u8]) -> Expr {
    Expr::Cmp { sreg: 1, op, data: data.to_vec() }
}

fn bits(mask: u32, xor: u32, spelled: bool) -> Expr {
    Expr::Bitwise { sreg: 1, dreg: 1, mask: mask.to_ne_bytes().to_vec(), xor: xor.to_ne_bytes().to_vec(), spelled }
}

fn lookup(dreg: Option<u32>, set: &str, id: u32) -> Expr {
    Expr::Lookup { sreg: 1, dreg, set: s(set), set_id: Some(id), invert: false }
}

fn rule(table: &str, chain: &str, exprs: Vec<Expr>, comment: Option<&str>) -> Message {
    Message::AddRule { family: V4, table: s(table), chain: s(chain), exprs, comment: comment.map(s) }
}

/// `fixtures/reference.nft`.
#[test]
fn reference_capture_decodes_to_its_objects() {
    let fix = lines(include_str!("fixtures/reference.hex"));
    let got = decode_all(&fix);
    let t = "kube-nftproxy";
    let chain = |name: &str, base| Message::AddChain { family: V4, table: s(t), name: s(name), base };
    let set = |name: &str, flags, key_type, key_len, data, id| Message::AddSet {
        family: V4,
        table: s(t),
        spec: SetSpec {
            name: s(name),
            flags,
            key_type,
            key_len,
            data,
            timeout_ms: None,
            udata: capture::set_udata(&fix, name).expect("nft wrote userdata"),
        },
        id,
    };
    let mark = Expr::Meta { dreg: 1, key: MetaKey::Mark };
    let set_mark = Expr::MetaSet { sreg: 1, key: MetaKey::Mark };
    let l4 = |dreg| Expr::Meta { dreg, key: MetaKey::L4proto };
    let jump = |c: &str| Expr::Immediate(Verdict::Jump(s(c)));
    let zero = 0u32.to_ne_bytes();
    let want = vec![
        Message::BatchBegin,
        Message::AddTable { family: V4, name: s(t), comment: Some(s("rules for kube-nftproxy")) },
        chain("mark-for-masquerade", None),
        chain("masquerading", None),
        chain("cluster-3", None),
        chain("reject-chain", None),
        chain("services", None),
        chain("filter-forward", Some(BaseChain { chain_type: ChainType::Filter, hook: Hook::Forward, priority: 0 })),
        chain("nat-prerouting", Some(BaseChain { chain_type: ChainType::Nat, hook: Hook::Prerouting, priority: -100 })),
        set("cluster-ips", 0, 7, 4, None, 1),
        set("hairpin", 0, 0x1c7, 8, None, 2),
        set("service-ips", NFT_SET_MAP, 0x730d, 12, Some((NFT_DATA_VERDICT, 0)), 3),
        set("service-nodeports", NFT_SET_MAP, 0x30d, 8, Some((NFT_DATA_VERDICT, 0)), 4),
        set("backends", NFT_SET_MAP, 0x1cc344, 16, Some((0x1cd, 8)), 5),
        rule(t, "mark-for-masquerade", vec![mark.clone(), bits(0xffff_bfff, 0x4000, true), set_mark.clone()], None),
        rule(
            t,
            "masquerading",
            vec![
                Expr::Ct { dreg: 1, key: CtKey::Status },
                bits(0x20, 0, false),
                cmp(CmpOp::Neq, &zero),
                payload(concat_reg(0), PayloadBase::Network, 12, 4),
                payload(concat_reg(1), PayloadBase::Network, 16, 4),
                lookup(None, "hairpin", 2),
                jump("mark-for-masquerade"),
            ],
            None,
        ),
        rule(
            t,
            "masquerading",
            vec![mark.clone(), bits(0x4000, 0, true), cmp(CmpOp::Eq, &zero), Expr::Immediate(Verdict::Return)],
            None,
        ),
        rule(t, "masquerading", vec![mark, bits(0xffff_ffff, 0x4000, true), set_mark], None),
        rule(t, "masquerading", vec![Expr::Masq { flags: NAT_FLAG_FULLY_RANDOM }], None),
        rule(
            t,
            "cluster-3",
            vec![
                payload(1, PayloadBase::Network, 12, 4),
                Expr::Bitwise { sreg: 1, dreg: 1, mask: vec![255, 240, 0, 0], xor: vec![0; 4], spelled: false },
                cmp(CmpOp::Neq, &[10, 240, 0, 0]),
                jump("mark-for-masquerade"),
            ],
            None,
        ),
        rule(
            t,
            "cluster-3",
            vec![
                l4(1),
                cmp(CmpOp::Eq, &[6]),
                payload(concat_reg(0), PayloadBase::Network, 16, 4),
                l4(concat_reg(1)),
                payload(concat_reg(2), PayloadBase::Transport, 2, 2),
                Expr::Numgen { dreg: concat_reg(3), modulus: 3, random: true },
                lookup(Some(1), "backends", 5),
                Expr::Nat { kind: NatKind::Dnat, family: V4, addr_min: 1, proto_min: Some(concat_reg(1)), flags: None },
            ],
            None,
        ),
        rule(t, "reject-chain", vec![Expr::Reject { kind: NFT_REJECT_ICMP_UNREACH, code: 3 }], None),
        rule(
            t,
            "services",
            vec![
                payload(concat_reg(0), PayloadBase::Network, 16, 4),
                l4(concat_reg(1)),
                payload(concat_reg(2), PayloadBase::Transport, 2, 2),
                lookup(Some(NFT_REG_VERDICT), "service-ips", 3),
            ],
            None,
        ),
        rule(
            t,
            "services",
            vec![
                Expr::Fib { dreg: 1, flags: NFTA_FIB_F_DADDR, result: NFT_FIB_RESULT_ADDRTYPE },
                cmp(CmpOp::Eq, &RTN_LOCAL.to_ne_bytes()),
                payload(1, PayloadBase::Network, 16, 1),
                cmp(CmpOp::Neq, &[127]),
                l4(concat_reg(0)),
                payload(concat_reg(1), PayloadBase::Transport, 2, 2),
                lookup(Some(NFT_REG_VERDICT), "service-nodeports", 4),
            ],
            Some("x"),
        ),
        rule(
            t,
            "filter-forward",
            vec![
                Expr::Ct { dreg: 1, key: CtKey::State },
                bits(8, 0, false),
                cmp(CmpOp::Neq, &zero),
                jump("reject-chain"),
            ],
            None,
        ),
        rule(t, "nat-prerouting", vec![jump("services")], None),
        Message::AddElems {
            family: V4,
            table: s(t),
            set: s("service-ips"),
            set_id: Some(3),
            elems: vec![Elem {
                // 10.96.0.10 . tcp . 80, each field padded to 4 bytes
                key: vec![10, 96, 0, 10, 6, 0, 0, 0, 0, 80, 0, 0],
                data: Some(ElemData::Verdict(Verdict::Goto(s("cluster-3")))),
                timeout_ms: None,
                comment: Some(s("ns/web:http")),
            }],
        },
        Message::AddElems {
            family: V4,
            table: s(t),
            set: s("backends"),
            set_id: Some(5),
            elems: vec![Elem {
                // 10.96.0.10 . tcp . 80 . 1 (numgen: host order) : 10.244.1.2 . 8080
                key: [[10, 96, 0, 10], [6, 0, 0, 0], [0, 80, 0, 0], 1u32.to_ne_bytes()].concat(),
                data: Some(ElemData::Value(vec![10, 244, 1, 2, 0x1f, 0x90, 0, 0])),
                timeout_ms: None,
                comment: None,
            }],
        },
        Message::AddElems {
            family: V4,
            table: s(t),
            set: s("hairpin"),
            set_id: Some(2),
            elems: vec![Elem { key: vec![10, 244, 1, 1, 10, 244, 1, 1], data: None, timeout_ms: None, comment: None }],
        },
        Message::BatchEnd,
    ];
    assert_eq!(got.len(), want.len(), "message count");
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        assert_eq!(g, w, "message {i}");
    }
}

/// `fixtures/affinity.nft`: a set with a timeout and byte-order userdata, dynset, DNAT to a
/// constant, numgen, goto.
#[test]
fn affinity_capture_decodes_to_its_objects() {
    let fix = lines(include_str!("fixtures/affinity.hex"));
    let got = decode_all(&fix);
    let saddr = payload(1, PayloadBase::Network, 12, 4);
    let goto = || Expr::Immediate(Verdict::Goto(s("affinity-X-0")));
    let want = vec![
        Message::AddTable { family: V4, name: s("t"), comment: None },
        Message::AddChain { family: V4, table: s("t"), name: s("affinity-X-0"), base: None },
        Message::AddChain { family: V4, table: s("t"), name: s("affinity-X"), base: None },
        Message::AddSet {
            family: V4,
            table: s("t"),
            spec: SetSpec {
                name: s("affinity-X-0"),
                flags: NFT_SET_TIMEOUT | NFT_SET_EVAL,
                key_type: 7,
                key_len: 4,
                data: None,
                timeout_ms: Some(10_800_000),
                // NFTNL_UDATA_SET_KEYBYTEORDER, 4 bytes: 2 (big endian), host order
                udata: [&[0u8, 4][..], &2u32.to_ne_bytes()].concat(),
            },
            id: 1,
        },
        rule(
            "t",
            "affinity-X-0",
            vec![
                saddr.clone(),
                Expr::Dynset { sreg_key: 1, op: DYNSET_UPDATE, set: s("affinity-X-0"), set_id: Some(1) },
            ],
            None,
        ),
        rule(
            "t",
            "affinity-X-0",
            vec![
                Expr::Meta { dreg: 1, key: MetaKey::L4proto },
                cmp(CmpOp::Eq, &[6]),
                Expr::ImmediateData { dreg: 1, data: vec![10, 244, 1, 2] },
                Expr::ImmediateData { dreg: 2, data: vec![0x1f, 0x90] },
                Expr::Nat {
                    kind: NatKind::Dnat,
                    family: V4,
                    addr_min: 1,
                    proto_min: Some(2),
                    flags: Some(NAT_FLAG_PROTO_SPECIFIED),
                },
            ],
            None,
        ),
        rule("t", "affinity-X", vec![saddr, lookup(None, "affinity-X-0", 1), goto()], None),
        rule(
            "t",
            "affinity-X",
            vec![Expr::Numgen { dreg: 1, modulus: 3, random: true }, cmp(CmpOp::Eq, &[0; 4]), goto()],
            None,
        ),
        rule("t", "affinity-X", vec![goto()], None),
    ];
    assert_eq!(got, want);
}

/// The reference capture framed as one batch (the nlmsghdrs nft would send: consecutive seqs,
/// the batch's flags) decodes as a batch and re-encodes to the same bytes.
#[test]
fn reference_capture_as_a_batch() {
    let fix = lines(include_str!("fixtures/reference.hex"));
    let msgs = decode_all(&fix);
    let inner = &msgs[1..msgs.len() - 1];
    let mut bytes = Vec::new();
    for (i, ((ty, payload), m)) in fix.iter().zip(&msgs).enumerate() {
        let flags = NLM_F_REQUEST
            | match m {
                Message::AddRule { .. } => NLM_F_CREATE | NLM_F_APPEND,
                Message::AddTable { .. } | Message::AddChain { .. } | Message::AddSet { .. } => NLM_F_CREATE,
                Message::AddElems { .. } => NLM_F_CREATE,
                _ => 0,
            }
            | if i == fix.len() - 2 { NLM_F_ACK } else { 0 };
        bytes.extend_from_slice(&((16 + payload.len()) as u32).to_ne_bytes());
        bytes.extend_from_slice(&ty.to_ne_bytes());
        bytes.extend_from_slice(&flags.to_ne_bytes());
        bytes.extend_from_slice(&(100 + i as u32).to_ne_bytes());
        bytes.extend_from_slice(&0u32.to_ne_bytes());
        bytes.extend_from_slice(payload);
    }
    let d = decode_batch(&bytes).unwrap();
    assert_eq!(d.first_seq, 100);
    assert_eq!(d.messages, inner);
    assert_eq!(d.encode().bytes, bytes);
}
