use crate::*;

#[test]
fn chain_hashes_match_kube_proxys() {
    // From kube-proxy's iptables proxier tests (ns1/svc1, port p80, TCP, endpoint 10.180.0.1:80).
    assert_eq!(hash16("ns1/svc1:p80tcp"), "XPGD46QRK7WJZT7O");
    assert_eq!(hash16("ns1/svc1:p80tcp10.180.0.1:80"), "SXIVWICOYRO3J4NJ");
}

#[test]
fn probabilities_have_ten_decimals() {
    assert_eq!(probability(3), "0.3333333333");
    assert_eq!(probability(2), "0.5000000000");
    assert_eq!(probability(7), "0.1428571429");
}

#[test]
fn stale_service_chains_are_flushed_and_deleted_in_the_same_restore() {
    let text = "*filter\n:KUBE-SERVICES - [0:0]\nCOMMIT\n*nat\n:KUBE-SERVICES - [0:0]\n:KUBE-SVC-AAAA - [0:0]\n-A KUBE-SERVICES -j KUBE-SVC-AAAA\nCOMMIT\n";
    let existing =
        "*nat\n:PREROUTING ACCEPT [0:0]\n:KUBE-SVC-AAAA - [0:0]\n:KUBE-SEP-OLD - [0:0]\n:OTHER-CHAIN - [0:0]\nCOMMIT\n";
    let out = with_stale_chains_deleted(text, existing);
    assert_eq!(
        out,
        "*filter\n:KUBE-SERVICES - [0:0]\nCOMMIT\n*nat\n:KUBE-SEP-OLD - [0:0]\n:KUBE-SERVICES - [0:0]\n:KUBE-SVC-AAAA - [0:0]\n-A KUBE-SERVICES -j KUBE-SVC-AAAA\n-X KUBE-SEP-OLD\nCOMMIT\n"
    );
}
