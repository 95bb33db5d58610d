//! kube-proxy nftables' object names for per-service objects: `hashAndTruncate`.

use data_encoding::BASE32;
use nftproxy_model::{ResolvedEndpoint, ResolvedServicePort};
use sha2::{Digest, Sha256};

/// knftables' name limit minus room for prefixes, as kube-proxy (`chainNameBaseLengthMax`).
const BASE_MAX: usize = 240;

/// `base32(sha256(name))[:8] + "-" + name`, truncated with "..." past 240 bytes.
pub fn hash_and_truncate(name: &str) -> String {
    let digest = Sha256::digest(name.as_bytes());
    let hash = &BASE32.encode(&digest)[..8];
    let mut s = format!("{hash}-{name}");
    if s.len() > BASE_MAX {
        let mut end = BASE_MAX - 3;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
        s.push_str("...");
    }
    s
}

/// `ns/svc/proto/port` hashed: the base of a service port's chains.
pub fn service_base(p: &ResolvedServicePort) -> String {
    let s = &p.name.service;
    hash_and_truncate(&format!("{}/{}/{}/{}", s.namespace, s.name, p.protocol.lower(), p.name.port))
}

/// `ns/svc/proto/port__ip/port` hashed (IPv6 colons become dots), the base of an endpoint's
/// chain and affinity set.
pub fn endpoint_base(p: &ResolvedServicePort, e: &ResolvedEndpoint) -> String {
    let s = &p.name.service;
    let ip = e.ip.to_string().replace(':', ".");
    hash_and_truncate(&format!("{}/{}/{}/{}__{ip}/{}", s.namespace, s.name, p.protocol.lower(), p.name.port, e.port))
}

/// The affinity set of an endpoint, named as kube-proxy names it (`affinity-` and the endpoint's
/// base). A new timeout is the same set declared again: the kernel updates the timeout in place
/// and keeps the clients the set remembers, as kube-proxy's `tx.Add` of the set does.
pub fn affinity_set_name(p: &ResolvedServicePort, e: &ResolvedEndpoint) -> String {
    format!("affinity-{}", endpoint_base(p, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_match_kube_proxys_golden_names() {
        // From kube-proxy's nftables proxier tests.
        assert_eq!(hash_and_truncate("ns1/svc1/tcp/p80"), "ULMVA6XW-ns1/svc1/tcp/p80");
        assert_eq!(hash_and_truncate("ns1/svc1/tcp/p80__10.180.0.1/80"), "5OJB2KTY-ns1/svc1/tcp/p80__10.180.0.1/80");
    }

    #[test]
    fn long_names_are_truncated() {
        let long = "n".repeat(300);
        let h = hash_and_truncate(&long);
        assert_eq!(h.len(), 240);
        assert!(h.ends_with("..."));
    }
}
