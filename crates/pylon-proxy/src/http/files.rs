//! Static files (`files = { root = ... }`, a route action): a directory served for
//! `GET` and `HEAD` (files up to 64 KiB read whole and kept for a second per worker
//! thread, larger ones sent with `sendfile(2)`
//! to cleartext HTTP/1.1 clients and in 256 KiB reads as the others take them; from the
//! worker thread, as NGINX does), with `ETag` and
//! `Last-Modified` validators (304 for `If-None-Match` and `If-Modified-Since`), a
//! single byte `Range` (206, or 416; `If-Range` honoured), precompressed `FILE.br`,
//! `FILE.zst` and `FILE.gz` siblings for clients that accept them, index files, an
//! optional listing, and media types from `mime_guess`.
//!
//! Paths are made safe by [`normalize`] before the file system sees them: the path is
//! split at `/` first, then each segment percent-decoded; `..`, an encoded `/` or `\`,
//! NUL and non-UTF-8 segments are refused (400 `path_refused`); and, unless
//! `follow_symlinks`, the real path (symbolic links resolved) must stay inside the
//! root (else 403 `file_forbidden`), which `openat2(2)` with `RESOLVE_BENEATH` checks
//! as it opens the file (no separate `realpath`). Written here because the rules are the
//! point: no crate states them for a reverse proxy's root.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use pylon_config::model::FilesAction;

use super::body::ResponseBody;
use super::error::ErrorKind;

/// The path's segments, percent-decoded, with `.` and empty ones dropped; `None` when
/// the path must be refused (`..`, an encoded `/` or `\`, NUL, not UTF-8, not
/// starting with `/`).
pub fn normalize(path: &str) -> Option<Vec<String>> {
    let rest = path.strip_prefix('/')?;
    let mut out = Vec::new();
    for raw in rest.split('/') {
        let bytes: Vec<u8> = percent_encoding::percent_decode_str(raw).collect();
        let seg = String::from_utf8(bytes).ok()?;
        if seg.contains(['/', '\\', '\0']) || seg == ".." {
            return None;
        }
        if seg.is_empty() || seg == "." {
            continue;
        }
        out.push(seg);
    }
    Some(out)
}

/// Files up to this size are read whole with the lookup; larger ones become a file
/// body ([`ResponseBody::file`]).
const SMALL: u64 = 64 * 1024;

/// What the file system said about a request's path, found in one blocking call.
enum Found {
    /// A directory asked for without its trailing `/`.
    Slash,
    /// A directory to list.
    Listing(PathBuf),
    File(Box<FoundFile>),
}

/// A file to serve: the one asked for (or a precompressed sibling chosen for this
/// client), its validators, and its bytes when it is small (else the open file).
#[derive(Clone)]
struct FoundFile {
    /// The file asked for (its name gives the type).
    path: PathBuf,
    /// `"MTIME-LEN"` of the file asked for, and its modification time.
    etag: String,
    mtime: SystemTime,
    /// Precompressed siblings exist (the answer varies by `Accept-Encoding`).
    varies: bool,
    /// The sibling chosen for this client: its coding, and the file.
    coding: Option<&'static str>,
    file: Option<std::sync::Arc<std::fs::File>>,
    len: u64,
    content: Option<Bytes>,
}

/// Looks the path up under the root (symbolic links checked), an index file for a
/// directory, the precompressed siblings, and opens (and for a small file, reads) what
/// is to be served.
fn find(
    f: &FilesAction,
    segments: &[String],
    trailing_slash: bool,
    accept: &http::HeaderMap,
    ranged: bool,
) -> Result<Found, ErrorKind> {
    // The root itself is `.` (an empty path names nothing).
    let mut rel: PathBuf = if segments.is_empty() {
        PathBuf::from(".")
    } else {
        segments.iter().collect()
    };
    let (mut file, mut meta) = open_in(f, &rel)?;
    if meta.is_dir() {
        if !trailing_slash {
            return Ok(Found::Slash);
        }
        let index = f.index.iter().find_map(|name| {
            let candidate = rel.join(name);
            open_in(f, &candidate)
                .ok()
                .filter(|(_, m)| m.is_file())
                .map(|(file, m)| (candidate, file, m))
        });
        match index {
            Some((p, fi, m)) => {
                rel = p;
                file = fi;
                meta = m;
            }
            None if f.browse => return Ok(Found::Listing(f.root.join(&rel))),
            None => return Err(ErrorKind::FileForbidden),
        }
    }
    if !meta.is_file() {
        return Err(ErrorKind::FileForbidden);
    }
    // Siblings are looked for only when the client takes one of their codings (a client
    // that takes none gets the file itself, which is right for every client).
    let wanted = super::filters::compression::negotiate_tokens(accept, &["br", "zstd", "gzip"]);
    let mut siblings = Vec::new();
    if f.precompressed && wanted.is_some() {
        for (coding, ext) in [("br", "br"), ("zstd", "zst"), ("gzip", "gz")] {
            let mut name = rel.as_os_str().to_owned();
            name.push(".");
            name.push(ext);
            if let Ok((fi, m)) = open_in(f, Path::new(&name))
                && m.is_file()
            {
                siblings.push((coding, fi, m));
            }
        }
    }
    let varies = !siblings.is_empty();
    // A range is served from the file itself.
    let codings: Vec<&'static str> = siblings.iter().map(|(c, _, _)| *c).collect();
    let chosen = if ranged {
        None
    } else {
        super::filters::compression::negotiate_tokens(accept, &codings)
            .and_then(|c| siblings.into_iter().find(|(s, _, _)| *s == c))
    };
    let (coding, mut file, len) = match chosen {
        Some((c, fi, m)) => (Some(c), fi, m.len()),
        None => {
            let len = meta.len();
            (None, file, len)
        }
    };
    let content = if len <= SMALL {
        Some(read_small(&mut file, len).map_err(not_found)?)
    } else {
        None
    };
    let (etag, mtime) = validators(&meta);
    Ok(Found::File(Box::new(FoundFile {
        path: f.root.join(&rel),
        etag,
        mtime,
        varies,
        coding,
        // A small file's bytes are all it needs.
        file: content.is_none().then(|| std::sync::Arc::new(file)),
        len,
        content,
    })))
}

/// Small files found lately, per worker thread: a file (up to [`SMALL`]) served again
/// within [`KEEP_FOUND`] is answered from memory, without opening it (the open, stat,
/// read and close were a quarter of a small file's cost). A file changed on disk is
/// served within that second, as a root directory renamed is. At most
/// [`FOUND_BYTES`] per thread; past it the oldest half goes.
mod found_cache {
    use std::cell::RefCell;
    use std::collections::HashMap;
    use std::time::{Duration, Instant};

    use super::FoundFile;

    pub(super) const KEEP_FOUND: Duration = Duration::from_secs(1);
    pub(super) const FOUND_BYTES: usize = 4 << 20;

    /// Root, the request's path as sent, whether it asks for a range (a range is served
    /// from the file itself), and the client's `Accept-Encoding` when a precompressed
    /// sibling may be chosen by it.
    pub(super) type Key = (std::path::PathBuf, String, bool, Vec<u8>);

    #[derive(Default)]
    struct Cache {
        map: HashMap<Key, (FoundFile, Instant)>,
        bytes: usize,
    }

    thread_local! {
        static CACHE: RefCell<Cache> = RefCell::new(Cache::default());
    }

    /// The bytes a kept file holds.
    fn size(f: &FoundFile) -> usize {
        f.content.as_ref().map_or(0, bytes::Bytes::len)
    }

    /// The file kept for `key`, while fresh; an expired one is dropped.
    pub(super) fn get(key: &Key) -> Option<FoundFile> {
        CACHE.with(|c| {
            let mut c = c.borrow_mut();
            let (found, at) = c.map.get(key)?;
            if at.elapsed() < KEEP_FOUND {
                return Some(found.clone());
            }
            if let Some((old, _)) = c.map.remove(key) {
                c.bytes = c.bytes.saturating_sub(size(&old));
            }
            None
        })
    }

    pub(super) fn put(key: Key, found: &FoundFile) {
        let Some(content) = &found.content else {
            return;
        };
        CACHE.with(|c| {
            let mut c = c.borrow_mut();
            let now = Instant::now();
            if c.bytes + content.len() > FOUND_BYTES {
                // Expired first; then, if still full, everything older than the newest
                // half second.
                c.map
                    .retain(|_, (_, at)| now.duration_since(*at) < KEEP_FOUND);
                if c.map.values().map(|(f, _)| size(f)).sum::<usize>() + content.len() > FOUND_BYTES
                {
                    c.map
                        .retain(|_, (_, at)| now.duration_since(*at) < KEEP_FOUND / 2);
                }
                c.bytes = c.map.values().map(|(f, _)| size(f)).sum();
                if c.bytes + content.len() > FOUND_BYTES {
                    return;
                }
            }
            c.bytes += content.len();
            if let Some((old, _)) = c.map.insert(key, (found.clone(), now)) {
                c.bytes = c.bytes.saturating_sub(size(&old));
            }
        })
    }
}

/// A small file's bytes, read whole (`len` of them at most: a file that grew is served
/// at the length it had).
fn read_small(file: &mut std::fs::File, len: u64) -> std::io::Result<Bytes> {
    let mut buf = vec![0u8; usize::try_from(len).unwrap_or(0)];
    let mut filled = 0;
    while filled < buf.len() {
        match std::io::Read::read(file, &mut buf[filled..])? {
            0 => break,
            n => filled += n,
        }
    }
    buf.truncate(filled);
    Ok(Bytes::from(buf))
}

/// Opens `rel` under the root: with `openat2(2)` from the root's descriptor, which
/// refuses (`RESOLVE_BENEATH`) a path whose symbolic links lead out of the root, in one
/// system call; what it refuses (escapes, and absolute links, even inside), and every
/// path where the kernel lacks it (before Linux 5.6), by resolving the real path and
/// checking it.
fn open_in(f: &FilesAction, rel: &Path) -> Result<(std::fs::File, std::fs::Metadata), ErrorKind> {
    use nix::fcntl::{OFlag, OpenHow, ResolveFlag};
    let opened = root_fd(&f.root).and_then(|root| {
        let resolve = if f.follow_symlinks {
            ResolveFlag::RESOLVE_NO_MAGICLINKS
        } else {
            ResolveFlag::RESOLVE_BENEATH | ResolveFlag::RESOLVE_NO_MAGICLINKS
        };
        let how = OpenHow::new()
            .flags(OFlag::O_RDONLY | OFlag::O_CLOEXEC | OFlag::O_NOCTTY)
            .resolve(resolve);
        nix::fcntl::openat2(&*root, rel, how).map_err(std::io::Error::from)
    });
    let file = match opened {
        Ok(fd) => std::fs::File::from(fd),
        // EXDEV: a link leaves the root, or is absolute (which RESOLVE_BENEATH refuses
        // even when it points inside); ENOSYS: no openat2. The real path decides.
        Err(e) if matches!(e.raw_os_error(), Some(libc::EXDEV | libc::ENOSYS)) => {
            let real = std::fs::canonicalize(f.root.join(rel)).map_err(not_found)?;
            if !f.follow_symlinks && !real.starts_with(&f.root) {
                return Err(ErrorKind::FileForbidden);
            }
            std::fs::File::open(&real).map_err(not_found)?
        }
        Err(e) => return Err(not_found(e)),
    };
    let meta = file.metadata().map_err(not_found)?;
    Ok((file, meta))
}

/// The root directory's descriptor (`O_PATH`), kept by each worker thread for a second:
/// a directory renamed into the root's place is served within a second, as it would
/// be by path.
fn root_fd(root: &Path) -> std::io::Result<std::rc::Rc<std::os::fd::OwnedFd>> {
    use std::collections::HashMap;
    use std::rc::Rc;
    use std::time::Instant;
    type Roots = HashMap<PathBuf, (Rc<std::os::fd::OwnedFd>, Instant)>;
    thread_local! {
        static ROOTS: std::cell::RefCell<Roots> = std::cell::RefCell::new(HashMap::new());
    }
    const KEEP: std::time::Duration = std::time::Duration::from_secs(1);
    ROOTS.with(|roots| {
        let mut roots = roots.borrow_mut();
        let now = Instant::now();
        if let Some((fd, at)) = roots.get(root)
            && now.duration_since(*at) < KEEP
        {
            return Ok(Rc::clone(fd));
        }
        let fd = Rc::new(nix::fcntl::open(
            root,
            nix::fcntl::OFlag::O_PATH
                | nix::fcntl::OFlag::O_DIRECTORY
                | nix::fcntl::OFlag::O_CLOEXEC,
            nix::sys::stat::Mode::empty(),
        )?);
        // Roots of configurations gone are forgotten as they expire.
        roots.retain(|_, (_, at)| now.duration_since(*at) < KEEP);
        roots.insert(root.to_path_buf(), (Rc::clone(&fd), now));
        Ok(fd)
    })
}

/// The answer for `req` from the directory of `f`.
pub(super) async fn serve<B>(
    f: &FilesAction,
    req: &Request<B>,
) -> Result<Response<ResponseBody>, ErrorKind> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return Err(ErrorKind::MethodNotAllowed);
    }
    let ranged = req.headers().contains_key(header::RANGE);
    // A path kept was normalized when it was found: the same path answers the same.
    let key: found_cache::Key = (
        f.root.clone(),
        req.uri().path().to_owned(),
        ranged,
        if f.precompressed {
            req.headers()
                .get(header::ACCEPT_ENCODING)
                .map(|v| v.as_bytes().to_vec())
                .unwrap_or_default()
        } else {
            Vec::new()
        },
    );
    if let Some(found) = found_cache::get(&key) {
        return file(req, found);
    }
    let segments = normalize(req.uri().path()).ok_or(ErrorKind::PathRefused)?;
    let trailing_slash = req.uri().path().ends_with('/');
    // The file system is asked from the worker itself, as NGINX does: open, stat and a
    // small read from the page cache take microseconds, and a trip to the blocking pool
    // cost more than they do (see docs/performance.md). A slow disk (a network file
    // system) stalls this worker's other connections while it answers.
    let found = find(f, &segments, trailing_slash, req.headers(), ranged)?;
    if let Found::File(ff) = &found {
        found_cache::put(key, ff);
    }
    match found {
        Found::Slash => {
            // `/docs` → `/docs/`, so that relative links in its index resolve.
            let mut to = format!("{}/", req.uri().path());
            if let Some(q) = req.uri().query() {
                to.push('?');
                to.push_str(q);
            }
            Ok(moved(&to))
        }
        Found::Listing(dir) => listing(&dir, req.uri().path()).await,
        Found::File(found) => file(req, *found),
    }
}

fn not_found(e: std::io::Error) -> ErrorKind {
    match e.kind() {
        std::io::ErrorKind::PermissionDenied => ErrorKind::FileForbidden,
        _ => ErrorKind::FileNotFound,
    }
}

fn moved(to: &str) -> Response<ResponseBody> {
    let mut r = Response::new(ResponseBody::full(Bytes::from(format!("Moved to {to}\n"))));
    *r.status_mut() = StatusCode::MOVED_PERMANENTLY;
    if let Ok(v) = HeaderValue::from_str(to) {
        r.headers_mut().insert(header::LOCATION, v);
    }
    r
}

/// A file's validators: `"MTIME-LEN"` in hex, and its modification time.
fn validators(meta: &std::fs::Metadata) -> (String, SystemTime) {
    let mtime = meta.modified().unwrap_or(SystemTime::UNIX_EPOCH);
    let nanos = mtime
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    (format!("\"{nanos:x}-{:x}\"", meta.len()), mtime)
}

/// Whether `If-None-Match` names `etag` (weak comparison; `*` names any).
fn none_match(req_value: &str, etag: &str) -> bool {
    let bare = |t: &str| t.trim().trim_start_matches("W/").to_owned();
    req_value
        .split(',')
        .any(|t| t.trim() == "*" || bare(t) == bare(etag))
}

/// The one byte range a `Range` field asks for within `len`: `Ok(None)` for none (or
/// one Pylon serves whole: several ranges, another unit), `Err` when unsatisfiable.
fn range(value: &str, len: u64) -> Result<Option<(u64, u64)>, ()> {
    let Some(spec) = value.trim().strip_prefix("bytes=") else {
        return Ok(None);
    };
    if spec.contains(',') {
        return Ok(None);
    }
    let Some((a, b)) = spec.trim().split_once('-') else {
        return Ok(None);
    };
    let (a, b) = (a.trim(), b.trim());
    let parsed = match (a.parse::<u64>(), b.parse::<u64>()) {
        (Ok(start), Ok(end)) if start <= end => Some((start, end.min(len.saturating_sub(1)))),
        (Ok(start), Err(_)) if b.is_empty() => Some((start, len.saturating_sub(1))),
        (Err(_), Ok(n)) if a.is_empty() && n > 0 => {
            Some((len.saturating_sub(n), len.saturating_sub(1)))
        }
        _ => return Ok(None),
    };
    match parsed {
        Some((start, end)) if start < len && start <= end => Ok(Some((start, end))),
        Some(_) => Err(()),
        None => Ok(None),
    }
}

/// A regular file's answer: 304, 206/416 for a range, or the whole (or a
/// precompressed sibling) with its validators.
fn file<B>(req: &Request<B>, found: FoundFile) -> Result<Response<ResponseBody>, ErrorKind> {
    let h = req.headers();
    let (etag, mtime) = (found.etag.clone(), found.mtime);
    let last_modified = httpdate::fmt_http_date(mtime);
    let mime = mime_guess::from_path(&found.path)
        .first_raw()
        .unwrap_or("application/octet-stream");
    let mut resp = Response::new(ResponseBody::empty());
    let rh = resp.headers_mut();
    rh.insert(header::CONTENT_TYPE, HeaderValue::from_static(mime));
    rh.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    if let Ok(v) = HeaderValue::from_str(&last_modified) {
        rh.insert(header::LAST_MODIFIED, v);
    }
    if found.varies {
        rh.insert(header::VARY, HeaderValue::from_static("accept-encoding"));
    }
    let etag = match found.coding {
        Some(coding) => {
            rh.insert(header::CONTENT_ENCODING, HeaderValue::from_static(coding));
            format!("{}-{coding}\"", etag.trim_end_matches('"'))
        }
        None => etag,
    };
    if let Ok(v) = HeaderValue::from_str(&etag) {
        rh.insert(header::ETAG, v);
    }
    // Conditionals: If-None-Match first; If-Modified-Since only without it.
    let not_modified = match h.get(header::IF_NONE_MATCH).and_then(|v| v.to_str().ok()) {
        Some(inm) => none_match(inm, &etag),
        None => h
            .get(header::IF_MODIFIED_SINCE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| httpdate::parse_http_date(v).ok())
            .is_some_and(|since| {
                let secs = |t: SystemTime| {
                    t.duration_since(SystemTime::UNIX_EPOCH)
                        .map_or(0, |d| d.as_secs())
                };
                secs(mtime) <= secs(since)
            }),
    };
    if not_modified {
        *resp.status_mut() = StatusCode::NOT_MODIFIED;
        resp.headers_mut().remove(header::CONTENT_TYPE);
        return Ok(resp);
    }
    let len = found.len;
    // A range, unless If-Range says the file changed.
    let if_range_ok = h
        .get(header::IF_RANGE)
        .and_then(|v| v.to_str().ok())
        .is_none_or(|v| v == etag || v == last_modified);
    let span = match h.get(header::RANGE).and_then(|v| v.to_str().ok()) {
        Some(r) if if_range_ok && found.coding.is_none() => match range(r, len) {
            Ok(s) => s,
            Err(()) => {
                *resp.status_mut() = StatusCode::RANGE_NOT_SATISFIABLE;
                if let Ok(v) = HeaderValue::from_str(&format!("bytes */{len}")) {
                    resp.headers_mut().insert(header::CONTENT_RANGE, v);
                }
                return Ok(resp);
            }
        },
        _ => None,
    };
    let (start, count) = match span {
        Some((a, b)) => {
            *resp.status_mut() = StatusCode::PARTIAL_CONTENT;
            if let Ok(v) = HeaderValue::from_str(&format!("bytes {a}-{b}/{len}")) {
                resp.headers_mut().insert(header::CONTENT_RANGE, v);
            }
            (a, b - a + 1)
        }
        None => (0, len),
    };
    resp.headers_mut()
        .insert(header::CONTENT_LENGTH, HeaderValue::from(count));
    if req.method() == Method::HEAD {
        return Ok(resp);
    }
    if let Some(all) = found.content {
        let from = usize::try_from(start).unwrap_or(0).min(all.len());
        let to = usize::try_from(start + count).unwrap_or(0).min(all.len());
        *resp.body_mut() = ResponseBody::full(all.slice(from..to));
        return Ok(resp);
    }
    let Some(file) = found.file else {
        return Err(ErrorKind::FileNotFound);
    };
    let file = std::sync::Arc::try_unwrap(file)
        .or_else(|shared| shared.try_clone())
        .map_err(not_found)?;
    *resp.body_mut() = ResponseBody::file(file, start, count);
    Ok(resp)
}

/// A directory listing (`browse = true`): names escaped for HTML, links
/// percent-encoded, directories first.
async fn listing(dir: &Path, url_path: &str) -> Result<Response<ResponseBody>, ErrorKind> {
    let mut entries = tokio::fs::read_dir(dir).await.map_err(not_found)?;
    let mut names: Vec<(bool, String)> = Vec::new();
    while let Ok(Some(e)) = entries.next_entry().await {
        let is_dir = e.file_type().await.is_ok_and(|t| t.is_dir());
        if let Ok(name) = e.file_name().into_string() {
            names.push((!is_dir, name));
        }
    }
    names.sort();
    let escape = |s: &str| {
        s.replace('&', "&amp;")
            .replace('<', "&lt;")
            .replace('>', "&gt;")
            .replace('"', "&quot;")
    };
    let mut html = format!(
        "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>Index of {0}</title></head>\n<body><h1>Index of {0}</h1><ul>\n",
        escape(url_path)
    );
    for (is_file, name) in &names {
        let slash = if *is_file { "" } else { "/" };
        let href: String =
            percent_encoding::utf8_percent_encode(name, percent_encoding::NON_ALPHANUMERIC)
                .collect();
        html.push_str(&format!(
            "<li><a href=\"{href}{slash}\">{}{slash}</a></li>\n",
            escape(name)
        ));
    }
    html.push_str("</ul></body></html>\n");
    let mut r = Response::new(ResponseBody::full(Bytes::from(html)));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::{normalize, range};

    #[test]
    fn paths_that_could_leave_the_root_are_refused() {
        let ok = |p: &str| normalize(p).unwrap_or_else(|| panic!("{p} refused"));
        assert_eq!(ok("/a/b.txt"), ["a", "b.txt"]);
        assert_eq!(ok("/a//./b/"), ["a", "b"]);
        assert_eq!(ok("/%61%20b"), ["a b"]);
        assert_eq!(ok("/"), Vec::<String>::new());
        for bad in [
            "/../etc/passwd",
            "/a/../../b",
            "/%2e%2e/etc",
            "/%2E%2E/etc",
            "/a%2f..%2f..%2fetc",
            "/a%5c..%5cb",
            "/a%00.txt",
            "/%ff%fe",
            "a/b",
            "/..",
        ] {
            assert!(normalize(bad).is_none(), "{bad} accepted");
        }
    }

    #[test]
    fn ranges() {
        assert_eq!(range("bytes=0-9", 100), Ok(Some((0, 9))));
        assert_eq!(range("bytes=90-", 100), Ok(Some((90, 99))));
        assert_eq!(range("bytes=-10", 100), Ok(Some((90, 99))));
        assert_eq!(range("bytes=95-200", 100), Ok(Some((95, 99))));
        assert_eq!(range("bytes=100-", 100), Err(()));
        assert_eq!(range("bytes=0-1,5-6", 100), Ok(None));
        assert_eq!(range("items=0-1", 100), Ok(None));
        assert_eq!(range("bytes=5-1", 100), Ok(None));
    }
}
