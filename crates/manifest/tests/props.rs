//! Property tests of the manifest loader on hostile input: arbitrary text and JSON never panic;
//! one malformed object in a real manifest costs that object only, with a warning that names it
//! and the field; a truncated manifest loads a valid prefix or fails as a whole (the contract of
//! `load.rs`: a source with a syntax error is not used at all).
//!
//! Cases: `KNP_FUZZ_CASES` (`make fuzz` sets 10^6), else small defaults for `make test`.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{LazyLock, Mutex};

use nftproxy_manifest::{LoadError, Loaded, Object, Warning, load_path_with, stream_path};
use nftproxy_model::{ClusterState, IpFamily, NodeContext, resolve};
use proptest::prelude::*;
use proptest::sample::{Index, select};
use serde_json::{Map, Value, json};

fn cases(default: u32) -> u32 {
    std::env::var("KNP_FUZZ_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn config(default: u32) -> ProptestConfig {
    ProptestConfig { cases: cases(default), failure_persistence: None, ..ProptestConfig::default() }
}

const SOURCE: &str = "fuzz.yaml";

/// The real manifests of the repository: (file name, text).
const EXAMPLE_FILES: [(&str, &str); 3] = [
    ("cluster.yaml", include_str!("../../../examples/cluster.yaml")),
    ("demo.yaml", include_str!("../../../examples/demo.yaml")),
    ("parity.yaml", include_str!("../../../examples/parity.yaml")),
];

/// The examples' objects (each file is one `kind: List`).
static EXAMPLE_ITEMS: LazyLock<Vec<Vec<Value>>> = LazyLock::new(|| {
    EXAMPLE_FILES
        .iter()
        .map(|(name, text)| {
            let v: Value = serde_yaml::from_str(text).unwrap_or_else(|e| panic!("{name}: {e}"));
            v["items"].as_array().unwrap_or_else(|| panic!("{name} is a List")).clone()
        })
        .collect()
});

fn load_text(text: &str) -> Loaded {
    let mut l = Loaded::default();
    l.add_text(SOURCE, text);
    l
}

fn load_items<'a>(items: impl IntoIterator<Item = &'a Value>) -> Loaded {
    let mut l = Loaded::default();
    items.into_iter().for_each(|v| l.add_value(v.clone()));
    l
}

/// How a warning names an object: `namespace/name`, `name` without a namespace (cluster-scoped
/// objects), `<unnamed>` for a missing or empty name; from the raw metadata.
fn expected_object_name(v: &Value) -> String {
    let s = |k: &str| v.get("metadata").and_then(|m| m.get(k)).and_then(Value::as_str).filter(|s| !s.is_empty());
    let name = s("name").unwrap_or("<unnamed>");
    match s("namespace") {
        Some(ns) => format!("{ns}/{name}"),
        None => name.to_string(),
    }
}

/// What holds for any load: every object is counted once (used, skipped, ignored or warned
/// about), warnings name what they are about, and the state resolves without panicking.
fn check_loaded(l: &Loaded) -> Result<(), TestCaseError> {
    let object_warnings = l.warnings.iter().filter(|w| matches!(w, Warning::Object(_))).count();
    let st = &l.state;
    let used = st.services.len() + st.slices().len() + st.nodes.len() + st.service_cidr_objects.len();
    prop_assert!(
        l.ignored_objects + object_warnings + l.skipped_services.len() + used <= l.objects,
        "accounting: ignored {} + warned {} + skipped {} + used {} > objects {}",
        l.ignored_objects,
        object_warnings,
        l.skipped_services.len(),
        used,
        l.objects
    );
    for w in &l.warnings {
        let text = w.to_string();
        match w {
            Warning::Object(e) => {
                prop_assert!(["Service", "EndpointSlice", "Node", "ServiceCIDR"].contains(&e.kind), "{text}");
                prop_assert!(!e.field.is_empty() && !e.object.is_empty(), "{text}");
                prop_assert!(text.contains(&e.object) && text.contains(&e.field), "{text}");
            }
            Warning::Document { source, .. } => prop_assert!(source.starts_with(SOURCE), "{text}"),
        }
    }
    let ctx = NodeContext { node_name: "node-a".into(), ..Default::default() };
    for family in [IpFamily::V4, IpFamily::V6] {
        let _ = resolve(st, &ctx, family);
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Arbitrary text.

/// YAML and JSON syntax, Kubernetes words and values: soups of these reach far deeper into the
/// loader than uniformly random characters.
const TOKENS: &[&str] = &[
    "\n",
    "\n",
    "\n",
    "  ",
    "  ",
    "    ",
    "- ",
    "- ",
    ": ",
    ": ",
    ":",
    "---\n",
    "--- ",
    "...\n",
    "{",
    "}",
    "[",
    "]",
    ", ",
    ",",
    "\"",
    "'",
    "#",
    "&a ",
    "*a",
    "<<: *a",
    "!!str ",
    "!!int ",
    "!!binary ",
    "!custom ",
    "|\n",
    ">-\n",
    "? ",
    "\t",
    "\r\n",
    "null",
    "~",
    "true",
    "no",
    "1e999",
    "0x1F",
    "0o17",
    "-0",
    ".inf",
    "70000",
    "-1",
    "65535",
    "2147483648",
    "10.0.0.1",
    "010.000.000.001",
    "fd00::1",
    "10.0.0.0/8",
    "apiVersion",
    "v1",
    "discovery.k8s.io/v1",
    "networking.k8s.io/v1",
    "kind",
    "List",
    "ServiceList",
    "items",
    "Service",
    "EndpointSlice",
    "Node",
    "ServiceCIDR",
    "metadata",
    "name",
    "namespace",
    "labels",
    "kubernetes.io/service-name",
    "spec",
    "ports",
    "port",
    "nodePort",
    "targetPort",
    "protocol",
    "UDP",
    "clusterIP",
    "clusterIPs",
    "None",
    "type",
    "LoadBalancer",
    "ExternalName",
    "externalTrafficPolicy",
    "Local",
    "sessionAffinity",
    "ClientIP",
    "status",
    "loadBalancer",
    "ingress",
    "ip",
    "endpoints",
    "addresses",
    "addressType",
    "IPv4",
    "IPv6",
    "FQDN",
    "conditions",
    "ready",
    "hints",
    "forZones",
    "cidrs",
    "podCIDRs",
    "%YAML 1.2\n",
    "\u{feff}",
    "é",
    "\u{0}",
    "\u{7f}",
    "\\",
    "\\u0000",
];

fn arbitrary_text() -> impl Strategy<Value = String> {
    let soup = prop::collection::vec(select(TOKENS), 0..120).prop_map(|t| t.concat());
    let json_soup = (select(&["{", "["][..]), prop::collection::vec(select(TOKENS), 0..80))
        .prop_map(|(first, t)| format!("{first}{}", t.concat()));
    // A real manifest with tokens spliced in at one place: mostly valid, broken somewhere.
    let spliced = (0..EXAMPLE_FILES.len(), any::<Index>(), 0..8usize, prop::collection::vec(select(TOKENS), 0..6))
        .prop_map(|(f, at, remove, t)| {
            let text = EXAMPLE_FILES[f].1;
            let mut at = at.index(text.len() + 1);
            while !text.is_char_boundary(at) {
                at -= 1;
            }
            let mut end = (at + remove).min(text.len());
            while !text.is_char_boundary(end) {
                end += 1;
            }
            format!("{}{}{}", &text[..at], t.concat(), &text[end..])
        });
    prop_oneof![
        2 => any::<String>(),
        1 => prop::collection::vec(any::<u8>(), 0..200).prop_map(|b| String::from_utf8_lossy(&b).into_owned()),
        4 => soup,
        2 => json_soup,
        3 => spliced,
    ]
}

proptest! {
    #![proptest_config(config(512))]

    /// Arbitrary strings, byte soups, YAML/JSON token soups and damaged real manifests through
    /// `add_text`: no panic, consistent accounting, every warning named.
    #[test]
    fn prop_loader_never_panics_on_arbitrary_text(text in arbitrary_text()) {
        check_loaded(&load_text(&text))?;
    }
}

// ---------------------------------------------------------------------------------------------
// Arbitrary JSON values and Kubernetes-shaped objects.

/// Strings that mean something to some field somewhere, or to nothing.
const ODD_STRINGS: &[&str] = &[
    "",
    " ",
    "None",
    "ClusterIP",
    "NodePort",
    "LoadBalancer",
    "ExternalName",
    "Local",
    "Cluster",
    "ClientIP",
    "TCP",
    "UDP",
    "SCTP",
    "tcp",
    "QUIC",
    "IPv4",
    "IPv6",
    "FQDN",
    "Proxy",
    "VIP",
    "InternalIP",
    "ExternalIP",
    "10.0.0.1",
    " 10.0.0.1 ",
    "010.096.000.010",
    "10.0.0.300",
    "1.2.3",
    "1.2.3.4.5",
    "fd00::1",
    "::ffff:010.1.2.3",
    "::g",
    "10.0.0.0/8",
    "10.0.0.7/24",
    "10.0.0.0/33",
    "fd00::/200",
    "/24",
    "0/0",
    "ns/name",
    "a\nb",
    "\u{0}",
    "ü",
    "9999999999",
    "-1",
    "http",
    "kubernetes.io/service-name",
    "topology.kubernetes.io/zone",
];

fn odd_string() -> impl Strategy<Value = String> + Clone {
    prop_oneof![
        6 => select(ODD_STRINGS).prop_map(String::from),
        2 => any::<String>(),
        1 => (1..5_000usize, select(&["a", "é", "1", "/"][..])).prop_map(|(n, s)| s.repeat(n)),
    ]
}

fn odd_number() -> impl Strategy<Value = Value> + Clone {
    prop_oneof![
        4 => (-2..=70_000i64).prop_map(Value::from),
        2 => select(&[0i64, -1, 65535, 65536, 86400, 86401, 2147483647, 2147483648, -2147483649, i64::MIN, i64::MAX][..])
            .prop_map(Value::from),
        1 => any::<i64>().prop_map(Value::from),
        1 => any::<u64>().prop_map(Value::from),
        // Non-finite floats have no JSON form (serde_json makes them null).
        1 => any::<f64>().prop_map(|f| serde_json::Number::from_f64(f).map(Value::Number).unwrap_or(Value::Null)),
    ]
}

/// Any JSON tree, bounded: depth ≤ 4, ≤ 48 nodes.
fn any_json() -> impl Strategy<Value = Value> + Clone {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        odd_number(),
        odd_string().prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        let key = prop_oneof![select(TOKENS).prop_map(String::from), odd_string()];
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map(key, inner, 0..6).prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// A field's value: usually plausible, sometimes absent, sometimes anything at all.
fn field(plausible: impl Strategy<Value = Value> + Clone + 'static) -> BoxedStrategy<Option<Value>> {
    prop_oneof![2 => Just(None), 8 => plausible.prop_map(Some), 1 => any_json().prop_map(Some)].boxed()
}

fn string_from(values: &'static [&'static str]) -> BoxedStrategy<Value> {
    prop_oneof![6 => select(values).prop_map(Value::from), 1 => odd_string().prop_map(Value::from)].boxed()
}

fn list_of(item: BoxedStrategy<Value>, max: usize) -> BoxedStrategy<Value> {
    prop::collection::vec(item, 0..=max).prop_map(Value::Array).boxed()
}

fn object(fields: Vec<(&'static str, Option<Value>)>) -> Value {
    Value::Object(fields.into_iter().filter_map(|(k, v)| v.map(|v| (k.to_string(), v))).collect::<Map<_, _>>())
}

fn ip_string() -> BoxedStrategy<Value> {
    string_from(&[
        "10.96.0.10",
        "10.244.1.2",
        "fd00::10",
        "fd00:244::2",
        "203.0.113.1",
        "010.096.000.010",
        "10.0.0.300",
        "nope",
    ])
}

fn cidr_string() -> BoxedStrategy<Value> {
    string_from(&["10.0.0.0/8", "fd00::/64", " 192.168.0.0/16 ", "10.0.0.7/24", "10.0.0.0/33", "0.0.0.0/0", "x/8"])
}

fn metadata() -> BoxedStrategy<Value> {
    let labels = prop::collection::btree_map(
        string_from(&[
            "kubernetes.io/service-name",
            "service.kubernetes.io/service-proxy-name",
            "service.kubernetes.io/headless",
            "topology.kubernetes.io/zone",
            "app",
        ])
        .prop_map(|v| v.as_str().unwrap_or("app").to_string()),
        prop_oneof![4 => string_from(&["web", "zone-a", "", "other"]), 1 => any_json()],
        0..4,
    )
    .prop_map(|m| Value::Object(m.into_iter().collect()));
    let annotations = prop::collection::btree_map(
        select(
            &[
                "service.beta.kubernetes.io/load-balancer-source-ranges",
                "endpoints.kubernetes.io/last-change-trigger-time",
                "x",
            ][..],
        )
        .prop_map(String::from),
        string_from(&["10.0.0.0/8, 192.168.0.0/16", " ,, ", "2026-01-01T00:00:00Z", "nope/99"]),
        0..3,
    )
    .prop_map(|m| Value::Object(m.into_iter().collect()));
    (
        field(string_from(&["web", "a", "node-a", "kubernetes", ""])),
        field(string_from(&["default", "ns", ""])),
        field(labels),
        field(annotations),
        field(string_from(&["2026-01-01T00:00:00Z", "yesterday"])),
    )
        .prop_map(|(name, namespace, labels, annotations, created)| {
            object(vec![
                ("name", name),
                ("namespace", namespace),
                ("labels", labels),
                ("annotations", annotations),
                ("creationTimestamp", created),
            ])
        })
        .boxed()
}

fn with_kind(
    kind: &'static str,
    api_version: &'static str,
    metadata: Value,
    rest: Vec<(&'static str, Option<Value>)>,
) -> Value {
    let mut fields = vec![
        ("apiVersion", Some(Value::from(api_version))),
        ("kind", Some(Value::from(kind))),
        ("metadata", Some(metadata)),
    ];
    fields.extend(rest);
    object(fields)
}

fn service() -> BoxedStrategy<Value> {
    let port = (
        field(string_from(&["http", "", "dns"])),
        field(odd_number()),
        field(odd_number()),
        field(prop_oneof![odd_number(), string_from(&["http", ""])]),
        field(string_from(&["TCP", "UDP", "SCTP", "QUIC"])),
    )
        .prop_map(|(name, port, node_port, target, protocol)| {
            object(vec![
                ("name", name),
                ("port", port),
                ("nodePort", node_port),
                ("targetPort", target),
                ("protocol", protocol),
            ])
        })
        .boxed();
    let spec = (
        (
            field(string_from(&["ClusterIP", "NodePort", "LoadBalancer", "ExternalName", "Weird"])),
            field(string_from(&["10.96.0.10", "None", "", "fd00::10", "10.0.0.300"])),
            field(list_of(ip_string(), 3)),
            field(list_of(port, 3)),
            field(list_of(ip_string(), 2)),
            field(list_of(cidr_string(), 2)),
        ),
        (
            field(string_from(&["Local", "Cluster", "Nope"])),
            field(string_from(&["Local", "Cluster", "Nope"])),
            field(odd_number()),
            field(string_from(&["None", "ClientIP", "Sticky"])),
            field(odd_number().prop_map(|t| json!({"clientIP": {"timeoutSeconds": t}}))),
            field(string_from(&["PreferClose", "PreferSameNode"])),
        ),
    )
        .prop_map(|((ty, cip, cips, ports, ext, ranges), (etp, itp, hc, aff, affc, td))| {
            object(vec![
                ("type", ty),
                ("clusterIP", cip),
                ("clusterIPs", cips),
                ("ports", ports),
                ("externalIPs", ext),
                ("loadBalancerSourceRanges", ranges),
                ("externalTrafficPolicy", etp),
                ("internalTrafficPolicy", itp),
                ("healthCheckNodePort", hc),
                ("sessionAffinity", aff),
                ("sessionAffinityConfig", affc),
                ("trafficDistribution", td),
            ])
        });
    let ingress = (field(ip_string()), field(string_from(&["VIP", "Proxy"])), field(string_from(&["lb.example.com"])))
        .prop_map(|(ip, mode, host)| object(vec![("ip", ip), ("ipMode", mode), ("hostname", host)]))
        .boxed();
    let status = field(list_of(ingress, 3).prop_map(|i| json!({"loadBalancer": {"ingress": i}})));
    (metadata(), field(spec), status)
        .prop_map(|(m, spec, status)| with_kind("Service", "v1", m, vec![("spec", spec), ("status", status)]))
        .boxed()
}

fn endpoint_slice() -> BoxedStrategy<Value> {
    let conditions = (
        field(any::<bool>().prop_map(Value::from)),
        field(any::<bool>().prop_map(Value::from)),
        field(any::<bool>().prop_map(Value::from)),
    )
        .prop_map(|(r, s, t)| object(vec![("ready", r), ("serving", s), ("terminating", t)]));
    let hints = (
        field(list_of(string_from(&["zone-a", ""]).prop_map(|n| json!({"name": n})).boxed(), 2)),
        field(list_of(string_from(&["node-a", ""]).prop_map(|n| json!({"name": n})).boxed(), 2)),
    )
        .prop_map(|(z, n)| object(vec![("forZones", z), ("forNodes", n)]));
    let endpoint = (
        field(list_of(ip_string(), 2)),
        field(conditions),
        field(string_from(&["node-a", "node-b", ""])),
        field(string_from(&["zone-a", ""])),
        field(hints),
    )
        .prop_map(|(a, c, n, z, h)| {
            object(vec![("addresses", a), ("conditions", c), ("nodeName", n), ("zone", z), ("hints", h)])
        })
        .boxed();
    let port = (field(string_from(&["http", ""])), field(odd_number()), field(string_from(&["TCP", "UDP", "QUIC"])))
        .prop_map(|(n, p, pr)| object(vec![("name", n), ("port", p), ("protocol", pr)]))
        .boxed();
    (
        metadata(),
        field(string_from(&["IPv4", "IPv6", "FQDN", "IPv5"])),
        field(list_of(endpoint, 4)),
        field(list_of(port, 3)),
    )
        .prop_map(|(m, at, eps, ports)| {
            with_kind(
                "EndpointSlice",
                "discovery.k8s.io/v1",
                m,
                vec![("addressType", at), ("endpoints", eps), ("ports", ports)],
            )
        })
        .boxed()
}

fn node() -> BoxedStrategy<Value> {
    let address = (field(string_from(&["InternalIP", "ExternalIP", "Hostname"])), field(ip_string()))
        .prop_map(|(t, a)| object(vec![("type", t), ("address", a)]))
        .boxed();
    (metadata(), field(cidr_string()), field(list_of(cidr_string(), 2)), field(list_of(address, 3)))
        .prop_map(|(m, pc, pcs, addrs)| {
            with_kind(
                "Node",
                "v1",
                m,
                vec![
                    ("spec", Some(object(vec![("podCIDR", pc), ("podCIDRs", pcs)]))),
                    ("status", addrs.map(|a| json!({"addresses": a}))),
                ],
            )
        })
        .boxed()
}

fn service_cidr() -> BoxedStrategy<Value> {
    (metadata(), field(list_of(cidr_string(), 3)))
        .prop_map(|(m, c)| {
            with_kind("ServiceCIDR", "networking.k8s.io/v1", m, vec![("spec", c.map(|c| json!({"cidrs": c})))])
        })
        .boxed()
}

/// A Kubernetes-shaped object; sometimes with the wrong apiVersion, an unused kind or a kind
/// that is not a string.
fn k8s_object() -> BoxedStrategy<Value> {
    let odd = (
        prop_oneof![select(&["Pod", "Deployment", "", "service", "List"][..]).prop_map(Value::from), any_json()],
        prop_oneof![select(&["v1", "apps/v1", "discovery.k8s.io/v1beta1", ""][..]).prop_map(Value::from), any_json()],
        metadata(),
        any_json(),
    )
        .prop_map(|(kind, api, m, spec)| json!({"kind": kind, "apiVersion": api, "metadata": m, "spec": spec}));
    let wrong_version =
        (prop_oneof![service(), endpoint_slice(), node()], select(&["v2", "discovery.k8s.io/v1beta1", ""][..]))
            .prop_map(|(mut v, api)| {
                v["apiVersion"] = Value::from(api);
                v
            });
    prop_oneof![4 => service(), 4 => endpoint_slice(), 2 => node(), 1 => service_cidr(), 1 => odd, 1 => wrong_version]
        .boxed()
}

/// Objects, Lists of them (`List` and `ServiceList`, nested once), bare arrays and arbitrary
/// JSON trees.
fn json_document() -> impl Strategy<Value = Vec<Value>> {
    let list = (select(&["List", "ServiceList", "EndpointSliceList"][..]), prop::collection::vec(k8s_object(), 0..4))
        .prop_map(|(kind, items)| json!({"apiVersion": "v1", "kind": kind, "items": items}));
    let nested = prop::collection::vec(list.clone(), 0..3)
        .prop_map(|items| json!({"apiVersion": "v1", "kind": "List", "items": items}));
    let doc = prop_oneof![6 => k8s_object(), 2 => list, 1 => nested, 1 => any_json()];
    prop::collection::vec(doc, 1..5)
}

/// The leaves of a document in add order: what `add_value` sees after unwrapping arrays and lists.
fn flatten(v: &Value, out: &mut Vec<Value>) {
    if let Value::Array(items) = v {
        items.iter().for_each(|i| flatten(i, out));
        return;
    }
    let kind = v.get("kind").and_then(Value::as_str).unwrap_or("");
    if kind == "List" || (kind.ends_with("List") && v.get("items").is_some()) {
        if let Some(Value::Array(items)) = v.get("items") {
            items.iter().for_each(|i| flatten(i, out));
        }
        return;
    }
    out.push(v.clone());
}

proptest! {
    #![proptest_config(config(512))]

    /// Arbitrary JSON trees and Kubernetes-shaped objects through `add_value`: no panic; each
    /// object adds at most one warning, naming its kind and `namespace/name`; a List loads
    /// exactly as its items one by one; the JSON text of the same documents loads the same.
    #[test]
    fn prop_loader_never_panics_on_arbitrary_json_documents(docs in json_document()) {
        let mut whole = Loaded::default();
        docs.iter().for_each(|d| whole.add_value(d.clone()));
        check_loaded(&whole)?;

        let mut leaves = Vec::new();
        docs.iter().for_each(|d| flatten(d, &mut leaves));
        let mut one_by_one = Loaded::default();
        for leaf in &leaves {
            let before = one_by_one.warnings.len();
            one_by_one.add_value(leaf.clone());
            let new = &one_by_one.warnings[before..];
            prop_assert!(new.len() <= 1, "one object, several warnings: {new:?}");
            if let [Warning::Object(e)] = new {
                prop_assert_eq!(Some(e.kind), leaf.get("kind").and_then(Value::as_str));
                prop_assert_eq!(&e.object, &expected_object_name(leaf), "{}", e);
            }
        }
        prop_assert_eq!(&one_by_one.state, &whole.state);
        prop_assert_eq!(&one_by_one.warnings, &whole.warnings);
        prop_assert_eq!(one_by_one.objects, whole.objects);

        // The same documents as a JSON stream: the text path agrees with the value path (when
        // the text starts like JSON; a leading scalar makes it YAML).
        if docs[0].is_object() || docs[0].is_array() {
            let text: String = docs.iter().map(|d| d.to_string() + "\n").collect();
            let from_text = load_text(&text);
            // (Messages may differ in a float's last digit: serde_json parses floats fast, not
            // exactly; the objects and fields named must not.)
            let named = |l: &Loaded| -> Vec<(&'static str, String, String)> {
                l.warnings
                    .iter()
                    .map(|w| match w {
                        Warning::Object(e) => (e.kind, e.object.clone(), e.field.clone()),
                        Warning::Document { source, message } => ("document", source.clone(), message.clone()),
                    })
                    .collect()
            };
            prop_assert_eq!(named(&from_text), named(&whole));
            prop_assert_eq!(&from_text.state, &whole.state);
            prop_assert_eq!(from_text.objects, whole.objects);

            // Streamed (a scan, then each object handed over as it is parsed; `items` come
            // before `kind` in these texts, as kubectl prints them): the same objects, the same
            // warnings, nothing kept.
            let (st, result) = streamed("json-docs", &text, true);
            let l = result.expect("a JSON stream that loads");
            prop_assert_eq!(&st, &whole.state);
            prop_assert_eq!(named(&l), named(&whole));
            prop_assert_eq!(l.objects, whole.objects);
            prop_assert_eq!(&l.state, &ClusterState::default(), "nothing kept");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Real manifests with one object damaged.

/// One step of a path in a JSON value.
#[derive(Clone, Debug, PartialEq)]
enum Seg {
    Key(String),
    Index(usize),
}

fn paths(v: &Value, prefix: &mut Vec<Seg>, out: &mut Vec<Vec<Seg>>) {
    out.push(prefix.clone());
    match v {
        Value::Object(m) => {
            for (k, c) in m {
                prefix.push(Seg::Key(k.clone()));
                paths(c, prefix, out);
                prefix.pop();
            }
        }
        Value::Array(a) => {
            for (i, c) in a.iter().enumerate() {
                prefix.push(Seg::Index(i));
                paths(c, prefix, out);
                prefix.pop();
            }
        }
        _ => {}
    }
}

/// The paths a mutation may hit: everything but the object's identity (apiVersion, kind, name,
/// namespace), which decides *which* object it is rather than whether it is valid.
fn mutable_paths(obj: &Value) -> Vec<Vec<Seg>> {
    let mut all = Vec::new();
    paths(obj, &mut Vec::new(), &mut all);
    let key = |s: &Seg, k: &str| matches!(s, Seg::Key(x) if x == k);
    all.retain(|p| match &p[..] {
        [] => false,
        [a] => !key(a, "apiVersion") && !key(a, "kind") && !key(a, "metadata"),
        [m, n] if key(m, "metadata") => !key(n, "name") && !key(n, "namespace"),
        _ => true,
    });
    all
}

/// serde_path_to_error's spelling (`spec.ports[0].port`).
fn path_string(p: &[Seg]) -> String {
    let mut s = String::new();
    for seg in p {
        match seg {
            Seg::Key(k) => {
                if !s.is_empty() {
                    s.push('.');
                }
                s.push_str(k);
            }
            Seg::Index(i) => s.push_str(&format!("[{i}]")),
        }
    }
    s
}

/// Field paths compared across spellings: `labels[kubernetes.io/x]` (convert.rs) and
/// `labels.kubernetes.io/x` (serde_path_to_error) are the same field.
fn normalize(field: &str) -> String {
    field.replace('[', ".").replace(']', "")
}

/// Whether an error reported at `field` is about a mutation at `mutated`: the same field, a
/// field inside it (a wrong value found deeper), or an enclosing one (a missing field is
/// reported at its parent; `.` is the object itself).
fn related(field: &str, mutated: &str) -> bool {
    let (f, m) = (normalize(field), normalize(mutated));
    let within = |a: &str, b: &str| a == b || a.starts_with(&format!("{b}."));
    f == "." || within(&f, &m) || within(&m, &f)
}

#[derive(Clone, Debug)]
enum Mutation {
    /// A value of another JSON type (the index picks which).
    WrongType(usize),
    Null,
    Remove,
    Number(i64),
    Str(&'static str),
    Huge(usize),
    Negate,
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        3 => (0..5usize).prop_map(Mutation::WrongType),
        1 => Just(Mutation::Null),
        3 => Just(Mutation::Remove),
        2 => select(&[0i64, -1, 65536, 70000, 86401, 2147483648, -2147483649, i64::MIN][..]).prop_map(Mutation::Number),
        3 => select(&["10.0.0.300", "nope", "1.2.3", "::g", "", " ", "10.0.0.0/33", "Nope", "-1", "99999"][..]).prop_map(Mutation::Str),
        1 => (1000..20_000usize).prop_map(Mutation::Huge),
        1 => Just(Mutation::Negate),
    ]
}

fn get_mut<'a>(v: &'a mut Value, path: &[Seg]) -> &'a mut Value {
    path.iter().fold(v, |v, s| match s {
        Seg::Key(k) => &mut v[k.as_str()],
        Seg::Index(i) => &mut v[*i],
    })
}

/// Applies a mutation; returns the path an error about it should name (for a removed array
/// element: the array, whose later elements moved).
fn apply(obj: &mut Value, path: &[Seg], m: &Mutation) -> Vec<Seg> {
    let (parent, last) = path.split_at(path.len() - 1);
    if let Mutation::Remove = m {
        match (&last[0], get_mut(obj, parent)) {
            (Seg::Key(k), Value::Object(o)) => {
                o.remove(k);
            }
            (Seg::Index(i), Value::Array(a)) => {
                a.remove(*i);
                return parent.to_vec();
            }
            _ => unreachable!("paths come from the value"),
        }
        return path.to_vec();
    }
    let target = get_mut(obj, path);
    *target = match m {
        Mutation::WrongType(k) => {
            let others: Vec<Value> = [json!("x"), json!(7), json!(true), json!([]), json!({}), json!(-1.5)]
                .into_iter()
                .filter(|c| std::mem::discriminant(c) != std::mem::discriminant(target))
                .collect();
            others[k % others.len()].clone()
        }
        Mutation::Null => Value::Null,
        Mutation::Number(n) => json!(n),
        Mutation::Str(s) => json!(s),
        Mutation::Huge(n) => json!("0123456789abcdé".chars().cycle().take(*n).collect::<String>()),
        Mutation::Negate => match target.as_i64() {
            Some(n) => json!(n.wrapping_neg()),
            None => json!(-1),
        },
        Mutation::Remove => unreachable!(),
    };
    path.to_vec()
}

/// The object's key in the state, to take it out of a load for comparison.
fn remove_from(st: &mut ClusterState, obj: &Value) {
    let s = |k: &str| obj["metadata"][k].as_str().unwrap_or("").to_string();
    match obj["kind"].as_str() {
        Some("Service") => {
            st.remove_service(&nftproxy_model::ServiceName::new(s("namespace"), s("name")));
        }
        Some("EndpointSlice") => {
            st.remove_slice(&s("namespace"), &s("name"));
        }
        Some("Node") => {
            st.nodes.remove(&s("name"));
        }
        Some("ServiceCIDR") => {
            st.service_cidr_objects.remove(&s("name"));
        }
        other => unreachable!("examples hold no {other:?}"),
    }
}

/// Every example object loaded without object `skip` (cached: the same for many cases).
fn baseline(file: usize, skip: usize) -> Loaded {
    static CACHE: LazyLock<Mutex<BTreeMap<(usize, usize), Loaded>>> = LazyLock::new(Default::default);
    let mut cache = CACHE.lock().unwrap_or_else(|e| e.into_inner());
    cache
        .entry((file, skip))
        .or_insert_with(|| {
            let items = &EXAMPLE_ITEMS[file];
            load_items(items.iter().enumerate().filter(|(i, _)| *i != skip).map(|(_, v)| v))
        })
        .clone()
}

proptest! {
    #![proptest_config(config(512))]

    /// One field of one object of a real manifest damaged (wrong type, null, missing,
    /// out-of-range or negative number, invalid address, huge string): no panic; at most one
    /// new warning, naming the object and the damaged field (or the field that contains it, or
    /// one inside it); every other object loads exactly as before.
    #[test]
    fn prop_mutated_real_manifests_keep_good_objects(
        file in 0..EXAMPLE_FILES.len(),
        which in any::<Index>(),
        at in any::<Index>(),
        m in mutation(),
    ) {
        let items = &EXAMPLE_ITEMS[file];
        let idx = which.index(items.len());
        let original = &items[idx];
        let candidates = mutable_paths(original);
        prop_assume!(!candidates.is_empty());
        let path = &candidates[at.index(candidates.len())];
        let mut mutated = original.clone();
        let reported_at = path_string(&apply(&mut mutated, path, &m));

        let loaded = load_items(items.iter().enumerate().map(|(i, v)| if i == idx { &mutated } else { v }));
        check_loaded(&loaded)?;
        let base = baseline(file, idx);

        // The other objects: the same warnings, the same state.
        let mut new_warnings = loaded.warnings.clone();
        for w in &base.warnings {
            let at = new_warnings.iter().position(|x| x == w);
            prop_assert!(at.is_some(), "the warning {} about another object went away", w);
            new_warnings.remove(at.unwrap());
        }
        prop_assert!(new_warnings.len() <= 1, "several warnings for one object: {new_warnings:?}");
        let mut others = loaded.state.clone();
        remove_from(&mut others, &mutated);
        prop_assert_eq!(&others, &base.state, "another object changed");

        if let Some(w) = new_warnings.first() {
            let Warning::Object(e) = w else { return Err(TestCaseError::fail(format!("not an object warning: {w}"))) };
            prop_assert_eq!(Some(e.kind), original["kind"].as_str());
            prop_assert_eq!(&e.object, &expected_object_name(original));
            // The damaged object is not used at all.
            prop_assert_eq!(&loaded.state, &base.state, "a rejected object left something behind");
            // An object that is rejected already (cluster.yaml's shop/broken) may be rejected
            // for its old reason.
            let was_bad = !load_items([original]).warnings.is_empty();
            prop_assert!(
                was_bad || related(&e.field, &reported_at),
                "the warning names {:?}, the damage was at {:?}: {}",
                e.field,
                reported_at,
                w
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Truncated real manifests.

/// Every example in four spellings: its YAML, one JSON document, a JSON stream of its items and
/// a multi-document YAML of its items.
static TRUNCATABLE: LazyLock<Vec<(String, Loaded)>> = LazyLock::new(|| {
    let mut texts = Vec::new();
    for ((_, yaml), items) in EXAMPLE_FILES.iter().zip(EXAMPLE_ITEMS.iter()) {
        texts.push(yaml.to_string());
        texts.push(serde_json::to_string_pretty(&json!({"apiVersion": "v1", "kind": "List", "items": items})).unwrap());
        texts.push(items.iter().map(|i| i.to_string() + "\n").collect());
        texts.push(items.iter().map(|i| serde_yaml::to_string(i).unwrap()).collect::<Vec<_>>().join("---\n"));
    }
    texts
        .into_iter()
        .map(|t| {
            let full = load_text(&t);
            assert!(full.warnings.iter().all(|w| matches!(w, Warning::Object(_))), "{:?}", full.warnings);
            (t, full)
        })
        .collect()
});

/// Entries of a state that differ from (or are missing in) the full load.
fn differing(part: &ClusterState, full: &ClusterState) -> Vec<String> {
    let mut out = Vec::new();
    for (k, v) in &part.services {
        if full.services.get(k) != Some(v) {
            out.push(format!("Service {k}"));
        }
    }
    for (k, v) in part.slices() {
        if full.slices().get(k) != Some(v) {
            out.push(format!("EndpointSlice {k:?}"));
        }
    }
    for (k, v) in &part.nodes {
        if full.nodes.get(k) != Some(v) {
            out.push(format!("Node {k}"));
        }
    }
    for (k, v) in &part.service_cidr_objects {
        if full.service_cidr_objects.get(k) != Some(v) {
            out.push(format!("ServiceCIDR {k}"));
        }
    }
    out
}

/// A file of this process, removed after each use.
fn scratch_file(tag: &str) -> PathBuf {
    std::env::temp_dir().join(format!("knp-manifest-props-{}-{tag}.yaml", std::process::id()))
}

/// `stream_path` on `text` (written to a scratch file): the objects it handed over, upserted in
/// order into a state as the tracker does, and what it returned.
fn streamed(tag: &str, text: &str, allow_empty: bool) -> (ClusterState, Result<Loaded, LoadError>) {
    let f = scratch_file(tag);
    std::fs::write(&f, text).unwrap();
    let got = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let sink = got.clone();
    let result = stream_path(&f, allow_empty, move |o| sink.lock().unwrap().push(o));
    std::fs::remove_file(&f).unwrap();
    let mut st = ClusterState::default();
    for o in std::mem::take(&mut *got.lock().unwrap()) {
        match o {
            Object::Service(s) => st.upsert_service(s),
            Object::Slice(s) => st.upsert_slice(s),
            Object::Node(n) => st.upsert_node(n),
            Object::ServiceCidr((name, cidrs)) => {
                st.service_cidr_objects.insert(name, cidrs);
            }
        }
    }
    (st, result)
}

proptest! {
    #![proptest_config(config(512))]

    /// A real manifest cut at any byte: the text parses to a valid prefix (every object equal
    /// to the full load's, except at most the one that was cut) or has a document error; and
    /// `load_path` agrees: a document error fails the whole file (nothing of it used), a
    /// source without objects fails unless allowed, anything else is the same state.
    #[test]
    fn prop_truncated_real_manifests_load_a_prefix_or_fail(
        which in 0..12usize,
        cut in any::<Index>(),
        allow_empty in any::<bool>(),
        via_file in prop::bool::weighted(0.25),
    ) {
        let (text, full) = &TRUNCATABLE[which % TRUNCATABLE.len()];
        let mut cut = cut.index(text.len() + 1);
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        let part = &text[..cut];
        let l = load_text(part);
        check_loaded(&l)?;
        prop_assert!(l.objects <= full.objects, "{} objects from a prefix of {}", l.objects, full.objects);
        let document_error = l.warnings.iter().any(|w| matches!(w, Warning::Document { .. }));
        let diff = differing(&l.state, &full.state);
        prop_assert!(diff.len() <= 1, "cut at {cut}: more than the cut object differs: {diff:?}");
        let new_warnings: Vec<&Warning> =
            l.warnings.iter().filter(|w| matches!(w, Warning::Object(_)) && !full.warnings.contains(w)).collect();
        prop_assert!(new_warnings.len() <= 1, "cut at {cut}: {new_warnings:?}");
        if cut == text.len() {
            prop_assert_eq!(&l.state, &full.state);
        }

        if via_file {
            // Only a quarter of the cases: the file round trip adds nothing per byte position.
            let f = scratch_file("truncated");
            std::fs::write(&f, part).unwrap();
            let result = load_path_with(&f, allow_empty);
            std::fs::remove_file(&f).unwrap();
            match result {
                Ok(loaded) => {
                    prop_assert!(!document_error, "a document error, yet the file loaded");
                    prop_assert!(allow_empty || loaded.objects > 0);
                    prop_assert_eq!(&loaded.state, &l.state);
                }
                Err(LoadError::Parse { .. }) => prop_assert!(document_error, "a parse error without a document error"),
                Err(LoadError::NoObjects(_)) => prop_assert!(!document_error && l.objects == 0 && !allow_empty),
                Err(e) => return Err(TestCaseError::fail(format!("unexpected {e}"))),
            }
            // Streamed: the same objects when it loads; nothing at all handed over when not.
            let (st, streamed) = streamed("truncated-streamed", part, allow_empty);
            match (streamed, load_path_with(&{ let f = scratch_file("again"); std::fs::write(&f, part).unwrap(); f }, allow_empty)) {
                (Ok(_), Ok(loaded)) => prop_assert_eq!(&st, &loaded.state),
                (Err(a), Err(b)) => {
                    prop_assert_eq!(a.to_string().replace("truncated-streamed", "again"), b.to_string());
                    prop_assert_eq!(&st, &ClusterState::default(), "a source that does not load hands over nothing");
                }
                (a, b) => return Err(TestCaseError::fail(format!("stream {a:?} vs load {b:?}"))),
            }
            let _ = std::fs::remove_file(scratch_file("again"));
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Regressions: failures the property tests found, as plain tests with the shrunk input.

/// Found by prop_loader_never_panics_on_arbitrary_json_documents: a type error in an object with
/// a namespace but no name was reported for `<unnamed>`, while a conversion error in the same
/// object says `default/<unnamed>`.
#[test]
fn a_nameless_object_is_named_alike_for_type_and_conversion_errors() {
    let mut l = Loaded::default();
    l.add_value(json!({"apiVersion": "v1", "kind": "Service", "metadata": {"namespace": "default"}, "spec": {"externalIPs": false}}));
    l.add_value(json!({"apiVersion": "v1", "kind": "Service", "metadata": {"namespace": "default"}, "spec": {}}));
    let names: Vec<String> = l
        .warnings
        .iter()
        .map(|w| match w {
            Warning::Object(e) => e.object.clone(),
            other => panic!("{other}"),
        })
        .collect();
    assert_eq!(names, ["default/<unnamed>", "default/<unnamed>"]);
}

/// Found by prop_loader_never_panics_on_arbitrary_json_documents: an empty name made a warning
/// that named nothing (`ServiceCIDR : metadata.name: missing`).
#[test]
fn an_empty_name_is_reported_as_unnamed() {
    let mut l = Loaded::default();
    l.add_value(json!({"apiVersion": "networking.k8s.io/v1", "kind": "ServiceCIDR", "metadata": {"name": ""}}));
    l.add_value(json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "", "namespace": ""}, "spec": 1}));
    let text: Vec<String> = l.warnings.iter().map(|w| w.to_string()).collect();
    assert_eq!(text[0], "ServiceCIDR <unnamed>: metadata.name: missing (object skipped)");
    assert!(text[1].starts_with("Service <unnamed>: spec: invalid type"), "{}", text[1]);
}
