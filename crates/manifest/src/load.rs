//! Manifest files → objects → [`ClusterState`]. Parsing is separated from reading so that it can
//! be tested on strings; [`load_path`] is the only function here that touches the file system.

use std::fs;
use std::path::{Path, PathBuf};

use nftproxy_model::{ClusterState, EndpointSlice, Node, Service};
use serde::Deserialize;
use serde::de::{DeserializeOwned, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::Value;
use serde_json::value::RawValue;

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

/// One usable object of a manifest source, converted to the model.
#[derive(Clone, Debug, PartialEq)]
pub enum Object {
    Service(Service),
    Slice(EndpointSlice),
    Node(Node),
    ServiceCidr((String, Vec<ipnet::IpNet>)),
}

/// What a set of manifests amounted to.
#[derive(Debug, Default)]
pub struct Loaded {
    pub state: ClusterState,
    pub warnings: Vec<Warning>,
    /// Services deliberately not programmed (ExternalName, headless, another proxy's).
    pub skipped_services: Vec<(String, Skipped)>,
    /// Objects of kinds the proxy does not use (Pods, Deployments, …).
    pub ignored_objects: usize,
    /// Every object seen (lists count their items), used or not.
    pub objects: usize,
    /// Where objects go: into `state`, nowhere (a first pass), or to a caller as they come.
    mode: Mode,
    /// Top-level values (documents, or elements of a top-level array) seen so far.
    top_level: usize,
}

/// See [`Loaded::mode`].
#[derive(Default)]
enum Mode {
    /// Converted and kept in `state`.
    #[default]
    Store,
    /// Only counted, and whether each top-level value is a list recorded (a first pass over
    /// the text, for syntax and shape, converting nothing).
    Scan { lists: Vec<bool> },
    /// Converted and handed over one by one; `lists` (from the scan of the same text) says which
    /// top-level values are lists, so that their items stream before `kind`, which kubectl
    /// prints after them, is read.
    Emit { lists: Vec<bool>, to: Box<dyn FnMut(Object) + Send + Sync> },
}

impl std::fmt::Debug for Mode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Mode::Store => "Store",
            Mode::Scan { .. } => "Scan",
            Mode::Emit { .. } => "Emit",
        })
    }
}

impl Clone for Loaded {
    /// A copy of what was loaded (a streaming loader's callback is not copied).
    fn clone(&self) -> Loaded {
        Loaded {
            state: self.state.clone(),
            warnings: self.warnings.clone(),
            skipped_services: self.skipped_services.clone(),
            ignored_objects: self.ignored_objects,
            objects: self.objects,
            mode: Mode::Store,
            top_level: 0,
        }
    }
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
    #[error(
        "{0}: no Kubernetes objects (an empty manifest would remove every Service; --allow-empty-manifests allows it)"
    )]
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
    let mut loaded = Loaded::default();
    for f in read_source(path)? {
        f.add_to(&mut loaded)?;
    }
    loaded.complete(path, allow_empty)?;
    Ok(loaded)
}

/// [`load_path_with`], handing each usable object to `to` as it is parsed instead of keeping
/// them: the source is read, then scanned whole (syntax and shape, nothing converted), and only
/// when it would load is it parsed again with every object converted and handed over — so a
/// source that does not parse hands over nothing, and no copy of all its objects is ever held.
/// The returned [`Loaded`] has the warnings and counts, and an empty state.
pub fn stream_path(
    path: &Path,
    allow_empty: bool,
    to: impl FnMut(Object) + Send + Sync + 'static,
) -> Result<Loaded, LoadError> {
    let files = read_source(path)?;
    let lists = scan(path, &files, allow_empty)?;
    let mut loaded = Loaded { mode: Mode::Emit { lists, to: Box::new(to) }, ..Default::default() };
    for f in &files {
        f.add_to(&mut loaded)?;
    }
    loaded.mode = Mode::Store;
    Ok(loaded)
}

/// Whether a source would load ([`load_path_with`]'s errors), from a scan alone: syntax, shape
/// and whether it holds objects, nothing converted or kept (for a check at start).
pub fn check_path(path: &Path, allow_empty: bool) -> Result<(), LoadError> {
    scan(path, &read_source(path)?, allow_empty).map(drop)
}

/// One file of a source, ready to be parsed once or twice: JSON from the open file as it is
/// read (its text is never held whole: 68 MB at 50k Services × 10; a second pass reads the same
/// open file again, so a rename over it in between changes nothing), YAML as text (its
/// documents are split on lines).
enum SourceFile {
    Json { name: String, file: fs::File },
    Text { name: String, text: String },
}

impl SourceFile {
    fn open(path: &Path) -> Result<SourceFile, LoadError> {
        use std::io::{Read, Seek};
        let io = |source| LoadError::Io { path: path.to_path_buf(), source };
        let name = path.display().to_string();
        let mut file = fs::File::open(path).map_err(io)?;
        // The first byte that is not ASCII whitespace says JSON ('{', '['), as in `add_text`.
        let mut head = [0u8; 4096];
        let first = loop {
            let n = file.read(&mut head).map_err(io)?;
            if n == 0 {
                break None;
            }
            if let Some(b) = head[..n].iter().find(|b| !b.is_ascii_whitespace()) {
                break Some(*b);
            }
        };
        file.rewind().map_err(io)?;
        if matches!(first, Some(b'{' | b'[')) {
            return Ok(SourceFile::Json { name, file });
        }
        let mut text = String::new();
        file.read_to_string(&mut text).map_err(io)?;
        Ok(SourceFile::Text { name, text })
    }

    /// Parses the whole file into `loaded`.
    fn add_to(&self, loaded: &mut Loaded) -> Result<(), LoadError> {
        use std::io::Seek;
        match self {
            SourceFile::Text { name, text } => loaded.add_text(name, text),
            SourceFile::Json { name, file } => {
                let mut f = file;
                let io = |source| LoadError::Io { path: name.into(), source };
                f.rewind().map_err(io)?;
                if matches!(loaded.mode, Mode::Store) {
                    // Loaded whole anyway: the text in memory lends each list item's text to
                    // its parse, where a reader copies it (`sync --from` 10k Services × 3:
                    // 6.8 MB held while loading).
                    let mut text = Vec::new();
                    std::io::Read::read_to_end(&mut f, &mut text).map_err(io)?;
                    loaded.add_json(name, serde_json::Deserializer::from_slice(&text), RawItems::Borrowed);
                } else {
                    let reader = std::io::BufReader::with_capacity(1 << 16, f);
                    loaded.add_json(name, serde_json::Deserializer::from_reader(reader), RawItems::Owned);
                }
            }
        }
        Ok(())
    }
}

/// The files of a source, opened, within [`MAX_MANIFEST_BYTES`].
fn read_source(path: &Path) -> Result<Vec<SourceFile>, LoadError> {
    let files = manifest_files(path).map_err(|source| LoadError::Io { path: path.to_path_buf(), source })?;
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
    files.iter().map(|f| SourceFile::open(f)).collect()
}

/// The first pass: every text parsed for syntax and shape (which top-level values are lists),
/// objects counted, none converted.
fn scan(path: &Path, files: &[SourceFile], allow_empty: bool) -> Result<Vec<bool>, LoadError> {
    let mut scan = Loaded { mode: Mode::Scan { lists: Vec::new() }, ..Default::default() };
    for f in files {
        f.add_to(&mut scan)?;
    }
    scan.complete(path, allow_empty)?;
    match scan.mode {
        Mode::Scan { lists } => Ok(lists),
        _ => unreachable!("scan mode"),
    }
}

impl Loaded {
    /// Last good state wins: a document that did not parse fails the whole source; so does a
    /// source without objects unless allowed.
    fn complete(&self, path: &Path, allow_empty: bool) -> Result<(), LoadError> {
        if let Some(Warning::Document { source, message }) =
            self.warnings.iter().find(|w| matches!(w, Warning::Document { .. }))
        {
            return Err(LoadError::Parse { origin: source.clone(), message: message.clone() });
        }
        if self.objects == 0 && !allow_empty {
            return Err(LoadError::NoObjects(path.to_path_buf()));
        }
        Ok(())
    }

    /// One usable object: kept, or handed over.
    fn put(&mut self, o: Object) {
        match &mut self.mode {
            Mode::Emit { to, .. } => to(o),
            _ => match o {
                Object::Service(s) => self.state.upsert_service(s),
                Object::Slice(s) => self.state.upsert_slice(s),
                Object::Node(n) => self.state.upsert_node(n),
                Object::ServiceCidr((name, cidrs)) => {
                    self.state.service_cidr_objects.insert(name, cidrs);
                }
            },
        }
    }

    /// Whether the next top-level value is a list, when a scan said so; counts it either way.
    fn next_top_level(&mut self) -> (usize, Option<bool>) {
        let i = self.top_level;
        self.top_level += 1;
        let known = match &self.mode {
            Mode::Emit { lists, .. } => Some(lists.get(i).copied().unwrap_or(false)),
            _ => None,
        };
        (i, known)
    }

    /// A scan records whether top-level value `i` was a list.
    fn record_list(&mut self, i: usize, is_list: bool) {
        if let Mode::Scan { lists } = &mut self.mode {
            if lists.len() <= i {
                lists.resize(i + 1, false);
            }
            lists[i] = is_list;
        }
    }

    /// Parses one file's text (YAML with `---` documents, or JSON with one or more values) and
    /// adds its objects.
    pub fn add_text(&mut self, source: &str, text: &str) {
        let trimmed = text.trim_start();
        if trimmed.starts_with('{') || trimmed.starts_with('[') {
            self.add_json(source, serde_json::Deserializer::from_str(text), RawItems::Borrowed);
            return;
        }
        // Documents are split on `---` lines here rather than by serde_yaml's multi-document
        // iterator, which cannot resynchronise after a syntax error: one broken document must
        // not lose the ones after it.
        for (i, (first_line, doc)) in yaml_documents(text).enumerate() {
            match add_document(self, serde_yaml::Deserializer::from_str(doc), true, RawItems::No) {
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
                    self.warnings
                        .push(Warning::Document { source: format!("{source} (document {}{at})", i + 1), message })
                }
            }
        }
    }

    /// Adds every JSON value of a stream (a text, or a file read as it is parsed).
    fn add_json<'de, R: serde_json::de::Read<'de>>(
        &mut self,
        source: &str,
        mut de: serde_json::Deserializer<R>,
        raw: RawItems,
    ) {
        for i in 0.. {
            if de.end().is_ok() {
                break; // only whitespace left
            }
            if let Err(e) = add_document(self, &mut de, false, raw) {
                // serde_json's message ends with the line and column in the whole text.
                self.warnings.push(Warning::Document {
                    source: format!("{source} (JSON value {})", i + 1),
                    message: e.to_string(),
                });
                break; // the stream cannot be resynchronised after a syntax error
            }
        }
    }

    /// Adds what another Loaded holds, as if its objects had come after ours.
    fn absorb(&mut self, other: Loaded) {
        let Loaded { mut state, warnings, skipped_services, ignored_objects, objects, .. } = other;
        if matches!(self.mode, Mode::Store) && self.state == ClusterState::default() {
            // The usual case, one list per file: its state as it is (no second insert of
            // every object).
            state = std::mem::replace(&mut self.state, state);
        }
        for (_, svc) in std::mem::take(&mut state.services) {
            self.put(Object::Service(svc));
        }
        for (_, node) in std::mem::take(&mut state.nodes) {
            self.put(Object::Node(node));
        }
        for c in std::mem::take(&mut state.service_cidr_objects) {
            self.put(Object::ServiceCidr(c));
        }
        for slice in state.into_slices() {
            self.put(Object::Slice(slice));
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
        if matches!(self.mode, Mode::Scan { .. }) {
            return;
        }
        let api_version = v.get("apiVersion").and_then(Value::as_str).unwrap_or("");
        match (kind.as_str(), api_version) {
            ("Service", "v1") => {
                if let Some(obj) = self.typed::<k8s_openapi::api::core::v1::Service>("Service", v) {
                    self.add_service(&obj);
                }
            }
            ("EndpointSlice", "discovery.k8s.io/v1") => {
                if let Some(obj) = self.typed::<k8s_openapi::api::discovery::v1::EndpointSlice>("EndpointSlice", v) {
                    self.add_slice(&obj);
                }
            }
            ("Node", "v1") => {
                if let Some(obj) = self.typed::<k8s_openapi::api::core::v1::Node>("Node", v) {
                    match convert::node(&obj) {
                        Ok(n) => self.put(Object::Node(n)),
                        Err(e) => self.warnings.push(Warning::Object(e)),
                    }
                }
            }
            ("ServiceCIDR", "networking.k8s.io/v1") => {
                if let Some(obj) = self.typed::<k8s_openapi::api::networking::v1::ServiceCIDR>("ServiceCIDR", v) {
                    match convert::service_cidr(&obj) {
                        Ok(c) => self.put(Object::ServiceCidr(c)),
                        Err(e) => self.warnings.push(Warning::Object(e)),
                    }
                }
            }
            _ => self.ignored_objects += 1,
        }
    }

    /// Adds one item of a JSON list from its text. Services and EndpointSlices, nearly every
    /// item, are typed straight from the text once their kind and name are read (a quick pass),
    /// with no tree of values in between: `sync --from` of 10k Services × 3 went from ~0.24 to
    /// ~0.14 s of loading. Everything else (other kinds, a list in a list, a kind or name that
    /// is not a string) goes through [`Loaded::add_value`] as before; so do all YAML objects.
    fn add_raw(&mut self, raw: &RawValue) {
        let text = raw.get();
        // (A JSON array would deserialise into `Head` field by field.)
        let head = serde_json::from_str::<Head>(text).ok().filter(|h| {
            text.trim_start().starts_with('{')
                && matches!(h.kind(), ("Service", "v1") | ("EndpointSlice", "discovery.k8s.io/v1"))
        });
        let Some(head) = head else {
            if let Ok(v) = serde_json::from_str::<Value>(text) {
                self.add_value(v);
            }
            return;
        };
        self.objects += 1;
        if matches!(self.mode, Mode::Scan { .. }) {
            return;
        }
        if head.kind().0 == "Service" {
            if let Some(obj) = self.typed_text("Service", &head, text) {
                self.add_service(&obj);
            }
        } else if let Some(obj) = self.typed_text("EndpointSlice", &head, text) {
            self.add_slice(&obj);
        }
    }

    /// Types an item from its text. Only an item that fails is read a second time, with the
    /// path to the field at fault tracked (tracking every item was ~8% of loading 10k Services
    /// × 3; the error is the same, the deserialiser being the same).
    fn typed_text<T: DeserializeOwned>(&mut self, kind: &'static str, head: &Head, text: &str) -> Option<T> {
        if let Ok(typed) = serde_json::from_str(text) {
            return Some(typed);
        }
        let object = convert::display_name(head.metadata.namespace.as_deref(), head.metadata.name.as_deref());
        let typed = serde_path_to_error::deserialize(&mut serde_json::Deserializer::from_str(text));
        self.typed_or_warn(kind, object, typed)
    }

    fn add_service(&mut self, obj: &k8s_openapi::api::core::v1::Service) {
        match convert::service(obj) {
            Ok(Ok(svc)) => self.put(Object::Service(svc)),
            Ok(Err(skip)) => self.skipped_services.push((convert::object_name(&obj.metadata), skip)),
            Err(e) => self.warnings.push(Warning::Object(e)),
        }
    }

    fn add_slice(&mut self, obj: &k8s_openapi::api::discovery::v1::EndpointSlice) {
        match convert::endpoint_slice(obj) {
            Ok(s) => self.put(Object::Slice(s)),
            Err(e) => self.warnings.push(Warning::Object(e)),
        }
    }

    /// Deserialises a value into a k8s-openapi type; a type error becomes a warning naming the
    /// field.
    fn typed<T: DeserializeOwned>(&mut self, kind: &'static str, v: Value) -> Option<T> {
        let object = {
            let meta = v.get("metadata");
            let s = |k| meta.and_then(|m| m.get(k)).and_then(Value::as_str);
            // Named as in conversion errors, so one object is named alike whichever finds it bad.
            convert::display_name(s("namespace"), s("name"))
        };
        let typed = serde_path_to_error::deserialize(v);
        self.typed_or_warn(kind, object, typed)
    }

    /// A typed object, or a warning naming its field. The message is serde_json's without the
    /// position it appends when parsing text (a column in the item's own text, which would not
    /// help the reader; the field path names the place), so that it reads alike from a value
    /// ([`Loaded::typed`]) and from text ([`Loaded::add_raw`]).
    fn typed_or_warn<T>(
        &mut self,
        kind: &'static str,
        object: String,
        typed: Result<T, serde_path_to_error::Error<serde_json::Error>>,
    ) -> Option<T> {
        let e = match typed {
            Ok(t) => return Some(t),
            Err(e) => e,
        };
        let field = e.path().to_string();
        let e = e.into_inner();
        let message = e.to_string();
        let message = match message.rfind(" at line ") {
            Some(at) if e.line() > 0 => message[..at].to_string(),
            _ => message,
        };
        self.warnings.push(Warning::Object(ObjectError { kind, object, field, message }));
        None
    }
}

/// What [`Loaded::add_raw`] reads of an item before its type is known.
#[derive(Deserialize)]
struct Head {
    kind: Option<String>,
    #[serde(rename = "apiVersion")]
    api_version: Option<String>,
    #[serde(default)]
    metadata: HeadMeta,
}

impl Head {
    fn kind(&self) -> (&str, &str) {
        (self.kind.as_deref().unwrap_or(""), self.api_version.as_deref().unwrap_or(""))
    }
}

#[derive(Deserialize, Default)]
struct HeadMeta {
    name: Option<String>,
    namespace: Option<String>,
}

/// Adds one top-level value of a file while it is parsed: the items of a list (`kind: List`,
/// `ServiceList`, …) are converted one at a time, so a list of 10k Services never exists in
/// memory as one tree of values (it did: 368 MiB peak RSS to inspect a 15.7 MB JSON list of 10k
/// Services × 3 endpoints). Other objects are parsed whole, as before, and handed to
/// [`Loaded::add_value`]. A YAML document that is empty or `null` is no object (`skip_null`; a
/// JSON `null` counts as one).
fn add_document<'de, D: Deserializer<'de>>(
    loaded: &mut Loaded,
    de: D,
    skip_null: bool,
    raw: RawItems,
) -> Result<(), D::Error> {
    match (Streamed { loaded: &mut *loaded, items: false, top: true, raw }).deserialize(de)? {
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
    /// A top-level value (a document, or an element of a top-level array): a scan records
    /// whether it is a list, a streaming parse is told.
    top: bool,
    /// How the items of a list are taken as text for [`Loaded::add_raw`].
    raw: RawItems,
}

/// How a parser can hand over a value's text: JSON from a reader copies it, JSON from memory
/// lends it; YAML cannot (its objects go through [`Loaded::add_value`]).
#[derive(Clone, Copy, PartialEq, Eq)]
enum RawItems {
    No,
    Owned,
    Borrowed,
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
        match (self.raw, self.top) {
            (RawItems::Owned, false) => {
                while let Some(raw) = seq.next_element::<Box<RawValue>>()? {
                    self.loaded.add_raw(&raw);
                }
                return Ok(None);
            }
            (RawItems::Borrowed, false) => {
                while let Some(raw) = seq.next_element::<&'de RawValue>()? {
                    self.loaded.add_raw(raw);
                }
                return Ok(None);
            }
            _ => {}
        }
        while let Some(v) =
            seq.next_element_seed(Streamed { loaded: &mut *self.loaded, items: false, top: self.top, raw: self.raw })?
        {
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
        let (index, known) = if self.top { self.loaded.next_top_level() } else { (0, None) };
        let mut fields = serde_json::Map::new();
        // An `items` array, converted into a Loaded of its own: whether the object is a list is
        // known only from `kind`, which kubectl prints after `items` — unless a scan of the same
        // text said so, then the items go straight where objects go.
        let mut items: Option<Loaded> = None;
        let mut streamed_items = false;
        while let Some(key) = map.next_key::<String>()? {
            if key == "items" {
                match known {
                    Some(true) => {
                        match map.next_value_seed(Streamed {
                            loaded: &mut *self.loaded,
                            items: true,
                            top: false,
                            raw: self.raw,
                        })? {
                            Some(v) => {
                                fields.insert(key, v);
                            }
                            None => streamed_items = true,
                        }
                        continue;
                    }
                    Some(false) => {
                        map.next_value::<serde::de::IgnoredAny>()?;
                        continue;
                    }
                    None => {}
                }
                let scanning = matches!(self.loaded.mode, Mode::Scan { .. });
                let mut streamed = Loaded::default();
                if scanning {
                    streamed.mode = Mode::Scan { lists: Vec::new() };
                }
                match map.next_value_seed(Streamed { loaded: &mut streamed, items: true, top: false, raw: self.raw })? {
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
        if streamed_items {
            return Ok(None);
        }
        let kind = fields.get("kind").and_then(Value::as_str).unwrap_or("");
        let is_list = items.is_some() && kind.ends_with("List");
        if self.top {
            self.loaded.record_list(index, is_list);
        }
        match items {
            // The rule of `add_value`: `List`, or `…List` with items.
            Some(items) if is_list => self.loaded.absorb(items),
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
