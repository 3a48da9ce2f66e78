//! On-demand certificates (`on_demand = true`): a name that an https listener has no
//! certificate for gets one at its first handshake. The handshake waits (within the
//! listener's `handshake_timeout`) while Pylon asks the `ask` URL whether the name may
//! have one (`GET ask?domain=NAME`, a 2xx approves; refusals are remembered for a
//! minute), then, within `on_demand_per_minute` new names a minute, starts a managed
//! certificate for it: the stored one when instances or earlier runs already have it,
//! else an order. From then on the name is managed like a configured one.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use pylon_config::model::Acme;
use rustls::sign::CertifiedKey;

use super::{AcmeRegistry, ManagedCert};
use crate::fetch::Fetcher;
use crate::tls::ocsp::OcspRegistry;

/// How long a refused name is not asked about again.
const DENIAL_MEMORY: Duration = Duration::from_secs(60);
/// Names remembered (approved or refused) at most, so that handshakes with made-up
/// names cannot grow memory without bound.
const MAX_NAMES: usize = 10_000;

/// What asking and ordering came to, process-wide.
#[derive(Default)]
pub struct OnDemandStats {
    pub approved: AtomicU64,
    pub denied: AtomicU64,
    pub ask_failed: AtomicU64,
    pub rate_limited: AtomicU64,
}

/// A listener's on-demand certificates.
pub struct OnDemandCerts {
    /// The listener's ACME settings; each name's certificate uses them with its name.
    template: Acme,
    ask: String,
    per_minute: u32,
    registry: Arc<AcmeRegistry>,
    ocsp: Option<Arc<OcspRegistry>>,
    http: Fetcher,
    certs: Mutex<HashMap<String, Arc<ManagedCert>>>,
    denied: Mutex<HashMap<String, Instant>>,
    /// The start of the current minute and the names started in it.
    window: Mutex<(Instant, u32)>,
}

impl OnDemandCerts {
    pub fn new(
        template: &Acme,
        registry: &Arc<AcmeRegistry>,
        ocsp: Option<&Arc<OcspRegistry>>,
    ) -> Option<OnDemandCerts> {
        let on_demand = template.on_demand.as_ref()?;
        Some(OnDemandCerts {
            template: template.clone(),
            ask: on_demand.ask.clone(),
            per_minute: on_demand.per_minute,
            registry: Arc::clone(registry),
            ocsp: ocsp.cloned(),
            http: Fetcher::new(
                Duration::from_secs(5),
                64 * 1024,
                crate::fetch::system_roots(),
            ),
            certs: Mutex::new(HashMap::new()),
            denied: Mutex::new(HashMap::new()),
            window: Mutex::new((Instant::now(), 0)),
        })
    }

    /// The certificate for `name`, once it has one.
    pub fn cert_for(&self, name: &str) -> Option<Arc<CertifiedKey>> {
        crate::lock(&self.certs).get(name)?.current()
    }

    /// Gets `name` a certificate if it may have one, waiting at most `wait` for it.
    pub async fn prepare(&self, name: &str, wait: Duration) {
        let deadline = Instant::now() + wait;
        let name = name.to_ascii_lowercase();
        if self.template.names.contains(&name) || !pylon_config::model::is_dns_name(&name) {
            return;
        }
        let known = crate::lock(&self.certs).get(&name).cloned();
        let cert = match known {
            Some(c) => c,
            None => match self.start(&name).await {
                Some(c) => c,
                None => return,
            },
        };
        while cert.current().is_none() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Asks, counts against the rate, and starts the name's managed certificate.
    async fn start(&self, name: &str) -> Option<Arc<ManagedCert>> {
        let stats = &self.registry.on_demand;
        {
            let mut denied = crate::lock(&self.denied);
            denied.retain(|_, at| at.elapsed() < DENIAL_MEMORY);
            if denied.contains_key(name) {
                return None;
            }
        }
        match self.asked(name).await {
            Ok(true) => {}
            Ok(false) => {
                stats.denied.fetch_add(1, Ordering::Relaxed);
                tracing::info!(name, ask = %self.ask, "ACME on demand: the ask URL refused the name");
                let mut denied = crate::lock(&self.denied);
                if denied.len() < MAX_NAMES {
                    denied.insert(name.to_owned(), Instant::now());
                }
                return None;
            }
            Err(e) => {
                stats.ask_failed.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(name, ask = %self.ask, error = %e, "ACME on demand: the ask URL did not answer; no certificate");
                return None;
            }
        }
        let mut certs = crate::lock(&self.certs);
        if let Some(c) = certs.get(name) {
            return Some(Arc::clone(c));
        }
        if certs.len() >= MAX_NAMES {
            tracing::warn!(name, "ACME on demand: too many names; no certificate");
            return None;
        }
        {
            let mut window = crate::lock(&self.window);
            if window.0.elapsed() >= Duration::from_secs(60) {
                *window = (Instant::now(), 0);
            }
            if window.1 >= self.per_minute {
                stats.rate_limited.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(
                    name,
                    per_minute = self.per_minute,
                    "ACME on demand: rate limit reached; no certificate yet"
                );
                return None;
            }
            window.1 += 1;
        }
        stats.approved.fetch_add(1, Ordering::Relaxed);
        let mut settings = self.template.clone();
        settings.names = vec![name.to_owned()];
        settings.on_demand = None;
        match self.registry.certificate(&settings, self.ocsp.as_ref()) {
            Ok(c) => {
                certs.insert(name.to_owned(), Arc::clone(&c));
                tracing::info!(name, "ACME on demand: certificate started for a new name");
                Some(c)
            }
            Err(e) => {
                tracing::error!(name, error = %e, "ACME on demand: cannot start the certificate");
                None
            }
        }
    }

    /// `GET ask?domain=NAME`: whether a 2xx came back.
    async fn asked(&self, name: &str) -> Result<bool, crate::fetch::FetchError> {
        let sep = if self.ask.contains('?') { '&' } else { '?' };
        let url = format!("{}{sep}domain={name}", self.ask);
        let req = http::Request::get(url)
            .body(Bytes::new())
            .map_err(|e| crate::fetch::FetchError::Request(e.to_string()))?;
        Ok(self.http.send(req).await?.status().is_success())
    }
}
