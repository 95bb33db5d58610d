//! The seam between the sync engine and the kernel: everything [`crate::NftablesBackend`] (and
//! the daemon's proxy above it) asks of netfilter, as one trait. The netlink socket
//! ([`NftSocket`]) implements it against the kernel; [`crate::fake::FakeNetfilter`] against an
//! in-memory ruleset that enforces what the kernel enforces, so that the engine's decisions —
//! partial or full sync, what a failure does, drift, conntrack cleanup — are unit-tested without
//! root. The kernel stays the judge: a kernel test replays the same batches on both and compares
//! what each accepted and holds (`integration/tests/fake_netfilter.rs`).

use std::io;

use nftproxy_nft_wire::consts::*;
use nftproxy_nft_wire::{Elem, FinishedBatch};

use crate::conntrack::ConntrackTable;
use crate::drift::Observed;
use crate::family::Family;
use crate::netlink::{CommitStats, NetlinkError, NftSocket};

/// What the sync engine needs from netfilter. Reads answer for one network namespace (the one
/// the implementation was opened in). `Send`: a cold start commits on a second thread.
pub trait Netfilter: ConntrackTable + Send {
    /// Commits one batch atomically: every message or none. A refusal names the messages the
    /// kernel refused, with their errno.
    fn commit(&mut self, batch: &FinishedBatch) -> Result<CommitStats, NetlinkError>;

    /// The ruleset generation: one more on every committed transaction, whoever sent it.
    fn generation(&mut self) -> io::Result<u32>;

    /// Whether table `name` of `family` exists.
    fn table_exists(&mut self, family: Family, name: &str) -> io::Result<bool>;

    /// Our table of `family` reduced to what the drift check compares (chains with their rule
    /// counts, sets with element counts for the sets `count` names and that packets do not fill);
    /// None when the table does not exist.
    fn observe(&mut self, family: Family, count: &dyn Fn(&str) -> bool) -> io::Result<Option<Observed>>;

    /// The elements of set `set` of our table with these keys, in order, with their data (the
    /// kernel's answer to NFT_MSG_GETSETELEM by key). A key the set does not hold, or a set that
    /// does not exist, is ENOENT.
    fn elements_by_key(&mut self, family: Family, set: &str, keys: &[&[u8]]) -> io::Result<Vec<Elem>>;
}

impl Netfilter for NftSocket {
    fn commit(&mut self, batch: &FinishedBatch) -> Result<CommitStats, NetlinkError> {
        NftSocket::commit(self, batch)
    }

    fn generation(&mut self) -> io::Result<u32> {
        NftSocket::generation(self)
    }

    fn table_exists(&mut self, family: Family, name: &str) -> io::Result<bool> {
        NftSocket::table_exists(self, family.nfproto(), name)
    }

    fn observe(&mut self, family: Family, count: &dyn Fn(&str) -> bool) -> io::Result<Option<Observed>> {
        crate::drift::observe(self, family.nfproto(), count)
    }

    fn elements_by_key(&mut self, family: Family, set: &str, keys: &[&[u8]]) -> io::Result<Vec<Elem>> {
        let request = nftproxy_nft_wire::get_elems_request(crate::TABLE, set, keys);
        let answers = self.get(NFT_MSG_GETSETELEM, family.nfproto(), &request)?;
        Ok(answers
            .iter()
            .flat_map(|a| crate::drift::answered_elements(a))
            .map(|a| Elem { key: a.key, data: a.data, timeout_ms: None, comment: None })
            .collect())
    }
}
