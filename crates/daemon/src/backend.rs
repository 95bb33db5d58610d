//! The two data planes behind one interface: nftables over netlink (incremental, with drift
//! checks) and kube-proxy's iptables rules (full restore per sync) in the iptables variant the
//! node uses, legacy or nft, detected once at start as kube-proxy's image detects it.

use std::collections::BTreeSet;
use std::time::Duration;

use nftproxy_model::{ClusterState, IpFamily, NodeContext, ServiceName};
use nftproxy_nftables::netlink::NftSocket;
use nftproxy_nftables::{Netfilter, NftablesBackend, SyncReport};

use crate::config::{ProxyMode, Settings};

/// Generic over the netfilter it programs (nftables) or cleans conntrack through (iptables): the
/// kernel's socket, or the in-memory fake in unit tests.
pub enum Backend<N: Netfilter = NftSocket> {
    Nftables(Box<NftablesBackend<N>>),
    Iptables(IptablesBackend<N>),
}

/// kube-proxy's iptables mode: full restores, and the UDP conntrack reconciler over a netfilter
/// socket of its own.
pub struct IptablesBackend<N: Netfilter = NftSocket> {
    variant: nftproxy_iptables::Variant,
    opts: nftproxy_iptables::Options,
    conntrack: N,
    udp_services: nftproxy_nftables::conntrack::UdpServices,
}

/// What one successful sync did.
#[derive(Clone, Debug, Default)]
pub struct Synced {
    pub full: bool,
    pub messages: usize,
    pub longest_transaction: Duration,
    pub conntrack_deleted: usize,
    /// The UDP conntrack cleanup failed (the rules are in place; the next sync retries it).
    pub conntrack_error: Option<String>,
}

/// A sync that failed, naming the family whose rules were refused.
#[derive(Debug, thiserror::Error)]
#[error("{family} sync failed: {message}")]
pub struct BackendError {
    pub family: IpFamily,
    pub message: String,
}

impl Backend<NftSocket> {
    /// The backend `settings` ask for, over a netlink socket in this network namespace.
    pub fn new(settings: &Settings) -> std::io::Result<Backend> {
        Ok(Backend::over(settings, NftSocket::open()?))
    }
}

impl<N: Netfilter> Backend<N> {
    /// The backend `settings` ask for, over `netfilter`.
    pub fn over(settings: &Settings, netfilter: N) -> Backend<N> {
        match settings.mode {
            ProxyMode::Nftables => Backend::Nftables(Box::new(NftablesBackend::over(netfilter))),
            ProxyMode::Iptables => Backend::Iptables(IptablesBackend {
                variant: {
                    let d = nftproxy_iptables::detect();
                    tracing::info!("iptables mode uses iptables-{}: {}", d.variant, d.reason);
                    d.variant
                },
                opts: settings.iptables_options(),
                conntrack: netfilter,
                udp_services: Default::default(),
            }),
        }
    }

    /// Programs the state: only `changed` Services unless `full`.
    pub fn sync(
        &mut self,
        state: &ClusterState,
        ctx: &NodeContext,
        changed: &BTreeSet<ServiceName>,
        full: bool,
    ) -> Result<Synced, BackendError> {
        match self {
            Backend::Nftables(b) => {
                if full {
                    b.force_full_sync();
                }
                let report: SyncReport = b.sync_services(state, ctx, changed).map_err(|e| BackendError {
                    family: match &e {
                        nftproxy_nftables::SyncError::Netlink { family, .. } => family.0,
                    },
                    message: e.to_string(),
                })?;
                Ok(Synced {
                    full: !report.full.is_empty(),
                    messages: report.messages,
                    longest_transaction: report.longest_transaction,
                    conntrack_deleted: report.conntrack_deleted,
                    conntrack_error: report.conntrack_error,
                })
            }
            Backend::Iptables(b) => {
                for fam in [IpFamily::V4, IpFamily::V6] {
                    let text = nftproxy_iptables::render_cluster(fam, state, ctx, &b.opts);
                    nftproxy_iptables::sync(b.variant, fam, &text, b.opts.localhost_nodeports)
                        .map_err(|e| BackendError { family: fam, message: e.to_string() })?;
                }
                // kube-proxy's iptables proxier runs the same reconciler after a sync that
                // touched a UDP Service (every Service on a full sync).
                let mut done = Synced { full: true, ..Default::default() };
                if b.udp_services.synced(state, (!full).then_some(changed)) {
                    let cleanup = nftproxy_nftables::conntrack::reconcile(&mut b.conntrack, state);
                    if cleanup.error.is_some() {
                        b.udp_services.failed();
                    }
                    (done.conntrack_deleted, done.conntrack_error) = (cleanup.deleted, cleanup.error);
                }
                Ok(done)
            }
        }
    }

    /// What this backend programs (what the take-over of a node must leave in place).
    pub fn programs(&self) -> crate::migrate::Ours {
        match self {
            Backend::Nftables(_) => crate::migrate::Ours::Nftables,
            Backend::Iptables(b) => crate::migrate::Ours::Iptables(b.variant),
        }
    }

    /// Whether an element audit of large sets is under way (nftables; see `audit_step`).
    pub fn audit_pending(&self) -> bool {
        match self {
            Backend::Nftables(b) => b.audit_pending(),
            Backend::Iptables(_) => false,
        }
    }

    /// One short step of the element audit (nftables): a difference found, or None.
    pub fn audit_step(&mut self) -> Result<Option<String>, String> {
        match self {
            Backend::Nftables(b) => b.audit_step().map_err(|e| e.to_string()),
            Backend::Iptables(_) => Ok(None),
        }
    }

    /// Drift check (nftables). The iptables backend restores every chain on every sync, which
    /// repairs drift at the next periodic sync.
    pub fn verify(&mut self, deep: bool) -> Result<Option<String>, String> {
        match self {
            Backend::Nftables(b) => b.verify(deep).map_err(|e| e.to_string()),
            Backend::Iptables(_) => Ok(None),
        }
    }
}

/// kube-proxy's `--cleanup`: removes what either mode of ours programmed and what kube-proxy
/// left in the node (its nftables tables, its iptables chains in both iptables), nothing else.
/// Returns what kube-proxy had left.
pub fn cleanup_all() -> Result<Vec<String>, String> {
    let mut errors = Vec::new();
    match NftablesBackend::new() {
        Ok(mut b) => {
            if let Err(e) = b.cleanup() {
                errors.push(e.to_string());
            }
        }
        Err(e) => errors.push(format!("netlink: {e}")),
    }
    // Our iptables mode's, in whichever variant it ran (an uninstalled one can hold none).
    for variant in nftproxy_iptables::Variant::installed_ones() {
        for fam in [IpFamily::V4, IpFamily::V6] {
            if let Err(e) = nftproxy_iptables::cleanup(variant, fam) {
                errors.push(e.to_string());
            }
        }
    }
    // kube-proxy's: what our nftables mode removes when it takes over, which is everything.
    let m = crate::migrate::remove_leftovers(crate::migrate::Ours::Nftables);
    errors.extend(m.errors);
    if errors.is_empty() { Ok(m.removed) } else { Err(errors.join("; ")) }
}
