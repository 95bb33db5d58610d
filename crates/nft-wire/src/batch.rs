//! nf_tables messages and the batch (transaction) that carries them. Building a batch does no
//! I/O; the result is the exact byte buffer to hand to one `send()`.

use crate::consts::*;
use crate::expr::{Expr, Verdict};
use crate::writer::{Udata, Writer};

/// nft refuses comments longer than this; we truncate to stay decompilable.
pub const COMMENT_MAX: usize = 128;

/// A comment as it is sent: cut to [`COMMENT_MAX`] bytes at a character boundary.
pub fn comment(s: &str) -> &str {
    if s.len() <= COMMENT_MAX {
        return s;
    }
    let mut end = COMMENT_MAX;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// `type nat hook prerouting priority dstnat` and friends.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BaseChain {
    pub chain_type: ChainType,
    pub hook: Hook,
    pub priority: i32,
}

/// A base chain's type (NFTA_CHAIN_TYPE), as the kernel names them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ChainType {
    Filter,
    Nat,
    Route,
}

impl ChainType {
    pub const ALL: [ChainType; 3] = [ChainType::Filter, ChainType::Nat, ChainType::Route];
    /// The kernel's name (`filter`, `nat`, `route`), which is also nft's.
    pub fn name(self) -> &'static str {
        match self {
            ChainType::Filter => "filter",
            ChainType::Nat => "nat",
            ChainType::Route => "route",
        }
    }
    pub fn from_name(name: &str) -> Option<ChainType> {
        ChainType::ALL.into_iter().find(|t| t.name() == name)
    }
}

/// The netfilter hook of a base chain in the ip, ip6 and inet families (NFTA_HOOK_HOOKNUM).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Hook {
    Prerouting,
    Input,
    Forward,
    Output,
    Postrouting,
}

impl Hook {
    pub const ALL: [Hook; 5] = [Hook::Prerouting, Hook::Input, Hook::Forward, Hook::Output, Hook::Postrouting];
    /// The kernel's number (`NF_INET_PRE_ROUTING` … `NF_INET_POST_ROUTING`).
    pub fn number(self) -> u32 {
        match self {
            Hook::Prerouting => NF_INET_PRE_ROUTING,
            Hook::Input => NF_INET_LOCAL_IN,
            Hook::Forward => NF_INET_FORWARD,
            Hook::Output => NF_INET_LOCAL_OUT,
            Hook::Postrouting => NF_INET_POST_ROUTING,
        }
    }
    pub fn from_number(n: u32) -> Option<Hook> {
        Hook::ALL.into_iter().find(|h| h.number() == n)
    }
    /// nft's name (`prerouting`, `input`, …).
    pub fn name(self) -> &'static str {
        match self {
            Hook::Prerouting => "prerouting",
            Hook::Input => "input",
            Hook::Forward => "forward",
            Hook::Output => "output",
            Hook::Postrouting => "postrouting",
        }
    }
}

/// The family of an nf_tables table (the nfgenmsg family of its messages): the two kube-nftproxy
/// programs. The kernel's numbers are NFPROTO_IPV4 and NFPROTO_IPV6; nft's words `ip`, `ip6`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum NfFamily {
    Ip,
    Ip6,
}

impl NfFamily {
    pub const ALL: [NfFamily; 2] = [NfFamily::Ip, NfFamily::Ip6];
    /// The kernel's number (NFPROTO_IPV4, NFPROTO_IPV6).
    pub fn number(self) -> u8 {
        match self {
            NfFamily::Ip => NFPROTO_IPV4,
            NfFamily::Ip6 => NFPROTO_IPV6,
        }
    }
    pub fn from_number(n: u8) -> Option<NfFamily> {
        NfFamily::ALL.into_iter().find(|f| f.number() == n)
    }
    /// nft's word (`ip`, `ip6`).
    pub fn word(self) -> &'static str {
        match self {
            NfFamily::Ip => "ip",
            NfFamily::Ip6 => "ip6",
        }
    }
}

/// A set or map declaration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SetSpec {
    pub name: String,
    pub flags: u32,
    pub key_type: u32,
    pub key_len: u32,
    /// (data type, data length) for maps; `NFT_DATA_VERDICT` with length 0 for verdict maps.
    pub data: Option<(u32, u32)>,
    pub timeout_ms: Option<u64>,
    /// Opaque userdata as `nft` writes it (byte order, typeof, comment).
    pub udata: Vec<u8>,
}

/// A set element: key, optional map data, timeout and comment.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Elem {
    pub key: Vec<u8>,
    pub data: Option<ElemData>,
    pub timeout_ms: Option<u64>,
    pub comment: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ElemData {
    Value(Vec<u8>),
    Verdict(Verdict),
}

/// A set element as the encoder reads it, borrowed: encoding a cold start's million elements
/// then allocates nothing per element (an owned [`Elem`] each was ~3 allocations, a third of
/// the encoding time at 50k Services × 10).
#[derive(Clone, Copy, Debug)]
pub struct ElemRef<'a> {
    pub key: &'a [u8],
    pub data: Option<ElemDataRef<'a>>,
    pub timeout_ms: Option<u64>,
    pub comment: Option<&'a str>,
}

#[derive(Clone, Copy, Debug)]
pub enum ElemDataRef<'a> {
    Value(&'a [u8]),
    Verdict(&'a Verdict),
}

impl ElemRef<'_> {
    /// An owned copy, for what keeps or compares elements (drift checks, the fake).
    pub fn to_elem(&self) -> Elem {
        Elem {
            key: self.key.to_vec(),
            data: self.data.map(|d| match d {
                ElemDataRef::Value(v) => ElemData::Value(v.to_vec()),
                ElemDataRef::Verdict(v) => ElemData::Verdict(v.clone()),
            }),
            timeout_ms: self.timeout_ms,
            comment: self.comment.map(str::to_string),
        }
    }
}

impl Elem {
    pub fn as_ref(&self) -> ElemRef<'_> {
        ElemRef {
            key: &self.key,
            data: self.data.as_ref().map(|d| match d {
                ElemData::Value(v) => ElemDataRef::Value(v),
                ElemData::Verdict(v) => ElemDataRef::Verdict(v),
            }),
            timeout_ms: self.timeout_ms,
            comment: self.comment.as_deref(),
        }
    }
}

/// One message of a batch, for mapping the kernel's per-message errors back to objects.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MsgInfo {
    pub seq: u32,
    pub msg_type: u16,
    pub what: String,
}

/// Elements per NEWSETELEM/DELSETELEM message: keeps the element-list nest far below the
/// 64 KiB limit of a netlink attribute even for IPv6 keys with comments.
pub const ELEMS_PER_MESSAGE: usize = 256;

/// A transaction under construction. Nothing is sent until the caller hands [`Batch::finish`]'s
/// bytes to the kernel; either every message is committed or none is.
#[derive(Debug, Clone)]
pub struct Batch {
    buf: Vec<u8>,
    next_seq: u32,
    msgs: Vec<MsgInfo>,
    last_start: usize,
}

impl Batch {
    pub fn new(first_seq: u32) -> Batch {
        let mut b = Batch { buf: Vec::with_capacity(1 << 16), next_seq: first_seq, msgs: Vec::new(), last_start: 0 };
        b.raw_header(NFNL_MSG_BATCH_BEGIN, NLM_F_REQUEST, 0, NFNL_SUBSYS_NFTABLES);
        b
    }

    /// The sequence number the next batch starts with once this one is finished: every message
    /// takes one, batch begin and end included. The one place that knows it (the planner and
    /// the socket both ask).
    pub fn seq_after(&self) -> u32 {
        // `next_seq` is what the batch end will take.
        self.next_seq.wrapping_add(1)
    }

    /// Messages added so far (batch begin/end not counted).
    pub fn messages(&self) -> &[MsgInfo] {
        &self.msgs
    }
    pub fn is_empty(&self) -> bool {
        self.msgs.is_empty()
    }
    pub fn len_bytes(&self) -> usize {
        self.buf.len()
    }

    fn raw_header(&mut self, ty: u16, flags: u16, family: u8, res_id: u16) -> u32 {
        let seq = self.next_seq;
        self.next_seq = self.next_seq.wrapping_add(1);
        self.last_start = self.buf.len();
        self.buf.extend_from_slice(&0u32.to_ne_bytes()); // length, patched by close()
        self.buf.extend_from_slice(&ty.to_ne_bytes());
        self.buf.extend_from_slice(&flags.to_ne_bytes());
        self.buf.extend_from_slice(&seq.to_ne_bytes());
        self.buf.extend_from_slice(&0u32.to_ne_bytes());
        self.buf.push(family);
        self.buf.push(0); // NFNETLINK_V0
        self.buf.extend_from_slice(&res_id.to_be_bytes());
        self.close();
        seq
    }

    fn close(&mut self) {
        let len = (self.buf.len() - self.last_start) as u32;
        self.buf[self.last_start..self.last_start + 4].copy_from_slice(&len.to_ne_bytes());
    }

    /// Appends one nf_tables message whose attributes `body` writes.
    fn msg(&mut self, nft_type: u16, flags: u16, family: NfFamily, what: String, body: impl FnOnce(&mut Writer)) {
        let seq = self.raw_header((NFNL_SUBSYS_NFTABLES << 8) | nft_type, NLM_F_REQUEST | flags, family.number(), 0);
        let mut w = Writer { buf: std::mem::take(&mut self.buf) };
        body(&mut w);
        self.buf = w.buf;
        self.close();
        self.msgs.push(MsgInfo { seq, msg_type: nft_type, what });
    }

    pub fn add_table(&mut self, family: NfFamily, name: &str, table_comment: Option<&str>) {
        self.msg(NFT_MSG_NEWTABLE, NLM_F_CREATE, family, format!("add table {name}"), |w| {
            w.str(NFTA_TABLE_NAME, name);
            w.u32(NFTA_TABLE_FLAGS, 0);
            if let Some(c) = table_comment {
                w.bytes(NFTA_TABLE_USERDATA, &Udata::default().put_str(NFTNL_UDATA_TABLE_COMMENT, comment(c)).0);
            }
        });
    }

    pub fn del_table(&mut self, family: NfFamily, name: &str) {
        self.msg(NFT_MSG_DELTABLE, 0, family, format!("delete table {name}"), |w| {
            w.str(NFTA_TABLE_NAME, name);
        });
    }

    pub fn add_chain(&mut self, family: NfFamily, table: &str, name: &str, base: Option<&BaseChain>) {
        self.msg(NFT_MSG_NEWCHAIN, NLM_F_CREATE, family, format!("add chain {name}"), |w| {
            w.str(NFTA_CHAIN_TABLE, table);
            w.str(NFTA_CHAIN_NAME, name);
            if let Some(b) = base {
                w.str(NFTA_CHAIN_TYPE, b.chain_type.name());
                w.u32(NFTA_CHAIN_POLICY, NF_ACCEPT as u32);
                let h = w.nest(NFTA_CHAIN_HOOK);
                w.u32(NFTA_HOOK_HOOKNUM, b.hook.number());
                w.u32(NFTA_HOOK_PRIORITY, b.priority as u32);
                w.end(h);
            }
        });
    }

    /// Deletes every rule of a chain (`flush chain`).
    pub fn flush_chain(&mut self, family: NfFamily, table: &str, chain: &str) {
        self.msg(NFT_MSG_DELRULE, 0, family, format!("flush chain {chain}"), |w| {
            w.str(NFTA_RULE_TABLE, table);
            w.str(NFTA_RULE_CHAIN, chain);
        });
    }

    pub fn del_chain(&mut self, family: NfFamily, table: &str, chain: &str) {
        self.msg(NFT_MSG_DELCHAIN, 0, family, format!("delete chain {chain}"), |w| {
            w.str(NFTA_CHAIN_TABLE, table);
            w.str(NFTA_CHAIN_NAME, chain);
        });
    }

    pub fn add_rule(&mut self, family: NfFamily, table: &str, chain: &str, exprs: &[Expr], rule_comment: Option<&str>) {
        self.msg(NFT_MSG_NEWRULE, NLM_F_CREATE | NLM_F_APPEND, family, format!("add rule to {chain}"), |w| {
            w.str(NFTA_RULE_TABLE, table);
            w.str(NFTA_RULE_CHAIN, chain);
            let l = w.nest(NFTA_RULE_EXPRESSIONS);
            for e in exprs {
                e.write(w);
            }
            w.end(l);
            if let Some(c) = rule_comment {
                w.bytes(NFTA_RULE_USERDATA, &Udata::default().put_str(NFTNL_UDATA_RULE_COMMENT, comment(c)).0);
            }
        });
    }

    /// Declares a set; `id` is the transaction-local NFTA_SET_ID.
    pub fn add_set(&mut self, family: NfFamily, table: &str, spec: &SetSpec, id: u32) {
        self.msg(NFT_MSG_NEWSET, NLM_F_CREATE, family, format!("add set {}", spec.name), |w| {
            w.str(NFTA_SET_TABLE, table);
            w.str(NFTA_SET_NAME, &spec.name);
            w.u32(NFTA_SET_FLAGS, spec.flags);
            w.u32(NFTA_SET_KEY_TYPE, spec.key_type);
            w.u32(NFTA_SET_KEY_LEN, spec.key_len);
            if let Some((ty, len)) = spec.data {
                w.u32(NFTA_SET_DATA_TYPE, ty);
                w.u32(NFTA_SET_DATA_LEN, len);
            }
            w.u32(NFTA_SET_ID, id);
            if let Some(t) = spec.timeout_ms {
                w.u64(NFTA_SET_TIMEOUT, t);
            }
            if !spec.udata.is_empty() {
                w.bytes(NFTA_SET_USERDATA, &spec.udata);
            }
        });
    }

    pub fn del_set(&mut self, family: NfFamily, table: &str, name: &str) {
        self.msg(NFT_MSG_DELSET, 0, family, format!("delete set {name}"), |w| {
            w.str(NFTA_SET_TABLE, table);
            w.str(NFTA_SET_NAME, name);
        });
    }

    /// Adds elements, in as many messages as needed (a nested attribute is at most 64 KiB).
    /// `set_id` is given when the set was declared earlier in this batch (as nft does).
    pub fn add_elems(&mut self, family: NfFamily, table: &str, set: &str, set_id: Option<u32>, elems: &[Elem]) {
        let elems: Vec<ElemRef> = elems.iter().map(Elem::as_ref).collect();
        self.add_elem_refs(family, table, set, set_id, &elems);
    }

    /// [`Batch::add_elems`] from borrowed elements.
    pub fn add_elem_refs(&mut self, family: NfFamily, table: &str, set: &str, set_id: Option<u32>, elems: &[ElemRef]) {
        self.elems(NFT_MSG_NEWSETELEM, NLM_F_CREATE, family, table, set, set_id, elems);
    }

    /// Deletes elements by key (data and comments are ignored by the kernel).
    pub fn del_elems(&mut self, family: NfFamily, table: &str, set: &str, elems: &[Elem]) {
        let elems: Vec<ElemRef> = elems.iter().map(Elem::as_ref).collect();
        self.del_elem_refs(family, table, set, &elems);
    }

    /// [`Batch::del_elems`] from borrowed elements.
    pub fn del_elem_refs(&mut self, family: NfFamily, table: &str, set: &str, elems: &[ElemRef]) {
        self.elems(NFT_MSG_DELSETELEM, 0, family, table, set, None, elems);
    }

    /// Removes every element of a set (`flush set`).
    pub fn flush_set(&mut self, family: NfFamily, table: &str, set: &str) {
        self.msg(NFT_MSG_DELSETELEM, 0, family, format!("flush set {set}"), |w| {
            w.str(NFTA_SET_ELEM_LIST_TABLE, table);
            w.str(NFTA_SET_ELEM_LIST_SET, set);
        });
    }

    #[allow(clippy::too_many_arguments)]
    fn elems(
        &mut self,
        ty: u16,
        flags: u16,
        family: NfFamily,
        table: &str,
        set: &str,
        set_id: Option<u32>,
        elems: &[ElemRef],
    ) {
        let verb = if ty == NFT_MSG_NEWSETELEM { "add" } else { "delete" };
        let mut udata = Udata::default();
        for (i, chunk) in elems.chunks(ELEMS_PER_MESSAGE).enumerate() {
            let first = i * ELEMS_PER_MESSAGE;
            let what = format!("{verb} elements {}..{} of {set}", first, first + chunk.len());
            self.msg(ty, flags, family, what, |w| {
                w.str(NFTA_SET_ELEM_LIST_TABLE, table);
                w.str(NFTA_SET_ELEM_LIST_SET, set);
                if let Some(id) = set_id {
                    w.u32(NFTA_SET_ELEM_LIST_SET_ID, id);
                }
                let list = w.nest(NFTA_SET_ELEM_LIST_ELEMENTS);
                for e in chunk {
                    let n = w.nest(NFTA_LIST_ELEM);
                    if let Some(t) = e.timeout_ms {
                        w.u64(NFTA_SET_ELEM_TIMEOUT, t);
                    }
                    elem_key(w, e.key);
                    if ty == NFT_MSG_NEWSETELEM {
                        match e.data {
                            Some(ElemDataRef::Value(v)) => {
                                let d = w.nest(NFTA_SET_ELEM_DATA);
                                w.bytes(NFTA_DATA_VALUE, v);
                                w.end(d);
                            }
                            Some(ElemDataRef::Verdict(v)) => {
                                let d = w.nest(NFTA_SET_ELEM_DATA);
                                v.write(w);
                                w.end(d);
                            }
                            None => {}
                        }
                        if let Some(c) = e.comment {
                            udata.0.clear();
                            udata.push_str(NFTNL_UDATA_SET_ELEM_COMMENT, comment(c));
                            w.bytes(NFTA_SET_ELEM_USERDATA, &udata.0);
                        }
                    }
                    w.end(n);
                }
                w.end(list);
            });
        }
    }

    /// Closes the batch: asks an ack of the last message only (errors are always reported) and
    /// appends BATCH_END. Returns the bytes for one `send()` and the seq whose ack ends the
    /// exchange.
    pub fn finish(mut self) -> FinishedBatch {
        let last_seq = self.msgs.last().map(|m| m.seq);
        if last_seq.is_some() {
            let f = self.last_start + 6;
            let flags = u16::from_ne_bytes([self.buf[f], self.buf[f + 1]]) | NLM_F_ACK;
            self.buf[f..f + 2].copy_from_slice(&flags.to_ne_bytes());
        }
        self.raw_header(NFNL_MSG_BATCH_END, NLM_F_REQUEST, 0, NFNL_SUBSYS_NFTABLES);
        FinishedBatch { bytes: self.buf, last_seq, msgs: self.msgs, next_seq: self.next_seq }
    }
}

/// A closed batch, ready to send.
#[derive(Debug, Clone)]
pub struct FinishedBatch {
    pub bytes: Vec<u8>,
    /// None when the batch holds no message (nothing to send).
    pub last_seq: Option<u32>,
    pub msgs: Vec<MsgInfo>,
    /// The sequence number the next batch starts with ([`Batch::seq_after`]).
    pub next_seq: u32,
}

impl FinishedBatch {
    /// Splits the wire bytes into messages: (type, flags, payload after the nlmsghdr). For tests
    /// and debugging.
    pub fn split(&self) -> Vec<(u16, u16, &[u8])> {
        split_messages(&self.bytes)
    }
}

/// Splits a netlink byte stream into (type, flags, payload) triples.
/// An element's NFTA_SET_ELEM_KEY nest.
fn elem_key(w: &mut Writer, key: &[u8]) {
    let k = w.nest(NFTA_SET_ELEM_KEY);
    w.bytes(NFTA_DATA_VALUE, key);
    w.end(k);
}

/// The attributes of an NFT_MSG_GETSETELEM request (not a dump) for these keys: the kernel
/// answers one NEWSETELEM message per element found, in order, and stops at the first key it
/// does not hold with ENOENT.
pub fn get_elems_request(table: &str, set: &str, keys: &[&[u8]]) -> Vec<u8> {
    let mut w = Writer::default();
    w.str(NFTA_SET_ELEM_LIST_TABLE, table);
    w.str(NFTA_SET_ELEM_LIST_SET, set);
    let list = w.nest(NFTA_SET_ELEM_LIST_ELEMENTS);
    for key in keys {
        let n = w.nest(NFTA_LIST_ELEM);
        elem_key(&mut w, key);
        w.end(n);
    }
    w.end(list);
    w.buf
}

pub fn split_messages(bytes: &[u8]) -> Vec<(u16, u16, &[u8])> {
    crate::netlink::messages(bytes).map(|(ty, flags, _, payload)| (ty, flags, payload)).collect()
}

#[cfg(test)]
mod seq_tests {
    use super::*;

    /// Begin, every message and end take one sequence number each; the next batch starts after.
    #[test]
    fn the_next_batch_starts_after_this_ones_end() {
        let mut b = Batch::new(10);
        assert_eq!(b.seq_after(), 12, "an empty batch: begin 10, end 11");
        for name in ["a", "b", "c"] {
            b.add_table(NfFamily::Ip, name, None);
        }
        assert_eq!(b.seq_after(), 15);
        let seqs: Vec<u32> = b.messages().iter().map(|m| m.seq).collect();
        assert_eq!(seqs, [11, 12, 13]);
        let f = b.finish();
        assert_eq!((f.last_seq, f.next_seq), (Some(13), 15));
        let end = f.split().len();
        assert_eq!(end, 5, "begin, three messages, end");
    }
}
