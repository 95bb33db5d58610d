//! Netlink framing, the one codec every conversation of ours with the kernel uses — nf_tables
//! requests and replies, ctnetlink (conntrack), nf_tables trace events, rtnetlink addresses —
//! with each emit beside its parse. No I/O.
//!
//! Two readers on purpose: [`crate::decode`] is strict (exactly what our encoder writes, for
//! byte-exact round trips); the readers here are lenient, for what the kernel sends (attributes
//! we do not know are skipped, anything malformed ends the walk; never a panic, whatever the
//! bytes: `crates/nftables/src/prop_tests.rs` feeds them random and mutated replies).

use crate::consts::*;
pub use crate::writer::Writer;

/// `nlmsghdr.nlmsg_type` of an error or acknowledgement.
pub const NLMSG_ERROR: u16 = 2;
/// `nlmsghdr.nlmsg_type` of the end of a dump.
pub const NLMSG_DONE: u16 = 3;
/// NLM_F_ROOT | NLM_F_MATCH: a dump request.
pub const NLM_F_DUMP: u16 = 0x300;
/// On an NLMSG_ERROR: extended-ack attributes follow.
pub const NLM_F_ACK_TLVS: u16 = 0x200;
const NLMSGERR_ATTR_MSG: u16 = 1;
const NLMSGHDR_LEN: usize = 16;

// Emit.

/// One netlink message: the header (length, type, flags, seq, port id 0), then `body`, padded.
pub fn message(ty: u16, flags: u16, seq: u32, body: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(NLMSGHDR_LEN + body.len() + 3);
    m.extend_from_slice(&((NLMSGHDR_LEN + body.len()) as u32).to_ne_bytes());
    m.extend_from_slice(&ty.to_ne_bytes());
    m.extend_from_slice(&flags.to_ne_bytes());
    m.extend_from_slice(&seq.to_ne_bytes());
    m.extend_from_slice(&0u32.to_ne_bytes());
    m.extend_from_slice(body);
    m.resize(m.len().next_multiple_of(4), 0);
    m
}

/// An nfnetlink request: `subsys_msg` is `(subsystem << 8) | message type`; the body is the
/// nfgenmsg (family, version 0, resource id 0) and the attributes.
pub fn nfnl_request(subsys_msg: u16, flags: u16, seq: u32, family: u8, attrs: &[u8]) -> Vec<u8> {
    let body = [&[family, 0, 0, 0][..], attrs].concat();
    message(subsys_msg, NLM_F_REQUEST | flags, seq, &body)
}

/// A string attribute (NUL-terminated, padded), as the filters of dump requests need.
pub fn name_attr(ty: u16, name: &str) -> Vec<u8> {
    let mut w = Writer::default();
    w.str(ty, name);
    w.into_bytes()
}

// Parse.

/// The netlink messages of a datagram: (type, flags, seq, payload after the header).
pub fn messages(buf: &[u8]) -> impl Iterator<Item = (u16, u16, u32, &[u8])> {
    let mut off = 0;
    std::iter::from_fn(move || {
        let h = buf.get(off..off + NLMSGHDR_LEN)?;
        let len = u32::from_ne_bytes([h[0], h[1], h[2], h[3]]) as usize;
        // `len` is a u32 from the wire: compared without an addition that could overflow.
        if len < NLMSGHDR_LEN || len > buf.len() - off {
            return None;
        }
        let ty = u16::from_ne_bytes([h[4], h[5]]);
        let flags = u16::from_ne_bytes([h[6], h[7]]);
        let seq = u32::from_ne_bytes([h[8], h[9], h[10], h[11]]);
        let item = (ty, flags, seq, &buf[off + NLMSGHDR_LEN..off + len]);
        off += (len + 3) & !3;
        Some(item)
    })
}

/// The attributes of a buffer: (type without the nested and byte-order flags, value).
pub fn attrs(buf: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    let mut off = 0;
    std::iter::from_fn(move || {
        let h = buf.get(off..off + 4)?;
        let len = u16::from_ne_bytes([h[0], h[1]]) as usize;
        let ty = u16::from_ne_bytes([h[2], h[3]]) & 0x3fff;
        if len < 4 || off + len > buf.len() {
            return None;
        }
        let item = (ty, &buf[off + 4..off + len]);
        off += (len + 3) & !3;
        Some(item)
    })
}

/// A big-endian 32-bit attribute's value (None when shorter than 4 bytes).
pub fn be32_attr(v: &[u8]) -> Option<u32> {
    v.first_chunk::<4>().map(|b| u32::from_be_bytes(*b))
}

/// A big-endian 64-bit attribute's value (None when shorter than 8 bytes).
pub fn be64_attr(v: &[u8]) -> Option<u64> {
    v.first_chunk::<8>().map(|b| u64::from_be_bytes(*b))
}

/// A NUL-terminated string attribute's text.
pub fn str_attr(v: &[u8]) -> String {
    String::from_utf8_lossy(v.split(|b| *b == 0).next().unwrap_or(v)).into_owned()
}

/// The (negative) errno of an NLMSG_ERROR payload, 0 for an acknowledgement; a payload too
/// short to hold one is a protocol error (-EPROTO), never a panic.
pub fn nlmsg_error(payload: &[u8]) -> i32 {
    match payload.get(..4) {
        Some(b) => i32::from_ne_bytes([b[0], b[1], b[2], b[3]]),
        None => -EPROTO,
    }
}

/// EPROTO (Linux): what a reply too short to read is.
const EPROTO: i32 = 71;

/// The kernel's extended-ack text (NLMSGERR_ATTR_MSG) of an NLMSG_ERROR whose request was sent
/// with NETLINK_CAP_ACK (errno, the request's header only, then the attributes).
pub fn ext_ack_message(flags: u16, payload: &[u8]) -> Option<String> {
    if flags & NLM_F_ACK_TLVS == 0 {
        return None;
    }
    let tlvs = payload.get(4 + NLMSGHDR_LEN..)?;
    attrs(tlvs).find(|(t, _)| *t == NLMSGERR_ATTR_MSG).map(|(_, v)| str_attr(v))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_emit_reads_back_with_its_parse() {
        let mut w = Writer::default();
        w.str(NFTA_TABLE_NAME, "kube-nftproxy");
        let n = w.nest(NFTA_SET_ELEM_LIST_ELEMENTS);
        w.u32(NFTA_SET_FLAGS, 7);
        w.end(n);
        let req =
            nfnl_request((NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_GETTABLE, NLM_F_ACK, 42, NFPROTO_IPV4, &w.into_bytes());
        let (ty, flags, seq, payload) = messages(&req).next().unwrap();
        assert_eq!((ty, flags, seq), ((NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_GETTABLE, NLM_F_REQUEST | NLM_F_ACK, 42));
        assert_eq!(payload[..4], [NFPROTO_IPV4, 0, 0, 0]);
        let a: Vec<(u16, &[u8])> = attrs(&payload[4..]).collect();
        assert_eq!((a[0].0, str_attr(a[0].1).as_str()), (NFTA_TABLE_NAME, "kube-nftproxy"));
        assert_eq!(a[1].0, NFTA_SET_ELEM_LIST_ELEMENTS, "the nested flag is not part of the type");
        assert_eq!(attrs(a[1].1).next(), Some((NFTA_SET_FLAGS, &7u32.to_be_bytes()[..])));
        assert_eq!(name_attr(NFTA_TABLE_NAME, "kube-nftproxy"), &payload[4..4 + 20]);
    }

    #[test]
    fn an_error_reply_gives_its_errno_and_text() {
        // errno -2, the request's header, then NLMSGERR_ATTR_MSG.
        let mut p = (-2i32).to_ne_bytes().to_vec();
        p.extend_from_slice(&message(0x0a00, 1, 9, &[])[..16]);
        let mut w = Writer::default();
        w.str(NLMSGERR_ATTR_MSG, "no such table");
        p.extend(w.into_bytes());
        let m = message(NLMSG_ERROR, NLM_F_ACK_TLVS, 9, &p);
        let (ty, flags, _, payload) = messages(&m).next().unwrap();
        assert_eq!((ty, nlmsg_error(payload)), (NLMSG_ERROR, -2));
        assert_eq!(ext_ack_message(flags, payload).as_deref(), Some("no such table"));
        assert_eq!(ext_ack_message(0, payload), None, "no TLVs announced");
    }

    #[test]
    fn short_or_odd_bytes_are_errors_never_panics() {
        assert_eq!(nlmsg_error(&[1, 2]), -EPROTO);
        assert_eq!(nlmsg_error(&[]), -EPROTO);
        // A header claiming more than the datagram holds, or less than a header: no message.
        let mut msg = 64u32.to_ne_bytes().to_vec();
        msg.extend_from_slice(&[0; 12]);
        assert_eq!(messages(&msg).count(), 0);
        let mut tiny = 8u32.to_ne_bytes().to_vec();
        tiny.extend_from_slice(&[0; 12]);
        assert_eq!(messages(&tiny).count(), 0);
        assert_eq!(messages(&[1, 2, 3]).count(), 0);
        // Attributes: a length past the end, or below the header size, ends the walk.
        assert_eq!(attrs(&[200, 0, 1, 0, 9, 9]).count(), 0);
        assert_eq!(attrs(&[2, 0, 1, 0]).count(), 0);
        assert_eq!(ext_ack_message(NLM_F_ACK_TLVS, &[0; 8]), None);
        let mut capped = vec![0u8; 20];
        capped.extend_from_slice(&[255, 0, 1, 0]);
        assert_eq!(ext_ack_message(NLM_F_ACK_TLVS, &capped), None);
    }
}
