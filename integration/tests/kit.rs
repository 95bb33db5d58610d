//! The namespace test kit proves itself: traffic both ways between namespaces through a bridge,
//! responders report the source they saw, and every namespace is gone afterwards, even when the
//! test panics.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use nftproxy_integration::*;

fn ours(prefix: &str) -> Vec<String> {
    netns_list().into_iter().filter(|n| n.starts_with(prefix)).collect()
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

#[test]
fn traffic_flows_both_ways_and_the_topology_is_removed_on_drop() {
    let before = netns_list();
    let prefix;
    {
        let mut t = Topology::new();
        prefix = t.prefix().to_string();
        let (a, b, sw) = (t.netns("a"), t.netns("b"), t.netns("switch"));
        t.bridge(&sw, "br0");
        for (ns, port) in [(&a, "sw-a"), (&b, "sw-b")] {
            t.veth(&sw, port, ns, "eth0");
            t.attach(&sw, port, "br0");
        }
        t.addr(&a, "eth0", "10.200.0.1/24");
        t.addr(&b, "eth0", "10.200.0.2/24");
        t.addr(&a, "eth0", "fd00:200::1/64");
        t.addr(&b, "eth0", "fd00:200::2/64");
        for (ns, id, v4, v6) in [(&a, "A", "10.200.0.1", "fd00:200::1"), (&b, "B", "10.200.0.2", "fd00:200::2")] {
            t.responder(ns, id, ip(v4), &[8080], &[5353]);
            t.responder(ns, id, ip(v6), &[8080], &[5353]);
        }
        assert_eq!(ours(&prefix).len(), 3);

        let d = Duration::from_secs(2);
        for (client, server, id, client_ip) in [
            (&b, "10.200.0.1", "A", "10.200.0.2"),
            (&a, "10.200.0.2", "B", "10.200.0.1"),
            (&b, "fd00:200::1", "A", "fd00:200::2"),
            (&a, "fd00:200::2", "B", "fd00:200::1"),
        ] {
            for (proto, port) in [(Proto::Tcp, 8080), (Proto::Udp, 5353)] {
                let tally = tally(client, proto, SocketAddr::new(ip(server), port), None, 20, d);
                assert_eq!(tally.by_responder().get(id), Some(&20), "{proto:?} to {server}: {tally:?}");
                assert_eq!(tally.seen_sources(), vec![ip(client_ip)]);
            }
        }
        // A closed port answers with a reset / port unreachable: the client tells it apart.
        let refused = tally(&b, Proto::Tcp, "10.200.0.1:9".parse().unwrap(), None, 1, d);
        assert_eq!(refused.count(|o| *o == Outcome::Refused), 1, "{refused:?}");
        let refused = tally(&b, Proto::Udp, "10.200.0.1:9".parse().unwrap(), None, 1, d);
        assert_eq!(refused.count(|o| *o == Outcome::Refused), 1, "{refused:?}");
    }
    assert!(ours(&prefix).is_empty(), "namespaces left behind: {:?}", ours(&prefix));
    let after = netns_list();
    assert!(after.iter().all(|n| before.contains(n) || !n.starts_with(&prefix)));
}

#[test]
fn the_guard_removes_everything_after_a_panic() {
    let prefix = std::sync::Mutex::new(String::new());
    let result = std::panic::catch_unwind(|| {
        let mut t = Topology::new();
        *prefix.lock().unwrap() = t.prefix().to_string();
        let (a, b) = (t.netns("a"), t.netns("b"));
        t.veth(&a, "eth0", &b, "eth0");
        t.addr(&a, "eth0", "10.201.0.1/24");
        t.responder(&a, "A", ip("10.201.0.1"), &[80], &[53]);
        t.spawn(&b, "sleep", &["30"]);
        assert_eq!(1 + 1, 3, "a failing assertion inside a test");
    });
    assert!(result.is_err());
    let prefix = prefix.into_inner().unwrap();
    assert!(!prefix.is_empty());
    assert!(ours(&prefix).is_empty(), "namespaces left behind: {:?}", ours(&prefix));
}

#[test]
fn nothing_is_created_in_the_root_namespace() {
    let links_before = std::process::Command::new("ip").args(["-o", "link"]).output().unwrap().stdout;
    {
        let mut t = Topology::new();
        let (a, b) = (t.netns("a"), t.netns("b"));
        t.veth(&a, "knp-test0", &b, "knp-test1");
        let links_during = std::process::Command::new("ip").args(["-o", "link"]).output().unwrap().stdout;
        assert_eq!(links_before, links_during, "the root namespace saw a new interface");
    }
}
