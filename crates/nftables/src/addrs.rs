//! The node's interface addresses over rtnetlink (NETLINK_ROUTE, neli's socket): kube-proxy's
//! `--nodeport-addresses CIDR,…` selects the *interface* addresses inside those CIDRs
//! (`NodePortAddresses.GetNodeIPs(networkInterfacer)`), and follows them as they change.
//!
//! The only I/O here is the socket; parsing the answers is a pure function with its own tests.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::AsRawFd;

use neli::consts::socket::NlFamily;
use neli::socket::NlSocket;
use neli::utils::Groups;

use nftproxy_nft_wire::consts::NLM_F_REQUEST;
use nftproxy_nft_wire::netlink::{NLM_F_DUMP, attrs, message};

const RTM_NEWADDR: u16 = 20;
const RTM_GETADDR: u16 = 22;
const IFA_ADDRESS: u16 = 1;
const IFA_LOCAL: u16 = 2;
/// rtnetlink multicast groups of address changes.
const RTNLGRP_IPV4_IFADDR: u32 = 5;
const RTNLGRP_IPV6_IFADDR: u32 = 9;
/// The size of `struct ifaddrmsg`.
const IFADDRMSG_LEN: usize = 8;

/// Every address of every interface in this network namespace (loopback included), in the
/// kernel's order, without duplicates.
pub fn interface_addresses() -> io::Result<Vec<IpAddr>> {
    let sock = NlSocket::connect(NlFamily::Route, None, Groups::empty())?;
    let seq = 0x6a00_0001u32;
    // struct ifaddrmsg: any family, every interface.
    let ifaddrmsg = [libc::AF_UNSPEC as u8, 0, 0, 0, 0, 0, 0, 0];
    let request = message(RTM_GETADDR, NLM_F_REQUEST | NLM_F_DUMP, seq, &ifaddrmsg);
    let mut buf = vec![0u8; 64 * 1024];
    let mut out = Vec::new();
    for (ty, payload) in crate::netlink::exchange(&sock, &mut buf, &request, seq)? {
        if ty == RTM_NEWADDR
            && let Some(ip) = parse_newaddr(&payload)
            && !out.contains(&ip)
        {
            out.push(ip);
        }
    }
    Ok(out)
}

/// The address of one RTM_NEWADDR message (after the netlink header): IFA_LOCAL when present
/// (on point-to-point links IFA_ADDRESS is the peer), else IFA_ADDRESS. None for anything
/// malformed.
pub fn parse_newaddr(payload: &[u8]) -> Option<IpAddr> {
    let family = *payload.first()?;
    let rest = payload.get(IFADDRMSG_LEN..)?;
    let addr = |v: &[u8]| -> Option<IpAddr> {
        match (family as i32, v.len()) {
            (libc::AF_INET, 4) => Some(IpAddr::V4(Ipv4Addr::from(<[u8; 4]>::try_from(v).ok()?))),
            (libc::AF_INET6, 16) => Some(IpAddr::V6(Ipv6Addr::from(<[u8; 16]>::try_from(v).ok()?))),
            _ => None,
        }
    };
    let mut address = None;
    for (ty, v) in attrs(rest) {
        match ty {
            IFA_LOCAL => return addr(v),
            IFA_ADDRESS => address = addr(v),
            _ => {}
        }
    }
    address
}

/// A subscription to address changes (the kernel's RTNLGRP_IPV4_IFADDR/IPV6_IFADDR groups).
pub struct AddressMonitor {
    sock: NlSocket,
    buf: Vec<u8>,
}

impl AddressMonitor {
    pub fn open() -> io::Result<AddressMonitor> {
        let sock =
            NlSocket::connect(NlFamily::Route, None, Groups::new_groups(&[RTNLGRP_IPV4_IFADDR, RTNLGRP_IPV6_IFADDR]))?;
        Ok(AddressMonitor { sock, buf: vec![0u8; 64 * 1024] })
    }

    /// Blocks until an address is added or removed (or the socket's buffer overran, which
    /// means the same: look again).
    pub fn wait(&mut self) -> io::Result<()> {
        loop {
            match self.sock.recv(&mut self.buf[..], neli::consts::socket::Msg::empty()) {
                Ok((n, _)) if n > 0 => return Ok(()),
                Ok(_) => continue,
                Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
    }

    pub fn raw_fd(&self) -> i32 {
        self.sock.as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(family: u8, attrs: &[(u16, &[u8])]) -> Vec<u8> {
        let mut w = nftproxy_nft_wire::netlink::Writer::default();
        for (ty, data) in attrs {
            w.bytes(*ty, data);
        }
        [vec![family, 24, 0, 0, 2, 0, 0, 0], w.into_bytes()].concat()
    }

    #[test]
    fn local_wins_over_address_and_families_are_checked() {
        let ptp = msg(libc::AF_INET as u8, &[(IFA_ADDRESS, &[10, 0, 0, 2]), (IFA_LOCAL, &[10, 0, 0, 1])]);
        assert_eq!(parse_newaddr(&ptp), Some("10.0.0.1".parse().unwrap()));
        let v6 = msg(libc::AF_INET6 as u8, &[(IFA_ADDRESS, &"fd00::1".parse::<Ipv6Addr>().unwrap().octets())]);
        assert_eq!(parse_newaddr(&v6), Some("fd00::1".parse().unwrap()));
        // A 16-byte value in an AF_INET message, a truncated header, garbage: no address, no panic.
        assert_eq!(parse_newaddr(&msg(libc::AF_INET as u8, &[(IFA_ADDRESS, &[0; 16])])), None);
        assert_eq!(parse_newaddr(&[2, 0, 0]), None);
        assert_eq!(parse_newaddr(&[2, 0, 0, 0, 0, 0, 0, 0, 200, 0, 1]), None);
    }
}
