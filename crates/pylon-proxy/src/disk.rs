//! Files Pylon writes for itself (ACME accounts and certificates, OCSP responses, the
//! cached configuration from etcd): each replaced in one rename, so that a reader, or
//! another instance sharing the directory, never sees half a file.

use std::io::Write;
use std::path::Path;

/// Writes `bytes` to `path` (its directory made if missing) through a temporary file
/// beside it; `private` files are readable by their owner only (mode 0600).
pub fn replace_file(path: &Path, bytes: &[u8], private: bool) -> std::io::Result<()> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let tmp = dir.join(format!(
        ".{}.{}.tmp",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("pylon"),
        std::process::id()
    ));
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    if private {
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    }
    let mut f = options.open(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    drop(f);
    std::fs::rename(&tmp, path)
}
