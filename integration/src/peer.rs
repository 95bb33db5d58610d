//! The real kube-proxy (v1.34.4, built by `integration/peers/build-peers.sh`) as a node proxy in a
//! test node namespace, the judge of what kube-nftproxy must do.
//!
//! What it needs there (facts from `../shared/reference/real-kube-proxy-notes.md`, set here, not
//! by hand): the conntrack sysctls it cannot write in a non-initial network namespace are turned
//! off (`--conntrack-max-per-core=0`, both TCP timeouts 0); the `nft` binary (nftables mode) and
//! `iptables`/`iptables-nft` (iptables mode) come from the Debian packages `make deps` installs;
//! `--iptables-min-sync-period=0s` removes its 1 s minimum sync period in both modes.

use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use crate::Ns;

/// kube-proxy's proxy modes we compare with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Nftables,
    Iptables,
}

impl Mode {
    pub fn flag(self) -> &'static str {
        match self {
            Mode::Nftables => "nftables",
            Mode::Iptables => "iptables",
        }
    }
}

/// The kube-proxy command line for a test node: its mode, node and cluster CIDRs, what it needs
/// inside a network namespace, no minimum sync period, metrics and health on loopback.
pub fn command(
    peers: &Path,
    node: &Ns,
    kubeconfig: &Path,
    mode: Mode,
    node_name: &str,
    cluster_cidrs: &str,
) -> std::process::Command {
    let mut c = node.command(peers.join("kube-proxy").to_str().unwrap());
    c.arg(format!("--kubeconfig={}", kubeconfig.display()))
        .arg(format!("--proxy-mode={}", mode.flag()))
        .arg(format!("--hostname-override={node_name}"))
        .arg(format!("--cluster-cidr={cluster_cidrs}"))
        .args(["--conntrack-max-per-core=0", "--conntrack-tcp-timeout-established=0s"])
        .args(["--conntrack-tcp-timeout-close-wait=0s", "--iptables-min-sync-period=0s"])
        .args(["--metrics-bind-address=127.0.0.1:10249", "--healthz-bind-address=127.0.0.1:10256"]);
    c
}

/// A running kube-proxy; killed (and reaped) on drop.
pub struct KubeProxy {
    child: Option<Child>,
    pub log: PathBuf,
    pub ns: Ns,
}

impl KubeProxy {
    /// Starts kube-proxy from its command line ([`command`]) in `node`, logging to `log`.
    pub fn start(mut cmd: std::process::Command, node: &Ns, log: PathBuf) -> KubeProxy {
        let file = std::fs::File::create(&log).unwrap();
        let child =
            cmd.stdin(Stdio::null()).stdout(file.try_clone().unwrap()).stderr(file).spawn().expect("spawn kube-proxy");
        KubeProxy { child: Some(child), log, ns: node.clone() }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Whether it is still running (a crash shows its log tail in the panic).
    pub fn assert_running(&mut self) {
        if let Some(c) = self.child.as_mut()
            && let Ok(Some(status)) = c.try_wait()
        {
            let log = self.log_text();
            let tail: Vec<&str> = log.lines().rev().take(40).collect::<Vec<_>>().into_iter().rev().collect();
            panic!("kube-proxy exited with {status}; log tail:\n{}", tail.join("\n"));
        }
    }

    /// Waits until its log reports `n` completed syncs (`SyncProxyRules complete`), or panics
    /// with the log tail after `limit`.
    pub fn wait_syncs(&mut self, n: usize, limit: Duration) {
        let start = Instant::now();
        while start.elapsed() < limit {
            self.assert_running();
            if self.log_text().matches("SyncProxyRules complete").count() >= n {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("kube-proxy did not complete {n} sync(s) in {limit:?}; log:\n{}", self.log_text());
    }
}

impl Drop for KubeProxy {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
