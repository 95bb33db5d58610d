//! The sync engine: desired rulesets in, the least work for the kernel out. It remembers what it
//! programmed last, so an incremental sync is a diff; after any failure it forgets, so the next
//! sync replaces the whole table.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use nftproxy_model::{ClusterState, IpFamily, NodeContext, resolve};

use crate::build::build;
use crate::conntrack::UdpEndpoints;
use crate::family::Family;
use crate::netlink::{CommitStats, NetlinkError, NftSocket};
use crate::plan;
use crate::ruleset::{Ruleset, TABLE};

/// Elements per transaction in a cold start (see [`plan::cold_start`]).
pub const COLD_START_MAX_ELEMENTS: usize = 20_000;

/// What one sync did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SyncReport {
    /// Families that were replaced or created whole rather than diffed.
    pub full: Vec<Family>,
    pub transactions: usize,
    pub messages: usize,
    pub bytes: usize,
    /// The longest single transaction, send to ack.
    pub longest_transaction: Duration,
    /// UDP conntrack entries deleted because their endpoint went away.
    pub conntrack_deleted: usize,
}

impl SyncReport {
    fn add(&mut self, stats: CommitStats, took: Duration) {
        if stats.messages > 0 {
            self.transactions += 1;
        }
        self.messages += stats.messages;
        self.bytes += stats.bytes;
        self.longest_transaction = self.longest_transaction.max(took);
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error("{family:?} table: {source}")]
    Netlink {
        family: Family,
        source: NetlinkError,
    },
    #[error("conntrack cleanup: {0}")]
    Conntrack(std::io::Error),
}

pub struct NftablesBackend {
    sock: NftSocket,
    programmed: BTreeMap<Family, Ruleset>,
    udp: Option<UdpEndpoints>,
    seq: u32,
    pub cold_start_max_elements: usize,
}

impl NftablesBackend {
    /// Opens the netlink socket in the current network namespace.
    pub fn new() -> std::io::Result<NftablesBackend> {
        Ok(NftablesBackend {
            sock: NftSocket::open()?,
            programmed: BTreeMap::new(),
            udp: None,
            seq: 1,
            cold_start_max_elements: COLD_START_MAX_ELEMENTS,
        })
    }

    /// The next sync replaces every table whole (kube-proxy's "full sync").
    pub fn force_full_sync(&mut self) {
        self.programmed.clear();
    }

    /// What we last programmed, per family.
    pub fn programmed(&self) -> &BTreeMap<Family, Ruleset> {
        &self.programmed
    }

    fn commit(
        &mut self,
        family: Family,
        batch: nftproxy_nft_wire::Batch,
        report: &mut SyncReport,
    ) -> Result<(), SyncError> {
        let finished = batch.finish();
        self.seq = self.seq.wrapping_add(finished.msgs.len() as u32 + 2);
        let start = Instant::now();
        match self.sock.commit(&finished) {
            Ok(stats) => {
                report.add(stats, start.elapsed());
                Ok(())
            }
            Err(source) => {
                // Whatever the kernel holds now, we no longer know it: the next sync is full.
                self.programmed.remove(&family);
                Err(SyncError::Netlink { family, source })
            }
        }
    }

    /// Brings every family's table to its desired state.
    pub fn sync(&mut self, desired: Vec<Ruleset>) -> Result<SyncReport, SyncError> {
        let mut report = SyncReport::default();
        for want in desired {
            let family = want.family;
            match self.programmed.get(&family) {
                Some(prev) => {
                    let batch = plan::incremental(prev, &want, self.seq);
                    if !batch.is_empty() {
                        self.commit(family, batch, &mut report)?;
                    }
                }
                None => {
                    report.full.push(family);
                    let exists = self
                        .sock
                        .table_exists(family.nfproto(), TABLE)
                        .map_err(|e| SyncError::Netlink {
                            family,
                            source: e.into(),
                        })?;
                    if exists {
                        // Adopt by replacing, atomically: no window without rules.
                        let batch = plan::replace(&want, self.seq);
                        self.commit(family, batch, &mut report)?;
                    } else {
                        for batch in plan::cold_start(&want, self.seq, self.cold_start_max_elements)
                        {
                            self.commit(family, batch, &mut report)?;
                        }
                    }
                }
            }
            self.programmed.insert(family, want);
        }
        Ok(report)
    }

    /// Resolves the cluster for this node, syncs both families, then deletes UDP conntrack
    /// entries that lead to endpoints that went away (only when some did). The one call a
    /// proxy loop makes.
    pub fn sync_cluster(
        &mut self,
        state: &ClusterState,
        ctx: &NodeContext,
    ) -> Result<SyncReport, SyncError> {
        let ports: Vec<_> = [IpFamily::V4, IpFamily::V6]
            .into_iter()
            .flat_map(|f| resolve(state, ctx, f))
            .collect();
        let desired = [Family::V4, Family::V6]
            .into_iter()
            .map(|f| {
                build(
                    f,
                    &ports
                        .iter()
                        .filter(|p| p.family == f.0)
                        .cloned()
                        .collect::<Vec<_>>(),
                    ctx,
                )
            })
            .collect();
        let mut report = self.sync(desired)?;
        let now = UdpEndpoints::new(&ports, ctx);
        if self
            .udp
            .as_ref()
            .is_some_and(|before| before.lost_endpoints(&now))
        {
            report.conntrack_deleted = self.clean_conntrack(&now).map_err(SyncError::Conntrack)?;
        }
        self.udp = Some(now);
        Ok(report)
    }

    fn clean_conntrack(&mut self, udp: &UdpEndpoints) -> std::io::Result<usize> {
        let mut deleted = 0;
        for family in [Family::V4, Family::V6] {
            for e in self.sock.conntrack_dump(family.nfproto())? {
                if udp.is_stale(&e) {
                    self.sock.conntrack_delete(&e)?;
                    deleted += 1;
                }
            }
        }
        Ok(deleted)
    }

    /// Deletes our tables, and nothing else. Missing tables are fine.
    pub fn cleanup(&mut self) -> Result<(), SyncError> {
        for family in [Family::V4, Family::V6] {
            self.programmed.remove(&family);
            let exists = self
                .sock
                .table_exists(family.nfproto(), TABLE)
                .map_err(|e| SyncError::Netlink {
                    family,
                    source: e.into(),
                })?;
            if exists {
                let mut report = SyncReport::default();
                self.commit(family, plan::delete(family, self.seq), &mut report)?;
            }
        }
        Ok(())
    }
}
