//! The only I/O of the backend: a NETLINK_NETFILTER socket (neli) that sends a batch in one
//! `send` and reads the kernel's verdict. One request path: [`NftSocket::exchange`] numbers
//! every request of its own, reads until that request's end (NLMSG_DONE, or its ack), and
//! turns error acks into errors; a batch's acks are read by the same loop
//! ([`receive`]). The bytes are nft-wire's (`nftproxy_nft_wire::netlink`): this file only
//! sends and receives.

use std::io;
use std::os::fd::AsRawFd;

use neli::consts::socket::NlFamily;
use neli::socket::NlSocket;
use neli::utils::Groups;
use nftproxy_nft_wire::consts::*;
use nftproxy_nft_wire::netlink::{
    NLM_F_DUMP, NLMSG_DONE, NLMSG_ERROR, attrs, ext_ack_message, messages, name_attr, nfnl_request, nlmsg_error,
};
use nftproxy_nft_wire::{FinishedBatch, MsgInfo, NfFamily};

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
    /// The sequence number of our last request (batches carry their own, from the planner).
    seq: u32,
}

/// Sequence numbers of the socket's own requests: far from those of batches, which count up
/// from 1 (a late answer to one can never be taken for the other's).
const FIRST_REQUEST_SEQ: u32 = 0x8000_0000;

/// Reads datagrams from `sock` into `rbuf` and hands every message to `on` — (type, flags, seq,
/// payload) — until `on` returns the result. The one receive loop of every netlink conversation
/// of ours (netfilter requests and batches, rtnetlink). A read timeout is `WouldBlock`.
pub(crate) fn receive<R>(
    sock: &NlSocket,
    rbuf: &mut [u8],
    mut on: impl FnMut(u16, u16, u32, &[u8]) -> Option<io::Result<R>>,
) -> io::Result<R> {
    loop {
        let (n, _) = sock.recv(&mut *rbuf, neli::consts::socket::Msg::empty())?;
        if n == 0 {
            return Err(io::Error::other("netlink: the kernel closed the conversation"));
        }
        for (ty, flags, seq, payload) in messages(&rbuf[..n]) {
            if let Some(r) = on(ty, flags, seq, payload) {
                return r;
            }
        }
    }
}

/// One request and its answers, (type, payload after the netlink header) each, until the end:
/// NLMSG_DONE of a dump, or the ack of a request with NLM_F_ACK. An error ack is the error.
pub(crate) fn exchange(sock: &NlSocket, rbuf: &mut [u8], request: &[u8], seq: u32) -> io::Result<Vec<(u16, Vec<u8>)>> {
    sock.send(request, neli::consts::socket::Msg::empty())?;
    let mut out = Vec::new();
    receive(sock, rbuf, |ty, _, s, payload| {
        if s != seq {
            return None;
        }
        match ty {
            NLMSG_DONE => Some(Ok(std::mem::take(&mut out))),
            NLMSG_ERROR => Some(match -nlmsg_error(payload) {
                0 => Ok(std::mem::take(&mut out)),
                e => Err(io::Error::from_raw_os_error(e)),
            }),
            _ => {
                out.push((ty, payload.to_vec()));
                None
            }
        }
    })
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
        Ok(NftSocket { sock, rbuf: vec![0; 1 << 20], seq: FIRST_REQUEST_SEQ })
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
        let done = receive(&self.sock, &mut self.rbuf, |ty, flags, seq, payload| {
            if ty != NLMSG_ERROR {
                return None;
            }
            let err = nlmsg_error(payload);
            if err != 0 {
                errors.push(KernelError {
                    what: describe(&batch.msgs, seq),
                    errno: -err,
                    message: ext_ack_message(flags, payload),
                });
            }
            (seq == last_seq).then_some(Ok(()))
        });
        match done {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Err(NetlinkError::NoAck),
            Err(e) => return Err(e.into()),
        }
        if errors.is_empty() {
            Ok(CommitStats { messages: batch.msgs.len(), bytes: batch.bytes.len() })
        } else {
            Err(NetlinkError::Rejected(errors))
        }
    }

    /// Whether a table exists (NFT_MSG_GETTABLE: the table, or ENOENT).
    pub fn table_exists(&mut self, family: NfFamily, name: &str) -> io::Result<bool> {
        let attrs = name_attr(NFTA_TABLE_NAME, name);
        match self.exchange((NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_GETTABLE, NLM_F_ACK, family.number(), &attrs) {
            Ok(answers) => Ok(!answers.is_empty()),
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(false),
            Err(e) => Err(e),
        }
    }
}

impl NftSocket {
    /// Every conntrack entry of a family (ctnetlink dump).
    pub fn conntrack_dump(&mut self, family: NfFamily) -> io::Result<Vec<crate::conntrack::CtEntry>> {
        use crate::conntrack::*;
        let new = (NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_NEW;
        let answers = self.dump_raw((NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_GET, family.number(), &[])?;
        Ok(answers.iter().filter(|(ty, _)| *ty == new).flat_map(|(_, p)| parse_entry(p)).collect())
    }

    /// Deletes one conntrack entry; one already gone is fine.
    pub fn conntrack_delete(&mut self, e: &crate::conntrack::CtEntry) -> io::Result<()> {
        use crate::conntrack::*;
        let family = if e.orig_src.is_ipv4() { NfFamily::Ip } else { NfFamily::Ip6 }.number();
        match self.exchange((NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_DELETE, NLM_F_ACK, family, &delete_attrs(e)) {
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(()),
            other => other.map(drop),
        }
    }

    /// The ruleset generation of this network namespace (NFT_MSG_GETGEN): the kernel adds one on
    /// every committed transaction, whoever sends it.
    pub fn generation(&mut self) -> io::Result<u32> {
        let answers = self.exchange((NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_GETGEN, NLM_F_ACK, 0, &[])?;
        answers
            .iter()
            .find_map(|(_, p)| attrs(p.get(4..)?).find(|(t, _)| *t == NFTA_GEN_ID).and_then(|(_, v)| v.get(..4)))
            .map(|v| u32::from_be_bytes([v[0], v[1], v[2], v[3]]))
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "NFT_MSG_GETGEN: no generation in the answer"))
    }

    /// A dump request (NLM_F_DUMP) of `msg_type` with filter attributes; returns the attributes
    /// part of every answer (after the nfgenmsg header). ENOENT (no such table or set) is an
    /// empty answer.
    pub fn dump(&mut self, msg_type: u16, family: NfFamily, filter: &[u8]) -> io::Result<Vec<Vec<u8>>> {
        let answers = self.dump_raw((NFNL_SUBSYS_NFTABLES << 8) | msg_type, family.number(), filter)?;
        Ok(answers.into_iter().map(|(_, p)| p.get(4..).unwrap_or(&[]).to_vec()).collect())
    }

    /// A get request (not a dump, acked) of `msg_type`: the attributes part of every answer
    /// before the ack. An error ack is the error, ENOENT included (a set element asked for by
    /// key that the set does not hold).
    pub fn get(&mut self, msg_type: u16, family: NfFamily, attrs: &[u8]) -> io::Result<Vec<Vec<u8>>> {
        let answers = self.exchange((NFNL_SUBSYS_NFTABLES << 8) | msg_type, NLM_F_ACK, family.number(), attrs)?;
        Ok(answers.into_iter().map(|(_, p)| p.get(4..).unwrap_or(&[]).to_vec()).collect())
    }

    /// Any netfilter dump: every answer's (type, payload after the netlink header) until DONE.
    fn dump_raw(&mut self, subsys_msg: u16, family: u8, filter: &[u8]) -> io::Result<Vec<(u16, Vec<u8>)>> {
        match self.exchange(subsys_msg, NLM_F_DUMP, family, filter) {
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(Vec::new()),
            other => other,
        }
    }

    /// The socket's one request path: a new sequence number, the request, its answers.
    fn exchange(&mut self, subsys_msg: u16, flags: u16, family: u8, attrs: &[u8]) -> io::Result<Vec<(u16, Vec<u8>)>> {
        self.seq = self.seq.wrapping_add(1).max(FIRST_REQUEST_SEQ);
        let request = nfnl_request(subsys_msg, flags, self.seq, family, attrs);
        exchange(&self.sock, &mut self.rbuf, &request, self.seq)
    }
}

fn describe(msgs: &[MsgInfo], seq: u32) -> String {
    msgs.iter().find(|m| m.seq == seq).map(|m| m.what.clone()).unwrap_or_else(|| format!("message {seq}"))
}
