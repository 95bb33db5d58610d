//! `explain` (the model's answer for one packet, no kernel) and `trace` (the kernel's answer: the
//! packet's actual path through our chains and maps).

use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Args, ValueEnum};
use nftproxy_explain::{Flow, explain, render_text};
use nftproxy_model::Protocol;
use nftproxy_nftables::trace::{TraceEvent, TraceFlow, trace_packets};

use crate::node_args::NodeFlags;
use crate::{ProxyMode, load};

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
pub enum TextOrJson {
    Text,
    Json,
}

fn parse_proto(s: &str) -> Result<Protocol, String> {
    match s.to_ascii_lowercase().as_str() {
        "tcp" => Ok(Protocol::Tcp),
        "udp" => Ok(Protocol::Udp),
        "sctp" => Ok(Protocol::Sctp),
        other => Err(format!("{other:?} is not tcp, udp or sctp")),
    }
}

/// The packet: source, destination, protocol and destination port.
#[derive(Args, Debug)]
pub struct FlowArgs {
    #[arg(long, value_name = "IP")]
    src: IpAddr,
    #[arg(long, value_name = "IP")]
    dst: IpAddr,
    #[arg(long, value_name = "tcp|udp|sctp", value_parser = parse_proto)]
    proto: Protocol,
    #[arg(long, value_name = "PORT")]
    dport: u16,
    /// The interface the packet arrives on (explain only; for --detect-local-mode
    /// BridgeInterface / InterfaceNamePrefix).
    #[arg(long, value_name = "NAME")]
    iifname: Option<String>,
}

#[derive(Args, Debug)]
pub struct ExplainArgs {
    /// Manifests to explain from (file or directory).
    #[arg(long, value_name = "PATH", required_unless_present = "kubeconfig", conflicts_with = "kubeconfig")]
    from: Option<PathBuf>,
    /// Read the cluster from this API server instead (one list of Services, EndpointSlices, Nodes).
    #[arg(long, value_name = "FILE")]
    kubeconfig: Option<PathBuf>,
    #[command(flatten)]
    flow: FlowArgs,
    #[command(flatten)]
    node: NodeFlags,
    /// nftables: our rules; iptables: also kube-proxy's chains on the path, with probabilities.
    #[arg(long, value_name = "nftables|iptables", value_parser = |s: &str| s.parse::<ProxyMode>(), default_value = "nftables")]
    backend: ProxyMode,
    #[arg(long, value_enum, default_value = "text")]
    output: TextOrJson,
}

pub fn run_explain(a: ExplainArgs) -> Result<()> {
    let state = match (&a.from, &a.kubeconfig) {
        (Some(from), _) => load(from)?.state,
        (None, Some(kc)) => {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            let (state, warnings) = rt.block_on(async {
                let client = nftproxy_kube::client(Some(kc), None).await?;
                nftproxy_kube::snapshot(client).await.context("listing Services, EndpointSlices and Nodes")
            })?;
            for w in warnings {
                eprintln!("warning: {w} (object skipped)");
            }
            state
        }
        (None, None) => bail!("--from or --kubeconfig is required"),
    };
    let ctx = a.node.context(&state, a.backend == ProxyMode::Iptables)?;
    let f = &a.flow;
    let flow = Flow { src: f.src, dst: f.dst, protocol: f.proto, dport: f.dport, iifname: f.iifname.clone() };
    let ex = explain(&state, &ctx, flow, a.backend == ProxyMode::Iptables);
    match a.output {
        TextOrJson::Text => print!("{}", render_text(&ex)),
        TextOrJson::Json => println!("{}", serde_json::to_string_pretty(&ex)?),
    }
    Ok(())
}

#[derive(Args, Debug)]
pub struct TraceArgs {
    #[command(flatten)]
    flow: FlowArgs,
    /// Stop after this many packets of the flow.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=100))]
    count: u32,
    /// Stop after this many seconds in any case.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=600))]
    timeout: u64,
    #[arg(long, value_enum, default_value = "text")]
    output: TextOrJson,
}

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::Relaxed);
}

pub fn run_trace(a: TraceArgs) -> Result<()> {
    // Ctrl-C and SIGTERM end the trace normally, so the marking chains are removed.
    for sig in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: the handler only stores to an atomic.
        unsafe { libc::signal(sig, on_signal as *const () as libc::sighandler_t) };
    }
    let f = &a.flow;
    let flow = TraceFlow { src: f.src, dst: f.dst, protocol: f.proto.number(), dport: f.dport };
    let events = trace_packets(
        flow,
        a.count as usize,
        Duration::from_secs(a.timeout),
        |chains| {
            eprintln!(
                "tracing {} {} → {}:{} (chains {} at raw priority; up to {} packet(s), {} s); send the traffic now",
                f.proto,
                f.src,
                f.dst,
                f.dport,
                chains.join(", "),
                a.count,
                a.timeout
            )
        },
        &INTERRUPTED,
    )
    .map_err(|e| anyhow::anyhow!("trace: {e}"))?;
    let packets = summarize(&events);
    match a.output {
        TextOrJson::Text => {
            if packets.is_empty() {
                println!("no packet of this flow was seen in {} s", a.timeout);
            }
            for p in &packets {
                print!("{}", p.text());
            }
        }
        TextOrJson::Json => println!("{}", serde_json::to_string_pretty(&packets)?),
    }
    eprintln!("trace chains removed");
    Ok(())
}

/// One traced packet: its events and what came of it.
#[derive(serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TracedPacket {
    pub id: String,
    pub steps: Vec<TraceEvent>,
    /// The Service port a verdict map named.
    pub service_port: Option<String>,
    /// `ip:port` the packet was sent to after DNAT, if it was.
    pub dnat_to: Option<String>,
    /// `accept`, `drop`, `reject` …: the last verdict of our table.
    pub outcome: String,
}

fn addr(ip: &IpAddr, port: Option<u16>) -> String {
    nftproxy_model::join_host_port(ip, port.unwrap_or(0))
}

pub fn summarize(events: &[TraceEvent]) -> Vec<TracedPacket> {
    let mut ids: Vec<u32> = Vec::new();
    for e in events {
        if !ids.contains(&e.id) {
            ids.push(e.id);
        }
    }
    ids.into_iter()
        .map(|id| {
            let steps: Vec<TraceEvent> = events.iter().filter(|e| e.id == id).cloned().collect();
            let first = steps.iter().find_map(|s| s.packet);
            let dnat_to = first.and_then(|f| {
                steps
                    .iter()
                    .filter_map(|s| s.packet)
                    .find(|p| p.dst != f.dst || p.dport != f.dport)
                    .map(|p| addr(&p.dst, p.dport))
            });
            let service_port = steps.iter().find_map(|s| s.map_hit.as_ref()).map(|m| m.element.clone());
            let rejected = steps.iter().any(|s| s.rejects);
            let outcome = if rejected {
                "reject".to_string()
            } else {
                steps
                    .iter()
                    .rev()
                    .find_map(|s| s.verdict.as_ref().filter(|v| v.is_final()).map(ToString::to_string))
                    .unwrap_or_else(|| "accept".into())
            };
            TracedPacket { id: format!("{id:08x}"), steps, service_port, dnat_to, outcome }
        })
        .collect()
}

impl TracedPacket {
    pub fn text(&self) -> String {
        use std::fmt::Write;
        let mut s = String::new();
        if let Some(p) = self.steps.iter().find_map(|s| s.packet) {
            let _ = writeln!(s, "packet {}: {} → {}", self.id, addr(&p.src, p.sport), addr(&p.dst, p.dport));
        }
        let mut last_packet = self.steps.iter().find_map(|s| s.packet);
        for st in &self.steps {
            let mut line = format!(
                "  {:<11} {:<28} {:<6}",
                st.hook.map_or("-", |h| h.name()),
                format!("{} {}", if st.table == nftproxy_nftables::TABLE { "" } else { &st.table }, st.chain).trim(),
                st.kind
            );
            if let Some(r) = &st.rule {
                let _ = write!(line, " {r}");
            }
            if let Some(v) = &st.verdict {
                let _ = write!(line, " → {v}");
            }
            if let Some(m) = &st.map_hit {
                let _ = write!(line, "  [{m}]");
            }
            if let Some(p) = st.packet
                && Some(p) != last_packet
            {
                let _ = write!(line, "  (packet now {} → {})", addr(&p.src, p.sport), addr(&p.dst, p.dport));
                last_packet = Some(p);
            }
            let _ = writeln!(s, "{line}");
        }
        let _ = write!(s, "  result: {}", self.outcome);
        if let Some(d) = &self.dnat_to {
            let _ = write!(s, ", DNAT to {d}");
        }
        if let Some(sp) = &self.service_port {
            let _ = write!(s, " (service port {sp})");
        }
        let _ = writeln!(s);
        s
    }
}
