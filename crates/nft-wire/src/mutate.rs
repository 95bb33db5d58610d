//! Mutations of netlink byte streams for property tests (feature `proptest-support`): bits
//! flipped, bytes set, inserted and deleted, truncation, message and attribute length and type
//! fields set to the values parsers get wrong, and random attribute trees grafted into nests.
//! Shared by the decoder's tests here and the reply parsers' tests in `nftproxy-nftables`; the
//! caller says where a message's attributes begin (`attrs_at`, by message type: after an
//! nfgenmsg, an ifaddrmsg, an nlmsgerr).

use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::{Index, select};

use crate::consts::NLA_F_NESTED;

/// Where an attribute header is: its offset, the offsets of the nests around it (innermost
/// last) and of its message's header.
pub struct AttrAt {
    pub off: usize,
    pub nested: bool,
    pub parents: Vec<usize>,
    pub msg: usize,
}

/// Every netlink message header and every attribute header reachable by walking the buffer
/// leniently (nests followed where NLA_F_NESTED is set): where the length and type fields are.
/// Must itself never panic on mutated bytes.
pub fn headers(bytes: &[u8], attrs_at: fn(u16) -> usize) -> (Vec<usize>, Vec<AttrAt>) {
    fn walk_attrs(b: &[u8], base: usize, parents: &mut Vec<usize>, msg: usize, out: &mut Vec<AttrAt>) {
        let mut off = 0usize;
        while let Some(h) = b.get(off..off + 4) {
            let len = usize::from(u16::from_ne_bytes([h[0], h[1]])).max(4);
            let ty = u16::from_ne_bytes([h[2], h[3]]);
            out.push(AttrAt { off: base + off, nested: ty & NLA_F_NESTED != 0, parents: parents.clone(), msg });
            let Some(v) = b.get(off + 4..off + len) else { break };
            if ty & NLA_F_NESTED != 0 && parents.len() < 8 {
                parents.push(base + off);
                walk_attrs(v, base + off + 4, parents, msg, out);
                parents.pop();
            }
            off += (len + 3) & !3;
        }
    }
    let (mut msgs, mut attrs) = (Vec::new(), Vec::new());
    let mut off = 0usize;
    while let Some(h) = bytes.get(off..off + 16) {
        let len = u32::from_ne_bytes([h[0], h[1], h[2], h[3]]) as usize;
        msgs.push(off);
        let start = off + attrs_at(u16::from_ne_bytes([h[4], h[5]]));
        if let Some(payload) = bytes.get(start..off.saturating_add(len)) {
            walk_attrs(payload, start, &mut Vec::new(), off, &mut attrs);
        }
        if len < 16 {
            break;
        }
        off = off.saturating_add((len + 3) & !3);
    }
    (msgs, attrs)
}

#[derive(Clone, Debug)]
pub enum Mutation {
    FlipBit(Index, u8),
    SetByte(Index, u8),
    Truncate(Index),
    Insert(Index, Vec<u8>),
    Delete(Index, usize),
    /// An attribute's length field: 0, 1, 3, 4, 5, off by one or four, 0xffff, or any.
    AttrLen(Index, u8, u16),
    /// An attribute's type field: any type, NLA_F_NESTED toggled, NLA_F_NET_BYTEORDER set.
    AttrType(Index, u8, u16),
    /// A message's nlmsg_len: 0, 15, 16, 17, off by one or four, huge, or any.
    MsgLen(Index, u8, u32),
    /// A message's nlmsg_type or flags.
    MsgTypeFlags(Index, bool, u16),
    /// An attribute's value replaced by a random attribute tree, the lengths of the nests and
    /// the message around it adjusted: reaches deep into messages with plausible structure
    /// (random bytes rarely get past the first attribute).
    Graft(Index, Vec<Tlv>),
}

pub fn mutation() -> impl Strategy<Value = Mutation> {
    let ix = any::<Index>;
    prop_oneof![
        1 => (ix(), 0u8..8).prop_map(|(i, b)| Mutation::FlipBit(i, b)),
        1 => (ix(), any::<u8>()).prop_map(|(i, v)| Mutation::SetByte(i, v)),
        1 => ix().prop_map(Mutation::Truncate),
        1 => (ix(), vec(any::<u8>(), 0..=8)).prop_map(|(i, v)| Mutation::Insert(i, v)),
        1 => (ix(), 1usize..9).prop_map(|(i, n)| Mutation::Delete(i, n)),
        3 => (ix(), any::<u8>(), any::<u16>()).prop_map(|(i, s, v)| Mutation::AttrLen(i, s, v)),
        2 => (ix(), any::<u8>(), any::<u16>()).prop_map(|(i, s, v)| Mutation::AttrType(i, s, v)),
        2 => (ix(), any::<u8>(), any::<u32>()).prop_map(|(i, s, v)| Mutation::MsgLen(i, s, v)),
        1 => (ix(), any::<bool>(), any::<u16>()).prop_map(|(i, t, v)| Mutation::MsgTypeFlags(i, t, v)),
        3 => (ix(), tlvs()).prop_map(|(i, t)| Mutation::Graft(i, t)),
    ]
}

pub fn put_u16(b: &mut [u8], at: usize, v: u16) {
    if let Some(s) = b.get_mut(at..at + 2) {
        s.copy_from_slice(&v.to_ne_bytes());
    }
}

pub fn get_u16(b: &[u8], at: usize) -> u16 {
    b.get(at..at + 2).map_or(0, |s| u16::from_ne_bytes([s[0], s[1]]))
}

pub fn mutate(b: &mut Vec<u8>, m: &Mutation, attrs_at: fn(u16) -> usize) {
    let at = |i: &Index, b: &Vec<u8>| if b.is_empty() { 0 } else { i.index(b.len()) };
    match m {
        Mutation::FlipBit(i, bit) if !b.is_empty() => {
            let p = at(i, b);
            b[p] ^= 1 << bit;
        }
        Mutation::SetByte(i, v) if !b.is_empty() => {
            let p = at(i, b);
            b[p] = *v;
        }
        Mutation::Truncate(i) => {
            let p = at(i, b);
            b.truncate(p);
        }
        Mutation::Insert(i, v) => {
            let p = at(i, b);
            b.splice(p..p, v.iter().copied());
        }
        Mutation::Delete(i, n) if !b.is_empty() => {
            let p = at(i, b);
            let end = (p + n).min(b.len());
            b.drain(p..end);
        }
        Mutation::AttrLen(i, sel, any) => {
            let (_, attrs) = headers(b, attrs_at);
            if attrs.is_empty() {
                return;
            }
            let p = attrs[i.index(attrs.len())].off;
            let cur = get_u16(b, p);
            let v = match sel % 10 {
                0 => 0,
                1 => 1,
                2 => 3,
                3 => 4,
                4 => 5,
                5 => cur.wrapping_add(1),
                6 => cur.wrapping_sub(1),
                7 => cur.wrapping_add(4),
                8 => 0xffff,
                _ => *any,
            };
            put_u16(b, p, v);
        }
        Mutation::AttrType(i, sel, any) => {
            let (_, attrs) = headers(b, attrs_at);
            if attrs.is_empty() {
                return;
            }
            let p = attrs[i.index(attrs.len())].off + 2;
            let cur = get_u16(b, p);
            let v = match sel % 4 {
                0 => cur ^ NLA_F_NESTED,
                1 => cur | 0x4000,
                2 => (cur & NLA_F_NESTED) | (any % 16),
                _ => *any,
            };
            put_u16(b, p, v);
        }
        Mutation::MsgLen(i, sel, any) => {
            let (msgs, _) = headers(b, attrs_at);
            if msgs.is_empty() {
                return;
            }
            let p = msgs[i.index(msgs.len())];
            let Some(s) = b.get_mut(p..p + 4) else { return };
            let cur = u32::from_ne_bytes([s[0], s[1], s[2], s[3]]);
            let v = match sel % 10 {
                0 => 0,
                1 => 15,
                2 => 16,
                3 => 17,
                4 => cur.wrapping_add(1),
                5 => cur.wrapping_sub(4),
                6 => cur.wrapping_add(4),
                7 => u32::MAX,
                8 => 0x8000_0000,
                _ => *any,
            };
            s.copy_from_slice(&v.to_ne_bytes());
        }
        Mutation::MsgTypeFlags(i, ty, v) => {
            let (msgs, _) = headers(b, attrs_at);
            if msgs.is_empty() {
                return;
            }
            let p = msgs[i.index(msgs.len())] + if *ty { 4 } else { 6 };
            put_u16(b, p, *v);
        }
        Mutation::Graft(i, tree) => {
            // Into nests only: a value turned into a nest fails at once (NLA_F_NESTED).
            let (_, mut attrs) = headers(b, attrs_at);
            attrs.retain(|a| a.nested);
            if attrs.is_empty() {
                return;
            }
            let a = &attrs[i.index(attrs.len())];
            let len = usize::from(get_u16(b, a.off));
            let old_end = (a.off + ((len.max(4) + 3) & !3)).min(b.len());
            let tree = build_tlvs(tree);
            let new_len = 4 + tree.len();
            if new_len > 0xffff || old_end < a.off + 4 {
                return;
            }
            // Both padded to 4: the tree's length is a multiple of 4.
            let delta = new_len as isize - (old_end - a.off) as isize;
            b.splice(a.off + 4..old_end, tree);
            put_u16(b, a.off, new_len as u16);
            for &p in &a.parents {
                let l = (usize::from(get_u16(b, p)) as isize + delta).clamp(0, 0xffff);
                put_u16(b, p, l as u16);
            }
            if let Some(s) = b.get_mut(a.msg..a.msg + 4) {
                let l = u32::from_ne_bytes([s[0], s[1], s[2], s[3]]) as isize + delta;
                s.copy_from_slice(&(l.max(0) as u32).to_ne_bytes());
            }
        }
        _ => {}
    }
}

// ---------------------------------------------------------------------------------------------
// Random attribute trees: random bytes rarely get past the first header, so one target also
// builds well-framed TLVs of plausible types and values, to reach the expression decoders.

#[derive(Clone, Debug)]
pub enum Tlv {
    Open(u16),
    Close,
    Leaf(u16, Vec<u8>),
}

fn tlv_value() -> impl Strategy<Value = Vec<u8>> {
    const NAMES: &[&str] = &[
        "payload",
        "meta",
        "ct",
        "cmp",
        "bitwise",
        "lookup",
        "immediate",
        "numgen",
        "nat",
        "masq",
        "fib",
        "reject",
        "counter",
        "dynset",
        "filter",
        "nat",
        "t",
        "",
    ];
    prop_oneof![
        select(NAMES).prop_map(|s| format!("{s}\0").into_bytes()),
        (0u32..20).prop_map(|v| v.to_be_bytes().to_vec()),
        select(&[0u32, 1, 0xffff_fffb, 0xffff_fffd, 0xffff_fffc, 0xffff_ff00][..])
            .prop_map(|v| v.to_be_bytes().to_vec()),
        Just(vec![0u8; 8]),
        Just(vec![0, 2, b'x', 0]),
        vec(any::<u8>(), 0..=10),
    ]
}

pub fn tlvs() -> impl Strategy<Value = Vec<Tlv>> {
    let ty = prop_oneof![4 => 0u16..12, 1 => any::<u16>()];
    vec(
        prop_oneof![
            1 => ty.clone().prop_map(Tlv::Open),
            1 => Just(Tlv::Close),
            2 => (ty, tlv_value()).prop_map(|(t, v)| Tlv::Leaf(t, v)),
        ],
        0..24,
    )
}

pub fn build_tlvs(items: &[Tlv]) -> Vec<u8> {
    let mut b = Vec::new();
    let mut open: Vec<usize> = Vec::new();
    let close = |b: &mut Vec<u8>, at: usize| {
        let len = (b.len() - at).min(0xffff) as u16;
        b[at..at + 2].copy_from_slice(&len.to_ne_bytes());
    };
    for t in items {
        match t {
            Tlv::Open(ty) => {
                open.push(b.len());
                b.extend_from_slice(&[0, 0]);
                b.extend_from_slice(&(ty | NLA_F_NESTED).to_ne_bytes());
            }
            Tlv::Close => {
                if let Some(at) = open.pop() {
                    close(&mut b, at);
                }
            }
            Tlv::Leaf(ty, v) => {
                b.extend_from_slice(&((4 + v.len()) as u16).to_ne_bytes());
                b.extend_from_slice(&(ty & !NLA_F_NESTED).to_ne_bytes());
                b.extend_from_slice(v);
                b.resize(b.len().next_multiple_of(4), 0);
            }
        }
    }
    while let Some(at) = open.pop() {
        close(&mut b, at);
    }
    b
}
