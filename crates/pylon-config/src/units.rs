//! Human units in the config: durations (`"10s"`, `"250ms"`) and sizes (`"64KiB"`, `1048576`).

use std::time::Duration;

/// What every duration error ends with.
const DURATION_FORM: &str = "expected a number and a unit such as 500ms, 5s, 2m";

/// Parses a duration such as `"10s"`, `"1m30s"` or `"250ms"`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    if t.is_empty() {
        return Err("empty duration; expected a number with a unit, such as \"10s\"".into());
    }
    if t.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!(
            "duration \"{t}\" has no unit; write for example \"{t}s\" or \"{t}ms\""
        ));
    }
    if t.starts_with('-') {
        return Err(format!(
            "invalid duration \"{t}\": durations cannot be negative; {DURATION_FORM}"
        ));
    }
    if t.starts_with('+') {
        return Err(format!(
            "invalid duration \"{t}\": write it without a sign; {DURATION_FORM}"
        ));
    }
    humantime::parse_duration(t).map_err(|e| {
        let why = match e {
            humantime::DurationError::UnknownUnit { unit, .. } if !unit.is_empty() => {
                format!("unknown unit \"{unit}\"; use ms, s, m, h or d ({DURATION_FORM})")
            }
            humantime::DurationError::NumberOverflow => "the number is too large".to_owned(),
            _ => DURATION_FORM.to_owned(),
        };
        format!("invalid duration \"{t}\": {why}")
    })
}

/// Parses a byte size: a plain integer, or a number with `B`, `KB`, `KiB`, `MB`, `MiB`,
/// `GB`, `GiB`, `K`, `M` or `G` (the single letters are binary, as in NGINX).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("invalid size \"{t}\"; expected for example 65536 or \"64KiB\""))?;
    let mult: u64 = match unit.trim() {
        "" | "B" => 1,
        "KB" | "kB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        "K" | "k" | "KiB" => 1 << 10,
        "M" | "m" | "MiB" => 1 << 20,
        "G" | "g" | "GiB" => 1 << 30,
        other => {
            return Err(format!(
                "invalid size unit \"{other}\" in \"{t}\"; use B, KiB, MiB, GiB, KB, MB or GB"
            ));
        }
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("size \"{t}\" is too large"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("1m30s"), Ok(Duration::from_secs(90)));
        assert!(parse_duration("10").unwrap_err().contains("no unit"));
        assert!(parse_duration("ten seconds").is_err());
        assert!(parse_duration("").is_err());
        assert_eq!(
            parse_duration("-5s").unwrap_err(),
            "invalid duration \"-5s\": durations cannot be negative; expected a number and a unit such as 500ms, 5s, 2m"
        );
        assert!(
            parse_duration("+5s")
                .unwrap_err()
                .contains("without a sign")
        );
        assert_eq!(
            parse_duration("fast").unwrap_err(),
            "invalid duration \"fast\": expected a number and a unit such as 500ms, 5s, 2m"
        );
        assert!(
            parse_duration("5x")
                .unwrap_err()
                .contains("unknown unit \"x\"")
        );
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("65536"), Ok(65536));
        assert_eq!(parse_size("64KiB"), Ok(65536));
        assert_eq!(parse_size("1M"), Ok(1 << 20));
        assert_eq!(parse_size("2GB"), Ok(2_000_000_000));
        assert!(parse_size("12XB").is_err());
        assert!(parse_size("KiB").is_err());
        assert!(parse_size("99999999999999999999G").is_err());
    }
}
