//! Connection-health keys shared by listeners and cluster pools: `tcp_keepalive`,
//! `tcp_user_timeout`, and durations that `false` or `"0s"` turn off
//! (`h2_keepalive_interval`).

use std::time::Duration;

use toml::Spanned;

use super::Problems;
use crate::model::{TcpKeepalive, TcpOptions};
use crate::raw::{DurationOrBool, RawKeepaliveTable, RawTcpKeepalive};
use crate::units::parse_duration;

/// The largest keepalive idle time and interval Linux takes (`TCP_KEEPIDLE`,
/// `TCP_KEEPINTVL`, in seconds).
const MAX_KEEPALIVE_SECS: u64 = 32_767;
/// The most keepalive probes Linux takes (`TCP_KEEPCNT`).
const MAX_PROBES: u32 = 127;

/// `tcp_keepalive` and `tcp_user_timeout`, defaults where unset.
pub(super) fn tcp_options(
    keepalive: &Option<Spanned<RawTcpKeepalive>>,
    user_timeout: &Option<Spanned<DurationOrBool>>,
    p: &mut Problems,
) -> TcpOptions {
    let d = TcpOptions::default();
    TcpOptions {
        keepalive: match keepalive {
            None => d.keepalive,
            Some(v) => tcp_keepalive(v, p),
        },
        // TCP_USER_TIMEOUT is a number of milliseconds (32 bits).
        user_timeout: duration_or_off(
            user_timeout,
            d.user_timeout,
            Duration::from_millis(u64::from(u32::MAX)),
            p,
        ),
    }
}

fn tcp_keepalive(v: &Spanned<RawTcpKeepalive>, p: &mut Problems) -> Option<TcpKeepalive> {
    let d = TcpKeepalive::default();
    match v.get_ref() {
        RawTcpKeepalive::Bool(true) => Some(d),
        RawTcpKeepalive::Bool(false) => None,
        RawTcpKeepalive::Idle(text) => match parse_duration(text) {
            Ok(idle) if idle.is_zero() => None,
            Ok(idle) => Some(TcpKeepalive {
                idle: keepalive_secs(v, "idle", idle, d.idle, p),
                ..d
            }),
            Err(e) => {
                p.at(v, e);
                Some(d)
            }
        },
        RawTcpKeepalive::Table(t) => Some(keepalive_table(v, t, d, p)),
    }
}

fn keepalive_table(
    v: &Spanned<RawTcpKeepalive>,
    t: &RawKeepaliveTable,
    d: TcpKeepalive,
    p: &mut Problems,
) -> TcpKeepalive {
    let mut field = |name: &str, text: &Option<String>, default: Duration| match text {
        None => default,
        Some(text) => match parse_duration(text) {
            Ok(x) => keepalive_secs(v, name, x, default, p),
            Err(e) => {
                p.at(v, format!("`{name}`: {e}"));
                default
            }
        },
    };
    let idle = field("idle", &t.idle, d.idle);
    let interval = field("interval", &t.interval, d.interval);
    let probes = match t.probes {
        None => d.probes,
        Some(n) if (1..=MAX_PROBES).contains(&n) => n,
        Some(_) => {
            p.at(v, format!("`probes` must be from 1 to {MAX_PROBES}"));
            d.probes
        }
    };
    TcpKeepalive {
        idle,
        interval,
        probes,
    }
}

/// A keepalive time: whole seconds from 1 s to the kernel's largest.
fn keepalive_secs<T>(
    v: &Spanned<T>,
    name: &str,
    x: Duration,
    default: Duration,
    p: &mut Problems,
) -> Duration {
    if x.subsec_nanos() != 0 || x.as_secs() == 0 || x.as_secs() > MAX_KEEPALIVE_SECS {
        p.at(
            v,
            format!(
                "keepalive `{name}` must be whole seconds from \"1s\" to \"{MAX_KEEPALIVE_SECS}s\""
            ),
        );
        return default;
    }
    x
}

/// A duration that `false` or `"0s"` turns off (`None`) and `true` leaves at `default`;
/// at most `max`.
pub(super) fn duration_or_off(
    v: &Option<Spanned<DurationOrBool>>,
    default: Option<Duration>,
    max: Duration,
    p: &mut Problems,
) -> Option<Duration> {
    let Some(s) = v else { return default };
    match s.get_ref() {
        DurationOrBool::Bool(true) => default,
        DurationOrBool::Bool(false) => None,
        DurationOrBool::Text(text) => match parse_duration(text) {
            Ok(x) if x.is_zero() => None,
            Ok(x) if x > max => {
                p.at(
                    s,
                    format!("at most {}", crate::effective::duration_text(max)),
                );
                default
            }
            Ok(x) => Some(x),
            Err(e) => {
                p.at(s, e);
                default
            }
        },
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::time::Duration;

    use crate::model::{Config, TcpKeepalive, TcpOptions};

    fn config(listener: &str, pool: &str) -> Result<Config, String> {
        let text = format!(
            "[[listeners]]\nname = \"l\"\nbind = \"127.0.0.1:0\"\n{listener}\n\
             [[routes]]\ncluster = \"c\"\n\
             [[clusters]]\nname = \"c\"\nendpoints = [\"127.0.0.1:1\"]\n[clusters.pool]\n{pool}\n"
        );
        crate::parse(&text, "t.toml").map_err(|e| e.to_string())
    }

    fn secs(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    #[test]
    fn defaults_detect_dead_peers() {
        let c = config("", "").unwrap();
        let want = TcpOptions {
            keepalive: Some(TcpKeepalive {
                idle: secs(60),
                interval: secs(10),
                probes: 6,
            }),
            user_timeout: Some(secs(60)),
        };
        assert_eq!(c.listeners[0].tcp, want);
        let pool = &c.clusters[0].pool;
        assert_eq!(pool.tcp, want);
        assert_eq!(pool.max_h2_connections, 4);
        assert_eq!(pool.h2_keepalive_interval, Some(secs(30)));
        assert_eq!(pool.h2_keepalive_timeout, secs(10));
    }

    #[test]
    fn every_form_is_read() {
        let c = config(
            "tcp_keepalive = \"2m\"\ntcp_user_timeout = \"0s\"",
            "tcp_keepalive = { interval = \"5s\", probes = 3 }\ntcp_user_timeout = \"30s\"\n\
             max_h2_connections = 8\nh2_keepalive_interval = false\nh2_keepalive_timeout = \"2s\"",
        )
        .unwrap();
        let l = c.listeners[0].tcp;
        assert_eq!(
            l.keepalive.map(|k| (k.idle, k.probes)),
            Some((secs(120), 6))
        );
        assert_eq!(l.user_timeout, None);
        let pool = &c.clusters[0].pool;
        assert_eq!(
            pool.tcp.keepalive,
            Some(TcpKeepalive {
                idle: secs(60),
                interval: secs(5),
                probes: 3,
            })
        );
        assert_eq!(pool.tcp.user_timeout, Some(secs(30)));
        assert_eq!(pool.max_h2_connections, 8);
        assert_eq!(pool.h2_keepalive_interval, None);
        assert_eq!(pool.h2_keepalive_timeout, secs(2));
        for off in ["false", "\"0s\""] {
            let c = config(&format!("tcp_keepalive = {off}"), "").unwrap();
            assert_eq!(c.listeners[0].tcp.keepalive, None, "{off}");
        }
        let c = config("tcp_keepalive = true\ntcp_user_timeout = true", "").unwrap();
        assert_eq!(c.listeners[0].tcp, TcpOptions::default());
    }

    #[test]
    fn bad_values_are_reported_at_their_key() {
        for (listener, pool, want) in [
            ("tcp_keepalive = \"500ms\"", "", "whole seconds"),
            (
                "tcp_keepalive = { probes = 0 }",
                "",
                "`probes` must be from 1 to 127",
            ),
            ("tcp_keepalive = { idel = \"1s\" }", "", "idel"),
            ("tcp_keepalive = 5", "", "a duration in quotes"),
            ("tcp_user_timeout = \"soon\"", "", "invalid duration"),
            (
                "",
                "max_h2_connections = 0",
                "max_h2_connections must be from 1",
            ),
            ("", "h2_keepalive_timeout = \"0s\"", "greater than zero"),
            ("", "h2_keepalive_interval = 30", "a duration in quotes"),
        ] {
            let e = config(listener, pool).unwrap_err();
            assert!(e.contains(want), "{listener}{pool}: {e}");
        }
        let text = "[[listeners]]\nname = \"u\"\nbind = \"127.0.0.1:0\"\nprotocol = \"udp\"\n\
                    cluster = \"c\"\ntcp_keepalive = \"60s\"\n\
                    [[clusters]]\nname = \"c\"\nendpoints = [\"127.0.0.1:1\"]\n";
        let e = crate::parse(text, "t.toml").unwrap_err().to_string();
        assert!(e.contains("apply to http, https and tcp listeners"), "{e}");
    }
}
