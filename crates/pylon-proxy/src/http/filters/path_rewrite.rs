//! `prefix_rewrite`: the part of the path the route matched (`path_prefix`) is replaced
//! on the upstream request, the rest of the path and the query kept.

use std::sync::Arc;

use http::request::Parts;
use http::uri::{PathAndQuery, Uri};
use pylon_config::model::{Action, PathMatch};

use super::{Filter, FilterCtx};

pub(super) fn build(site: &super::FilterSite<'_>) -> Option<Arc<dyn Filter>> {
    let route = site.route;
    let (Action::Proxy(action), PathMatch::Prefix(from)) = (&route.action, &route.matcher.path)
    else {
        return None;
    };
    Some(Arc::new(PrefixRewrite {
        from: from.clone(),
        to: action.prefix_rewrite.clone()?,
    }))
}

struct PrefixRewrite {
    from: String,
    to: String,
}

impl Filter for PrefixRewrite {
    fn name(&self) -> &'static str {
        "path_rewrite"
    }

    fn upstream_head(&self, head: &mut Parts, _cx: &mut FilterCtx<'_>) {
        let Some(original) = head.uri.path_and_query() else {
            return;
        };
        let rewritten = rewrite(original, &self.from, &self.to);
        let mut uri = std::mem::take(&mut head.uri).into_parts();
        uri.path_and_query = Some(rewritten);
        if let Ok(u) = Uri::from_parts(uri) {
            head.uri = u;
        }
    }
}

/// `original` with its `from` prefix replaced by `to`, the query kept.
fn rewrite(original: &PathAndQuery, from: &str, to: &str) -> PathAndQuery {
    let rest = original
        .path()
        .strip_prefix(from)
        .unwrap_or(original.path());
    let mut p = String::with_capacity(to.len() + rest.len() + 16);
    p.push_str(to);
    if p.ends_with('/') && rest.starts_with('/') {
        p.pop();
    }
    p.push_str(rest);
    if p.is_empty() {
        p.push('/');
    }
    if let Some(q) = original.query() {
        p.push('?');
        p.push_str(q);
    }
    PathAndQuery::try_from(p).unwrap_or_else(|_| original.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_matched_prefix_is_replaced_and_the_query_kept() {
        let cases = [
            ("/api/users?x=1", "/api", "/v2", "/v2/users?x=1"),
            ("/api/", "/api", "/", "/"),
            ("/api", "/api", "", "/"),
            ("/api/a", "/api/", "/b/", "/b/a"),
            ("/other", "/api", "/v2", "/v2/other"),
        ];
        for (path, from, to, want) in cases {
            let got = rewrite(&PathAndQuery::from_static(path), from, to);
            assert_eq!(got.as_str(), want, "{path} with {from} -> {to}");
        }
    }
}
