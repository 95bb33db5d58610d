//! kube-nftproxy as a long-running proxy (`kube-nftproxy run`): kube-proxy's configuration,
//! change tracking, its bounded-frequency sync loop with drift repair, and its metrics and health
//! endpoints. The data planes live in `nftproxy-nftables` and `nftproxy-iptables`, the inputs in
//! `nftproxy-kube` and `nftproxy-manifest`.

pub mod backend;
pub mod config;
pub mod daemon;
pub mod health;
pub mod heap;
pub mod manifests;
pub mod metrics;
pub mod migrate;
pub mod runner;
pub mod stats;
pub mod sysctls;
pub mod tracker;
pub mod validation;

pub use config::{KubeProxyConfiguration, ProxyMode, Settings};
pub use daemon::{DaemonError, Proxy, Source, run};

#[cfg(test)]
mod daemon_tests;
