//! The sync engine: desired state in, the least work for the kernel out. It remembers what it
//! programmed (as per-Service fragments, see [`crate::table`]), so a sync of changed Services
//! costs what they cost; after any failure it forgets, so the next sync rebuilds and replaces.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use nftproxy_model::{ClusterState, NodeContext, ResolvedServicePort, ServiceName, resolve_service};

use crate::build::{fixed_table, fragment, fragments_of_state};
use crate::drift;
use crate::family::Family;
use crate::netfilter::Netfilter;
use crate::netlink::{CommitStats, NetlinkError, NftSocket};
use crate::plan;
use crate::ruleset::{Ruleset, TABLE};
use crate::table::{Delta, Grown, Growth, Table};
use nftproxy_nft_wire::consts::NFT_SET_INTERVAL;

/// Elements per transaction in a cold start (see [`NftablesBackend::cold_start`]). With the
/// kernel taking in one step while the next is built, 5,000 kept every transaction of
/// `sync --from` 50k Services × 10 at 12–28 ms, where 10,000 gave 26–32 ms (and, built and
/// sent in turn, 20,000 ~50 ms). But on these two shared CPUs a transaction now and then takes
/// 25 ms more than its size explains (a kworker resizing a growing set's hash table runs
/// beside it; `make bench` once saw 42 ms at 5,000). 3,000 leaves that room: 10 interleaved
/// runs of the bench's 50k × 10 cold sync (`nftproxy-bench --services "" --dataplane ""
/// --runs 1 --ours 50000x10`) gave a longest transaction of 10–32 ms (median 13) against
/// 16–43 ms (median 19) at 5,000, and the whole sync took as long (medians 1.97 s and 1.99 s).
pub const COLD_START_MAX_ELEMENTS: usize = 3_000;
const FAMILIES: [Family; 2] = [Family::V4, Family::V6];

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
    /// UDP conntrack entries deleted because they led to no serving endpoint (kube-proxy's
    /// reconciler; it runs after a sync that touched a UDP Service).
    pub conntrack_deleted: usize,
    /// The reconciler's first error, if it failed (the sync itself succeeded; the next sync
    /// retries the cleanup).
    pub conntrack_error: Option<String>,
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
    #[error("table {} {TABLE}: {source}", family.word())]
    Netlink { family: Family, source: NetlinkError },
}

/// The sync engine over a [`Netfilter`]: the kernel's netlink socket in production, the
/// in-memory [`crate::fake::FakeNetfilter`] in unit tests.
pub struct NftablesBackend<N: Netfilter = NftSocket> {
    netfilter: N,
    programmed: BTreeMap<Family, Table>,
    /// The node context the programmed tables were built for; partial syncs need the same.
    built_for: Option<NodeContext>,
    /// The Services with a UDP port as last programmed (for kube-proxy's
    /// `ConntrackCleanupRequired`: a changed Service had a UDP port before or has one now).
    udp_services: crate::conntrack::UdpServices,
    seq: u32,
    pub cold_start_max_elements: usize,
    /// What we last found intact, while we know that nobody else committed since (see
    /// [`NftablesBackend::verify`]).
    seen: Option<Seen>,
    /// Per large set, the last key its element audit looked at (see [`crate::drift`]).
    audit_cursors: BTreeMap<(Family, String), crate::ruleset::Key>,
    /// The element audit of large sets after someone else committed, one window per step.
    audit: Option<AuditPass>,
}

/// Our tables as last found intact: the ruleset generation after our last commit, and whether
/// their elements were looked at too (a completed element audit) or only their structure
/// (chains, rule counts, sets). Until an audit completes (at 50k Services × 10 ~3 minutes, from
/// the first deep check after a start), a check without `deep` needs no dump at the structure's
/// generation: that dump took 0.3–0.7 ms before every sync at 50k × 10, more than a +1 Service's
/// sync itself.
#[derive(Clone, Copy, Debug)]
struct Seen {
    generation: u32,
    elements: bool,
}

/// An element audit in progress: the generation it checks, and per large set how many of its
/// elements are still to be looked at. The generation counts as seen once every one was.
///
/// Our own commits do not end a pass (at 50k Services × 10 it needs ~3 minutes, and a cluster
/// that changes every second would never finish one): a commit that moved the generation by
/// exactly one moves the pass's generation with it. The elements it added to an audited set are
/// added to that set's count, so that the walk, which goes on in key order from where it is,
/// still reaches every element the set held when the pass began. A family replaced whole needs
/// no audit any more.
#[derive(Debug)]
struct AuditPass {
    generation: u32,
    remaining: BTreeMap<(Family, String), usize>,
}

impl AuditPass {
    /// Elements we added to audited sets of `family`, per set.
    fn grew(&mut self, family: Family, added: &BTreeMap<&str, usize>) {
        for (set, n) in added {
            if let Some(r) = self.remaining.get_mut(&(family, set.to_string()))
                && *r > 0
            {
                *r += n;
            }
        }
    }

    /// `family` was replaced whole by us: nothing of it left to audit.
    fn replaced(&mut self, family: Family) {
        self.remaining.iter_mut().filter(|((f, _), _)| *f == family).for_each(|(_, r)| *r = 0);
    }
}

fn ports_of(state: &ClusterState, ctx: &NodeContext, fam: Family, svc: &ServiceName) -> Vec<ResolvedServicePort> {
    state.services.get(svc).map(|s| resolve_service(state, ctx, fam.0, s)).unwrap_or_default()
}

impl NftablesBackend<NftSocket> {
    /// Opens the netlink socket in the current network namespace.
    pub fn new() -> std::io::Result<NftablesBackend> {
        Ok(NftablesBackend::over(NftSocket::open()?))
    }
}

impl<N: Netfilter> NftablesBackend<N> {
    /// The engine over any netfilter (nothing programmed yet: the first sync is a full one).
    pub fn over(netfilter: N) -> NftablesBackend<N> {
        NftablesBackend {
            netfilter,
            programmed: BTreeMap::new(),
            built_for: None,
            udp_services: Default::default(),
            seq: 1,
            cold_start_max_elements: COLD_START_MAX_ELEMENTS,
            seen: None,
            audit_cursors: BTreeMap::new(),
            audit: None,
        }
    }

    /// The netfilter this engine programs.
    pub fn netfilter(&mut self) -> &mut N {
        &mut self.netfilter
    }

    /// The next sync replaces every table whole (kube-proxy's "full sync").
    pub fn force_full_sync(&mut self) {
        self.programmed.clear();
        self.built_for = None;
    }

    /// What we last programmed, per family.
    pub fn programmed(&self, family: Family) -> Option<&Ruleset> {
        self.programmed.get(&family).map(|t| &t.table)
    }

    fn commit(
        &mut self,
        family: Family,
        batch: nftproxy_nft_wire::Batch,
        report: &mut SyncReport,
    ) -> Result<(), SyncError> {
        let finished = batch.finish();
        self.seq = finished.next_seq;
        let before = self.netfilter.generation().ok();
        let start = Instant::now();
        match self.netfilter.commit(&finished) {
            Ok(stats) => {
                report.add(stats, start.elapsed());
                // Still sure nobody else committed only if the generation moved by exactly ours.
                let after = self.netfilter.generation().ok();
                let ours_only = match (before, after) {
                    (Some(b), Some(a)) if a == b.wrapping_add(1) => Some((b, a)),
                    _ => None,
                };
                self.seen = match (self.seen, ours_only) {
                    (Some(seen), Some((b, a))) if seen.generation == b => Some(Seen { generation: a, ..seen }),
                    _ => None,
                };
                if let (Some(pass), Some((b, a))) = (self.audit.as_mut(), ours_only)
                    && pass.generation == b
                {
                    pass.generation = a;
                }
                Ok(())
            }
            Err(source) => {
                // Whatever the kernel holds now, we no longer know it: the next sync is full.
                self.programmed.remove(&family);
                self.built_for = None;
                Err(SyncError::Netlink { family, source })
            }
        }
    }

    /// Our table does not exist yet: it is built and committed in steps. First the fixed
    /// part, then the Services as they come, in transactions of at most
    /// [`NftablesBackend::cold_start_max_elements`] elements, each Service whole in one (see
    /// [`plan::grown`]). The kernel takes in one step on a second thread while this one
    /// builds the next: at 50k Services × 10, building the table is ~1.1 s and the kernel's
    /// work ~1.2 s, which used to add up.
    fn cold_start(
        &mut self,
        family: Family,
        fixed: Ruleset,
        fragments: impl Iterator<Item = (ServiceName, Ruleset)>,
        report: &mut SyncReport,
    ) -> Result<(), SyncError> {
        report.full.push(family);
        let max = self.cold_start_max_elements.max(1);
        let mut table = Table::fixed(fixed);
        let mut seq = self.seq;
        let skeleton: Vec<_> = plan::cold_start(&table.table, seq, max).collect();
        seq = skeleton.last().map_or(seq, |b| b.seq_after());
        let mut growth = Growth::default();
        let mut fragments = fragments.peekable();
        let steps = std::iter::from_fn(|| {
            fragments.peek()?;
            let mut grown = Grown::default();
            table.grow(&mut growth, &mut fragments, max, Some(&mut grown));
            let batch = plan::grown(&table.table, &grown, seq);
            seq = batch.seq_after();
            Some(batch)
        });
        self.commit_pipelined(family, skeleton.into_iter().chain(steps), report)?;
        table.grown_up(growth);
        if let Some(pass) = self.audit.as_mut() {
            pass.replaced(family);
        }
        self.programmed.insert(family, table);
        Ok(())
    }

    /// Commits `batches` in order, the kernel taking in one on a second thread while this one
    /// makes the next. At most one batch waits between the two (~0.12 MB at 3,000 elements).
    /// The first refusal stops both, as [`NftablesBackend::commit`] would one batch at a
    /// time.
    fn commit_pipelined(
        &mut self,
        family: Family,
        batches: impl Iterator<Item = nftproxy_nft_wire::Batch>,
        report: &mut SyncReport,
    ) -> Result<(), SyncError> {
        std::thread::scope(|s| {
            let (tx, rx) = std::sync::mpsc::sync_channel(1);
            let committer = s.spawn(move || rx.into_iter().try_for_each(|batch| self.commit(family, batch, report)));
            for batch in batches {
                if tx.send(batch).is_err() {
                    break; // the committer stopped on an error: it returns it below
                }
            }
            drop(tx);
            committer.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic))
        })
    }

    /// Whether our table of `family` exists in the kernel.
    pub fn table_exists(&mut self, family: Family) -> Result<bool, SyncError> {
        self.netfilter.table_exists(family, TABLE).map_err(|e| SyncError::Netlink { family, source: e.into() })
    }

    /// Brings one family's table to `want`: a diff against what we programmed, else an atomic
    /// rebuild in place of a table left by an earlier run (or one we no longer know: drift, a
    /// failed commit), else a cold start in chunks.
    fn sync_table(&mut self, want: Table, report: &mut SyncReport) -> Result<(), SyncError> {
        let family = want.table.family;
        match self.programmed.get(&family) {
            Some(prev) => {
                let batch = plan::incremental(&prev.table, &want.table, self.seq);
                if let Some(pass) = self.audit.as_mut() {
                    let added = want
                        .table
                        .elements
                        .iter()
                        .map(|(set, e)| {
                            let old = prev.table.elements.get(set);
                            (set.as_str(), e.keys().filter(|k| old.is_none_or(|o| !o.contains_key(*k))).count())
                        })
                        .collect();
                    pass.grew(family, &added);
                }
                if !batch.is_empty() {
                    self.commit(family, batch, report)?;
                }
            }
            None => {
                report.full.push(family);
                let netlink = |e: std::io::Error| SyncError::Netlink { family, source: e.into() };
                if let Some(existing) = self.netfilter.observe(family, &|_| false).map_err(netlink)? {
                    self.commit(family, plan::rebuild_in_place(&want.table, &existing, self.seq), report)?;
                } else {
                    let batches = plan::cold_start(&want.table, self.seq, self.cold_start_max_elements);
                    self.commit_pipelined(family, batches, report)?;
                }
                if let Some(pass) = self.audit.as_mut() {
                    pass.replaced(family);
                }
            }
        }
        self.programmed.insert(family, want);
        Ok(())
    }

    /// Programs whole tables as given (no per-Service bookkeeping: the next
    /// [`NftablesBackend::sync_services`] will be a full one).
    pub fn sync(&mut self, desired: Vec<Ruleset>) -> Result<SyncReport, SyncError> {
        let mut report = SyncReport::default();
        self.built_for = None;
        for want in desired {
            self.sync_table(Table::new(want, BTreeMap::new()), &mut report)?;
        }
        Ok(report)
    }

    /// A full sync: resolves every Service for this node, syncs both families, then runs the
    /// UDP conntrack reconciler when any Service has (or had) a UDP port.
    pub fn sync_cluster(&mut self, state: &ClusterState, ctx: &NodeContext) -> Result<SyncReport, SyncError> {
        let mut report = SyncReport::default();
        for family in FAMILIES {
            let fragments = fragments_of_state(family, state, ctx);
            if self.programmed.contains_key(&family) || self.table_exists(family)? {
                self.sync_table(Table::new(fixed_table(family, ctx), fragments), &mut report)?;
            } else {
                self.cold_start(family, fixed_table(family, ctx), fragments, &mut report)?;
            }
        }
        self.built_for = Some(ctx.clone());
        if self.udp_services.synced(state, None) {
            self.clean_conntrack(state, &mut report);
        }
        Ok(report)
    }

    /// A partial sync: only the named Services (changed, added or deleted) are resolved and
    /// rebuilt; the kernel gets one transaction per family with just their differences. Falls
    /// back to [`NftablesBackend::sync_cluster`] when nothing is programmed yet or the node
    /// context changed.
    pub fn sync_services(
        &mut self,
        state: &ClusterState,
        ctx: &NodeContext,
        changed: &BTreeSet<ServiceName>,
    ) -> Result<SyncReport, SyncError> {
        if self.built_for.as_ref() != Some(ctx) || FAMILIES.iter().any(|f| !self.programmed.contains_key(f)) {
            return self.sync_cluster(state, ctx);
        }
        let mut report = SyncReport::default();
        for family in FAMILIES {
            let mut table = self.programmed.remove(&family).expect("checked above");
            let mut delta = Delta::default();
            for svc in changed {
                let ports = ports_of(state, ctx, family, svc);
                let frag = (!ports.is_empty()).then(|| fragment(family, &ports.iter().collect::<Vec<_>>(), ctx));
                table.swap(svc, frag, &mut delta);
            }
            let batch = plan::delta(&table.table, &delta, self.seq);
            if let Some(pass) = self.audit.as_mut() {
                let mut added: BTreeMap<&str, usize> = BTreeMap::new();
                for ((set, key), before) in &delta.elements {
                    if before.is_none() && table.table.elements.get(set).is_some_and(|e| e.contains_key(key)) {
                        *added.entry(set.as_str()).or_default() += 1;
                    }
                }
                pass.grew(family, &added);
            }
            // Put the table back first: a failed commit removes it again (full sync next).
            self.programmed.insert(family, table);
            if !batch.is_empty() {
                self.commit(family, batch, &mut report)?;
            }
        }
        if self.udp_services.synced(state, Some(changed)) {
            self.clean_conntrack(state, &mut report);
        }
        Ok(report)
    }

    /// kube-proxy's UDP conntrack reconciler over this engine's netfilter.
    pub fn clean_conntrack(&mut self, state: &ClusterState, report: &mut SyncReport) {
        let done = crate::conntrack::reconcile(&mut self.netfilter, state);
        report.conntrack_deleted = done.deleted;
        if done.error.is_some() {
            self.udp_services.failed();
        }
        report.conntrack_error = done.error;
    }

    /// Drift check: whether our tables still hold what we programmed. Cheap when nobody else
    /// committed since the last complete check (one generation query); otherwise our tables'
    /// chains, rule counts and sets are dumped and compared, and with `deep` also the elements:
    /// small sets counted, large sets audited by key one window at a time (see [`crate::drift`]):
    /// this check does the first window, [`NftablesBackend::audit_step`] the others. On a
    /// difference the next sync is a full one (an atomic replace), and the difference is
    /// returned for the log. The generation counts as seen only when the audit has looked at
    /// every element; until then a deep check repeats the structural one, and a check without
    /// `deep` repeats it only after someone else committed.
    pub fn verify(&mut self, deep: bool) -> Result<Option<String>, SyncError> {
        if self.programmed.is_empty() {
            return Ok(None);
        }
        let netlink = |family| move |e: std::io::Error| SyncError::Netlink { family, source: e.into() };
        let generation = self.netfilter.generation().map_err(netlink(Family::V4))?;
        if self.seen.is_some_and(|s| s.generation == generation && (s.elements || !deep)) {
            return Ok(None);
        }
        for (family, table) in &self.programmed {
            let want = &table.table;
            let counted = |name: &str| deep && !Self::audited(want, name);
            let got = self.netfilter.observe(*family, &counted).map_err(netlink(*family))?;
            if let Some(diff) = drift::compare(want, got.as_ref()) {
                return Ok(Some(self.drifted(diff)));
            }
        }
        self.seen = Some(Seen { generation, elements: false });
        if deep && self.audit.as_ref().is_none_or(|a| a.generation != generation) {
            let remaining = self
                .programmed
                .iter()
                .flat_map(|(f, t)| {
                    let want = &t.table;
                    want.elements
                        .iter()
                        .filter(|(n, _)| Self::audited(want, n))
                        .map(|(n, e)| ((*f, n.clone()), e.len()))
                })
                .collect();
            self.audit = Some(AuditPass { generation, remaining });
        }
        if deep { self.audit_step() } else { Ok(None) }
    }

    /// Whether a set's elements are audited by key (large, not an interval set) rather than
    /// counted.
    fn audited(want: &Ruleset, name: &str) -> bool {
        let interval = want.sets.get(name).is_some_and(|d| d.spec.flags & NFT_SET_INTERVAL != 0);
        !interval && want.elements.get(name).is_some_and(|e| e.len() > drift::COUNTED_SET_MAX)
    }

    /// Whether an element audit is under way ([`NftablesBackend::audit_step`] has work).
    pub fn audit_pending(&self) -> bool {
        self.audit.is_some()
    }

    /// One step of the element audit: the next window of every large set still to be looked
    /// at. When the pass is complete, its generation counts as seen; when someone committed
    /// again meanwhile, the pass is dropped (the next check starts over with the structure).
    pub fn audit_step(&mut self) -> Result<Option<String>, SyncError> {
        let netlink = |family| move |e: std::io::Error| SyncError::Netlink { family, source: e.into() };
        let Some(pass) = self.audit.as_mut() else { return Ok(None) };
        let generation = self.netfilter.generation().map_err(netlink(Family::V4))?;
        if generation != pass.generation {
            self.audit = None;
            return Ok(None);
        }
        for ((family, name), remaining) in pass.remaining.iter_mut().filter(|(_, r)| **r > 0) {
            let Some(elements) = self.programmed.get(family).and_then(|t| t.table.elements.get(name)) else {
                *remaining = 0;
                continue;
            };
            let slot = (*family, name.clone());
            let (window, next) = drift::audit_window(elements, self.audit_cursors.get(&slot));
            let found = drift::audit(&mut self.netfilter, *family, name, &window).map_err(netlink(*family))?;
            if let Some(diff) = found {
                return Ok(Some(self.drifted(diff)));
            }
            *remaining = remaining.saturating_sub(window.len().max(1));
            if let Some(k) = next {
                self.audit_cursors.insert(slot, k);
            }
        }
        if pass.remaining.values().all(|r| *r == 0) {
            self.seen = Some(Seen { generation: pass.generation, elements: true });
            self.audit = None;
        }
        Ok(None)
    }

    /// A difference found: the next sync replaces everything.
    fn drifted(&mut self, diff: String) -> String {
        self.force_full_sync();
        self.seen = None;
        self.audit = None;
        diff
    }

    /// Deletes another program's table (kube-proxy's `kube-proxy` tables when taking over from
    /// it); true if it was there. Never one of ours: that is [`NftablesBackend::cleanup`].
    pub fn delete_foreign_table(&mut self, family: Family, name: &str) -> Result<bool, SyncError> {
        assert_ne!(name, TABLE, "our own table goes through cleanup()");
        let netlink = |e: std::io::Error| SyncError::Netlink { family, source: e.into() };
        if !self.netfilter.table_exists(family, name).map_err(netlink)? {
            return Ok(false);
        }
        self.commit(family, plan::delete(family, name, self.seq), &mut SyncReport::default())?;
        Ok(true)
    }

    /// Deletes our tables, and nothing else. Missing tables are fine.
    pub fn cleanup(&mut self) -> Result<(), SyncError> {
        for family in FAMILIES {
            self.programmed.remove(&family);
            if self.table_exists(family)? {
                let mut report = SyncReport::default();
                self.commit(family, plan::delete(family, TABLE, self.seq), &mut report)?;
            }
        }
        self.built_for = None;
        Ok(())
    }
}
