//! A zone's disk tier: stored responses as files in one directory, found again after a
//! restart. Each variant is one file named by a hash of its key and Vary values, written
//! to a temporary name and renamed (a crash leaves no half entry), holding the key, the
//! head with its freshness facts, the tags, the trailers and the body. At start the
//! directory is scanned (heads only) to rebuild the index; past the size bound the least
//! recently used files go. A file that does not read back whole is deleted.
//!
//! Written here rather than taken from a crate: foyer (the hybrid memory+disk cache) owns
//! the memory tier and its eviction too, keyed by one value without Vary variants, tags or
//! purges by URL prefix; this file store is small and sits under the moka memory tier.
//! All calls block (file I/O): the engine runs them on the blocking pool.

use std::collections::HashMap;
use std::fs;
use std::io::{self, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue};
use http::{HeaderMap, StatusCode};

use crate::entry::{Entry, Head};
use crate::policy::Freshness;

const MAGIC: &[u8; 8] = b"PYLCACH1";
/// Bounds on what a file may claim, so a damaged one cannot ask for absurd allocations.
const MAX_FIELD: u32 = 1 << 20;
const MAX_COUNT: u32 = 10_000;

/// One file in the index.
#[derive(Debug, Clone)]
struct FileMeta {
    key: String,
    /// Its tags, for purges by tag of what is on disk only.
    tags: Vec<String>,
    size: u64,
    used: u64,
}

#[derive(Default)]
struct Index {
    files: HashMap<String, FileMeta>,
    /// Key text → the file names of its variants.
    by_key: HashMap<String, Vec<String>>,
    bytes: u64,
    clock: u64,
}

/// The disk tier of a zone.
pub struct DiskStore {
    dir: PathBuf,
    max_bytes: u64,
    index: Mutex<Index>,
    /// Makes each temporary file name unique (two writes of one variant at once).
    next_tmp: std::sync::atomic::AtomicU64,
    /// Writes queued or running: past [`MAX_PENDING_WRITES`] new ones are skipped.
    pending: std::sync::atomic::AtomicUsize,
}

/// Writes the disk tier takes on at once; more are skipped (the answer stays in memory).
pub const MAX_PENDING_WRITES: usize = 64;

impl std::fmt::Debug for DiskStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DiskStore").field("dir", &self.dir).finish()
    }
}

fn lock(m: &Mutex<Index>) -> std::sync::MutexGuard<'_, Index> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl DiskStore {
    /// Opens (creating it if needed) the directory and indexes the files in it.
    pub fn open(dir: &Path, max_bytes: u64) -> io::Result<DiskStore> {
        fs::create_dir_all(dir)?;
        let store = DiskStore {
            dir: dir.to_path_buf(),
            max_bytes,
            index: Mutex::new(Index::default()),
            next_tmp: std::sync::atomic::AtomicU64::new(0),
            pending: std::sync::atomic::AtomicUsize::new(0),
        };
        let mut found = Vec::new();
        for e in fs::read_dir(dir)? {
            let e = e?;
            let name = e.file_name().to_string_lossy().into_owned();
            if name.ends_with(".tmp") {
                let _ = fs::remove_file(e.path());
                continue;
            }
            if !name.ends_with(".entry") {
                continue;
            }
            let meta = e.metadata()?;
            let used = meta
                .modified()
                .ok()
                .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
                .map_or(0, |d| d.as_secs());
            match read_key(&e.path()) {
                Ok((key, tags)) => found.push((used, name, key, tags, meta.len())),
                Err(err) if damaged(&err) => {
                    let _ = fs::remove_file(e.path());
                }
                Err(err) => return Err(err),
            }
        }
        // Oldest first, so the clock keeps their order.
        found.sort();
        {
            let mut ix = lock(&store.index);
            for (_, name, key, tags, size) in found {
                ix.clock += 1;
                let used = ix.clock;
                ix.by_key.entry(key.clone()).or_default().push(name.clone());
                ix.bytes += size;
                ix.files.insert(
                    name,
                    FileMeta {
                        key,
                        tags,
                        size,
                        used,
                    },
                );
            }
        }
        store.evict(0);
        Ok(store)
    }

    /// Files and bytes held.
    pub fn size(&self) -> (u64, u64) {
        let ix = lock(&self.index);
        (ix.files.len() as u64, ix.bytes)
    }

    /// Writes a variant of `key`.
    pub fn write(&self, key: &str, entry: &Entry) -> io::Result<()> {
        let name = file_name(key, &entry.head.vary_values);
        let bytes = encode(key, entry);
        let size = bytes.len() as u64;
        if size > self.max_bytes {
            return Ok(());
        }
        self.evict(size);
        let n = self
            .next_tmp
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let tmp = self.dir.join(format!("{name}.{n}.tmp"));
        let written = fs::File::create(&tmp)
            .and_then(|mut f| f.write_all(&bytes))
            .and_then(|()| fs::rename(&tmp, self.dir.join(&name)));
        if let Err(e) = written {
            let _ = fs::remove_file(&tmp);
            return Err(e);
        }
        let mut ix = lock(&self.index);
        ix.clock += 1;
        let used = ix.clock;
        if let Some(old) = ix.files.insert(
            name.clone(),
            FileMeta {
                key: key.to_owned(),
                tags: entry.head.tags.clone(),
                size,
                used,
            },
        ) {
            ix.bytes -= old.size;
            if old.key != key {
                // Another key's file had this name (a hash collision): it is gone.
                remove_name(&mut ix, &old.key, &name);
            }
        }
        ix.bytes += size;
        let names = ix.by_key.entry(key.to_owned()).or_default();
        if !names.contains(&name) {
            names.push(name);
        }
        Ok(())
    }

    /// The stored variants of `key`; files that do not read back are removed.
    pub fn read(&self, key: &str) -> Vec<Entry> {
        let names: Vec<String> = {
            let mut ix = lock(&self.index);
            let names = ix.by_key.get(key).cloned().unwrap_or_default();
            ix.clock += 1;
            let now = ix.clock;
            for n in &names {
                if let Some(m) = ix.files.get_mut(n) {
                    m.used = now;
                }
            }
            names
        };
        let mut out = Vec::new();
        for name in names {
            match read_entry(&self.dir.join(&name)) {
                Ok((k, e)) if k == key => out.push(e),
                // Another key's file (a hash collision since) or a damaged one goes; a
                // passing failure (no descriptors, I/O) leaves it for next time.
                Ok(_) => self.remove_file(&name),
                Err(e) if damaged(&e) => self.remove_file(&name),
                Err(_) => {}
            }
        }
        out
    }

    /// Removes every variant of the keys `doomed` says yes to; how many keys.
    pub fn remove_where(&self, doomed: impl Fn(&str) -> bool) -> usize {
        let names: Vec<(String, String)> = {
            let ix = lock(&self.index);
            ix.by_key
                .iter()
                .filter(|(k, _)| doomed(k))
                .flat_map(|(k, ns)| ns.iter().map(move |n| (k.clone(), n.clone())))
                .collect()
        };
        let keys: std::collections::HashSet<&String> = names.iter().map(|(k, _)| k).collect();
        let n = keys.len();
        for (_, name) in &names {
            self.remove_file(name);
        }
        n
    }

    /// Removes every file tagged `tag`; how many.
    pub fn remove_tagged(&self, tag: &str) -> usize {
        let names: Vec<String> = lock(&self.index)
            .files
            .iter()
            .filter(|(_, m)| m.tags.iter().any(|t| t == tag))
            .map(|(n, _)| n.clone())
            .collect();
        for n in &names {
            self.remove_file(n);
        }
        names.len()
    }

    /// Takes a slot for a write, or `None` when too many are queued already.
    pub fn begin_write(self: &std::sync::Arc<Self>) -> Option<WriteSlot> {
        use std::sync::atomic::Ordering;
        if self.pending.fetch_add(1, Ordering::AcqRel) >= MAX_PENDING_WRITES {
            self.pending.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        Some(WriteSlot(std::sync::Arc::clone(self)))
    }

    /// Removes every variant of exactly `key`.
    pub fn remove_key(&self, key: &str) -> usize {
        let names = lock(&self.index)
            .by_key
            .get(key)
            .cloned()
            .unwrap_or_default();
        for n in &names {
            self.remove_file(n);
        }
        usize::from(!names.is_empty())
    }

    /// Whether the tier holds anything for `key`.
    pub fn contains(&self, key: &str) -> bool {
        lock(&self.index).by_key.contains_key(key)
    }

    fn remove_file(&self, name: &str) {
        {
            let mut ix = lock(&self.index);
            if let Some(m) = ix.files.remove(name) {
                ix.bytes -= m.size;
                remove_name(&mut ix, &m.key, name);
            }
        }
        let _ = fs::remove_file(self.dir.join(name));
    }

    /// Makes room for `incoming` bytes: least recently used files first.
    fn evict(&self, incoming: u64) {
        loop {
            let victim = {
                let ix = lock(&self.index);
                if ix.bytes + incoming <= self.max_bytes {
                    return;
                }
                ix.files
                    .iter()
                    .min_by_key(|(_, m)| m.used)
                    .map(|(n, _)| n.clone())
            };
            match victim {
                Some(name) => self.remove_file(&name),
                None => return,
            }
        }
    }
}

/// A queued write's place, given back when dropped.
pub struct WriteSlot(std::sync::Arc<DiskStore>);

impl Drop for WriteSlot {
    fn drop(&mut self) {
        self.0
            .pending
            .fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
    }
}

/// A read error that means the file itself is bad (not a passing failure).
fn damaged(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::InvalidData | io::ErrorKind::UnexpectedEof
    )
}

fn remove_name(ix: &mut Index, key: &str, name: &str) {
    if let Some(names) = ix.by_key.get_mut(key) {
        names.retain(|n| n != name);
        if names.is_empty() {
            ix.by_key.remove(key);
        }
    }
}

/// The file of one variant: FNV-1a 64 of the key and the Vary values.
fn file_name(key: &str, vary: &[Option<String>]) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut eat = |bytes: &[u8]| {
        for b in bytes {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    };
    eat(key.as_bytes());
    for v in vary {
        eat(&[0xff]);
        match v {
            Some(v) => eat(v.as_bytes()),
            None => eat(&[0xfe]),
        }
    }
    format!("{h:016x}.entry")
}

// ---- encoding ------------------------------------------------------------------------

struct Out(Vec<u8>);

impl Out {
    fn u8(&mut self, v: u8) {
        self.0.push(v);
    }
    fn u32(&mut self, v: u32) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn u64(&mut self, v: u64) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn bytes(&mut self, b: &[u8]) {
        self.u32(b.len() as u32);
        self.0.extend_from_slice(b);
    }
    fn time(&mut self, t: SystemTime) {
        let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
        self.u64(d.as_secs());
        self.u32(d.subsec_nanos());
    }
    fn duration(&mut self, d: Duration) {
        self.u64(d.as_secs());
        self.u32(d.subsec_nanos());
    }
    fn headers(&mut self, h: &HeaderMap) {
        self.u32(h.len() as u32);
        for (k, v) in h {
            self.bytes(k.as_str().as_bytes());
            self.bytes(v.as_bytes());
        }
    }
}

fn encode(key: &str, e: &Entry) -> Vec<u8> {
    let mut o = Out(Vec::with_capacity(e.len as usize + 1024));
    o.0.extend_from_slice(MAGIC);
    o.bytes(key.as_bytes());
    let h = &e.head;
    o.u32(h.tags.len() as u32);
    for t in &h.tags {
        o.bytes(t.as_bytes());
    }
    o.u32(u32::from(h.status.as_u16()));
    o.headers(&h.headers);
    let f = &h.freshness;
    o.time(f.request_time);
    o.time(f.response_time);
    o.time(f.date);
    o.u64(f.age_value);
    o.duration(f.lifetime);
    o.u8(u8::from(f.heuristic));
    o.u8(u8::from(f.must_revalidate));
    o.u8(u8::from(f.no_cache));
    o.duration(f.stale_while_revalidate);
    o.duration(f.stale_if_error);
    o.u32(h.vary.len() as u32);
    for (name, value) in h.vary.iter().zip(&h.vary_values) {
        o.bytes(name.as_str().as_bytes());
        match value {
            Some(v) => {
                o.u8(1);
                o.bytes(v.as_bytes());
            }
            None => o.u8(0),
        }
    }
    match &e.trailers {
        Some(t) => {
            o.u8(1);
            o.headers(t);
        }
        None => o.u8(0),
    }
    o.u64(e.len);
    for chunk in &e.body {
        o.0.extend_from_slice(chunk);
    }
    o.0
}

struct In<R>(R);

fn bad(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.to_owned())
}

impl<R: Read> In<R> {
    fn u8(&mut self) -> io::Result<u8> {
        let mut b = [0u8; 1];
        self.0.read_exact(&mut b)?;
        Ok(b[0])
    }
    fn u32(&mut self) -> io::Result<u32> {
        let mut b = [0u8; 4];
        self.0.read_exact(&mut b)?;
        Ok(u32::from_le_bytes(b))
    }
    fn u64(&mut self) -> io::Result<u64> {
        let mut b = [0u8; 8];
        self.0.read_exact(&mut b)?;
        Ok(u64::from_le_bytes(b))
    }
    fn bytes(&mut self) -> io::Result<Vec<u8>> {
        let n = self.u32()?;
        if n > MAX_FIELD {
            return Err(bad("field too long"));
        }
        let mut v = vec![0u8; n as usize];
        self.0.read_exact(&mut v)?;
        Ok(v)
    }
    fn text(&mut self) -> io::Result<String> {
        String::from_utf8(self.bytes()?).map_err(|_| bad("not text"))
    }
    fn time(&mut self) -> io::Result<SystemTime> {
        UNIX_EPOCH
            .checked_add(self.duration()?)
            .ok_or_else(|| bad("time out of range"))
    }
    fn duration(&mut self) -> io::Result<Duration> {
        let secs = self.u64()?;
        let nanos = self.u32()?;
        if nanos >= 1_000_000_000 {
            return Err(bad("bad duration"));
        }
        Ok(Duration::new(secs, nanos))
    }
    fn count(&mut self) -> io::Result<u32> {
        let n = self.u32()?;
        if n > MAX_COUNT {
            return Err(bad("count too large"));
        }
        Ok(n)
    }
    fn headers(&mut self) -> io::Result<HeaderMap> {
        let n = self.count()?;
        let mut h = HeaderMap::new();
        for _ in 0..n {
            let k = HeaderName::from_bytes(&self.bytes()?).map_err(|_| bad("header name"))?;
            let v = HeaderValue::from_bytes(&self.bytes()?).map_err(|_| bad("header value"))?;
            h.append(k, v);
        }
        Ok(h)
    }
    /// The key and the tags, which open every file.
    fn key(&mut self) -> io::Result<(String, Vec<String>)> {
        let mut magic = [0u8; 8];
        self.0.read_exact(&mut magic)?;
        if &magic != MAGIC {
            return Err(bad("not a cache entry"));
        }
        let key = self.text()?;
        let n = self.count()?;
        let mut tags = Vec::new();
        for _ in 0..n {
            tags.push(self.text()?);
        }
        Ok((key, tags))
    }
}

fn read_key(path: &Path) -> io::Result<(String, Vec<String>)> {
    In(BufReader::new(fs::File::open(path)?)).key()
}

fn read_entry(path: &Path) -> io::Result<(String, Entry)> {
    let mut r = In(BufReader::new(fs::File::open(path)?));
    let (key, tags) = r.key()?;
    let status = u16::try_from(r.u32()?)
        .ok()
        .and_then(|s| StatusCode::from_u16(s).ok())
        .ok_or_else(|| bad("status"))?;
    let headers = r.headers()?;
    let freshness = Freshness {
        request_time: r.time()?,
        response_time: r.time()?,
        date: r.time()?,
        age_value: r.u64()?,
        lifetime: r.duration()?,
        heuristic: r.u8()? == 1,
        must_revalidate: r.u8()? == 1,
        no_cache: r.u8()? == 1,
        stale_while_revalidate: r.duration()?,
        stale_if_error: r.duration()?,
    };
    let n = r.count()?;
    let (mut vary, mut vary_values) = (Vec::new(), Vec::new());
    for _ in 0..n {
        vary.push(HeaderName::from_bytes(&r.bytes()?).map_err(|_| bad("vary"))?);
        vary_values.push(match r.u8()? {
            1 => Some(r.text()?),
            _ => None,
        });
    }
    let trailers = match r.u8()? {
        1 => Some(r.headers()?),
        _ => None,
    };
    let len = r.u64()?;
    let mut body = Vec::new();
    r.0.read_to_end(&mut body)?;
    if body.len() as u64 != len {
        return Err(bad("body cut short"));
    }
    let head = Head {
        status,
        headers,
        freshness,
        vary,
        vary_values,
        tags,
    };
    Ok((key, Entry::new(head, vec![Bytes::from(body)], trailers)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(body: &'static [u8], lang: Option<&str>) -> Entry {
        let mut headers = HeaderMap::new();
        headers.insert("content-type", HeaderValue::from_static("text/plain"));
        headers.insert("surrogate-key", HeaderValue::from_static("a b"));
        let t = UNIX_EPOCH + Duration::new(1_700_000_000, 5);
        let f = Freshness {
            request_time: t,
            response_time: t,
            date: t,
            age_value: 3,
            lifetime: Duration::from_secs(60),
            heuristic: false,
            must_revalidate: true,
            no_cache: false,
            stale_while_revalidate: Duration::from_secs(7),
            stale_if_error: Duration::ZERO,
        };
        let head = Head::new(
            StatusCode::OK,
            headers,
            &Default::default(),
            f,
            vec![HeaderName::from_static("accept-language")],
            vec![lang.map(str::to_owned)],
        );
        Entry::new(head, vec![Bytes::from_static(body)], None)
    }

    fn dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("pylon-disk-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn entries_survive_a_reopen_with_their_variants_and_facts() {
        let d = dir("reopen");
        {
            let s = DiskStore::open(&d, 1 << 20).unwrap();
            s.write("http://h/a", &entry(b"fr", Some("fr"))).unwrap();
            s.write("http://h/a", &entry(b"en", None)).unwrap();
            s.write("http://h/b", &entry(b"b", Some("x"))).unwrap();
        }
        let s = DiskStore::open(&d, 1 << 20).unwrap();
        assert_eq!(s.size().0, 3);
        let mut got = s.read("http://h/a");
        got.sort_by_key(|e| e.contiguous());
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].contiguous(), Bytes::from_static(b"en"));
        assert_eq!(got[0].head.vary_values, vec![None]);
        assert_eq!(
            got[1].head.freshness,
            entry(b"fr", Some("fr")).head.freshness
        );
        assert_eq!(got[1].head.tags, vec!["a", "b"]);
        assert_eq!(s.remove_where(|k| k.starts_with("http://h/a")), 1);
        assert_eq!(s.remove_tagged("b"), 1);
        assert!(!s.contains("http://h/b"));
        assert!(s.read("http://h/a").is_empty());
        let _ = fs::remove_dir_all(&d);
    }

    #[test]
    fn damaged_files_are_dropped_and_the_size_bound_evicts_the_oldest() {
        let d = dir("damaged");
        let s = DiskStore::open(&d, 1 << 20).unwrap();
        s.write("http://h/a", &entry(b"aaaa", None)).unwrap();
        let name = file_name("http://h/a", &[None]);
        // Cut the file short: it does not read back, and is removed.
        let path = d.join(&name);
        let full = fs::read(&path).unwrap();
        fs::write(&path, &full[..full.len() - 2]).unwrap();
        assert!(s.read("http://h/a").is_empty());
        assert!(!path.exists());
        fs::write(d.join("junk.entry"), b"not an entry").unwrap();
        fs::write(d.join("half.tmp"), b"x").unwrap();
        drop(s);
        let s = DiskStore::open(&d, 1 << 20).unwrap();
        assert_eq!(s.size().0, 0);
        assert!(!d.join("junk.entry").exists() && !d.join("half.tmp").exists());
        // Room for about two entries: the least recently used goes.
        let one = encode("http://h/1", &entry(b"1", None)).len() as u64;
        let s = DiskStore::open(&d, one * 2 + one / 2).unwrap();
        s.write("http://h/1", &entry(b"1", None)).unwrap();
        s.write("http://h/2", &entry(b"2", None)).unwrap();
        assert_eq!(s.read("http://h/1").len(), 1);
        s.write("http://h/3", &entry(b"3", None)).unwrap();
        assert!(s.contains("http://h/1") && s.contains("http://h/3"));
        assert!(!s.contains("http://h/2"));
        let _ = fs::remove_dir_all(&d);
    }
}
