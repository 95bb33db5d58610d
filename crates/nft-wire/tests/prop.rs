//! Property tests of the nf_tables wire layer: whatever typed operations go into a [`Batch`],
//! [`decode_batch`] gives them back (the decoder inverts the encoder), and no byte input — a
//! valid batch mutated, or bytes at random — makes the decoder panic. When the decoder does
//! accept mutated or random bytes, re-encoding what it returned must give those bytes back
//! exactly: that is its contract of strictness, and it catches a decoder that drops a field.
//!
//! Case counts: `KNP_FUZZ_CASES` (`make fuzz` sets 10^6 in release), else a default small enough
//! for `make test`. No failure persistence (nothing written into the source tree): a failing
//! case found here becomes a plain `#[test]` below.

use nftproxy_nft_wire::batch::{COMMENT_MAX, ELEMS_PER_MESSAGE};
use nftproxy_nft_wire::consts::*;
use nftproxy_nft_wire::mutate::{build_tlvs, mutate, mutation, tlvs};
use nftproxy_nft_wire::*;
use proptest::collection::vec;
use proptest::option;
use proptest::prelude::*;
use proptest::sample::select;

/// Where a batch message's attributes begin: after the nlmsghdr and the nfgenmsg.
const NFGENMSG_END: usize = 20;

fn cases(default: u32) -> u32 {
    std::env::var("KNP_FUZZ_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

// ---------------------------------------------------------------------------------------------
// Generators. Cheap on purpose (10^6 cases per target in `make fuzz`): names from a small
// alphabet of odd characters rather than regexes, bounded sizes.

/// ASCII, controls, 2-, 3- and 4-byte UTF-8, zero-width and BOM; no NUL (names and comments are
/// C strings: nft cannot carry a NUL in them, and the decoder rightly rejects one).
const ALPHABET: &[char] = &[
    'a',
    'z',
    'A',
    '0',
    '9',
    '-',
    '_',
    '.',
    ' ',
    '"',
    '\\',
    '\u{1}',
    '\u{7f}',
    'é',
    'ß',
    '\u{ff}',
    '中',
    '☃',
    '\u{200b}',
    '\u{feff}',
    '😀',
    '\u{10ffff}',
];

fn text(max: usize) -> impl Strategy<Value = String> {
    vec(select(ALPHABET), 0..=max).prop_map(String::from_iter)
}

/// Mostly short names, sometimes long ones (nft's limit is 256 bytes; the encoder has none).
fn name() -> impl Strategy<Value = String> {
    prop_oneof![9 => text(12), 1 => text(80)]
}

/// Up to 140 characters (up to 560 bytes): around and far beyond COMMENT_MAX, so the encoder's
/// truncation at a character boundary is exercised.
fn comment() -> impl Strategy<Value = Option<String>> {
    option::of(prop_oneof![3 => text(10), 1 => text(140)])
}

fn bytes(max: usize) -> impl Strategy<Value = Vec<u8>> {
    vec(any::<u8>(), 0..=max)
}

fn verdict() -> impl Strategy<Value = Verdict> {
    prop_oneof![
        Just(Verdict::Accept),
        Just(Verdict::Drop),
        Just(Verdict::Return),
        name().prop_map(Verdict::Jump),
        name().prop_map(Verdict::Goto),
    ]
}

fn meta_key() -> impl Strategy<Value = MetaKey> {
    select(&[MetaKey::Mark, MetaKey::Iifname, MetaKey::Nftrace, MetaKey::L4proto][..])
}

/// Every variant of [`Expr`], every field free within its type.
fn expr() -> impl Strategy<Value = Expr> {
    let u = any::<u32>;
    prop_oneof![
        (u(), select(&[PayloadBase::Link, PayloadBase::Network, PayloadBase::Transport][..]), u(), u())
            .prop_map(|(dreg, base, offset, len)| Expr::Payload { dreg, base, offset, len }),
        (u(), meta_key()).prop_map(|(dreg, key)| Expr::Meta { dreg, key }),
        (u(), meta_key()).prop_map(|(sreg, key)| Expr::MetaSet { sreg, key }),
        (u(), select(&[CtKey::State, CtKey::Status][..])).prop_map(|(dreg, key)| Expr::Ct { dreg, key }),
        (u(), select(&[CmpOp::Eq, CmpOp::Neq][..]), bytes(64)).prop_map(|(sreg, op, data)| Expr::Cmp {
            sreg,
            op,
            data
        }),
        (u(), u(), bytes(64), bytes(64), any::<bool>()).prop_map(|(sreg, dreg, mask, xor, spelled)| Expr::Bitwise {
            sreg,
            dreg,
            mask,
            xor,
            spelled
        }),
        (u(), option::of(u()), name(), option::of(u()), any::<bool>())
            .prop_map(|(sreg, dreg, set, set_id, invert)| Expr::Lookup { sreg, dreg, set, set_id, invert }),
        verdict().prop_map(Expr::Immediate),
        (u(), bytes(64)).prop_map(|(dreg, data)| Expr::ImmediateData { dreg, data }),
        (u(), u(), any::<bool>()).prop_map(|(dreg, modulus, random)| Expr::Numgen { dreg, modulus, random }),
        (
            select(&[NatKind::Snat, NatKind::Dnat][..]),
            select(&NfFamily::ALL[..]),
            u(),
            option::of(u()),
            option::of(u())
        )
            .prop_map(|(kind, family, addr_min, proto_min, flags)| Expr::Nat {
                kind,
                family,
                addr_min,
                proto_min,
                flags
            }),
        u().prop_map(|flags| Expr::Masq { flags }),
        (u(), u(), u()).prop_map(|(dreg, flags, result)| Expr::Fib { dreg, flags, result }),
        (u(), any::<u8>()).prop_map(|(kind, code)| Expr::Reject { kind, code }),
        Just(Expr::Counter),
        (u(), u(), name(), option::of(u())).prop_map(|(sreg_key, op, set, set_id)| Expr::Dynset {
            sreg_key,
            op,
            set,
            set_id
        }),
    ]
}

fn elem(max_bytes: usize, comment: impl Strategy<Value = Option<String>>) -> impl Strategy<Value = Elem> {
    let data =
        option::of(prop_oneof![bytes(max_bytes).prop_map(ElemData::Value), verdict().prop_map(ElemData::Verdict)]);
    (bytes(max_bytes), data, option::of(any::<u64>()), comment).prop_map(|(key, data, timeout_ms, comment)| Elem {
        key,
        data,
        timeout_ms,
        comment,
    })
}

/// A few elements with large keys, data and comments, or sometimes enough small ones to need
/// two messages (ELEMS_PER_MESSAGE), or none at all (no message).
fn elems() -> impl Strategy<Value = Vec<Elem>> {
    prop_oneof![
        100 => vec(elem(128, comment()), 0..6),
        1 => vec(elem(16, option::of(text(8))), ELEMS_PER_MESSAGE - 6..ELEMS_PER_MESSAGE + 40),
    ]
}

fn set_spec() -> impl Strategy<Value = SetSpec> {
    (
        name(),
        any::<u32>(),
        any::<u32>(),
        any::<u32>(),
        option::of(any::<(u32, u32)>()),
        option::of(any::<u64>()),
        bytes(300),
    )
        .prop_map(|(name, flags, key_type, key_len, data, timeout_ms, udata)| SetSpec {
            name,
            flags,
            key_type,
            key_len,
            data,
            timeout_ms,
            udata,
        })
}

fn base_chain() -> impl Strategy<Value = BaseChain> {
    (select(&ChainType::ALL[..]), select(&Hook::ALL[..]), any::<i32>())
        .prop_map(|(chain_type, hook, priority)| BaseChain { chain_type, hook, priority })
}

/// One operation on a batch, as the message it should decode to (before truncation and
/// chunking, see [`expected`]).
fn op() -> impl Strategy<Value = Message> {
    let fam = || select(&NfFamily::ALL[..]);
    prop_oneof![
        1 => (fam(), name(), comment()).prop_map(|(family, name, comment)| Message::AddTable { family, name, comment }),
        1 => (fam(), name()).prop_map(|(family, name)| Message::DelTable { family, name }),
        1 => (fam(), name(), name(), option::of(base_chain()))
            .prop_map(|(family, table, name, base)| Message::AddChain { family, table, name, base }),
        1 => (fam(), name(), name()).prop_map(|(family, table, name)| Message::DelChain { family, table, name }),
        1 => (fam(), name(), name()).prop_map(|(family, table, chain)| Message::FlushChain { family, table, chain }),
        3 => (fam(), name(), name(), vec(expr(), 0..12), comment())
            .prop_map(|(family, table, chain, exprs, comment)| Message::AddRule { family, table, chain, exprs, comment }),
        1 => (fam(), name(), set_spec(), any::<u32>()).prop_map(|(family, table, spec, id)| Message::AddSet { family, table, spec, id }),
        1 => (fam(), name(), name()).prop_map(|(family, table, name)| Message::DelSet { family, table, name }),
        2 => (fam(), name(), name(), option::of(any::<u32>()), elems())
            .prop_map(|(family, table, set, set_id, elems)| Message::AddElems { family, table, set, set_id, elems }),
        1 => (fam(), name(), name(), elems()).prop_map(|(family, table, set, elems)| Message::DelElems { family, table, set, elems }),
        1 => (fam(), name(), name()).prop_map(|(family, table, set)| Message::FlushSet { family, table, set }),
    ]
}

/// Calls the [`Batch`] method of an operation (not `Message::encode_into`: the encoder under
/// test is the public API).
fn apply(b: &mut Batch, op: &Message) {
    match op {
        Message::BatchBegin | Message::BatchEnd => unreachable!("not an operation"),
        Message::AddTable { family, name, comment } => b.add_table(*family, name, comment.as_deref()),
        Message::DelTable { family, name } => b.del_table(*family, name),
        Message::AddChain { family, table, name, base } => b.add_chain(*family, table, name, base.as_ref()),
        Message::DelChain { family, table, name } => b.del_chain(*family, table, name),
        Message::FlushChain { family, table, chain } => b.flush_chain(*family, table, chain),
        Message::AddRule { family, table, chain, exprs, comment } => {
            b.add_rule(*family, table, chain, exprs, comment.as_deref())
        }
        Message::AddSet { family, table, spec, id } => b.add_set(*family, table, spec, *id),
        Message::DelSet { family, table, name } => b.del_set(*family, table, name),
        Message::AddElems { family, table, set, set_id, elems } => b.add_elems(*family, table, set, *set_id, elems),
        Message::DelElems { family, table, set, elems } => b.del_elems(*family, table, set, elems),
        Message::FlushSet { family, table, set } => b.flush_set(*family, table, set),
    }
}

/// The longest prefix of whole characters within COMMENT_MAX bytes (written independently of
/// batch.rs's `comment()`).
fn truncated(s: &str) -> String {
    let mut out = String::new();
    for c in s.chars() {
        if out.len() + c.len_utf8() > COMMENT_MAX {
            break;
        }
        out.push(c);
    }
    out
}

/// What the decoder must return for a batch of `ops`: comments truncated, elements in messages
/// of at most ELEMS_PER_MESSAGE (none for an empty list), deletions without data or comments.
fn expected(ops: &[Message]) -> Vec<Message> {
    let mut out = Vec::new();
    let trunc = |c: &Option<String>| c.as_deref().map(truncated);
    for op in ops {
        match op.clone() {
            Message::AddTable { family, name, comment } => {
                out.push(Message::AddTable { family, name, comment: trunc(&comment) })
            }
            Message::AddRule { family, table, chain, exprs, comment } => {
                out.push(Message::AddRule { family, table, chain, exprs, comment: trunc(&comment) })
            }
            Message::AddElems { family, table, set, set_id, elems } => {
                for chunk in elems.chunks(ELEMS_PER_MESSAGE) {
                    let elems =
                        chunk.iter().map(|e| Elem { comment: trunc(&e.comment), ..e.clone() }).collect::<Vec<_>>();
                    out.push(Message::AddElems { family, table: table.clone(), set: set.clone(), set_id, elems });
                }
            }
            Message::DelElems { family, table, set, elems } => {
                for chunk in elems.chunks(ELEMS_PER_MESSAGE) {
                    let elems = chunk
                        .iter()
                        .map(|e| Elem { key: e.key.clone(), data: None, timeout_ms: e.timeout_ms, comment: None })
                        .collect::<Vec<_>>();
                    out.push(Message::DelElems { family, table: table.clone(), set: set.clone(), elems });
                }
            }
            other => out.push(other),
        }
    }
    out
}

fn encode(first_seq: u32, ops: &[Message]) -> FinishedBatch {
    let mut b = Batch::new(first_seq);
    for op in ops {
        apply(&mut b, op);
    }
    b.finish()
}

// ---------------------------------------------------------------------------------------------
// Mutations of valid batches.

/// A single message re-encoded through [`Batch`]: its payload after the nlmsghdr.
fn reencode_one(m: &Message) -> Vec<u8> {
    let mut b = Batch::new(0);
    m.encode_into(&mut b);
    let fin = b.finish();
    let split = fin.split();
    assert_eq!(split.len(), 3, "{m:?} re-encodes as one message");
    split[1].2.to_vec()
}

/// Whatever the bytes: no panic; anything accepted re-encodes to exactly those bytes.
fn check_any_bytes(bytes: &[u8]) -> Result<(), TestCaseError> {
    if let Ok(d) = decode_batch(bytes) {
        prop_assert_eq!(&d.encode().bytes[..], bytes, "a decoded batch re-encodes to its bytes");
    }
    if let Ok(msgs) = decode_messages(bytes) {
        // decode_messages takes every message the framing gives; split_messages agrees on them.
        prop_assert_eq!(msgs.len(), split_messages(bytes).len());
    }
    for (ty, _, payload) in split_messages(bytes) {
        check_message(ty, payload)?;
    }
    Ok(())
}

fn check_message(ty: u16, payload: &[u8]) -> Result<(), TestCaseError> {
    match decode_message(ty, payload) {
        Ok(Message::BatchBegin | Message::BatchEnd) => {
            prop_assert_eq!(payload, &[0, 0, 0, 10][..], "the batch framing's nfgenmsg");
        }
        Ok(m) => {
            prop_assert_eq!((NFNL_SUBSYS_NFTABLES << 8) | (ty & 0xff), ty);
            prop_assert_eq!(reencode_one(&m), payload, "{:?} re-encodes to its payload", m);
        }
        Err(e) => {
            // Errors name a place inside the input (the end at most).
            let offset = error_offset(&e);
            prop_assert!(offset <= payload.len(), "{e} points past the payload of {} bytes", payload.len());
            let _ = e.to_string();
        }
    }
    Ok(())
}

fn error_offset(e: &DecodeError) -> usize {
    match e {
        DecodeError::Truncated { offset, .. }
        | DecodeError::TooShort { offset, .. }
        | DecodeError::Misaligned { offset, .. }
        | DecodeError::Padding { offset }
        | DecodeError::Header { offset, .. }
        | DecodeError::UnknownMessage { offset, .. }
        | DecodeError::UnexpectedAttr { offset, .. }
        | DecodeError::MissingAttr { offset, .. }
        | DecodeError::ExtraAttr { offset, .. }
        | DecodeError::NestedFlag { offset, .. }
        | DecodeError::ValueLength { offset, .. }
        | DecodeError::BadString { offset, .. }
        | DecodeError::BadValue { offset, .. }
        | DecodeError::UnknownExpr { offset, .. }
        | DecodeError::Userdata { offset, .. }
        | DecodeError::NotCanonical { offset, .. }
        | DecodeError::Batch { offset, .. } => *offset,
    }
}

fn msg_type() -> impl Strategy<Value = u16> {
    prop_oneof![
        4 => (0u16..=16).prop_map(|t| (NFNL_SUBSYS_NFTABLES << 8) | t),
        1 => select(&[NFNL_MSG_BATCH_BEGIN, NFNL_MSG_BATCH_END][..]),
        1 => any::<u16>(),
    ]
}

/// One nlmsghdr with `payload`, length right, and deliberately no padding (unlike
/// `netlink::message`): a random payload then also makes the framing of what follows odd.
fn nlmsg(ty: u16, flags: u16, seq: u32, payload: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(16 + payload.len());
    m.extend_from_slice(&((16 + payload.len()) as u32).to_ne_bytes());
    m.extend_from_slice(&ty.to_ne_bytes());
    m.extend_from_slice(&flags.to_ne_bytes());
    m.extend_from_slice(&seq.to_ne_bytes());
    m.extend_from_slice(&0u32.to_ne_bytes());
    m.extend_from_slice(payload);
    m
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(300), failure_persistence: None, ..ProptestConfig::default() })]

    /// Typed operations → Batch → bytes → decode_batch: the same operations (comments
    /// truncated, elements chunked, deletions keyed only), the MsgInfo bookkeeping matching
    /// the messages, and the decoded batch re-encoding to the same bytes.
    #[test]
    fn prop_batch_roundtrip(first_seq in any::<u32>(), ops in vec(op(), 0..8)) {
        let fin = encode(first_seq, &ops);
        let decoded = match decode_batch(&fin.bytes) {
            Ok(d) => d,
            Err(e) => return Err(TestCaseError::fail(format!("valid batch rejected: {e}"))),
        };
        prop_assert_eq!(decoded.first_seq, first_seq);
        prop_assert_eq!(&decoded.messages, &expected(&ops));
        prop_assert_eq!(decoded.messages.len(), fin.msgs.len());
        prop_assert_eq!(fin.last_seq, fin.msgs.last().map(|m| m.seq));
        let all = decode_messages(&fin.bytes).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(all.len(), fin.msgs.len() + 2);
        for (i, (d, info)) in all[1..all.len() - 1].iter().zip(&fin.msgs).enumerate() {
            prop_assert_eq!(d.seq, info.seq);
            prop_assert_eq!(d.seq, first_seq.wrapping_add(i as u32 + 1));
            prop_assert_eq!(&d.message, &decoded.messages[i]);
        }
        prop_assert_eq!(decoded.encode().bytes, fin.bytes);
    }

    /// A valid batch, mutated (bit flips, bytes set, truncation, insertions and deletions,
    /// length fields of messages and attributes set to 0, 1, off by one, huge; types and
    /// flags changed): decoding returns Ok or Err and never panics, and whatever it accepts
    /// re-encodes to exactly the mutated bytes.
    #[test]
    fn prop_decoder_never_panics_on_mutated_bytes(
        first_seq in any::<u32>(),
        ops in vec(op(), 1..5),
        mutations in vec(mutation(), 1..6),
    ) {
        let mut bytes = encode(first_seq, &ops).bytes;
        for m in &mutations {
            mutate(&mut bytes, m, |_| NFGENMSG_END);
        }
        check_any_bytes(&bytes)?;
    }

    /// Random bytes as a batch, as one message's payload of any type, as well-framed attribute
    /// trees of plausible types and values behind a valid nfgenmsg, and as such a message inside
    /// a valid batch frame: no panic; anything accepted re-encodes to its bytes.
    #[test]
    fn prop_decoder_never_panics_on_random_bytes(
        raw in bytes(512),
        ty in msg_type(),
        family in any::<u8>(),
        tree in tlvs(),
        flags in prop_oneof![Just(NLM_F_REQUEST | NLM_F_CREATE | NLM_F_ACK), any::<u16>()],
    ) {
        check_any_bytes(&raw)?;
        check_message(ty, &raw)?;
        let mut payload = vec![family, 0, 0, 0];
        payload.extend(build_tlvs(&tree));
        check_message(ty, &payload)?;
        let mut framed = nlmsg(NFNL_MSG_BATCH_BEGIN, NLM_F_REQUEST, 7, &[0, 0, 0, 10]);
        framed.extend(nlmsg(ty, flags, 8, &payload));
        framed.extend(nlmsg(NFNL_MSG_BATCH_END, NLM_F_REQUEST, 9, &[0, 0, 0, 10]));
        check_any_bytes(&framed)?;
    }
}

// ---------------------------------------------------------------------------------------------
// Plain tests: limits and error reports.

/// An element list nest and an expression list nest close to the 64 KiB a netlink attribute
/// can hold, and a comment exactly COMMENT_MAX bytes long: decoded back.
#[test]
fn near_the_limits() {
    // 255 elements of 240-byte keys: 255 * (4 + 4 + 4 + 240) = 64,260 bytes of element list.
    let elems: Vec<Elem> =
        (0..255u8).map(|i| Elem { key: vec![i; 240], data: None, timeout_ms: None, comment: None }).collect();
    let big = vec![0xa5; 65_535 - 4 - 4 - 4 - 8 - 12 - 8 - 4 - 4 - 100];
    let exprs = vec![Expr::Cmp { sreg: 1, op: CmpOp::Eq, data: big }];
    let c = "é".repeat(COMMENT_MAX / 2);
    let ops = vec![
        Message::AddElems { family: NfFamily::Ip, table: "t".into(), set: "s".into(), set_id: Some(1), elems },
        Message::AddRule {
            family: NfFamily::Ip,
            table: "t".into(),
            chain: "c".into(),
            exprs,
            comment: Some(c.clone() + "x"),
        },
    ];
    let fin = encode(1, &ops);
    let d = decode_batch(&fin.bytes).unwrap();
    assert_eq!(d.messages, expected(&ops));
    let Message::AddRule { comment, .. } = &d.messages[1] else { panic!() };
    assert_eq!(comment.as_deref(), Some(c.as_str()), "truncated to exactly COMMENT_MAX bytes");
    assert_eq!(d.encode().bytes, fin.bytes);
}

#[test]
fn errors_name_the_place() {
    let fin = encode(1, &[Message::AddTable { family: NfFamily::Ip, name: "t".into(), comment: None }]);
    let b = &fin.bytes;
    // BATCH_BEGIN is bytes 0..20; the table message starts at 20, its attributes at 40: the name
    // (8 bytes with padding), then the flags at 48. The message is 36 bytes long.
    assert_eq!(
        decode_batch(&b[..44]),
        Err(DecodeError::Truncated { offset: 20, what: "netlink message", need: 36, have: 24 })
    );
    // The flags attribute turned into a nest (NLA_F_NESTED is the high bit of its type).
    let mut nested = b.clone();
    nested[48 + 3] |= 0x80;
    let e = decode_batch(&nested).unwrap_err();
    assert_eq!(e, DecodeError::NestedFlag { offset: 48, context: "NFTA_TABLE", attr: NFTA_TABLE_FLAGS, nested: true });
    assert_eq!(e.to_string(), "byte 48: NFTA_TABLE attribute 2: NLA_F_NESTED set on a value");
    // The same message alone: offsets from its payload (the nfgenmsg).
    let e = decode_message(b[24] as u16 | (b[25] as u16) << 8, &nested[36..56]).unwrap_err();
    assert_eq!(e, DecodeError::NestedFlag { offset: 12, context: "NFTA_TABLE", attr: NFTA_TABLE_FLAGS, nested: true });
    assert!(matches!(decode_batch(&[]), Err(DecodeError::Batch { offset: 0, .. })));
    assert!(matches!(decode_message(0x0a00, &[2, 0]), Err(DecodeError::Truncated { what: "nfgenmsg", .. })));
}

/// More elements than one message takes: ELEMS_PER_MESSAGE per message, in order, additions
/// with their data and comments, deletions keyed only (the generators reach this rarely, to
/// stay cheap).
#[test]
fn elements_are_chunked() {
    let elems: Vec<Elem> = (0..2 * ELEMS_PER_MESSAGE as u32 + 88)
        .map(|i| Elem {
            key: i.to_be_bytes().to_vec(),
            data: Some(ElemData::Verdict(Verdict::Goto(format!("c-{i}")))),
            timeout_ms: Some(u64::from(i)),
            comment: Some(format!("svc {i}")),
        })
        .collect();
    let ops = vec![
        Message::AddElems {
            family: NfFamily::Ip6,
            table: "t".into(),
            set: "s".into(),
            set_id: None,
            elems: elems.clone(),
        },
        Message::DelElems { family: NfFamily::Ip6, table: "t".into(), set: "s".into(), elems },
    ];
    let fin = encode(u32::MAX - 2, &ops);
    let d = decode_batch(&fin.bytes).unwrap();
    let sizes: Vec<usize> = d
        .messages
        .iter()
        .map(|m| match m {
            Message::AddElems { elems, .. } | Message::DelElems { elems, .. } => elems.len(),
            _ => 0,
        })
        .collect();
    assert_eq!(sizes, [256, 256, 88, 256, 256, 88]);
    assert_eq!(d.messages, expected(&ops));
    assert_eq!(d.first_seq, u32::MAX - 2, "seqs wrap");
    assert_eq!(d.encode().bytes, fin.bytes);
}
