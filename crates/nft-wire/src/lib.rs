//! nf_tables over netlink, the wire format only: typed messages for tables, chains, rules, sets
//! and elements, the expressions kube-nftproxy uses, and the batch that makes them one atomic
//! transaction. No I/O: a [`Batch`] becomes the bytes of one `send()`.
//!
//! Encodings follow libnftnl (what `nft` sends), attribute for attribute, so `nft list ruleset`
//! decompiles what we program; `tests/` compares our bytes with captures of
//! `nft --debug=mnl` (`tools/mnl2hex.py`). [`decode`] is the inverse, for tests and debugging:
//! it parses a batch back into typed messages.

pub mod batch;
pub mod consts;
pub mod decode;
pub mod expr;
#[cfg(feature = "proptest-support")]
pub mod mutate;
pub mod netlink;
mod writer;

pub use batch::{
    BaseChain, Batch, ChainType, Elem, ElemData, ElemDataRef, ElemRef, FinishedBatch, Hook, MsgInfo, NfFamily, SetSpec,
    get_elems_request, split_messages,
};
pub use decode::{DecodeError, Decoded, DecodedBatch, Message, decode_batch, decode_message, decode_messages};
pub use expr::{CmpOp, CtKey, Expr, MetaKey, NatKind, PayloadBase, Verdict, concat_reg};
pub use writer::Udata;
