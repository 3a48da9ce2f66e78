//! The request id on the upstream request: the client's own (when it sent one in the
//! listener's `request_id` header) or the one Pylon generated in phase 1, so that the
//! upstream's logs and Pylon's access log name the same request.

use std::sync::Arc;

use http::header::HeaderName;
use http::request::Parts;

use super::{Filter, FilterCtx};

pub(super) fn build(site: &super::FilterSite<'_>) -> Option<Arc<dyn Filter>> {
    let listener = site.listener;
    let name = listener.headers.request_id.as_deref()?;
    let name = HeaderName::from_bytes(name.as_bytes()).ok()?;
    Some(Arc::new(RequestId { name }))
}

struct RequestId {
    name: HeaderName,
}

impl Filter for RequestId {
    fn name(&self) -> &'static str {
        "request_id"
    }

    fn upstream_head(&self, head: &mut Parts, cx: &mut FilterCtx<'_>) {
        if let Some(id) = &cx.request_id {
            head.headers.insert(self.name.clone(), id.clone());
        }
    }
}
