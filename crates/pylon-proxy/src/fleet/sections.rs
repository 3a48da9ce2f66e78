//! A configuration kept as several sections (one etcd key or one file each) instead of
//! one document: the sections are joined in name order into one TOML document, each
//! after a comment line naming it, and the errors found in the whole are placed back in
//! the section (and line) they came from. The comment lines stay in the joined text, so
//! a cached copy can be traced back the same way.
//!
//! A section must start with a table header (`[server]`, `[[routes]]`): bare keys at
//! its top would belong to the previous section's last table.

use pylon_config::ConfigError;

/// The comment line that opens each section of a joined document.
const MARK: &str = "# pylon section: ";

/// One section: its name as errors should show it (an etcd key and revision, or a
/// file), and its text.
pub struct Section {
    pub name: String,
    pub text: Vec<u8>,
}

/// The sections as one document, in the order given.
pub fn join(sections: &[Section]) -> Vec<u8> {
    let mut out = Vec::new();
    for s in sections {
        out.extend_from_slice(MARK.as_bytes());
        out.extend_from_slice(s.name.as_bytes());
        out.push(b'\n');
        out.extend_from_slice(&s.text);
        if !s.text.ends_with(b"\n") {
            out.push(b'\n');
        }
    }
    out
}

/// Where each section of a joined document starts: (name, the line of its mark).
fn marks(text: &str) -> Vec<(&str, usize)> {
    text.lines()
        .enumerate()
        .filter_map(|(i, l)| Some((l.strip_prefix(MARK)?, i + 1)))
        .collect()
}

/// Sections that start with something other than a table header, as errors.
pub fn check_starts(text: &str, origin: &str) -> Vec<ConfigError> {
    let mut errors = Vec::new();
    let lines: Vec<&str> = text.lines().collect();
    for (name, mark) in marks(text) {
        let first = lines
            .iter()
            .enumerate()
            .skip(mark)
            .map(|(i, l)| (i + 1, l.trim()))
            .find(|(_, l)| !l.is_empty() && !l.starts_with('#') || l.starts_with(MARK));
        if let Some((line, l)) = first
            && !l.starts_with('[')
            && !l.starts_with(MARK)
        {
            errors.push(ConfigError {
                file: origin.to_owned(),
                line,
                column: 1,
                key: String::new(),
                message: format!(
                    "section {name} must start with a table header such as [server] or [[routes]]"
                ),
            });
        }
    }
    errors
}

/// Errors reported against the joined document (`origin`), moved to their section
/// and line; others are left as they are. A document without sections is unchanged.
pub fn place(text: &str, origin: &str, errors: Vec<ConfigError>) -> Vec<ConfigError> {
    let marks = marks(text);
    errors
        .into_iter()
        .map(|mut e| {
            if e.file == origin
                && e.line > 0
                && let Some((name, mark)) = marks.iter().rev().find(|(_, m)| *m < e.line)
            {
                e.file = (*name).to_owned();
                e.line -= mark;
            }
            e
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn section(name: &str, text: &str) -> Section {
        Section {
            name: name.to_owned(),
            text: text.as_bytes().to_vec(),
        }
    }

    #[test]
    fn errors_are_placed_in_their_section() {
        let joined = join(&[
            section("/edge/config/10-listeners@4", "[[listeners]]\nname = \"a\""),
            section(
                "/edge/config/20-routes@7",
                "# the routes\n[[routes]]\ncluster = 1\n",
            ),
        ]);
        let text = String::from_utf8(joined).unwrap();
        let config = pylon_config::parse_in(&text, "doc", std::path::Path::new("/"));
        let errors = place(&text, "doc", config.unwrap_err().0);
        let cluster = errors
            .iter()
            .find(|e| e.key.contains("cluster"))
            .expect("the bad cluster reported");
        assert_eq!(
            (cluster.file.as_str(), cluster.line),
            ("/edge/config/20-routes@7", 3)
        );
        assert!(check_starts(&text, "doc").is_empty());
    }

    #[test]
    fn a_section_must_open_with_a_table() {
        let joined = join(&[
            section("a", "[server]\n"),
            section("b", "\n# comment\nworker_threads = 2\n"),
        ]);
        let text = String::from_utf8(joined).unwrap();
        let errors = place(&text, "doc", check_starts(&text, "doc"));
        assert_eq!(errors.len(), 1);
        assert_eq!((errors[0].file.as_str(), errors[0].line), ("b", 3));
        assert!(
            errors[0].message.contains("table header"),
            "{}",
            errors[0].message
        );
    }
}
