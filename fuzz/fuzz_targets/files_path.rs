//! Static files' path normalisation on any request path: never a panic, and nothing it
//! accepts can leave the root: no segment is `..`, `.` or empty, or holds `/`, `\` or
//! NUL, and a path with `..` as a decoded segment is always refused.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(path) = std::str::from_utf8(data) else {
        return;
    };
    let Some(segments) = pylon_proxy::http::files::normalize(path) else {
        return;
    };
    assert!(path.starts_with('/'));
    for s in &segments {
        assert!(!s.is_empty() && s != "." && s != "..", "{path:?} gave {s:?}");
        assert!(!s.contains(['/', '\\', '\0']), "{path:?} gave {s:?}");
    }
    let mut joined = std::path::PathBuf::from("/root");
    joined.extend(&segments);
    assert!(joined.starts_with("/root"));
    assert!(joined.components().all(|c| !matches!(c, std::path::Component::ParentDir)));
});
