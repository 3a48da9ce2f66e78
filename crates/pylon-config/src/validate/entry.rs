//! Reading one section or list entry out of the parsed TOML tree without stopping at its
//! first problem: a key that is unknown or holds a value of the wrong type is reported,
//! left out, and the rest of the entry is read again, so its other keys are still
//! checked. Messages name TOML values and units in plain words, never Rust types.

use std::collections::HashSet;
use std::ops::Range;

use serde::Deserialize;
use toml::Spanned;
use toml::de::{DeArray, DeString, DeTable, DeValue, ValueDeserializer};

use super::Problems;

/// The keys of an entry that were left out because of an error, as paths relative to
/// the entry (`tls`, `tls.key`, `endpoints[1]`). Checks that depend on a key being set
/// consult it, so that a broken key is not also reported as a missing one.
#[derive(Debug, Default)]
pub(super) struct Dropped(Vec<String>);

impl Dropped {
    /// Whether `key`, or anything inside it, was left out.
    pub(super) fn has(&self, key: &str) -> bool {
        self.0.iter().any(|d| {
            d.strip_prefix(key)
                .is_some_and(|rest| rest.is_empty() || rest.starts_with(['.', '[']))
        })
    }
}

/// Deserializes `v`, reporting and leaving out each key or list element that stops it,
/// until the rest reads. `None` only when the entry itself cannot be read (it is not a
/// table, for example); that error is reported too.
pub(super) fn entry<T: for<'de> Deserialize<'de>>(
    v: &Spanned<DeValue<'_>>,
    p: &mut Problems,
) -> Option<(T, Dropped)> {
    let mut v = v.clone();
    let mut dropped = Dropped::default();
    loop {
        let err = match T::deserialize(ValueDeserializer::from(v.clone())) {
            Ok(t) => return Some((t, dropped)),
            Err(e) => e,
        };
        let span = err.span().unwrap_or_else(|| v.span());
        let steps = steps_to(&v, &span);
        let path = path(&steps);
        // A required key that is missing only because it was left out is reported once.
        let knock_on = missing_field(err.message()).is_some_and(|field| {
            dropped.has(&if path.is_empty() {
                field.to_owned()
            } else {
                format!("{path}.{field}")
            })
        });
        if !knock_on {
            let message = plain(err.message(), &steps, node(&v, &steps));
            p.span(span, message);
        }
        if !remove(&mut v, &steps) {
            return None;
        }
        dropped.0.push(path);
    }
}

/// `x` in serde's "missing field `x`".
fn missing_field(message: &str) -> Option<&str> {
    message
        .strip_prefix("missing field `")?
        .split_once('`')
        .map(|(field, _)| field)
}

/// The `name` strings of a section's entries, whatever else is wrong with them: a
/// reference to an entry that is written in the file is never "unknown".
pub(super) fn declared_names(root: &DeTable<'_>, section: &str) -> HashSet<String> {
    let Some(DeValue::Array(entries)) = root.get(section).map(Spanned::get_ref) else {
        return HashSet::new();
    };
    entries
        .iter()
        .filter_map(|e| match e.get_ref() {
            DeValue::Table(t) => t.get("name").and_then(|n| n.get_ref().as_str()),
            _ => None,
        })
        .map(str::to_owned)
        .collect()
}

/// One step down the tree: a key of a table or an index into a list.
enum Step<'i> {
    Key(Spanned<DeString<'i>>),
    Index(usize),
}

fn covers(outer: &Range<usize>, inner: &Range<usize>) -> bool {
    outer.start <= inner.start && inner.end <= outer.end
}

/// Whether `span` lies within `v`, its keys or anything below it (a `[a.b]` table's own
/// span need not cover its keys).
fn within(v: &Spanned<DeValue<'_>>, span: &Range<usize>) -> bool {
    covers(&v.span(), span)
        || match v.get_ref() {
            DeValue::Table(t) => t
                .iter()
                .any(|(k, v)| covers(&k.span(), span) || within(v, span)),
            DeValue::Array(a) => a.iter().any(|e| within(e, span)),
            _ => false,
        }
}

/// The way from `v` down to the deepest key or list element written at `span`.
fn steps_to<'i>(v: &Spanned<DeValue<'i>>, span: &Range<usize>) -> Vec<Step<'i>> {
    let mut steps = Vec::new();
    let mut cur = v;
    loop {
        let next = match cur.get_ref() {
            DeValue::Table(t) => t
                .iter()
                .find(|(k, v)| covers(&k.span(), span) || within(v, span))
                .map(|(k, v)| (Step::Key(k.clone()), v)),
            DeValue::Array(a) => a
                .iter()
                .enumerate()
                .find(|(_, e)| within(e, span))
                .map(|(i, e)| (Step::Index(i), e)),
            _ => None,
        };
        match next {
            Some((step, child)) => {
                steps.push(step);
                cur = child;
            }
            None => return steps,
        }
    }
}

fn node<'a, 'i>(v: &'a Spanned<DeValue<'i>>, steps: &[Step<'i>]) -> Option<&'a DeValue<'i>> {
    let mut cur = v;
    for step in steps {
        cur = match (cur.get_ref(), step) {
            (DeValue::Table(t), Step::Key(k)) => t.get(k)?,
            (DeValue::Array(a), Step::Index(i)) => a.get(*i)?,
            _ => return None,
        };
    }
    Some(cur.get_ref())
}

fn path(steps: &[Step<'_>]) -> String {
    let mut out = String::new();
    for step in steps {
        match step {
            Step::Key(k) => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(k.get_ref());
            }
            Step::Index(i) => out.push_str(&format!("[{i}]")),
        }
    }
    out
}

/// Removes the node `steps` lead to; false when there is none (the entry itself).
fn remove<'i>(v: &mut Spanned<DeValue<'i>>, steps: &[Step<'i>]) -> bool {
    let Some((last, init)) = steps.split_last() else {
        return false;
    };
    let mut cur = v;
    for step in init {
        let next = match (cur.get_mut(), step) {
            (DeValue::Table(t), Step::Key(k)) => t.get_mut(k),
            (DeValue::Array(a), Step::Index(i)) => a.get_mut(*i),
            _ => None,
        };
        match next {
            Some(n) => cur = n,
            None => return false,
        }
    }
    match (cur.get_mut(), last) {
        (DeValue::Table(t), Step::Key(k)) => t.remove(k).is_some(),
        (DeValue::Array(a), Step::Index(i)) if *i < a.len() => {
            let items = std::mem::replace(a, DeArray::new());
            *a = items
                .into_iter()
                .enumerate()
                .filter(|(j, _)| j != i)
                .map(|(_, e)| e)
                .collect();
            true
        }
        _ => false,
    }
}

/// Keys whose values are durations written as text (`"5s"`).
const DURATION_KEYS: &[&str] = &[
    "drain_timeout",
    "reload_grace",
    "watch_debounce",
    "header_read_timeout",
    "send_timeout",
    "idle_timeout",
    "max_lifetime",
    "inspect_timeout",
    "connect_timeout",
    "tunnel_idle_timeout",
    "tunnel_max_lifetime",
    "resolve_timeout",
    "tcp_user_timeout",
    "h2_keepalive_interval",
    "h2_keepalive_timeout",
    "idle",
    "handshake_timeout",
    "response_timeout",
    "slow_start",
    "min_ttl",
    "max_ttl",
    "timeout",
    "ttl",
    "per_try_timeout",
    "backoff_base",
    "backoff_max",
    "base_ejection_time",
    "interval",
    "jitter",
];

/// A serde message in the words of the configuration: `invalid type: string "x",
/// expected usize` becomes `invalid type: expected a whole number (0 or more), found
/// text "x"`. Other messages pass unchanged.
fn plain(message: &str, steps: &[Step<'_>], found: Option<&DeValue<'_>>) -> String {
    let kinds = [
        ("invalid type: ", "invalid type"),
        ("invalid value: ", "out of range"),
    ];
    for (prefix, kind) in kinds {
        let Some((_, expected)) = message
            .strip_prefix(prefix)
            .and_then(|rest| rest.rsplit_once(", expected "))
        else {
            continue;
        };
        let key = steps
            .iter()
            .rev()
            .find_map(|s| match s {
                Step::Key(k) => Some(k.get_ref().as_ref()),
                Step::Index(_) => None,
            })
            .unwrap_or("");
        let in_list = matches!(steps.last(), Some(Step::Index(_)));
        // The upper bound of a number matters only when a larger number was given.
        let too_large = matches!(found, Some(DeValue::Integer(i)) if !i.as_str().starts_with('-'));
        let expected = expected_words(expected, key, in_list, too_large);
        return match found.map(describe) {
            Some(found) => format!("{kind}: expected {expected}, found {found}"),
            None => format!("{kind}: expected {expected}"),
        };
    }
    message.to_owned()
}

/// What a value of the schema is, for a value under `key` (inside a list when `in_list`;
/// `too_large` when a number above the largest one allowed was given).
fn expected_words(expected: &str, key: &str, in_list: bool, too_large: bool) -> String {
    let status = key.contains("status");
    let port = key.contains("port");
    let percent = key.contains("percent") || key == "panic_threshold";
    let words = match expected {
        "u16" if status => "an HTTP status code such as 200",
        "u16" if port => "a port 1-65535",
        "u32" if percent => "a percentage from 0 to 100",
        "u32" if key == "weight" => "a weight from 1 to 10000",
        "u16" if too_large => "a whole number from 0 to 65535",
        "u32" if too_large => "a whole number from 0 to 4294967295",
        "u8" | "u16" | "u32" | "u64" | "u128" | "usize" => "a whole number (0 or more)",
        "i8" | "i16" | "i32" | "i64" | "i128" | "isize" => "a whole number",
        "f32" | "f64" => "a number",
        "a boolean" => "true or false",
        "a string" | "a borrowed string" | "a character"
            if !in_list && DURATION_KEYS.contains(&key) =>
        {
            "a duration in quotes such as \"5s\" or \"500ms\""
        }
        "a string" | "a borrowed string" | "a character" => "text",
        "a sequence" => return list_words(key).to_owned(),
        "a map" => "a table",
        other if other.starts_with("struct ") => "a table",
        other => other,
    };
    words.to_owned()
}

fn list_words(key: &str) -> &'static str {
    match key {
        "statuses" | "expected_statuses" => "a list of HTTP status codes such as [502, 503]",
        "connect_ports" | "ports" => "a list of ports such as [443, 8443]",
        "endpoints" => "a list of endpoints such as [\"127.0.0.1:8080\"]",
        "resolvers" => "a list of addresses such as [\"10.0.0.2\"]",
        "certificates" => "a list of tables such as [{ cert = \"a.pem\", key = \"a-key.pem\" }]",
        "headers" => "a list of tables such as [{ name = \"x-env\", value = \"canary\" }]",
        "sni_routes" | "rules" | "users" => "a list of tables",
        _ => "a list",
    }
}

/// A value as the user wrote it: `text "x"`, `-1`, `true`, `a list`.
fn describe(v: &DeValue<'_>) -> String {
    match v {
        DeValue::String(s) => format!("text {:?}", s.as_ref()),
        DeValue::Integer(i) => i.to_string(),
        DeValue::Float(f) => f.to_string(),
        DeValue::Boolean(b) => b.to_string(),
        DeValue::Datetime(d) => format!("the date/time {d}"),
        DeValue::Array(_) => "a list".to_owned(),
        DeValue::Table(_) => "a table".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dropped_matches_keys_and_what_is_below_them() {
        let d = Dropped(vec!["tls.certificates[0]".into(), "cluster".into()]);
        assert!(d.has("tls") && d.has("tls.certificates") && d.has("cluster"));
        assert!(!d.has("tls.cert") && !d.has("clusters") && !d.has("protocol"));
    }

    #[test]
    fn serde_wording_becomes_plain() {
        let key = |k: &'static str| [Step::Key(Spanned::new(0..0, DeString::Borrowed(k)))];
        let text = DeValue::String(DeString::Borrowed("many"));
        assert_eq!(
            plain(
                "invalid type: string \"many\", expected usize",
                &key("max_headers"),
                Some(&text)
            ),
            "invalid type: expected a whole number (0 or more), found text \"many\""
        );
        assert_eq!(
            plain(
                "invalid value: integer `70000`, expected u16",
                &key("ports"),
                None
            ),
            "out of range: expected a port 1-65535"
        );
        assert_eq!(
            plain("missing field `cert`", &key("tls"), None),
            "missing field `cert`"
        );
    }
}
