//! Property test: every ruleset the iptables renderer writes for a random small cluster (the
//! model's shared generator, `nftproxy_model::arbitrary`) is accepted by
//! `iptables-legacy-restore --test` (IPv4) and `ip6tables-legacy-restore --test` (IPv6). Those
//! parse and check the text as a real restore would (tables, chain declarations, jumps to
//! declared chains, match and target options and their values) without changing the kernel.
//!
//! One restore process per ruleset would cost far more than rendering it, so rulesets are
//! checked in batches: restore accepts many `*filter … COMMIT *nat … COMMIT` rulesets in one
//! input, each table block starting afresh, and stops at the first error. A failing batch is
//! bisected down to the one failing case, which proptest then shrinks. The
//! `batched_restore_*` tests prove that a batch cannot hide a broken ruleset.
//!
//! Cases: `KNP_FUZZ_CASES` (`make fuzz` sets 10^6), else a small default for `make test`.
//! Needs the binaries (Debian package `iptables`); without them the test fails, never passes.

use std::io::Write;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::process::{Command, Stdio};
use std::thread::JoinHandle;

use nftproxy_iptables::{Options, render_cluster};
use nftproxy_model::arbitrary::{self, GeneratedCluster};
use nftproxy_model::{IpFamily, NodeContext};
use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::{RngAlgorithm, TestRng, TestRunner};

fn cases(default: u32) -> u32 {
    std::env::var("KNP_FUZZ_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// Cases per restore process. A process costs a few milliseconds to start; restore then parses
/// some 4 µs per line, and a case is ~150 lines over both families: 1,000 cases per process keep
/// the start-up cost small and a bisection short (10 more runs).
const BATCH: usize = 1000;

#[derive(Clone, Debug)]
struct Case {
    cluster: GeneratedCluster,
    ctx: NodeContext,
    opts: Options,
    /// Complete the node context from the cluster (its Node object, ServiceCIDRs) as the daemon
    /// does, or render with the flags alone as `render` away from the node does.
    complete_ctx: bool,
}

fn case() -> impl Strategy<Value = Case> {
    let opts = (0..=31u8, any::<bool>(), any::<bool>(), any::<bool>(), any::<bool>()).prop_map(
        |(masquerade_bit, random_fully, localhost_nodeports, nfacct, conntrack_tcp_be_liberal)| Options {
            masquerade_bit,
            random_fully,
            localhost_nodeports,
            nfacct,
            conntrack_tcp_be_liberal,
        },
    );
    (arbitrary::cluster(), arbitrary::node_context(), opts, any::<bool>())
        .prop_map(|(cluster, ctx, opts, complete_ctx)| Case { cluster, ctx, opts, complete_ctx })
}

impl Case {
    fn render(&self, family: IpFamily) -> String {
        let state = self.cluster.state();
        let mut ctx = self.ctx.clone();
        if self.complete_ctx {
            ctx.complete_from_state(&state);
        }
        render_cluster(family, &state, &ctx, &self.opts)
    }

    /// The ruleset, or why there is none (a panic in the renderer is a failure too).
    fn render_caught(&self, family: IpFamily) -> Result<String, String> {
        catch_unwind(AssertUnwindSafe(|| self.render(family))).map_err(|p| {
            let msg = p.downcast_ref::<String>().cloned().or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()));
            format!("render panicked: {}", msg.unwrap_or_default())
        })
    }

    /// Why this case fails in this family, if it does.
    fn failure(&self, family: IpFamily) -> Option<String> {
        match self.render_caught(family) {
            Err(e) => Some(e),
            Ok(text) => restore_test(family, &text).err(),
        }
    }
}

fn restore_binary(family: IpFamily) -> &'static str {
    match family {
        IpFamily::V4 => "iptables-legacy-restore",
        IpFamily::V6 => "ip6tables-legacy-restore",
    }
}

/// `<binary> --test` on `input`: Ok when restore accepts all of it, else its error output.
/// `--wait`: a restore of the machine's own (or another test's) holding the xtables lock must
/// not fail the check.
fn restore_test(family: IpFamily, input: &str) -> Result<(), String> {
    restore_test_with(restore_binary(family), input)
}

fn restore_test_with(bin: &str, input: &str) -> Result<(), String> {
    // Also where Debian installs it, for a PATH without the sbin directories.
    let mut spawned = None;
    for path in [bin.to_string(), format!("/usr/sbin/{bin}"), format!("/sbin/{bin}")] {
        match Command::new(&path)
            .args(["--test", "--wait=60"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
        {
            Ok(child) => {
                spawned = Some(child);
                break;
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => panic!("{bin}: {e}"),
        }
    }
    let Some(mut child) = spawned else {
        panic!(
            "{bin} not found: install the `iptables` Debian package (apt-get install iptables); \
             this test checks every ruleset with it and must not pass without it"
        );
    };
    let mut stdin = child.stdin.take().expect("piped stdin");
    let output = std::thread::scope(|s| {
        // Written from another thread while this one collects stderr; a write error means
        // restore stopped reading (it exited on an error, reported by its status).
        s.spawn(move || {
            let _ = stdin.write_all(input.as_bytes());
        });
        child.wait_with_output().expect("restore ran")
    });
    if output.status.success() {
        Ok(())
    } else {
        Err(format!("{bin} --test exited with {}: {}", output.status, String::from_utf8_lossy(&output.stderr).trim()))
    }
}

/// Checks rulesets in one restore run; on failure, bisects to the first ruleset that fails on
/// its own: (its index, restore's error about it).
fn check_batch(family: IpFamily, texts: &[String]) -> Result<(), (usize, String)> {
    let Err(batch_error) = restore_test(family, &texts.concat()) else {
        return Ok(());
    };
    let (mut lo, mut hi) = (0, texts.len()); // texts[lo..hi] fails
    while hi - lo > 1 {
        let mid = lo + (hi - lo) / 2;
        if restore_test(family, &texts[lo..mid].concat()).is_err() {
            hi = mid;
        } else if restore_test(family, &texts[mid..hi].concat()).is_err() {
            lo = mid;
        } else {
            panic!(
                "{family}: rulesets {lo}..{hi} fail together but neither half alone does \
                 (batching is unsound?): {batch_error}"
            );
        }
    }
    match restore_test(family, &texts[lo]) {
        Err(e) => Err((lo, e)),
        Ok(()) => panic!("{family}: ruleset {lo} passes alone, yet the batch failed: {batch_error}"),
    }
}

/// A case by the seed of its own runner, so that a batch keeps 32 bytes per case rather than
/// its value tree, and a failing case can be regenerated for shrinking.
fn tree_of(seed: &[u8; 32]) -> impl ValueTree<Value = Case> {
    let config = ProptestConfig { failure_persistence: None, ..ProptestConfig::default() };
    let mut runner = TestRunner::new_with_rng(config, TestRng::from_seed(RngAlgorithm::ChaCha, seed));
    case().new_tree(&mut runner).expect("the strategy never rejects")
}

/// Shrinks a failing case (proptest's simplify/complicate walk) and fails the test with the
/// smallest one found, its ruleset and restore's error.
fn fail_with_shrunk_case(seed: &[u8; 32], family: IpFamily, first_error: String) -> ! {
    let mut tree = tree_of(seed);
    let mut best = (tree.current(), first_error);
    let mut steps = 0;
    if tree.simplify() {
        while steps < 4096 {
            steps += 1;
            match tree.current().failure(family) {
                Some(e) => {
                    best = (tree.current(), e);
                    if !tree.simplify() {
                        break;
                    }
                }
                None => {
                    if !tree.complicate() {
                        break;
                    }
                }
            }
        }
    }
    let (case, error) = best;
    let text = case.render_caught(family).unwrap_or_else(|e| e);
    panic!(
        "{family} ruleset rejected ({steps} shrink steps): {error}\nminimal failing case: {case:#?}\n\
         ruleset (line numbers as restore counts them):\n{}",
        text.lines().enumerate().map(|(i, l)| format!("{:4} {l}\n", i + 1)).collect::<String>()
    );
}

type Checking = JoinHandle<Result<(), (usize, String)>>;

/// One family's part of a batch being checked in the background while the next batch renders:
/// the restore run, and for each of its rulesets the case (index into the batch's seeds).
struct FamilyCheck {
    family: IpFamily,
    owners: Vec<usize>,
    check: Checking,
}

struct InFlight {
    seeds: Vec<[u8; 32]>,
    checks: Vec<FamilyCheck>,
}

impl InFlight {
    fn finish(self) {
        for FamilyCheck { family, owners, check } in self.checks {
            // A panic there (no restore binary) is this test's failure, message and all.
            if let Err((i, error)) = check.join().unwrap_or_else(|p| std::panic::resume_unwind(p)) {
                fail_with_shrunk_case(&self.seeds[owners[i]], family, error);
            }
        }
    }
}

/// A 128-bit fingerprint of a ruleset (two differently keyed std hashes): a ruleset already
/// checked is not checked again. About one in twelve repeats (IPv6 rulesets of IPv4-only
/// clusters differ only in the options), and restore time is the cost of this test.
fn fingerprint(text: &str) -> u128 {
    use std::hash::{BuildHasher, Hasher};
    let keyed = |key: u64| {
        let mut h =
            std::hash::BuildHasherDefault::<std::collections::hash_map::DefaultHasher>::default().build_hasher();
        h.write_u64(key);
        h.write(text.as_bytes());
        h.finish() as u128
    };
    keyed(0x6b6e_7031) << 64 | keyed(0x6b6e_7032)
}

#[test]
fn prop_rendered_rulesets_pass_iptables_restore_test() {
    let config = ProptestConfig { cases: cases(300), failure_persistence: None, ..ProptestConfig::default() };
    let total = config.cases as usize;
    let mut master = TestRunner::new(config);
    let families = [IpFamily::V4, IpFamily::V6];
    let mut checked: [std::collections::HashSet<u128>; 2] = Default::default();
    let mut in_flight: Option<InFlight> = None;
    let mut done = 0;
    while done < total {
        let n = BATCH.min(total - done);
        let mut seeds = Vec::with_capacity(n);
        let mut texts: [Vec<String>; 2] = Default::default();
        let mut owners: [Vec<usize>; 2] = Default::default();
        for i in 0..n {
            let mut seed = [0u8; 32];
            master.rng().fill_bytes(&mut seed);
            let case = tree_of(&seed).current();
            for (k, family) in families.into_iter().enumerate() {
                match case.render_caught(family) {
                    Ok(t) => {
                        if checked[k].insert(fingerprint(&t)) {
                            texts[k].push(t);
                            owners[k].push(i);
                        }
                    }
                    Err(e) => fail_with_shrunk_case(&seed, family, e),
                }
            }
            seeds.push(seed);
        }
        // One batch in flight at a time: rendering the next overlaps with checking this one.
        if let Some(previous) = in_flight.take() {
            previous.finish();
        }
        let checks = families
            .into_iter()
            .zip(texts)
            .zip(owners)
            .map(|((family, texts), owners)| FamilyCheck {
                family,
                owners,
                check: std::thread::spawn(move || check_batch(family, &texts)),
            })
            .collect();
        in_flight = Some(InFlight { seeds, checks });
        done += n;
    }
    if let Some(last) = in_flight {
        last.finish();
    }
}

// ---------------------------------------------------------------------------------------------
// The batching itself.

/// Rulesets of a few fixed cases (deterministic: the generator with a fixed seed).
fn sample_rulesets(family: IpFamily, n: usize) -> Vec<String> {
    (0..n)
        .map(|i| {
            let seed = [i as u8 + 1; 32];
            tree_of(&seed).current().render(family)
        })
        .collect()
}

/// Ways a ruleset can be broken, each of which restore must reject inside a batch.
fn broken(good: &str) -> Vec<(&'static str, String)> {
    let bad_jump = good.replacen("COMMIT\n*nat\n", "-A KUBE-SERVICES -j KUBE-SVC-UNDECLARED\nCOMMIT\n*nat\n", 1);
    let no_commit = good.rsplit_once("COMMIT\n").map(|(head, _)| head.to_string()).unwrap();
    let bad_option =
        good.replacen("COMMIT\n*nat\n", "-A KUBE-FORWARD -m mark --mark 0x100000000 -j ACCEPT\nCOMMIT\n*nat\n", 1);
    let bad_chain = good.replacen("*nat\n", "*nat\n-A KUBE-NOT-DECLARED -j RETURN\n", 1);
    vec![
        ("jump to an undeclared chain", bad_jump),
        ("last table without COMMIT", no_commit),
        ("out-of-range option value", bad_option),
        ("rule in an undeclared chain", bad_chain),
    ]
}

/// A broken ruleset anywhere in a batch (first, middle, last) fails the batch, and the
/// bisection names exactly it.
#[test]
fn batched_restore_finds_a_broken_ruleset_and_bisects_to_it() {
    for family in [IpFamily::V4, IpFamily::V6] {
        let good = sample_rulesets(family, 9);
        assert_eq!(check_batch(family, &good), Ok(()), "{family}: the sample rulesets are accepted");
        for (what, bad) in broken(&good[0]) {
            assert!(restore_test(family, &bad).is_err(), "{family}: {what}: rejected alone");
            for at in [0, 4, 9] {
                let mut batch = good.clone();
                batch.insert(at, bad.clone());
                match check_batch(family, &batch) {
                    Ok(()) => panic!("{family}: {what} at {at} of {} hidden by the batch", batch.len()),
                    Err((i, _)) => assert_eq!(i, at, "{family}: {what}: bisected to the wrong ruleset"),
                }
            }
        }
    }
}

/// A missing binary is a failure with the install hint, not a pass.
#[test]
fn a_missing_restore_binary_fails_loudly() {
    // The real function, with a binary that exists under none of the paths it tries.
    let err = catch_unwind(|| restore_test_with("knp-no-such-restore", "")).expect_err("must panic");
    let msg = err.downcast_ref::<String>().cloned().unwrap_or_default();
    assert!(msg.contains("install the `iptables` Debian package"), "{msg}");
}
