//! The namespace test kit: throwaway network namespaces, veths, bridges, responders that say who
//! they are and whom they saw, and clients that tally the answers.
//!
//! Safety rules it enforces:
//! - every interface is created *inside* a test namespace (`ip -n NS link add … peer … netns
//!   NS2`), so nothing ever appears in the root namespace;
//! - names are `knp-<pid>-<n>-<role>`: unique per process and per topology, so parallel tests
//!   never collide, and namespaces left by a killed test run (whose pid is gone) are swept by the
//!   next [`Topology::new`];
//! - [`Topology`]'s `Drop` stops responder threads, kills child processes and deletes every
//!   namespace it created, also while unwinding from a panic or a failed assertion.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::AsRawFd;
use std::process::{Child, Command, Output, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

pub mod bench;
pub mod clusters;
pub mod control_plane;
pub mod difftest;
pub mod headtohead;
pub mod lab;
pub mod loader;
pub mod multinode;
pub mod peer;
pub mod sctp;
pub mod snapshot;
pub mod yaml;

pub const NS_PREFIX: &str = "knp-";
static TOPOLOGY_COUNTER: AtomicUsize = AtomicUsize::new(0);

/// A network namespace of a [`Topology`]. Cheap to clone; the topology owns its lifetime.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ns {
    pub name: String,
}

impl Ns {
    /// Runs `f` on a thread that has entered this namespace, and returns its result. Sockets made
    /// there stay in this namespace.
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        std::thread::scope(|s| {
            s.spawn(|| {
                enter(&self.name);
                f()
            })
            .join()
            .unwrap_or_else(|p| std::panic::resume_unwind(p))
        })
    }

    /// A command that runs inside this namespace (`ip netns exec`).
    pub fn command(&self, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name, program]);
        c
    }

    /// Runs a command inside the namespace; panics with its output if it fails.
    pub fn exec(&self, program: &str, args: &[&str]) -> String {
        let out = self.command(program).args(args).output().expect("spawn ip netns exec");
        check(&format!("[{}] {program} {}", self.name, args.join(" ")), out)
    }

    /// `ip -n NS …`
    pub fn ip(&self, args: &[&str]) -> String {
        let out = Command::new("ip").arg("-n").arg(&self.name).args(args).output().expect("spawn ip");
        check(&format!("ip -n {} {}", self.name, args.join(" ")), out)
    }

    pub fn sysctl(&self, key: &str, value: &str) {
        self.exec("sysctl", &["-qw", &format!("{key}={value}")]);
    }
}

fn check(what: &str, out: Output) -> String {
    if !out.status.success() {
        panic!(
            "{what} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Moves the calling thread into a named network namespace.
pub fn enter(name: &str) {
    let f = File::open(format!("/run/netns/{name}")).unwrap_or_else(|e| panic!("open netns {name}: {e}"));
    // SAFETY: setns on a valid namespace fd only changes this thread's network namespace.
    let rc = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
    assert_eq!(rc, 0, "setns {name}: {}", std::io::Error::last_os_error());
}

/// A `kB` field of `/proc/PID/status` (`VmHWM:`, `VmRSS:`), 0 when absent.
pub fn proc_status_kb(pid: u32, key: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| l.strip_prefix(key)).and_then(|v| v.split_whitespace().next()?.parse().ok())
        })
        .unwrap_or(0)
}

/// A process and all its descendants (from `/proc/PID/task/*/children`), the process first.
pub fn descendants(pid: u32) -> Vec<u32> {
    let mut out = vec![pid];
    let mut i = 0;
    while i < out.len() {
        let p = out[i];
        for task in std::fs::read_dir(format!("/proc/{p}/task")).into_iter().flatten().flatten() {
            if let Ok(c) = std::fs::read_to_string(task.path().join("children")) {
                out.extend(c.split_whitespace().filter_map(|x| x.parse::<u32>().ok()));
            }
        }
        i += 1;
    }
    out
}

/// For long runs stopped by hand (`make bench` runs ~100 minutes): on SIGINT, SIGTERM or SIGHUP, does
/// what the Drop guards would have done had the process ended normally — kills every process it
/// started (kube-apiserver, etcd, proxies, load generators), deletes its network namespaces
/// (`knp-<pid>-…`) and their scratch directories (`/tmp/knp-<pid>-…`) — then exits 128 + the
/// signal. Without it a stopped bench left its control plane running in a namespace.
///
/// Call it first in `main`, before any thread starts: the signals are blocked here and every
/// later thread inherits the mask, so only the waiting thread receives them. Child processes do
/// not inherit it (std's `Command` resets the signal mask in the child).
pub fn clean_up_on_signal() {
    // SAFETY: sigset_t is plain data that sigemptyset initialises; the calls only change this
    // thread's signal mask.
    let set = unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
            libc::sigaddset(&mut set, sig);
        }
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        set
    };
    std::thread::spawn(move || {
        let mut sig: libc::c_int = 0;
        // SAFETY: `set` is an initialised sigset_t and `sig` a valid out-pointer.
        if unsafe { libc::sigwait(&set, &mut sig) } != 0 {
            return;
        }
        let me = std::process::id();
        eprintln!("signal {sig}: stopping the processes, namespaces and directories of this run");
        for pid in descendants(me).into_iter().filter(|&p| p != me) {
            // SAFETY: kill has no memory effects; a pid gone meanwhile gives ESRCH.
            unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
        }
        let ours = format!("{NS_PREFIX}{me}-");
        for name in netns_list().into_iter().filter(|n| n.starts_with(&ours)) {
            delete_netns(&name);
        }
        for dir in std::fs::read_dir(std::env::temp_dir()).into_iter().flatten().flatten() {
            if dir.file_name().to_string_lossy().starts_with(&ours) {
                let _ = std::fs::remove_dir_all(dir.path());
            }
        }
        std::process::exit(128 + sig);
    });
}

/// `ip netns del NAME`, its failure ignored (cleanup: the namespace may be gone already).
fn delete_netns(name: &str) {
    let _ = Command::new("ip").args(["netns", "del", name]).status();
}

/// All network namespaces by name (`ip netns list`).
pub fn netns_list() -> Vec<String> {
    let out = Command::new("ip").args(["netns", "list"]).output().expect("ip netns list");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .collect()
}

/// Deletes test namespaces whose creating process no longer exists (a run killed by a signal
/// cannot run its guards).
fn sweep_orphans() {
    for name in netns_list() {
        let Some(rest) = name.strip_prefix(NS_PREFIX) else {
            continue;
        };
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            delete_netns(&name);
        }
    }
}

/// A set of namespaces and what runs in them, removed as a whole on drop.
pub struct Topology {
    prefix: String,
    namespaces: Vec<Ns>,
    pub(crate) stop: Arc<AtomicBool>,
    pub(crate) threads: Vec<JoinHandle<()>>,
    children: Vec<Child>,
}

impl Default for Topology {
    fn default() -> Self {
        Self::new()
    }
}

impl Topology {
    pub fn new() -> Topology {
        sweep_orphans();
        let n = TOPOLOGY_COUNTER.fetch_add(1, Ordering::SeqCst);
        Topology {
            prefix: format!("{NS_PREFIX}{}-{n}-", std::process::id()),
            namespaces: Vec::new(),
            stop: Arc::new(AtomicBool::new(false)),
            threads: Vec::new(),
            children: Vec::new(),
        }
    }

    /// The prefix of every namespace name of this topology.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Creates a namespace with loopback up.
    pub fn netns(&mut self, role: &str) -> Ns {
        let ns = Ns { name: format!("{}{role}", self.prefix) };
        let out = Command::new("ip").args(["netns", "add", &ns.name]).output().expect("ip netns add");
        check(&format!("ip netns add {}", ns.name), out);
        self.namespaces.push(ns.clone());
        ns.ip(&["link", "set", "lo", "up"]);
        // No IPv6 duplicate address detection: addresses are usable at once.
        ns.sysctl("net.ipv6.conf.all.accept_dad", "0");
        ns.sysctl("net.ipv6.conf.default.accept_dad", "0");
        ns
    }

    /// A veth pair between two namespaces, both ends up. Created inside `a`, never in the root
    /// namespace.
    pub fn veth(&self, a: &Ns, a_if: &str, b: &Ns, b_if: &str) {
        a.ip(&["link", "add", a_if, "type", "veth", "peer", "name", b_if, "netns", &b.name]);
        a.ip(&["link", "set", a_if, "up"]);
        b.ip(&["link", "set", b_if, "up"]);
    }

    /// A bridge inside a namespace, up.
    pub fn bridge(&self, ns: &Ns, name: &str) {
        ns.ip(&["link", "add", name, "type", "bridge"]);
        ns.ip(&["link", "set", name, "up"]);
    }

    /// Enslaves an interface to a bridge in the same namespace.
    pub fn attach(&self, ns: &Ns, ifname: &str, bridge: &str) {
        ns.ip(&["link", "set", ifname, "master", bridge]);
    }

    pub fn addr(&self, ns: &Ns, ifname: &str, cidr: &str) {
        let fam = if cidr.contains(':') { "-6" } else { "-4" };
        ns.ip(&[fam, "addr", "add", cidr, "dev", ifname, "nodad"]);
    }

    /// `ip route add DEST via GW` (DEST may be `default`).
    pub fn route(&self, ns: &Ns, dest: &str, via: &str) {
        let fam = if via.contains(':') { "-6" } else { "-4" };
        ns.ip(&[fam, "route", "add", dest, "via", via]);
    }

    /// Turns a namespace into a router (forwarding on, for both families).
    pub fn forwarding(&self, ns: &Ns) {
        ns.sysctl("net.ipv4.ip_forward", "1");
        ns.sysctl("net.ipv6.conf.all.forwarding", "1");
    }

    /// No ICMP rate limits in a namespace that answers with rejects and unreachables: they are
    /// rate-limited per peer by default, and tests send them in bursts. The token bucket (1000/s,
    /// burst 50) is per network namespace on current kernels; many flows at once (the
    /// differential suite) would otherwise lose rejects.
    pub fn unlimited_icmp(&self, ns: &Ns) {
        ns.sysctl("net.ipv4.icmp_ratelimit", "0");
        ns.sysctl("net.ipv6.icmp.ratelimit", "0");
        ns.sysctl("net.ipv4.icmp_msgs_per_sec", "100000");
        ns.sysctl("net.ipv4.icmp_msgs_burst", "100000");
    }

    /// Starts a process in a namespace; it is killed when the topology is dropped.
    pub fn spawn(&mut self, ns: &Ns, program: &str, args: &[&str]) -> &mut Child {
        let child = ns
            .command(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn in netns");
        self.children.push(child);
        self.children.last_mut().unwrap()
    }

    /// Starts TCP and UDP responders in `ns` on `addr`, answering every request with
    /// `<id> <source address seen>`.
    pub fn responder(&mut self, ns: &Ns, id: &str, addr: IpAddr, tcp_ports: &[u16], udp_ports: &[u16]) {
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<()>();
        for &port in tcp_ports {
            let (ns, id, stop, ready) = (ns.clone(), id.to_string(), self.stop.clone(), ready_tx.clone());
            self.threads.push(std::thread::spawn(move || {
                enter(&ns.name);
                let l = TcpListener::bind(SocketAddr::new(addr, port)).expect("bind tcp responder");
                l.set_nonblocking(true).unwrap();
                ready.send(()).unwrap();
                while !stop.load(Ordering::Relaxed) {
                    if !poll_readable(l.as_raw_fd(), 50) {
                        continue;
                    }
                    let Ok((s, peer)) = l.accept() else { continue };
                    let (id, stop) = (id.clone(), stop.clone());
                    // A thread per connection, so a long-lived connection never blocks others;
                    // it ends when the client closes, on the stop flag, or after 5 s idle.
                    std::thread::spawn(move || serve_tcp(s, &id, peer, &stop));
                }
            }));
        }
        for &port in udp_ports {
            let (ns, id, stop, ready) = (ns.clone(), id.to_string(), self.stop.clone(), ready_tx.clone());
            self.threads.push(std::thread::spawn(move || {
                enter(&ns.name);
                let s = UdpSocket::bind(SocketAddr::new(addr, port)).expect("bind udp responder");
                s.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
                ready.send(()).unwrap();
                let mut buf = [0u8; 512];
                while !stop.load(Ordering::Relaxed) {
                    if let Ok((_, peer)) = s.recv_from(&mut buf) {
                        let _ = s.send_to(format!("{id} {}\n", peer.ip()).as_bytes(), peer);
                    }
                }
            }));
        }
        for _ in 0..tcp_ports.len() + udp_ports.len() {
            ready_rx.recv_timeout(Duration::from_secs(5)).expect("responder did not start");
        }
    }
}

/// Answers every request line with `<id> <peer address>` until the client closes.
fn serve_tcp(mut s: TcpStream, id: &str, peer: SocketAddr, stop: &AtomicBool) {
    let _ = s.set_nonblocking(false);
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    let reply = format!("{id} {}\n", peer.ip());
    let Ok(clone) = s.try_clone() else { return };
    let mut r = std::io::BufReader::new(clone);
    let mut line = String::new();
    while !stop.load(Ordering::Relaxed) {
        line.clear();
        match std::io::BufRead::read_line(&mut r, &mut line) {
            Ok(0) | Err(_) => break,
            Ok(_) => {
                if s.write_all(reply.as_bytes()).is_err() {
                    break;
                }
            }
        }
    }
}

fn poll_readable(fd: i32, timeout_ms: i32) -> bool {
    let mut p = libc::pollfd { fd, events: libc::POLLIN, revents: 0 };
    // SAFETY: one valid pollfd.
    unsafe { libc::poll(&mut p, 1, timeout_ms) > 0 }
}

impl Drop for Topology {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        for mut c in self.children.drain(..) {
            let _ = c.kill();
            let _ = c.wait();
        }
        for ns in self.namespaces.drain(..).rev() {
            delete_netns(&ns.name);
        }
    }
}

/// One answer from a responder.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Answer {
    pub responder: String,
    /// The source address the responder saw (masqueraded or not).
    pub seen_source: IpAddr,
}

fn parse_answer(s: &str) -> Result<Answer, String> {
    let mut it = s.split_whitespace();
    match (it.next(), it.next().and_then(|a| a.parse().ok())) {
        (Some(id), Some(src)) => Ok(Answer { responder: id.to_string(), seen_source: src }),
        _ => Err(format!("malformed answer {s:?}")),
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Proto {
    Tcp,
    Udp,
}

/// How one request ended, as seen by the client.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Outcome {
    Answered {
        responder: String,
        seen_source: IpAddr,
    },
    /// TCP reset, or ICMP port/host unreachable reported on the UDP socket.
    Refused,
    /// Nothing came back in time (dropped).
    Timeout,
    Other(String),
}

/// One request on a new socket (so a new source port): TCP connect + request + read, or a UDP
/// datagram and its reply. Call it from a thread inside the client namespace ([`Ns::run`]).
pub fn request(proto: Proto, to: SocketAddr, from: Option<IpAddr>, timeout: Duration) -> Outcome {
    let classify = |e: std::io::Error| match e.kind() {
        std::io::ErrorKind::ConnectionRefused | std::io::ErrorKind::ConnectionReset => Outcome::Refused,
        std::io::ErrorKind::HostUnreachable | std::io::ErrorKind::NetworkUnreachable => Outcome::Refused,
        std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock => Outcome::Timeout,
        _ => Outcome::Other(e.to_string()),
    };
    let answered = |s: &str| match parse_answer(s) {
        Ok(a) => Outcome::Answered { responder: a.responder, seen_source: a.seen_source },
        Err(e) => Outcome::Other(e),
    };
    match proto {
        Proto::Tcp => {
            let stream = match from {
                None => TcpStream::connect_timeout(&to, timeout),
                Some(src) => bound_tcp_connect(src, to, timeout),
            };
            let mut s = match stream {
                Ok(s) => s,
                Err(e) => return classify(e),
            };
            let _ = s.set_read_timeout(Some(timeout));
            if let Err(e) = s.write_all(b"who\n") {
                return classify(e);
            }
            let _ = s.shutdown(std::net::Shutdown::Write);
            let mut buf = String::new();
            match s.read_to_string(&mut buf) {
                Ok(_) => answered(&buf),
                Err(e) => classify(e),
            }
        }
        Proto::Udp => {
            let bind = from.unwrap_or(if to.is_ipv4() { "0.0.0.0".parse().unwrap() } else { "::".parse().unwrap() });
            let s = UdpSocket::bind(SocketAddr::new(bind, 0)).expect("bind udp client");
            s.connect(to).expect("connect udp"); // connected: ICMP errors are reported
            s.set_read_timeout(Some(timeout)).unwrap();
            if let Err(e) = s.send(b"who\n") {
                return classify(e);
            }
            let mut buf = [0u8; 512];
            match s.recv(&mut buf) {
                Ok(n) => answered(&String::from_utf8_lossy(&buf[..n])),
                Err(e) => classify(e),
            }
        }
    }
}

fn bound_tcp_connect(src: IpAddr, to: SocketAddr, timeout: Duration) -> std::io::Result<TcpStream> {
    // std has no bind-before-connect; socket2 would be one more dependency for two calls.
    let domain = if to.is_ipv4() { libc::AF_INET } else { libc::AF_INET6 };
    // SAFETY: plain socket calls on a fresh fd; ownership passes to TcpStream below.
    unsafe {
        let fd = libc::socket(domain, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let stream = <TcpStream as std::os::fd::FromRawFd>::from_raw_fd(fd);
        let (sa, len) = sockaddr(SocketAddr::new(src, 0));
        if libc::bind(fd, &sa as *const _ as *const libc::sockaddr, len) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        let tv = libc::timeval { tv_sec: timeout.as_secs() as _, tv_usec: timeout.subsec_micros() as _ };
        libc::setsockopt(fd, libc::SOL_SOCKET, libc::SO_SNDTIMEO, &tv as *const _ as *const _, size_of_val(&tv) as _);
        let (da, dlen) = sockaddr(to);
        if libc::connect(fd, &da as *const _ as *const libc::sockaddr, dlen) != 0 {
            let e = std::io::Error::last_os_error();
            return Err(if e.kind() == std::io::ErrorKind::WouldBlock {
                std::io::ErrorKind::TimedOut.into()
            } else {
                e
            });
        }
        Ok(stream)
    }
}

fn sockaddr(a: SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: sockaddr_storage is plain data, valid when zeroed.
    let mut ss: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    match a {
        SocketAddr::V4(v4) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as _,
                sin_port: v4.port().to_be(),
                sin_addr: libc::in_addr { s_addr: u32::from_ne_bytes(v4.ip().octets()) },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_storage is larger than sockaddr_in.
            unsafe { std::ptr::write(&mut ss as *mut _ as *mut libc::sockaddr_in, sin) };
            (ss, size_of::<libc::sockaddr_in>() as _)
        }
        SocketAddr::V6(v6) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as _,
                sin6_port: v6.port().to_be(),
                sin6_flowinfo: 0,
                sin6_addr: libc::in6_addr { s6_addr: v6.ip().octets() },
                sin6_scope_id: 0,
            };
            // SAFETY: sockaddr_storage is larger than sockaddr_in6.
            unsafe { std::ptr::write(&mut ss as *mut _ as *mut libc::sockaddr_in6, sin6) };
            (ss, size_of::<libc::sockaddr_in6>() as _)
        }
    }
}

/// The outcomes of many requests, counted.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Tally {
    pub outcomes: BTreeMap<Outcome, usize>,
}

impl Tally {
    /// Answers per responder.
    pub fn by_responder(&self) -> BTreeMap<String, usize> {
        let mut m = BTreeMap::new();
        for (o, n) in &self.outcomes {
            if let Outcome::Answered { responder, .. } = o {
                *m.entry(responder.clone()).or_default() += n;
            }
        }
        m
    }
    /// Every source address the responders saw.
    pub fn seen_sources(&self) -> Vec<IpAddr> {
        let mut v: Vec<IpAddr> = self
            .outcomes
            .keys()
            .filter_map(|o| match o {
                Outcome::Answered { seen_source, .. } => Some(*seen_source),
                _ => None,
            })
            .collect();
        v.sort();
        v.dedup();
        v
    }
    pub fn count(&self, pred: impl Fn(&Outcome) -> bool) -> usize {
        self.outcomes.iter().filter(|(o, _)| pred(o)).map(|(_, n)| n).sum()
    }
    pub fn total(&self) -> usize {
        self.outcomes.values().sum()
    }
    /// Pearson's chi-square statistic of the answers against an even spread over `k` responders.
    pub fn chi_square_uniform(&self, k: usize) -> f64 {
        let by = self.by_responder();
        let n: usize = by.values().sum();
        let expected = n as f64 / k as f64;
        let seen: f64 = by.values().map(|&o| (o as f64 - expected).powi(2) / expected).sum();
        // Responders that never answered contribute expected²/expected = expected each.
        seen + (k.saturating_sub(by.len())) as f64 * expected
    }
}

/// Makes `n` requests from inside `ns`, each on a new socket, bounded by `deadline` in total.
pub fn tally(ns: &Ns, proto: Proto, to: SocketAddr, from: Option<IpAddr>, n: usize, per_request: Duration) -> Tally {
    let deadline = Duration::from_secs(60);
    ns.run(|| {
        let start = Instant::now();
        let mut t = Tally::default();
        for _ in 0..n {
            if start.elapsed() > deadline {
                break;
            }
            *t.outcomes.entry(request(proto, to, from, per_request)).or_default() += 1;
        }
        t
    })
}

/// A scratch directory under the system temp dir, removed on drop (also after a failed
/// assertion).
pub struct TempDir(pub std::path::PathBuf);

impl TempDir {
    pub fn new(name: &str) -> TempDir {
        let p = std::env::temp_dir().join(name);
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap_or_else(|e| panic!("create {}: {e}", p.display()));
        TempDir(p)
    }

    pub fn join(&self, file: &str) -> std::path::PathBuf {
        self.0.join(file)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Now, as the EndpointSlice controller stamps `endpoints.kubernetes.io/last-change-trigger-time`
/// (RFC 3339, UTC, sub-second digits).
pub fn trigger_time_now() -> String {
    jiff::Timestamp::now().to_string()
}
