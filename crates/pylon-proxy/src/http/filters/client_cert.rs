//! Client-certificate identity headers: on TLS listeners, the client's own
//! `x-client-cert-*` headers are always dropped, and with `forward_client_cert` the
//! verified certificate's subject, DNS names and fingerprint are sent upstream.

use std::sync::Arc;

use http::header::{HeaderName, HeaderValue};
use http::request::Parts;

use super::{Filter, FilterCtx};
use crate::tls::server::ClientIdentity;

static CLIENT_CERT_SUBJECT: HeaderName = HeaderName::from_static("x-client-cert-subject");
static CLIENT_CERT_DNS: HeaderName = HeaderName::from_static("x-client-cert-dns");
static CLIENT_CERT_FINGERPRINT: HeaderName = HeaderName::from_static("x-client-cert-fingerprint");

pub(super) fn build(site: &super::FilterSite<'_>) -> Option<Arc<dyn Filter>> {
    let listener = site.listener;
    let tls = listener.tls.as_ref()?;
    Some(Arc::new(ClientCert {
        forward: tls.forward_client_cert,
    }))
}

struct ClientCert {
    forward: bool,
}

impl Filter for ClientCert {
    fn name(&self) -> &'static str {
        "client_cert"
    }

    fn upstream_head(&self, head: &mut Parts, cx: &mut FilterCtx<'_>) {
        // A client never legitimately sends these on a TLS listener.
        let id = cx.conn.client_cert.as_deref().filter(|_| self.forward);
        replace_identity(&mut head.headers, id);
    }
}

/// Replaces any client-sent `x-client-cert-*` headers with the verified identity.
fn replace_identity(h: &mut http::HeaderMap, id: Option<&ClientIdentity>) {
    for n in [
        &CLIENT_CERT_SUBJECT,
        &CLIENT_CERT_DNS,
        &CLIENT_CERT_FINGERPRINT,
    ] {
        h.remove(n);
    }
    let Some(id) = id else { return };
    let values = [
        (&CLIENT_CERT_SUBJECT, id.subject.clone()),
        (&CLIENT_CERT_DNS, id.dns_names.join(",")),
        (&CLIENT_CERT_FINGERPRINT, id.fingerprint.clone()),
    ];
    for (name, value) in values {
        if !value.is_empty()
            && let Ok(v) = HeaderValue::from_str(&value)
        {
            h.insert(name.clone(), v);
        }
    }
}
