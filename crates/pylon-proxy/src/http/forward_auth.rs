//! Basic credentials of the forward proxy: argon2 verification off the async workers
//! (bounded by a semaphore), with the verdicts cached by a salted SHA-256 of user and
//! password so a credential is verified once, not once per request, wrong ones
//! included; and `hash_password` for `pylon passwd`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{Semaphore, watch};

use crate::lock;

/// Verdicts on credentials kept (keyed by a salted SHA-256 of user and password), so
/// argon2 runs once per credential rather than once per request, wrong ones included.
const MAX_CACHED_CREDENTIALS: usize = 10_000;
/// How long an accepted credential is trusted without another argon2 verification.
pub(super) const ACCEPTED_TTL: Duration = Duration::from_secs(300);
/// How long a refused credential is refused without another argon2 verification.
pub(super) const REFUSED_TTL: Duration = Duration::from_secs(60);

/// Argon2 verification of Basic credentials off the async workers, with its verdicts
/// cached. The cache lives as long as the `ForwardRuntime`: a reload builds a new one,
/// so a changed user list never meets old verdicts.
pub(crate) struct Credentials {
    cache: Arc<Mutex<CredentialCache>>,
    /// Verifications running at once: each takes a core and the hash's memory cost
    /// (19 MiB with argon2's defaults), so a flood of distinct passwords queues here.
    permits: Arc<Semaphore>,
    /// Per-runtime salt of the cache keys, so they are not plain SHA-256 of passwords.
    salt: [u8; 16],
    pub(super) verifications: AtomicU64,
}

impl Credentials {
    pub(crate) fn new() -> Credentials {
        use aws_lc_rs::rand::SecureRandom as _;
        let mut salt = [0u8; 16];
        if aws_lc_rs::rand::SystemRandom::new()
            .fill(&mut salt)
            .is_err()
        {
            tracing::warn!("forward proxy: no randomness for the credential cache's salt");
        }
        let parallel = std::thread::available_parallelism().map_or(1, usize::from);
        Credentials {
            cache: Arc::new(Mutex::new(CredentialCache::new(MAX_CACHED_CREDENTIALS))),
            permits: Arc::new(Semaphore::new(parallel)),
            salt,
            verifications: AtomicU64::new(0),
        }
    }

    /// The user a `Basic` credential in `value` names, when its password matches that
    /// user's hash in `users`. An unknown user is checked against a real hash too (and
    /// refused whatever the result), so the answer's timing does not tell which user
    /// names exist.
    pub(crate) async fn check_basic(
        &self,
        value: Option<&http::HeaderValue>,
        users: &[pylon_config::model::ProxyUser],
    ) -> Option<Arc<str>> {
        use base64::Engine as _;
        let value = value?.to_str().ok()?;
        let (scheme, b64) = value.trim().split_once(' ')?;
        if !scheme.eq_ignore_ascii_case("basic") {
            return None;
        }
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(b64.trim())
            .ok()?;
        let decoded = String::from_utf8(decoded).ok()?;
        let (user, password) = decoded.split_once(':')?;
        let known = users.iter().find(|u| u.name == user);
        let hash = &known.or(users.first())?.password_hash;
        let ok = self.verify(user, password, hash).await;
        (ok && known.is_some()).then(|| Arc::from(user))
    }

    /// The cache key: SHA-256 over the salt, the user (length-prefixed) and the password.
    fn key(&self, user: &str, password: &str) -> [u8; 32] {
        let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
        ctx.update(&self.salt);
        ctx.update(&(user.len() as u64).to_be_bytes());
        ctx.update(user.as_bytes());
        ctx.update(password.as_bytes());
        let mut key = [0u8; 32];
        key.copy_from_slice(ctx.finish().as_ref());
        key
    }

    /// Whether `password` matches `hash` (a PHC string): from the cache, from a
    /// verification of the same credentials already running, or from argon2 on the
    /// blocking pool.
    pub(super) async fn verify(&self, user: &str, password: &str, hash: &str) -> bool {
        let key = self.key(user, password);
        loop {
            let step = lock(&self.cache).begin(key, tokio::time::Instant::now());
            match step {
                Step::Known(ok) => return ok,
                Step::Wait(mut rx) => {
                    if let Ok(v) = rx.wait_for(Option::is_some).await {
                        return v.unwrap_or(false);
                    }
                    // That verification was abandoned: try again (this one may run it).
                }
                Step::Verify(tx) => {
                    let Ok(permit) = Arc::clone(&self.permits).acquire_owned().await else {
                        return false;
                    };
                    self.verifications.fetch_add(1, Ordering::Relaxed);
                    let cache = Arc::clone(&self.cache);
                    let password = password.to_owned();
                    let hash = hash.to_owned();
                    // Once started it finishes and records its verdict even when the
                    // request that asked is gone.
                    let job = tokio::task::spawn_blocking(move || {
                        use argon2::PasswordVerifier as _;
                        let ok = argon2::Argon2::default()
                            .verify_password(password.as_bytes(), hash.as_str())
                            .is_ok();
                        drop(permit);
                        lock(&cache).finish(key, ok, tokio::time::Instant::now());
                        tx.send_replace(Some(ok));
                        ok
                    });
                    return job.await.unwrap_or(false);
                }
            }
        }
    }
}

/// What to do about a credential.
enum Step {
    /// Its verdict is cached.
    Known(bool),
    /// A verification of it is running: its verdict arrives here.
    Wait(watch::Receiver<Option<bool>>),
    /// Verify it, and send the verdict here (the cache records it with `finish`).
    Verify(watch::Sender<Option<bool>>),
}

enum Slot {
    Known {
        ok: bool,
        expires: tokio::time::Instant,
    },
    Running(watch::Receiver<Option<bool>>),
}

impl Slot {
    fn live(&self, now: tokio::time::Instant) -> bool {
        match self {
            Slot::Known { expires, .. } => *expires > now,
            // A verification whose sender is gone without a verdict was abandoned.
            Slot::Running(rx) => rx.has_changed().is_ok(),
        }
    }
}

/// Verdicts on credentials, at most `capacity` of them (running verifications
/// included). When full, expired entries go first, then those expiring soonest
/// (refused credentials expire sooner, so a flood of wrong passwords displaces the
/// accepted ones last).
struct CredentialCache {
    entries: HashMap<[u8; 32], Slot>,
    capacity: usize,
}

impl CredentialCache {
    fn new(capacity: usize) -> CredentialCache {
        CredentialCache {
            entries: HashMap::new(),
            capacity: capacity.max(1),
        }
    }

    fn begin(&mut self, key: [u8; 32], now: tokio::time::Instant) -> Step {
        match self.entries.get(&key) {
            Some(Slot::Known { ok, expires }) if *expires > now => return Step::Known(*ok),
            Some(slot @ Slot::Running(rx)) if slot.live(now) => return Step::Wait(rx.clone()),
            _ => {}
        }
        let (tx, rx) = watch::channel(None);
        self.insert(key, Slot::Running(rx), now);
        Step::Verify(tx)
    }

    fn finish(&mut self, key: [u8; 32], ok: bool, now: tokio::time::Instant) {
        let ttl = if ok { ACCEPTED_TTL } else { REFUSED_TTL };
        self.insert(
            key,
            Slot::Known {
                ok,
                expires: now + ttl,
            },
            now,
        );
    }

    fn insert(&mut self, key: [u8; 32], slot: Slot, now: tokio::time::Instant) {
        if !self.entries.contains_key(&key) && self.entries.len() >= self.capacity {
            self.entries.retain(|_, s| s.live(now));
            if self.entries.len() >= self.capacity {
                // A sixteenth at a time, so that a flood pays for the scan once per
                // many insertions. Running verifications last: their waiters hold
                // their own receivers.
                let mut ranked: Vec<_> = self
                    .entries
                    .iter()
                    .map(|(k, s)| match s {
                        Slot::Known { expires, .. } => ((0, *expires), *k),
                        Slot::Running(_) => ((1, now), *k),
                    })
                    .collect();
                let evict = (self.capacity / 16).clamp(1, ranked.len());
                ranked.select_nth_unstable_by_key(evict - 1, |(rank, _)| *rank);
                for (_, k) in &ranked[..evict] {
                    self.entries.remove(k);
                }
            }
        }
        self.entries.insert(key, slot);
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.entries.len()
    }
}

/// An argon2id hash (PHC string) of `password` with a random salt, for
/// `[listeners.forward] users`.
pub fn hash_password(password: &str) -> Result<String, String> {
    use argon2::PasswordHasher as _;
    use aws_lc_rs::rand::SecureRandom as _;
    let mut salt = [0u8; 16];
    aws_lc_rs::rand::SystemRandom::new()
        .fill(&mut salt)
        .map_err(|_| "no randomness available".to_string())?;
    argon2::Argon2::default()
        .hash_password_with_salt(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(n: u32) -> [u8; 32] {
        let mut k = [0u8; 32];
        k[..4].copy_from_slice(&n.to_be_bytes());
        k
    }

    fn known(step: Step) -> Option<bool> {
        match step {
            Step::Known(ok) => Some(ok),
            _ => None,
        }
    }

    #[test]
    fn credential_cache_verdicts_expire() {
        let t0 = tokio::time::Instant::now();
        let mut c = CredentialCache::new(10);
        assert!(matches!(c.begin(key(1), t0), Step::Verify(_)));
        c.finish(key(1), true, t0);
        c.finish(key(2), false, t0);
        let at = |s: u64| t0 + Duration::from_secs(s);
        assert_eq!(known(c.begin(key(1), at(299))), Some(true));
        assert_eq!(known(c.begin(key(2), at(59))), Some(false));
        assert!(matches!(c.begin(key(2), at(60)), Step::Verify(_)));
        assert!(matches!(c.begin(key(1), at(300)), Step::Verify(_)));
    }

    #[test]
    fn credential_cache_stays_bounded_and_keeps_acceptances_longest() {
        let t0 = tokio::time::Instant::now();
        let mut c = CredentialCache::new(100);
        c.finish(key(0), true, t0);
        // A flood of distinct wrong passwords.
        for n in 1..10_000 {
            let now = t0 + Duration::from_millis(u64::from(n));
            assert!(matches!(c.begin(key(n), now), Step::Verify(_)));
            c.finish(key(n), false, now);
            assert!(c.len() <= 100);
        }
        let now = t0 + Duration::from_secs(10);
        assert_eq!(
            known(c.begin(key(0), now)),
            Some(true),
            "the accepted one stays"
        );
        assert_eq!(known(c.begin(key(9_999), now)), Some(false));
        assert!(matches!(c.begin(key(1), now), Step::Verify(_)), "evicted");
        // Expired verdicts make room first.
        let later = t0 + Duration::from_secs(120);
        let mut c = CredentialCache::new(3);
        c.finish(key(1), true, t0);
        c.finish(key(2), false, t0);
        c.finish(key(3), true, t0);
        c.finish(key(4), true, later);
        assert_eq!(c.len(), 3);
        assert_eq!(known(c.begin(key(1), later)), Some(true));
        assert_eq!(known(c.begin(key(3), later)), Some(true));
    }

    #[test]
    fn concurrent_requests_share_one_verification_and_an_abandoned_one_is_redone() {
        let t0 = tokio::time::Instant::now();
        let mut c = CredentialCache::new(10);
        let Step::Verify(tx) = c.begin(key(1), t0) else {
            panic!("first asks to verify")
        };
        let Step::Wait(rx) = c.begin(key(1), t0) else {
            panic!("second waits")
        };
        c.finish(key(1), false, t0);
        tx.send_replace(Some(false));
        assert_eq!(*rx.borrow(), Some(false));
        assert_eq!(known(c.begin(key(1), t0)), Some(false));
        // A verifier that went away without a verdict: the next one verifies again.
        let Step::Verify(tx) = c.begin(key(2), t0) else {
            panic!("verify")
        };
        drop(tx);
        assert!(matches!(c.begin(key(2), t0), Step::Verify(_)));
    }
}
