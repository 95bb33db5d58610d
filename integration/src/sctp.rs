//! SCTP without SCTP sockets: this kernel has SCTP conntrack and NAT but no `CONFIG_IP_SCTP`, so
//! tests craft SCTP INIT packets on a raw socket and capture them at the endpoint with another.

use std::net::{IpAddr, Ipv4Addr, SocketAddrV4};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::{Ns, Topology, enter};

const IPPROTO_SCTP: i32 = 132;

/// An SCTP packet as an endpoint received it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SctpSeen {
    pub endpoint: String,
    pub src: IpAddr,
    pub dst: IpAddr,
    pub dport: u16,
}

fn raw_socket() -> OwnedFd {
    // SAFETY: plain socket call; the fd is owned at once.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, IPPROTO_SCTP) };
    assert!(fd >= 0, "raw SCTP socket: {}", std::io::Error::last_os_error());
    // SAFETY: fd is a fresh, valid descriptor.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

/// An SCTP INIT chunk in a common header, with the CRC32c conntrack checks.
pub fn init_packet(sport: u16, dport: u16, tag: u32) -> Vec<u8> {
    let mut p = Vec::with_capacity(32);
    p.extend_from_slice(&sport.to_be_bytes());
    p.extend_from_slice(&dport.to_be_bytes());
    p.extend_from_slice(&0u32.to_be_bytes()); // verification tag: 0 in an INIT
    p.extend_from_slice(&0u32.to_be_bytes()); // checksum, filled below
    p.extend_from_slice(&[1, 0]); // chunk type INIT, flags
    p.extend_from_slice(&20u16.to_be_bytes()); // chunk length
    p.extend_from_slice(&tag.to_be_bytes()); // initiate tag
    p.extend_from_slice(&65535u32.to_be_bytes()); // a_rwnd
    p.extend_from_slice(&1u16.to_be_bytes()); // outbound streams
    p.extend_from_slice(&1u16.to_be_bytes()); // inbound streams
    p.extend_from_slice(&tag.to_be_bytes()); // initial TSN
    let crc = crc::Crc::<u32>::new(&crc::CRC_32_ISCSI).checksum(&p);
    p[8..12].copy_from_slice(&crc.to_le_bytes()); // as Linux stores it (cpu_to_le32)
    p
}

/// Sends one INIT per source port from inside `ns` to `dst`.
pub fn send_inits(ns: &Ns, dst: SocketAddrV4, sports: impl Iterator<Item = u16> + Send) {
    ns.run(|| {
        let s = raw_socket();
        for sport in sports {
            let pkt = init_packet(sport, dst.port(), 0x1000_0000 | u32::from(sport));
            let sa = libc::sockaddr_in {
                sin_family: libc::AF_INET as _,
                sin_port: 0,
                sin_addr: libc::in_addr { s_addr: u32::from_ne_bytes(dst.ip().octets()) },
                sin_zero: [0; 8],
            };
            // SAFETY: a valid buffer and sockaddr_in for this call.
            let n = unsafe {
                libc::sendto(
                    s.as_raw_fd(),
                    pkt.as_ptr() as *const _,
                    pkt.len(),
                    0,
                    &sa as *const _ as *const libc::sockaddr,
                    size_of_val(&sa) as u32,
                )
            };
            assert_eq!(n, pkt.len() as isize, "sendto: {}", std::io::Error::last_os_error());
        }
    });
}

impl Topology {
    /// Records every SCTP packet that reaches `ns` until the topology is dropped.
    pub fn sctp_sniffer(&mut self, ns: &Ns, id: &str) -> Arc<Mutex<Vec<SctpSeen>>> {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (ns, id, stop, out) = (ns.clone(), id.to_string(), self.stop.clone(), seen.clone());
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        self.threads.push(std::thread::spawn(move || {
            enter(&ns.name);
            let s = raw_socket();
            let tv = libc::timeval { tv_sec: 0, tv_usec: 50_000 };
            // SAFETY: a timeval option on our socket.
            unsafe {
                libc::setsockopt(
                    s.as_raw_fd(),
                    libc::SOL_SOCKET,
                    libc::SO_RCVTIMEO,
                    &tv as *const _ as *const _,
                    size_of_val(&tv) as u32,
                )
            };
            ready_tx.send(()).unwrap();
            let mut buf = [0u8; 2048];
            while !stop.load(Ordering::Relaxed) {
                // SAFETY: reading into our buffer.
                let n = unsafe { libc::recv(s.as_raw_fd(), buf.as_mut_ptr() as *mut _, buf.len(), 0) };
                if n < 24 {
                    continue;
                }
                let ihl = usize::from(buf[0] & 0xf) * 4;
                let ip = |o: usize| IpAddr::V4(Ipv4Addr::new(buf[o], buf[o + 1], buf[o + 2], buf[o + 3]));
                out.lock().unwrap().push(SctpSeen {
                    endpoint: id.clone(),
                    src: ip(12),
                    dst: ip(16),
                    dport: u16::from_be_bytes([buf[ihl + 2], buf[ihl + 3]]),
                });
            }
        }));
        ready_rx.recv_timeout(Duration::from_secs(5)).expect("sniffer did not start");
        seen
    }
}
