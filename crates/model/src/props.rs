//! Property tests of the resolver: kube-proxy's endpoint rules (pkg/proxy/topology.go
//! `CategorizeEndpoints` and `topologyModeFromHints`, the proxiers' use of them) checked on random
//! small clusters from [`crate::arbitrary`], for both families and any node.
//!
//! Two layers. First the invariants a reader can check against kube-proxy's documentation one by
//! one (chosen endpoints belong to the Service's slices, Local policies choose local endpoints,
//! ready ones shadow terminating ones, kube-proxy's order, determinism, insertion order does not
//! matter). Then an oracle: the expected categorisation written straight from topology.go's
//! logic, independently of `resolve.rs`, compared field by field, so that a change in semantics
//! shows as a precise difference instead of a vague invariant failure.
//!
//! Cases: `KNP_FUZZ_CASES` (`make fuzz` sets 10^6), else a small default for `make test`.

use std::net::IpAddr;

use proptest::prelude::*;

use crate::arbitrary::{self, GeneratedCluster};
use crate::*;

fn cases(default: u32) -> u32 {
    std::env::var("KNP_FUZZ_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// The endpoints a service port can use in a family, merged by the rule `cluster.rs` documents
/// (written here from that documentation, not from its code): every slice of the Service with
/// that family and a port of the same name and protocol contributes its endpoints with that
/// port's number; the same `ip:port` counts once, a ready copy winning over a not-ready one,
/// otherwise the first copy in slice-name order. (kube-proxy's EndpointSliceCache differs in
/// which copy wins: the first it meets in Go map order, unless a later copy is local. Only
/// inconsistent slices, one address on two nodes or in two states, tell the rules apart.)
fn candidates(gc: &GeneratedCluster, name: &ServicePortName, family: IpFamily) -> Vec<(IpAddr, u16, Endpoint)> {
    let mut slices: Vec<&EndpointSlice> =
        gc.slices.iter().filter(|s| s.service == name.service && s.address_type.family() == Some(family)).collect();
    slices.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    let mut out: Vec<(IpAddr, u16, Endpoint)> = Vec::new();
    for s in slices {
        let Some(p) = s.ports.iter().find(|p| p.name == name.port && p.protocol == name.protocol) else {
            continue;
        };
        for e in &s.endpoints {
            match out.iter_mut().find(|(ip, port, _)| *ip == e.address && *port == p.port) {
                None => out.push((e.address, p.port, e.clone())),
                Some(c) if !c.2.ready && e.ready => c.2 = e.clone(),
                Some(_) => {}
            }
        }
    }
    out
}

fn resolved(ctx: &NodeContext, (ip, port, e): &(IpAddr, u16, Endpoint)) -> ResolvedEndpoint {
    ResolvedEndpoint {
        ip: *ip,
        port: *port,
        node_name: e.node_name.clone(),
        // kube-proxy's isLocal: a non-empty hostname equal to the endpoint's nodeName.
        is_local: !ctx.node_name.is_empty() && e.node_name.as_deref() == Some(ctx.node_name.as_str()),
        ready: e.ready,
        serving: e.serving,
        terminating: e.terminating,
    }
}

fn by_string(mut v: Vec<ResolvedEndpoint>) -> Vec<ResolvedEndpoint> {
    v.sort_by_cached_key(|e| e.to_string());
    v
}

/// What topology.go's `CategorizeEndpoints` returns, plus the proxiers' choice per traffic kind.
struct Expected {
    topology_mode: Option<&'static str>,
    cluster: Vec<ResolvedEndpoint>,
    local: Vec<ResolvedEndpoint>,
    has_any: bool,
    internal: EndpointChoice,
    external: Option<EndpointChoice>,
}

/// The oracle: topology.go's logic on (resolved endpoint, its slice endpoint with the hints) pairs
/// in kube-proxy's order.
fn oracle(
    pairs: &[(ResolvedEndpoint, Endpoint)],
    ctx: &NodeContext,
    internal_local: bool,
    accessible: bool,
    external_local: bool,
) -> Expected {
    let uses_cluster = !internal_local || accessible;
    let uses_local = internal_local || external_local;
    let ready: Vec<&(ResolvedEndpoint, Endpoint)> = pairs.iter().filter(|(r, _)| r.ready).collect();
    // topologyModeFromHints (PreferSameTrafficDistribution on): node hints first, then zones.
    let zone = ctx.zone.as_deref();
    let topology_mode = if ready.is_empty() {
        None
    } else if ready.iter().all(|(_, e)| !e.node_hints.is_empty())
        && ready.iter().any(|(_, e)| e.node_hints.contains(&ctx.node_name))
    {
        Some("PreferSameNode")
    } else if ready.iter().all(|(_, e)| !e.zone_hints.is_empty())
        && ready.iter().any(|(_, e)| zone.is_some_and(|z| e.zone_hints.contains(z)))
    {
        Some("PreferSameZone")
    } else {
        None
    };
    let mut out = Expected {
        topology_mode: None,
        cluster: vec![],
        local: vec![],
        has_any: false,
        internal: EndpointChoice::Reject,
        external: None,
    };
    let serving_terminating = |r: &ResolvedEndpoint| r.serving && r.terminating;
    if uses_cluster {
        out.topology_mode = topology_mode;
        out.cluster = ready
            .iter()
            .filter(|(_, e)| match topology_mode {
                None => true,
                Some("PreferSameNode") => e.node_hints.contains(&ctx.node_name),
                Some(_) => zone.is_some_and(|z| e.zone_hints.contains(z)),
            })
            .map(|(r, _)| r.clone())
            .collect();
        if out.cluster.is_empty() {
            out.cluster = pairs.iter().map(|(r, _)| r).filter(|r| serving_terminating(r)).cloned().collect();
        }
        out.has_any = !out.cluster.is_empty();
    }
    if uses_local {
        out.has_any |= pairs.iter().any(|(r, _)| r.ready || serving_terminating(r));
        let local_ready: Vec<ResolvedEndpoint> =
            pairs.iter().map(|(r, _)| r).filter(|r| r.is_local && r.ready).cloned().collect();
        out.local = if local_ready.is_empty() {
            pairs.iter().map(|(r, _)| r).filter(|r| r.is_local && serving_terminating(r)).cloned().collect()
        } else {
            local_ready
        };
    }
    let choice = |local_policy: bool| {
        if !out.has_any {
            EndpointChoice::Reject
        } else if local_policy {
            if out.local.is_empty() { EndpointChoice::Drop } else { EndpointChoice::Endpoints(out.local.clone()) }
        } else {
            EndpointChoice::Endpoints(out.cluster.clone())
        }
    };
    out.internal = choice(internal_local);
    out.external = accessible.then(|| choice(external_local));
    out
}

fn in_family<T: Copy>(v: &[T], family: IpFamily, f: impl Fn(&T) -> IpFamily) -> Vec<T> {
    v.iter().copied().filter(|x| f(x) == family).collect()
}

/// Every check for one family.
fn check_family(
    gc: &GeneratedCluster,
    st: &ClusterState,
    ctx: &NodeContext,
    family: IpFamily,
) -> Result<(), TestCaseError> {
    let out = resolve(st, ctx, family);
    prop_assert_eq!(&out, &resolve(st, ctx, family), "resolving twice differs");

    // kube-proxy's per-family proxier: Services by name, each Service's ports in spec order,
    // only Services with a ClusterIP of the family.
    let mut services: Vec<&Service> = gc.services.iter().collect();
    services.sort_by(|a, b| a.name.cmp(&b.name));
    let want_names: Vec<ServicePortName> = services
        .iter()
        .filter(|s| s.cluster_ips.iter().any(|ip| family.matches(ip)))
        .flat_map(|s| {
            s.ports.iter().map(|p| ServicePortName {
                service: s.name.clone(),
                port: p.name.clone(),
                protocol: p.protocol,
            })
        })
        .collect();
    let names: Vec<ServicePortName> = out.iter().map(|p| p.name.clone()).collect();
    prop_assert_eq!(names, want_names);

    let mut at = 0;
    for svc in &services {
        let per_service = resolve_service(st, ctx, family, svc);
        prop_assert_eq!(
            &per_service[..],
            &out[at..at + per_service.len()],
            "resolve_service ≠ resolve for {}",
            svc.name
        );
        at += per_service.len();
    }

    for rp in &out {
        let svc = gc.services.iter().find(|s| s.name == rp.name.service).expect("resolved a generated Service");
        let sp = svc.ports.iter().find(|p| p.name == rp.name.port && p.protocol == rp.name.protocol).expect("its port");
        let label = rp.name.to_string();

        // What the port is reached at.
        prop_assert_eq!(rp.family, family);
        prop_assert_eq!(Some(rp.cluster_ip), svc.cluster_ips.iter().copied().find(|ip| family.matches(ip)));
        prop_assert_eq!(
            (rp.port, rp.protocol, rp.node_port, rp.service_type),
            (sp.port, sp.protocol, sp.node_port, svc.service_type)
        );
        let external_ips = in_family(&svc.external_ips, family, IpFamily::of);
        let lb_ips = in_family(&svc.load_balancer_ips, family, IpFamily::of);
        prop_assert_eq!(&rp.external_ips, &external_ips);
        prop_assert_eq!(&rp.load_balancer_ips, &lb_ips);
        let ranges = if lb_ips.is_empty() {
            vec![]
        } else {
            in_family(&svc.load_balancer_source_ranges, family, IpFamily::of_net)
        };
        prop_assert_eq!(&rp.load_balancer_source_ranges, &ranges);
        let accessible = sp.node_port.is_some() || !external_ips.is_empty() || !lb_ips.is_empty();
        let internal_local = svc.internal_traffic_policy == TrafficPolicy::Local;
        let external_local = accessible && svc.external_traffic_policy == TrafficPolicy::Local;
        prop_assert_eq!(rp.internal_policy_local, internal_local);
        prop_assert_eq!(rp.external_policy_local, external_local);
        prop_assert_eq!(rp.external.is_some(), accessible, "external choice iff externally accessible");
        prop_assert_eq!(rp.health_check_node_port, if external_local { svc.health_check_node_port } else { None });
        prop_assert_eq!(rp.affinity_timeout, svc.session_affinity_timeout);

        let cands = candidates(gc, &rp.name, family);
        let pairs: Vec<(ResolvedEndpoint, Endpoint)> = by_string(cands.iter().map(|c| resolved(ctx, c)).collect())
            .into_iter()
            .map(|r| {
                let e = cands.iter().find(|(ip, port, _)| *ip == r.ip && *port == r.port).unwrap().2.clone();
                (r, e)
            })
            .collect();
        let all: Vec<&ResolvedEndpoint> = pairs.iter().map(|(r, _)| r).collect();
        let usable = |r: &ResolvedEndpoint| r.ready || (r.serving && r.terminating);
        let any_usable = all.iter().any(|r| usable(r));

        // Every endpoint anywhere in the result: one of the Service's, with this port's
        // number in its slice, of the family, kube-proxy's locality, sorted by `ip:port` string
        // (kube-proxy's byEndpoint) without duplicates.
        let choices: Vec<&[ResolvedEndpoint]> = [
            &rp.cluster_endpoints[..],
            &rp.local_endpoints[..],
            rp.internal.endpoints(),
            rp.external.as_ref().map(|c| c.endpoints()).unwrap_or(&[]),
        ]
        .into();
        for list in &choices {
            let strings: Vec<String> = list.iter().map(|e| e.to_string()).collect();
            prop_assert!(strings.windows(2).all(|w| w[0] < w[1]), "{label}: not in ip:port string order: {strings:?}");
            for e in list.iter() {
                prop_assert!(family.matches(&e.ip), "{label}: {e} is not {family}");
                prop_assert!(all.contains(&e), "{label}: {e:?} is not one of the Service's endpoints {all:?}");
            }
        }

        // Local traffic policies choose local endpoints only, drop when there are none here,
        // and reject only when there are none anywhere.
        for (local_policy, choice, what) in
            [(internal_local, Some(&rp.internal), "internal"), (external_local, rp.external.as_ref(), "external")]
        {
            let Some(choice) = choice else { continue };
            prop_assert_eq!(
                matches!(choice, EndpointChoice::Reject),
                !any_usable,
                "{}: {} Reject iff nothing usable",
                label,
                what
            );
            if local_policy {
                prop_assert!(
                    choice.endpoints().iter().all(|e| e.is_local),
                    "{label}: {what} Local chose a remote endpoint"
                );
                let local_usable = all.iter().any(|r| r.is_local && usable(r));
                prop_assert_eq!(
                    matches!(choice, EndpointChoice::Drop),
                    any_usable && !local_usable,
                    "{}: {} Local drops iff usable endpoints exist but none here",
                    label,
                    what
                );
            } else {
                prop_assert!(!matches!(choice, EndpointChoice::Drop), "{label}: {what} Cluster policy never drops");
            }
        }

        // Ready endpoints shadow the others; a non-ready one is chosen only when serving and
        // terminating, and only when its category (cluster-wide, or local) has no ready one.
        let any_ready = all.iter().any(|r| r.ready);
        let any_local_ready = all.iter().any(|r| r.ready && r.is_local);
        for (list, ready_exists, what) in
            [(&rp.cluster_endpoints, any_ready, "cluster"), (&rp.local_endpoints, any_local_ready, "local")]
        {
            for e in list.iter().filter(|e| !e.ready) {
                prop_assert!(
                    e.serving && e.terminating,
                    "{label}: {what} chose {e:?}, neither ready nor serving-terminating"
                );
                prop_assert!(!ready_exists, "{label}: {what} chose not-ready {e} although a ready one exists");
            }
        }

        // The oracle, field by field.
        let want = oracle(&pairs, ctx, internal_local, accessible, external_local);
        prop_assert_eq!(rp.topology_mode, want.topology_mode, "{}: topology mode", label);
        prop_assert_eq!(&rp.cluster_endpoints, &want.cluster, "{}: cluster endpoints", label);
        prop_assert_eq!(&rp.local_endpoints, &want.local, "{}: local endpoints", label);
        prop_assert_eq!(rp.has_any_endpoints, want.has_any, "{}: has any endpoints", label);
        prop_assert_eq!(&rp.internal, &want.internal, "{}: internal choice", label);
        prop_assert_eq!(&rp.external, &want.external, "{}: external choice", label);
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(512), failure_persistence: None, ..ProptestConfig::default() })]

    /// Every invariant and the oracle, both families, and the same result whatever order the
    /// objects arrived in.
    #[test]
    fn prop_resolver_invariants(gc in arbitrary::cluster(), ctx in arbitrary::node_context(), seed in any::<u64>()) {
        let st = gc.state();
        let shuffled = gc.state_shuffled(seed);
        prop_assert_eq!(&st, &shuffled, "insertion order changed the state");
        for family in [IpFamily::V4, IpFamily::V6] {
            check_family(&gc, &st, &ctx, family)?;
            prop_assert_eq!(resolve(&shuffled, &ctx, family), resolve(&st, &ctx, family), "insertion order changed {}", family);
        }
    }
}

// Regressions the property test found are plain tests beside the code they cover
// (`resolve/tests.rs`: `an_empty_node_name_is_local_to_no_endpoint`).

/// The generator must keep reaching every case the invariants are about; a change that made one
/// unreachable would let the property test pass vacuously. Deterministic (fixed seed).
#[test]
fn generator_reaches_every_interesting_case() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;
    let mut runner = TestRunner::deterministic();
    let strategy = (arbitrary::cluster(), arbitrary::node_context());
    let mut seen = std::collections::BTreeMap::<&str, usize>::new();
    for _ in 0..800 {
        let (gc, ctx) = strategy.new_tree(&mut runner).unwrap().current();
        let st = gc.state();
        for family in [IpFamily::V4, IpFamily::V6] {
            for p in resolve(&st, &ctx, family) {
                let mut hit = |k: &'static str, c: bool| *seen.entry(k).or_default() += c as usize;
                hit("ports", true);
                hit("PreferSameNode", p.topology_mode == Some("PreferSameNode"));
                hit("PreferSameZone", p.topology_mode == Some("PreferSameZone"));
                hit("internal drop", p.internal == EndpointChoice::Drop);
                hit("internal reject", p.internal == EndpointChoice::Reject);
                hit("external drop", p.external == Some(EndpointChoice::Drop));
                hit(
                    "external local endpoints",
                    p.external_policy_local && !p.external.as_ref().unwrap().endpoints().is_empty(),
                );
                hit("internal local endpoints", p.internal_policy_local && !p.internal.endpoints().is_empty());
                hit("cluster terminating fallback", p.cluster_endpoints.iter().any(|e| !e.ready));
                hit("local terminating fallback", p.local_endpoints.iter().any(|e| !e.ready));
                hit("several endpoints", p.cluster_endpoints.len() >= 3);
                hit("affinity", p.affinity_timeout.is_some());
                hit("source ranges", !p.load_balancer_source_ranges.is_empty());
                hit("dual-stack", st.services[&p.name.service].cluster_ips.len() == 2);
                let dup =
                    st.slices().values().filter(|s| s.service == p.name.service).flat_map(|s| &s.endpoints).count()
                        > st.endpoints_for(&p.name, family).len();
                hit("merged duplicates", dup);
            }
        }
    }
    for (k, n) in &seen {
        assert!(*n > 0, "the generator never produced: {k} ({seen:?})");
    }
    assert_eq!(seen.len(), 15);
}
