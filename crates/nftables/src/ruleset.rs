//! The desired state of one table: chains with their rules, sets with their elements. Every
//! rule carries both its `nft` text and its expressions, so what `render` prints and what `sync`
//! programs come from one value.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::net::IpAddr;

use nftproxy_nft_wire::{BaseChain, Elem, ElemData, Expr, SetSpec, Verdict};

use crate::family::Family;

pub const TABLE: &str = "kube-nftproxy";
pub const TABLE_COMMENT: &str = "rules for kube-nftproxy";

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    /// The rule as `nft -f` accepts it (without the comment).
    pub text: String,
    pub exprs: Vec<Expr>,
    pub comment: Option<String>,
}

impl Rule {
    pub fn new(text: impl Into<String>, exprs: Vec<Expr>) -> Rule {
        Rule { text: text.into(), exprs, comment: None }
    }
    pub fn comment(mut self, c: impl Into<String>) -> Rule {
        self.comment = Some(c.into());
        self
    }
    /// Concatenates a match and a statement: `ct state new` + `jump x`.
    pub fn then(mut self, other: Rule) -> Rule {
        self.text = format!("{} {}", self.text, other.text);
        self.exprs.extend(other.exprs);
        self.comment = other.comment.or(self.comment);
        self
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Chain {
    pub base: Option<BaseChain>,
    /// Shared: the pick chains of thousands of services are one value, cloned by reference.
    pub rules: std::sync::Arc<Vec<Rule>>,
    /// For a pick chain: the rule that sends its frontends here, which lives in a chain of the
    /// fixed part. It comes and goes with this chain ([`crate::table::Table`] places it).
    pub route: Option<Route>,
}

/// A rule in fixed chain `from` (at its route slot) that leads to another chain:
/// `… @cluster-3-frontends goto cluster-3` in `services`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Route {
    pub from: &'static str,
    pub rule: Rule,
}

/// A set declaration: the wire spec plus how `nft` writes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SetDecl {
    pub spec: SetSpec,
    /// `type …` or `typeof …`, as in an `nft -f` file.
    pub type_text: String,
    pub comment: Option<std::borrow::Cow<'static, str>>,
    /// Where its elements go in a cold start: backend maps before the maps that lead to them,
    /// so that a transaction never holds an entry point without its endpoints.
    pub stage: u8,
}

/// One field of an element key or value; encoded padded to 4 bytes, as in nft's registers.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Field {
    Addr(IpAddr),
    Proto(u8),
    Port(u16),
    /// A numgen index: host byte order, because numgen writes host-endian values.
    Index(u32),
}

impl Field {
    fn encode(&self, out: &mut Vec<u8>) {
        match self {
            Field::Addr(IpAddr::V4(a)) => out.extend_from_slice(&a.octets()),
            Field::Addr(IpAddr::V6(a)) => out.extend_from_slice(&a.octets()),
            Field::Proto(p) => out.push(*p),
            Field::Port(p) => out.extend_from_slice(&p.to_be_bytes()),
            Field::Index(i) => out.extend_from_slice(&i.to_ne_bytes()),
        }
        out.resize(out.len().next_multiple_of(4), 0);
    }
    fn text(&self) -> String {
        match self {
            Field::Addr(a) => a.to_string(),
            Field::Proto(6) => "tcp".into(),
            Field::Proto(17) => "udp".into(),
            Field::Proto(132) => "sctp".into(),
            Field::Proto(p) => p.to_string(),
            Field::Port(p) => p.to_string(),
            Field::Index(i) => i.to_string(),
        }
    }
}

/// An element key: up to four fields inline.
pub type Key = smallvec::SmallVec<[Field; 4]>;
/// Element data: address and port inline.
pub type Fields = smallvec::SmallVec<[Field; 2]>;

fn encode(fields: &[Field]) -> Vec<u8> {
    let mut v = Vec::new();
    for f in fields {
        f.encode(&mut v);
    }
    v
}

fn fields_text(fields: &[Field]) -> String {
    fields.iter().map(Field::text).collect::<Vec<_>>().join(" . ")
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Value {
    /// Plain set element.
    None,
    Verdict(Verdict),
    Fields(Fields),
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ElemValue {
    pub value: Value,
    /// Shared by all elements of a service port: cloning it is a reference count.
    pub comment: Option<std::sync::Arc<str>>,
}

impl ElemValue {
    pub fn wire(&self, key: &Key) -> Elem {
        Elem {
            key: encode(key),
            data: match &self.value {
                Value::None => None,
                Value::Verdict(v) => Some(ElemData::Verdict(v.clone())),
                Value::Fields(f) => Some(ElemData::Value(encode(f))),
            },
            timeout_ms: None,
            comment: self.comment.as_deref().map(str::to_string),
        }
    }
}

pub fn verdict_text(v: &Verdict) -> String {
    match v {
        Verdict::Accept => "accept".into(),
        Verdict::Drop => "drop".into(),
        Verdict::Return => "return".into(),
        Verdict::Jump(c) => format!("jump {c}"),
        Verdict::Goto(c) => format!("goto {c}"),
    }
}

fn elem_text(key: &Key, v: &ElemValue) -> String {
    let mut s = fields_text(key);
    if let Some(c) = &v.comment {
        let _ = write!(s, " comment {}", quote(c));
    }
    match &v.value {
        Value::None => {}
        Value::Verdict(vd) => {
            let _ = write!(s, " : {}", verdict_text(vd));
        }
        Value::Fields(f) => {
            let _ = write!(s, " : {}", fields_text(f));
        }
    }
    s
}

fn quote(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "'"))
}

/// One table's desired state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ruleset {
    pub family: Family,
    pub chains: BTreeMap<String, Chain>,
    pub sets: BTreeMap<String, SetDecl>,
    pub elements: BTreeMap<String, BTreeMap<Key, ElemValue>>,
    /// In the fixed part: where in a chain the [`Route`] rules of other chains go (index among
    /// its own rules).
    pub route_slots: BTreeMap<String, usize>,
}

impl Ruleset {
    pub fn new(family: Family) -> Ruleset {
        Ruleset {
            family,
            chains: BTreeMap::new(),
            sets: BTreeMap::new(),
            elements: BTreeMap::new(),
            route_slots: BTreeMap::new(),
        }
    }

    pub fn chain(&mut self, name: &str, base: Option<BaseChain>) -> &mut Chain {
        self.chains.entry(name.to_string()).or_insert(Chain { base, rules: Default::default(), route: None })
    }

    pub fn add_rule(&mut self, chain: &str, rule: Rule) {
        std::sync::Arc::make_mut(&mut self.chain(chain, None).rules).push(rule);
    }

    pub fn set(&mut self, decl: SetDecl) {
        self.elements.entry(decl.spec.name.clone()).or_default();
        self.sets.insert(decl.spec.name.clone(), decl);
    }

    pub fn element(&mut self, set: &str, key: Key, value: Value, comment: Option<&str>) {
        let v = ElemValue { value, comment: comment.map(std::sync::Arc::from) };
        // Look the set up before allocating its name: this runs once per element.
        match self.elements.get_mut(set) {
            Some(m) => {
                m.insert(key, v);
            }
            None => {
                self.elements.entry(set.to_string()).or_default().insert(key, v);
            }
        }
    }
    pub fn element_count(&self) -> usize {
        self.elements.values().map(BTreeMap::len).sum()
    }

    /// The table in `nft -f` syntax. Preceded by the idiom that replaces an existing table in the
    /// same transaction (`table …` creates it if missing so that `delete table` cannot fail).
    pub fn render(&self) -> String {
        let fam = self.family.word();
        let mut out = format!("table {fam} {TABLE}\ndelete table {fam} {TABLE}\ntable {fam} {TABLE} {{\n");
        let _ = writeln!(out, "\tcomment {}", quote(TABLE_COMMENT));
        for (name, decl) in &self.sets {
            let kind = if decl.spec.data.is_some() { "map" } else { "set" };
            let _ = writeln!(out, "\n\t{kind} {name} {{\n\t\t{}", decl.type_text);
            if let Some(c) = &decl.comment {
                let _ = writeln!(out, "\t\tcomment {}", quote(c));
            }
            let elems = &self.elements[name];
            if !elems.is_empty() {
                let list: Vec<String> = elems.iter().map(|(k, v)| elem_text(k, v)).collect();
                let _ = writeln!(out, "\t\telements = {{ {} }}", list.join(",\n\t\t\t     "));
            }
            out.push_str("\t}\n");
        }
        for (name, chain) in &self.chains {
            let _ = writeln!(out, "\n\tchain {name} {{");
            if let Some(b) = &chain.base {
                let _ = writeln!(
                    out,
                    "\t\ttype {} hook {} priority {}; policy accept;",
                    b.chain_type,
                    hook_name(b.hook),
                    b.priority
                );
            }
            for r in chain.rules.iter() {
                match &r.comment {
                    Some(c) => {
                        let _ = writeln!(out, "\t\t{} comment {}", r.text, quote(c));
                    }
                    None => {
                        let _ = writeln!(out, "\t\t{}", r.text);
                    }
                }
            }
            out.push_str("\t}\n");
        }
        out.push_str("}\n");
        out
    }
}

fn hook_name(h: u32) -> &'static str {
    match h {
        0 => "prerouting",
        1 => "input",
        2 => "forward",
        3 => "output",
        _ => "postrouting",
    }
}
