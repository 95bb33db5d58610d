//! nf_tables expressions, encoded the way libnftnl (and so `nft`) encodes them: same attributes,
//! same order, so that `nft list ruleset` decompiles our rules as if it had written them.

use crate::consts::*;
use crate::writer::Writer;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PayloadBase {
    Link = 0,
    Network = 1,
    Transport = 2,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MetaKey {
    Mark = 3,
    Iifname = 6,
    Nftrace = 12,
    L4proto = 16,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CtKey {
    State = 0,
    Status = 2,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CmpOp {
    Eq = 0,
    Neq = 1,
}

/// What a rule does in the end, or the data of a verdict map element.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Verdict {
    Accept,
    Drop,
    Return,
    Jump(String),
    Goto(String),
}

impl Verdict {
    /// The verdict of a kernel code (NFTA_VERDICT_CODE) and, for jump and goto, its chain; None
    /// for another code or a jump/goto without a chain. The decoder's and every reader's.
    pub fn from_code(code: i32, chain: Option<String>) -> Option<Verdict> {
        Some(match code {
            NF_ACCEPT => Verdict::Accept,
            NF_DROP => Verdict::Drop,
            NFT_RETURN => Verdict::Return,
            NFT_JUMP => Verdict::Jump(chain?),
            NFT_GOTO => Verdict::Goto(chain?),
            _ => return None,
        })
    }

    pub(crate) fn write(&self, w: &mut Writer) {
        let (code, chain) = match self {
            Verdict::Accept => (NF_ACCEPT, None),
            Verdict::Drop => (NF_DROP, None),
            Verdict::Return => (NFT_RETURN, None),
            Verdict::Jump(c) => (NFT_JUMP, Some(c)),
            Verdict::Goto(c) => (NFT_GOTO, Some(c)),
        };
        let v = w.nest(NFTA_DATA_VERDICT);
        w.u32(NFTA_VERDICT_CODE, code as u32);
        if let Some(c) = chain {
            w.str(NFTA_VERDICT_CHAIN, c);
        }
        w.end(v);
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum NatKind {
    Snat = 0,
    Dnat = 1,
}

/// `NF_NAT_RANGE_PROTO_SPECIFIED`: the NAT sets the port too.
pub const NAT_FLAG_PROTO_SPECIFIED: u32 = 0x2;
/// `NFT_DYNSET_OP_UPDATE`
pub const DYNSET_UPDATE: u32 = 1;
/// `NF_NAT_RANGE_PROTO_RANDOM_FULLY`
pub const NAT_FLAG_FULLY_RANDOM: u32 = 0x10;
/// fib flags and results
pub const NFTA_FIB_F_SADDR: u32 = 1;
pub const NFTA_FIB_F_DADDR: u32 = 2;
pub const NFT_FIB_RESULT_ADDRTYPE: u32 = 3;
/// `RTN_LOCAL`, the address type `fib … type local` compares with.
pub const RTN_LOCAL: u32 = 2;
/// reject types
pub const NFT_REJECT_ICMP_UNREACH: u32 = 0;
pub const NFT_REJECT_TCP_RST: u32 = 1;

/// One expression of a rule.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Expr {
    Payload {
        dreg: u32,
        base: PayloadBase,
        offset: u32,
        len: u32,
    },
    Meta {
        dreg: u32,
        key: MetaKey,
    },
    MetaSet {
        sreg: u32,
        key: MetaKey,
    },
    Ct {
        dreg: u32,
        key: CtKey,
    },
    Cmp {
        sreg: u32,
        op: CmpOp,
        data: Vec<u8>,
    },
    /// `dreg = (sreg & mask) ^ xor`. nft sends the boolean op attribute when the rule text
    /// spells the operator (`meta mark & 0x4000`, `meta mark | 0x4000`) and leaves it out for
    /// masks it derives itself (`ct status dnat`, address prefixes): `spelled` says which.
    Bitwise {
        sreg: u32,
        dreg: u32,
        mask: Vec<u8>,
        xor: Vec<u8>,
        spelled: bool,
    },
    /// Set membership (no dreg) or map lookup (dreg; `NFT_REG_VERDICT` for verdict maps).
    /// `set_id` names a set created earlier in the same batch (nft sends both name and id).
    Lookup {
        sreg: u32,
        dreg: Option<u32>,
        set: String,
        set_id: Option<u32>,
        invert: bool,
    },
    Immediate(Verdict),
    /// A constant into a data register (`dnat to 10.0.0.1:80` loads address and port this way).
    ImmediateData {
        dreg: u32,
        data: Vec<u8>,
    },
    /// Writes a value in [0, modulus) to dreg, in host byte order.
    Numgen {
        dreg: u32,
        modulus: u32,
        random: bool,
    },
    Nat {
        kind: NatKind,
        family: crate::batch::NfFamily,
        addr_min: u32,
        proto_min: Option<u32>,
        flags: Option<u32>,
    },
    Masq {
        flags: u32,
    },
    Fib {
        dreg: u32,
        flags: u32,
        result: u32,
    },
    Reject {
        kind: u32,
        code: u8,
    },
    Counter,
    /// `update @set { key }` / `add @set { key }` from a rule (op 1 update, 0 add).
    Dynset {
        sreg_key: u32,
        op: u32,
        set: String,
        set_id: Option<u32>,
    },
}

impl Expr {
    pub fn name(&self) -> &'static str {
        match self {
            Expr::Payload { .. } => "payload",
            Expr::Meta { .. } | Expr::MetaSet { .. } => "meta",
            Expr::Ct { .. } => "ct",
            Expr::Cmp { .. } => "cmp",
            Expr::Bitwise { .. } => "bitwise",
            Expr::Lookup { .. } => "lookup",
            Expr::Immediate(_) | Expr::ImmediateData { .. } => "immediate",
            Expr::Numgen { .. } => "numgen",
            Expr::Nat { .. } => "nat",
            Expr::Masq { .. } => "masq",
            Expr::Fib { .. } => "fib",
            Expr::Reject { .. } => "reject",
            Expr::Counter => "counter",
            Expr::Dynset { .. } => "dynset",
        }
    }

    pub(crate) fn write(&self, w: &mut Writer) {
        let elem = w.nest(NFTA_LIST_ELEM);
        w.str(NFTA_EXPR_NAME, self.name());
        let d = w.nest(NFTA_EXPR_DATA);
        match self {
            Expr::Payload { dreg, base, offset, len } => {
                w.u32(1, *dreg);
                w.u32(2, *base as u32);
                w.u32(3, *offset);
                w.u32(4, *len);
            }
            Expr::Meta { dreg, key } => {
                w.u32(2, *key as u32);
                w.u32(1, *dreg);
            }
            Expr::MetaSet { sreg, key } => {
                w.u32(2, *key as u32);
                w.u32(3, *sreg);
            }
            Expr::Ct { dreg, key } => {
                w.u32(2, *key as u32);
                w.u32(1, *dreg);
            }
            Expr::Cmp { sreg, op, data } => {
                w.u32(1, *sreg);
                w.u32(2, *op as u32);
                let n = w.nest(3);
                w.bytes(NFTA_DATA_VALUE, data);
                w.end(n);
            }
            Expr::Bitwise { sreg, dreg, mask, xor, spelled } => {
                w.u32(1, *sreg);
                w.u32(2, *dreg);
                if *spelled {
                    w.u32(6, 0); // NFT_BITWISE_BOOL
                }
                w.u32(3, mask.len() as u32);
                let m = w.nest(4);
                w.bytes(NFTA_DATA_VALUE, mask);
                w.end(m);
                let x = w.nest(5);
                w.bytes(NFTA_DATA_VALUE, xor);
                w.end(x);
            }
            Expr::Lookup { sreg, dreg, set, set_id, invert } => {
                w.u32(2, *sreg);
                if let Some(d) = dreg {
                    w.u32(3, *d);
                }
                w.str(1, set);
                if let Some(id) = set_id {
                    w.u32(4, *id);
                }
                if *invert {
                    w.u32(5, 1);
                }
            }
            Expr::Immediate(v) => {
                w.u32(1, NFT_REG_VERDICT);
                let n = w.nest(2);
                v.write(w);
                w.end(n);
            }
            Expr::ImmediateData { dreg, data } => {
                w.u32(1, *dreg);
                let n = w.nest(2);
                w.bytes(NFTA_DATA_VALUE, data);
                w.end(n);
            }
            Expr::Numgen { dreg, modulus, random } => {
                w.u32(1, *dreg);
                w.u32(2, *modulus);
                w.u32(3, u32::from(*random));
                w.u32(4, 0);
            }
            Expr::Nat { kind, family, addr_min, proto_min, flags } => {
                w.u32(1, *kind as u32);
                w.u32(2, u32::from(family.number()));
                w.u32(3, *addr_min);
                if let Some(p) = proto_min {
                    w.u32(5, *p);
                }
                if let Some(f) = flags {
                    w.u32(7, *f);
                }
            }
            Expr::Masq { flags } => {
                w.u32(1, *flags);
            }
            Expr::Fib { dreg, flags, result } => {
                w.u32(3, *flags);
                w.u32(2, *result);
                w.u32(1, *dreg);
            }
            Expr::Reject { kind, code } => {
                w.u32(1, *kind);
                w.bytes(2, &[*code]);
            }
            Expr::Counter => {
                w.u64(1, 0);
                w.u64(2, 0);
            }
            Expr::Dynset { sreg_key, op, set, set_id } => {
                w.u32(4, *sreg_key);
                w.u32(3, *op);
                w.str(1, set);
                if let Some(id) = set_id {
                    w.u32(2, *id);
                }
            }
        }
        w.end(d);
        w.end(elem);
    }
}

/// The register that holds the field at a 32-bit word offset of a concatenation, as `nft`
/// allocates them: the first field in `NFT_REG_1`, the others in `NFT_REG32_xx`.
pub fn concat_reg(word: u32) -> u32 {
    if word == 0 { NFT_REG_1 } else { NFT_REG32_00 + word }
}
