//! `docs/LIFECYCLE.md` against the code: every `.rs` file it cites exists, and every
//! function, method, field, variant or type it cites is defined where it says.
//!
//! Citations are the document's backtick spans (and the words of its diagram):
//! - a span ending in `.rs` is a file: `crates/...` from the repository root, any other
//!   relative to `crates/pylon-proxy/src/`; a span ending in `/`, or starting with
//!   `crates/`, is a folder the same way;
//! - `name(...)` is a function: `fn name` somewhere under `crates/`;
//! - `Type::member` is a method, field or variant: `fn member` (a field `member:`, or
//!   for a variant the name) in a file that defines or implements `Type`;
//! - `module::name` is `fn name` (or a type `Name`) in `module.rs` or `module/mod.rs`;
//!   `pylon_x::name` anywhere in the crate `crates/pylon-x`;
//! - after a file and a colon (`` `conn.rs`: `TrackedIo`, `ConnState::verdict` ``), the
//!   names listed are held to that file: a plain `name` needs `fn name` there, a plain
//!   `Name` a `struct`/`enum`/`trait`/`type Name` there.
//!
//! Any other span (config keys, metric names, headers, values) is not a citation.
//! Names of things not built yet are written in italics, not in backticks.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashSet;
use std::path::{Path, PathBuf};

const DOC: &str = "docs/LIFECYCLE.md";
/// This file: it may be cited, but its test sources define nothing.
const THIS: &str = "crates/pylon/tests/docs.rs";
/// Where a relative path that does not start with `crates/` points.
const PROXY_SRC: &str = "crates/pylon-proxy/src/";

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// What one source file defines, as far as a citation can tell.
struct Source {
    /// Relative to the repository root, with `/`.
    path: String,
    /// Names after `fn`.
    fns: HashSet<String>,
    /// Names after `struct`, `enum`, `trait`, `type`, `union`.
    types: HashSet<String>,
    /// Every name on an `impl` line, and the defined types.
    implemented: HashSet<String>,
    /// Names followed by a single `:` (struct fields, among others).
    fields: HashSet<String>,
    /// Every identifier in the file.
    idents: HashSet<String>,
}

fn is_ident_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

fn is_ident(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(is_ident_char)
}

impl Source {
    fn parse(path: String, text: &str) -> Source {
        // Identifiers and single punctuation characters, in order.
        let mut tokens: Vec<&str> = Vec::new();
        let mut rest = text;
        while let Some(c) = rest.chars().next() {
            let len = if is_ident_char(c) {
                rest.find(|c| !is_ident_char(c)).unwrap_or(rest.len())
            } else {
                c.len_utf8()
            };
            if !c.is_whitespace() {
                tokens.push(&rest[..len]);
            }
            rest = &rest[len..];
        }
        let mut s = Source {
            path,
            fns: HashSet::new(),
            types: HashSet::new(),
            implemented: HashSet::new(),
            fields: HashSet::new(),
            idents: HashSet::new(),
        };
        for (i, t) in tokens.iter().enumerate() {
            if !is_ident(t) {
                continue;
            }
            s.idents.insert(t.to_string());
            let prev = i.checked_sub(1).map(|p| tokens[p]);
            match prev {
                Some("fn") => {
                    s.fns.insert(t.to_string());
                }
                Some("struct" | "enum" | "trait" | "type" | "union") => {
                    s.types.insert(t.to_string());
                    s.implemented.insert(t.to_string());
                }
                _ => {}
            }
            if tokens.get(i + 1) == Some(&":")
                && tokens.get(i + 2) != Some(&":")
                && prev != Some(":")
            {
                s.fields.insert(t.to_string());
            }
        }
        for line in text.lines() {
            let line = line.trim_start();
            let line = line.strip_prefix("unsafe ").unwrap_or(line);
            if let Some(head) = line.strip_prefix("impl")
                && head.starts_with([' ', '<'])
            {
                let head = head.split('{').next().unwrap_or(head);
                for word in head.split(|c: char| !is_ident_char(c)) {
                    if is_ident(word) {
                        s.implemented.insert(word.to_owned());
                    }
                }
            }
        }
        s
    }
}

/// Every `.rs` file under `crates/`.
struct Index {
    sources: Vec<Source>,
}

impl Index {
    fn load() -> Index {
        let root = root();
        let mut files = Vec::new();
        let mut dirs = vec![root.join("crates")];
        while let Some(dir) = dirs.pop() {
            for entry in std::fs::read_dir(&dir).expect("read crates/") {
                let path = entry.expect("dir entry").path();
                if path.is_dir() {
                    if path.file_name().is_some_and(|n| n != "target") {
                        dirs.push(path);
                    }
                } else if path.extension().is_some_and(|e| e == "rs") {
                    let text = std::fs::read_to_string(&path).expect("read source");
                    let rel = path
                        .strip_prefix(&root)
                        .expect("under the root")
                        .to_string_lossy()
                        .replace('\\', "/");
                    let text = if rel == THIS { String::new() } else { text };
                    files.push((rel, text));
                }
            }
        }
        Index::new(files)
    }

    /// `(path from the repository root, contents)` of each file.
    fn new(files: Vec<(String, String)>) -> Index {
        let mut sources: Vec<Source> = files
            .into_iter()
            .map(|(path, text)| Source::parse(path, &text))
            .collect();
        sources.sort_by(|a, b| a.path.cmp(&b.path));
        Index { sources }
    }

    fn file(&self, path: &str) -> Option<&Source> {
        self.sources.iter().find(|s| s.path == path)
    }

    /// A folder with Rust files in it.
    fn has_folder(&self, path: &str) -> bool {
        let prefix = format!("{}/", path.trim_end_matches('/'));
        self.sources.iter().any(|s| s.path.starts_with(&prefix))
    }
}

/// A path as cited, relative to the repository root.
fn resolve(cited: &str) -> String {
    if cited.starts_with("crates/") {
        cited.to_owned()
    } else {
        format!("{PROXY_SRC}{cited}")
    }
}

fn is_path(s: &str) -> bool {
    !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | '/'))
}

/// One backtick span (or diagram word) and what comes before it.
struct Span {
    line: usize,
    text: String,
    /// The text between the previous span and this one.
    gap: String,
}

/// The backtick spans of the prose, and the words of fenced blocks (with a gap that
/// pairs them with no file).
fn spans(doc: &str) -> Vec<Span> {
    let mut out = Vec::new();
    let mut prose = String::new();
    let mut fenced = false;
    for (n, line) in doc.lines().enumerate() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
            prose.push('\n');
            continue;
        }
        if fenced {
            for word in line.split_whitespace() {
                let word = word.trim_start_matches('(');
                let word = word.split('(').next().unwrap_or(word);
                let word = word.trim_end_matches([',', ';', ':', ')']);
                out.push(Span {
                    line: n + 1,
                    text: word.to_owned(),
                    gap: "|".to_owned(),
                });
            }
            prose.push('\n');
        } else {
            prose.push_str(line);
            prose.push('\n');
        }
    }
    let line_at = |byte: usize| prose[..byte].matches('\n').count() + 1;
    let mut gap_start = 0;
    let mut pos = 0;
    while let Some(open) = prose[pos..].find('`').map(|i| pos + i) {
        let Some(close) = prose[open + 1..].find('`').map(|i| open + 1 + i) else {
            break;
        };
        out.push(Span {
            line: line_at(open),
            text: prose[open + 1..close]
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" "),
            gap: prose[gap_start..open].to_owned(),
        });
        gap_start = close + 1;
        pos = close + 1;
    }
    out.sort_by_key(|s| s.line);
    out
}

/// The stale citations of `doc`, one message each.
fn check(doc: &str, index: &Index) -> Vec<String> {
    let mut errors = Vec::new();
    // The file that the spans now being read are listed under (`file`: `a`, `b`).
    let mut listed_under: Option<String> = None;
    let mut previous_file: Option<String> = None;
    for span in spans(doc) {
        let at = format!("{DOC}:{}", span.line);
        let gap = span.gap.trim();
        let owner = match (gap, &previous_file, &listed_under) {
            (":", Some(f), _) => Some(f.clone()),
            (",", _, Some(f)) => Some(f.clone()),
            _ => None,
        };
        listed_under = None;
        previous_file = None;
        let text = span.text.trim();
        if text.contains(".rs") {
            if !(is_path(text) && text.ends_with(".rs")) {
                errors.push(format!(
                    "{at}: `{text}` is not a plain file path (write `file.rs`: `name`)"
                ));
                continue;
            }
            let path = resolve(text);
            if index.file(&path).is_none() {
                errors.push(format!("{at}: `{text}` cites {path}, which does not exist"));
            } else {
                previous_file = Some(path);
            }
            continue;
        }
        if is_path(text) && (text.ends_with('/') || text.starts_with("crates/")) {
            let path = resolve(text);
            if !index.has_folder(&path) {
                errors.push(format!(
                    "{at}: `{text}` cites the folder {path}, which does not exist"
                ));
            }
            continue;
        }
        // `a::b::c` with an optional `(...)`.
        let (head, call) = match text.split_once('(') {
            Some((head, args)) if args.ends_with(')') => (head, true),
            Some(_) => continue,
            None => (text, false),
        };
        let segments: Vec<&str> = head.split("::").collect();
        if !segments.iter().all(|s| is_ident(s)) {
            continue;
        }
        let member = segments[segments.len() - 1];
        let qualifier = &segments[..segments.len() - 1];
        if !member.chars().any(|c| c.is_ascii_lowercase()) {
            // A constant or a frame name (`GOAWAY(PROTOCOL_ERROR)`).
            continue;
        }
        if qualifier.is_empty() && !call && owner.is_none() {
            // A plain word: a config key, a metric, a reason, a function named in
            // passing. One with an underscore must still be written somewhere in the
            // code (a field, a string, a `fn`): a renamed function is caught here.
            if member.contains('_')
                && !member.chars().any(|c| c.is_ascii_uppercase())
                && !index.sources.iter().any(|s| s.idents.contains(member))
            {
                errors.push(format!(
                    "{at}: `{text}` is named nowhere under crates/ (renamed or removed?)"
                ));
            }
            continue;
        }
        if let Some(msg) = check_name(text, qualifier, member, owner.as_deref(), index) {
            errors.push(format!("{at}: {msg}"));
        } else if owner.is_some() {
            listed_under = owner;
        }
    }
    errors
}

fn upper(s: &str) -> bool {
    s.starts_with(|c: char| c.is_ascii_uppercase())
}

/// Why the citation `text` (`qualifier::member`) is stale, if it is.
fn check_name(
    text: &str,
    qualifier: &[&str],
    member: &str,
    owner: Option<&str>,
    index: &Index,
) -> Option<String> {
    let type_name = qualifier.last().copied().filter(|q| upper(q));
    let fn_or_type = |s: &Source| {
        if upper(member) {
            s.types.contains(member)
        } else {
            s.fns.contains(member)
        }
    };
    // Defined as cited, in `s`.
    let found_in = |s: &Source| match type_name {
        Some(t) => {
            s.implemented.contains(t)
                && if upper(member) {
                    s.idents.contains(member)
                } else {
                    s.fns.contains(member) || s.fields.contains(member)
                }
        }
        None => fn_or_type(s),
    };
    let what = match (type_name, upper(member)) {
        (Some(t), true) => format!("variant `{member}` of `{t}`"),
        (Some(t), false) => format!("`fn {member}` (nor field `{member}`) of `{t}`"),
        (None, true) => format!("type `{member}`"),
        (None, false) => format!("`fn {member}`"),
    };
    if let Some(file) = owner {
        let source = index.file(file)?;
        if found_in(source) {
            return None;
        }
        return Some(format!(
            "`{text}` is stale: no {what} in {file}, where it is cited"
        ));
    }
    let candidates: Vec<&Source> = match (type_name, qualifier) {
        (Some(t), _) => index
            .sources
            .iter()
            .filter(|s| s.implemented.contains(t))
            .collect(),
        (None, []) => index.sources.iter().collect(),
        (None, modules) => {
            let (prefix, modules) = match modules.first() {
                Some(krate) if krate.starts_with("pylon_") => (
                    format!("crates/{}/src/", krate.replace('_', "-")),
                    &modules[1..],
                ),
                _ => ("crates/".to_owned(), modules),
            };
            let tail = modules.join("/");
            index
                .sources
                .iter()
                .filter(|s| {
                    s.path.starts_with(&prefix)
                        && (tail.is_empty()
                            || s.path.ends_with(&format!("/{tail}.rs"))
                            || s.path.ends_with(&format!("/{tail}/mod.rs")))
                })
                .collect()
        }
    };
    let expected = match (type_name, qualifier) {
        (Some(t), _) => format!("the files that define or implement `{t}`"),
        (None, []) => "crates/".to_owned(),
        (None, q) => format!("the module `{}`", q.join("::")),
    };
    if candidates.is_empty() {
        return Some(match type_name {
            Some(t) => format!("`{text}` is stale: nothing under crates/ defines `{t}`"),
            None => format!(
                "`{text}` is stale: no module `{}` under crates/ (`{}.rs` or `{}/mod.rs`)",
                qualifier.join("::"),
                qualifier.join("/"),
                qualifier.join("/")
            ),
        });
    }
    if candidates.iter().any(|s| found_in(s)) {
        return None;
    }
    let files: Vec<&str> = candidates.iter().take(4).map(|s| s.path.as_str()).collect();
    let more = if candidates.len() > files.len() {
        ", ..."
    } else {
        ""
    };
    Some(format!(
        "`{text}` is stale: no {what} in {expected} ({}{more})",
        files.join(", ")
    ))
}

#[test]
fn lifecycle_citations_are_true() {
    let doc = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../docs/LIFECYCLE.md"
    ))
    .expect("docs/LIFECYCLE.md");
    let index = Index::load();
    let errors = check(&doc, &index);
    assert!(
        errors.is_empty(),
        "{DOC} cites what the code no longer has ({} stale):\n{}",
        errors.len(),
        errors.join("\n")
    );
}

/// A small source tree for the checker's own test.
fn sample() -> Index {
    let files = [
        (
            "crates/pylon-proxy/src/http/pipeline.rs",
            "pub struct ConnCtx {\n    pub client_cert: Option<u8>,\n}\n\
             pub async fn handle(req: u8) -> u8 { req }\nfn finish() {}\n",
        ),
        (
            "crates/pylon-proxy/src/http/body.rs",
            "pub struct ResponseBody;\nimpl ResponseBody {\n    pub fn stream() {}\n}\n\
             pub fn error_response(kind: ErrorKind) {}\n",
        ),
        (
            "crates/pylon-proxy/src/cluster/mod.rs",
            "pub struct ClusterRuntime;\n",
        ),
        (
            "crates/pylon-proxy/src/cluster/pool.rs",
            "impl ClusterRuntime {\n    pub fn pick(&self) {}\n}\n",
        ),
        (
            "crates/pylon-proxy/src/l4/relay.rs",
            "pub enum RelayEnd {\n    Closed,\n    Retired,\n}\n",
        ),
        (
            "crates/pylon-proxy/src/l4/mod.rs",
            "pub async fn accept_proxy_header() {}\n",
        ),
        (
            "crates/pylon-proxy/src/listener.rs",
            "pub struct AcceptLoop;\nimpl AcceptLoop {\n    pub async fn run(self) {}\n}\n",
        ),
        ("crates/pylon-proxy/src/tls/server.rs", ""),
        (
            "crates/pylon-proxy/src/health/mod.rs",
            "pub fn spawn() {}\n",
        ),
        ("crates/pylon-lb/src/state.rs", "pub struct Endpoints;\n"),
        ("crates/pylon-lb/src/hash.rs", "pub fn hash_key() {}\n"),
        (
            "crates/pylon-config/src/model.rs",
            "pub struct Cluster;\npub struct Limits {\n    pub max_headers: usize,\n}\n",
        ),
    ];
    Index::new(
        files
            .into_iter()
            .map(|(p, t)| (p.to_owned(), t.to_owned()))
            .collect(),
    )
}

/// The checker itself: true citations pass, and each wrong one is reported once.
#[test]
fn stale_citations_are_caught() {
    let index = sample();
    let good = "`http/pipeline.rs`: `handle`, `finish`, `ConnCtx`; `pipeline::handle`, \
                `ResponseBody::stream`, `ConnCtx::client_cert`, `RelayEnd::Retired`, \
                `ClusterRuntime::pick`, `error_response(ErrorKind)`, \
                `crates/pylon-lb/src/state.rs`: `Endpoints`, `health/`, `crates/pylon-lb`, \
                `pylon_lb::hash_key`, `model::Cluster`, `max_headers`, `x-pylon-error`, \
                `GOAWAY(PROTOCOL_ERROR)`, `ctx.runtime.load_full()`.\n\
                ```\nlistener.rs   AcceptLoop::run (tls/server.rs, SNI)\n```\n";
    assert_eq!(check(good, &index), Vec::<String>::new());
    for bad in [
        "`http/pipelines.rs`",
        "`crates/pylon-lb/src/nothing.rs`",
        "`nowhere/`",
        "`crates/pylon-cache`",
        "`l4/mod.rs::accept_proxy_header`",
        "`http/pipeline.rs`: `no_such_function`",
        "`http/pipeline.rs`: `handle`, `no_such_function`",
        "`http/pipeline.rs`: `NoSuchType`",
        "`http/pipeline.rs`: `ClusterRuntime::pick`",
        "`ClusterRuntime::no_such_method`",
        "`ConnCtx::no_such_field`",
        "`RelayEnd::NoSuchVariant`",
        "`NoSuchType::method`",
        "`pipeline::no_such_function`",
        "`no_such_module::handle`",
        "`pylon_lb::no_such_function`",
        "`no_such_function()`",
        "`no_such_function`",
        "```\nlistener.rs   AcceptLoop::no_such_method\n```",
        "```\nno_such_file.rs\n```",
    ] {
        let errors = check(bad, &index);
        assert_eq!(errors.len(), 1, "{bad}: {errors:?}");
    }
}
