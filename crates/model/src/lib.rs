//! The one service model of kube-nftproxy.
//!
//! Inputs (the Kubernetes API, manifests) are converted into [`Service`], [`EndpointSlice`] and
//! [`Node`] values and collected in a [`ClusterState`]. [`resolve`] applies kube-proxy's endpoint
//! rules (readiness, terminating fallback, topology hints, traffic policies) for one node and one
//! IP family and yields a [`ResolvedServicePort`] per service port: everything a backend needs to
//! program the data plane. This crate does no I/O.

#[cfg(any(test, feature = "proptest-support"))]
pub mod arbitrary;
mod cluster;
mod event;
mod resolve;
mod types;

pub use cluster::{ClusterState, compact_map};
pub use event::{ListedKind, SourceEvent};
pub use resolve::{
    EndpointChoice, Frontend, FrontendKind, ResolvedEndpoint, ResolvedServicePort, resolve, resolve_service,
};
pub use types::*;

#[cfg(test)]
mod props;
