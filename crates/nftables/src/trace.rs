//! `trace`: follow packets of one flow through our table with the kernel's own tracing. A chain
//! of ours at raw priority (-300, before conntrack and NAT) marks only packets matching the flow
//! (`meta nftrace set 1`, in prerouting and output); a second netlink socket subscribed to
//! NFNLGRP_NFTRACE receives one event per rule, return and policy the marked packet meets, in
//! every table. [`TraceSession`]'s `Drop` removes the chains, so tracing never stays on.

use std::collections::{BTreeMap, VecDeque};
use std::io;
use std::net::IpAddr;
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use neli::consts::socket::NlFamily;
use neli::socket::NlSocket;
use neli::utils::Groups;
use nftproxy_nft_wire::consts::*;
use nftproxy_nft_wire::expr::{CmpOp, Expr, MetaKey, PayloadBase};
use nftproxy_nft_wire::{BaseChain, Batch, ChainType, Hook};
use serde::Serialize;

use crate::family::Family;
use crate::netlink::NftSocket;
use crate::ruleset::TABLE;
use nftproxy_nft_wire::netlink::{attrs, be32_attr, messages, name_attr, str_attr};

/// Chains of ours that are not part of the programmed ruleset (drift checks skip them).
pub const TRACE_CHAIN_PREFIX: &str = "trace-";
const TRACE_COMMENT: &str = "kube-nftproxy trace: marks only the traced flow";

/// The flow to trace.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct TraceFlow {
    pub src: IpAddr,
    pub dst: IpAddr,
    /// IP protocol number (6, 17, 132).
    pub protocol: u8,
    pub dport: u16,
}

/// A packet's addresses as a trace event saw them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct PacketView {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub sport: Option<u16>,
    pub dport: Option<u16>,
}

/// One step of a traced packet. Every field is typed; JSON (`trace --output json`) writes the
/// enums as nft's words (`"goto cluster-3"`, `"prerouting"`, `"ip6"`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TraceEvent {
    /// The kernel's id of the packet (all events of one packet share it).
    pub id: u32,
    #[serde(serialize_with = "family_word")]
    pub family: Family,
    pub table: String,
    pub chain: String,
    /// The netfilter hook of the base chain this step runs under.
    #[serde(serialize_with = "hook_word")]
    pub hook: Option<Hook>,
    pub kind: StepKind,
    pub rule_handle: Option<u64>,
    /// What the rule does, from its expressions and comment (ours only).
    pub rule: Option<String>,
    /// Whether the rule rejects the packet (an ICMP error or TCP reset).
    pub rejects: bool,
    pub verdict: Option<TraceVerdict>,
    pub packet: Option<PacketView>,
    /// The map element a verdict-map lookup hit, named by its comment.
    pub map_hit: Option<MapHit>,
}

fn family_word<S: serde::Serializer>(f: &Family, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(f.word())
}

fn hook_word<S: serde::Serializer>(h: &Option<Hook>, s: S) -> Result<S::Ok, S::Error> {
    match h {
        Some(h) => s.serialize_str(h.name()),
        None => s.serialize_none(),
    }
}

/// What kind of step the kernel reported.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum StepKind {
    /// A rule matched.
    Rule,
    /// The end of a chain (or a `return`).
    Return,
    /// The base chain's policy applied.
    Policy,
    /// A trace type this reader does not know.
    Unknown,
}

impl std::fmt::Display for StepKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            StepKind::Rule => "rule",
            StepKind::Return => "return",
            StepKind::Policy => "policy",
            StepKind::Unknown => "?",
        })
    }
}

/// A verdict as the kernel reports it in a trace event (NFTA_TRACE_VERDICT or the policy).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TraceVerdict {
    Drop,
    Accept,
    Stolen,
    Queue,
    Continue,
    Break,
    Jump(String),
    Goto(String),
    Return,
    /// A code this reader does not know.
    Other(i32),
}

impl TraceVerdict {
    /// From the kernel's verdict code (NF_DROP 0, NF_ACCEPT 1, …, NFT_RETURN -5) and chain.
    pub fn from_code(code: i32, chain: Option<String>) -> TraceVerdict {
        let chain = || chain.clone().unwrap_or_default();
        match code {
            0 => TraceVerdict::Drop,
            1 => TraceVerdict::Accept,
            2 => TraceVerdict::Stolen,
            3 => TraceVerdict::Queue,
            -1 => TraceVerdict::Continue,
            -2 => TraceVerdict::Break,
            -3 => TraceVerdict::Jump(chain()),
            -4 => TraceVerdict::Goto(chain()),
            -5 => TraceVerdict::Return,
            c => TraceVerdict::Other(c),
        }
    }

    /// Whether the packet's fate is decided here (accept or drop).
    pub fn is_final(&self) -> bool {
        matches!(self, TraceVerdict::Accept | TraceVerdict::Drop)
    }
}

impl std::fmt::Display for TraceVerdict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TraceVerdict::Drop => f.write_str("drop"),
            TraceVerdict::Accept => f.write_str("accept"),
            TraceVerdict::Stolen => f.write_str("stolen"),
            TraceVerdict::Queue => f.write_str("queue"),
            TraceVerdict::Continue => f.write_str("continue"),
            TraceVerdict::Break => f.write_str("break"),
            TraceVerdict::Jump(c) => write!(f, "jump {c}"),
            TraceVerdict::Goto(c) => write!(f, "goto {c}"),
            TraceVerdict::Return => f.write_str("return"),
            TraceVerdict::Other(c) => write!(f, "verdict {c}"),
        }
    }
}

impl Serialize for TraceVerdict {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// The element of a verdict map or frontend set a rule's lookup hit: the set, and the
/// element's comment (`ns/svc:port`, the Service port).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MapHit {
    pub set: String,
    pub element: String,
}

impl std::fmt::Display for MapHit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "@{}: {}", self.set, self.element)
    }
}

impl Serialize for MapHit {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// The comment of nftnl userdata (TLV type 0), if any.
pub(crate) fn udata_comment(u: &[u8]) -> Option<String> {
    let mut off = 0;
    while off + 2 <= u.len() {
        let (ty, len) = (u[off], u[off + 1] as usize);
        let v = u.get(off + 2..off + 2 + len)?;
        if ty == 0 {
            return Some(str_attr(v));
        }
        off += 2 + len;
    }
    None
}

/// What one of our rules does, in a few words: its verdict map or NAT map, reject, masquerade,
/// and its comment.
#[derive(Clone, Debug, Default)]
pub(crate) struct RuleInfo {
    pub(crate) text: String,
    /// The verdict map or frontend set (`…-frontends`) it looks up, if any: the element that
    /// matched names the Service.
    pub(crate) vmap: Option<String>,
    /// The rule rejects (a `reject` expression).
    pub(crate) rejects: bool,
}

pub(crate) fn rule_info(msg: &[u8]) -> Option<(String, u64, RuleInfo)> {
    let (mut chain, mut handle, mut info) = (None, None, RuleInfo::default());
    let mut parts: Vec<String> = Vec::new();
    let mut comment = None;
    for (t, v) in attrs(msg) {
        match t {
            NFTA_RULE_CHAIN => chain = Some(str_attr(v)),
            NFTA_RULE_HANDLE => handle = v.get(..8).map(|b| u64::from_be_bytes(b.try_into().unwrap())),
            NFTA_RULE_USERDATA => comment = udata_comment(v),
            NFTA_RULE_EXPRESSIONS => {
                let mut names = Vec::new();
                for (_, e) in attrs(v) {
                    let mut name = String::new();
                    let mut set = None;
                    let mut verdict_map = false;
                    for (et, ev) in attrs(e) {
                        match et {
                            NFTA_EXPR_NAME => name = str_attr(ev),
                            NFTA_EXPR_DATA if name == "lookup" => {
                                for (lt, lv) in attrs(ev) {
                                    match lt {
                                        NFTA_LOOKUP_SET => set = Some(str_attr(lv)),
                                        // NFTA_LOOKUP_DREG 0: the verdict register.
                                        3 => verdict_map = be32_attr(lv) == Some(0),
                                        _ => {}
                                    }
                                }
                            }
                            _ => {}
                        }
                    }
                    if let Some(s) = &set
                        && (verdict_map || crate::schema::is_frontend_set(s))
                    {
                        info.vmap = Some(s.clone());
                    }
                    names.push((name, set, verdict_map));
                }
                let has = |n: &str| names.iter().any(|(x, _, _)| x == n);
                info.rejects = has("reject");
                let map_of =
                    |pred: &dyn Fn(bool) -> bool| names.iter().find_map(|(_, s, vm)| s.clone().filter(|_| pred(*vm)));
                if let Some(m) = info.vmap.as_ref().filter(|m| crate::schema::is_frontend_set(m)) {
                    parts.push(format!("frontend in @{m}"));
                } else if let Some(m) = &info.vmap {
                    parts.push(format!("vmap @{m}"));
                } else if has("nat") {
                    parts.push(match map_of(&|vm| !vm) {
                        Some(m) => format!("dnat to an endpoint from @{m} (numgen random)"),
                        None => "nat".into(),
                    });
                } else if has("masq") {
                    parts.push("masquerade".into());
                } else if has("reject") {
                    parts.push("reject".into());
                } else if has("dynset") {
                    parts.push("remember the client for affinity".into());
                } else if let Some(m) = map_of(&|_| true) {
                    parts.push(format!("match @{m}"));
                }
            }
            _ => {}
        }
    }
    if let Some(c) = comment {
        parts.push(format!("\"{c}\""));
    }
    info.text = parts.join(" ");
    Some((chain?, handle?, info))
}

/// A map element's key bytes and its comment.
pub(crate) type KeyComment = (Vec<u8>, Option<String>);

/// A trace in progress: chains installed, events subscribed. Dropping it removes the chains.
pub struct TraceSession {
    cmd: NftSocket,
    events: NlSocket,
    family: Family,
    chains: Vec<String>,
    state: TraceState,
    buf: Vec<u8>,
    /// Trace messages received but not yet returned (a datagram may carry several).
    pending: VecDeque<Vec<u8>>,
    seq: u32,
    removed: bool,
}

/// What a session knows besides its sockets: our table's rules and base chains, and per traced
/// packet its hook and headers so far. Turning trace messages into events is pure but for the
/// verdict-map elements, which it asks of `elements` (a dump, once per set) — so tests can drive
/// it without a socket.
#[derive(Default)]
pub(crate) struct TraceState {
    pub(crate) rules: BTreeMap<(String, u64), RuleInfo>,
    pub(crate) base_hooks: BTreeMap<String, Hook>,
    /// Per traced packet: the hook of its latest base-chain event.
    current_hook: BTreeMap<u32, Hook>,
    /// Per traced packet: its latest headers (the kernel sends them once per hook, not per rule).
    current_headers: BTreeMap<u32, (Vec<u8>, Option<Vec<u8>>)>,
    /// Verdict-map elements (key, comment), dumped once per set and session.
    map_elements: BTreeMap<String, Vec<KeyComment>>,
}

/// The attributes of one NFT_MSG_TRACE message, as the kernel sent them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct TraceAttrs {
    pub(crate) id: u32,
    pub(crate) table: String,
    pub(crate) chain: String,
    pub(crate) handle: Option<u64>,
    pub(crate) kind: u32,
    pub(crate) verdict: Option<TraceVerdict>,
    pub(crate) net: Option<Vec<u8>>,
    pub(crate) transport: Option<Vec<u8>>,
    pub(crate) nfproto: u32,
}

/// Parses one NFT_MSG_TRACE payload (after the nlmsghdr); None without a table and a chain.
pub(crate) fn parse_trace(payload: &[u8]) -> Option<TraceAttrs> {
    let body = payload.get(4..).unwrap_or(&[]);
    let (mut table, mut chain, mut handle, mut kind, mut verdict, mut id) = (None, None, None, 0, None, 0);
    let (mut net, mut transport, mut nfproto) = (None, None, 0);
    for (t, v) in attrs(body) {
        match t {
            NFTA_TRACE_TABLE => table = Some(str_attr(v)),
            NFTA_TRACE_CHAIN => chain = Some(str_attr(v)),
            NFTA_TRACE_RULE_HANDLE => handle = v.get(..8).map(|b| u64::from_be_bytes(b.try_into().unwrap())),
            NFTA_TRACE_TYPE => kind = be32_attr(v).unwrap_or(0),
            NFTA_TRACE_VERDICT => verdict = trace_verdict(v),
            NFTA_TRACE_POLICY => {
                verdict = be32_attr(v).map(|p| if p == 1 { TraceVerdict::Accept } else { TraceVerdict::Drop })
            }
            NFTA_TRACE_ID => id = be32_attr(v).unwrap_or(0),
            NFTA_TRACE_NETWORK_HEADER => net = Some(v.to_vec()),
            NFTA_TRACE_TRANSPORT_HEADER => transport = Some(v.to_vec()),
            NFTA_TRACE_NFPROTO => nfproto = be32_attr(v).unwrap_or(0),
            _ => {}
        }
    }
    let (Some(table), Some(chain)) = (table, chain) else { return None };
    Some(TraceAttrs { id, table, chain, handle, kind, verdict, net, transport, nfproto })
}

/// A base chain of a chain dump message: its name and hook (None for a chain without a hook, or
/// with one this reader does not know).
pub(crate) fn base_chain_hook(msg: &[u8]) -> Option<(String, Hook)> {
    crate::drift::dumped_base_chain(msg).map(|(name, base)| (name, base.hook))
}

/// The elements of a set element dump message: key and comment each.
pub(crate) fn element_comments(msg: &[u8]) -> Vec<KeyComment> {
    crate::drift::answered_elements(msg)
        .into_iter()
        .map(|e| (e.key, e.userdata.as_deref().and_then(udata_comment)))
        .collect()
}

impl TraceSession {
    /// Installs the marking chains in our table of the flow's family (which must exist) and
    /// subscribes to trace events. Nothing else is traced: the rule matches source, destination,
    /// protocol and destination port.
    pub fn start(flow: TraceFlow) -> io::Result<TraceSession> {
        let family = if flow.dst.is_ipv4() { Family::V4 } else { Family::V6 };
        if flow.src.is_ipv4() != flow.dst.is_ipv4() {
            return Err(io::Error::other("--src and --dst are of different IP families"));
        }
        let mut cmd = NftSocket::open()?;
        if !cmd.table_exists(family.nfproto(), TABLE)? {
            return Err(io::Error::other(format!(
                "no table {} {TABLE} in this network namespace: is kube-nftproxy running here?",
                family.word()
            )));
        }
        // Subscribe before the rule exists, so no event of the first packet is missed.
        let events = NlSocket::connect(NlFamily::Netfilter, None, Groups::empty())?;
        // NETLINK_ADD_MEMBERSHIP takes the group number itself (bind() would want a bit mask).
        let rc =
            setsockopt_int(events.as_raw_fd(), libc::SOL_NETLINK, libc::NETLINK_ADD_MEMBERSHIP, NFNLGRP_NFTRACE as i32);
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        setsockopt_int(events.as_raw_fd(), libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, 4 << 20);
        let tv = libc::timeval { tv_sec: 0, tv_usec: 100_000 };
        // SAFETY: a timeval option on a socket we own.
        unsafe {
            libc::setsockopt(
                events.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                &tv as *const _ as *const libc::c_void,
                size_of_val(&tv) as u32,
            );
        }
        let pid = std::process::id();
        let chains = vec![format!("{TRACE_CHAIN_PREFIX}prerouting-{pid}"), format!("{TRACE_CHAIN_PREFIX}output-{pid}")];
        let seq = 0x7ff0_0000;
        let mut batch = Batch::new(seq);
        let fam = family.nfproto();
        let exprs = match_flow(&flow);
        for (name, hook) in chains.iter().zip([Hook::Prerouting, Hook::Output]) {
            batch.add_chain(fam, TABLE, name, Some(&BaseChain { chain_type: ChainType::Filter, hook, priority: -300 }));
            batch.add_rule(fam, TABLE, name, &exprs, Some(TRACE_COMMENT));
        }
        cmd.commit(&batch.finish()).map_err(|e| io::Error::other(e.to_string()))?;
        let mut s = TraceSession {
            cmd,
            events,
            family,
            chains,
            state: TraceState::default(),
            buf: vec![0; 1 << 16],
            pending: VecDeque::new(),
            seq: seq + 16,
            removed: false,
        };
        s.load_table()?;
        Ok(s)
    }

    /// Our table's rules (for their descriptions) and base chains (for hook names).
    fn load_table(&mut self) -> io::Result<()> {
        let fam = self.family.nfproto();
        for msg in self.cmd.dump(NFT_MSG_GETCHAIN, fam, &name_attr(NFTA_CHAIN_TABLE, TABLE))? {
            if let Some((n, h)) = base_chain_hook(&msg) {
                self.state.base_hooks.insert(n, h);
            }
        }
        for msg in self.cmd.dump(NFT_MSG_GETRULE, fam, &name_attr(NFTA_RULE_TABLE, TABLE))? {
            if let Some((chain, handle, info)) = rule_info(&msg) {
                self.state.rules.insert((chain, handle), info);
            }
        }
        Ok(())
    }

    /// The next trace event, waiting at most until `deadline`.
    pub fn next_event(&mut self, deadline: Instant) -> io::Result<Option<TraceEvent>> {
        loop {
            while let Some(m) = self.pending.pop_front() {
                let family = self.family.nfproto();
                if let Some(ev) = self.state.event(&m, &mut |set| dump_elements(&mut self.cmd, family, set))? {
                    return Ok(Some(ev));
                }
            }
            if Instant::now() >= deadline {
                return Ok(None);
            }
            let n = match self.events.recv(&mut self.buf[..], neli::consts::socket::Msg::empty()) {
                Ok((n, _)) => n,
                Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => continue,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => return Ok(None),
                Err(e) => return Err(e),
            };
            self.pending.extend(
                messages(&self.buf[..n])
                    .filter(|(ty, ..)| *ty == (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_TRACE)
                    .map(|(.., p)| p.to_vec()),
            );
        }
    }

    /// Removes the marking chains (also done on drop). A table replaced meanwhile by a full sync
    /// took them with it: that is fine.
    pub fn stop(&mut self) -> io::Result<()> {
        if self.removed {
            return Ok(());
        }
        self.removed = true;
        let fam = self.family.nfproto();
        let mut batch = Batch::new(self.seq);
        for c in &self.chains {
            batch.del_chain(fam, TABLE, c);
        }
        match self.cmd.commit(&batch.finish()) {
            Ok(_) => Ok(()),
            Err(crate::netlink::NetlinkError::Rejected(errs)) if errs.iter().all(|e| e.errno == libc::ENOENT) => Ok(()),
            Err(e) => Err(io::Error::other(e.to_string())),
        }
    }

    /// The chains this session added (for tests and messages).
    pub fn chains(&self) -> &[String] {
        &self.chains
    }
}

impl Drop for TraceSession {
    fn drop(&mut self) {
        if let Err(e) = self.stop() {
            eprintln!("kube-nftproxy trace: removing chains {:?}: {e}", self.chains);
        }
    }
}

/// A verdict map's elements, dumped.
fn dump_elements(cmd: &mut NftSocket, family: nftproxy_nft_wire::NfFamily, set: &str) -> io::Result<Vec<KeyComment>> {
    let mut filter = name_attr(NFTA_SET_ELEM_LIST_TABLE, TABLE);
    filter.extend(name_attr(NFTA_SET_ELEM_LIST_SET, set));
    Ok(cmd.dump(NFT_MSG_GETSETELEM, family, &filter)?.iter().flat_map(|msg| element_comments(msg)).collect())
}

impl TraceState {
    /// The comment of the element of verdict map or frontend set `set` whose key starts with
    /// `key`.
    fn element_comment(
        &mut self,
        set: &str,
        key: &[u8],
        elements: &mut dyn FnMut(&str) -> io::Result<Vec<KeyComment>>,
    ) -> io::Result<Option<String>> {
        if !self.map_elements.contains_key(set) {
            let dumped = elements(set)?;
            self.map_elements.insert(set.to_string(), dumped);
        }
        Ok(self.map_elements[set].iter().find(|(k, _)| k.starts_with(key)).and_then(|(_, c)| c.clone()))
    }

    /// One trace message (payload after the nlmsghdr) as an event, with what the session knows
    /// added; None for a message without table and chain. `elements` dumps a verdict map.
    pub(crate) fn event(
        &mut self,
        payload: &[u8],
        elements: &mut dyn FnMut(&str) -> io::Result<Vec<KeyComment>>,
    ) -> io::Result<Option<TraceEvent>> {
        let Some(TraceAttrs { id, table, chain, handle, kind, verdict, mut net, mut transport, nfproto }) =
            parse_trace(payload)
        else {
            return Ok(None);
        };
        let packet = net.as_deref().and_then(|n| packet_view(n, transport.as_deref(), nfproto as u8));
        match &net {
            Some(n) => {
                self.current_headers.insert(id, (n.clone(), transport.clone()));
            }
            None => {
                if let Some((n, t)) = self.current_headers.get(&id) {
                    (net, transport) = (Some(n.clone()), t.clone());
                }
            }
        }
        // Headers as of this step, for the map lookup (this event may not carry them).
        let current = net.as_deref().and_then(|n| packet_view(n, transport.as_deref(), nfproto as u8));
        let ours = table == TABLE;
        let hook = match self.base_hooks.get(&chain).filter(|_| ours) {
            Some(h) => {
                self.current_hook.insert(id, *h);
                Some(*h)
            }
            None => self.current_hook.get(&id).copied(),
        };
        let info = handle.filter(|_| ours).and_then(|h| self.rules.get(&(chain.clone(), h)).cloned());
        let mut map_hit = None;
        if let (Some(info), Some(p)) = (&info, &current)
            && let (Some(set), Some(dport)) = (&info.vmap, p.dport)
        {
            let proto = net.as_deref().map(l4proto).unwrap_or(0);
            let mut key = Vec::new();
            if set.contains("nodeport") {
                key.extend([proto, 0, 0, 0]);
            } else {
                match p.dst {
                    IpAddr::V4(a) => key.extend(a.octets()),
                    IpAddr::V6(a) => key.extend(a.octets()),
                }
                key.extend([proto, 0, 0, 0]);
            }
            key.extend(dport.to_be_bytes());
            map_hit = self.element_comment(set, &key, elements)?.map(|c| MapHit { set: set.clone(), element: c });
        }
        Ok(Some(TraceEvent {
            id,
            family: if nfproto == NFPROTO_IPV6 as u32 { Family::V6 } else { Family::V4 },
            table,
            chain,
            hook,
            kind: match kind {
                // The end of a chain is reported as a rule event without a rule.
                NFT_TRACETYPE_RULE if handle.is_none() => StepKind::Return,
                NFT_TRACETYPE_RULE => StepKind::Rule,
                NFT_TRACETYPE_RETURN => StepKind::Return,
                NFT_TRACETYPE_POLICY => StepKind::Policy,
                _ => StepKind::Unknown,
            },
            rule_handle: handle,
            rejects: info.as_ref().is_some_and(|i| i.rejects),
            rule: info.map(|i| i.text).filter(|t| !t.is_empty()),
            verdict,
            packet,
            map_hit,
        }))
    }
}

fn setsockopt_int(fd: i32, level: libc::c_int, opt: libc::c_int, v: libc::c_int) -> i32 {
    // SAFETY: an int option on a socket we own.
    unsafe { libc::setsockopt(fd, level, opt, &v as *const _ as *const libc::c_void, 4) }
}

/// `ip saddr S ip daddr D meta l4proto P th dport N meta nftrace set 1`
fn match_flow(f: &TraceFlow) -> Vec<Expr> {
    let (saddr_off, daddr_off, len, src, dst) = match (f.src, f.dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => (12, 16, 4, s.octets().to_vec(), d.octets().to_vec()),
        (IpAddr::V6(s), IpAddr::V6(d)) => (8, 24, 16, s.octets().to_vec(), d.octets().to_vec()),
        _ => unreachable!("families checked by the caller"),
    };
    vec![
        Expr::Payload { dreg: 1, base: PayloadBase::Network, offset: saddr_off, len },
        Expr::Cmp { sreg: 1, op: CmpOp::Eq, data: src },
        Expr::Payload { dreg: 1, base: PayloadBase::Network, offset: daddr_off, len },
        Expr::Cmp { sreg: 1, op: CmpOp::Eq, data: dst },
        Expr::Meta { dreg: 1, key: MetaKey::L4proto },
        Expr::Cmp { sreg: 1, op: CmpOp::Eq, data: vec![f.protocol] },
        Expr::Payload { dreg: 1, base: PayloadBase::Transport, offset: 2, len: 2 },
        Expr::Cmp { sreg: 1, op: CmpOp::Eq, data: f.dport.to_be_bytes().to_vec() },
        Expr::ImmediateData { dreg: 1, data: vec![1] },
        Expr::MetaSet { sreg: 1, key: MetaKey::Nftrace },
    ]
}

/// An NFTA_TRACE_VERDICT nest; None without a code.
pub(crate) fn trace_verdict(v: &[u8]) -> Option<TraceVerdict> {
    let mut code = None;
    let mut chain = None;
    for (t, x) in attrs(v) {
        match t {
            NFTA_VERDICT_CODE => code = be32_attr(x).map(|c| c as i32),
            NFTA_VERDICT_CHAIN => chain = Some(str_attr(x)),
            _ => {}
        }
    }
    code.map(|c| TraceVerdict::from_code(c, chain))
}

pub(crate) fn l4proto(net: &[u8]) -> u8 {
    match net.first().map(|b| b >> 4) {
        Some(4) => net.get(9).copied().unwrap_or(0),
        Some(6) => net.get(6).copied().unwrap_or(0),
        _ => 0,
    }
}

pub(crate) fn packet_view(net: &[u8], transport: Option<&[u8]>, _nfproto: u8) -> Option<PacketView> {
    let (src, dst) = match net.first()? >> 4 {
        4 if net.len() >= 20 => (
            IpAddr::from(<[u8; 4]>::try_from(&net[12..16]).ok()?),
            IpAddr::from(<[u8; 4]>::try_from(&net[16..20]).ok()?),
        ),
        6 if net.len() >= 40 => (
            IpAddr::from(<[u8; 16]>::try_from(&net[8..24]).ok()?),
            IpAddr::from(<[u8; 16]>::try_from(&net[24..40]).ok()?),
        ),
        _ => return None,
    };
    let ports = transport.filter(|t| t.len() >= 4 && matches!(l4proto(net), 6 | 17 | 132));
    Some(PacketView {
        src,
        dst,
        sport: ports.map(|t| u16::from_be_bytes([t[0], t[1]])),
        dport: ports.map(|t| u16::from_be_bytes([t[2], t[3]])),
    })
}

/// Waits up to `wait` for events of `count` packets; the session is stopped before returning.
pub fn trace_packets(
    flow: TraceFlow,
    count: usize,
    wait: Duration,
    ready: impl FnOnce(&[String]),
    stop: &std::sync::atomic::AtomicBool,
) -> io::Result<Vec<TraceEvent>> {
    let mut session = TraceSession::start(flow)?;
    ready(session.chains());
    let deadline = Instant::now() + wait;
    let mut events: Vec<TraceEvent> = Vec::new();
    let mut ids: Vec<u32> = Vec::new();
    // Events of a packet arrive together; after the count is reached, wait a moment for the
    // rest of the last packet's path.
    let mut settle_until: Option<Instant> = None;
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        let now = Instant::now();
        let until = settle_until.map_or(deadline, |s| s.min(deadline));
        if now >= until {
            break;
        }
        let step = (now + Duration::from_millis(100)).min(until);
        let Some(ev) = session.next_event(step)? else { continue };
        if !ids.contains(&ev.id) {
            if ids.len() == count {
                continue;
            }
            ids.push(ev.id);
            if ids.len() == count {
                settle_until = Some(Instant::now() + Duration::from_millis(300));
            }
        }
        events.push(ev);
    }
    session.stop()?;
    Ok(events)
}
