//! Seeded random clusters: Services of every type with both traffic policies in every
//! combination, ClientIP affinity, source ranges, external and LB IPs, several ports, and
//! endpoints none / local / remote / terminating / not ready, on this node and others. Pure and
//! deterministic: the same seed gives the same manifests, so a failure names its reproducer.

use std::fmt::Write as _;

/// A small deterministic PRNG (xorshift64*): no dependency, same sequence on every machine.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    pub fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }
}

/// The node the generated clusters are resolved for, and the others endpoints live on.
pub const GEN_NODE: &str = "node-a";
const NODES: [&str; 3] = ["node-a", "node-b", "node-c"];

/// One generated Service (manifest text of the Service and its slices) and what it is, for
/// reproducers.
pub struct GenService {
    pub name: String,
    pub manifest: String,
}

/// `services` Services for a seed; Service `i` gets ClusterIP 10.96.(i/250).(i%250+1) and, when
/// dual-stack, fd00:96::(i+1).
pub fn cluster(seed: u64, services: usize) -> Vec<GenService> {
    let mut r = Rng::new(seed);
    (0..services).map(|i| service(&mut r, i)).collect()
}

/// All of a cluster's manifests as one multi-document YAML stream.
pub fn manifests(services: &[GenService]) -> String {
    services.iter().map(|s| s.manifest.as_str()).collect::<Vec<_>>().join("---\n")
}

fn service(r: &mut Rng, i: usize) -> GenService {
    let name = format!("svc{i}");
    let ty = *r.pick(&["ClusterIP", "NodePort", "LoadBalancer"]);
    let etp = *r.pick(&["Cluster", "Local"]);
    let itp = *r.pick(&["Cluster", "Local"]);
    let dual = r.chance(20);
    let cip4 = format!("10.96.{}.{}", i / 250, i % 250 + 1);
    let cip6 = format!("fd00:96::{:x}", i + 1);
    let mut m = String::new();
    let _ = writeln!(m, "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: gen}}\nspec:");
    let _ = writeln!(m, "  type: {ty}");
    if dual {
        let _ = writeln!(m, "  clusterIP: {cip4}\n  clusterIPs: [{cip4}, \"{cip6}\"]\n  ipFamilies: [IPv4, IPv6]");
    } else {
        let _ = writeln!(m, "  clusterIP: {cip4}");
    }
    if ty != "ClusterIP" || r.chance(30) {
        let _ = writeln!(m, "  externalTrafficPolicy: {etp}");
    }
    let _ = writeln!(m, "  internalTrafficPolicy: {itp}");
    if r.chance(25) {
        let _ = writeln!(m, "  externalIPs: [198.51.{}.{}]", i / 250, i % 250 + 1);
    }
    if r.chance(20) {
        let _ = writeln!(
            m,
            "  sessionAffinity: ClientIP\n  sessionAffinityConfig: {{clientIP: {{timeoutSeconds: {}}}}}",
            1 + r.below(10800)
        );
    }
    let lb = ty == "LoadBalancer";
    if lb && r.chance(40) {
        let _ = writeln!(m, "  loadBalancerSourceRanges: [10.0.1.0/24, 192.168.0.0/16]");
    }
    if lb && etp == "Local" {
        let _ = writeln!(m, "  healthCheckNodePort: {}", 32000 + i % 700);
    }
    let nports = 1 + r.below(3) as usize;
    let protos: Vec<&str> = (0..nports).map(|_| *r.pick(&["TCP", "TCP", "UDP", "SCTP"])).collect();
    let _ = writeln!(m, "  ports:");
    for (p, proto) in protos.iter().enumerate() {
        let np = if ty != "ClusterIP" { format!(", nodePort: {}", 30000 + (i * 3 + p) % 2700) } else { String::new() };
        let _ = writeln!(m, "  - {{name: p{p}, port: {}, protocol: {proto}, targetPort: 8080{np}}}", 80 + p);
    }
    if lb {
        let _ = writeln!(m, "status: {{loadBalancer: {{ingress: [{{ip: 203.0.{}.{}}}]}}}}", i / 250, i % 250 + 1);
    }
    // Endpoints: none, or a few with random conditions and nodes.
    let neps = *r.pick(&[0usize, 1, 2, 3, 5]);
    for fam in if dual { vec!["IPv4", "IPv6"] } else { vec!["IPv4"] } {
        if neps == 0 && r.chance(50) {
            continue; // no slice at all, or an empty one
        }
        let _ = writeln!(
            m,
            "---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: {name}-{}, namespace: gen, labels: {{kubernetes.io/service-name: {name}}}}}\naddressType: {fam}",
            fam.to_lowercase()
        );
        let _ = writeln!(m, "ports:");
        for (p, proto) in protos.iter().enumerate() {
            let _ = writeln!(m, "- {{name: p{p}, port: 8080, protocol: {proto}}}");
        }
        if neps == 0 {
            let _ = writeln!(m, "endpoints: []");
            continue;
        }
        let _ = writeln!(m, "endpoints:");
        for e in 0..neps {
            let addr = if fam == "IPv4" {
                format!("10.244.{}.{}", 1 + (i + e) % 200, 2 + e)
            } else {
                format!("\"fd00:244:{:x}::{:x}\"", 1 + (i + e) % 200, 2 + e)
            };
            let node = *r.pick(&NODES);
            let cond = match r.below(6) {
                0 => "{ready: false, serving: true, terminating: true}",
                1 => "{ready: false, serving: false, terminating: true}",
                2 => "{ready: false}",
                _ => "{ready: true}",
            };
            let _ = writeln!(m, "- {{addresses: [{addr}], nodeName: {node}, conditions: {cond}}}");
        }
    }
    GenService { name, manifest: m }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_cluster_and_every_manifest_loads_cleanly() {
        let a = manifests(&cluster(7, 60));
        assert_eq!(a, manifests(&cluster(7, 60)));
        assert_ne!(a, manifests(&cluster(8, 60)));
        let mut l = nftproxy_manifest::Loaded::default();
        l.add_text("gen", &a);
        assert!(l.warnings.is_empty(), "{:?}", l.warnings);
        assert_eq!(l.state.services.len(), 60);
    }
}
