//! kube-nftproxy: a kube-proxy replacement that programs nftables over netlink.

mod inspect;
mod node_args;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand, ValueEnum};
use nftproxy_manifest::{Loaded, load_path};
use nftproxy_model::{IpFamily, resolve};

use node_args::NodeArgs;

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

#[derive(Subcommand, Debug)]
enum Command {
    /// Show, for every service port, its frontends and the endpoints kube-proxy's rules choose on
    /// this node (cluster-wide and node-local).
    Inspect {
        /// A manifest file or directory (YAML or JSON; `kubectl get services,endpointslices,nodes -A -o yaml`).
        #[arg(long, value_name = "PATH")]
        from: PathBuf,
        #[command(flatten)]
        node: NodeArgs,
        #[arg(long, value_enum, default_value = "table")]
        output: Output,
    },
}

/// Loads manifests and reports every warning on stderr: bad objects never stop the rest.
fn load(from: &PathBuf) -> Result<Loaded> {
    let loaded = load_path(from).with_context(|| format!("--from {}", from.display()))?;
    for w in &loaded.warnings {
        eprintln!("warning: {w}");
    }
    Ok(loaded)
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Inspect { from, node, output } => {
            let loaded = load(&from)?;
            let ctx = node.context(&loaded.state)?;
            let ports: Vec<_> = [IpFamily::V4, IpFamily::V6]
                .into_iter()
                .flat_map(|f| resolve(&loaded.state, &ctx, f))
                .collect();
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

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("kube-nftproxy: {e:#}");
            ExitCode::FAILURE
        }
    }
}
