//! Applying the restore text with the node's iptables (legacy or nft, see [`crate::variant`]), the
//! way kube-proxy does: jump rules from the
//! built-in chains ensured one by one (they cannot be part of a `--noflush` restore without
//! duplicating), then one `iptables-restore --noflush --counters` that rewrites our chains and
//! deletes stale service chains. Cleanup removes our jumps and our chains, nothing else.

use std::collections::BTreeSet;
use std::io::Write;
use std::process::{Command, Stdio};

use nftproxy_model::IpFamily;

use crate::variant::Variant;

#[derive(Debug, thiserror::Error)]
pub enum IptablesError {
    #[error("{cmd}: {source}")]
    Spawn { cmd: String, source: std::io::Error },
    #[error("{cmd} failed: {stderr}")]
    Failed { cmd: String, stderr: String },
}

pub(crate) fn run(program: &str, args: &[&str], stdin: Option<&str>) -> Result<String, IptablesError> {
    let cmd = format!("{program} {}", args.join(" "));
    let mut child = Command::new(program)
        .args(args)
        .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| IptablesError::Spawn { cmd: cmd.clone(), source })?;
    if let Some(input) = stdin {
        child
            .stdin
            .take()
            .expect("piped")
            .write_all(input.as_bytes())
            .map_err(|source| IptablesError::Spawn { cmd: cmd.clone(), source })?;
    }
    let out = child.wait_with_output().map_err(|source| IptablesError::Spawn { cmd: cmd.clone(), source })?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(IptablesError::Failed { cmd, stderr: String::from_utf8_lossy(&out.stderr).trim().to_string() })
    }
}

/// A jump from a built-in chain into ours (kube-proxy's `iptablesJumpChains`, in its order).
struct Jump {
    table: &'static str,
    from: &'static str,
    to: &'static str,
    comment: Option<&'static str>,
    new_only: bool,
}

const fn j(
    table: &'static str,
    from: &'static str,
    to: &'static str,
    comment: Option<&'static str>,
    new_only: bool,
) -> Jump {
    Jump { table, from, to, comment, new_only }
}

const JUMPS: &[Jump] = &[
    j("filter", "INPUT", "KUBE-EXTERNAL-SERVICES", Some("kubernetes externally-visible service portals"), true),
    j("filter", "FORWARD", "KUBE-EXTERNAL-SERVICES", Some("kubernetes externally-visible service portals"), true),
    j("filter", "INPUT", "KUBE-NODEPORTS", Some("kubernetes health check service ports"), false),
    j("filter", "FORWARD", "KUBE-SERVICES", Some("kubernetes service portals"), true),
    j("filter", "OUTPUT", "KUBE-SERVICES", Some("kubernetes service portals"), true),
    j("filter", "FORWARD", "KUBE-FORWARD", Some("kubernetes forwarding rules"), false),
    j("filter", "INPUT", "KUBE-PROXY-FIREWALL", Some("kubernetes load balancer firewall"), true),
    j("filter", "OUTPUT", "KUBE-PROXY-FIREWALL", Some("kubernetes load balancer firewall"), true),
    j("filter", "FORWARD", "KUBE-PROXY-FIREWALL", Some("kubernetes load balancer firewall"), true),
    j("nat", "OUTPUT", "KUBE-SERVICES", Some("kubernetes service portals"), false),
    j("nat", "PREROUTING", "KUBE-SERVICES", Some("kubernetes service portals"), false),
    j("nat", "POSTROUTING", "KUBE-POSTROUTING", Some("kubernetes postrouting rules"), false),
];

/// kubelet's jumps to KUBE-FIREWALL, which kube-proxy also ensures (IPv4, localhost NodePorts).
const KUBELET_JUMPS: &[Jump] =
    &[j("filter", "INPUT", "KUBE-FIREWALL", None, false), j("filter", "OUTPUT", "KUBE-FIREWALL", None, false)];

impl Jump {
    fn args(&self) -> Vec<&'static str> {
        let mut a = Vec::new();
        if self.new_only {
            a.extend(["-m", "conntrack", "--ctstate", "NEW"]);
        }
        if let Some(c) = self.comment {
            a.extend(["-m", "comment", "--comment", c]);
        }
        a.extend(["-j", self.to]);
        a
    }
}

/// Chains that are ours to delete: kube-proxy's fixed chains and its per-service prefixes.
const FIXED_CHAINS: &[(&str, &str)] = &[
    ("filter", "KUBE-SERVICES"),
    ("filter", "KUBE-EXTERNAL-SERVICES"),
    ("filter", "KUBE-FORWARD"),
    ("filter", "KUBE-NODEPORTS"),
    ("filter", "KUBE-PROXY-FIREWALL"),
    ("filter", "KUBE-FIREWALL"),
    ("nat", "KUBE-SERVICES"),
    ("nat", "KUBE-NODEPORTS"),
    ("nat", "KUBE-POSTROUTING"),
    ("nat", "KUBE-MARK-MASQ"),
];
pub(crate) const SERVICE_PREFIXES: &[&str] = &["KUBE-SVC-", "KUBE-SVL-", "KUBE-EXT-", "KUBE-FW-", "KUBE-SEP-"];

/// Chain names declared in a table of `iptables-save` (or restore) text.
fn chains(text: &str, table: &str) -> BTreeSet<String> {
    let mut in_table = false;
    let mut out = BTreeSet::new();
    for line in text.lines() {
        if let Some(t) = line.strip_prefix('*') {
            in_table = t == table;
        } else if in_table && let Some(rest) = line.strip_prefix(':') {
            out.insert(rest.split_whitespace().next().unwrap_or("").to_string());
        }
    }
    out
}

/// The restore text plus the deletion of stale service chains (as kube-proxy's sync does).
pub fn with_stale_chains_deleted(text: &str, existing_nat: &str) -> String {
    let want = chains(text, "nat");
    let stale: Vec<String> = chains(existing_nat, "nat")
        .into_iter()
        .filter(|c| SERVICE_PREFIXES.iter().any(|p| c.starts_with(p)) && !want.contains(c))
        .collect();
    if stale.is_empty() {
        return text.to_string();
    }
    let (before, after) = text.split_at(text.rfind("COMMIT\n").expect("nat COMMIT"));
    let nat_start = before.find("*nat\n").expect("*nat") + "*nat\n".len();
    let mut out = String::with_capacity(text.len() + stale.len() * 40);
    out.push_str(&before[..nat_start]);
    for c in &stale {
        out.push_str(&format!(":{c} - [0:0]\n"));
    }
    out.push_str(&before[nat_start..]);
    for c in &stale {
        out.push_str(&format!("-X {c}\n"));
    }
    out.push_str(after);
    out
}

/// Programs the current network namespace with one iptables variant: jumps, then one restore.
pub fn sync(variant: Variant, family: IpFamily, text: &str, localhost_nodeports: bool) -> Result<(), IptablesError> {
    let ipt = variant.name(family);
    let kubelet: &[Jump] = if family == IpFamily::V4 && localhost_nodeports { KUBELET_JUMPS } else { &[] };
    for jump in JUMPS.iter().chain(kubelet) {
        // EnsureChain, then EnsureRule(Prepend).
        let _ = run(&ipt, &["-w", "-t", jump.table, "-N", jump.to], None);
        let args = jump.args();
        let mut check = vec!["-w", "-t", jump.table, "-C", jump.from];
        check.extend(&args);
        if run(&ipt, &check, None).is_err() {
            let mut insert = vec!["-w", "-t", jump.table, "-I", jump.from];
            insert.extend(&args);
            run(&ipt, &insert, None)?;
        }
    }
    let existing = run(&variant.tool(family, "save"), &["-t", "nat"], None)?;
    let full = with_stale_chains_deleted(text, &existing);
    run(&variant.tool(family, "restore"), &["-w", "--noflush", "--counters"], Some(&full))?;
    Ok(())
}

/// Removes our jump rules and our chains from one iptables variant of the current network
/// namespace.
pub fn cleanup(variant: Variant, family: IpFamily) -> Result<(), IptablesError> {
    let ipt = variant.name(family);
    for jump in JUMPS.iter().chain(KUBELET_JUMPS) {
        let mut del = vec!["-w", "-t", jump.table, "-D", jump.from];
        let args = jump.args();
        del.extend(&args);
        while run(&ipt, &del, None).is_ok() {}
    }
    for table in ["filter", "nat"] {
        let existing = chains(&run(&variant.tool(family, "save"), &["-t", table], None)?, table);
        let ours: Vec<&String> = existing
            .iter()
            .filter(|c| {
                FIXED_CHAINS.iter().any(|(t, n)| *t == table && n == c)
                    || SERVICE_PREFIXES.iter().any(|p| c.starts_with(p))
            })
            .collect();
        // Flush all first: our chains jump to each other.
        for c in &ours {
            run(&ipt, &["-w", "-t", table, "-F", c], None)?;
        }
        for c in &ours {
            run(&ipt, &["-w", "-t", table, "-X", c], None)?;
        }
    }
    Ok(())
}
