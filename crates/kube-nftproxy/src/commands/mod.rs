//! The subcommands of `kube-nftproxy`, one module each (`render`, `sync` and `cleanup` are short
//! enough to stay in `main.rs`): `run` (the daemon, with kube-proxy's flags), `explain`/`trace`,
//! `inspect`.

pub mod debug;
pub mod inspect;
pub mod kube_proxy_flags;
pub mod run;
