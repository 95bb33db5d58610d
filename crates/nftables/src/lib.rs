//! kube-nftproxy's nftables backend.
//!
//! [`build`] turns resolved service ports into a [`Ruleset`] (pure); [`plan`] turns rulesets
//! into batches (pure); [`NftablesBackend`] sends them over netlink and remembers what it
//! programmed. The ruleset keeps services as map data: see `build.rs` for the shape and why.

pub mod addrs;
mod build;
pub mod conntrack;
pub mod drift;
pub mod fake;
mod family;
mod names;
pub mod netfilter;
pub mod netlink;
pub mod plan;
mod rules;
pub mod ruleset;
mod schema;
#[rustfmt::skip]
mod schema_udata;
mod sync;
pub mod table;
pub mod trace;

pub use build::{build, fixed_table, fragment, fragments, fragments_of_state};
pub use family::Family;
pub use netfilter::Netfilter;
pub use ruleset::{Ruleset, TABLE};
pub use sync::{NftablesBackend, SyncError, SyncReport};

use nftproxy_model::{ClusterState, IpFamily, NodeContext, resolve};

/// Both families' desired tables for a cluster state on one node.
pub fn desired(state: &ClusterState, ctx: &NodeContext) -> Vec<Ruleset> {
    [IpFamily::V4, IpFamily::V6].into_iter().map(|fam| build(Family(fam), &resolve(state, ctx, fam), ctx)).collect()
}

#[cfg(test)]
mod prop_tests;
#[cfg(test)]
mod sync_tests;
#[cfg(test)]
mod tests;
