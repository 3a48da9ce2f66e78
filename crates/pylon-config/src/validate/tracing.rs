//! `[tracing]`: the collector's endpoint and protocol, the sampler, the export queue.

use std::ops::Range;
use std::time::Duration;

use super::{Problems, at_least_one, duration, header_name_ok, header_value_ok};
use crate::model::{OtlpProtocol, Sampler, Tracing};
use crate::raw::RawTracing;

pub(super) fn tracing(r: RawTracing, span: Range<usize>, p: &mut Problems) -> Option<Tracing> {
    if r.enabled == Some(false) {
        return None;
    }
    let protocol = match r.protocol.as_ref().map(|s| s.get_ref().as_str()) {
        None | Some("grpc") => OtlpProtocol::Grpc,
        Some("http/protobuf") => OtlpProtocol::HttpProtobuf,
        Some(other) => {
            if let Some(s) = &r.protocol {
                p.at(
                    s,
                    format!("unknown protocol \"{other}\": use \"grpc\" or \"http/protobuf\""),
                );
            }
            OtlpProtocol::Grpc
        }
    };
    let endpoint = match &r.endpoint {
        None => {
            p.span(
                span,
                "[tracing] needs `endpoint`: the OTLP collector, e.g. \"http://127.0.0.1:4317\"",
            );
            return None;
        }
        Some(e) => {
            let text = e.get_ref().trim_end_matches('/');
            let rest = text
                .strip_prefix("http://")
                .or_else(|| text.strip_prefix("https://"));
            let host = rest.map(|r| r.split('/').next().unwrap_or(""));
            if host.is_none_or(|h| h.is_empty() || h.contains(char::is_whitespace)) {
                p.at(
                    e,
                    "`endpoint` must be an http:// or https:// URL with a host",
                );
            }
            let has_path = rest.is_some_and(|r| r.contains('/'));
            match protocol {
                // The gRPC service's path is fixed; HTTP takes the OTLP path when the
                // URL names none.
                OtlpProtocol::HttpProtobuf if !has_path => format!("{text}/v1/traces"),
                _ => text.to_owned(),
            }
        }
    };
    let sampler = match r.sampler.as_ref().map(|s| s.get_ref().as_str()) {
        None | Some("parent_based") => Sampler::ParentBased,
        Some("ratio") => Sampler::Ratio,
        Some(other) => {
            if let Some(s) = &r.sampler {
                p.at(
                    s,
                    format!("unknown sampler \"{other}\": use \"parent_based\" or \"ratio\""),
                );
            }
            Sampler::ParentBased
        }
    };
    let ratio = match &r.ratio {
        Some(v) if !(0.0..=1.0).contains(v.get_ref()) => {
            p.at(v, "`ratio` must be between 0 and 1");
            1.0
        }
        Some(v) => *v.get_ref(),
        None => 1.0,
    };
    let mut headers = Vec::new();
    for (k, v) in r.headers.iter().flatten() {
        if !header_name_ok(k.get_ref()) {
            p.at(k, "not a valid header name");
        } else if !header_value_ok(v.get_ref()) {
            p.at(v, "not a valid header value");
        } else {
            headers.push((k.get_ref().to_ascii_lowercase(), v.get_ref().clone()));
        }
    }
    let service_name = match &r.service_name {
        Some(s) if s.get_ref().is_empty() => {
            p.at(s, "`service_name` must not be empty");
            "pylon".to_owned()
        }
        Some(s) => s.get_ref().clone(),
        None => "pylon".to_owned(),
    };
    let max_queue = at_least_one(&r.max_queue, 2048, p);
    let max_batch = at_least_one(&r.max_batch, 512, p);
    if let Some(b) = &r.max_batch
        && *b.get_ref() > max_queue
    {
        p.at(
            b,
            format!("`max_batch` cannot exceed `max_queue` ({max_queue})"),
        );
    }
    Some(Tracing {
        endpoint,
        protocol,
        service_name,
        sampler,
        ratio,
        always_sample_errors: r.always_sample_errors.unwrap_or(true),
        headers,
        max_queue,
        max_batch,
        flush_interval: duration(&r.flush_interval, Duration::from_secs(1), p),
        export_timeout: duration(&r.export_timeout, Duration::from_secs(10), p),
    })
}
