//! What ACME keeps on disk, in the `storage` directory, one folder per CA directory URL
//! (so staging and production never mix):
//!
//! - `account.json`: the account's id and private key (mode 0600), reused by every
//!   order and every instance sharing the folder;
//! - `NAME.pem`: the certificate's private key and chain in one file (mode 0600),
//!   replaced by an atomic rename so that a reader never sees a key without its chain;
//!   NAME is the certificate's name when it has one, else its first name and a hash of
//!   all of them (`example.com+1a2b3c4d`), so that two certificates never share files;
//! - `NAME.lock`: held by the one instance ordering for NAME now, with the time it
//!   expires (an instance that died holding it does not block the others for longer).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use pylon_config::model::Acme;

/// One certificate's files.
#[derive(Debug, Clone)]
pub struct Store {
    folder: PathBuf,
    name: String,
}

impl Store {
    pub fn new(settings: &Acme) -> Store {
        Store {
            folder: settings
                .storage
                .path
                .join(directory_folder(&settings.directory)),
            name: file_stem(&settings.names),
        }
    }

    pub fn folder(&self) -> &Path {
        &self.folder
    }

    pub fn certificate_path(&self) -> PathBuf {
        self.folder.join(format!("{}.pem", self.name))
    }

    fn account_path(&self) -> PathBuf {
        self.folder.join("account.json")
    }

    fn lock_path(&self) -> PathBuf {
        self.folder.join(format!("{}.lock", self.name))
    }

    /// The stored account, if one was created.
    pub fn load_account(&self) -> std::io::Result<Option<Vec<u8>>> {
        read_if_exists(&self.account_path())
    }

    pub fn save_account(&self, json: &[u8]) -> std::io::Result<()> {
        crate::disk::replace_file(&self.account_path(), json, true)
    }

    /// The stored key and certificate chain (PEM), if any.
    pub fn load_certificate(&self) -> std::io::Result<Option<Vec<u8>>> {
        read_if_exists(&self.certificate_path())
    }

    /// When the stored file last changed (`None`: there is none).
    pub fn certificate_modified(&self) -> Option<SystemTime> {
        std::fs::metadata(self.certificate_path())
            .and_then(|m| m.modified())
            .ok()
    }

    pub fn save_certificate(&self, key_pem: &str, chain_pem: &str) -> std::io::Result<()> {
        let mut pem = String::with_capacity(key_pem.len() + chain_pem.len() + 1);
        pem.push_str(key_pem.trim_end());
        pem.push('\n');
        pem.push_str(chain_pem);
        crate::disk::replace_file(&self.certificate_path(), pem.as_bytes(), true)
    }

    /// Takes the order lock for `ttl`; `Ok(None)` while another instance holds it.
    pub fn try_lock(&self, ttl: Duration) -> std::io::Result<Option<OrderLock>> {
        std::fs::create_dir_all(&self.folder)?;
        let path = self.lock_path();
        let expires = unix(SystemTime::now() + ttl);
        let stamp = format!("{expires} {}\n", std::process::id());
        for _ in 0..2 {
            match std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&path)
            {
                Ok(mut f) => {
                    f.write_all(stamp.as_bytes())?;
                    return Ok(Some(OrderLock { path, stamp }));
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    let held_until = std::fs::read_to_string(&path)
                        .ok()
                        .and_then(|s| s.split_whitespace().next()?.parse::<u64>().ok());
                    // An unreadable lock is a torn write by its owner: it expires with
                    // the file's age.
                    let held_until = held_until.or_else(|| {
                        let m = std::fs::metadata(&path).and_then(|m| m.modified()).ok()?;
                        Some(unix(m + ttl))
                    });
                    if held_until.is_some_and(|t| t > unix(SystemTime::now())) {
                        return Ok(None);
                    }
                    // Moved aside, then looked at again: another instance may have
                    // taken the lock over between the read above and the move, and then
                    // the move took its fresh lock, which goes back.
                    let aside = path.with_extension(format!("lock.stale-{}", std::process::id()));
                    if std::fs::rename(&path, &aside).is_err() {
                        continue;
                    }
                    let fresh = std::fs::read_to_string(&aside)
                        .ok()
                        .and_then(|s| s.split_whitespace().next()?.parse::<u64>().ok())
                        .is_some_and(|t| t > unix(SystemTime::now()));
                    if fresh {
                        let _ = std::fs::hard_link(&aside, &path);
                        let _ = std::fs::remove_file(&aside);
                        return Ok(None);
                    }
                    let _ = std::fs::remove_file(&aside);
                    tracing::warn!(lock = %path.display(), "ACME order lock expired; taking it over");
                }
                Err(e) => return Err(e),
            }
        }
        Ok(None)
    }
}

/// The order lock, released when dropped (if it is still this one's).
pub struct OrderLock {
    path: PathBuf,
    stamp: String,
}

impl Drop for OrderLock {
    fn drop(&mut self) {
        if std::fs::read_to_string(&self.path).is_ok_and(|s| s == self.stamp) {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// A certificate's file name, without extension: see the module comment.
fn file_stem(names: &[String]) -> String {
    let first = names.first().cloned().unwrap_or_default();
    if names.len() <= 1 {
        return first;
    }
    let mut sorted = names.to_vec();
    sorted.sort();
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, sorted.join(",").as_bytes());
    let hash: String = digest.as_ref()[..4]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("{first}+{hash}")
}

/// `https://acme-v02.api.letsencrypt.org/directory` → `acme-v02.api.letsencrypt.org_directory`.
fn directory_folder(url: &str) -> String {
    let rest = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"))
        .unwrap_or(url);
    rest.trim_end_matches('/')
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

fn unix(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

fn read_if_exists(path: &Path) -> std::io::Result<Option<Vec<u8>>> {
    match std::fs::read(path) {
        Ok(b) => Ok(Some(b)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store(dir: &Path) -> Store {
        Store {
            folder: dir.join(directory_folder("https://127.0.0.1:14000/dir")),
            name: "a.example.com".to_owned(),
        }
    }

    #[test]
    fn certificates_with_the_same_first_name_get_files_of_their_own() {
        let names = |n: &[&str]| n.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        assert_eq!(file_stem(&names(&["a.example.com"])), "a.example.com");
        let two = file_stem(&names(&["a.example.com", "www.a.example.com"]));
        assert!(two.starts_with("a.example.com+"), "{two}");
        assert_ne!(
            two,
            file_stem(&names(&["a.example.com", "api.a.example.com"]))
        );
        assert_eq!(
            two,
            file_stem(&names(&["a.example.com", "www.a.example.com"]))
        );
    }

    #[test]
    fn folders_are_named_after_the_directory_url() {
        assert_eq!(
            directory_folder("https://acme-v02.api.letsencrypt.org/directory"),
            "acme-v02.api.letsencrypt.org_directory"
        );
        assert_eq!(
            directory_folder("https://127.0.0.1:14000/dir"),
            "127.0.0.1_14000_dir"
        );
    }

    #[test]
    fn files_are_private_and_the_lock_is_exclusive_until_it_expires() {
        let dir = std::env::temp_dir().join(format!("pylon-acme-store-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let s = store(&dir);
        s.save_account(b"{}").unwrap();
        s.save_certificate("KEY", "CHAIN\n").unwrap();
        #[cfg(unix)]
        for p in [s.account_path(), s.certificate_path()] {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&p).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600, "{}", p.display());
        }
        assert_eq!(s.load_certificate().unwrap().unwrap(), b"KEY\nCHAIN\n");
        let held = s.try_lock(Duration::from_secs(60)).unwrap().expect("free");
        assert!(s.try_lock(Duration::from_secs(60)).unwrap().is_none());
        drop(held);
        let _expired = s.try_lock(Duration::ZERO).unwrap().expect("free again");
        // A lock past its expiry is taken over.
        let taken = s.try_lock(Duration::from_secs(60)).unwrap();
        assert!(taken.is_some());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
