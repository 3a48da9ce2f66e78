//! Session ticket keys shared by the fleet through etcd, so that a client resumes its
//! TLS session on any instance. The key `PREFIX/ticket-keys` holds three AES-256-GCM
//! keys, `[next, current, previous]`, and when they last rotated. Every instance
//! encrypts with `current` and decrypts with any of the three, so a rotation has no
//! window where a ticket fails: `next` is known everywhere before it becomes `current`,
//! and `previous` stays until the rotation after. When the rotation interval has passed,
//! any instance rotates, with a compare-and-swap so that only one does; the others see
//! the new keys through their watch. Until the keys are first read, the instance uses
//! its own (tickets then resume on it alone).

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use base64::Engine as _;
use futures_util::StreamExt;
use serde_json::{Value, json};

use super::config_source::ConfigSource;
use super::etcd::{Change, Etcd, EtcdError, Versioned};
use crate::tls::tickets::Tickets;

const BACKOFF_MAX: Duration = Duration::from_secs(30);
const KEY_ID_LEN: usize = 4;

/// One ticket key.
struct Key {
    id: [u8; KEY_ID_LEN],
    aead: LessSafeKey,
}

/// The fleet's keys in force, `[next, current, previous]`: tickets are encrypted with
/// `current`, decrypted with any.
pub struct FleetKeys {
    keys: Vec<Key>,
    lifetime: u32,
}

impl FleetKeys {
    fn current(&self) -> Option<&Key> {
        self.keys.get(1)
    }
}

impl std::fmt::Debug for FleetKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FleetKeys")
            .field("keys", &self.keys.len())
            .finish()
    }
}

impl rustls::server::ProducesTickets for FleetKeys {
    fn enabled(&self) -> bool {
        true
    }

    fn lifetime(&self) -> u32 {
        self.lifetime
    }

    fn encrypt(&self, plain: &[u8]) -> Option<Vec<u8>> {
        let current = self.current()?;
        let nonce: [u8; NONCE_LEN] = rand::random();
        let mut out = Vec::with_capacity(KEY_ID_LEN + NONCE_LEN + plain.len() + 16);
        out.extend_from_slice(&current.id);
        out.extend_from_slice(&nonce);
        let mut sealed = plain.to_vec();
        current
            .aead
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(current.id),
                &mut sealed,
            )
            .ok()?;
        out.extend_from_slice(&sealed);
        Some(out)
    }

    fn decrypt(&self, cipher: &[u8]) -> Option<Vec<u8>> {
        let id = cipher.get(..KEY_ID_LEN)?;
        let nonce: [u8; NONCE_LEN] = cipher
            .get(KEY_ID_LEN..KEY_ID_LEN + NONCE_LEN)?
            .try_into()
            .ok()?;
        let key = self.keys.iter().find(|k| k.id == id)?;
        let mut body = cipher.get(KEY_ID_LEN + NONCE_LEN..)?.to_vec();
        let plain = key
            .aead
            .open_in_place(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(key.id),
                &mut body,
            )
            .ok()?;
        Some(plain.to_vec())
    }
}

/// A new random key, as stored: `{"id": hex, "key": base64}`.
fn new_key() -> Value {
    let id: [u8; KEY_ID_LEN] = rand::random();
    let key: [u8; 32] = rand::random();
    json!({
        "id": id.iter().map(|b| format!("{b:02x}")).collect::<String>(),
        "key": base64::engine::general_purpose::STANDARD.encode(key),
    })
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The stored document: `{"rotated": unix seconds, "keys": [next, current, previous]}`.
fn document(keys: Vec<Value>) -> Vec<u8> {
    json!({ "rotated": unix_now(), "keys": keys })
        .to_string()
        .into_bytes()
}

/// The keys of a stored document, and when they rotated.
fn parse(value: &[u8], lifetime: u32) -> Result<(FleetKeys, u64), String> {
    let v: Value = serde_json::from_slice(value).map_err(|e| e.to_string())?;
    let rotated = v["rotated"].as_u64().ok_or("no \"rotated\"")?;
    let keys = v["keys"].as_array().ok_or("no \"keys\"")?;
    let mut all = Vec::new();
    for k in keys {
        let id_hex = k["id"].as_str().ok_or("a key without \"id\"")?;
        let mut id = [0u8; KEY_ID_LEN];
        for (i, b) in id.iter_mut().enumerate() {
            *b = id_hex
                .get(i * 2..i * 2 + 2)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or("a key id is not 8 hex digits")?;
        }
        let raw = base64::engine::general_purpose::STANDARD
            .decode(k["key"].as_str().ok_or("a key without \"key\"")?)
            .map_err(|e| e.to_string())?;
        let unbound = UnboundKey::new(&AES_256_GCM, &raw).map_err(|_| "a key is not 32 bytes")?;
        all.push(Key {
            id,
            aead: LessSafeKey::new(unbound),
        });
    }
    if all.len() != 3 {
        return Err("expected three keys: next, current, previous".to_owned());
    }
    Ok((
        FleetKeys {
            keys: all,
            lifetime,
        },
        rotated,
    ))
}

/// Keeps the process's tickets on the fleet's keys, rotating them every `rotation`.
pub async fn run(source: ConfigSource, tickets: Arc<Tickets>, rotation: Duration) {
    let key = format!("{}/ticket-keys", source.prefix);
    // Tickets live as long as a key can still decrypt them: two rotations.
    let lifetime = u32::try_from(rotation.as_secs().saturating_mul(2))
        .unwrap_or(u32::MAX)
        .max(1);
    let mut backoff = Duration::from_secs(1);
    loop {
        let mut following = false;
        let e = session(&source, &key, &tickets, rotation, lifetime, &mut following).await;
        if following {
            backoff = Duration::from_secs(1);
        }
        tracing::warn!(error = %e, retry_in = ?backoff, "fleet ticket keys: etcd lost; keeping the keys in force");
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

/// The stored keys, written first when there are none (the first instance to try does).
async fn current_or_create(etcd: &Etcd, key: &str) -> Result<Versioned, EtcdError> {
    loop {
        if let Some(v) = etcd.get(key).await? {
            return Ok(v);
        }
        let first = document(vec![new_key(), new_key(), new_key()]);
        if let Ok(revision) = etcd.put_if(key, &first, 0, 0).await? {
            return Ok(Versioned {
                value: first,
                mod_revision: revision,
            });
        }
        // Another instance made them meanwhile: read theirs.
    }
}

async fn session(
    source: &ConfigSource,
    key: &str,
    tickets: &Tickets,
    rotation: Duration,
    lifetime: u32,
    following: &mut bool,
) -> EtcdError {
    let etcd = match source.connect().await {
        Ok(e) => e,
        Err(e) => return e,
    };
    let mut stored = match current_or_create(&etcd, key).await {
        Ok(v) => v,
        Err(e) => return e,
    };
    // From the store's revision now: the keys' own may be compacted away.
    let from = match etcd.get_at(key).await {
        Ok((_, revision)) => revision.max(stored.mod_revision),
        Err(e) => return e,
    };
    let mut changes = match etcd.watch(key, from + 1).await {
        Ok(s) => Box::pin(s),
        Err(e) => return e,
    };
    *following = true;
    loop {
        let rotated = match parse(&stored.value, lifetime) {
            Ok((keys, rotated)) => {
                tickets.replace(Arc::new(keys));
                rotated
            }
            Err(e) => {
                tracing::error!(key, error = %e, "fleet ticket keys unreadable; writing new ones");
                0
            }
        };
        let due = rotated.saturating_add(rotation.as_secs());
        let wait = Duration::from_secs(due.saturating_sub(unix_now()));
        tokio::select! {
            c = changes.next() => match c {
                Some(Ok(batch)) => {
                    for c in batch {
                        match c {
                            Change::Put(v) => stored = v,
                            // Deleted by hand: written again (by whichever instance is first).
                            Change::Deleted(_) => match current_or_create(&etcd, key).await {
                                Ok(v) => stored = v,
                                Err(e) => return e,
                            },
                        }
                    }
                }
                Some(Err(e)) => return e,
                None => return EtcdError::Unreachable("the ticket keys watch ended".to_owned()),
            },
            () = tokio::time::sleep(wait) => {
                // Rotate: a new next; next becomes current; current becomes previous.
                let keys = serde_json::from_slice::<Value>(&stored.value)
                    .ok()
                    .and_then(|v| v["keys"].as_array().cloned())
                    .filter(|k| k.len() == 3);
                let rotated = match keys {
                    Some(k) => vec![new_key(), k[0].clone(), k[1].clone()],
                    None => vec![new_key(), new_key(), new_key()],
                };
                let next = document(rotated);
                match etcd.put_if(key, &next, stored.mod_revision, 0).await {
                    Ok(Ok(revision)) => {
                        tracing::info!(revision, "fleet ticket keys rotated");
                        stored = Versioned { value: next, mod_revision: revision };
                    }
                    // Another instance rotated (or the key went): read what is there now.
                    Ok(Err(_)) => match current_or_create(&etcd, key).await {
                        Ok(v) => stored = v,
                        Err(e) => return e,
                    },
                    Err(e) => return e,
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::server::ProducesTickets;

    #[test]
    fn tickets_open_with_any_of_the_three_keys_and_survive_two_rotations() {
        let keys = vec![new_key(), new_key(), new_key()];
        let (a, _) = parse(&document(keys.clone()), 60).unwrap();
        let ticket = a.encrypt(b"session state").unwrap();
        assert_eq!(a.decrypt(&ticket).unwrap(), b"session state");
        // One rotation: the old current is previous.
        let once = vec![new_key(), keys[0].clone(), keys[1].clone()];
        let (b, _) = parse(&document(once.clone()), 60).unwrap();
        assert_eq!(b.decrypt(&ticket).unwrap(), b"session state");
        // A ticket from after the rotation opens on an instance that has not seen it.
        let newer = b.encrypt(b"newer").unwrap();
        assert_eq!(a.decrypt(&newer).unwrap(), b"newer");
        // Two rotations: gone.
        let twice = vec![new_key(), once[0].clone(), once[1].clone()];
        let (c, _) = parse(&document(twice), 60).unwrap();
        assert!(c.decrypt(&ticket).is_none());
        // Tampered or short tickets are refused.
        let mut bad = ticket.clone();
        let last = bad.len() - 1;
        bad[last] ^= 1;
        assert!(a.decrypt(&bad).is_none());
        assert!(a.decrypt(&ticket[..10]).is_none());
    }
}
