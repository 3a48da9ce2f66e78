//! W3C trace context to the upstream (routes of a configuration with `[tracing]`): the
//! request's `traceparent` names its client span as the upstream's parent, with the
//! sampling decision in its flags; `tracestate` goes on as the client sent it. The
//! span itself is made by the finaliser (`observe/trace`).

use std::sync::Arc;

use http::request::Parts;

use super::{Filter, FilterCtx, FilterSite};

pub struct TraceContext;

pub fn build(site: &FilterSite<'_>) -> Option<Arc<dyn Filter>> {
    site.tracing
        .then(|| Arc::new(TraceContext) as Arc<dyn Filter>)
}

impl Filter for TraceContext {
    fn name(&self) -> &'static str {
        "trace_context"
    }

    fn upstream_head(&self, head: &mut Parts, cx: &mut FilterCtx<'_>) {
        if let Some(t) = &cx.trace {
            t.inject(&mut head.headers);
        }
    }
}
