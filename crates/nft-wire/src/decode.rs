//! The inverse of [`crate::batch`] and [`crate::expr`]: batch bytes back into typed messages,
//! for tests, fuzzing and debugging (what exactly did we send?).
//!
//! The decoder is strict on purpose: it accepts exactly the encodings this crate produces (which
//! are nft's, byte for byte, see `tests/golden.rs`) — same attributes, same order, same nesting,
//! zero padding — and rejects anything else with an error naming the byte offset and the
//! attribute. So a successful decode re-encodes to the very same bytes
//! ([`DecodedBatch::encode`]), which is what lets the property tests check the decoder against
//! the encoder in both directions. It never panics, whatever the input: every slice is taken
//! with `get` after its length was checked, and lengths are bounded by the input (netlink
//! lengths are u16/u32, offsets stay within the buffer), so nothing can overflow.

use crate::batch::{
    BaseChain, Batch, COMMENT_MAX, ChainType, ELEMS_PER_MESSAGE, Elem, ElemData, FinishedBatch, Hook, NfFamily, SetSpec,
};
use crate::consts::*;
use crate::expr::{CmpOp, CtKey, Expr, MetaKey, NatKind, PayloadBase, Verdict};
use crate::writer::align4;

/// One nf_tables message of a batch, as [`Batch`]'s methods write it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Message {
    /// NFNL_MSG_BATCH_BEGIN (for nf_tables).
    BatchBegin,
    /// NFNL_MSG_BATCH_END.
    BatchEnd,
    AddTable {
        family: NfFamily,
        name: String,
        /// As sent: at most [`COMMENT_MAX`] bytes (the encoder truncates).
        comment: Option<String>,
    },
    DelTable {
        family: NfFamily,
        name: String,
    },
    AddChain {
        family: NfFamily,
        table: String,
        name: String,
        base: Option<BaseChain>,
    },
    DelChain {
        family: NfFamily,
        table: String,
        name: String,
    },
    /// NFT_MSG_DELRULE without a handle: every rule of the chain.
    FlushChain {
        family: NfFamily,
        table: String,
        chain: String,
    },
    AddRule {
        family: NfFamily,
        table: String,
        chain: String,
        exprs: Vec<Expr>,
        comment: Option<String>,
    },
    AddSet {
        family: NfFamily,
        table: String,
        spec: SetSpec,
        /// The transaction-local NFTA_SET_ID.
        id: u32,
    },
    DelSet {
        family: NfFamily,
        table: String,
        name: String,
    },
    /// One NEWSETELEM message: 1 to [`ELEMS_PER_MESSAGE`] elements.
    AddElems {
        family: NfFamily,
        table: String,
        set: String,
        set_id: Option<u32>,
        elems: Vec<Elem>,
    },
    /// One DELSETELEM message with elements: keys and timeouts only (the encoder leaves data and
    /// comments out of deletes, so they decode as None).
    DelElems {
        family: NfFamily,
        table: String,
        set: String,
        elems: Vec<Elem>,
    },
    /// DELSETELEM without an element list: every element of the set.
    FlushSet {
        family: NfFamily,
        table: String,
        set: String,
    },
}

impl Message {
    /// The nlmsg flags [`Batch`] gives this message besides NLM_F_REQUEST (and NLM_F_ACK on the
    /// last message of a batch).
    fn create_flags(&self) -> u16 {
        match self {
            Message::AddTable { .. } | Message::AddChain { .. } | Message::AddSet { .. } | Message::AddElems { .. } => {
                NLM_F_CREATE
            }
            Message::AddRule { .. } => NLM_F_CREATE | NLM_F_APPEND,
            _ => 0,
        }
    }

    /// Appends this message to a batch with the [`Batch`] method that writes it. Batch begin and
    /// end are the batch's own framing ([`Batch::new`], [`Batch::finish`]): nothing to append.
    pub fn encode_into(&self, b: &mut Batch) {
        match self {
            Message::BatchBegin | Message::BatchEnd => {}
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
}

/// One netlink message with its header fields.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decoded {
    pub seq: u32,
    pub flags: u16,
    pub port_id: u32,
    pub message: Message,
}

/// A whole batch: BATCH_BEGIN, the messages, BATCH_END, with consecutive sequence numbers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DecodedBatch {
    /// The seq of BATCH_BEGIN ([`Batch::new`]'s argument).
    pub first_seq: u32,
    /// The messages between begin and end.
    pub messages: Vec<Message>,
}

impl DecodedBatch {
    /// The batch again, through [`Batch`]: for a [`decode_batch`] result, the decoded bytes.
    pub fn encode(&self) -> FinishedBatch {
        let mut b = Batch::new(self.first_seq);
        for m in &self.messages {
            m.encode_into(&mut b);
        }
        b.finish()
    }
}

/// What was wrong, and where: `offset` is the byte offset in the buffer given to the decoder;
/// `context` names the attribute space (`NFTA_SET_ELEM`, `NFTA_PAYLOAD`, …) and `attr` the
/// attribute's type number in it.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("byte {offset}: {what} truncated: {need} bytes needed, {have} left")]
    Truncated { offset: usize, what: &'static str, need: usize, have: usize },
    #[error("byte {offset}: {what} of length {len}, below its header's {min} bytes")]
    TooShort { offset: usize, what: &'static str, len: usize, min: usize },
    #[error("byte {offset}: {what} of length {len}, not a multiple of 4")]
    Misaligned { offset: usize, what: &'static str, len: usize },
    #[error("byte {offset}: non-zero padding")]
    Padding { offset: usize },
    #[error("byte {offset}: {what} is {value:#x}, expected {expected:#x}")]
    Header { offset: usize, what: &'static str, value: u64, expected: u64 },
    #[error("byte {offset}: unknown message type {msg_type:#06x}")]
    UnknownMessage { offset: usize, msg_type: u16 },
    #[error("byte {offset}: in {context}, expected attribute {expected}, found attribute {found}")]
    UnexpectedAttr { offset: usize, context: &'static str, expected: u16, found: u16 },
    #[error("byte {offset}: in {context}, attribute {expected} is missing")]
    MissingAttr { offset: usize, context: &'static str, expected: u16 },
    #[error("byte {offset}: in {context}, attribute {found} after the last one expected")]
    ExtraAttr { offset: usize, context: &'static str, found: u16 },
    #[error("byte {offset}: {context} attribute {attr}: NLA_F_NESTED {}", if *.nested { "set on a value" } else { "missing on a nest" })]
    NestedFlag { offset: usize, context: &'static str, attr: u16, nested: bool },
    #[error("byte {offset}: {context} attribute {attr}: value of {len} bytes, expected {expected}")]
    ValueLength { offset: usize, context: &'static str, attr: u16, len: usize, expected: usize },
    #[error("byte {offset}: {context} attribute {attr}: {reason}")]
    BadString { offset: usize, context: &'static str, attr: u16, reason: &'static str },
    #[error("byte {offset}: {context} attribute {attr}: {value:#x} is {reason}")]
    BadValue { offset: usize, context: &'static str, attr: u16, value: u64, reason: &'static str },
    #[error("byte {offset}: unknown expression {name:?}")]
    UnknownExpr { offset: usize, name: String },
    #[error("byte {offset}: {context} userdata: {reason}")]
    Userdata { offset: usize, context: &'static str, reason: &'static str },
    /// Well-formed netlink that [`Batch`] never writes (the decoder accepts only its encodings,
    /// so that decoding then encoding is the identity).
    #[error("byte {offset}: {reason}")]
    NotCanonical { offset: usize, reason: &'static str },
    /// Messages that do not make one batch (begin, messages, end, consecutive seqs).
    #[error("byte {offset}: {reason}")]
    Batch { offset: usize, reason: &'static str },
}

type Result<T> = std::result::Result<T, DecodeError>;

/// One attribute: its type without NLA_F_NESTED, its value, and where its header starts.
#[derive(Clone, Copy)]
struct Attr<'a> {
    ty: u16,
    nested: bool,
    value: &'a [u8],
    offset: usize,
    ctx: &'static str,
}

/// A cursor over the attributes of one message or nest, taken in the encoder's order.
struct Attrs<'a> {
    buf: &'a [u8],
    /// Offset of `buf` in the decoder's input, for errors.
    base: usize,
    /// Always `<= buf.len()`.
    pos: usize,
    ctx: &'static str,
}

impl<'a> Attrs<'a> {
    fn new(buf: &'a [u8], base: usize, ctx: &'static str) -> Attrs<'a> {
        Attrs { buf, base, pos: 0, ctx }
    }

    /// The next attribute and the position after it (padding included), without moving.
    fn peek(&self) -> Result<Option<(Attr<'a>, usize)>> {
        let rest = self.buf.get(self.pos..).unwrap_or_default();
        if rest.is_empty() {
            return Ok(None);
        }
        let offset = self.base + self.pos;
        let Some(&[l0, l1, t0, t1]) = rest.get(..4) else {
            return Err(DecodeError::Truncated { offset, what: "attribute header", need: 4, have: rest.len() });
        };
        let len = usize::from(u16::from_ne_bytes([l0, l1]));
        let raw = u16::from_ne_bytes([t0, t1]);
        if len < 4 {
            return Err(DecodeError::TooShort { offset, what: "attribute", len, min: 4 });
        }
        let Some(value) = rest.get(4..len) else {
            return Err(DecodeError::Truncated { offset, what: "attribute", need: len, have: rest.len() });
        };
        // The encoder pads every attribute, the last one of a nest or message too.
        let padded = align4(len);
        let Some(pad) = rest.get(len..padded) else {
            return Err(DecodeError::Truncated { offset, what: "attribute padding", need: padded, have: rest.len() });
        };
        if pad.iter().any(|b| *b != 0) {
            return Err(DecodeError::Padding { offset: offset + len });
        }
        let attr = Attr { ty: raw & !NLA_F_NESTED, nested: raw & NLA_F_NESTED != 0, value, offset, ctx: self.ctx };
        Ok(Some((attr, self.pos + padded)))
    }

    /// The next attribute, which must be of type `ty`.
    fn req(&mut self, ty: u16) -> Result<Attr<'a>> {
        match self.peek()? {
            Some((a, next)) if a.ty == ty => {
                self.pos = next;
                Ok(a)
            }
            Some((a, _)) => {
                Err(DecodeError::UnexpectedAttr { offset: a.offset, context: self.ctx, expected: ty, found: a.ty })
            }
            None => Err(DecodeError::MissingAttr { offset: self.base + self.pos, context: self.ctx, expected: ty }),
        }
    }

    /// The next attribute if it is of type `ty` (an optional one the encoder may leave out).
    fn opt(&mut self, ty: u16) -> Result<Option<Attr<'a>>> {
        match self.peek()? {
            Some((a, next)) if a.ty == ty => {
                self.pos = next;
                Ok(Some(a))
            }
            _ => Ok(None),
        }
    }

    /// Nothing may follow the last attribute expected.
    fn finish(&self) -> Result<()> {
        match self.peek()? {
            None => Ok(()),
            Some((a, _)) => Err(DecodeError::ExtraAttr { offset: a.offset, context: self.ctx, found: a.ty }),
        }
    }
}

/// A C string's text: NUL-terminated, no NUL inside (nft's strings are C strings), UTF-8
/// (the encoder takes `&str`).
fn c_string(v: &[u8]) -> std::result::Result<String, &'static str> {
    let Some((0, s)) = v.split_last() else { return Err("not NUL-terminated") };
    if s.contains(&0) {
        return Err("NUL inside the string");
    }
    String::from_utf8(s.to_vec()).map_err(|_| "not UTF-8")
}

impl<'a> Attr<'a> {
    fn flat(&self) -> Result<&'a [u8]> {
        if self.nested {
            return Err(DecodeError::NestedFlag {
                offset: self.offset,
                context: self.ctx,
                attr: self.ty,
                nested: true,
            });
        }
        Ok(self.value)
    }
    fn fixed<const N: usize>(&self) -> Result<[u8; N]> {
        let v = self.flat()?;
        v.try_into().map_err(|_| DecodeError::ValueLength {
            offset: self.offset,
            context: self.ctx,
            attr: self.ty,
            len: v.len(),
            expected: N,
        })
    }
    /// nf_tables integers are big-endian.
    fn u32(&self) -> Result<u32> {
        self.fixed::<4>().map(u32::from_be_bytes)
    }
    fn u64(&self) -> Result<u64> {
        self.fixed::<8>().map(u64::from_be_bytes)
    }
    fn string(&self) -> Result<String> {
        c_string(self.flat()?).map_err(|reason| DecodeError::BadString {
            offset: self.offset,
            context: self.ctx,
            attr: self.ty,
            reason,
        })
    }
    fn nest(&self, ctx: &'static str) -> Result<Attrs<'a>> {
        if !self.nested {
            return Err(DecodeError::NestedFlag {
                offset: self.offset,
                context: self.ctx,
                attr: self.ty,
                nested: false,
            });
        }
        Ok(Attrs::new(self.value, self.offset + 4, ctx))
    }
    fn bad(&self, value: u64, reason: &'static str) -> DecodeError {
        DecodeError::BadValue { offset: self.offset, context: self.ctx, attr: self.ty, value, reason }
    }
    /// A u32 that must be one of a few values (an enum of expr.rs).
    fn enumerated<T>(&self, reason: &'static str, f: impl Fn(u32) -> Option<T>) -> Result<T> {
        let v = self.u32()?;
        f(v).ok_or_else(|| self.bad(v.into(), reason))
    }
    /// A nest holding exactly one NFTA_DATA_VALUE: its bytes.
    fn data_value(&self, ctx: &'static str) -> Result<Vec<u8>> {
        let mut n = self.nest(ctx)?;
        let v = n.req(NFTA_DATA_VALUE)?.flat()?.to_vec();
        n.finish()?;
        Ok(v)
    }
}

/// A comment as libnftnl userdata: exactly one TLV of type `ty` holding a NUL-terminated
/// string of at most [`COMMENT_MAX`] bytes (what the encoder's truncation leaves).
fn comment_udata(a: &Attr, ty: u8) -> Result<String> {
    let err = |reason| DecodeError::Userdata { offset: a.offset + 4, context: a.ctx, reason };
    let [t, len, value @ ..] = a.flat()? else { return Err(err("shorter than a TLV header")) };
    if *t != ty {
        return Err(err("not a comment TLV"));
    }
    if usize::from(*len) != value.len() {
        return Err(err("TLV length differs from the attribute's"));
    }
    let s = c_string(value).map_err(err)?;
    if s.len() > COMMENT_MAX {
        return Err(err("comment longer than COMMENT_MAX"));
    }
    Ok(s)
}

/// Decodes one message: its type (`nlmsg_type`, subsystem included) and its payload after the
/// nlmsghdr (from the nfgenmsg on, as the golden fixtures hold them). Offsets in errors count
/// from the payload's start.
pub fn decode_message(msg_type: u16, payload: &[u8]) -> Result<Message> {
    decode_at(msg_type, payload, 0)
}

fn decode_at(msg_type: u16, payload: &[u8], base: usize) -> Result<Message> {
    let Some(&[family, version, r0, r1]) = payload.get(..4) else {
        return Err(DecodeError::Truncated { offset: base, what: "nfgenmsg", need: 4, have: payload.len() });
    };
    if version != 0 {
        return Err(DecodeError::Header {
            offset: base + 1,
            what: "nfgenmsg version",
            value: version.into(),
            expected: 0,
        });
    }
    let res_id = u16::from_be_bytes([r0, r1]);
    let body = payload.get(4..).unwrap_or_default();
    let base = base + 4;
    if msg_type == NFNL_MSG_BATCH_BEGIN || msg_type == NFNL_MSG_BATCH_END {
        let at = base - 4;
        if family != 0 {
            return Err(DecodeError::Header { offset: at, what: "batch family", value: family.into(), expected: 0 });
        }
        if res_id != NFNL_SUBSYS_NFTABLES {
            let (value, expected) = (res_id.into(), NFNL_SUBSYS_NFTABLES.into());
            return Err(DecodeError::Header { offset: at + 2, what: "batch res_id", value, expected });
        }
        Attrs::new(body, base, "batch").finish()?;
        return Ok(if msg_type == NFNL_MSG_BATCH_BEGIN { Message::BatchBegin } else { Message::BatchEnd });
    }
    if msg_type >> 8 != NFNL_SUBSYS_NFTABLES {
        return Err(DecodeError::UnknownMessage { offset: base - 4, msg_type });
    }
    if res_id != 0 {
        return Err(DecodeError::Header {
            offset: base - 2,
            what: "nfgenmsg res_id",
            value: res_id.into(),
            expected: 0,
        });
    }
    let Some(family) = NfFamily::from_number(family) else {
        return Err(DecodeError::NotCanonical {
            offset: base - 4,
            reason: "nfgenmsg family is neither ip (2) nor ip6 (10)",
        });
    };
    let m = match msg_type & 0xff {
        NFT_MSG_NEWTABLE => {
            let mut a = Attrs::new(body, base, "NFTA_TABLE");
            let name = a.req(NFTA_TABLE_NAME)?.string()?;
            let flags = a.req(NFTA_TABLE_FLAGS)?;
            if flags.u32()? != 0 {
                return Err(DecodeError::NotCanonical {
                    offset: flags.offset,
                    reason: "table flags (batch.rs sends 0)",
                });
            }
            let comment =
                a.opt(NFTA_TABLE_USERDATA)?.map(|u| comment_udata(&u, NFTNL_UDATA_TABLE_COMMENT)).transpose()?;
            a.finish()?;
            Message::AddTable { family, name, comment }
        }
        NFT_MSG_DELTABLE => {
            let mut a = Attrs::new(body, base, "NFTA_TABLE");
            let name = a.req(NFTA_TABLE_NAME)?.string()?;
            a.finish()?;
            Message::DelTable { family, name }
        }
        NFT_MSG_NEWCHAIN => {
            let mut a = Attrs::new(body, base, "NFTA_CHAIN");
            let table = a.req(NFTA_CHAIN_TABLE)?.string()?;
            let name = a.req(NFTA_CHAIN_NAME)?.string()?;
            let base_chain = match a.opt(NFTA_CHAIN_TYPE)? {
                None => None,
                Some(t) => Some(base_chain(&t, &mut a)?),
            };
            a.finish()?;
            Message::AddChain { family, table, name, base: base_chain }
        }
        NFT_MSG_DELCHAIN => {
            let mut a = Attrs::new(body, base, "NFTA_CHAIN");
            let table = a.req(NFTA_CHAIN_TABLE)?.string()?;
            let name = a.req(NFTA_CHAIN_NAME)?.string()?;
            a.finish()?;
            Message::DelChain { family, table, name }
        }
        NFT_MSG_DELRULE => {
            // Only `flush chain` (no handle): a handle is an attribute after the last expected.
            let mut a = Attrs::new(body, base, "NFTA_RULE");
            let table = a.req(NFTA_RULE_TABLE)?.string()?;
            let chain = a.req(NFTA_RULE_CHAIN)?.string()?;
            a.finish()?;
            Message::FlushChain { family, table, chain }
        }
        NFT_MSG_NEWRULE => {
            let mut a = Attrs::new(body, base, "NFTA_RULE");
            let table = a.req(NFTA_RULE_TABLE)?.string()?;
            let chain = a.req(NFTA_RULE_CHAIN)?.string()?;
            let mut list = a.req(NFTA_RULE_EXPRESSIONS)?.nest("NFTA_RULE_EXPRESSIONS")?;
            let mut exprs = Vec::new();
            while let Some(e) = list.opt(NFTA_LIST_ELEM)? {
                exprs.push(decode_expr(&e)?);
            }
            list.finish()?;
            let comment =
                a.opt(NFTA_RULE_USERDATA)?.map(|u| comment_udata(&u, NFTNL_UDATA_RULE_COMMENT)).transpose()?;
            a.finish()?;
            Message::AddRule { family, table, chain, exprs, comment }
        }
        NFT_MSG_NEWSET => {
            let mut a = Attrs::new(body, base, "NFTA_SET");
            let table = a.req(NFTA_SET_TABLE)?.string()?;
            let name = a.req(NFTA_SET_NAME)?.string()?;
            let flags = a.req(NFTA_SET_FLAGS)?.u32()?;
            let key_type = a.req(NFTA_SET_KEY_TYPE)?.u32()?;
            let key_len = a.req(NFTA_SET_KEY_LEN)?.u32()?;
            let data = match a.opt(NFTA_SET_DATA_TYPE)? {
                Some(t) => Some((t.u32()?, a.req(NFTA_SET_DATA_LEN)?.u32()?)),
                None => None,
            };
            let id = a.req(NFTA_SET_ID)?.u32()?;
            let timeout_ms = a.opt(NFTA_SET_TIMEOUT)?.map(|t| t.u64()).transpose()?;
            let udata = match a.opt(NFTA_SET_USERDATA)? {
                Some(u) if u.flat()?.is_empty() => {
                    return Err(DecodeError::NotCanonical {
                        offset: u.offset,
                        reason: "empty set userdata (batch.rs leaves it out)",
                    });
                }
                Some(u) => u.flat()?.to_vec(),
                None => Vec::new(),
            };
            a.finish()?;
            Message::AddSet {
                family,
                table,
                spec: SetSpec { name, flags, key_type, key_len, data, timeout_ms, udata },
                id,
            }
        }
        NFT_MSG_DELSET => {
            let mut a = Attrs::new(body, base, "NFTA_SET");
            let table = a.req(NFTA_SET_TABLE)?.string()?;
            let name = a.req(NFTA_SET_NAME)?.string()?;
            a.finish()?;
            Message::DelSet { family, table, name }
        }
        t @ (NFT_MSG_NEWSETELEM | NFT_MSG_DELSETELEM) => {
            let add = t == NFT_MSG_NEWSETELEM;
            let mut a = Attrs::new(body, base, "NFTA_SET_ELEM_LIST");
            let table = a.req(NFTA_SET_ELEM_LIST_TABLE)?.string()?;
            let set = a.req(NFTA_SET_ELEM_LIST_SET)?.string()?;
            // Only additions name the set by id too (del_elems takes no id).
            let set_id = if add { a.opt(NFTA_SET_ELEM_LIST_SET_ID)?.map(|i| i.u32()).transpose()? } else { None };
            let list =
                if add { Some(a.req(NFTA_SET_ELEM_LIST_ELEMENTS)?) } else { a.opt(NFTA_SET_ELEM_LIST_ELEMENTS)? };
            let Some(list) = list else {
                a.finish()?;
                return Ok(Message::FlushSet { family, table, set });
            };
            let mut l = list.nest("NFTA_SET_ELEM_LIST_ELEMENTS")?;
            let mut elems = Vec::new();
            while let Some(e) = l.opt(NFTA_LIST_ELEM)? {
                if elems.len() == ELEMS_PER_MESSAGE {
                    let reason = "more than ELEMS_PER_MESSAGE elements in one message";
                    return Err(DecodeError::NotCanonical { offset: e.offset, reason });
                }
                elems.push(decode_elem(&e, add)?);
            }
            l.finish()?;
            if elems.is_empty() {
                let reason = "an empty element list (batch.rs sends no message then)";
                return Err(DecodeError::NotCanonical { offset: list.offset, reason });
            }
            a.finish()?;
            if add {
                Message::AddElems { family, table, set, set_id, elems }
            } else {
                Message::DelElems { family, table, set, elems }
            }
        }
        _ => return Err(DecodeError::UnknownMessage { offset: base - 4, msg_type }),
    };
    Ok(m)
}

/// `type … hook … priority …; policy accept;` after NFTA_CHAIN_TYPE `t`.
fn base_chain(t: &Attr, a: &mut Attrs) -> Result<BaseChain> {
    let Some(chain_type) = ChainType::from_name(&t.string()?) else {
        let reason = "not a chain type (filter, nat, route)";
        return Err(DecodeError::BadString { offset: t.offset, context: t.ctx, attr: t.ty, reason });
    };
    let policy = a.req(NFTA_CHAIN_POLICY)?;
    if policy.u32()? != NF_ACCEPT as u32 {
        return Err(DecodeError::NotCanonical {
            offset: policy.offset,
            reason: "chain policy (batch.rs sends accept)",
        });
    }
    let mut h = a.req(NFTA_CHAIN_HOOK)?.nest("NFTA_HOOK")?;
    let hook_attr = h.req(NFTA_HOOK_HOOKNUM)?;
    let Some(hook) = Hook::from_number(hook_attr.u32()?) else {
        return Err(DecodeError::NotCanonical { offset: hook_attr.offset, reason: "not an inet hook (0 to 4)" });
    };
    let priority = h.req(NFTA_HOOK_PRIORITY)?.u32()? as i32;
    h.finish()?;
    Ok(BaseChain { chain_type, hook, priority })
}

/// One NFTA_LIST_ELEM of a set element list. Deletions carry key and timeout only.
fn decode_elem(e: &Attr, add: bool) -> Result<Elem> {
    let mut a = e.nest("NFTA_SET_ELEM")?;
    let timeout_ms = a.opt(NFTA_SET_ELEM_TIMEOUT)?.map(|t| t.u64()).transpose()?;
    let key = a.req(NFTA_SET_ELEM_KEY)?.data_value("NFTA_SET_ELEM_KEY")?;
    let (mut data, mut comment) = (None, None);
    if add {
        if let Some(d) = a.opt(NFTA_SET_ELEM_DATA)? {
            let mut n = d.nest("NFTA_SET_ELEM_DATA")?;
            data = Some(match n.opt(NFTA_DATA_VALUE)? {
                Some(v) => ElemData::Value(v.flat()?.to_vec()),
                None => ElemData::Verdict(decode_verdict(&n.req(NFTA_DATA_VERDICT)?)?),
            });
            n.finish()?;
        }
        comment =
            a.opt(NFTA_SET_ELEM_USERDATA)?.map(|u| comment_udata(&u, NFTNL_UDATA_SET_ELEM_COMMENT)).transpose()?;
    }
    a.finish()?;
    Ok(Elem { key, data, timeout_ms, comment })
}

/// An NFTA_DATA_VERDICT nest.
fn decode_verdict(v: &Attr) -> Result<Verdict> {
    let mut a = v.nest("NFTA_VERDICT")?;
    let code_attr = a.req(NFTA_VERDICT_CODE)?;
    let code = code_attr.u32()? as i32;
    let chain = match code {
        NFT_JUMP | NFT_GOTO => Some(a.req(NFTA_VERDICT_CHAIN)?.string()?),
        _ => None,
    };
    let Some(verdict) = Verdict::from_code(code, chain) else {
        return Err(code_attr.bad(u64::from(code as u32), "not a verdict code expr.rs sends"));
    };
    // A chain after accept, drop or return is an extra attribute.
    a.finish()?;
    Ok(verdict)
}

/// One NFTA_LIST_ELEM of a rule's expressions: name, then data in expr.rs's attribute order.
fn decode_expr(e: &Attr) -> Result<Expr> {
    let mut a = e.nest("NFTA_EXPR")?;
    let name_attr = a.req(NFTA_EXPR_NAME)?;
    let name = name_attr.string()?;
    let data = a.req(NFTA_EXPR_DATA)?;
    a.finish()?;
    let ctx = match name.as_str() {
        "payload" => "NFTA_PAYLOAD",
        "meta" => "NFTA_META",
        "ct" => "NFTA_CT",
        "cmp" => "NFTA_CMP",
        "bitwise" => "NFTA_BITWISE",
        "lookup" => "NFTA_LOOKUP",
        "immediate" => "NFTA_IMMEDIATE",
        "numgen" => "NFTA_NG",
        "nat" => "NFTA_NAT",
        "masq" => "NFTA_MASQ",
        "fib" => "NFTA_FIB",
        "reject" => "NFTA_REJECT",
        "counter" => "NFTA_COUNTER",
        "dynset" => "NFTA_DYNSET",
        _ => return Err(DecodeError::UnknownExpr { offset: name_attr.offset, name }),
    };
    let mut d = data.nest(ctx)?;
    let meta_key = |v| match v {
        3 => Some(MetaKey::Mark),
        6 => Some(MetaKey::Iifname),
        12 => Some(MetaKey::Nftrace),
        16 => Some(MetaKey::L4proto),
        _ => None,
    };
    let expr = match name.as_str() {
        "payload" => {
            let dreg = d.req(1)?.u32()?;
            let base = d.req(2)?.enumerated("not a payload base", |v| match v {
                0 => Some(PayloadBase::Link),
                1 => Some(PayloadBase::Network),
                2 => Some(PayloadBase::Transport),
                _ => None,
            })?;
            let offset = d.req(3)?.u32()?;
            let len = d.req(4)?.u32()?;
            Expr::Payload { dreg, base, offset, len }
        }
        "meta" => {
            let key = d.req(2)?.enumerated("not a meta key of expr.rs", meta_key)?;
            // NFTA_META_DREG (1) loads the key; otherwise NFTA_META_SREG (3) sets it.
            match d.opt(1)? {
                Some(dreg) => Expr::Meta { dreg: dreg.u32()?, key },
                None => Expr::MetaSet { sreg: d.req(3)?.u32()?, key },
            }
        }
        "ct" => {
            let key = d.req(2)?.enumerated("not a ct key of expr.rs", |v| match v {
                0 => Some(CtKey::State),
                2 => Some(CtKey::Status),
                _ => None,
            })?;
            Expr::Ct { dreg: d.req(1)?.u32()?, key }
        }
        "cmp" => {
            let sreg = d.req(1)?.u32()?;
            let op = d.req(2)?.enumerated("not a cmp op of expr.rs", |v| match v {
                0 => Some(CmpOp::Eq),
                1 => Some(CmpOp::Neq),
                _ => None,
            })?;
            let data = d.req(3)?.data_value("NFTA_CMP_DATA")?;
            Expr::Cmp { sreg, op, data }
        }
        "bitwise" => {
            let sreg = d.req(1)?.u32()?;
            let dreg = d.req(2)?.u32()?;
            let spelled = match d.opt(6)? {
                Some(op) => {
                    let v = op.u32()?;
                    if v != 0 {
                        return Err(op.bad(v.into(), "not NFT_BITWISE_BOOL"));
                    }
                    true
                }
                None => false,
            };
            let len_attr = d.req(3)?;
            let len = len_attr.u32()?;
            let mask = d.req(4)?.data_value("NFTA_BITWISE_MASK")?;
            let xor = d.req(5)?.data_value("NFTA_BITWISE_XOR")?;
            if usize::try_from(len).ok() != Some(mask.len()) {
                let reason = "NFTA_BITWISE_LEN differs from the mask's length";
                return Err(DecodeError::NotCanonical { offset: len_attr.offset, reason });
            }
            Expr::Bitwise { sreg, dreg, mask, xor, spelled }
        }
        "lookup" => {
            let sreg = d.req(2)?.u32()?;
            let dreg = d.opt(3)?.map(|r| r.u32()).transpose()?;
            let set = d.req(1)?.string()?;
            let set_id = d.opt(4)?.map(|i| i.u32()).transpose()?;
            let invert = match d.opt(5)? {
                Some(f) => {
                    let v = f.u32()?;
                    if v != 1 {
                        return Err(f.bad(v.into(), "not NFT_LOOKUP_F_INV"));
                    }
                    true
                }
                None => false,
            };
            Expr::Lookup { sreg, dreg, set, set_id, invert }
        }
        "immediate" => {
            let dreg_attr = d.req(1)?;
            let dreg = dreg_attr.u32()?;
            let mut n = d.req(2)?.nest("NFTA_IMMEDIATE_DATA")?;
            let e = match n.opt(NFTA_DATA_VALUE)? {
                Some(v) => Expr::ImmediateData { dreg, data: v.flat()?.to_vec() },
                None => {
                    let v = decode_verdict(&n.req(NFTA_DATA_VERDICT)?)?;
                    if dreg != NFT_REG_VERDICT {
                        return Err(dreg_attr.bad(dreg.into(), "not the verdict register, for a verdict"));
                    }
                    Expr::Immediate(v)
                }
            };
            n.finish()?;
            e
        }
        "numgen" => {
            let dreg = d.req(1)?.u32()?;
            let modulus = d.req(2)?.u32()?;
            let random = d.req(3)?.enumerated("not a numgen type", |v| match v {
                0 => Some(false),
                1 => Some(true),
                _ => None,
            })?;
            let offset = d.req(4)?;
            if offset.u32()? != 0 {
                return Err(DecodeError::NotCanonical {
                    offset: offset.offset,
                    reason: "numgen offset (expr.rs sends 0)",
                });
            }
            Expr::Numgen { dreg, modulus, random }
        }
        "nat" => {
            let kind = d.req(1)?.enumerated("not a nat type", |v| match v {
                0 => Some(NatKind::Snat),
                1 => Some(NatKind::Dnat),
                _ => None,
            })?;
            let family = d
                .req(2)?
                .enumerated("neither ip (2) nor ip6 (10)", |v| NfFamily::from_number(u8::try_from(v).ok()?))?;
            let addr_min = d.req(3)?.u32()?;
            let proto_min = d.opt(5)?.map(|p| p.u32()).transpose()?;
            let flags = d.opt(7)?.map(|f| f.u32()).transpose()?;
            Expr::Nat { kind, family, addr_min, proto_min, flags }
        }
        "masq" => Expr::Masq { flags: d.req(1)?.u32()? },
        "fib" => {
            let flags = d.req(3)?.u32()?;
            let result = d.req(2)?.u32()?;
            Expr::Fib { dreg: d.req(1)?.u32()?, flags, result }
        }
        "reject" => {
            let kind = d.req(1)?.u32()?;
            let [code] = d.req(2)?.fixed::<1>()?;
            Expr::Reject { kind, code }
        }
        "counter" => {
            for ty in [1, 2] {
                let c = d.req(ty)?;
                if c.u64()? != 0 {
                    let reason = "a counter with packets or bytes (expr.rs sends zeros)";
                    return Err(DecodeError::NotCanonical { offset: c.offset, reason });
                }
            }
            Expr::Counter
        }
        "dynset" => {
            let sreg_key = d.req(4)?.u32()?;
            let op = d.req(3)?.u32()?;
            let set = d.req(1)?.string()?;
            let set_id = d.opt(2)?.map(|i| i.u32()).transpose()?;
            Expr::Dynset { sreg_key, op, set, set_id }
        }
        _ => return Err(DecodeError::UnknownExpr { offset: name_attr.offset, name }),
    };
    d.finish()?;
    Ok(expr)
}

/// Every netlink message of a buffer, decoded, with its header fields: no check of how they
/// make a batch (see [`decode_batch`]).
pub fn decode_messages(bytes: &[u8]) -> Result<Vec<Decoded>> {
    Ok(decode_framed(bytes)?.into_iter().map(|(_, d)| d).collect())
}

/// Messages with the offsets of their headers.
fn decode_framed(bytes: &[u8]) -> Result<Vec<(usize, Decoded)>> {
    let mut out = Vec::new();
    let mut off = 0;
    // `off <= bytes.len()` throughout: it only grows by a length checked against what is left.
    while let Some(rest) = bytes.get(off..).filter(|r| !r.is_empty()) {
        let Some(h) = rest.get(..16) else {
            return Err(DecodeError::Truncated { offset: off, what: "nlmsghdr", need: 16, have: rest.len() });
        };
        let word = |i: usize| u32::from_ne_bytes([h[i], h[i + 1], h[i + 2], h[i + 3]]);
        let len = word(0) as usize;
        let msg_type = u16::from_ne_bytes([h[4], h[5]]);
        let flags = u16::from_ne_bytes([h[6], h[7]]);
        let (seq, port_id) = (word(8), word(12));
        if len < 16 {
            return Err(DecodeError::TooShort { offset: off, what: "netlink message", len, min: 16 });
        }
        if !len.is_multiple_of(4) {
            return Err(DecodeError::Misaligned { offset: off, what: "netlink message", len });
        }
        let Some(payload) = rest.get(16..len) else {
            return Err(DecodeError::Truncated { offset: off, what: "netlink message", need: len, have: rest.len() });
        };
        let message = decode_at(msg_type, payload, off + 16)?;
        out.push((off, Decoded { seq, flags, port_id, message }));
        off += len;
    }
    Ok(out)
}

/// Decodes a [`FinishedBatch`]'s bytes: BATCH_BEGIN, messages, BATCH_END, seqs consecutive,
/// each message's flags as [`Batch`] sets them (NLM_F_ACK on the last message only), port id 0.
/// On success, [`DecodedBatch::encode`] gives back exactly `bytes`.
pub fn decode_batch(bytes: &[u8]) -> Result<DecodedBatch> {
    let msgs = decode_framed(bytes)?;
    let first_seq = match msgs.first() {
        Some((_, Decoded { message: Message::BatchBegin, seq, .. })) => *seq,
        _ => return Err(DecodeError::Batch { offset: 0, reason: "no NFNL_MSG_BATCH_BEGIN first" }),
    };
    match msgs.last() {
        Some((_, Decoded { message: Message::BatchEnd, .. })) if msgs.len() >= 2 => {}
        _ => return Err(DecodeError::Batch { offset: bytes.len(), reason: "no NFNL_MSG_BATCH_END last" }),
    }
    let last_inner = msgs.len() - 2;
    let mut messages = Vec::with_capacity(last_inner);
    for (i, (off, d)) in msgs.into_iter().enumerate() {
        let framing = matches!(d.message, Message::BatchBegin | Message::BatchEnd);
        if framing != (i == 0 || i == last_inner + 1) {
            return Err(DecodeError::Batch { offset: off, reason: "batch begin or end inside the batch" });
        }
        // `i` fits in u32: every message takes 16 bytes or more of a buffer `usize` indexes, but
        // seqs wrap (Batch numbers with wrapping_add), so compare wrapping too.
        let want_seq = first_seq.wrapping_add(i as u32);
        if d.seq != want_seq {
            let (value, expected) = (d.seq.into(), want_seq.into());
            return Err(DecodeError::Header { offset: off + 8, what: "nlmsg_seq", value, expected });
        }
        let ack = if i == last_inner && i > 0 && !framing { NLM_F_ACK } else { 0 };
        let want_flags = NLM_F_REQUEST | d.message.create_flags() | ack;
        if d.flags != want_flags {
            let (value, expected) = (d.flags.into(), want_flags.into());
            return Err(DecodeError::Header { offset: off + 6, what: "nlmsg_flags", value, expected });
        }
        if d.port_id != 0 {
            return Err(DecodeError::Header {
                offset: off + 12,
                what: "nlmsg_pid",
                value: d.port_id.into(),
                expected: 0,
            });
        }
        if !framing {
            messages.push(d.message);
        }
    }
    Ok(DecodedBatch { first_seq, messages })
}
