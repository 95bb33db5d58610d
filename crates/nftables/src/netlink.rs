//! The only I/O of the backend: a NETLINK_NETFILTER socket (neli) that sends a batch in one
//! `send` and reads the kernel's verdict.

use std::io;
use std::os::fd::AsRawFd;

use neli::consts::socket::NlFamily;
use neli::socket::NlSocket;
use neli::utils::Groups;
use nftproxy_nft_wire::consts::*;
use nftproxy_nft_wire::{FinishedBatch, MsgInfo};

const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLM_F_ACK_TLVS: u16 = 0x200;
const NLMSGERR_ATTR_MSG: u16 = 1;
const NETLINK_CAP_ACK: libc::c_int = 10;

/// One message the kernel refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KernelError {
    /// What the message did ("add elements 0..3 of backends").
    pub what: String,
    pub errno: i32,
    /// The kernel's extended-ack text, when it gave one.
    pub message: Option<String>,
}

impl std::fmt::Display for KernelError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.what, io::Error::from_raw_os_error(self.errno))?;
        if let Some(m) = &self.message {
            write!(f, " ({m})")?;
        }
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum NetlinkError {
    #[error("netlink socket: {0}")]
    Io(#[from] io::Error),
    #[error("the kernel rejected the transaction, nothing was changed: {}", .0.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("; "))]
    Rejected(Vec<KernelError>),
    #[error("no answer from the kernel for the transaction")]
    NoAck,
}

/// What one committed batch cost.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CommitStats {
    pub messages: usize,
    pub bytes: usize,
}

pub struct NftSocket {
    sock: NlSocket,
    rbuf: Vec<u8>,
}

fn setsockopt(fd: i32, level: libc::c_int, opt: libc::c_int, v: libc::c_int) -> io::Result<()> {
    // SAFETY: an int option on a socket we own.
    let rc = unsafe { libc::setsockopt(fd, level, opt, &v as *const _ as *const libc::c_void, 4) };
    if rc < 0 { Err(io::Error::last_os_error()) } else { Ok(()) }
}

impl NftSocket {
    pub fn open() -> io::Result<NftSocket> {
        let sock = NlSocket::connect(NlFamily::Netfilter, None, Groups::empty())?;
        sock.enable_ext_ack(true)?;
        let fd = sock.as_raw_fd();
        // Errors then carry only the failing message's header, not its whole body.
        setsockopt(fd, libc::SOL_NETLINK, NETLINK_CAP_ACK, 1)?;
        // Room for the kernel's answers to a large batch (we are root: force it).
        setsockopt(fd, libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, 8 << 20)
            .or_else(|_| sock.set_recv_buffer_size(8 << 20))?;
        let tv = libc::timeval { tv_sec: 30, tv_usec: 0 };
        // SAFETY: a timeval option on a socket we own.
        unsafe {
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                &tv as *const _ as *const libc::c_void,
                size_of_val(&tv) as u32,
            );
        }
        Ok(NftSocket { sock, rbuf: vec![0; 1 << 20] })
    }

    /// Sends one batch and waits for the kernel's verdict on it. A batch must reach the kernel
    /// in a single datagram, so the send buffer is forced to its size.
    pub fn commit(&mut self, batch: &FinishedBatch) -> Result<CommitStats, NetlinkError> {
        let Some(last_seq) = batch.last_seq else {
            return Ok(CommitStats::default());
        };
        let fd = self.sock.as_raw_fd();
        let want = (batch.bytes.len() + 64 * 1024).min(i32::MAX as usize) as libc::c_int;
        setsockopt(fd, libc::SOL_SOCKET, libc::SO_SNDBUFFORCE, want)
            .or_else(|_| setsockopt(fd, libc::SOL_SOCKET, libc::SO_SNDBUF, want))?;
        let sent = self.sock.send(&batch.bytes, neli::consts::socket::Msg::empty())?;
        if sent != batch.bytes.len() {
            return Err(io::Error::other(format!("short send: {sent} of {} bytes", batch.bytes.len())).into());
        }
        let mut errors = Vec::new();
        loop {
            let (n, _) = match self.sock.recv(&mut self.rbuf[..], neli::consts::socket::Msg::empty()) {
                Ok(r) => r,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Err(NetlinkError::NoAck),
                Err(e) => return Err(e.into()),
            };
            let mut done = false;
            for (ty, flags, seq, payload) in messages(&self.rbuf[..n]) {
                if ty != NLMSG_ERROR {
                    continue;
                }
                let err = nlmsg_error(payload);
                if err != 0 {
                    errors.push(KernelError {
                        what: describe(&batch.msgs, seq),
                        errno: -err,
                        message: ext_ack_message(flags, payload),
                    });
                }
                if seq == last_seq {
                    done = true;
                }
            }
            if done {
                break;
            }
        }
        if errors.is_empty() {
            Ok(CommitStats { messages: batch.msgs.len(), bytes: batch.bytes.len() })
        } else {
            Err(NetlinkError::Rejected(errors))
        }
    }

    /// Whether a table exists (NFT_MSG_GETTABLE).
    pub fn table_exists(&mut self, family: u8, name: &str) -> io::Result<bool> {
        let mut msg = Vec::new();
        msg.extend_from_slice(&0u32.to_ne_bytes());
        msg.extend_from_slice(&((NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_GETTABLE).to_ne_bytes());
        msg.extend_from_slice(&(NLM_F_REQUEST | NLM_F_ACK).to_ne_bytes());
        msg.extend_from_slice(&0x7fff_0000u32.to_ne_bytes());
        msg.extend_from_slice(&0u32.to_ne_bytes());
        msg.extend_from_slice(&[family, 0, 0, 0]);
        let mut name_attr = name.as_bytes().to_vec();
        name_attr.push(0);
        let alen = 4 + name_attr.len();
        msg.extend_from_slice(&(alen as u16).to_ne_bytes());
        msg.extend_from_slice(&NFTA_TABLE_NAME.to_ne_bytes());
        msg.extend_from_slice(&name_attr);
        msg.resize(msg.len().next_multiple_of(4), 0);
        let len = msg.len() as u32;
        msg[..4].copy_from_slice(&len.to_ne_bytes());
        self.sock.send(&msg, neli::consts::socket::Msg::empty())?;
        // The kernel answers with the table (if any), then the ack or ENOENT.
        let mut found = false;
        loop {
            let (n, _) = self.sock.recv(&mut self.rbuf[..], neli::consts::socket::Msg::empty())?;
            for (ty, _, seq, payload) in messages(&self.rbuf[..n]) {
                if seq != 0x7fff_0000 {
                    continue;
                }
                match ty {
                    NLMSG_ERROR => {
                        let err = nlmsg_error(payload);
                        return match -err {
                            0 => Ok(found),
                            libc::ENOENT => Ok(false),
                            e => Err(io::Error::from_raw_os_error(e)),
                        };
                    }
                    NLMSG_DONE => return Ok(found),
                    _ => found = true,
                }
            }
        }
    }
}

impl NftSocket {
    fn request(&mut self, subsys_msg: u16, flags: u16, family: u8, attrs: &[u8], seq: u32) -> io::Result<()> {
        let mut msg = Vec::with_capacity(20 + attrs.len());
        msg.extend_from_slice(&((20 + attrs.len()) as u32).to_ne_bytes());
        msg.extend_from_slice(&subsys_msg.to_ne_bytes());
        msg.extend_from_slice(&(NLM_F_REQUEST | flags).to_ne_bytes());
        msg.extend_from_slice(&seq.to_ne_bytes());
        msg.extend_from_slice(&0u32.to_ne_bytes());
        msg.extend_from_slice(&[family, 0, 0, 0]);
        msg.extend_from_slice(attrs);
        self.sock.send(&msg, neli::consts::socket::Msg::empty())?;
        Ok(())
    }

    /// Every conntrack entry of a family (ctnetlink dump).
    pub fn conntrack_dump(&mut self, family: u8) -> io::Result<Vec<crate::conntrack::CtEntry>> {
        use crate::conntrack::*;
        let new = (NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_NEW;
        let answers = self.dump_raw((NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_GET, family, &[], 0x7ffe_0000)?;
        Ok(answers.iter().filter(|(ty, _)| *ty == new).flat_map(|(_, p)| parse_entry(p)).collect())
    }

    /// Deletes one conntrack entry; one already gone is fine.
    pub fn conntrack_delete(&mut self, e: &crate::conntrack::CtEntry) -> io::Result<()> {
        use crate::conntrack::*;
        let family = if e.orig_src.is_ipv4() { NFPROTO_IPV4 } else { NFPROTO_IPV6 };
        let seq = 0x7ffd_0000;
        self.request((NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_DELETE, NLM_F_ACK, family, &delete_attrs(e), seq)?;
        loop {
            let (n, _) = self.sock.recv(&mut self.rbuf[..], neli::consts::socket::Msg::empty())?;
            for (ty, _, s, payload) in messages(&self.rbuf[..n]) {
                if s == seq && ty == NLMSG_ERROR {
                    let err = -nlmsg_error(payload);
                    return if err == 0 || err == libc::ENOENT {
                        Ok(())
                    } else {
                        Err(io::Error::from_raw_os_error(err))
                    };
                }
            }
        }
    }
}

impl NftSocket {
    /// The ruleset generation of this network namespace (NFT_MSG_GETGEN): the kernel adds one on
    /// every committed transaction, whoever sends it.
    pub fn generation(&mut self) -> io::Result<u32> {
        let seq = 0x7ffc_0000;
        self.request((NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_GETGEN, 0, 0, &[], seq)?;
        loop {
            let (n, _) = self.sock.recv(&mut self.rbuf[..], neli::consts::socket::Msg::empty())?;
            for (ty, _, s, payload) in messages(&self.rbuf[..n]) {
                if s != seq {
                    continue;
                }
                if ty == NLMSG_ERROR {
                    return Err(io::Error::from_raw_os_error(-nlmsg_error(payload)));
                }
                if let Some(v) = attrs(payload.get(4..).unwrap_or(&[])).find(|(t, _)| *t == NFTA_GEN_ID)
                    && v.1.len() >= 4
                {
                    return Ok(u32::from_be_bytes(v.1[..4].try_into().unwrap()));
                }
            }
        }
    }

    /// A dump request (NLM_F_DUMP) of `msg_type` with filter attributes; returns the attributes
    /// part of every answer (after the nfgenmsg header). ENOENT (no such table or set) is an
    /// empty answer.
    pub fn dump(&mut self, msg_type: u16, family: u8, filter: &[u8]) -> io::Result<Vec<Vec<u8>>> {
        let answers = self.dump_raw((NFNL_SUBSYS_NFTABLES << 8) | msg_type, family, filter, 0x7ffb_0000)?;
        Ok(answers.into_iter().map(|(_, p)| p.get(4..).unwrap_or(&[]).to_vec()).collect())
    }

    /// A get request (not a dump, acked) of `msg_type`: the attributes part of every answer
    /// before the ack. An error ack is the error, ENOENT included (a set element asked for by
    /// key that the set does not hold).
    pub fn get(&mut self, msg_type: u16, family: u8, attrs: &[u8]) -> io::Result<Vec<Vec<u8>>> {
        let subsys_msg = (NFNL_SUBSYS_NFTABLES << 8) | msg_type;
        let answers = self.exchange(subsys_msg, NLM_F_ACK, family, attrs, 0x7ffa_0000)?;
        Ok(answers.into_iter().map(|(_, p)| p.get(4..).unwrap_or(&[]).to_vec()).collect())
    }

    /// Any netfilter dump: every answer's (type, payload after the netlink header) until DONE.
    fn dump_raw(&mut self, subsys_msg: u16, family: u8, filter: &[u8], seq: u32) -> io::Result<Vec<(u16, Vec<u8>)>> {
        match self.exchange(subsys_msg, 0x300 /* NLM_F_DUMP */, family, filter, seq) {
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(Vec::new()),
            other => other,
        }
    }

    /// One request and its answers, (type, payload after the netlink header) each, until the
    /// end: NLMSG_DONE of a dump, or the ack of a request with NLM_F_ACK. An error ack is an
    /// error.
    fn exchange(
        &mut self,
        subsys_msg: u16,
        flags: u16,
        family: u8,
        attrs: &[u8],
        seq: u32,
    ) -> io::Result<Vec<(u16, Vec<u8>)>> {
        self.request(subsys_msg, flags, family, attrs, seq)?;
        let mut out = Vec::new();
        loop {
            let (n, _) = self.sock.recv(&mut self.rbuf[..], neli::consts::socket::Msg::empty())?;
            for (ty, _, s, payload) in messages(&self.rbuf[..n]) {
                if s != seq {
                    continue;
                }
                match ty {
                    NLMSG_DONE => return Ok(out),
                    NLMSG_ERROR => {
                        return match -nlmsg_error(payload) {
                            0 => Ok(out),
                            e => Err(io::Error::from_raw_os_error(e)),
                        };
                    }
                    _ => out.push((ty, payload.to_vec())),
                }
            }
        }
    }
}

/// The (negative) errno of an NLMSG_ERROR payload; a payload too short to hold one is a
/// protocol error (-EPROTO), never a panic.
pub(crate) fn nlmsg_error(payload: &[u8]) -> i32 {
    match payload.get(..4) {
        Some(b) => i32::from_ne_bytes([b[0], b[1], b[2], b[3]]),
        None => -libc::EPROTO,
    }
}

/// A NUL-terminated string attribute's text.
pub fn str_attr(v: &[u8]) -> String {
    String::from_utf8_lossy(v.split(|b| *b == 0).next().unwrap_or(v)).into_owned()
}

/// A string attribute (NUL-terminated, padded), as filters of dump requests need.
pub fn name_attr(ty: u16, name: &str) -> Vec<u8> {
    let mut v = Vec::new();
    v.extend_from_slice(&((4 + name.len() + 1) as u16).to_ne_bytes());
    v.extend_from_slice(&ty.to_ne_bytes());
    v.extend_from_slice(name.as_bytes());
    v.push(0);
    v.resize(v.len().next_multiple_of(4), 0);
    v
}

/// The netlink attributes of a buffer: (type without flags, value).
pub fn attrs(buf: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    let mut off = 0;
    std::iter::from_fn(move || {
        if off + 4 > buf.len() {
            return None;
        }
        let len = u16::from_ne_bytes([buf[off], buf[off + 1]]) as usize;
        let ty = u16::from_ne_bytes([buf[off + 2], buf[off + 3]]) & 0x3fff;
        if len < 4 || off + len > buf.len() {
            return None;
        }
        let item = (ty, &buf[off + 4..off + len]);
        off += (len + 3) & !3;
        Some(item)
    })
}

fn describe(msgs: &[MsgInfo], seq: u32) -> String {
    msgs.iter().find(|m| m.seq == seq).map(|m| m.what.clone()).unwrap_or_else(|| format!("message {seq}"))
}

/// The NLMSGERR_ATTR_MSG text after a capped error (errno + original header + TLVs).
pub(crate) fn ext_ack_message(flags: u16, payload: &[u8]) -> Option<String> {
    if flags & NLM_F_ACK_TLVS == 0 || payload.len() < 20 {
        return None;
    }
    let mut off = 20;
    while off + 4 <= payload.len() {
        let len = u16::from_ne_bytes([payload[off], payload[off + 1]]) as usize;
        let ty = u16::from_ne_bytes([payload[off + 2], payload[off + 3]]) & 0x3fff;
        if len < 4 || off + len > payload.len() {
            break;
        }
        if ty == NLMSGERR_ATTR_MSG {
            let s = &payload[off + 4..off + len];
            return Some(String::from_utf8_lossy(s.split(|b| *b == 0).next().unwrap_or(s)).into_owned());
        }
        off += (len + 3) & !3;
    }
    None
}

/// The netlink messages of a datagram: (type, flags, seq, payload after the header).
pub(crate) fn messages(buf: &[u8]) -> impl Iterator<Item = (u16, u16, u32, &[u8])> {
    let mut off = 0;
    std::iter::from_fn(move || {
        if off + 16 > buf.len() {
            return None;
        }
        let len = u32::from_ne_bytes(buf[off..off + 4].try_into().unwrap()) as usize;
        // `len` is a u32 from the wire: compared without an addition that could overflow.
        if len < 16 || len > buf.len() - off {
            return None;
        }
        let ty = u16::from_ne_bytes([buf[off + 4], buf[off + 5]]);
        let flags = u16::from_ne_bytes([buf[off + 6], buf[off + 7]]);
        let seq = u32::from_ne_bytes(buf[off + 8..off + 12].try_into().unwrap());
        let item = (ty, flags, seq, &buf[off + 16..off + len]);
        off += (len + 3) & !3;
        Some(item)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_or_odd_replies_are_errors_never_panics() {
        assert_eq!(nlmsg_error(&(-2i32).to_ne_bytes()), -2);
        assert_eq!(nlmsg_error(&[1, 2]), -libc::EPROTO);
        assert_eq!(nlmsg_error(&[]), -libc::EPROTO);
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
