//! Load plain Kubernetes manifests (what `kubectl apply -f` takes and
//! `kubectl get -o yaml` prints) into a [`ClusterState`].
//!
//! Contract:
//! - Input is a file or a directory. A directory is walked recursively; files
//!   ending in `.yaml`, `.yml` or `.json` are read in path order (compared
//!   component by component, so `b/x.yaml` precedes `bad.yaml`): the same
//!   tree always loads the same way. Hidden entries (starting with `.`, such
//!   as editors' swap files or the `..data` links of ConfigMap mounts) are
//!   skipped.
//! - A YAML file holds any number of documents separated by `---`; a JSON
//!   file holds one or more concatenated JSON values. Documents are numbered
//!   from 0 in file order (an explicit empty document `---\n---` counts; the
//!   comment-only prelude before a leading `---` does not). A document may be
//!   a `kind: List` (or `kind: <Kind>List`) whose `items` are objects.
//! - Kinds kxdp programs from: Namespace, Pod, Service, Node (`v1`),
//!   EndpointSlice (`discovery.k8s.io/v1`), NetworkPolicy
//!   (`networking.k8s.io/v1`). Other kinds are skipped with a
//!   [`LoadWarning`]; one of these kinds at another API version is a
//!   [`LoadError`] (it cannot be read with the v1 schema and must not be
//!   ignored silently).
//! - Loading never stops at a bad object: each document is parsed on its own
//!   (a YAML syntax error spoils only its document) and each object is
//!   converted to its typed form on its own; every failure becomes a
//!   [`LoadError`] naming the file, document index, List item index, the
//!   document's first line and kind/name when known.
//! - Namespaced objects without `metadata.namespace` go to `default`. An
//!   object whose key (kind, namespace, name) was already loaded replaces the
//!   earlier one, with a warning naming both places.
//!
//! Only the root path itself being unreadable is a [`ManifestError`].

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::{Namespace, Node, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde_json::{Map, Value};

use crate::model::ClusterState;

/// Namespace of namespaced objects that name none.
pub const DEFAULT_NAMESPACE: &str = "default";

/// Where in the input an object (or a problem) is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Origin {
    pub file: PathBuf,
    /// Document index in the file, from 0. None for whole-file problems.
    pub doc: Option<usize>,
    /// Item index inside a `kind: List` document, from 0.
    pub item: Option<usize>,
    /// 1-based line where the document starts (YAML only).
    pub line: Option<usize>,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(d) = self.doc {
            write!(f, ": document {d}")?;
        }
        if let Some(i) = self.item {
            write!(f, ", item {i}")?;
        }
        if let Some(l) = self.line {
            write!(f, " (line {l})")?;
        }
        Ok(())
    }
}

/// `Kind namespace/name: ` as far as known, for messages.
fn describe(kind: Option<&str>, name: Option<&str>) -> String {
    match (kind, name) {
        (Some(k), Some(n)) => format!("{k} {n}: "),
        (Some(k), None) => format!("{k}: "),
        (None, Some(n)) => format!("{n}: "),
        (None, None) => String::new(),
    }
}

/// An object that could not be loaded; the rest of the input still was.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{origin}: {}{message}", describe(self.kind.as_deref(), self.name.as_deref()))]
pub struct LoadError {
    pub origin: Origin,
    /// `kind` of the object, when it could be read.
    pub kind: Option<String>,
    /// `namespace/name` (or `name` for cluster-scoped kinds), when known.
    pub name: Option<String>,
    pub message: String,
}

/// Something skipped or overridden that the user may want to know about.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoadWarning {
    pub origin: Origin,
    pub kind: Option<String>,
    pub name: Option<String>,
    pub message: String,
}

impl fmt::Display for LoadWarning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: {}{}",
            self.origin,
            describe(self.kind.as_deref(), self.name.as_deref()),
            self.message
        )
    }
}

/// The result of loading: everything that loaded, and what did not.
#[derive(Clone, Debug, Default)]
pub struct LoadReport {
    pub state: ClusterState,
    pub warnings: Vec<LoadWarning>,
    pub errors: Vec<LoadError>,
}

impl LoadReport {
    /// True when nothing was skipped or broken.
    pub fn is_clean(&self) -> bool {
        self.warnings.is_empty() && self.errors.is_empty()
    }
}

/// The manifests root could not be read at all.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("manifests path {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Load a file or a directory tree of manifests.
pub fn load_path(path: &Path) -> Result<LoadReport, ManifestError> {
    let meta = std::fs::metadata(path).map_err(|source| ManifestError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let mut loader = Loader::default();
    if meta.is_dir() {
        let mut files = Vec::new();
        collect_files(path, &mut files, &mut loader.report);
        files.sort();
        for f in files {
            loader.add_file(&f);
        }
    } else {
        loader.add_file(path);
    }
    Ok(loader.finish())
}

/// Load manifests given as text; `file` names them in messages and decides
/// the format (`.json` = JSON, anything else YAML).
pub fn load_str(file: &Path, text: &str) -> LoadReport {
    let mut loader = Loader::default();
    loader.add_text(file, text);
    loader.finish()
}

fn is_manifest_file(p: &Path) -> bool {
    matches!(
        p.extension().and_then(|e| e.to_str()),
        Some("yaml" | "yml" | "json")
    )
}

fn is_hidden(p: &Path) -> bool {
    p.file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.starts_with('.'))
}

fn collect_files(dir: &Path, out: &mut Vec<PathBuf>, report: &mut LoadReport) {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) => {
            report
                .errors
                .push(file_error(dir, format!("cannot read directory: {e}")));
            return;
        }
    };
    for entry in entries {
        let entry = match entry {
            Ok(e) => e,
            Err(e) => {
                report
                    .errors
                    .push(file_error(dir, format!("cannot read directory: {e}")));
                continue;
            }
        };
        let p = entry.path();
        if is_hidden(&p) {
            continue;
        }
        // Follow symlinks (ConfigMap mounts are symlink farms).
        match std::fs::metadata(&p) {
            Ok(m) if m.is_dir() => collect_files(&p, out, report),
            Ok(m) if m.is_file() && is_manifest_file(&p) => out.push(p),
            Ok(_) => {}
            Err(e) => report
                .errors
                .push(file_error(&p, format!("cannot stat: {e}"))),
        }
    }
}

fn file_error(path: &Path, message: String) -> LoadError {
    LoadError {
        origin: Origin {
            file: path.to_path_buf(),
            doc: None,
            item: None,
            line: None,
        },
        kind: None,
        name: None,
        message,
    }
}

/// One document of a YAML stream: its text, index and first line.
#[derive(Debug, PartialEq, Eq)]
struct YamlDoc {
    index: usize,
    line: usize,
    text: String,
    /// False when the document holds only blanks, comments and directives.
    has_content: bool,
}

/// Split a YAML stream into documents at `---` / `...` markers (YAML 1.2
/// §9.1: a marker line at column 0 always ends the previous document,
/// whatever scalar was open).
fn split_yaml(text: &str) -> Vec<YamlDoc> {
    let mut docs = Vec::new();
    let mut cur = String::new();
    let mut start_line = 1;
    let mut explicit = false;
    let mut content = false;
    let mut emit = |cur: &mut String, start: usize, explicit: bool, content: bool| {
        if explicit || content {
            docs.push(YamlDoc {
                index: 0,
                line: start,
                text: std::mem::take(cur),
                has_content: content,
            });
        } else {
            cur.clear();
        }
    };
    for (n, raw) in text.split_inclusive('\n').enumerate() {
        let line_no = n + 1;
        let line = raw.trim_end_matches(['\n', '\r']);
        let is_marker = |m: &str| {
            line.strip_prefix(m)
                .is_some_and(|rest| rest.is_empty() || rest.starts_with([' ', '\t']))
        };
        if is_marker("---") {
            emit(&mut cur, start_line, explicit, content);
            start_line = line_no;
            explicit = true;
            let rest = line.get(3..).unwrap_or("");
            content = is_content(rest);
            cur.push_str(rest);
            cur.push('\n');
        } else if is_marker("...") {
            emit(&mut cur, start_line, explicit, content);
            start_line = line_no + 1;
            explicit = false;
            content = false;
        } else {
            if cur.is_empty() && !explicit && !content {
                start_line = line_no;
            }
            // Directives (`%YAML`) belong to the next explicit document.
            if !(line.starts_with('%') && !explicit && !content) {
                content |= is_content(line);
            }
            cur.push_str(line);
            cur.push('\n');
        }
    }
    emit(&mut cur, start_line, explicit, content);
    for (i, d) in docs.iter_mut().enumerate() {
        d.index = i;
    }
    docs
}

fn is_content(line: &str) -> bool {
    let t = line.trim_start();
    !t.is_empty() && !t.starts_with('#')
}

/// Budgets scaled to the document: manifests are operator input, and a
/// `kubectl get -A -o yaml` dump is one document of possibly hundreds of
/// MiB. Alias limits (the "billion laughs" guard) keep their defaults.
fn yaml_options(len: usize) -> serde_saphyr::Options {
    let mut budget = serde_saphyr::Budget::default();
    budget.max_events = budget.max_events.max(len);
    budget.max_nodes = budget.max_nodes.max(len);
    budget.max_total_scalar_bytes = budget.max_total_scalar_bytes.max(len);
    budget.max_reader_input_bytes = None;
    let mut opts = serde_saphyr::Options::default();
    opts.budget = Some(budget);
    opts.with_snippet = false;
    opts
}

/// Accumulates objects from any number of files.
#[derive(Default)]
struct Loader {
    report: LoadReport,
    /// First place each (kind, namespace, name) was seen, for duplicate
    /// warnings.
    seen: HashMap<(&'static str, String, String), Origin>,
}

/// The kinds kxdp reads, with the one apiVersion it reads each at.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Known {
    Namespace,
    Node,
    Pod,
    Service,
    EndpointSlice,
    NetworkPolicy,
}

impl Known {
    fn from_kind(kind: &str) -> Option<Self> {
        Some(match kind {
            "Namespace" => Known::Namespace,
            "Node" => Known::Node,
            "Pod" => Known::Pod,
            "Service" => Known::Service,
            "EndpointSlice" => Known::EndpointSlice,
            "NetworkPolicy" => Known::NetworkPolicy,
            _ => return None,
        })
    }

    fn name(self) -> &'static str {
        match self {
            Known::Namespace => "Namespace",
            Known::Node => "Node",
            Known::Pod => "Pod",
            Known::Service => "Service",
            Known::EndpointSlice => "EndpointSlice",
            Known::NetworkPolicy => "NetworkPolicy",
        }
    }

    fn api_version(self) -> &'static str {
        match self {
            Known::Namespace | Known::Node | Known::Pod | Known::Service => "v1",
            Known::EndpointSlice => "discovery.k8s.io/v1",
            Known::NetworkPolicy => "networking.k8s.io/v1",
        }
    }

    fn namespaced(self) -> bool {
        !matches!(self, Known::Namespace | Known::Node)
    }
}

impl Loader {
    fn finish(self) -> LoadReport {
        self.report
    }

    fn add_file(&mut self, path: &Path) {
        match std::fs::read(path) {
            Ok(bytes) => match String::from_utf8(bytes) {
                Ok(text) => self.add_text(path, &text),
                Err(_) => self
                    .report
                    .errors
                    .push(file_error(path, "not valid UTF-8".to_string())),
            },
            Err(e) => self
                .report
                .errors
                .push(file_error(path, format!("cannot read: {e}"))),
        }
    }

    fn add_text(&mut self, path: &Path, text: &str) {
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        let is_json = path.extension().and_then(|e| e.to_str()) == Some("json");
        if is_json {
            self.add_json(path, text);
        } else {
            self.add_yaml(path, text);
        }
    }

    fn add_json(&mut self, path: &Path, text: &str) {
        let stream = serde_json::Deserializer::from_str(text).into_iter::<Value>();
        for (index, value) in stream.enumerate() {
            let origin = Origin {
                file: path.to_path_buf(),
                doc: Some(index),
                item: None,
                line: None,
            };
            match value {
                Ok(v) => self.add_document(origin, v),
                Err(e) => {
                    // A syntax error leaves the stream position unknown:
                    // stop this file.
                    self.report.errors.push(LoadError {
                        origin,
                        kind: None,
                        name: None,
                        message: format!("invalid JSON: {e}"),
                    });
                    break;
                }
            }
        }
    }

    fn add_yaml(&mut self, path: &Path, text: &str) {
        for doc in split_yaml(text) {
            if !doc.has_content {
                continue;
            }
            let origin = Origin {
                file: path.to_path_buf(),
                doc: Some(doc.index),
                item: None,
                line: Some(doc.line),
            };
            // Pad with the lines before the document so the parser's line
            // numbers are the file's.
            let mut text = "\n".repeat(doc.line.saturating_sub(1));
            text.push_str(&doc.text);
            let parsed: Result<Value, _> =
                serde_saphyr::from_str_with_options(&text, yaml_options(text.len()));
            match parsed {
                Ok(v) => self.add_document(origin, v),
                Err(e) => self.report.errors.push(LoadError {
                    origin,
                    kind: None,
                    name: None,
                    message: format!("invalid YAML: {e}"),
                }),
            }
        }
    }

    fn error(
        &mut self,
        origin: &Origin,
        kind: Option<&str>,
        name: Option<String>,
        message: String,
    ) {
        self.report.errors.push(LoadError {
            origin: origin.clone(),
            kind: kind.map(str::to_string),
            name,
            message,
        });
    }

    fn warn(&mut self, origin: &Origin, kind: Option<&str>, name: Option<String>, message: String) {
        self.report.warnings.push(LoadWarning {
            origin: origin.clone(),
            kind: kind.map(str::to_string),
            name,
            message,
        });
    }

    /// One top-level document: an object, a List of objects, or nothing.
    fn add_document(&mut self, origin: Origin, value: Value) {
        let mut map = match value {
            Value::Null => return,
            Value::Object(m) => m,
            other => {
                let what = json_type(&other);
                self.error(
                    &origin,
                    None,
                    None,
                    format!("expected an object, found {what}"),
                );
                return;
            }
        };
        let kind = map.get("kind").and_then(Value::as_str).map(str::to_string);
        let is_list = kind
            .as_deref()
            .is_some_and(|k| k == "List" || (k.ends_with("List") && map.contains_key("items")));
        if !is_list {
            self.add_object(&origin, map, None);
            return;
        }
        let kind = kind.unwrap_or_default();
        // `PodList` etc. (API list responses) may omit kind/apiVersion on
        // items: they inherit them from the list.
        let item_default = kind
            .strip_suffix("List")
            .filter(|k| !k.is_empty())
            .map(|k| {
                let api = map
                    .get("apiVersion")
                    .and_then(Value::as_str)
                    .unwrap_or("v1");
                (k.to_string(), api.to_string())
            });
        let items = match map.remove("items") {
            None | Some(Value::Null) => return,
            Some(Value::Array(items)) => items,
            Some(other) => {
                let what = json_type(&other);
                self.error(
                    &origin,
                    Some(&kind),
                    None,
                    format!("`items` must be a list, found {what}"),
                );
                return;
            }
        };
        for (i, item) in items.into_iter().enumerate() {
            let item_origin = Origin {
                item: Some(i),
                ..origin.clone()
            };
            match item {
                Value::Object(m) => self.add_object(&item_origin, m, item_default.as_ref()),
                Value::Null => {}
                other => {
                    let what = json_type(&other);
                    self.error(
                        &item_origin,
                        None,
                        None,
                        format!("expected an object, found {what}"),
                    );
                }
            }
        }
    }

    fn add_object(
        &mut self,
        origin: &Origin,
        mut map: Map<String, Value>,
        inherited: Option<&(String, String)>,
    ) {
        let meta_name = map
            .get("metadata")
            .and_then(|m| m.get("name"))
            .and_then(Value::as_str)
            .map(str::to_string);
        let meta_ns = map
            .get("metadata")
            .and_then(|m| m.get("namespace"))
            .and_then(Value::as_str)
            .map(str::to_string);
        let kind = match map.get("kind") {
            Some(Value::String(k)) => k.clone(),
            None => match inherited {
                Some((k, _)) => k.clone(),
                None => {
                    self.error(origin, None, meta_name, "no `kind`".to_string());
                    return;
                }
            },
            Some(other) => {
                let what = json_type(other);
                self.error(
                    origin,
                    None,
                    meta_name,
                    format!("`kind` must be a string, found {what}"),
                );
                return;
            }
        };
        if kind == "List" || (kind.ends_with("List") && map.contains_key("items")) {
            self.warn(
                origin,
                Some(&kind),
                meta_name,
                "nested List skipped".to_string(),
            );
            return;
        }
        let Some(known) = Known::from_kind(&kind) else {
            self.warn(
                origin,
                Some(&kind),
                meta_name,
                format!("kind {kind} is not used by kxdp; skipped"),
            );
            return;
        };
        let api_version = match map.get("apiVersion") {
            Some(Value::String(v)) => v.clone(),
            None => match inherited {
                Some((_, v)) => v.clone(),
                None => {
                    self.error(
                        origin,
                        Some(&kind),
                        meta_name,
                        "no `apiVersion`".to_string(),
                    );
                    return;
                }
            },
            Some(other) => {
                let what = json_type(other);
                self.error(
                    origin,
                    Some(&kind),
                    meta_name,
                    format!("`apiVersion` must be a string, found {what}"),
                );
                return;
            }
        };
        if api_version != known.api_version() {
            self.error(
                origin,
                Some(&kind),
                meta_name,
                format!(
                    "apiVersion {api_version} is not supported for {kind} (kxdp reads {})",
                    known.api_version()
                ),
            );
            return;
        }
        let Some(name) = meta_name.filter(|n| !n.is_empty()) else {
            self.error(origin, Some(&kind), None, "no `metadata.name`".to_string());
            return;
        };
        let namespace = if known.namespaced() {
            Some(
                meta_ns
                    .filter(|n| !n.is_empty())
                    .unwrap_or_else(|| DEFAULT_NAMESPACE.to_string()),
            )
        } else {
            None
        };
        let display = match &namespace {
            Some(ns) => format!("{ns}/{name}"),
            None => name.clone(),
        };
        // The typed deserializers check kind/apiVersion themselves; both
        // were validated above (and may be inherited), so drop them.
        map.remove("kind");
        map.remove("apiVersion");
        let value = Value::Object(map);
        let ns = namespace.clone().unwrap_or_default();
        let inserted = match known {
            Known::Namespace => typed::<Namespace>(value).map(|o| {
                self.report
                    .state
                    .namespaces
                    .insert(name.clone(), o)
                    .is_some()
            }),
            Known::Node => typed::<Node>(value)
                .map(|o| self.report.state.nodes.insert(name.clone(), o).is_some()),
            Known::Pod => typed::<Pod>(value).map(|mut o| {
                set_namespace(&mut o.metadata, &ns);
                self.report
                    .state
                    .pods
                    .insert((ns.clone(), name.clone()), o)
                    .is_some()
            }),
            Known::Service => typed::<Service>(value).map(|mut o| {
                set_namespace(&mut o.metadata, &ns);
                self.report
                    .state
                    .services
                    .insert((ns.clone(), name.clone()), o)
                    .is_some()
            }),
            Known::EndpointSlice => typed::<EndpointSlice>(value).map(|mut o| {
                set_namespace(&mut o.metadata, &ns);
                self.report
                    .state
                    .endpoint_slices
                    .insert((ns.clone(), name.clone()), o)
                    .is_some()
            }),
            Known::NetworkPolicy => typed::<NetworkPolicy>(value).map(|mut o| {
                set_namespace(&mut o.metadata, &ns);
                self.report
                    .state
                    .network_policies
                    .insert((ns.clone(), name.clone()), o)
                    .is_some()
            }),
        };
        match inserted {
            Err(message) => self.error(origin, Some(&kind), Some(display), message),
            Ok(replaced) => {
                let key = (known.name(), ns, name);
                if replaced {
                    let first = self
                        .seen
                        .get(&key)
                        .map(ToString::to_string)
                        .unwrap_or_else(|| "an earlier document".to_string());
                    self.warn(
                        origin,
                        Some(&kind),
                        Some(display),
                        format!("replaces the definition at {first}"),
                    );
                }
                self.seen.insert(key, origin.clone());
            }
        }
    }
}

/// Convert to the typed object; the message names the offending field.
fn typed<T: serde::de::DeserializeOwned>(value: Value) -> Result<T, String> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        if path == "." {
            format!("invalid object: {}", e.inner())
        } else {
            format!("invalid field `{path}`: {}", e.inner())
        }
    })
}

fn set_namespace(meta: &mut ObjectMeta, ns: &str) {
    meta.namespace = Some(ns.to_string());
}

fn json_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests;
