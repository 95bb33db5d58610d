//! Small manifest builders for tests: Services and EndpointSlices as YAML text, fed through the
//! same loader as `--from`.

/// A Service in namespace `test`. `extra` is appended to `spec` (YAML flow mapping entries).
pub fn service(name: &str, cluster_ip: &str, ports: &str, extra: &str) -> String {
    let sep = if extra.is_empty() { "" } else { ", " };
    format!(
        "---\napiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: test}}\nspec: {{clusterIP: {cluster_ip}, ports: [{ports}]{sep}{extra}}}\n"
    )
}

/// One endpoint: address, node name, and conditions (`ready`, `terminating`).
pub struct Ep<'a> {
    pub ip: &'a str,
    pub node: &'a str,
    pub ready: bool,
    pub terminating: bool,
}

pub fn ep<'a>(ip: &'a str, node: &'a str) -> Ep<'a> {
    Ep { ip, node, ready: true, terminating: false }
}

/// An EndpointSlice of Service `service` in namespace `test`.
pub fn slice(service: &str, name: &str, family: &str, ports: &str, eps: &[Ep]) -> String {
    let mut s = format!(
        "---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: {name}, namespace: test, labels: {{kubernetes.io/service-name: {service}}}}}\naddressType: {family}\nports: [{ports}]\nendpoints:\n"
    );
    for e in eps {
        s.push_str(&format!(
            "- {{addresses: ['{}'], nodeName: {}, conditions: {{ready: {}, serving: {}, terminating: {}}}}}\n",
            e.ip,
            e.node,
            e.ready,
            e.ready || e.terminating,
            e.terminating
        ));
    }
    if eps.is_empty() {
        s.push_str("  []\n");
        s = s.replace("endpoints:\n  []\n", "endpoints: []\n");
    }
    s
}
