//! The iptables compatibility backend: the one service model rendered exactly as kube-proxy's
//! iptables mode renders it ([`render`]), and applied with `iptables-restore` of the variant the
//! node uses, legacy or nft, detected as kube-proxy's image detects it ([`variant`], [`sync`],
//! [`cleanup`]). Used for parity tests against the nftables backend and as a benchmark baseline.

mod apply;
pub mod leftovers;
mod render;
pub mod variant;

pub use apply::{IptablesError, cleanup, sync, with_stale_chains_deleted};
pub use variant::{Detection, Variant, detect};
pub use render::{
    LARGE_CLUSTER_ENDPOINTS, Options, endpoint_chain, hash16, probability, render, render_cluster, service_chain,
};

#[cfg(test)]
mod tests;
