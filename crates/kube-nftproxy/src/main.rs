//! kube-nftproxy: a kube-proxy replacement that programs nftables over netlink.

mod commands;
mod node_args;

use commands::{debug, inspect, run};

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand, ValueEnum};
use nftproxy_manifest::{Loaded, load_path_with};
use nftproxy_model::{IpFamily, NodeContext, resolve};
use nftproxy_nftables::{Family, NftablesBackend};

use node_args::{IptablesArgs, NodeFlags};

#[derive(Parser, Debug)]
#[command(name = "kube-nftproxy", version, about = "A kube-proxy replacement that programs nftables over netlink")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Output {
    Table,
    Json,
}

/// Which data plane `render`, `sync`, `cleanup` and `explain` mean (`--backend`): the daemon's
/// `--proxy-mode`, one type for both — nftables (tables `ip`/`ip6 kube-nftproxy` over netlink)
/// or iptables (kube-proxy's KUBE-* chains through the node's iptables-restore, legacy or nft).
pub(crate) use nftproxy_daemon::config::ProxyMode;

/// What `render` and `sync` program, and how.
#[derive(Args, Debug)]
struct ProgramArgs {
    #[arg(long, value_name = "PATH")]
    from: PathBuf,
    #[command(flatten)]
    node: NodeFlags,
    #[command(flatten)]
    iptables: IptablesArgs,
    #[arg(long, value_name = "nftables|iptables", value_parser = |s: &str| s.parse::<ProxyMode>(), default_value = "nftables")]
    backend: ProxyMode,
    /// A manifest source without a single object means "no Services" (without this flag it is
    /// an error, like a file that does not parse, and nothing is changed).
    #[arg(long = "allow-empty-manifests")]
    allow_empty: bool,
}

impl ProgramArgs {
    /// kube-proxy's iptables options for this node: localhost NodePorts only when the NodePort
    /// addresses hold an IPv4 loopback address (`ContainsIPv4Loopback`).
    fn iptables_options(&self, ctx: &NodeContext) -> nftproxy_iptables::Options {
        self.iptables.options().for_nodeport_addresses(&ctx.nodeport_addresses)
    }

    /// The manifests and this node's context.
    fn load(&self) -> Result<(Loaded, NodeContext)> {
        let loaded = load_with(&self.from, self.allow_empty)?;
        let mut ctx = self.node.context(&loaded.state, self.backend == ProxyMode::Iptables)?;
        if self.backend == ProxyMode::Iptables {
            ctx.masquerade_bit = self.iptables.masquerade_bit;
        }
        Ok((loaded, ctx))
    }
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Print the ruleset `sync` would program: `nft -f` syntax, or iptables-restore input (both
    /// families).
    Render(ProgramArgs),
    /// Program the current network namespace once from manifests, then exit. An existing table
    /// of ours is replaced atomically.
    Sync(ProgramArgs),
    /// Run as the node's service proxy (kube-proxy's replacement): watch the API server (or, with
    /// --from, manifests) and keep this network namespace's rules in step until SIGTERM, which
    /// leaves them in place.
    Run(Box<run::RunArgs>),
    /// What the proxy does with one packet, from the service model (no kernel needed): frontend,
    /// Service port, candidate endpoints with probabilities, masquerade, affinity, or why it is
    /// rejected or dropped; with --backend iptables also kube-proxy's chains on the way.
    Explain(Box<debug::ExplainArgs>),
    /// Follow real packets of one flow through this network namespace's rules, with the kernel's
    /// nftables tracing; the marking rule is removed afterwards (also on Ctrl-C).
    Trace(debug::TraceArgs),
    /// Remove our tables from the current network namespace (and nothing else).
    Cleanup {
        #[arg(long, value_name = "nftables|iptables", value_parser = |s: &str| s.parse::<ProxyMode>(), default_value = "nftables")]
        backend: ProxyMode,
        /// With `--backend iptables`: `auto` removes our chains from both iptables variants.
        #[arg(long = "iptables-variant", value_enum, default_value = "auto")]
        variant: node_args::VariantArg,
    },
    /// Show, for every service port, its frontends and the endpoints kube-proxy's rules choose on
    /// this node (cluster-wide and node-local).
    Inspect {
        /// A manifest file or directory (YAML or JSON; `kubectl get services,endpointslices,nodes -A -o yaml`).
        #[arg(long, value_name = "PATH")]
        from: PathBuf,
        #[command(flatten)]
        node: NodeFlags,
        #[arg(long, value_enum, default_value = "table")]
        output: Output,
    },
}

/// Loads manifests and reports every warning on stderr: bad objects never stop the rest, but a
/// file that does not parse (or holds no object at all) is an error: nothing is used.
pub(crate) fn load(from: &std::path::Path) -> Result<Loaded> {
    load_with(from, false)
}

fn load_with(from: &std::path::Path, allow_empty: bool) -> Result<Loaded> {
    let loaded = load_path_with(from, allow_empty).with_context(|| format!("--from {}", from.display()))?;
    for w in &loaded.warnings {
        eprintln!("warning: {w}");
    }
    Ok(loaded)
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Render(args) => {
            let (loaded, ctx) = args.load()?;
            match args.backend {
                ProxyMode::Nftables => {
                    for table in nftproxy_nftables::desired(&loaded.state, &ctx) {
                        print!("{}", table.render());
                    }
                }
                ProxyMode::Iptables => {
                    for fam in [IpFamily::V4, IpFamily::V6] {
                        let tool = if fam == IpFamily::V6 { "ip6tables-restore" } else { "iptables-restore" };
                        println!("# {fam}: input for {tool}");
                        print!(
                            "{}",
                            nftproxy_iptables::render_cluster(fam, &loaded.state, &ctx, &args.iptables_options(&ctx))
                        );
                    }
                }
            }
            Ok(())
        }
        Command::Sync(args) => {
            let (loaded, mut ctx) = args.load()?;
            // On the node itself: NodePorts follow its real interface addresses.
            ctx.local_addresses = Some(
                nftproxy_nftables::addrs::interface_addresses()
                    .context("reading the interface addresses (rtnetlink)")?,
            );
            match args.backend {
                ProxyMode::Nftables => {
                    let mut backend = NftablesBackend::new().context("opening the nf_tables netlink socket")?;
                    let start = std::time::Instant::now();
                    let report = backend.sync_cluster(&loaded.state, &ctx)?;
                    let elements: usize = [Family::V4, Family::V6]
                        .into_iter()
                        .filter_map(|f| backend.programmed(f))
                        .map(|t| t.element_count())
                        .sum();
                    eprintln!(
                        "synced {} service(s), {elements} map elements: {} transaction(s), {} messages, {} bytes in {:.1?} (longest transaction {:.1?})",
                        loaded.state.services.len(),
                        report.transactions,
                        report.messages,
                        report.bytes,
                        start.elapsed(),
                        report.longest_transaction
                    );
                    // The process ends here: the kernel takes its memory back whole, where
                    // freeing the state and the table mirror object by object took ~20 ms at
                    // 10k Services × 3 (~0.1 s at 50k × 10; perf).
                    std::mem::forget(backend);
                    std::mem::forget(loaded);
                }
                ProxyMode::Iptables => {
                    let opts = args.iptables_options(&ctx);
                    if opts.localhost_nodeports {
                        // kube-proxy's iptables mode: localhost NodePorts need route_localnet.
                        let s = nftproxy_daemon::sysctls::Sysctl {
                            path: "/proc/sys/net/ipv4/conf/all/route_localnet".into(),
                            value: 1,
                            raise_only: false,
                            name: "net.ipv4.conf.all.route_localnet",
                        };
                        if let nftproxy_daemon::sysctls::Outcome::Skipped(why) =
                            nftproxy_daemon::sysctls::apply_one(&s, true)
                        {
                            eprintln!("warning: {} not set: {why}", s.name);
                        }
                    }
                    let variant = args.iptables.variant.resolve();
                    for fam in [IpFamily::V4, IpFamily::V6] {
                        let text = nftproxy_iptables::render_cluster(fam, &loaded.state, &ctx, &opts);
                        nftproxy_iptables::sync(variant.variant, fam, &text, opts.localhost_nodeports)?;
                    }
                    eprintln!(
                        "synced {} service(s) with iptables-{}-restore ({})",
                        loaded.state.services.len(),
                        variant.variant,
                        variant.reason
                    );
                }
            }
            Ok(())
        }
        Command::Run(args) => run::run(*args),
        Command::Explain(args) => debug::run_explain(*args),
        Command::Trace(args) => debug::run_trace(args),
        Command::Cleanup { backend: ProxyMode::Nftables, .. } => {
            NftablesBackend::new().context("opening the nf_tables netlink socket")?.cleanup()?;
            Ok(())
        }
        Command::Cleanup { backend: ProxyMode::Iptables, variant } => {
            let variants = match variant {
                node_args::VariantArg::Auto => nftproxy_iptables::Variant::installed_ones().collect(),
                chosen => vec![chosen.resolve().variant],
            };
            for v in variants {
                for fam in [IpFamily::V4, IpFamily::V6] {
                    nftproxy_iptables::cleanup(v, fam)?;
                }
            }
            Ok(())
        }
        Command::Inspect { from, node, output } => {
            let loaded = load(&from)?;
            let ctx = node.context(&loaded.state, false)?;
            let ports: Vec<_> =
                [IpFamily::V4, IpFamily::V6].into_iter().flat_map(|f| resolve(&loaded.state, &ctx, f)).collect();
            match output {
                Output::Table => print!("{}", inspect::table(&ports)),
                Output::Json => {
                    let warnings: Vec<String> = loaded.warnings.iter().map(|w| w.to_string()).collect();
                    let doc = serde_json::json!({ "node": ctx, "servicePorts": ports, "warnings": warnings });
                    println!("{}", serde_json::to_string_pretty(&doc)?);
                }
            }
            Ok(())
        }
    }
}

/// At most two glibc malloc arenas. By default glibc gives each thread that allocates under
/// contention an arena of its own (up to 8 per core), and each keeps its freed memory: the
/// daemon's tokio workers, the threads `block_in_place` hands work to and the address monitor
/// then hold memory they no longer use. Measured in the churn soak (10 min, `make soak`): RSS
/// stepped from 15.4 to 18.1 MiB with the default.
fn limit_malloc_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only tunes the allocator; called before any other thread exists.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
}

fn main() -> ExitCode {
    limit_malloc_arenas();
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("kube-nftproxy: {e:#}");
            ExitCode::FAILURE
        }
    }
}
