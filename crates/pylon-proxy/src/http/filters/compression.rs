//! Response compression (`compression = true` or a table on a route): zstd, brotli or
//! gzip (the `async-compression` crate), negotiated from `Accept-Encoding` with its
//! q-values, for the configured media types, above a minimum size, streamed as the
//! upstream's body arrives. Never for answers already encoded, `Cache-Control:
//! no-transform`, partial (206) or bodiless ones, or `HEAD`. A compressed answer loses
//! `Content-Length` and `Accept-Ranges`, its `ETag` becomes weak, and every answer that
//! could be compressed says `Vary: Accept-Encoding`.
//!
//! It runs before the cache's phase 5, so a zone stores each encoding as a variant of
//! its own (by `Vary: Accept-Encoding`, whose values the cache normalises) and serves it
//! to the clients that accept it.

use std::sync::Arc;

use async_compression::Level;
use async_compression::tokio::bufread::{
    BrotliDecoder, BrotliEncoder, GzipDecoder, GzipEncoder, ZstdDecoder, ZstdEncoder,
};
use bytes::Bytes;
use futures_util::{StreamExt, TryStreamExt};
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body::Frame;
use pylon_config::model::{Action, Compression};
use tokio::io::AsyncRead;

use super::{Filter, FilterCtx, FilterSite};
use crate::conn::ClientBody;
use crate::http::body::ResponseBody;
use crate::http::error::ErrorKind;

/// An encoding Pylon produces.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Coding {
    Zstd,
    Br,
    Gzip,
}

impl Coding {
    fn token(self) -> &'static str {
        match self {
            Coding::Zstd => "zstd",
            Coding::Br => "br",
            Coding::Gzip => "gzip",
        }
    }

    fn parse(s: &str) -> Option<Coding> {
        match s {
            "zstd" => Some(Coding::Zstd),
            "br" => Some(Coding::Br),
            "gzip" => Some(Coding::Gzip),
            _ => None,
        }
    }
}

pub(super) fn build(site: &FilterSite<'_>) -> Option<Arc<dyn Filter>> {
    let Action::Proxy(p) = &site.route.action else {
        return None;
    };
    let c = p.compression.as_ref()?;
    Some(Arc::new(Compress {
        codings: c
            .algorithms
            .iter()
            .filter_map(|a| Coding::parse(a))
            .collect(),
        settings: c.clone(),
    }))
}

struct Compress {
    /// In the order preferred among equal q-values.
    codings: Vec<Coding>,
    settings: Compression,
}

/// What phase 3 learnt: the client's pick, and whether it is a `HEAD`.
#[derive(Clone, Copy)]
struct Accepts {
    coding: Option<Coding>,
    head: bool,
}

/// The coding to use for `Accept-Encoding` (all its lines): the highest q among those
/// offered, ties going to the first of `ours`; `*` stands for any not named.
fn negotiate(headers: &HeaderMap, ours: &[Coding]) -> Option<Coding> {
    let tokens: Vec<&str> = ours.iter().map(|c| c.token()).collect();
    negotiate_tokens(headers, &tokens).and_then(Coding::parse)
}

/// [`negotiate`] over content-coding names (`gzip` also answers to `x-gzip`); for the
/// static files' precompressed siblings too.
pub(crate) fn negotiate_tokens<'a>(headers: &HeaderMap, ours: &[&'a str]) -> Option<&'a str> {
    let mut named: Vec<(String, f32)> = Vec::new();
    for line in headers.get_all(header::ACCEPT_ENCODING) {
        let Ok(line) = line.to_str() else { continue };
        for item in line.split(',') {
            let mut parts = item.split(';');
            let token = parts.next().unwrap_or("").trim().to_ascii_lowercase();
            if token.is_empty() {
                continue;
            }
            let mut q = 1.0f32;
            for p in parts {
                let p = p.trim();
                if let Some(v) = p.strip_prefix("q=").or_else(|| p.strip_prefix("Q=")) {
                    q = v.trim().parse().unwrap_or(0.0);
                }
            }
            named.push((token, q.clamp(0.0, 1.0)));
        }
    }
    let star = named.iter().find(|(t, _)| t == "*").map(|(_, q)| *q);
    let mut best: Option<(&'a str, f32)> = None;
    for &c in ours {
        let q = named
            .iter()
            .find(|(t, _)| t == c || (c == "gzip" && t == "x-gzip"))
            .map(|(_, q)| *q)
            .or(star)
            .unwrap_or(0.0);
        if q > 0.0 && best.is_none_or(|(_, b)| q > b) {
            best = Some((c, q));
        }
    }
    best.map(|(c, _)| c)
}

impl Compress {
    /// Whether this answer's kind is one to compress (whatever the client accepts).
    fn compressible(&self, resp: &Response<ResponseBody>) -> bool {
        let h = resp.headers();
        let status = resp.status();
        if !status.is_success()
            || status == StatusCode::NO_CONTENT
            || status == StatusCode::PARTIAL_CONTENT
            || h.contains_key(header::CONTENT_ENCODING)
            || h.contains_key(header::CONTENT_RANGE)
        {
            return false;
        }
        let no_transform = h.get_all(header::CACHE_CONTROL).iter().any(|v| {
            v.to_str().is_ok_and(|s| {
                s.split(',')
                    .any(|d| d.trim().eq_ignore_ascii_case("no-transform"))
            })
        });
        if no_transform {
            return false;
        }
        let Some(ct) = h.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()) else {
            return false;
        };
        let media = ct
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        let typed = self
            .settings
            .content_types
            .iter()
            .any(|t| match t.strip_suffix("/*") {
                Some(top) => media.split_once('/').is_some_and(|(ty, _)| ty == top),
                None => *t == media,
            });
        if !typed {
            return false;
        }
        let small = h
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok())
            .is_some_and(|n| n < self.settings.min_size);
        !small
    }

    fn encode(&self, coding: Coding, body: ResponseBody) -> ResponseBody {
        let stream = http_body_util::BodyDataStream::new(body).map_err(std::io::Error::other);
        let reader = tokio_util::io::StreamReader::new(stream);
        let s = &self.settings;
        let encoder: std::pin::Pin<Box<dyn AsyncRead + Send + Sync>> = match coding {
            Coding::Gzip => Box::pin(GzipEncoder::with_quality(
                reader,
                Level::Precise(s.gzip_level as i32),
            )),
            Coding::Br => Box::pin(BrotliEncoder::with_quality(
                reader,
                Level::Precise(s.brotli_level as i32),
            )),
            Coding::Zstd => Box::pin(ZstdEncoder::with_quality(
                reader,
                Level::Precise(s.zstd_level),
            )),
        };
        let frames = tokio_util::io::ReaderStream::with_capacity(encoder, 16 * 1024)
            .map_ok(Frame::data)
            .map_err(|e| Box::new(e) as crate::cluster::body::BoxError);
        ResponseBody::boxed(http_body_util::StreamBody::new(frames))
    }
}

impl Filter for Compress {
    fn name(&self) -> &'static str {
        "compression"
    }

    fn request(
        &self,
        req: &mut Request<ClientBody>,
        cx: &mut FilterCtx<'_>,
    ) -> Result<Option<Response<ResponseBody>>, ErrorKind> {
        if let Some(max) = self.settings.decompress_requests {
            decode_request(req, max)?;
        }
        cx.state.insert(Accepts {
            coding: negotiate(req.headers(), &self.codings),
            head: req.method() == Method::HEAD,
        });
        Ok(None)
    }

    fn response(&self, resp: &mut Response<ResponseBody>, cx: &mut FilterCtx<'_>) {
        if !self.compressible(resp) {
            return;
        }
        let h = resp.headers_mut();
        let varies = h.get_all(header::VARY).iter().any(|v| {
            v.to_str().is_ok_and(|s| {
                s.split(',')
                    .any(|t| t.trim() == "*" || t.trim().eq_ignore_ascii_case("accept-encoding"))
            })
        });
        if !varies {
            h.append(header::VARY, HeaderValue::from_static("accept-encoding"));
        }
        let Some(Accepts {
            coding: Some(coding),
            head,
        }) = cx.state.get::<Accepts>().copied()
        else {
            return;
        };
        h.insert(
            header::CONTENT_ENCODING,
            HeaderValue::from_static(coding.token()),
        );
        h.remove(header::CONTENT_LENGTH);
        h.remove(header::ACCEPT_RANGES);
        if let Some(etag) = h.get(header::ETAG)
            && !etag.as_bytes().starts_with(b"W/")
            && let Ok(weak) = HeaderValue::from_bytes(&[b"W/", etag.as_bytes()].concat())
        {
            h.insert(header::ETAG, weak);
        }
        if head {
            return;
        }
        let body = std::mem::replace(resp.body_mut(), ResponseBody::full(Bytes::new()));
        *resp.body_mut() = self.encode(coding, body);
    }
}

/// A request body in gzip, br or zstd made into its decoded bytes as it streams (at most
/// `max`; past that the body fails and the upstream request with it), its
/// `Content-Encoding` and `Content-Length` gone. Another coding is 415.
fn decode_request(req: &mut Request<ClientBody>, max: u64) -> Result<(), ErrorKind> {
    let Some(coding) = req.headers().get(header::CONTENT_ENCODING) else {
        return Ok(());
    };
    let coding = coding
        .to_str()
        .ok()
        .map(|c| c.trim().to_ascii_lowercase())
        .and_then(|c| Coding::parse(if c == "x-gzip" { "gzip" } else { &c }))
        .ok_or(ErrorKind::UnsupportedEncoding)?;
    let body = std::mem::replace(req.body_mut(), ClientBody::Empty);
    let stream = http_body_util::BodyDataStream::new(body).map_err(std::io::Error::other);
    let reader = tokio_util::io::StreamReader::new(stream);
    let decoder: std::pin::Pin<Box<dyn AsyncRead + Send + Sync>> = match coding {
        Coding::Gzip => Box::pin(GzipDecoder::new(reader)),
        Coding::Br => Box::pin(BrotliDecoder::new(reader)),
        Coding::Zstd => Box::pin(ZstdDecoder::new(reader)),
    };
    let bounded = tokio::io::AsyncReadExt::take(decoder, max.saturating_add(1));
    let mut seen = 0u64;
    let frames = tokio_util::io::ReaderStream::with_capacity(bounded, 16 * 1024)
        .map_err(|e| Box::new(e) as crate::cluster::body::BoxError)
        .map(move |r| {
            let chunk = r?;
            seen += chunk.len() as u64;
            if seen > max {
                return Err("the decompressed request body is over max_decompressed".into());
            }
            Ok(Frame::data(chunk))
        });
    *req.body_mut() = ClientBody::Other(Box::new(http_body_util::StreamBody::new(frames)));
    let h = req.headers_mut();
    h.remove(header::CONTENT_ENCODING);
    h.remove(header::CONTENT_LENGTH);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::{Coding, negotiate};

    fn pick(accept: &[&str]) -> Option<Coding> {
        let mut h = http::HeaderMap::new();
        for a in accept {
            h.append(
                http::header::ACCEPT_ENCODING,
                a.parse()
                    .unwrap_or_else(|_| http::HeaderValue::from_static("")),
            );
        }
        negotiate(&h, &[Coding::Zstd, Coding::Br, Coding::Gzip])
    }

    #[test]
    fn q_values_decide_and_ties_go_to_the_preferred() {
        assert_eq!(pick(&["gzip, deflate, br, zstd"]), Some(Coding::Zstd));
        assert_eq!(pick(&["gzip, br"]), Some(Coding::Br));
        assert_eq!(pick(&["gzip;q=1.0, br;q=0.5"]), Some(Coding::Gzip));
        assert_eq!(pick(&["br;q=0, gzip"]), Some(Coding::Gzip));
        assert_eq!(pick(&["identity"]), None);
        assert_eq!(pick(&[]), None);
        assert_eq!(pick(&["*;q=0.1", "gzip;q=0"]), Some(Coding::Zstd));
        assert_eq!(pick(&["x-gzip"]), Some(Coding::Gzip));
        assert_eq!(pick(&["gzip", "br"]), Some(Coding::Br), "several lines");
        assert_eq!(pick(&["GZIP;Q=0.8"]), Some(Coding::Gzip));
    }
}
