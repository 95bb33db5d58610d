//! The desired state of one table: chains with their rules, sets with their elements. Every
//! rule carries both its `nft` text and its expressions, so what `render` prints and what `sync`
//! programs come from one value.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write;
use std::net::IpAddr;

use nftproxy_nft_wire::{BaseChain, Elem, ElemDataRef, ElemRef, Expr, SetSpec, Verdict};

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

/// Field kinds in [`Packed::kinds`], 3 bits each (0 ends the list).
const KIND_ADDR4: u16 = 1;
const KIND_ADDR6: u16 = 2;
const KIND_PROTO: u16 = 3;
const KIND_PORT: u16 = 4;
const KIND_INDEX: u16 = 5;
const KIND_BITS: u32 = 3;
/// The longest key we use: IPv6 address . IPv6 address (hairpin).
const PACKED_MAX: usize = 32;

/// An element key or value stored once, as the kernel holds it: its fields packed and padded to
/// 4 bytes each (the wire bytes), plus 3 bits per field saying what each is, so that it can be
/// printed and ordered without its set's type. 36 bytes and no heap allocation, where a list of
/// [`Field`]s took 88 bytes: the programmed-table mirror holds one per element (400,000 at 50k
/// Services × 3 endpoints).
///
/// `N`, the most bytes it holds: 32 for a key (IPv6 address . IPv6 address), 20 for element data
/// (IPv6 address . port), which makes an element's value 32 bytes instead of 40.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Packed<const N: usize = PACKED_MAX> {
    kinds: u16,
    len: u8,
    /// Zero past `len`, so that the derived equality and hash see only the key.
    bytes: [u8; N],
}

impl<const N: usize> Packed<N> {
    pub fn of(fields: &[Field]) -> Packed<N> {
        let mut p = Packed { kinds: 0, len: 0, bytes: [0; N] };
        for f in fields {
            p.push(f.clone());
        }
        p
    }

    /// Appends one field. Panics past five fields or `N` bytes: no set of ours has such keys.
    pub fn push(&mut self, f: Field) {
        let n = self.field_kinds().count() as u32;
        assert!(n < 5, "a packed key holds at most five fields");
        let (kind, width) = match f {
            Field::Addr(IpAddr::V4(_)) => (KIND_ADDR4, 4),
            Field::Addr(IpAddr::V6(_)) => (KIND_ADDR6, 16),
            Field::Proto(_) => (KIND_PROTO, 4),
            Field::Port(_) => (KIND_PORT, 4),
            Field::Index(_) => (KIND_INDEX, 4),
        };
        let at = self.len as usize;
        assert!(at + width <= N, "a packed key holds at most {N} bytes");
        let out = &mut self.bytes[at..at + width];
        match f {
            Field::Addr(IpAddr::V4(a)) => out.copy_from_slice(&a.octets()),
            Field::Addr(IpAddr::V6(a)) => out.copy_from_slice(&a.octets()),
            Field::Proto(p) => out[0] = p,
            Field::Port(p) => out[..2].copy_from_slice(&p.to_be_bytes()),
            Field::Index(i) => out.copy_from_slice(&i.to_ne_bytes()),
        }
        self.kinds |= kind << (KIND_BITS * n);
        self.len += width as u8;
    }

    /// The wire bytes.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes[..self.len as usize]
    }

    /// What its fields are, 3 bits each: with [`Packed::bytes`], all a key is, for the compact
    /// copies of `table`'s fragment index.
    pub fn kinds(&self) -> u16 {
        self.kinds
    }

    /// The inverse of ([`Packed::kinds`], [`Packed::bytes`]). None for more than `N` bytes.
    pub fn from_parts(kinds: u16, bytes: &[u8]) -> Option<Packed<N>> {
        let mut p = Packed { kinds, len: bytes.len() as u8, bytes: [0; N] };
        p.bytes.get_mut(..bytes.len())?.copy_from_slice(bytes);
        Some(p)
    }

    /// The same key with its last field, a numgen index, one higher: the next endpoint's key in
    /// an endpoint map. None when the last field is not an index (or it cannot grow).
    pub fn next_index(&self) -> Option<Packed<N>> {
        if self.field_kinds().last() != Some(KIND_INDEX) {
            return None;
        }
        let at = self.len as usize - 4;
        let i = u32::from_ne_bytes(self.bytes[at..at + 4].try_into().ok()?).checked_add(1)?;
        let mut next = *self;
        next.bytes[at..at + 4].copy_from_slice(&i.to_ne_bytes());
        Some(next)
    }

    /// The kind of each field, in order (see [`Packed::kinds`]).
    fn field_kinds(&self) -> impl Iterator<Item = u16> + use<N> {
        std::iter::successors(Some(self.kinds), |k| Some(k >> KIND_BITS))
            .map(|k| k & ((1 << KIND_BITS) - 1))
            .take_while(|kind| *kind != 0)
    }

    pub fn fields(&self) -> impl Iterator<Item = Field> + '_ {
        let mut at = 0usize;
        self.field_kinds().map_while(move |kind| {
            let b = &self.bytes[at..];
            let (f, width) = match kind {
                KIND_ADDR4 => (Field::Addr(IpAddr::from(<[u8; 4]>::try_from(&b[..4]).unwrap())), 4),
                KIND_ADDR6 => (Field::Addr(IpAddr::from(<[u8; 16]>::try_from(&b[..16]).unwrap())), 16),
                KIND_PROTO => (Field::Proto(b[0]), 4),
                KIND_PORT => (Field::Port(u16::from_be_bytes([b[0], b[1]])), 4),
                KIND_INDEX => (Field::Index(u32::from_ne_bytes([b[0], b[1], b[2], b[3]])), 4),
                _ => return None,
            };
            at += width;
            Some(f)
        })
    }
}

/// Field by field, as the list of fields it replaced ordered: `render` prints elements in this
/// order (an index compares as a number, not as its host-endian bytes).
impl<const N: usize> Ord for Packed<N> {
    fn cmp(&self, other: &Packed<N>) -> std::cmp::Ordering {
        if self.kinds != other.kinds {
            return self.fields().cmp(other.fields());
        }
        // Same layout (every key of a set): byte order is field order for addresses (network
        // order), protocols and ports (big-endian); only an index compares as a number. No
        // field is decoded, and every field is whole 4-byte words, compared as numbers (slice
        // comparisons called memcmp for 4 bytes: 7.6% of a 10k-Service `sync --from` in `perf`,
        // with this function another 6.7%): a cold sync compares keys ~20 times per element.
        let word = |b: &[u8; N], at: usize, index: bool| {
            let w = [b[at], b[at + 1], b[at + 2], b[at + 3]];
            if index { u32::from_ne_bytes(w) } else { u32::from_be_bytes(w) }
        };
        let mut at = 0usize;
        for kind in self.field_kinds() {
            let end = at + if kind == KIND_ADDR6 { 16 } else { 4 };
            while at < end {
                let o = word(&self.bytes, at, kind == KIND_INDEX).cmp(&word(&other.bytes, at, kind == KIND_INDEX));
                if o != std::cmp::Ordering::Equal {
                    return o;
                }
                at += 4;
            }
        }
        std::cmp::Ordering::Equal
    }
}

impl<const N: usize> PartialOrd for Packed<N> {
    fn partial_cmp(&self, other: &Packed<N>) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl<const N: usize> std::fmt::Debug for Packed<N> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&fields_text(self))
    }
}

/// An element key.
pub type Key = Packed;
/// Element data (address . port).
pub type Fields = Packed<20>;

/// An element's comment: one value per service port, shared by its elements. A thin pointer
/// (8 bytes, where `Arc<str>` took 16) because the mirror holds one per element.
pub type Comment = std::sync::Arc<String>;

fn fields_text<const N: usize>(p: &Packed<N>) -> String {
    p.fields().map(|f| f.text()).collect::<Vec<_>>().join(" . ")
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
    pub comment: Option<Comment>,
}

/// The value of an element that has none: no data, no comment (a hairpin pair).
pub static PLAIN: ElemValue = ElemValue { value: Value::None, comment: None };

impl ElemValue {
    /// No data and no comment: what a [`SetElements::Keys`] set holds for every key.
    pub fn is_plain(&self) -> bool {
        matches!(self.value, Value::None) && self.comment.is_none()
    }

    /// The element as the encoder reads it, borrowed from `key` and this value.
    pub fn wire_ref<'a>(&'a self, key: &'a Key) -> ElemRef<'a> {
        ElemRef {
            key: key.bytes(),
            data: match &self.value {
                Value::None => None,
                Value::Verdict(v) => Some(ElemDataRef::Verdict(v)),
                Value::Fields(f) => Some(ElemDataRef::Value(f.bytes())),
            },
            timeout_ms: None,
            comment: self.comment.as_deref().map(|c| c.as_str()),
        }
    }

    pub fn wire(&self, key: &Key) -> Elem {
        self.wire_ref(key).to_elem()
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

/// One set's elements in the mirror, by key. A set whose elements have neither data nor a
/// comment keeps its keys only: the hairpin set holds one element per endpoint, half of the
/// 1.1 M elements at 50k Services × 10 endpoints, and a value beside each key took 40 bytes that
/// said nothing (~20 MiB there). The first element with data or a comment turns the set into a
/// map, for good.
#[derive(Clone, Debug)]
pub enum SetElements {
    Keys(BTreeSet<Key>),
    Map(BTreeMap<Key, ElemValue>),
}

impl Default for SetElements {
    fn default() -> Self {
        SetElements::Keys(BTreeSet::new())
    }
}

/// What [`SetElements::put`] did.
#[derive(Debug, PartialEq, Eq)]
pub enum Put {
    Added,
    /// The element was there with this value already.
    Same,
    /// The element was there with another value: the one it had.
    Replaced(ElemValue),
}

impl SetElements {
    pub fn len(&self) -> usize {
        match self {
            SetElements::Keys(k) => k.len(),
            SetElements::Map(m) => m.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn contains_key(&self, key: &Key) -> bool {
        match self {
            SetElements::Keys(k) => k.contains(key),
            SetElements::Map(m) => m.contains_key(key),
        }
    }

    pub fn get(&self, key: &Key) -> Option<&ElemValue> {
        match self {
            SetElements::Keys(k) => k.contains(key).then_some(&PLAIN),
            SetElements::Map(m) => m.get(key),
        }
    }

    /// Adds or replaces an element, with one search of the tree.
    pub fn put(&mut self, key: Key, value: ElemValue) -> Put {
        if let SetElements::Keys(keys) = self {
            if value.is_plain() {
                return if keys.insert(key) { Put::Added } else { Put::Same };
            }
            let keys = std::mem::take(keys);
            *self = SetElements::Map(keys.into_iter().map(|k| (k, PLAIN.clone())).collect());
        }
        let SetElements::Map(m) = self else { unreachable!("made a map above") };
        match m.entry(key) {
            std::collections::btree_map::Entry::Occupied(mut cur) => {
                if *cur.get() == value {
                    Put::Same
                } else {
                    Put::Replaced(std::mem::replace(cur.get_mut(), value))
                }
            }
            std::collections::btree_map::Entry::Vacant(slot) => {
                slot.insert(value);
                Put::Added
            }
        }
    }

    pub fn remove(&mut self, key: &Key) -> Option<ElemValue> {
        match self {
            SetElements::Keys(k) => k.remove(key).then(|| PLAIN.clone()),
            SetElements::Map(m) => m.remove(key),
        }
    }

    /// In key order.
    pub fn iter(&self) -> SetElementsIter<'_> {
        match self {
            SetElements::Keys(k) => SetElementsIter::Keys(k.iter()),
            SetElements::Map(m) => SetElementsIter::Map(m.iter()),
        }
    }

    pub fn keys(&self) -> impl Iterator<Item = &Key> + '_ {
        self.iter().map(|(k, _)| k)
    }

    pub fn values(&self) -> impl Iterator<Item = &ElemValue> + '_ {
        self.iter().map(|(_, v)| v)
    }

    /// The elements after `after` (all of them when None), in key order.
    pub fn after<'a>(&'a self, after: Option<&Key>) -> Box<dyn Iterator<Item = (&'a Key, &'a ElemValue)> + 'a> {
        use std::ops::Bound::{Excluded, Unbounded};
        let start = after.map_or(Unbounded, |k| Excluded(*k));
        match self {
            SetElements::Keys(k) => Box::new(k.range((start, Unbounded)).map(|k| (k, &PLAIN))),
            SetElements::Map(m) => Box::new(m.range((start, Unbounded))),
        }
    }

    /// Rebuilds the tree with full nodes (see `nftproxy_model::compact_map`).
    pub fn compact(&mut self) {
        match self {
            SetElements::Keys(k) => {
                if let Some(last) = k.pop_last() {
                    let mut tail = BTreeSet::from([last]);
                    k.append(&mut tail);
                }
            }
            SetElements::Map(m) => nftproxy_model::compact_map(m),
        }
    }
}

impl PartialEq for SetElements {
    /// Equal when they hold the same elements, however they keep them.
    fn eq(&self, other: &Self) -> bool {
        self.len() == other.len() && self.iter().eq(other.iter())
    }
}

impl Eq for SetElements {}

impl FromIterator<(Key, ElemValue)> for SetElements {
    fn from_iter<I: IntoIterator<Item = (Key, ElemValue)>>(it: I) -> Self {
        let mut s = SetElements::default();
        for (k, v) in it {
            s.put(k, v);
        }
        s
    }
}

impl<'a> IntoIterator for &'a SetElements {
    type Item = (&'a Key, &'a ElemValue);
    type IntoIter = SetElementsIter<'a>;
    fn into_iter(self) -> Self::IntoIter {
        self.iter()
    }
}

impl IntoIterator for SetElements {
    type Item = (Key, ElemValue);
    type IntoIter = SetElementsIntoIter;
    fn into_iter(self) -> Self::IntoIter {
        match self {
            SetElements::Keys(k) => SetElementsIntoIter::Keys(k.into_iter()),
            SetElements::Map(m) => SetElementsIntoIter::Map(m.into_iter()),
        }
    }
}

/// [`SetElements`]' elements, moved out.
pub enum SetElementsIntoIter {
    Keys(std::collections::btree_set::IntoIter<Key>),
    Map(std::collections::btree_map::IntoIter<Key, ElemValue>),
}

impl Iterator for SetElementsIntoIter {
    type Item = (Key, ElemValue);
    fn next(&mut self) -> Option<Self::Item> {
        match self {
            SetElementsIntoIter::Keys(k) => k.next().map(|k| (k, PLAIN.clone())),
            SetElementsIntoIter::Map(m) => m.next(),
        }
    }
}

/// [`SetElements::iter`].
pub enum SetElementsIter<'a> {
    Keys(std::collections::btree_set::Iter<'a, Key>),
    Map(std::collections::btree_map::Iter<'a, Key, ElemValue>),
}

impl<'a> Iterator for SetElementsIter<'a> {
    type Item = (&'a Key, &'a ElemValue);
    fn next(&mut self) -> Option<Self::Item> {
        match self {
            SetElementsIter::Keys(k) => k.next().map(|k| (k, &PLAIN)),
            SetElementsIter::Map(m) => m.next(),
        }
    }
    fn size_hint(&self) -> (usize, Option<usize>) {
        match self {
            SetElementsIter::Keys(k) => k.size_hint(),
            SetElementsIter::Map(m) => m.size_hint(),
        }
    }
}

/// One table's desired state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ruleset {
    pub family: Family,
    pub chains: BTreeMap<String, Chain>,
    pub sets: BTreeMap<String, SetDecl>,
    pub elements: BTreeMap<String, SetElements>,
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

    /// `comment`: one value per service port, shared by its elements (a reference count each).
    pub fn element(&mut self, set: &str, key: Key, value: Value, comment: Option<&Comment>) {
        let v = ElemValue { value, comment: comment.cloned() };
        // Look the set up before allocating its name: this runs once per element.
        match self.elements.get_mut(set) {
            Some(m) => {
                m.put(key, v);
            }
            None => {
                self.elements.entry(set.to_string()).or_default().put(key, v);
            }
        }
    }
    pub fn element_count(&self) -> usize {
        self.elements.values().map(SetElements::len).sum()
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
                    b.chain_type.name(),
                    b.hook.name(),
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

#[cfg(test)]
mod packed_tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn packed_keys_are_the_wire_bytes_nft_registers_hold() {
        let k = Key::of(&[Field::Addr(ip("10.96.0.10")), Field::Proto(6), Field::Port(80), Field::Index(2)]);
        let mut want = vec![10, 96, 0, 10, 6, 0, 0, 0, 0, 80, 0, 0];
        want.extend_from_slice(&2u32.to_ne_bytes());
        assert_eq!(k.bytes(), &want[..]);
        let v6 = Key::of(&[Field::Addr(ip("fd00::1")), Field::Addr(ip("fd00::1"))]);
        assert_eq!(v6.bytes().len(), 32);
        assert_eq!(v6.fields().collect::<Vec<_>>(), vec![Field::Addr(ip("fd00::1")), Field::Addr(ip("fd00::1"))]);
        assert_eq!(std::mem::size_of::<Key>(), 36);
        // The mirror holds one value per element: data (20 bytes at most), verdict or nothing,
        // and a thin pointer to the comment.
        assert_eq!(std::mem::size_of::<ElemValue>(), 40);
    }

    #[test]
    fn packed_keys_order_field_by_field_with_indices_as_numbers() {
        let at = |i: u32| Key::of(&[Field::Addr(ip("10.96.0.10")), Field::Index(i)]);
        // 256 is [0, 1, 0, 0] little-endian: byte order would put it before 1.
        assert!(at(1) < at(256));
        assert!(Key::of(&[Field::Addr(ip("10.0.0.9"))]) < Key::of(&[Field::Addr(ip("10.0.0.10"))]));
        assert!(Key::of(&[Field::Addr(ip("255.0.0.1"))]) < Key::of(&[Field::Addr(ip("::1"))]));
        assert!(Key::of(&[Field::Proto(6), Field::Port(9)]) < Key::of(&[Field::Proto(6), Field::Port(10)]));
        let mut k = Key::of(&[Field::Proto(17)]);
        k.push(Field::Port(53));
        assert_eq!(k, Key::of(&[Field::Proto(17), Field::Port(53)]));
        assert_eq!(format!("{k:?}"), "udp . 53");
    }

    #[test]
    fn packed_order_is_the_order_of_the_fields() {
        let ips = ["10.0.0.1", "10.0.0.10", "10.0.1.0", "9.255.255.255", "fd00::1", "fd00::a", "::1"];
        let mut keys = Vec::new();
        for ip_ in ips {
            for proto in [6u8, 17] {
                for port in [9u16, 80, 256, 8080] {
                    for index in [0u32, 1, 255, 256, 70_000] {
                        keys.push(vec![
                            Field::Addr(ip(ip_)),
                            Field::Proto(proto),
                            Field::Port(port),
                            Field::Index(index),
                        ]);
                    }
                }
            }
        }
        for a in &keys {
            for b in keys.iter().step_by(7) {
                assert_eq!(Key::of(a).cmp(&Key::of(b)), a.cmp(b), "{a:?} vs {b:?}");
            }
        }
    }
}

#[cfg(test)]
mod packed_props {
    use super::*;
    use proptest::prelude::*;

    /// A field of a given kind, from a small range so that equal prefixes are common.
    fn field(kind: u8, v: u32) -> Field {
        match kind {
            0 => Field::Addr(IpAddr::from([10, 0, (v >> 2) as u8 & 1, v as u8 & 3])),
            1 => Field::Addr(IpAddr::from([0xfd00, 0, 0, 0, 0, 0, (v >> 2) as u16 & 1, v as u16 & 3])),
            2 => Field::Proto([6, 17, 132][v as usize % 3]),
            3 => Field::Port([80, 443, 8080, 65535][v as usize % 4]),
            _ => Field::Index([0, 1, 255, 256, 65536, u32::MAX][v as usize % 6]),
        }
    }

    proptest! {
        /// Word-by-word comparison of same-layout keys orders them as their fields do (an index
        /// as a number, not as its host-endian bytes), and so does the mixed-layout fallback.
        #[test]
        fn packed_keys_order_as_their_fields(
            layout in prop::sample::select(vec![vec![0u8, 2, 3, 4], vec![1, 2, 3, 4], vec![0, 0], vec![1, 1], vec![4], vec![2, 3]]),
            other_layout in prop::sample::select(vec![vec![0u8, 2, 3, 4], vec![4]]),
            a in prop::collection::vec(0u32..24, 4),
            b in prop::collection::vec(0u32..24, 4),
        ) {
            let key = |l: &[u8], v: &[u32]| -> Vec<Field> { l.iter().zip(v).map(|(k, v)| field(*k, *v)).collect() };
            let (fa, fb) = (key(&layout, &a), key(&layout, &b));
            let (pa, pb) = (Key::of(&fa), Key::of(&fb));
            prop_assert_eq!(pa.cmp(&pb), fa.cmp(&fb));
            prop_assert_eq!(pa == pb, fa == fb);
            let fc = key(&other_layout, &b);
            prop_assert_eq!(pa.cmp(&Key::of(&fc)), fa.cmp(&fc));
            if layout.iter().map(|k| if *k == 1 { 16 } else { 4 }).sum::<usize>() <= 20 {
                prop_assert_eq!(Fields::of(&fa).cmp(&Fields::of(&fb)), fa.cmp(&fb));
            }
        }
    }
}

#[cfg(test)]
mod set_elements_tests {
    use super::*;

    fn key(i: u32) -> Key {
        Key::of(&[Field::Addr(std::net::Ipv4Addr::from(0x0a00_0000 + i).into()), Field::Port(80)])
    }

    fn data(i: u32) -> ElemValue {
        ElemValue { value: Value::Fields(Fields::of(&[Field::Port(i as u16)])), comment: None }
    }

    #[test]
    fn plain_elements_keep_keys_only_until_one_has_a_value() {
        let mut s = SetElements::default();
        assert_eq!(s.put(key(2), PLAIN.clone()), Put::Added);
        assert_eq!(s.put(key(1), PLAIN.clone()), Put::Added);
        assert_eq!(s.put(key(1), PLAIN.clone()), Put::Same);
        assert!(matches!(s, SetElements::Keys(_)));
        assert_eq!(s.get(&key(1)), Some(&PLAIN));
        assert_eq!(s.get(&key(3)), None);
        // A comment is a value: the set becomes a map, the plain elements stay as they were.
        let commented = ElemValue { value: Value::None, comment: Some(Comment::new("ns/svc:http".into())) };
        assert_eq!(s.put(key(3), commented.clone()), Put::Added);
        assert!(matches!(s, SetElements::Map(_)));
        assert_eq!(s.iter().collect::<Vec<_>>(), vec![(&key(1), &PLAIN), (&key(2), &PLAIN), (&key(3), &commented)]);
        assert_eq!(s.put(key(2), data(7)), Put::Replaced(PLAIN.clone()));
        assert_eq!(s.put(key(2), data(8)), Put::Replaced(data(7)));
        assert_eq!(s.remove(&key(2)), Some(data(8)));
        assert_eq!(s.len(), 2);
    }

    #[test]
    fn the_same_elements_are_equal_however_they_are_kept() {
        let keys: SetElements = (0..50).map(|i| (key(i), PLAIN.clone())).collect();
        assert!(matches!(keys, SetElements::Keys(_)));
        let map = SetElements::Map((0..50).map(|i| (key(i), PLAIN.clone())).collect());
        assert_eq!(keys, map);
        let mut other = map.clone();
        other.put(key(7), data(1));
        assert_ne!(keys, other);
        assert_eq!(keys.into_iter().collect::<Vec<_>>(), map.into_iter().collect::<Vec<_>>());
    }

    #[test]
    fn removing_and_compacting_a_keys_set() {
        let mut s: SetElements = (0..1000).rev().map(|i| (key(i * 7 % 1000), PLAIN.clone())).collect();
        assert_eq!(s.remove(&key(5)), Some(PLAIN.clone()));
        assert_eq!(s.remove(&key(5)), None);
        let before: Vec<Key> = s.keys().copied().collect();
        s.compact();
        assert_eq!(s.keys().copied().collect::<Vec<_>>(), before);
        assert_eq!(s.after(Some(&key(997))).map(|(k, _)| *k).collect::<Vec<_>>(), vec![key(998), key(999)]);
        assert_eq!(s.after(None).count(), 999);
    }
}
