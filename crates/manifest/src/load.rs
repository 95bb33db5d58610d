//! Manifest files → objects → [`ClusterState`]. Parsing is separated from reading so that it can
//! be tested on strings; [`load_path`] is the only function here that touches the file system.

use std::fs;
use std::path::{Path, PathBuf};

use nftproxy_model::ClusterState;
use serde::Deserialize;
use serde::de::{DeserializeOwned, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::Value;

use crate::convert::{self, ObjectError, Skipped};

/// A problem with the input that did not stop the rest from being used.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Warning {
    /// One object was unusable and left out.
    Object(ObjectError),
    /// A file or document could not be parsed at all.
    Document { source: String, message: String },
}

impl std::fmt::Display for Warning {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Warning::Object(e) => write!(f, "{e} (object skipped)"),
            Warning::Document { source, message } => write!(f, "{source}: {message}"),
        }
    }
}

/// What a set of manifests amounted to.
#[derive(Clone, Debug, Default)]
pub struct Loaded {
    pub state: ClusterState,
    pub warnings: Vec<Warning>,
    /// Services deliberately not programmed (ExternalName, headless, another proxy's).
    pub skipped_services: Vec<(String, Skipped)>,
    /// Objects of kinds the proxy does not use (Pods, Deployments, …).
    pub ignored_objects: usize,
    /// Every object seen (lists count their items), used or not.
    pub objects: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{0}: no .yaml, .yml or .json files")]
    Empty(PathBuf),
    /// A file that does not parse as a whole (a syntax error, a truncated or half-written file):
    /// nothing of the source is used, so a bad edit never removes Services.
    #[error("{origin}: {message}")]
    Parse { origin: String, message: String },
    /// No object at all: taken as "no Services" only when allowed (`--allow-empty-manifests`).
    #[error("{0}: no Kubernetes objects (an empty manifest would remove every Service; --allow-empty-manifests allows it)")]
    NoObjects(PathBuf),
    /// More than [`MAX_MANIFEST_BYTES`] in one source: refused before reading, so a runaway file
    /// (or a mistaken path) cannot exhaust the node's memory.
    #[error("{path}: {bytes} bytes, more than the {MAX_MANIFEST_BYTES} bytes a manifest source may have")]
    TooLarge { path: PathBuf, bytes: u64 },
}

/// The most bytes one manifest source (a file, or a directory's files together) may have. About
/// 4× what `kubectl get services,endpointslices -A -o yaml` prints for 50k Services with three
/// endpoints each; parsing takes several times the text in memory.
pub const MAX_MANIFEST_BYTES: u64 = 512 << 20;

/// The files a manifest source is made of: the file itself, or the `.yaml`, `.yml` and `.json`
/// files of a directory, sorted by name, not recursive. What [`load_path`] reads, and all that a
/// poller of the source should watch (other files — a log, an editor's swap file — are no part
/// of it).
pub fn manifest_files(path: &Path) -> std::io::Result<Vec<PathBuf>> {
    if !path.is_dir() {
        return Ok(vec![path.to_path_buf()]);
    }
    let mut files: Vec<PathBuf> = fs::read_dir(path)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file() && matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml" | "json")))
        .collect();
    files.sort();
    Ok(files)
}

/// Reads a file, or every `.yaml`/`.yml`/`.json` file of a directory (sorted by name, not
/// recursive), and adds every object to one state. Last good state wins: a file that does not
/// parse (any syntax error) or a source without a single object is an error, and the caller keeps
/// what it had; only objects that parse but cannot be used are skipped one by one (warnings).
pub fn load_path(path: &Path) -> Result<Loaded, LoadError> {
    load_path_with(path, false)
}

/// [`load_path`], optionally accepting a source without objects as "no Services".
pub fn load_path_with(path: &Path, allow_empty: bool) -> Result<Loaded, LoadError> {
    let io = |source| LoadError::Io { path: path.to_path_buf(), source };
    let files = manifest_files(path).map_err(io)?;
    if files.is_empty() {
        return Err(LoadError::Empty(path.to_path_buf()));
    }
    let mut total = 0u64;
    for file in &files {
        total += fs::metadata(file).map_err(|source| LoadError::Io { path: file.clone(), source })?.len();
        if total > MAX_MANIFEST_BYTES {
            return Err(LoadError::TooLarge { path: path.to_path_buf(), bytes: total });
        }
    }
    let mut loaded = Loaded::default();
    for file in files {
        let text = fs::read_to_string(&file).map_err(|source| LoadError::Io { path: file.clone(), source })?;
        loaded.add_text(&file.display().to_string(), &text);
    }
    if let Some(Warning::Document { source, message }) =
        loaded.warnings.iter().find(|w| matches!(w, Warning::Document { .. }))
    {
        return Err(LoadError::Parse { origin: source.clone(), message: message.clone() });
    }
    if loaded.objects == 0 && !allow_empty {
        return Err(LoadError::NoObjects(path.to_path_buf()));
    }
    Ok(loaded)
}

impl Loaded {
    /// Parses one file's text (YAML with `---` documents, or JSON with one or more values) and
    /// adds its objects.
    pub fn add_text(&mut self, source: &str, text: &str) {
        let trimmed = text.trim_start();
        if trimmed.starts_with('{') || trimmed.starts_with('[') {
            let mut de = serde_json::Deserializer::from_str(text);
            for i in 0.. {
                if de.end().is_ok() {
                    break; // only whitespace left
                }
                if let Err(e) = add_document(self, &mut de, false) {
                    // serde_json's message ends with the line and column in the whole text.
                    self.warnings.push(Warning::Document {
                        source: format!("{source} (JSON value {})", i + 1),
                        message: e.to_string(),
                    });
                    break; // the stream cannot be resynchronised after a syntax error
                }
            }
            return;
        }
        // Documents are split on `---` lines here rather than by serde_yaml's multi-document
        // iterator, which cannot resynchronise after a syntax error: one broken document must
        // not lose the ones after it.
        for (i, (first_line, doc)) in yaml_documents(text).enumerate() {
            match add_document(self, serde_yaml::Deserializer::from_str(doc), true) {
                Ok(()) => {}
                Err(e) => {
                    // The line in the file, not in the document (an error found at the end of a
                    // truncated document is reported on its last line).
                    let last = first_line + doc.trim_end().lines().count().max(1) - 1;
                    let at = e
                        .location()
                        .map(|l| format!(", line {}", (first_line + l.line().max(1) - 1).min(last)))
                        .unwrap_or_default();
                    let message = e.to_string();
                    let message = message.split(" at line ").next().unwrap_or(&message).to_string();
                    self.warnings.push(Warning::Document { source: format!("{source} (document {}{at})", i + 1), message })
                }
            }
        }
    }

    /// Adds what another Loaded holds, as if its objects had come after ours.
    fn absorb(&mut self, other: Loaded) {
        let Loaded { mut state, warnings, skipped_services, ignored_objects, objects } = other;
        for (_, svc) in std::mem::take(&mut state.services) {
            self.state.upsert_service(svc);
        }
        for (_, node) in std::mem::take(&mut state.nodes) {
            self.state.upsert_node(node);
        }
        self.state.service_cidr_objects.extend(std::mem::take(&mut state.service_cidr_objects));
        for slice in state.into_slices() {
            self.state.upsert_slice(slice);
        }
        self.warnings.extend(warnings);
        self.skipped_services.extend(skipped_services);
        self.ignored_objects += ignored_objects;
        self.objects += objects;
    }

    /// Adds one object, or every item of a `kind: List` (`ServiceList`, … too).
    pub fn add_value(&mut self, v: Value) {
        if let Value::Array(items) = v {
            items.into_iter().for_each(|i| self.add_value(i));
            return;
        }
        let kind = v.get("kind").and_then(Value::as_str).unwrap_or("").to_string();
        if kind == "List" || (kind.ends_with("List") && v.get("items").is_some()) {
            // (its items count, not the list)
            if let Value::Object(mut m) = v
                && let Some(Value::Array(items)) = m.remove("items")
            {
                items.into_iter().for_each(|i| self.add_value(i));
            }
            return;
        }
        self.objects += 1;
        let api_version = v.get("apiVersion").and_then(Value::as_str).unwrap_or("");
        match (kind.as_str(), api_version) {
            ("Service", "v1") => {
                if let Some(obj) = self.typed::<k8s_openapi::api::core::v1::Service>("Service", v) {
                    match convert::service(&obj) {
                        Ok(Ok(svc)) => self.state.upsert_service(svc),
                        Ok(Err(skip)) => self.skipped_services.push((convert::object_name(&obj.metadata), skip)),
                        Err(e) => self.warnings.push(Warning::Object(e)),
                    }
                }
            }
            ("EndpointSlice", "discovery.k8s.io/v1") => {
                if let Some(obj) = self.typed::<k8s_openapi::api::discovery::v1::EndpointSlice>("EndpointSlice", v) {
                    match convert::endpoint_slice(&obj) {
                        Ok(s) => self.state.upsert_slice(s),
                        Err(e) => self.warnings.push(Warning::Object(e)),
                    }
                }
            }
            ("Node", "v1") => {
                if let Some(obj) = self.typed::<k8s_openapi::api::core::v1::Node>("Node", v) {
                    match convert::node(&obj) {
                        Ok(n) => self.state.upsert_node(n),
                        Err(e) => self.warnings.push(Warning::Object(e)),
                    }
                }
            }
            ("ServiceCIDR", "networking.k8s.io/v1") => {
                if let Some(obj) = self.typed::<k8s_openapi::api::networking::v1::ServiceCIDR>("ServiceCIDR", v) {
                    match convert::service_cidr(&obj) {
                        Ok((name, cidrs)) => {
                            self.state.service_cidr_objects.insert(name, cidrs);
                        }
                        Err(e) => self.warnings.push(Warning::Object(e)),
                    }
                }
            }
            _ => self.ignored_objects += 1,
        }
    }

    /// Deserialises into a k8s-openapi type; a type error becomes a warning naming the field.
    fn typed<T: DeserializeOwned>(&mut self, kind: &'static str, v: Value) -> Option<T> {
        let object = {
            let meta = v.get("metadata");
            let s = |k| meta.and_then(|m| m.get(k)).and_then(Value::as_str);
            // Named as in conversion errors, so one object is named alike whichever finds it bad.
            convert::display_name(s("namespace"), s("name"))
        };
        match serde_path_to_error::deserialize::<_, T>(v) {
            Ok(t) => Some(t),
            Err(e) => {
                let field = e.path().to_string();
                self.warnings.push(Warning::Object(ObjectError {
                    kind,
                    object,
                    field,
                    message: e.into_inner().to_string(),
                }));
                None
            }
        }
    }
}

/// Adds one top-level value of a file while it is parsed: the items of a list (`kind: List`,
/// `ServiceList`, …) are converted one at a time, so a list of 10k Services never exists in
/// memory as one tree of values (it did: 368 MiB peak RSS to inspect a 15.7 MB JSON list of 10k
/// Services × 3 endpoints). Other objects are parsed whole, as before, and handed to
/// [`Loaded::add_value`]. A YAML document that is empty or `null` is no object (`skip_null`; a
/// JSON `null` counts as one).
fn add_document<'de, D: Deserializer<'de>>(loaded: &mut Loaded, de: D, skip_null: bool) -> Result<(), D::Error> {
    match (Streamed { loaded: &mut *loaded, items: false }).deserialize(de)? {
        Some(Value::Null) if skip_null => {}
        Some(v) => loaded.add_value(v),
        None => {}
    }
    Ok(())
}

/// A value being parsed: arrays are added element by element as they come, and so are objects
/// (a list's items streamed) unless this is a list's `items` field, where an object is only a
/// value. Returns the values not added yet (scalars, and objects under `items`).
struct Streamed<'a> {
    loaded: &'a mut Loaded,
    /// Parsing the `items` field of an object.
    items: bool,
}

impl<'de> DeserializeSeed<'de> for Streamed<'_> {
    type Value = Option<Value>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Option<Value>, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Streamed<'_> {
    type Value = Option<Value>;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a Kubernetes object, a list of them, or an array of them")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Option<Value>, A::Error> {
        while let Some(v) = seq.next_element_seed(Streamed { loaded: &mut *self.loaded, items: false })? {
            if let Some(v) = v {
                self.loaded.add_value(v);
            }
        }
        Ok(None)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Option<Value>, A::Error> {
        if self.items {
            return Value::deserialize(serde::de::value::MapAccessDeserializer::new(map)).map(Some);
        }
        let mut fields = serde_json::Map::new();
        // An `items` array, converted into a Loaded of its own: whether the object is a list is
        // known only from `kind`, which kubectl prints after `items`.
        let mut items: Option<Loaded> = None;
        while let Some(key) = map.next_key::<String>()? {
            if key == "items" {
                let mut streamed = Loaded::default();
                match map.next_value_seed(Streamed { loaded: &mut streamed, items: true })? {
                    Some(v) => {
                        fields.insert(key, v);
                        items = None;
                    }
                    None => {
                        // (a repeated key: the last one counts, as in a JSON object)
                        fields.remove("items");
                        items = Some(streamed);
                    }
                }
            } else {
                let v: Value = map.next_value()?;
                fields.insert(key, v);
            }
        }
        let kind = fields.get("kind").and_then(Value::as_str).unwrap_or("");
        match items {
            // The rule of `add_value`: `List`, or `…List` with items.
            Some(items) if kind.ends_with("List") => self.loaded.absorb(items),
            // Not a list: the object without its `items` (none of the kinds used has such a
            // field, and unknown fields are ignored).
            _ => self.loaded.add_value(Value::Object(fields)),
        }
        Ok(None)
    }

    fn visit_unit<E: serde::de::Error>(self) -> Result<Option<Value>, E> {
        Ok(Some(Value::Null))
    }
    fn visit_none<E: serde::de::Error>(self) -> Result<Option<Value>, E> {
        Ok(Some(Value::Null))
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Option<Value>, D::Error> {
        d.deserialize_any(self)
    }
    fn visit_bool<E: serde::de::Error>(self, v: bool) -> Result<Option<Value>, E> {
        Ok(Some(Value::Bool(v)))
    }
    fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Option<Value>, E> {
        Ok(Some(Value::from(v)))
    }
    fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Option<Value>, E> {
        Ok(Some(Value::from(v)))
    }
    fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<Option<Value>, E> {
        Ok(Some(Value::from(v)))
    }
    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Option<Value>, E> {
        Ok(Some(Value::from(v)))
    }
}

/// Splits a YAML stream into documents at `---` separator lines: (the document's first line in
/// the file, 1-based; its text).
fn yaml_documents(text: &str) -> impl Iterator<Item = (usize, &str)> {
    let mut starts = vec![(0, 1)];
    let mut ends = Vec::new();
    let mut off = 0;
    for (n, line) in text.split_inclusive('\n').enumerate() {
        let l = line.trim_end();
        if l == "---" || l.starts_with("--- ") {
            ends.push(off);
            starts.push((off + line.len(), n + 2));
        }
        off += line.len();
    }
    ends.push(text.len());
    starts.into_iter().zip(ends).map(move |((s, line), e)| (line, &text[s..e]))
}
