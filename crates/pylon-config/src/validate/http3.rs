//! A listener's `http3` key: `true`, `false`, or a table of HTTP/3 settings; only on
//! `https` listeners, whose certificates it shares.

use toml::Spanned;

use super::Problems;
use crate::model::{AddressValidation, Http3, ListenerProtocol};
use crate::raw::{RawHttp3, Size};
use crate::units::{parse_duration, parse_size};

/// The most a QUIC flow-control window can be (a variable-length integer, RFC 9000 §16).
const MAX_WINDOW: u64 = (1 << 62) - 1;

pub(super) fn http3(
    v: &Option<Spanned<RawHttp3>>,
    protocol: ListenerProtocol,
    p: &mut Problems,
) -> Option<Http3> {
    let v = v.as_ref()?;
    if protocol != ListenerProtocol::Https {
        p.at(
            v,
            "`http3` applies only to listeners with protocol = \"https\"",
        );
        return None;
    }
    let d = Http3::default();
    let t = match v.get_ref() {
        RawHttp3::Bool(false) => return None,
        RawHttp3::Bool(true) => return Some(d),
        RawHttp3::Table(t) => t,
    };
    let mut h = d.clone();
    if let Some(a) = t.alt_svc {
        h.alt_svc = a;
    }
    if let Some(e) = t.early_data {
        h.early_data = e;
    }
    if let Some(ma) = &t.alt_svc_max_age {
        match parse_duration(ma) {
            Ok(x) => h.alt_svc_max_age = x,
            Err(e) => p.at(v, format!("alt_svc_max_age: {e}")),
        }
    }
    let above = match t.validation_above {
        Some(0) => {
            p.at(
                v,
                "validation_above must be at least 1 (or address_validation = \"always\")",
            );
            None
        }
        n => n,
    };
    h.address_validation = match t.address_validation.as_deref() {
        None | Some("auto") => AddressValidation::Above(above.unwrap_or(1000)),
        Some("always") => AddressValidation::Always,
        Some("never") => AddressValidation::Never,
        Some(other) => {
            p.at(
                v,
                format!("unknown address_validation \"{other}\", expected auto, always or never"),
            );
            d.address_validation
        }
    };
    if above.is_some() && !matches!(h.address_validation, AddressValidation::Above(_)) {
        p.at(
            v,
            "validation_above applies only to address_validation = \"auto\"",
        );
    }
    match t.max_connections {
        Some(0) => p.at(v, "max_connections must be at least 1"),
        Some(n) => h.max_connections = n,
        None => {}
    }
    let mut window = |name: &str, s: &Option<Size>, into: &mut u64| {
        let Some(s) = s else { return };
        let n = match s {
            Size::Bytes(n) => Ok(*n),
            Size::Text(t) => parse_size(t),
        };
        match n {
            Ok(n) if (1024..=MAX_WINDOW).contains(&n) => *into = n,
            Ok(_) => p.at(v, format!("{name} must be at least 1KiB")),
            Err(e) => p.at(v, format!("{name}: {e}")),
        }
    };
    window(
        "initial_stream_window",
        &t.initial_stream_window,
        &mut h.initial_stream_window,
    );
    window(
        "initial_connection_window",
        &t.initial_connection_window,
        &mut h.initial_connection_window,
    );
    if h.initial_connection_window < h.initial_stream_window {
        p.at(
            v,
            "initial_connection_window must be at least initial_stream_window",
        );
    }
    Some(h)
}
