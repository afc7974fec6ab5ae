//! Loading documents from files and directories, with `file:line:column` errors.
//!
//! Each file is parsed twice with the same bounded options: once into a generic tree of spanned
//! nodes (to find the position of any path, e.g. `spec.weights.fargate`, and to name the path
//! of a parse error), once into [`TrafficSplit`]. A file that trips a budget or alias limit in
//! the first pass is rejected as a whole before the typed pass runs.

use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::de::{self, Deserialize, Deserializer};
use serde_saphyr::{Location, MessageFormatter, Spanned};
use sha2::{Digest, Sha256};

use super::{validate, TrafficSplit};
use crate::error::{Invalid, SourcePos};

/// Files larger than this are rejected unread: a TrafficSplit is a few KiB.
pub const MAX_FILE_BYTES: u64 = 1024 * 1024;

/// Nesting limit: a TrafficSplit is about 6 levels deep.
const MAX_DEPTH: usize = 20;

/// After this many problems in one file, stop reporting its documents (a garbage file would
/// otherwise produce thousands of identical messages).
const MAX_ERRORS_PER_FILE: usize = 50;

/// One valid TrafficSplit and where it came from.
#[derive(Debug, Clone, PartialEq)]
pub struct SplitDoc {
    /// Shared: the [`DocCache`], the controller and every cycle's work hold the same parsed
    /// document (a few KiB each, per split) instead of a copy each.
    pub split: Arc<TrafficSplit>,
    pub file: PathBuf,
    /// 1-based line where the document starts.
    pub line: u64,
    /// First 12 hex digits of the SHA-256 of the canonical JSON of `split`: the status's
    /// `observedGeneration`.
    pub hash: String,
}

/// The result of loading a set of paths: the valid documents, every problem found, and the files
/// that were read (to watch them).
#[derive(Debug, Default)]
pub struct Loaded {
    pub docs: Vec<SplitDoc>,
    pub errors: Vec<Invalid>,
    pub files: Vec<PathBuf>,
}

impl SplitDoc {
    /// The canonical hash of a split (see [`SplitDoc::hash`]).
    pub fn hash_of(split: &TrafficSplit) -> String {
        // Serializing plain data structs cannot fail; an empty string would still be a stable hash.
        let json = serde_json::to_string(split).unwrap_or_default();
        Sha256::digest(json.as_bytes())
            .iter()
            .take(6)
            .map(|b| format!("{b:02x}"))
            .collect()
    }
}

/// Load every TrafficSplit found in `paths`.
///
/// A path is a file or a directory; a directory contributes its `*.yaml`/`*.yml` files
/// (non-recursive, hidden names skipped, symlinks followed), sorted by name. Invalid documents go
/// to `errors` and never to `docs`; other documents still load. The first document with a given
/// `metadata.name` wins; later ones are errors.
pub fn load_paths(paths: &[PathBuf]) -> Loaded {
    DocCache::default().load_all(paths)
}

/// Parsed documents per file, so that a file event costs one parse instead of one per file
/// (parsing is most of a reload: about 130 ms for 1,000 files).
///
/// The cache holds what a file says on its own (its documents, each validated, and its parse
/// errors); what depends on the other files (a duplicate name, the order) is decided again on
/// every load, so a cached load returns exactly what [`load_paths`] would.
#[derive(Debug, Default)]
pub struct DocCache {
    /// The files of the last listing, in load order.
    files: Vec<PathBuf>,
    /// Problems of the last listing (a missing path, an unreadable directory).
    list_errors: Vec<Invalid>,
    entries: HashMap<PathBuf, FileEntry>,
}

/// One file as last read.
#[derive(Debug)]
struct FileEntry {
    /// SHA-256 of the bytes parsed; `None` when the file could not be read.
    digest: Option<[u8; 32]>,
    /// Read and parse errors, in the order the parser found them.
    errors: Vec<Invalid>,
    docs: Vec<CachedDoc>,
}

#[derive(Debug)]
struct CachedDoc {
    name: String,
    line: u64,
    /// Where a duplicate of this name is reported.
    name_pos: SourcePos,
    /// The valid document, or its validation problems.
    outcome: Result<SplitDoc, Vec<Invalid>>,
}

impl DocCache {
    /// List the paths again and re-read every file; only a file whose bytes changed is parsed
    /// again. The periodic resync uses this: it verifies everything, whatever events were lost.
    pub fn load_all(&mut self, paths: &[PathBuf]) -> Loaded {
        self.relist(paths);
        let files = self.files.clone();
        for file in &files {
            self.refresh(file);
        }
        self.assemble()
    }

    /// Re-read only `changed` (paths as the listing names them: a config file, or a config
    /// directory joined with a file name). A file that appeared or disappeared lists the paths
    /// again; the other files are taken from the cache unread.
    pub fn load_changed(&mut self, paths: &[PathBuf], changed: &[PathBuf]) -> Loaded {
        let listed_again = changed
            .iter()
            .any(|f| !self.entries.contains_key(f) || !f.is_file());
        if listed_again || self.files.is_empty() {
            self.relist(paths);
        }
        let files = self.files.clone();
        for file in &files {
            if !self.entries.contains_key(file) || changed.contains(file) {
                self.refresh(file);
            }
        }
        self.assemble()
    }

    fn relist(&mut self, paths: &[PathBuf]) {
        let mut listing = Loaded::default();
        for path in paths {
            collect_files(path, &mut listing);
        }
        self.files = listing.files;
        self.list_errors = listing.errors;
        let keep: std::collections::HashSet<&PathBuf> = self.files.iter().collect();
        self.entries.retain(|f, _| keep.contains(f));
    }

    /// Read one file; parse it again only if its bytes differ from the cached ones.
    fn refresh(&mut self, file: &Path) {
        let text = match read_capped(file) {
            Ok(text) => text,
            Err(invalid) => {
                self.entries.insert(
                    file.to_path_buf(),
                    FileEntry {
                        digest: None,
                        errors: vec![invalid],
                        docs: Vec::new(),
                    },
                );
                return;
            }
        };
        let digest: [u8; 32] = Sha256::digest(text.as_bytes()).into();
        if self
            .entries
            .get(file)
            .is_some_and(|e| e.digest == Some(digest))
        {
            return;
        }
        let (parsed, errors) = parse_file(file, &text);
        let docs = parsed
            .into_iter()
            .map(|doc| {
                let name = doc.split.name().to_string();
                let at = |path: &str| doc.position(file, path);
                let name_pos = at("metadata.name");
                let problems = validate::check(&doc.split);
                let outcome = if problems.is_empty() {
                    Ok(SplitDoc {
                        hash: SplitDoc::hash_of(&doc.split),
                        line: doc.line,
                        file: file.to_path_buf(),
                        split: Arc::new(doc.split),
                    })
                } else {
                    // Problems quote names and values from the document: cleaned and bounded
                    // like every other echo of input.
                    Err(problems
                        .into_iter()
                        .map(|(path, message)| Invalid {
                            pos: at(&path),
                            message: crate::sanitize::message(&message),
                        })
                        .collect())
                };
                CachedDoc {
                    name,
                    line: doc.line,
                    name_pos,
                    outcome,
                }
            })
            .collect();
        self.entries.insert(
            file.to_path_buf(),
            FileEntry {
                digest: Some(digest),
                errors,
                docs,
            },
        );
    }

    /// The documents in load order, with the decisions that span files (duplicate names).
    fn assemble(&self) -> Loaded {
        let mut loaded = Loaded {
            docs: Vec::with_capacity(self.entries.len()),
            errors: self.list_errors.clone(),
            files: self.files.clone(),
        };
        let mut seen: HashMap<&str, (&Path, u64)> = HashMap::with_capacity(self.entries.len());
        for file in &self.files {
            let Some(entry) = self.entries.get(file) else {
                continue;
            };
            loaded.errors.extend(entry.errors.iter().cloned());
            for doc in &entry.docs {
                if let Some((first_file, first_line)) = seen.get(doc.name.as_str()) {
                    loaded.errors.push(Invalid {
                        pos: doc.name_pos.clone(),
                        message: format!(
                            "duplicate TrafficSplit name '{}' (first defined at {}:{}); names must be unique",
                            doc.name,
                            first_file.display(),
                            first_line
                        ),
                    });
                    continue;
                }
                seen.insert(&doc.name, (file, doc.line));
                match &doc.outcome {
                    Ok(d) => loaded.docs.push(d.clone()),
                    Err(problems) => loaded.errors.extend(problems.iter().cloned()),
                }
            }
        }
        loaded
    }
}

fn file_error(file: &Path, message: String) -> Invalid {
    Invalid {
        pos: SourcePos {
            file: file.to_path_buf(),
            line: 1,
            column: 1,
        },
        message,
    }
}

fn collect_files(path: &Path, loaded: &mut Loaded) {
    // `metadata` follows symlinks: ConfigMap mounts are symlinks into `..data/`.
    let meta = match std::fs::metadata(path) {
        Ok(meta) => meta,
        Err(e) => {
            loaded
                .errors
                .push(file_error(path, format!("cannot read: {e}")));
            return;
        }
    };
    if !meta.is_dir() {
        loaded.files.push(path.to_path_buf());
        return;
    }
    let entries = match std::fs::read_dir(path) {
        Ok(entries) => entries,
        Err(e) => {
            loaded
                .errors
                .push(file_error(path, format!("cannot list directory: {e}")));
            return;
        }
    };
    let mut found: Vec<PathBuf> = entries
        .filter_map(|entry| entry.ok())
        .filter(|entry| {
            let name = entry.file_name();
            let name = name.to_string_lossy();
            let ext_ok = Path::new(name.as_ref()).extension().is_some_and(|ext| {
                ext.eq_ignore_ascii_case("yaml") || ext.eq_ignore_ascii_case("yml")
            });
            // Hidden names include Kubernetes' `..data` and `..2024_...` ConfigMap internals.
            !name.starts_with('.') && ext_ok
        })
        .map(|entry| entry.path())
        .filter(|p| std::fs::metadata(p).map(|m| m.is_file()).unwrap_or(false))
        .collect();
    found.sort();
    loaded.files.extend(found);
}

/// Read a file of at most [`MAX_FILE_BYTES`] that must be UTF-8.
fn read_capped(file: &Path) -> Result<String, Invalid> {
    let mut bytes = Vec::new();
    std::fs::File::open(file)
        .and_then(|f| f.take(MAX_FILE_BYTES + 1).read_to_end(&mut bytes))
        .map_err(|e| file_error(file, format!("cannot read: {e}")))?;
    if bytes.len() as u64 > MAX_FILE_BYTES {
        return Err(file_error(
            file,
            format!(
                "file is larger than {MAX_FILE_BYTES} bytes (1 MiB); TrafficSplit files are small, \
                 check that this is the right file"
            ),
        ));
    }
    String::from_utf8(bytes).map_err(|e| {
        let offset = e.utf8_error().valid_up_to();
        let valid = &e.as_bytes()[..offset];
        // The prefix is valid UTF-8 by definition of `valid_up_to`.
        let prefix = std::str::from_utf8(valid).unwrap_or_default();
        let line = prefix.matches('\n').count() as u64 + 1;
        let column = prefix.rsplit('\n').next().map_or(0, |l| l.chars().count()) as u64 + 1;
        Invalid {
            pos: SourcePos {
                file: file.to_path_buf(),
                line,
                column,
            },
            message: format!("invalid UTF-8 at byte offset {offset}; save the file as UTF-8"),
        }
    })
}

/// Parser limits: generous for any real TrafficSplit, small enough that hostile input (alias
/// bombs, deep nesting, huge collections) fails fast.
fn options() -> serde_saphyr::Options {
    serde_saphyr::options! {
        budget: serde_saphyr::budget! {
            max_reader_input_bytes: Some(MAX_FILE_BYTES as usize + 16),
            max_depth: MAX_DEPTH,
            flow_nesting_limit: MAX_DEPTH,
            max_nodes: 50_000,
            max_events: 200_000,
            max_aliases: 1_000,
            max_anchors: 1_000,
            max_documents: 1_000,
            max_total_scalar_bytes: 2 * MAX_FILE_BYTES as usize,
        },
        alias_limits: serde_saphyr::alias_limits! {
            max_total_replayed_events: 20_000,
            max_replay_stack_depth: 16,
        },
        non_finite_float_policy: serde_saphyr::NonFiniteFloatPolicy::PassThrough,
    }
}

/// A parsed document with its spanned tree (absent if the generic pass failed on it).
struct ParsedDoc {
    split: TrafficSplit,
    line: u64,
    root: Location,
    tree: Option<Spanned<Node>>,
}

impl ParsedDoc {
    fn position(&self, file: &Path, path: &str) -> SourcePos {
        let loc = self
            .tree
            .as_ref()
            .map_or(self.root, |tree| locate(tree, &parse_path(path)));
        pos(file, loc)
    }
}

fn pos(file: &Path, loc: Location) -> SourcePos {
    SourcePos {
        file: file.to_path_buf(),
        line: loc.line().max(1),
        column: loc.column().max(1),
    }
}

fn parse_file(file: &Path, text: &str) -> (Vec<ParsedDoc>, Vec<Invalid>) {
    let mut errors = Vec::new();
    let mut trees: Vec<Spanned<Node>> = Vec::new();
    let mut reader = std::io::Cursor::new(text.as_bytes());
    for item in serde_saphyr::read_with_options::<_, Spanned<Node>>(&mut reader, options()) {
        match item {
            Ok(tree) => trees.push(tree),
            // Hostile input: do not run the typed pass on it at all.
            Err(e) if is_limit(&e) => {
                let (loc, message) = describe(&e, &trees);
                return (
                    Vec::new(),
                    vec![Invalid {
                        pos: pos(file, loc),
                        message,
                    }],
                );
            }
            // Syntax and other errors are reported by the typed pass below.
            Err(_) => {}
        }
    }
    let mut docs = Vec::new();
    let mut reader = std::io::Cursor::new(text.as_bytes());
    for item in serde_saphyr::read_with_options::<_, Spanned<TrafficSplit>>(&mut reader, options())
    {
        if errors.len() >= MAX_ERRORS_PER_FILE {
            errors.push(file_error(
                file,
                "too many problems in this file; not reporting more".into(),
            ));
            break;
        }
        match item {
            Ok(doc) => {
                let tree = trees
                    .iter()
                    .position(|t| t.referenced == doc.referenced)
                    .map(|i| trees.swap_remove(i));
                docs.push(ParsedDoc {
                    split: doc.value,
                    line: doc.referenced.line().max(1),
                    root: doc.referenced,
                    tree,
                });
            }
            Err(e) => {
                let (loc, message) = describe(&e, &trees);
                let mut at = pos(file, loc);
                if message.contains("not tabs") {
                    // The parser notices a tab only where it ends a scalar; point at the tab itself.
                    if let Some((line, column)) = first_tab_indent(text, at.line) {
                        (at.line, at.column) = (line, column);
                    }
                }
                errors.push(Invalid { pos: at, message });
            }
        }
    }
    (docs, errors)
}

/// The first tab in the indentation of a line at or after `from` (1-based line and column).
fn first_tab_indent(text: &str, from: u64) -> Option<(u64, u64)> {
    text.lines()
        .enumerate()
        .skip(from.saturating_sub(1) as usize)
        .find_map(|(i, line)| {
            let indent = &line[..line.len() - line.trim_start().len()];
            indent.find('\t').map(|col| (i as u64 + 1, col as u64 + 1))
        })
}

// ---------------------------------------------------------------------------------------------
// Error messages

/// The error the parser actually hit, without snippet and alias wrappers.
fn original(mut e: &serde_saphyr::Error) -> &serde_saphyr::Error {
    loop {
        match e {
            serde_saphyr::Error::WithSnippet { error, .. } => e = error,
            serde_saphyr::Error::AliasError { error, .. } => e = error,
            _ => return e,
        }
    }
}

fn is_limit(e: &serde_saphyr::Error) -> bool {
    use serde_saphyr::Error as E;
    // The parser reports its own flow-nesting limit as a plain message.
    let text = serde_saphyr::UserMessageFormatter.format_message(original(e));
    text.contains("recursion limit")
        || matches!(
            original(e),
            E::Budget { .. }
                | E::AliasReplayLimitExceeded { .. }
                | E::AliasExpansionLimitExceeded { .. }
                | E::AliasReplayStackDepthExceeded { .. }
                | E::AliasReplayCounterOverflow { .. }
                | E::IOError { .. }
        )
}

fn friendly_type(expected: &str) -> String {
    match expected {
        "u8" => "an integer from 0 to 255".into(),
        "u16" => "an integer from 0 to 65535".into(),
        "u32" => "a non-negative integer".into(),
        "u64" | "usize" => "a non-negative integer".into(),
        "i8" | "i16" | "i32" | "i64" | "isize" => "an integer".into(),
        "f32" | "f64" => "a number".into(),
        "bool" | "boolean" | "a boolean" => "true or false".into(),
        "a sequence" => "a list".into(),
        "a map" => "a mapping".into(),
        s if s.starts_with("struct ") => "a mapping".into(),
        s if s.starts_with("enum ") => format!("one of the values of {}", &s[5..]),
        s => s.to_string(),
    }
}

/// Human text for a parse or deserialization error, and where to point.
fn describe(err: &serde_saphyr::Error, trees: &[Spanned<Node>]) -> (Location, String) {
    use serde_saphyr::Error as E;
    let e = original(err);
    let loc = e
        .location()
        .or_else(|| err.location())
        .unwrap_or(Location::UNKNOWN);
    // A mapping shares its position with its first key: type errors are about the mapping,
    // unknown fields about the key.
    let container = matches!(
        e,
        E::Unexpected { .. } | E::SerdeMissingField { .. } | E::SerdeInvalidType { .. }
    );
    let found = find_at(trees, loc, container);
    let prefix = |msg: String| match &found {
        Some(f) if !f.path.is_empty() => format!("{}: {msg}", f.path),
        _ => msg,
    };
    let value = found.as_ref().and_then(|f| f.node.scalar_text());
    let context = |f: &Option<Found>, parent: bool| -> String {
        let path = match f {
            Some(f) if parent && f.is_key => f.parent.clone(),
            Some(f) => f.path.clone(),
            None => String::new(),
        };
        if path.is_empty() {
            "the document".into()
        } else {
            path
        }
    };
    let message = match e {
        E::SerdeUnknownField {
            field, expected, ..
        } => {
            let mut msg = format!(
                "unknown field `{}` in {}; allowed fields: {}",
                sanitize(field),
                context(&found, true),
                expected.join(", ")
            );
            if let Some(close) = closest(field, expected) {
                msg.push_str(&format!(" (did you mean `{close}`?)"));
            }
            msg
        }
        E::SerdeMissingField { field, .. } => {
            // The parser points at the mapping that lacks the field, or at one of its keys.
            let ctx = match &found {
                Some(f) if f.is_key => f.parent.clone(),
                Some(f) => f.path.clone(),
                None => String::new(),
            };
            let ctx = if ctx.is_empty() {
                "the document".to_string()
            } else {
                ctx
            };
            format!("missing required field `{field}` in {ctx}")
        }
        E::SerdeInvalidType {
            unexpected,
            expected,
            ..
        } if found.as_ref().is_some_and(|f| f.path.is_empty()) => {
            format!(
                "a TrafficSplit document must be a mapping, found {} (expected {expected})",
                sanitize(unexpected)
            )
        }
        E::SerdeInvalidType {
            unexpected,
            expected,
            ..
        } => prefix(format!(
            "invalid type: {}, expected {}",
            sanitize(unexpected),
            friendly_type(expected)
        )),
        E::SerdeInvalidValue {
            unexpected,
            expected,
            ..
        } => prefix(format!(
            "invalid value: {}, expected {}",
            sanitize(unexpected),
            friendly_type(expected)
        )),
        E::InvalidScalar { ty, .. } => match value {
            Some(v) => prefix(format!(
                "`{v}` is not valid here, expected {}",
                friendly_type(ty)
            )),
            None => prefix(format!("invalid value, expected {}", friendly_type(ty))),
        },
        E::SerdeUnknownVariant {
            variant, expected, ..
        } => prefix(format!(
            "unknown value `{}`, expected one of {}",
            sanitize(variant),
            expected.join(", ")
        )),
        E::NullIntoString { .. } => {
            prefix("value is empty (null), expected a string; fill it in or quote it".to_string())
        }
        E::DuplicateMappingKey { key, .. } => match key {
            Some(key) => {
                format!(
                    "duplicate key `{}`: each key may appear only once in a mapping",
                    sanitize(key)
                )
            }
            None => "duplicate key: each key may appear only once in a mapping".to_string(),
        },
        E::Budget { breach, .. } => {
            use serde_saphyr::budget::BudgetBreach as B;
            let what = match breach {
                B::Depth { depth } => {
                    format!("nested {depth} levels deep (the limit is {MAX_DEPTH})")
                }
                B::Nodes { nodes } => format!("has more than {nodes} nodes"),
                B::Events { events } => format!("has more than {events} parser events"),
                B::Aliases { aliases } => format!("uses more than {aliases} aliases"),
                B::Anchors { anchors } => format!("defines more than {anchors} anchors"),
                B::ScalarBytes { total_scalar_bytes } => {
                    format!("has more than {total_scalar_bytes} bytes of text")
                }
                other => format!("exceeds a parser limit ({other:?})"),
            };
            format!("document {what}; a TrafficSplit is small and shallow, refusing to parse it")
        }
        E::AliasReplayLimitExceeded { .. }
        | E::AliasExpansionLimitExceeded { .. }
        | E::AliasReplayStackDepthExceeded { .. }
        | E::AliasReplayCounterOverflow { .. } => {
            "too many YAML alias expansions (an alias bomb?); refusing to expand the document"
                .to_string()
        }
        E::Message { msg, .. } => prefix(crate::sanitize::message(msg)),
        // The typed pass wanted a collection and found something else.
        E::Unexpected { expected, .. }
            if expected.ends_with(" start") || expected.contains("scalar") =>
        {
            let want = match *expected {
                "mapping start" => "a mapping",
                "sequence start" => "a list",
                "string scalar" => "a string",
                other => other,
            };
            match &found {
                Some(f) if f.path.is_empty() && !f.is_key => {
                    format!(
                        "a TrafficSplit document must be a mapping, found {}",
                        f.node.kind()
                    )
                }
                Some(f) => prefix(format!(
                    "invalid type: expected {want}, found {}",
                    f.node.kind()
                )),
                None => format!("invalid type: expected {want}"),
            }
        }
        other => {
            let text =
                crate::sanitize::message(&serde_saphyr::UserMessageFormatter.format_message(other));
            let text = if text.contains("recursion limit") {
                return (
                    loc,
                    "document is nested too deeply (parser recursion limit); a TrafficSplit is small and \
                     shallow, refusing to parse it"
                        .to_string(),
                );
            } else if text.contains(" tab") {
                format!("{text}; indent YAML with spaces, not tabs")
            } else {
                text
            };
            if matches!(
                other,
                E::ExternalMessage { .. } | E::Eof { .. } | E::Unexpected { .. }
            ) {
                format!("YAML syntax error: {text}")
            } else {
                prefix(text)
            }
        }
    };
    // Missing fields: point at the mapping that lacks the field.
    let loc = match (e, &found) {
        (E::SerdeMissingField { .. }, Some(f)) if f.is_key => f.parent_loc,
        _ => loc,
    };
    (loc, message)
}

/// Echoed input without control characters and bounded: messages end up in terminals, logs and
/// `/status`, and a 100 KB key must not come back whole.
fn sanitize(s: &str) -> String {
    crate::sanitize::echo(s)
}

/// The allowed name closest to a misspelt one, if it is close enough to be a likely typo.
fn closest<'a>(field: &str, allowed: &[&'a str]) -> Option<&'a str> {
    let field = field.to_ascii_lowercase();
    allowed
        .iter()
        .map(|a| (edit_distance(&field, &a.to_ascii_lowercase()), *a))
        .filter(|(d, a)| *d <= 2.max(a.len() / 4) && *d < a.len())
        .min_by_key(|(d, _)| *d)
        .map(|(_, a)| a)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != *cb);
            cur[j + 1] = (prev[j] + cost).min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

// ---------------------------------------------------------------------------------------------
// Generic spanned tree

/// Any YAML value, with the position of every node and key.
#[derive(Debug)]
enum Node {
    Null,
    Bool(bool),
    Int(i128),
    Float(f64),
    Str(String),
    Seq(Vec<Spanned<Node>>),
    Map(Vec<(Spanned<Node>, Spanned<Node>)>),
}

impl Node {
    fn scalar_text(&self) -> Option<String> {
        match self {
            Node::Null => Some("null".into()),
            Node::Bool(b) => Some(b.to_string()),
            Node::Int(i) => Some(i.to_string()),
            Node::Float(f) => Some(f.to_string()),
            Node::Str(s) => Some(sanitize(s)),
            Node::Seq(_) | Node::Map(_) => None,
        }
    }

    /// What kind of value this is, for "expected X, found Y".
    fn kind(&self) -> String {
        match self {
            Node::Seq(_) => "a list".into(),
            Node::Map(_) => "a mapping".into(),
            Node::Null => "nothing (null)".into(),
            Node::Str(s) => format!("the string {:?}", sanitize(s)),
            other => format!("`{}`", other.scalar_text().unwrap_or_default()),
        }
    }

    /// The text of a key as it appears in a path.
    fn key_text(&self) -> String {
        self.scalar_text().unwrap_or_else(|| "?".into())
    }
}

impl<'de> Deserialize<'de> for Node {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> de::Visitor<'de> for V {
            type Value = Node;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("any YAML value")
            }
            fn visit_unit<E>(self) -> Result<Node, E> {
                Ok(Node::Null)
            }
            fn visit_none<E>(self) -> Result<Node, E> {
                Ok(Node::Null)
            }
            fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Node, D::Error> {
                Node::deserialize(d)
            }
            fn visit_bool<E>(self, v: bool) -> Result<Node, E> {
                Ok(Node::Bool(v))
            }
            fn visit_i64<E>(self, v: i64) -> Result<Node, E> {
                Ok(Node::Int(v.into()))
            }
            fn visit_u64<E>(self, v: u64) -> Result<Node, E> {
                Ok(Node::Int(v.into()))
            }
            fn visit_i128<E>(self, v: i128) -> Result<Node, E> {
                Ok(Node::Int(v))
            }
            fn visit_u128<E>(self, v: u128) -> Result<Node, E> {
                Ok(i128::try_from(v).map_or(Node::Float(v as f64), Node::Int))
            }
            fn visit_f64<E>(self, v: f64) -> Result<Node, E> {
                Ok(Node::Float(v))
            }
            fn visit_str<E>(self, v: &str) -> Result<Node, E> {
                Ok(Node::Str(v.to_string()))
            }
            fn visit_string<E>(self, v: String) -> Result<Node, E> {
                Ok(Node::Str(v))
            }
            fn visit_bytes<E>(self, v: &[u8]) -> Result<Node, E> {
                Ok(Node::Str(String::from_utf8_lossy(v).into_owned()))
            }
            fn visit_seq<A: de::SeqAccess<'de>>(self, mut a: A) -> Result<Node, A::Error> {
                let mut items = Vec::new();
                while let Some(item) = a.next_element()? {
                    items.push(item);
                }
                Ok(Node::Seq(items))
            }
            fn visit_map<A: de::MapAccess<'de>>(self, mut a: A) -> Result<Node, A::Error> {
                let mut entries = Vec::new();
                while let Some(entry) = a.next_entry()? {
                    entries.push(entry);
                }
                Ok(Node::Map(entries))
            }
        }
        d.deserialize_any(V)
    }
}

/// One segment of a path such as `spec.backends[1].name` or `spec.weights["a.b"]`.
#[derive(Debug, PartialEq)]
enum Segment {
    Key(String),
    Index(usize),
}

/// Parse a path as written by [`validate::check`]. A trailing `#key` asks for the position of the
/// last key itself rather than of its value.
fn parse_path(path: &str) -> (Vec<Segment>, bool) {
    let (path, want_key) = match path.strip_suffix("#key") {
        Some(p) => (p, true),
        None => (path, false),
    };
    let mut segments = Vec::new();
    let mut rest = path;
    while !rest.is_empty() {
        if let Some(r) = rest.strip_prefix('.') {
            rest = r;
        } else if let Some(r) = rest.strip_prefix("[\"") {
            // A JSON string up to the closing `"]`.
            let mut de = serde_json::Deserializer::from_str(&rest[1..]).into_iter::<String>();
            match de.next() {
                Some(Ok(key)) => {
                    let used = 1 + de.byte_offset();
                    segments.push(Segment::Key(key));
                    rest = rest[used..].strip_prefix(']').unwrap_or(&rest[used..]);
                }
                _ => {
                    segments.push(Segment::Key(r.to_string()));
                    break;
                }
            }
        } else if let Some(r) = rest.strip_prefix('[') {
            let end = r.find(']').unwrap_or(r.len());
            match r[..end].parse() {
                Ok(i) => segments.push(Segment::Index(i)),
                Err(_) => break,
            }
            rest = r.get(end + 1..).unwrap_or("");
        } else {
            let end = rest.find(['.', '[']).unwrap_or(rest.len());
            segments.push(Segment::Key(rest[..end].to_string()));
            rest = &rest[end..];
        }
    }
    (segments, want_key)
}

/// The position of a path, or of its nearest existing ancestor. For a mapping entry whose value
/// is a block collection (starting on a later line), the key is the better place to point at.
fn locate(tree: &Spanned<Node>, (segments, want_key): &(Vec<Segment>, bool)) -> Location {
    let mut node = tree;
    let mut at = tree.referenced;
    for (i, segment) in segments.iter().enumerate() {
        let last = i + 1 == segments.len();
        match (&node.value, segment) {
            (Node::Map(entries), Segment::Key(key)) => {
                let Some((k, v)) = entries.iter().find(|(k, _)| k.value.key_text() == *key) else {
                    return at;
                };
                at = if (last && *want_key) || v.referenced.line() > k.referenced.line() {
                    k.referenced
                } else {
                    v.referenced
                };
                node = v;
            }
            (Node::Seq(items), Segment::Index(index)) => {
                let Some(item) = items.get(*index) else {
                    return at;
                };
                at = item.referenced;
                node = item;
            }
            _ => return at,
        }
    }
    at
}

/// A node found at an error's position.
struct Found<'a> {
    /// Path of the node (for a key: of its entry).
    path: String,
    /// Path and position of the enclosing collection.
    parent: String,
    parent_loc: Location,
    node: &'a Node,
    is_key: bool,
}

fn find_at(trees: &[Spanned<Node>], loc: Location, prefer_container: bool) -> Option<Found<'_>> {
    if loc == Location::UNKNOWN {
        return None;
    }
    let same = |l: &Location| l.line() == loc.line() && l.column() == loc.column();
    fn walk<'a>(
        n: &'a Spanned<Node>,
        path: &str,
        same: &dyn Fn(&Location) -> bool,
        depth: usize,
        prefer_container: bool,
    ) -> Option<Found<'a>> {
        if depth > 64 {
            return None;
        }
        let this = || Found {
            path: path.to_string(),
            parent: String::new(),
            parent_loc: n.referenced,
            node: &n.value,
            is_key: false,
        };
        if prefer_container && same(&n.referenced) {
            return Some(this());
        }
        match &n.value {
            Node::Map(entries) => {
                for (k, v) in entries {
                    let child = validate::join_key(path, &k.value.key_text());
                    if let Some(found) = walk(v, &child, same, depth + 1, prefer_container) {
                        return Some(found);
                    }
                    if same(&k.referenced) {
                        return Some(Found {
                            path: child,
                            parent: path.to_string(),
                            parent_loc: n.referenced,
                            node: &k.value,
                            is_key: true,
                        });
                    }
                }
            }
            Node::Seq(items) => {
                for (i, item) in items.iter().enumerate() {
                    let child = format!("{path}[{i}]");
                    if let Some(found) = walk(item, &child, same, depth + 1, prefer_container) {
                        return Some(found);
                    }
                }
            }
            _ => {}
        }
        same(&n.referenced).then(this)
    }
    trees
        .iter()
        .find_map(|t| walk(t, "", &same, 0, prefer_container))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc(name: &str, blue: u32) -> String {
        format!(
            "apiVersion: trafficshift.dev/v1alpha1\nkind: TrafficSplit\nmetadata:\n  name: {name}\nspec:\n  record:\n    hostedZone: z.example.\n    name: {name}.z.example.\n    type: A\n  backends:\n    - name: blue\n      target:\n        alias:\n          dnsName: blue.lb.example\n          hostedZoneId: Z35SXDOTRQ7X7K\n    - name: green\n      target:\n        alias:\n          dnsName: green.lb.example\n          hostedZoneId: Z35SXDOTRQ7X7K\n  weights:\n    blue: {blue}\n    green: {}\n",
            100 - i64::from(blue)
        )
    }

    fn same(a: &Loaded, b: &Loaded) {
        assert_eq!(a.docs, b.docs);
        assert_eq!(a.errors, b.errors);
        assert_eq!(a.files, b.files);
    }

    #[test]
    fn a_cached_load_says_what_a_fresh_load_says() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().to_path_buf();
        let paths = vec![dir.clone()];
        std::fs::write(dir.join("a.yaml"), doc("a", 80)).unwrap();
        std::fs::write(dir.join("b.yaml"), doc("b", 80)).unwrap();
        std::fs::write(dir.join("c.yaml"), "kind: [").unwrap();
        let mut cache = DocCache::default();
        let first = cache.load_all(&paths);
        assert_eq!(first.docs.len(), 2);
        same(&first, &load_paths(&paths));

        // b now duplicates a (an error that depends on another file), d is new, c is fixed.
        std::fs::write(dir.join("b.yaml"), doc("a", 10)).unwrap();
        std::fs::write(dir.join("c.yaml"), doc("c", 50)).unwrap();
        std::fs::write(dir.join("d.yaml"), doc("d", 110)).unwrap();
        let changed = [dir.join("b.yaml"), dir.join("c.yaml"), dir.join("d.yaml")];
        let second = cache.load_changed(&paths, &changed);
        same(&second, &load_paths(&paths));
        assert!(
            second
                .errors
                .iter()
                .any(|e| e.message.contains("duplicate")),
            "{:?}",
            second.errors
        );

        std::fs::remove_file(dir.join("a.yaml")).unwrap();
        let third = cache.load_changed(&paths, &[dir.join("a.yaml")]);
        same(&third, &load_paths(&paths));
        assert_eq!(
            third
                .docs
                .iter()
                .map(|d| d.split.name())
                .collect::<Vec<_>>(),
            ["a", "c"],
            "b's document is no longer a duplicate"
        );
    }

    #[test]
    fn an_event_reads_only_the_files_it_names_and_a_full_load_reads_all() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().to_path_buf();
        let paths = vec![dir.clone()];
        std::fs::write(dir.join("a.yaml"), doc("a", 80)).unwrap();
        std::fs::write(dir.join("b.yaml"), doc("b", 80)).unwrap();
        let mut cache = DocCache::default();
        cache.load_all(&paths);
        std::fs::write(dir.join("a.yaml"), doc("a", 30)).unwrap();
        std::fs::write(dir.join("b.yaml"), doc("b", 30)).unwrap();
        let blue = |l: &Loaded, name: &str| {
            l.docs
                .iter()
                .find(|d| d.split.name() == name)
                .unwrap()
                .split
                .spec
                .weights["blue"]
        };
        let named = cache.load_changed(&paths, &[dir.join("a.yaml")]);
        assert_eq!(blue(&named, "a"), 30);
        assert_eq!(blue(&named, "b"), 80, "b was not named, so not read");
        let all = cache.load_all(&paths);
        assert_eq!(blue(&all, "b"), 30, "a full load verifies every file");
        same(&all, &load_paths(&paths));
    }

    #[test]
    fn parses_paths() {
        assert_eq!(
            parse_path("spec.backends[1].name"),
            (
                vec![
                    Segment::Key("spec".into()),
                    Segment::Key("backends".into()),
                    Segment::Index(1),
                    Segment::Key("name".into())
                ],
                false
            )
        );
        assert_eq!(
            parse_path(r#"spec.weights["a.b"]#key"#),
            (
                vec![
                    Segment::Key("spec".into()),
                    Segment::Key("weights".into()),
                    Segment::Key("a.b".into())
                ],
                true
            )
        );
        assert_eq!(parse_path(""), (vec![], false));
    }

    #[test]
    fn suggests_close_names() {
        assert_eq!(
            closest("hostedzone", &["hostedZone", "name"]),
            Some("hostedZone")
        );
        assert_eq!(
            closest("weigths", &["weights", "backends"]),
            Some("weights")
        );
        assert_eq!(closest("zzz", &["name"]), None);
    }

    #[test]
    fn echoed_input_is_clean_and_bounded() {
        let key = format!("x\\u001b[2J{}", "k".repeat(1000));
        let text = format!(
            "apiVersion: trafficshift.dev/v1alpha1\nkind: TrafficSplit\nmetadata: {{name: api}}\n\
             \"{key}\": 1\n"
        );
        let (_, errors) = parse_file(Path::new("t.yaml"), &text);
        let e = errors.first().expect("an unknown-field error");
        assert!(
            e.message.contains("unknown field `x[2Jkkk"),
            "{}",
            e.message
        );
        assert!(!e.message.chars().any(char::is_control), "{:?}", e.message);
        assert!(e.message.len() < 700, "{} bytes", e.message.len());
    }
}
