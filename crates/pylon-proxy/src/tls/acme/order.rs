//! One certificate order with `instant-acme`: the account (loaded from the store, else
//! created, with External Account Binding when configured, and stored), a new order for
//! the names, each authorization's challenge published and marked ready, the order
//! polled until ready, a fresh ECDSA P-256 key and CSR, the chain downloaded.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use http_body_util::BodyExt;
use instant_acme::{
    Account, AccountCredentials, AuthorizationStatus, BodyWrapper, BytesResponse, ChallengeType,
    ExternalAccountKey, Identifier, NewAccount, NewOrder, OrderStatus, RetryPolicy,
};
use pylon_config::model::{Acme, AcmeChallenge};

use super::challenge::{Challenges, Published};
use super::store::Store;
use crate::fetch::{FetchError, Fetcher};

/// Why an order failed, as counted in `pylon_acme_order_failures_total{reason}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureReason {
    /// The directory did not answer (network, TLS, timeout).
    Unreachable,
    /// The CA refused the account or a name.
    Rejected,
    /// A challenge was not validated.
    Challenge,
    /// The storage directory could not be read or written.
    Storage,
    /// Anything else the CA answered that was not expected.
    Protocol,
}

impl FailureReason {
    pub const ALL: [FailureReason; 5] = [
        FailureReason::Unreachable,
        FailureReason::Rejected,
        FailureReason::Challenge,
        FailureReason::Storage,
        FailureReason::Protocol,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            FailureReason::Unreachable => "unreachable",
            FailureReason::Rejected => "rejected",
            FailureReason::Challenge => "challenge",
            FailureReason::Storage => "storage",
            FailureReason::Protocol => "protocol",
        }
    }
}

/// A failed order: why, in a line for the log.
#[derive(Debug)]
pub struct OrderError {
    pub reason: FailureReason,
    pub message: String,
}

impl std::fmt::Display for OrderError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

fn fail(reason: FailureReason, message: impl Into<String>) -> OrderError {
    OrderError {
        reason,
        message: message.into(),
    }
}

/// Classifies what `instant-acme` returned.
fn acme_error(step: &str, e: instant_acme::Error) -> OrderError {
    use instant_acme::Error as E;
    let reason = match &e {
        E::Other(inner) if inner.downcast_ref::<FetchError>().is_some() => {
            FailureReason::Unreachable
        }
        E::Api(p) => match p.r#type.as_deref().and_then(|t| t.rsplit(':').next()) {
            Some(
                "rejectedIdentifier"
                | "unsupportedIdentifier"
                | "caa"
                | "unauthorized"
                | "externalAccountRequired"
                | "invalidContact"
                | "unsupportedContact"
                | "userActionRequired"
                | "accountDoesNotExist",
            ) => FailureReason::Rejected,
            Some("connection" | "dns" | "incorrectResponse" | "tls") => FailureReason::Challenge,
            _ => FailureReason::Protocol,
        },
        _ => FailureReason::Protocol,
    };
    fail(reason, format!("{step}: {e}"))
}

/// A certificate just issued: its key and chain, PEM.
pub struct Issued {
    pub key_pem: String,
    pub chain_pem: String,
}

/// Runs one order to its end.
pub async fn order(
    settings: &Acme,
    store: &Store,
    challenges: &Arc<Challenges>,
    http: &Fetcher,
) -> Result<Issued, OrderError> {
    let account = account(settings, store, http).await?;
    let identifiers: Vec<Identifier> = settings
        .names
        .iter()
        .map(|n| Identifier::Dns(n.clone()))
        .collect();
    let mut order = account
        .new_order(&NewOrder::new(&identifiers))
        .await
        .map_err(|e| acme_error("new order", e))?;
    let mut published: Vec<Published> = Vec::new();
    let kind = match settings.challenge {
        AcmeChallenge::Http01 => ChallengeType::Http01,
        AcmeChallenge::TlsAlpn01 => ChallengeType::TlsAlpn01,
    };
    let mut authorizations = order.authorizations();
    while let Some(a) = authorizations.next().await {
        let mut a = a.map_err(|e| acme_error("authorization", e))?;
        match a.status {
            AuthorizationStatus::Valid => continue,
            AuthorizationStatus::Pending => {}
            other => {
                return Err(fail(
                    FailureReason::Challenge,
                    format!("authorization for {} is {other:?}", a.identifier()),
                ));
            }
        }
        let name = a.identifier().to_string();
        let mut challenge = a.challenge(kind.clone()).ok_or_else(|| {
            fail(
                FailureReason::Rejected,
                format!("the CA offers no {kind:?} challenge for {name}"),
            )
        })?;
        let key_authorization = challenge.key_authorization();
        published.push(match settings.challenge {
            AcmeChallenge::Http01 => challenges.publish_http01(
                &challenge.token,
                key_authorization.as_str(),
                Some(store.folder()),
            ),
            AcmeChallenge::TlsAlpn01 => challenges
                .publish_tls_alpn01(
                    &name,
                    key_authorization.digest().as_ref(),
                    Some(store.folder()),
                )
                .map_err(|e| {
                    fail(
                        FailureReason::Protocol,
                        format!("challenge certificate: {e}"),
                    )
                })?,
        });
        challenge
            .set_ready()
            .await
            .map_err(|e| acme_error(&format!("challenge for {name}"), e))?;
    }
    let poll = RetryPolicy::new()
        .initial_delay(Duration::from_millis(250))
        .backoff(1.5)
        .timeout(Duration::from_secs(120));
    let status = order
        .poll_ready(&poll)
        .await
        .map_err(|e| acme_error("waiting for validation", e))?;
    if status != OrderStatus::Ready {
        // Say which challenge failed and why, as the CA put it.
        let mut why = Vec::new();
        let mut authorizations = order.authorizations();
        while let Some(Ok(a)) = authorizations.next().await {
            for c in a.challenges.iter().filter(|c| c.r#type == kind) {
                if let Some(p) = &c.error {
                    why.push(format!("{}: {p}", a.identifier()));
                }
            }
        }
        return Err(fail(
            FailureReason::Challenge,
            format!(
                "order is {status:?}: {}",
                if why.is_empty() {
                    "the CA gave no reason".to_owned()
                } else {
                    why.join("; ")
                }
            ),
        ));
    }
    drop(published);
    let mut params = rcgen::CertificateParams::new(settings.names.clone())
        .map_err(|e| fail(FailureReason::Protocol, format!("CSR: {e}")))?;
    params.distinguished_name = rcgen::DistinguishedName::new();
    let key = rcgen::KeyPair::generate()
        .map_err(|e| fail(FailureReason::Protocol, format!("key: {e}")))?;
    let csr = params
        .serialize_request(&key)
        .map_err(|e| fail(FailureReason::Protocol, format!("CSR: {e}")))?;
    order
        .finalize_csr(csr.der())
        .await
        .map_err(|e| acme_error("finalize", e))?;
    let chain_pem = order
        .poll_certificate(&poll)
        .await
        .map_err(|e| acme_error("certificate download", e))?;
    Ok(Issued {
        key_pem: key.serialize_pem(),
        chain_pem,
    })
}

/// The stored account, or a new one (stored before it is used). Certificates of this
/// process ordering at once from one directory wait for each other here, so that they
/// create one account between them.
async fn account(settings: &Acme, store: &Store, http: &Fetcher) -> Result<Account, OrderError> {
    static ACCOUNTS: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    let _one_at_a_time = ACCOUNTS.lock().await;
    let builder = || Account::builder_with_http(Box::new(AcmeHttp(http.clone())));
    let stored = store.load_account().map_err(|e| {
        fail(
            FailureReason::Storage,
            format!("reading the account in {}: {e}", store.folder().display()),
        )
    })?;
    if let Some(json) = stored {
        match serde_json::from_slice::<AccountCredentials>(&json) {
            Ok(credentials) => {
                return builder()
                    .from_credentials(credentials)
                    .await
                    .map_err(|e| acme_error("directory", e));
            }
            Err(e) => tracing::warn!(
                folder = %store.folder().display(),
                error = %e,
                "ACME: the stored account cannot be read; creating a new one"
            ),
        }
    }
    let external = match &settings.external_account {
        Some(e) => {
            let key = base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(&e.hmac_key)
                .map_err(|err| {
                    fail(
                        FailureReason::Rejected,
                        format!("external_account.hmac_key is not base64url: {err}"),
                    )
                })?;
            Some(ExternalAccountKey::new(e.key_id.clone(), &key))
        }
        None => None,
    };
    let contact: Vec<&str> = settings.contact.iter().map(String::as_str).collect();
    let (account, credentials) = builder()
        .create(
            &NewAccount {
                contact: &contact,
                terms_of_service_agreed: true,
                only_return_existing: false,
            },
            settings.directory.clone(),
            external.as_ref(),
        )
        .await
        .map_err(|e| acme_error("account", e))?;
    let json = serde_json::to_vec(&credentials)
        .map_err(|e| fail(FailureReason::Protocol, format!("account: {e}")))?;
    store.save_account(&json).map_err(|e| {
        fail(
            FailureReason::Storage,
            format!("storing the account in {}: {e}", store.folder().display()),
        )
    })?;
    tracing::info!(directory = %settings.directory, account = account.id(), "ACME account created");
    Ok(account)
}

/// `instant-acme`'s HTTP over Pylon's own client.
struct AcmeHttp(Fetcher);

impl instant_acme::HttpClient for AcmeHttp {
    fn request(
        &self,
        req: http::Request<BodyWrapper<Bytes>>,
    ) -> Pin<Box<dyn Future<Output = Result<BytesResponse, instant_acme::Error>> + Send>> {
        let fetcher = self.0.clone();
        Box::pin(async move {
            let (parts, body) = req.into_parts();
            let body = body
                .collect()
                .await
                .map_err(|e| instant_acme::Error::Other(e.into()))?
                .to_bytes();
            let resp = fetcher
                .send(http::Request::from_parts(parts, body))
                .await
                .map_err(|e| instant_acme::Error::Other(Box::new(e)))?;
            Ok(BytesResponse::from(resp.map(http_body_util::Full::new)))
        })
    }
}
