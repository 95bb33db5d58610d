//! End to end against a real kube-apiserver (and etcd), both running in a control-plane network
//! namespace: `kube-nftproxy run` in the node namespace watches the API with the RBAC of
//! `deploy/`, and real packets from a client namespace reach the pods it picks.
//!
//! Each test starts its own control plane (≈ 5–10 s); the peers are built once by
//! `integration/peers/build-peers.sh` (`make test` runs it first).

mod common;

use std::time::{Duration, Instant};

use common::*;
use nftproxy_integration::control_plane::ControlPlane;
use nftproxy_integration::lab::{CLIENT_IP, Lab, NODE, NODE_IP, POD_PORT, pod_ip};
use nftproxy_integration::{Outcome, Proto};
use serde_json::{Value, json};

#[test]
fn api_changes_reach_the_kernel_within_two_seconds() {
    let mut lab = Lab::new(3);
    let cp = ControlPlane::start(&mut lab.topo, &lab.node);
    // deploy/ is valid (created for real) and its RBAC is what the proxy runs with below.
    apply_deploy(&cp);
    cp.create(&node_obj());
    let log = cp.dir.join("proxy.log");
    // The kubeconfig names a port nobody listens on; --master overrides its server (kube-proxy's
    // precedence), so this also tests --master.
    let master = format!("https://{}:6443", nftproxy_integration::control_plane::API_IP);
    let _daemon = Daemon::start(&lab.node, &cp.proxy_kubeconfig(6449), log.clone(), &["--master", &master]);

    let vip = format!("{CLUSTER_IP}:80");
    let mut timings = Vec::new();
    cp.create(&service(json!({})));
    let t = Instant::now();
    cp.create(&slice(&[1, 2, 3]));
    timings.push((
        "create service + 3 endpoints",
        settle(
            &lab.client,
            Proto::Tcp,
            &vip,
            t,
            Duration::from_secs(10),
            "first sync",
            answered_by(&["ep1", "ep2", "ep3"]),
        ),
    ));
    let t = lab.client.run(|| {
        nftproxy_integration::tally(&lab.client, Proto::Udp, vip.parse().unwrap(), None, 60, Duration::from_secs(1))
    });
    assert_eq!(t.by_responder().len(), 3, "all three endpoints answer: {:?}", t.by_responder());
    // From outside --cluster-cidr to a ClusterIP: masqueraded to the node's address on the pod's link.
    assert!(
        t.seen_sources().iter().all(|s| s.to_string().starts_with("10.244.") && s.to_string().ends_with(".1")),
        "ClusterIP traffic from outside the cluster CIDR is masqueraded: {:?}",
        t.seen_sources()
    );

    for (eps, allowed, what) in [
        (&[1][..], &["ep1"][..], "scale 3 → 1"),
        (&[][..], &[][..], "scale 1 → 0"),
        (&[1, 2][..], &["ep1", "ep2"][..], "scale 0 → 2"),
    ] {
        let t = Instant::now();
        cp.replace(&slice(eps));
        let allowed: &'static [&'static str] = Box::leak(allowed.to_vec().into_boxed_slice());
        let took = if eps.is_empty() {
            settle(&lab.client, Proto::Tcp, &vip, t, CHANGE_BUDGET, what, |o| *o == Outcome::Refused)
        } else {
            settle(&lab.client, Proto::Tcp, &vip, t, CHANGE_BUDGET, what, answered_by(allowed))
        };
        timings.push((what, took));
    }
    let two = lab.client.run(|| {
        nftproxy_integration::tally(&lab.client, Proto::Tcp, vip.parse().unwrap(), None, 40, Duration::from_secs(1))
    });
    assert_eq!(two.by_responder().keys().cloned().collect::<Vec<_>>(), ["ep1", "ep2"]);

    // ClusterIP → NodePort → LoadBalancer (ETP Local, with its health check node port).
    let t = Instant::now();
    cp.replace(&service(json!({"type": "NodePort", "ports": [
        {"name": "tcp", "port": 80, "protocol": "TCP", "targetPort": POD_PORT, "nodePort": 30080},
        {"name": "udp", "port": 80, "protocol": "UDP", "targetPort": POD_PORT, "nodePort": 30080}]})));
    let np = format!("{NODE_IP}:30080");
    timings.push((
        "ClusterIP → NodePort",
        settle(&lab.client, Proto::Tcp, &np, t, CHANGE_BUDGET, "NodePort", answered_by(&["ep1", "ep2"])),
    ));
    let lb_spec = json!({"type": "LoadBalancer", "externalTrafficPolicy": "Local", "healthCheckNodePort": 32100, "ports": [
        {"name": "tcp", "port": 80, "protocol": "TCP", "targetPort": POD_PORT, "nodePort": 30080},
        {"name": "udp", "port": 80, "protocol": "UDP", "targetPort": POD_PORT, "nodePort": 30080}]});
    cp.replace(&service(lb_spec.clone()));
    let mut with_status = cp.api("GET", "/api/v1/namespaces/default/services/web", None);
    with_status["status"] = json!({"loadBalancer": {"ingress": [{"ip": "192.0.2.10"}]}});
    let t = Instant::now();
    cp.api("PUT", "/api/v1/namespaces/default/services/web/status", Some(&with_status));
    timings.push((
        "NodePort → LoadBalancer",
        settle(&lab.client, Proto::Tcp, "192.0.2.10:80", t, CHANGE_BUDGET, "LB IP", answered_by(&["ep1", "ep2"])),
    ));
    let t = lab.client.run(|| {
        nftproxy_integration::tally(
            &lab.client,
            Proto::Tcp,
            "192.0.2.10:80".parse().unwrap(),
            None,
            20,
            Duration::from_secs(1),
        )
    });
    assert!(t.seen_sources().iter().all(|s| s.to_string() == CLIENT_IP), "ETP Local keeps the client's address");

    // healthCheckNodePort: kube-proxy's JSON, 200 with local endpoints.
    let (code, body) = curl(&lab.client, &format!("http://{NODE_IP}:32100/"));
    assert_eq!(code, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["service"], json!({"namespace": "default", "name": "web"}));
    assert_eq!(v["localEndpoints"], 2);
    assert_eq!(v["serviceProxyHealthy"], true);

    // kube-proxy's start event about the Node, posted with deploy/'s RBAC.
    let events = cp.api("GET", "/apis/events.k8s.io/v1/namespaces/default/events", None);
    let starting = events["items"].as_array().unwrap().iter().find(|e| e["reason"] == "Starting");
    let starting = starting.unwrap_or_else(|| panic!("no Starting event: {events:#}"));
    assert_eq!(starting["regarding"]["kind"], "Node");
    assert_eq!(starting["regarding"]["name"], NODE);
    assert_eq!(starting["reportingController"], "kube-nftproxy");
    assert_eq!(starting["action"], "StartKubeProxy");

    // `explain --kubeconfig` reads the same cluster from the API server (as the proxy's user).
    let out = lab
        .node
        .command(env!("CARGO_BIN_EXE_kube-nftproxy"))
        .args(["explain", "--kubeconfig", cp.proxy_kubeconfig(6443).to_str().unwrap(), "--hostname-override", NODE])
        .args(["--src", CLIENT_IP, "--dst", "192.0.2.10", "--proto", "tcp", "--dport", "80", "--output", "json"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let ex: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(ex["servicePort"], "default/web:tcp");
    assert_eq!(ex["masquerade"], false, "ETP Local: {ex:#}");
    let cands: Vec<&str> =
        ex["verdict"]["candidates"].as_array().unwrap().iter().map(|c| c["endpoint"].as_str().unwrap()).collect();
    assert_eq!(cands, [format!("{}:{POD_PORT}", pod_ip(1)), format!("{}:{POD_PORT}", pod_ip(2))]);

    // Metrics and health.
    let (code, metrics) = curl(&lab.node, "http://127.0.0.1:10249/metrics");
    assert_eq!(code, 200);
    let last = metric(&metrics, "kubeproxy_sync_proxy_rules_last_timestamp_seconds{ip_family=\"IPv4\"}").unwrap();
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs_f64();
    assert!(now - last < 60.0, "last sync {last} is recent (now {now})");
    let syncs = metric(&metrics, "kubeproxy_sync_proxy_rules_duration_seconds_count{ip_family=\"IPv4\"}").unwrap();
    assert!(syncs >= 6.0, "one sync per change at least: {syncs}");
    let partial =
        metric(&metrics, "kubeproxy_sync_partial_proxy_rules_duration_seconds_count{ip_family=\"IPv4\"}").unwrap();
    assert!(partial >= 4.0, "changes after the first sync are partial syncs: {partial}");
    let npd = metric(&metrics, "kubeproxy_network_programming_duration_seconds_count{ip_family=\"IPv4\"}").unwrap();
    assert!(npd >= 4.0, "every slice change with a trigger time is observed: {npd}");
    assert_eq!(
        metric(&metrics, "kubenftproxy_services{ip_family=\"IPv4\"}"),
        Some(2.0),
        "web and the API server's own `kubernetes`"
    );
    assert_eq!(
        metric(&metrics, "kubeproxy_sync_proxy_rules_nftables_sync_failures_total{ip_family=\"IPv4\"}"),
        Some(0.0)
    );
    let (code, health) = curl(&lab.client, &format!("http://{NODE_IP}:10256/healthz"));
    assert_eq!(code, 200, "{health}");
    let h: Value = serde_json::from_str(&health).unwrap();
    assert_eq!(h["healthy"], true);
    assert_eq!(h["nodeEligible"], true);
    assert_eq!(curl(&lab.node, "http://127.0.0.1:10256/livez").0, 200);

    // Delete the Service: its rules are gone (its address is routed like any other, towards the
    // node's upstream, and nobody answers).
    let t = Instant::now();
    cp.delete(&service(json!({})));
    timings.push((
        "delete service",
        settle(&lab.client, Proto::Tcp, &vip, t, CHANGE_BUDGET, "delete", |o| !matches!(o, Outcome::Answered { .. })),
    ));
    let table = lab.node.exec("nft", &["list", "table", "ip", "kube-nftproxy"]);
    assert!(!table.contains("default/web"), "no element of the deleted Service is left:\n{table}");
    assert!(!table.contains(CLUSTER_IP));
    assert_eq!(curl(&lab.client, &format!("http://{NODE_IP}:32100/")).0, 0, "its health check server is closed");
    // The API server's default ServiceCIDR (created by kube-apiserver 1.33+ from
    // --service-cluster-ip-range) reached the proxy through its watch and deploy/'s RBAC: the
    // deleted Service's address is now unallocated, and dropped rather than routed on.
    let cidr = nftproxy_integration::control_plane::SERVICE_CIDR;
    assert!(
        table.contains(&format!("ip daddr {cidr} drop comment \"Drop traffic to unallocated ClusterIPs\"")),
        "{table}"
    );

    for (what, t) in &timings {
        eprintln!("API change → traffic: {what}: {t:?}");
    }
}

#[test]
fn outage_restart_and_drift_keep_traffic_flowing() {
    let mut lab = Lab::new(3);
    let mut cp = control_plane_with_web(&mut lab);
    let kubeconfig = cp.proxy_kubeconfig(6443);
    let log = cp.dir.join("proxy.log");
    let extra = ["--sync-period", "2s"];
    let mut daemon = Daemon::start(&lab.node, &kubeconfig, log.clone(), &extra);
    let vip = format!("{CLUSTER_IP}:80");
    settle(
        &lab.client,
        Proto::Udp,
        &vip,
        Instant::now(),
        Duration::from_secs(10),
        "first sync",
        answered_by(&["ep1", "ep2", "ep3"]),
    );

    // The proxy's API server goes away: rules and traffic stay.
    cp.stop_apiserver(6443);
    let during = lab.client.run(|| {
        nftproxy_integration::tally(&lab.client, Proto::Tcp, vip.parse().unwrap(), None, 30, Duration::from_secs(1))
    });
    assert_eq!(during.count(|o| matches!(o, Outcome::Answered { .. })), 30, "{:?}", during.by_responder());
    // A change made while it is down (through the other API server) …
    cp.replace_on(6444, &slice(&[1]));
    std::thread::sleep(Duration::from_secs(3));
    let still = lab.client.run(|| {
        nftproxy_integration::tally(&lab.client, Proto::Tcp, vip.parse().unwrap(), None, 30, Duration::from_secs(1))
    });
    assert_eq!(still.by_responder().len(), 3, "the proxy cannot know yet");
    // … is applied within 2 s of its return.
    cp.start_apiserver(6443);
    let back = Instant::now();
    let took = settle(
        &lab.client,
        Proto::Tcp,
        &vip,
        back,
        CHANGE_BUDGET,
        "change made during the outage",
        answered_by(&["ep1"]),
    );
    eprintln!("API server back → change applied: {took:?}");
    // The restarted API server's watch cache begins after the change: the proxy's watches from
    // the old resourceVersion get 410 Gone ("too old resource version") and relist — and the
    // rules stayed in place through all of it (traffic above).
    let text = daemon.log_text();
    assert!(text.contains("too old resource version"), "the 410 relist path ran; log:\n{text}");

    // Restart the proxy under load: not one failed request (SIGTERM leaves the rules; the new
    // process adopts them with an atomic replace after its first complete lists).
    cp.replace(&slice(&[1, 2, 3]));
    settle(
        &lab.client,
        Proto::Udp,
        &vip,
        Instant::now(),
        CHANGE_BUDGET,
        "back to 3",
        answered_by(&["ep1", "ep2", "ep3"]),
    );
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let loader = {
        let (client, stop, vip) = (lab.client.clone(), stop.clone(), vip.clone());
        std::thread::spawn(move || {
            let mut outcomes = Vec::new();
            let deadline = Instant::now() + Duration::from_secs(30);
            while !stop.load(std::sync::atomic::Ordering::Relaxed) && Instant::now() < deadline {
                for proto in [Proto::Tcp, Proto::Udp] {
                    outcomes.push(ask(&client, proto, &vip));
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            outcomes
        })
    };
    std::thread::sleep(Duration::from_millis(500));
    daemon.terminate();
    assert!(lab.node.exec("nft", &["list", "tables"]).contains("kube-nftproxy"), "SIGTERM leaves the rules");
    let mut daemon = Daemon::start(&lab.node, &kubeconfig, log.clone(), &extra);
    // Wait for the new process's first sync, then a little more traffic.
    let deadline = Instant::now() + Duration::from_secs(15);
    while curl(&lab.node, "http://127.0.0.1:10249/metrics")
        .1
        .lines()
        .all(|l| !l.starts_with("kubeproxy_sync_proxy_rules_duration_seconds_count"))
    {
        assert!(Instant::now() < deadline, "restarted proxy did not sync; log:\n{}", daemon.log_text());
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let outcomes = loader.join().unwrap();
    let failed: Vec<&Outcome> = outcomes.iter().filter(|o| !matches!(o, Outcome::Answered { .. })).collect();
    assert!(outcomes.len() > 50, "load ran: {}", outcomes.len());
    assert!(
        failed.is_empty(),
        "{} of {} requests failed during the restart: {:?}",
        failed.len(),
        outcomes.len(),
        failed
    );
    eprintln!("restart under load: {} requests, 0 failed", outcomes.len());

    // Drift: someone empties a set of ours, then deletes the whole table; the next sync restores.
    for (what, args) in [
        ("flushed set restored", &["flush", "set", "ip", "kube-nftproxy", "cluster-3-frontends"][..]),
        ("deleted table restored", &["delete", "table", "ip", "kube-nftproxy"][..]),
    ] {
        lab.node.exec("nft", args);
        let all = answered_by(&["ep1", "ep2", "ep3"]);
        settle(&lab.client, Proto::Tcp, &vip, Instant::now(), Duration::from_secs(5), what, all);
    }
    let (_, metrics) = curl(&lab.node, "http://127.0.0.1:10249/metrics");
    let repairs = metric(&metrics, "kubenftproxy_drift_repairs_total").unwrap();
    let noticed: Vec<String> =
        daemon.log_text().lines().filter(|l| l.contains("drift") || l.contains("synced full=true")).map(String::from).collect();
    assert!(repairs >= 2.0, "drift repairs {repairs} (want 2); drift log lines: {noticed:#?}\n{metrics}");
    daemon.terminate();
}

/// The proxy's identity as `deploy/` creates it may list and watch the four kinds it reads and
/// post its start event, nothing else (its effective rules, as the API server computes them); a
/// write is denied. Tokens never reach the log, even with every library tracing
/// (`RUST_LOG=trace`), nor the errors of a refused token.
#[test]
fn rbac_allows_only_list_and_watch_and_tokens_stay_out_of_logs() {
    use nftproxy_integration::control_plane::{ADMIN_TOKEN, API_IP, PROXY_TOKEN};
    let mut lab = Lab::new(3);
    let cp = ControlPlane::start(&mut lab.topo, &lab.node);
    apply_deploy(&cp);
    cp.create(&node_obj());
    let review = json!({"apiVersion": "authorization.k8s.io/v1", "kind": "SelfSubjectRulesReview",
                        "spec": {"namespace": "default"}});
    let r = cp
        .try_api_as(PROXY_TOKEN, 6443, "POST", "/apis/authorization.k8s.io/v1/selfsubjectrulesreviews", Some(&review))
        .unwrap();
    let mut granted = std::collections::BTreeSet::new();
    for rule in r["status"]["resourceRules"].as_array().expect("resourceRules") {
        for group in rule["apiGroups"].as_array().into_iter().flatten() {
            for res in rule["resources"].as_array().into_iter().flatten() {
                for verb in rule["verbs"].as_array().into_iter().flatten() {
                    granted.insert(format!("{} {}/{}", verb.as_str().unwrap(), group.as_str().unwrap(), res.as_str().unwrap()));
                }
            }
        }
    }
    let mut expected: std::collections::BTreeSet<String> = ["/services", "/nodes", "discovery.k8s.io/endpointslices", "networking.k8s.io/servicecidrs"]
        .iter()
        .flat_map(|r| [format!("list {r}"), format!("watch {r}")])
        .collect();
    expected.insert("create events.k8s.io/events".into());
    expected.insert("patch events.k8s.io/events".into());
    // Every authenticated identity may ask about its own access (system:basic-user).
    for own in [
        "authentication.k8s.io/selfsubjectreviews",
        "authorization.k8s.io/selfsubjectaccessreviews",
        "authorization.k8s.io/selfsubjectrulesreviews",
    ] {
        expected.insert(format!("create {own}"));
    }
    assert_eq!(granted, expected, "the proxy's effective rules");
    let denied = cp.try_api_as(PROXY_TOKEN, 6443, "POST", "/api/v1/namespaces/default/services", Some(&service(json!({})))).unwrap();
    assert_eq!(denied["code"], 403, "a write with the proxy's identity: {denied}");

    // Trace verbosity, a full sync, then the log holds no token.
    let log = cp.dir.join("proxy.log");
    let trace = [("RUST_LOG", "trace")];
    let mut daemon = Daemon::start_env(&lab.node, &cp.proxy_kubeconfig(6443), log.clone(), &["--v", "4"], &trace);
    cp.create(&service(json!({})));
    cp.create(&slice(&[1, 2, 3]));
    let vip = format!("{CLUSTER_IP}:80");
    settle(&lab.client, Proto::Tcp, &vip, Instant::now(), Duration::from_secs(15), "sync", answered_by(&["ep1", "ep2", "ep3"]));
    daemon.terminate();
    let text = daemon.log_text();
    assert!(text.contains("TRACE hyper") || text.contains("TRACE kube"), "library tracing is on");
    for token in [PROXY_TOKEN, ADMIN_TOKEN] {
        assert!(!text.contains(token), "a token in the log");
    }
    // A refused token: the error says so, without the token.
    let wrong = "knp-wrong-secret-token";
    let log2 = cp.dir.join("intruder.log");
    let intruder = Daemon::start_env(&lab.node, &cp.kubeconfig(API_IP, 6443, wrong, "intruder"), log2.clone(), &[], &trace);
    let deadline = Instant::now() + Duration::from_secs(15);
    while !intruder.log_text().contains("401") && !intruder.log_text().contains("Unauthorized") {
        assert!(Instant::now() < deadline, "no authentication error logged:\n{}", intruder.log_text());
        std::thread::sleep(Duration::from_millis(200));
    }
    drop(intruder);
    assert!(!std::fs::read_to_string(&log2).unwrap().contains(wrong), "the refused token was logged");
    eprintln!("effective rules of the proxy: {granted:?}; write denied (403); {} trace log lines without a token", text.lines().count());
}
