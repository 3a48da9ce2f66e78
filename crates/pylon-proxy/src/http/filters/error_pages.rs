//! Custom error pages on a route (`error_pages = [{ status = [502, 503], file = ... }]`):
//! the body of a proxy-made error with one of the statuses is replaced by the page (its
//! status and `x-pylon-error` stay), and, for pages with `upstream = true`, the body of
//! the upstream's own answers with those statuses too. Pages are read when the
//! configuration is loaded.

use std::sync::Arc;

use bytes::Bytes;
use http::Response;
use http::header::{self, HeaderValue};
use pylon_config::model::Action;

use super::{Filter, FilterCtx, FilterSite};
use crate::http::body::ResponseBody;

struct Page {
    statuses: Vec<u16>,
    body: Bytes,
    content_type: HeaderValue,
    upstream: bool,
}

pub(super) fn build(site: &FilterSite<'_>) -> Option<Arc<dyn Filter>> {
    let Action::Proxy(p) = &site.route.action else {
        return None;
    };
    if p.error_pages.is_empty() {
        return None;
    }
    let pages = p
        .error_pages
        .iter()
        .map(|e| Page {
            statuses: e.statuses.clone(),
            body: Bytes::from(e.body.clone()),
            content_type: HeaderValue::from_str(&e.content_type)
                .unwrap_or_else(|_| HeaderValue::from_static("text/plain; charset=utf-8")),
            upstream: e.upstream,
        })
        .collect();
    Some(Arc::new(ErrorPages { pages }))
}

struct ErrorPages {
    pages: Vec<Page>,
}

impl ErrorPages {
    fn replace(&self, resp: &mut Response<ResponseBody>, upstream: bool) {
        let status = resp.status().as_u16();
        let Some(page) = self
            .pages
            .iter()
            .find(|p| p.statuses.contains(&status) && (!upstream || p.upstream))
        else {
            return;
        };
        let h = resp.headers_mut();
        for name in [
            header::CONTENT_LENGTH,
            header::CONTENT_ENCODING,
            header::TRANSFER_ENCODING,
            header::ETAG,
            header::LAST_MODIFIED,
            header::CONTENT_RANGE,
        ] {
            h.remove(name);
        }
        h.insert(header::CONTENT_TYPE, page.content_type.clone());
        *resp.body_mut() = ResponseBody::full(page.body.clone());
    }
}

impl Filter for ErrorPages {
    fn name(&self) -> &'static str {
        "error_pages"
    }

    fn response(&self, resp: &mut Response<ResponseBody>, _cx: &mut FilterCtx<'_>) {
        if resp.status().as_u16() >= 400 {
            self.replace(resp, true);
        }
    }

    fn error_answer(&self, resp: &mut Response<ResponseBody>, _state: &http::Extensions) {
        self.replace(resp, false);
    }
}
