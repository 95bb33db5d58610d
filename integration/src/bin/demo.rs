//! `make demo`: a throwaway node namespace, a client and three backends; `kube-nftproxy sync`
//! programs examples/demo.yaml into the node over netlink; 300 TCP and 300 UDP requests go to
//! the ClusterIP and we show where they went. Everything is removed at the end.

use std::process::Command;

use nftproxy_integration::Proto;
use nftproxy_integration::lab::{CLIENT_IP, Lab, NODE_IP};

fn main() {
    let mut args = std::env::args().skip(1);
    let proxy = args.next().unwrap_or_else(|| "target/debug/kube-nftproxy".into());
    let manifests = args.next().unwrap_or_else(|| "examples/demo.yaml".into());
    let proxy = std::fs::canonicalize(&proxy).unwrap_or_else(|e| panic!("{proxy}: {e} (run `make build` first)"));
    let lab = Lab::new(3);
    println!(
        "== topology: client {CLIENT_IP} -> node {NODE_IP} -> pods ep1 10.244.1.2, ep2 10.244.2.2, ep3 10.244.3.2"
    );
    println!("   (namespaces {}*, removed at the end)\n", lab.topo.prefix());

    let cmd = format!(
        "{} sync --from {manifests} --hostname-override node-a --node-ip {NODE_IP} --cluster-cidr 10.244.0.0/16",
        proxy.display()
    );
    println!(
        "== in the node namespace: kube-nftproxy sync --from {manifests} --hostname-override node-a --node-ip {NODE_IP} --cluster-cidr 10.244.0.0/16"
    );
    let out = Command::new("ip").args(["netns", "exec", &lab.node.name, "sh", "-c", &cmd]).output().unwrap();
    print!("{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "sync failed");

    for (proto, to) in [(Proto::Tcp, "10.96.0.10:80"), (Proto::Udp, "10.96.0.10:53"), (Proto::Tcp, "10.0.1.1:30080")] {
        let n = if to.ends_with("30080") { 30 } else { 300 };
        let t = lab.tally(&lab.client, proto, to, n);
        println!("\n== {n} new {proto:?} connections from the client to {to}");
        for (ep, count) in t.by_responder() {
            println!("   {ep}: {count:>3} {}", "#".repeat(count / 4));
        }
        let failed = t.total() - t.by_responder().values().sum::<usize>();
        if failed > 0 {
            println!("   failed: {failed} ({:?})", t.outcomes);
        }
        if n == 300 {
            println!("   chi-square against an even spread: {:.2} (2 d.f.; 13.82 = p 0.001)", t.chi_square_uniform(3));
        }
        let seen: Vec<String> = t.seen_sources().iter().map(|s| s.to_string()).collect();
        println!(
            "   source addresses the endpoints saw: {} (client {CLIENT_IP} is masqueraded: it is outside the cluster CIDR)",
            seen.join(", ")
        );
    }

    // Debugging: the model's answer (explain), then the kernel's (trace) for one real request.
    let explain = format!(
        "{} explain --from {manifests} --hostname-override node-a --node-ip {NODE_IP} --cluster-cidr 10.244.0.0/16 --src {CLIENT_IP} --dst 10.96.0.10 --proto tcp --dport 80 --backend iptables",
        proxy.display()
    );
    println!(
        "\n== kube-nftproxy explain --from {manifests} … --src {CLIENT_IP} --dst 10.96.0.10 --proto tcp --dport 80 --backend iptables"
    );
    let out = Command::new("sh").args(["-c", &explain]).output().unwrap();
    print!("{}", String::from_utf8_lossy(&out.stdout));
    assert!(out.status.success(), "explain failed: {}", String::from_utf8_lossy(&out.stderr));

    println!(
        "\n== in the node namespace: kube-nftproxy trace --src {CLIENT_IP} --dst 10.96.0.10 --proto udp --dport 53"
    );
    let mut tracer = lab
        .node
        .command(proxy.to_str().unwrap())
        .args([
            "trace",
            "--src",
            CLIENT_IP,
            "--dst",
            "10.96.0.10",
            "--proto",
            "udp",
            "--dport",
            "53",
            "--timeout",
            "10",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut err = std::io::BufReader::new(tracer.stderr.take().unwrap());
    let mut first = String::new();
    std::io::BufRead::read_line(&mut err, &mut first).unwrap();
    print!("{first}");
    let answer = lab.client.run(|| {
        nftproxy_integration::request(
            Proto::Udp,
            "10.96.0.10:53".parse().unwrap(),
            None,
            std::time::Duration::from_secs(1),
        )
    });
    let out = tracer.wait_with_output().unwrap();
    print!("{}", String::from_utf8_lossy(&out.stdout));
    println!("   the client's request was answered by: {answer:?}");

    let listing = lab.node.exec("nft", &["list", "table", "ip", "kube-nftproxy"]);
    println!("\n== the relevant part of `nft list ruleset` in the node namespace");
    print!("{}", relevant(&listing));
    drop(lab);
    println!(
        "\n== removed the topology; leftover namespaces: {}",
        nftproxy_integration::netns_list().iter().filter(|n| n.starts_with("knp-")).count()
    );
}

/// The maps and chains a ClusterIP packet walks.
fn relevant(listing: &str) -> String {
    let mut out = String::new();
    let mut keep = false;
    for line in listing.lines() {
        let t = line.trim_start();
        if t.starts_with("map ") || t.starts_with("set ") || t.starts_with("chain ") {
            keep = [
                "set cluster-3-frontends",
                "map backends",
                "set nodeport-3-frontends",
                "map nodeport-backends",
                "chain services",
                "chain nodeports",
                "chain cluster-3",
                "chain nodeport-3",
                "chain nat-prerouting",
            ]
            .iter()
            .any(|w| t.starts_with(w));
        }
        if keep {
            out.push_str(line);
            out.push('\n');
            if t == "}" {
                keep = false;
            }
        }
    }
    out
}
