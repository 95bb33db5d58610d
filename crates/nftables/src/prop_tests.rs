//! Property tests of everything that parses what the kernel sends us: netlink datagrams
//! (nft-wire's `netlink::messages`, `attrs`, `nlmsg_error`, `ext_ack_message`, `str_attr`), conntrack
//! entries, interface addresses, trace events and the table dumps of drift checks and `trace`.
//! Those bytes come from the kernel, but a parser that panics on a short or odd answer takes the
//! daemon down with it: each must return an error or None, never panic, on any bytes. Where the
//! reply is well-formed, the parsed value must be the one encoded.
//!
//! Case counts: `KNP_FUZZ_CASES` (`make fuzz` sets 10^6 in release), else a default small enough
//! for `make test`. No failure persistence: a failing case found here becomes a plain `#[test]`.

use std::net::IpAddr;

use nftproxy_nft_wire::consts::*;
use nftproxy_nft_wire::mutate::{mutate, mutation};
use nftproxy_nft_wire::{Batch, Expr, PayloadBase};
use proptest::collection::vec;
use proptest::option;
use proptest::prelude::*;
use proptest::sample::select;

use crate::addrs::parse_newaddr;
use crate::conntrack::{CtEntry, parse_entry};
use crate::drift::{counted_elements, dumped_chain, dumped_rule_chain, dumped_set};
use crate::ruleset::TABLE;
use nftproxy_nft_wire::Hook;
use nftproxy_nft_wire::netlink::{Writer, attrs, ext_ack_message, message, messages, name_attr, nlmsg_error, str_attr};

use crate::trace::{
    KeyComment, MapHit, RuleInfo, StepKind, TraceAttrs, TraceState, TraceVerdict, base_chain_hook, element_comments,
    l4proto, packet_view, parse_trace, rule_info, trace_verdict, udata_comment,
};

fn cases(default: u32) -> u32 {
    std::env::var("KNP_FUZZ_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

// Numbers of the replies (uapi headers), spelled here rather than exported by the parsers.
const NLMSG_ERROR: u16 = 2;
const NLM_F_CAPPED: u16 = 0x100;
const NLM_F_ACK_TLVS: u16 = 0x200;
const NLMSGERR_ATTR_MSG: u16 = 1;
const NLMSGERR_ATTR_OFFS: u16 = 2;
/// (NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_NEW
const CT_NEW: u16 = 1 << 8;
const CTA_TUPLE_ORIG: u16 = 1;
const CTA_TUPLE_REPLY: u16 = 2;
const CTA_STATUS: u16 = 3;
const CTA_TUPLE_IP: u16 = 1;
const CTA_TUPLE_PROTO: u16 = 2;
const RTM_NEWADDR: u16 = 20;
const IFA_ADDRESS: u16 = 1;
const IFA_LOCAL: u16 = 2;
const IFA_LABEL: u16 = 3;
const NFT_TRACE: u16 = (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_TRACE;
const NFT_NEWCHAIN: u16 = (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_NEWCHAIN;
const NFT_NEWRULE: u16 = (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_NEWRULE;
const NFT_NEWSET: u16 = (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_NEWSET;
const NFT_NEWSETELEM: u16 = (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_NEWSETELEM;

// ---------------------------------------------------------------------------------------------
// Building replies.

// The replies are written with nft-wire's emit side (the parse side is what is tested).

fn attr(b: &mut Vec<u8>, ty: u16, v: &[u8]) {
    let mut w = Writer::default();
    w.bytes(ty, v);
    b.extend(w.into_bytes());
}

fn str_a(b: &mut Vec<u8>, ty: u16, s: &str) {
    b.extend(name_attr(ty, s));
}

fn nest(b: &mut Vec<u8>, ty: u16, body: impl FnOnce(&mut Vec<u8>)) {
    let mut inner = Vec::new();
    body(&mut inner);
    attr(b, ty | NLA_F_NESTED, &inner);
}

/// An nfgenmsg (family, version 0, res_id) and attributes.
fn nfgen(family: u8, attrs: Vec<u8>) -> Vec<u8> {
    [vec![family, 0, 0, 0], attrs].concat()
}

fn ip_bytes(ip: IpAddr) -> Vec<u8> {
    match ip {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    }
}

/// One conntrack tuple: CTA_TUPLE_IP { src, dst }, CTA_TUPLE_PROTO { num, sport, dport }.
fn ct_tuple(b: &mut Vec<u8>, ty: u16, src: IpAddr, dst: IpAddr, proto: u8, sport: u16, dport: u16) {
    nest(b, ty, |b| {
        nest(b, CTA_TUPLE_IP, |b| {
            // CTA_IP_V4_SRC/DST are 1/2, CTA_IP_V6_SRC/DST 3/4.
            let (s, d) = if src.is_ipv4() { (1, 2) } else { (3, 4) };
            attr(b, s, &ip_bytes(src));
            attr(b, d, &ip_bytes(dst));
        });
        nest(b, CTA_TUPLE_PROTO, |b| {
            attr(b, 1, &[proto]);
            attr(b, 2, &sport.to_be_bytes());
            attr(b, 3, &dport.to_be_bytes());
        });
    });
}

/// What parsing one message of a reply must give.
#[derive(Clone, Debug)]
enum Expect {
    Error { errno: i32, ext_ack: Option<String> },
    Ct(CtEntry),
    Addr(Option<IpAddr>),
    Trace { attrs: TraceAttrs, hook: Option<Hook>, map_hit: Option<MapHit> },
    Chain { name: String, hook: Option<Hook> },
    Rule { chain: String, handle: u64, vmap: Option<String>, comment: Option<String> },
    Set { name: String, flags: u32 },
    Elems { count: usize, elems: Vec<KeyComment> },
}

/// A message of a reply: its bytes (nlmsghdr included) and what it parses to.
#[derive(Clone, Debug)]
struct Part {
    msg: Vec<u8>,
    expect: Expect,
}

/// No NUL (the kernel's strings are C strings), odd UTF-8 included.
const ALPHABET: &[char] = &['a', 'z', '-', '/', ':', '.', ' ', '0', '\u{1}', 'é', '☃', '😀'];

fn text(max: usize) -> impl Strategy<Value = String> {
    vec(select(ALPHABET), 0..=max).prop_map(String::from_iter)
}

fn ip(v6: bool) -> BoxedStrategy<IpAddr> {
    if v6 { any::<[u8; 16]>().prop_map(IpAddr::from).boxed() } else { any::<[u8; 4]>().prop_map(IpAddr::from).boxed() }
}

fn error_part() -> impl Strategy<Value = Part> {
    (1i32..4096, option::of(text(40)), any::<u32>(), any::<bool>()).prop_map(|(errno, msg, seq, offs)| {
        let mut p = (-errno).to_ne_bytes().to_vec();
        // The capped original header (NETLINK_CAP_ACK): 16 bytes of the failing message.
        p.extend(message(NFT_NEWRULE, NLM_F_REQUEST, seq, &[])[..16].to_vec());
        let mut flags = NLM_F_CAPPED;
        if let Some(m) = &msg {
            flags |= NLM_F_ACK_TLVS;
            if offs {
                attr(&mut p, NLMSGERR_ATTR_OFFS, &40u32.to_ne_bytes());
            }
            str_a(&mut p, NLMSGERR_ATTR_MSG, m);
        }
        Part { msg: message(NLMSG_ERROR, flags, seq, &p), expect: Expect::Error { errno, ext_ack: msg } }
    })
}

fn ct_part() -> impl Strategy<Value = Part> {
    any::<bool>()
        .prop_flat_map(|v6| (ip(v6), ip(v6), ip(v6), any::<u8>(), any::<u16>(), any::<u16>(), any::<u16>(), Just(v6)))
        .prop_map(|(src, dst, reply_src, proto, sport, dport, reply_sport, v6)| {
            let e = CtEntry {
                proto,
                orig_src: src,
                orig_dst: dst,
                orig_sport: sport,
                orig_dport: dport,
                reply_src,
                reply_sport,
            };
            let mut a = Vec::new();
            ct_tuple(&mut a, CTA_TUPLE_ORIG, src, dst, proto, sport, dport);
            ct_tuple(&mut a, CTA_TUPLE_REPLY, reply_src, src, proto, reply_sport, sport);
            attr(&mut a, CTA_STATUS, &0x18eu32.to_be_bytes());
            let family = if v6 { NFPROTO_IPV6 } else { NFPROTO_IPV4 };
            Part { msg: message(CT_NEW, 0x2, 1, &nfgen(family, a)), expect: Expect::Ct(e) }
        })
}

fn addr_part() -> impl Strategy<Value = Part> {
    any::<bool>().prop_flat_map(|v6| (Just(v6), ip(v6), option::of(ip(v6)), text(15))).prop_map(
        |(v6, address, local, label)| {
            let family = if v6 { libc::AF_INET6 } else { libc::AF_INET } as u8;
            // struct ifaddrmsg: family, prefix length, flags, scope, interface index.
            let mut p = vec![family, 24, 0x80, 0];
            p.extend_from_slice(&7u32.to_ne_bytes());
            attr(&mut p, IFA_ADDRESS, &ip_bytes(address));
            if let Some(l) = local {
                attr(&mut p, IFA_LOCAL, &ip_bytes(l));
            }
            str_a(&mut p, IFA_LABEL, &label);
            Part { msg: message(RTM_NEWADDR, 0x2, 1, &p), expect: Expect::Addr(Some(local.unwrap_or(address))) }
        },
    )
}

/// Verdict code (as the kernel sends it) and its text (what the typed verdict displays).
fn verdict() -> impl Strategy<Value = (i32, Option<String>, String)> {
    prop_oneof![
        select(&[(0, "drop"), (1, "accept"), (-1, "continue"), (-5, "return"), (2, "stolen")][..])
            .prop_map(|(c, t)| (c, None, t.to_string())),
        (select(&[(-3, "jump"), (-4, "goto")][..]), text(12)).prop_map(|((c, w), chain)| (
            c,
            Some(chain.clone()),
            format!("{w} {chain}")
        )),
        (100i32..1000).prop_map(|c| (c, None, format!("verdict {c}"))),
    ]
}

/// A trace event of a TCP/UDP packet; when in our table, the session knows the chain as a base
/// chain of prerouting and the rule as a lookup of the verdict map `service-ips`, whose element
/// for the packet's destination has a comment.
fn trace_part() -> impl Strategy<Value = Part> {
    (
        (any::<bool>(), any::<[u8; 4]>(), any::<[u8; 4]>(), select(&[6u8, 17, 132][..]), any::<(u16, u16)>()),
        (prop_oneof![Just(TABLE.to_string()), text(10)], text(12), option::of(any::<u64>()), 1u32..=3),
        (option::of(verdict()), any::<u32>(), any::<bool>(), text(10)),
    )
        .prop_map(
            |((v6, s4, d4, proto, (sport, dport)), (table, chain, handle, kind), (verdict, id, base, comment))| {
                // IPv6: fd00::a.b.c.d, from the same random bytes.
                let six = |a: [u8; 4]| {
                    let mut v = [0u8; 16];
                    v[0] = 0xfd;
                    v[12..].copy_from_slice(&a);
                    IpAddr::from(v)
                };
                let (src, dst) = if v6 { (six(s4), six(d4)) } else { (IpAddr::from(s4), IpAddr::from(d4)) };
                let net = match (src, dst) {
                    (IpAddr::V4(s), IpAddr::V4(d)) => {
                        let mut h = vec![0x45, 0, 0, 40, 0, 0, 0x40, 0, 64, proto, 0, 0];
                        h.extend(s.octets());
                        h.extend(d.octets());
                        h
                    }
                    (s, d) => {
                        let mut h = vec![0x60, 0, 0, 0, 0, 20, proto, 64];
                        h.extend(ip_bytes(s));
                        h.extend(ip_bytes(d));
                        h
                    }
                };
                let mut transport = sport.to_be_bytes().to_vec();
                transport.extend(dport.to_be_bytes());
                transport.extend([0; 4]);
                let nfproto = if v6 { u32::from(NFPROTO_IPV6) } else { u32::from(NFPROTO_IPV4) };
                let mut a = Vec::new();
                attr(&mut a, NFTA_TRACE_ID, &id.to_be_bytes());
                str_a(&mut a, NFTA_TRACE_TABLE, &table);
                str_a(&mut a, NFTA_TRACE_CHAIN, &chain);
                attr(&mut a, NFTA_TRACE_TYPE, &kind.to_be_bytes());
                if let Some(h) = handle {
                    attr(&mut a, NFTA_TRACE_RULE_HANDLE, &h.to_be_bytes());
                }
                if let Some((code, vchain, _)) = &verdict {
                    nest(&mut a, NFTA_TRACE_VERDICT, |b| {
                        attr(b, NFTA_VERDICT_CODE, &code.to_be_bytes());
                        if let Some(c) = vchain {
                            str_a(b, NFTA_VERDICT_CHAIN, c);
                        }
                    });
                }
                attr(&mut a, NFTA_TRACE_NFPROTO, &nfproto.to_be_bytes());
                attr(&mut a, NFTA_TRACE_NETWORK_HEADER, &net);
                attr(&mut a, NFTA_TRACE_TRANSPORT_HEADER, &transport);
                let attrs = TraceAttrs {
                    id,
                    table: table.clone(),
                    chain: chain.clone(),
                    handle,
                    kind,
                    verdict: verdict.map(|(code, chain, text)| {
                        let v = TraceVerdict::from_code(code, chain);
                        assert_eq!(v.to_string(), text);
                        v
                    }),
                    net: Some(net),
                    transport: Some(transport),
                    nfproto,
                };
                let ours = table == TABLE;
                // A map hit needs our rule (a handle) and the element: `trace_state` and
                // `service_elements` provide both for the events of our base chains.
                let hook = (ours && base).then_some(Hook::Prerouting);
                let map_hit = (ours && base && handle.is_some())
                    .then(|| MapHit { set: "service-ips".into(), element: comment.clone() });
                let family = if v6 { NFPROTO_IPV6 } else { NFPROTO_IPV4 };
                Part {
                    msg: message(NFT_TRACE, 0, 0, &nfgen(family, a)),
                    expect: Expect::Trace { attrs, hook, map_hit },
                }
            },
        )
}

fn chain_part() -> impl Strategy<Value = Part> {
    (text(20), option::of(0u32..6)).prop_map(|(name, hook)| {
        let mut a = Vec::new();
        str_a(&mut a, NFTA_CHAIN_TABLE, TABLE);
        str_a(&mut a, NFTA_CHAIN_NAME, &name);
        attr(&mut a, 6 /* NFTA_CHAIN_HANDLE */, &9u64.to_be_bytes());
        if let Some(h) = hook {
            nest(&mut a, NFTA_CHAIN_HOOK, |b| {
                attr(b, NFTA_HOOK_HOOKNUM, &h.to_be_bytes());
                attr(b, NFTA_HOOK_PRIORITY, &(-100i32).to_be_bytes());
            });
            attr(&mut a, NFTA_CHAIN_POLICY, &1u32.to_be_bytes());
            str_a(&mut a, NFTA_CHAIN_TYPE, "nat");
        }
        // Hook 5 is none this reader knows: not a base chain it can name.
        let hook = hook.and_then(Hook::from_number);
        Part { msg: message(NFT_NEWCHAIN, 0x2, 1, &nfgen(2, a)), expect: Expect::Chain { name, hook } }
    })
}

/// A rule as the kernel dumps it: what nft-wire encodes, plus the handle.
fn rule_part() -> impl Strategy<Value = Part> {
    (text(16), any::<u64>(), option::of(text(16)), option::of(text(30))).prop_map(|(chain, handle, vmap, comment)| {
        let mut exprs = vec![Expr::Payload { dreg: 1, base: PayloadBase::Network, offset: 16, len: 4 }];
        if let Some(set) = &vmap {
            let dreg = Some(NFT_REG_VERDICT);
            exprs.push(Expr::Lookup { sreg: 1, dreg, set: set.clone(), set_id: None, invert: false });
        }
        let mut b = Batch::new(0);
        b.add_rule(nftproxy_nft_wire::NfFamily::Ip, TABLE, &chain, &exprs, comment.as_deref());
        let fin = b.finish();
        let mut a = fin.split()[1].2[4..].to_vec();
        attr(&mut a, NFTA_RULE_HANDLE, &handle.to_be_bytes());
        Part {
            msg: message(NFT_NEWRULE, 0x2, 1, &nfgen(2, a)),
            // The encoder truncates comments to COMMENT_MAX; 30 characters stay within.
            expect: Expect::Rule { chain, handle, vmap, comment },
        }
    })
}

fn set_part() -> impl Strategy<Value = Part> {
    (text(20), any::<u32>()).prop_map(|(name, flags)| {
        let mut a = Vec::new();
        str_a(&mut a, NFTA_SET_TABLE, TABLE);
        str_a(&mut a, NFTA_SET_NAME, &name);
        attr(&mut a, NFTA_SET_FLAGS, &flags.to_be_bytes());
        attr(&mut a, NFTA_SET_KEY_LEN, &4u32.to_be_bytes());
        Part { msg: message(NFT_NEWSET, 0x2, 1, &nfgen(2, a)), expect: Expect::Set { name, flags } }
    })
}

/// Elements of a set dump: key, comment, and the interval-end flag (not counted).
fn elems_part() -> impl Strategy<Value = Part> {
    vec((vec(any::<u8>(), 0..20), option::of(text(20)), any::<bool>()), 0..8).prop_map(|elems| {
        let mut a = Vec::new();
        str_a(&mut a, NFTA_SET_ELEM_LIST_TABLE, TABLE);
        str_a(&mut a, NFTA_SET_ELEM_LIST_SET, "s");
        nest(&mut a, NFTA_SET_ELEM_LIST_ELEMENTS, |b| {
            for (key, comment, end) in &elems {
                nest(b, NFTA_LIST_ELEM, |b| {
                    nest(b, NFTA_SET_ELEM_KEY, |b| attr(b, NFTA_DATA_VALUE, key));
                    if *end {
                        attr(b, NFTA_SET_ELEM_FLAGS, &NFT_SET_ELEM_INTERVAL_END.to_be_bytes());
                    }
                    if let Some(c) = comment {
                        let mut u = vec![0, (c.len() + 1) as u8];
                        u.extend(c.as_bytes());
                        u.push(0);
                        attr(b, NFTA_SET_ELEM_USERDATA, &u);
                    }
                });
            }
        });
        let count = elems.iter().filter(|(_, _, end)| !end).count();
        let elems = elems.into_iter().map(|(k, c, _)| (k, c)).collect();
        Part { msg: message(NFT_NEWSETELEM, 0x2, 1, &nfgen(2, a)), expect: Expect::Elems { count, elems } }
    })
}

fn part() -> impl Strategy<Value = Part> {
    prop_oneof![
        2 => error_part(),
        2 => ct_part(),
        2 => addr_part(),
        3 => trace_part(),
        1 => chain_part(),
        2 => rule_part(),
        1 => set_part(),
        2 => elems_part(),
    ]
}

/// A trace session's state: every chain of ours a prerouting base chain (the parts whose hook
/// is expected say `base`), and every rule a lookup of `service-ips`.
fn trace_state(parts: &[Part]) -> TraceState {
    let mut st = TraceState::default();
    for p in parts {
        if let Expect::Trace { attrs, hook: Some(_), .. } = &p.expect {
            st.base_hooks.insert(attrs.chain.clone(), Hook::Prerouting);
            if let Some(h) = attrs.handle {
                let info =
                    RuleInfo { text: "vmap @service-ips".into(), vmap: Some("service-ips".into()), rejects: false };
                st.rules.insert((attrs.chain.clone(), h), info);
            }
        }
    }
    st
}

/// The elements of `service-ips` the trace state dumps: for every trace part expecting a map
/// hit, its destination's key (with a byte more: lookups match by prefix) and comment.
fn service_elements(parts: &[Part]) -> Vec<KeyComment> {
    let mut out = Vec::new();
    for p in parts {
        if let Expect::Trace { attrs, map_hit: Some(hit), .. } = &p.expect {
            let net = attrs.net.as_deref().unwrap_or_default();
            let view = packet_view(net, attrs.transport.as_deref(), 0).unwrap();
            let mut key = ip_bytes(view.dst);
            key.extend([l4proto(net), 0, 0, 0]);
            key.extend(view.dport.unwrap().to_be_bytes());
            key.push(0xee);
            out.push((key, Some(hit.element.clone())));
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Running the parsers.

/// Every parser on one payload, whatever its type: results ignored, panics not.
fn every_parser(payload: &[u8], flags: u16, st: &mut TraceState, elements: &[KeyComment]) {
    let errno = nlmsg_error(payload);
    match payload.get(..4) {
        Some(b) => assert_eq!(errno, i32::from_ne_bytes([b[0], b[1], b[2], b[3]])),
        None => assert_eq!(errno, -libc::EPROTO),
    }
    let ack = ext_ack_message(flags, payload);
    assert!(ack.is_none() || (flags & NLM_F_ACK_TLVS != 0 && payload.len() >= 20));
    assert!(!str_attr(payload).contains('\0'));
    let mut total = 0;
    for (_, v) in attrs(payload) {
        total += 4 + v.len();
    }
    assert!(total <= payload.len(), "attributes stay inside the buffer, without overlapping");
    let _ = parse_entry(payload);
    if let Some(a) = parse_newaddr(payload) {
        let v6 = payload.first() == Some(&(libc::AF_INET6 as u8));
        assert_eq!(a.is_ipv6(), v6);
    }
    let _ = parse_trace(payload);
    let _ = st.event(payload, &mut |_| Ok(elements.to_vec()));
    let _ = rule_info(payload);
    let _ = udata_comment(payload);
    let _ = trace_verdict(payload);
    let _ = packet_view(payload, Some(payload), 2);
    let _ = l4proto(payload);
    let _ = base_chain_hook(payload);
    let _ = element_comments(payload);
    let _ = dumped_chain(payload);
    let _ = dumped_rule_chain(payload);
    let _ = dumped_set(payload);
    let _ = counted_elements(payload);
    // Also as what follows the nfgenmsg (the dump parsers get that), and as a datagram.
    if let Some(body) = payload.get(4..) {
        let _ = rule_info(body);
        let _ = base_chain_hook(body);
        let _ = element_comments(body);
        let _ = dumped_chain(body);
        let _ = dumped_set(body);
        let _ = counted_elements(body);
    }
    let _ = messages(payload).count();
}

/// A datagram through `messages` and every parser; messages stay inside the buffer.
fn every_message(buf: &[u8], st: &mut TraceState, elements: &[KeyComment]) {
    let mut total = 0;
    for (_, flags, _, payload) in messages(buf) {
        total += 16 + payload.len();
        every_parser(payload, flags, st, elements);
    }
    assert!(total <= buf.len());
}

/// A well-formed message parsed by the parser of its kind: the value encoded.
fn check_well_formed(p: &Part, st: &mut TraceState, elements: &[KeyComment]) -> Result<(), TestCaseError> {
    let all: Vec<_> = messages(&p.msg).collect();
    prop_assert_eq!(all.len(), 1);
    let (_, flags, _, payload) = all[0];
    let body = payload.get(4..).unwrap_or_default();
    match &p.expect {
        Expect::Error { errno, ext_ack } => {
            prop_assert_eq!(-nlmsg_error(payload), *errno);
            prop_assert_eq!(&ext_ack_message(flags, payload), ext_ack);
        }
        Expect::Ct(e) => prop_assert_eq!(parse_entry(payload), Some(e.clone())),
        Expect::Addr(a) => prop_assert_eq!(&parse_newaddr(payload), a),
        Expect::Trace { attrs, hook, map_hit } => {
            prop_assert_eq!(parse_trace(payload), Some(attrs.clone()));
            let ev = st.event(payload, &mut |_| Ok(elements.to_vec())).unwrap().unwrap();
            prop_assert_eq!(ev.id, attrs.id);
            prop_assert_eq!(&ev.table, &attrs.table);
            prop_assert_eq!(&ev.chain, &attrs.chain);
            prop_assert_eq!(ev.rule_handle, attrs.handle);
            prop_assert_eq!(&ev.verdict, &attrs.verdict);
            prop_assert_eq!(ev.family.word(), if attrs.nfproto == u32::from(NFPROTO_IPV6) { "ip6" } else { "ip" });
            let kind = match (attrs.kind, attrs.handle) {
                (NFT_TRACETYPE_RULE, None) | (NFT_TRACETYPE_RETURN, _) => StepKind::Return,
                (NFT_TRACETYPE_RULE, Some(_)) => StepKind::Rule,
                _ => StepKind::Policy,
            };
            prop_assert_eq!(ev.kind, kind);
            // The hook of a base chain of ours sticks to the packet (its id) afterwards.
            if hook.is_some() {
                prop_assert_eq!(ev.hook, *hook);
            }
            let packet = ev.packet.unwrap();
            let net = attrs.net.as_deref().unwrap_or_default();
            let transport = attrs.transport.as_deref().unwrap_or_default();
            let (src, dst) =
                if packet.src.is_ipv6() { (&net[8..24], &net[24..40]) } else { (&net[12..16], &net[16..20]) };
            prop_assert_eq!((&ip_bytes(packet.src)[..], &ip_bytes(packet.dst)[..]), (src, dst));
            prop_assert_eq!(packet.sport, Some(u16::from_be_bytes([transport[0], transport[1]])));
            prop_assert_eq!(packet.dport, Some(u16::from_be_bytes([transport[2], transport[3]])));
            if map_hit.is_some() {
                prop_assert_eq!(&ev.map_hit, map_hit);
            }
        }
        Expect::Chain { name, hook } => {
            prop_assert_eq!(dumped_chain(body), Some(name.clone()));
            prop_assert_eq!(base_chain_hook(body), hook.map(|h| (name.clone(), h)));
        }
        Expect::Rule { chain, handle, vmap, comment } => {
            prop_assert_eq!(dumped_rule_chain(body), Some(chain.clone()));
            let (c, h, info) = rule_info(body).unwrap();
            prop_assert_eq!((&c, h), (chain, *handle));
            prop_assert_eq!(&info.vmap, vmap);
            let mut text = vmap.iter().map(|m| format!("vmap @{m}")).collect::<Vec<_>>();
            text.extend(comment.iter().map(|c| format!("\"{c}\"")));
            prop_assert_eq!(info.text, text.join(" "));
        }
        Expect::Set { name, flags } => {
            prop_assert_eq!(dumped_set(body).map(|s| (s.name, s.flags, s.key_len)), Some((name.clone(), *flags, 4)))
        }
        Expect::Elems { count, elems } => {
            prop_assert_eq!(counted_elements(body), *count);
            prop_assert_eq!(&element_comments(body), elems);
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Mutations: nft-wire's (`nftproxy_nft_wire::mutate`), with this module's header layouts.

/// Where a reply's attributes begin, by message type: after the nlmsghdr and an nlmsgerr (errno
/// and the original header), an ifaddrmsg, or an nfgenmsg.
fn attrs_at(msg_type: u16) -> usize {
    match msg_type {
        NLMSG_ERROR => 16 + 20,
        RTM_NEWADDR => 16 + 8,
        _ => 16 + 4,
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(500), failure_persistence: None, ..ProptestConfig::default() })]

    /// Any bytes, as a datagram and as a message payload with any flags, into every parser: no
    /// panic; errno and ext-ack follow their definitions; strings hold no NUL; messages and
    /// attributes stay inside the buffer.
    #[test]
    fn prop_reply_parsers_never_panic_on_random_bytes(
        buf in vec(any::<u8>(), 0..600),
        flags in prop_oneof![Just(NLM_F_CAPPED | NLM_F_ACK_TLVS), any::<u16>()],
        known in any::<bool>(),
    ) {
        let mut st = TraceState::default();
        if known {
            // So the event path looks rules and maps up whatever the chain and handle.
            st.base_hooks.insert(String::new(), Hook::Prerouting);
        }
        let elements = element_comments(&buf);
        every_parser(&buf, flags, &mut st, &elements);
        every_message(&buf, &mut st, &elements);
    }

    /// Datagrams of well-formed replies (NLMSG_ERROR with and without ext-ack TLVs, conntrack
    /// entries, RTM_NEWADDR, trace events, chain, rule, set and element dumps) parse to exactly
    /// what was encoded; then, mutated (truncated, lengths set to 0, 1, off by one, huge,
    /// attribute and message types changed, bytes flipped, inserted, deleted), every parser
    /// returns an error or None and never panics.
    #[test]
    fn prop_reply_parsers_never_panic_on_mutated_replies(
        parts in vec(part(), 1..5),
        mutations in vec(mutation(), 1..6),
    ) {
        let elements = service_elements(&parts);
        let mut st = trace_state(&parts);
        for p in &parts {
            check_well_formed(p, &mut st, &elements)?;
        }
        let mut buf: Vec<u8> = parts.iter().flat_map(|p| p.msg.iter().copied()).collect();
        prop_assert_eq!(messages(&buf).count(), parts.len());
        for m in &mutations {
            mutate(&mut buf, m, attrs_at);
        }
        every_message(&buf, &mut st, &elements);
        every_parser(&buf, NLM_F_ACK_TLVS, &mut st, &elements);
    }
}

/// Hand-picked hostile replies, each at a length check of one parser: None or an error.
#[test]
fn hostile_replies_are_none_or_errors() {
    // A datagram whose message claims 4 GiB, and one claiming less than its header.
    let mut huge = message(NLMSG_ERROR, 0, 1, &[0; 20]);
    huge[..4].copy_from_slice(&u32::MAX.to_ne_bytes());
    assert_eq!(messages(&huge).count(), 0);
    // An attribute claiming 64 KiB in a 12-byte buffer; one of length 0 (would never advance).
    assert_eq!(attrs(&[0xff, 0xff, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0]).count(), 0);
    assert_eq!(attrs(&[0, 0, 1, 0, 0, 0, 0, 0]).count(), 0);
    // Ext-ack TLVs past the end of an error.
    let mut err = (-22i32).to_ne_bytes().to_vec();
    err.extend([0; 16]);
    err.extend([200, 0, NLMSGERR_ATTR_MSG as u8, 0, b'x', 0]);
    assert_eq!(ext_ack_message(NLM_F_ACK_TLVS, &err), None);
    // Conntrack: addresses of the wrong length, a tuple nest cut short.
    let mut ct = vec![2, 0, 0, 0];
    nest(&mut ct, CTA_TUPLE_ORIG, |b| nest(b, CTA_TUPLE_IP, |b| attr(b, 1, &[10, 0, 0])));
    assert_eq!(parse_entry(&ct), None);
    ct.truncate(ct.len() - 2);
    assert_eq!(parse_entry(&ct), None);
    // Trace: a 7-byte rule handle and a 3-byte id are absent values, not slices past the end.
    let mut tr = vec![2, 0, 0, 0];
    str_a(&mut tr, NFTA_TRACE_TABLE, TABLE);
    str_a(&mut tr, NFTA_TRACE_CHAIN, "c");
    attr(&mut tr, NFTA_TRACE_RULE_HANDLE, &[1; 7]);
    attr(&mut tr, NFTA_TRACE_ID, &[1; 3]);
    attr(&mut tr, NFTA_TRACE_NETWORK_HEADER, &[0x45; 19]);
    let t = parse_trace(&tr).unwrap();
    assert_eq!((t.handle, t.id), (None, 0));
    assert_eq!(packet_view(t.net.as_deref().unwrap(), None, 2), None, "an IPv4 header of 19 bytes");
    // Userdata whose TLV length runs past the end; a set element list of garbage.
    assert_eq!(udata_comment(&[0, 200, b'x']), None);
    assert_eq!(counted_elements(&[12, 0, 3, 0x80, 0xff, 0xff, 1, 0, 0, 0, 0, 0]), 0);
    // An address message shorter than its ifaddrmsg.
    assert_eq!(parse_newaddr(&[2, 24, 0, 0, 1]), None);
}
