//! The admin API: its own HTTP/1.1 listener (`[admin]`, 127.0.0.1:9901 by default),
//! JSON answers. Health and readiness probes, Prometheus metrics, the effective config
//! (as TOML in the file's own keys, or JSON with the same keys; secrets redacted),
//! clusters and endpoints, reloads, endpoint drain and undrain, the log level, and the
//! live dashboard (`dashboard.rs`). With a `token`, every path but the probes needs
//! `Authorization: Bearer <token>` (or HTTP Basic with the token as the password, which
//! a browser asks for on the dashboard). A wrong method gets `405` with `Allow`.

mod dashboard;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Weak};
use std::time::Duration;

use crate::http::filters::split::SplitState;
use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Either, Full, Limited};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use pylon_config::{Config, ConfigError};
use serde_json::{Value, json};
use tokio::sync::watch;

use crate::sockets::PreboundSocket;
use crate::{Proxy, StartError};

/// The listener name the admin socket carries in a binary upgrade.
pub const LISTENER: &str = "<admin>";

/// Largest config accepted by `POST /reload`.
const MAX_BODY: usize = 4 << 20;

/// The hash of the configuration in force, on `GET /config` answers.
pub const CONFIG_HASH_HEADER: &str = "x-pylon-config-hash";

/// The admin listener while it runs.
pub(crate) struct AdminHandle {
    pub configured: SocketAddr,
    pub local: SocketAddr,
    pub socket: std::net::TcpListener,
    stop: watch::Sender<bool>,
}

/// What a config asks of the admin listener.
pub(crate) enum AdminPlan {
    Off,
    Keep,
    New(SocketAddr, std::net::TcpListener),
}

/// Binds the admin socket a config needs (before anything is committed).
pub(crate) fn prepare(
    current: Option<&AdminHandle>,
    config: &Config,
    prebound: &mut Vec<PreboundSocket>,
) -> Result<AdminPlan, StartError> {
    let Some(admin) = &config.admin else {
        return Ok(AdminPlan::Off);
    };
    if current.is_some_and(|c| c.configured == admin.bind) {
        return Ok(AdminPlan::Keep);
    }
    let inherited = prebound
        .iter()
        .position(|p| p.listener.as_deref() == Some(LISTENER) && p.configured == admin.bind)
        .map(|i| prebound.swap_remove(i).socket);
    if let Some(crate::sockets::Socket::Tcp(s)) = inherited {
        return Ok(AdminPlan::New(admin.bind, s));
    }
    crate::listener::bind(admin.bind)
        .map(|s| AdminPlan::New(admin.bind, s))
        .map_err(|source| StartError::Bind {
            listener: "admin".into(),
            addr: admin.bind,
            source,
        })
}

/// Starts, keeps or stops the admin listener; returns what changed.
pub(crate) fn commit(
    current: &mut Option<AdminHandle>,
    plan: AdminPlan,
    proxy: Weak<Proxy>,
) -> Option<String> {
    match plan {
        AdminPlan::Keep => None,
        AdminPlan::Off => current.take().map(|old| {
            let _ = old.stop.send(true);
            format!("admin API on {}: closed", old.local)
        }),
        AdminPlan::New(configured, socket) => {
            if let Some(old) = current.take() {
                let _ = old.stop.send(true);
            }
            let local = socket.local_addr().ok()?;
            let (stop, stop_rx) = watch::channel(false);
            let serving = socket
                .try_clone()
                .and_then(|s| {
                    s.set_nonblocking(true)?;
                    tokio::net::TcpListener::from_std(s)
                })
                .map_err(|e| tracing::error!(error = %e, "admin API cannot serve"))
                .ok()?;
            tokio::spawn(serve(serving, proxy, stop_rx));
            tracing::info!("admin API on http://{local}");
            *current = Some(AdminHandle {
                configured,
                local,
                socket,
                stop,
            });
            Some(format!("admin API on {local}: listening"))
        }
    }
}

async fn serve(
    listener: tokio::net::TcpListener,
    proxy: Weak<Proxy>,
    mut stop: watch::Receiver<bool>,
) {
    let board = dashboard::Dashboard::new();
    tokio::spawn(Arc::clone(&board).run(proxy.clone(), stop.clone()));
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = stop.changed() => return,
        };
        let stream = match accepted {
            Ok((s, _)) => s,
            Err(e) => {
                tracing::warn!(error = %e, "admin accept failed");
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
        };
        let proxy = proxy.clone();
        let board = Arc::clone(&board);
        let stop = stop.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| {
                let proxy = proxy.clone();
                let board = Arc::clone(&board);
                let stop = stop.clone();
                async move {
                    let events = req.method() == Method::GET
                        && req.uri().path().trim_end_matches('/') == "/dashboard/events";
                    let resp = match (events, proxy.upgrade()) {
                        (true, Some(p)) => match denied(&req, &p) {
                            Some(r) => r.map(Either::Left),
                            None => board.events(proxy, stop).map(Either::Right),
                        },
                        _ => handle(req, proxy, &board).await.map(Either::Left),
                    };
                    Ok::<_, Infallible>(resp)
                }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(Duration::from_secs(10))
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

fn reply(status: StatusCode, body: &Value) -> Response<Full<Bytes>> {
    let mut text = serde_json::to_string_pretty(body).unwrap_or_default();
    text.push('\n');
    let mut r = Response::new(Full::new(Bytes::from(text)));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    r
}

fn error(status: StatusCode, message: &str) -> Response<Full<Bytes>> {
    reply(status, &json!({ "error": message }))
}

fn config_errors(errors: Vec<ConfigError>) -> Value {
    let list: Vec<Value> = errors
        .into_iter()
        .map(|e| {
            json!({
                "file": e.file,
                "line": e.line,
                "column": e.column,
                "key": e.key,
                "message": e.message,
                "text": e.to_string(),
            })
        })
        .collect();
    json!({ "status": "refused", "errors": list })
}

/// The token, as a bearer token or the password of HTTP Basic (any user name: what a
/// browser sends once asked), compared in constant time.
fn authorized(req: &Request<Incoming>, token: &str) -> bool {
    use base64::Engine as _;
    let Some(value) = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let given = match value.split_once(' ') {
        Some((scheme, t)) if scheme.eq_ignore_ascii_case("bearer") => t.as_bytes().to_vec(),
        Some((scheme, b)) if scheme.eq_ignore_ascii_case("basic") => {
            let Ok(decoded) = base64::engine::general_purpose::STANDARD.decode(b.trim()) else {
                return false;
            };
            match decoded.iter().position(|&c| c == b':') {
                Some(i) => decoded[i + 1..].to_vec(),
                None => return false,
            }
        }
        _ => return false,
    };
    given.len() == token.len()
        && given
            .iter()
            .zip(token.bytes())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
}

/// The answer to a request without the admin token, when one is configured: `401`,
/// asking a browser for it on the dashboard's paths.
fn denied(req: &Request<Incoming>, proxy: &Proxy) -> Option<Response<Full<Bytes>>> {
    let rt = proxy.runtime();
    let token = rt.config.admin.as_ref().and_then(|a| a.token.as_deref())?;
    if authorized(req, token) {
        return None;
    }
    let mut r = error(StatusCode::UNAUTHORIZED, "missing or wrong bearer token");
    let challenge = if req.uri().path().starts_with("/dashboard") {
        "Basic realm=\"Pylon admin\", charset=\"UTF-8\""
    } else {
        "Bearer"
    };
    r.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        http::HeaderValue::from_static(challenge),
    );
    Some(r)
}

async fn handle(
    req: Request<Incoming>,
    proxy: Weak<Proxy>,
    board: &Arc<dashboard::Dashboard>,
) -> Response<Full<Bytes>> {
    let Some(proxy) = proxy.upgrade() else {
        return error(StatusCode::SERVICE_UNAVAILABLE, "stopping");
    };
    let path = req.uri().path().to_owned();
    let method = req.method().clone();
    // Probes answer without the token (load balancers and orchestrators call them).
    match (&method, path.as_str()) {
        (&Method::GET, "/healthz") => return reply(StatusCode::OK, &json!({ "status": "ok" })),
        (&Method::GET, "/readyz") => {
            return if proxy.is_ready() {
                reply(StatusCode::OK, &json!({ "ready": true }))
            } else {
                let reason = if proxy.is_draining() {
                    "draining"
                } else {
                    "health checks pending"
                };
                reply(
                    StatusCode::SERVICE_UNAVAILABLE,
                    &json!({ "ready": false, "reason": reason }),
                )
            };
        }
        _ => {}
    }
    if let Some(r) = denied(&req, &proxy) {
        return r;
    }
    let rt = proxy.runtime();
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    match (&method, segments.as_slice()) {
        (&Method::GET, ["metrics"]) => {
            let mut r = Response::new(Full::new(Bytes::from(proxy.render_metrics())));
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                http::HeaderValue::from_static(crate::observe::exposition::CONTENT_TYPE),
            );
            r
        }
        (&Method::GET, ["config"]) => effective_config(&rt, wants_json(&req)),
        (&Method::GET, ["fleet"]) => {
            let origin = proxy.config_origin();
            reply(
                StatusCode::OK,
                &json!({
                    "config_source": origin.as_ref().map(|o| o.0.as_str()),
                    "config_revision": origin.as_ref().map(|o| o.1),
                    "config_hash": rt.config_hash,
                    "members": proxy.members(),
                }),
            )
        }
        (&Method::GET, ["dashboard"]) => dashboard::page(),
        (&Method::GET, ["dashboard", "data"]) => reply(StatusCode::OK, &board.data(&proxy)),
        (&Method::GET, ["clusters"]) => reply(StatusCode::OK, &clusters(&rt)),
        (&Method::GET, ["caches"]) => reply(StatusCode::OK, &caches(&rt)),
        (&Method::GET, ["caches", zone]) => match rt.caches.get(*zone) {
            Some(z) => reply(StatusCode::OK, &zone_json(&z.zone)),
            None => error(StatusCode::NOT_FOUND, &format!("no cache zone \"{zone}\"")),
        },
        (&Method::POST, ["caches", zone, "purge"]) => {
            let Some(z) = rt.caches.get(*zone).map(|z| std::sync::Arc::clone(&z.zone)) else {
                return error(StatusCode::NOT_FOUND, &format!("no cache zone \"{zone}\""));
            };
            let body = match read_body(req).await {
                Ok(b) => b,
                Err(r) => return r,
            };
            purge(&z, &body)
        }
        (&Method::GET, ["splits"]) => {
            let mut all: Vec<&std::sync::Arc<SplitState>> = rt.splits.values().collect();
            all.sort_by(|a, b| a.route.cmp(&b.route));
            reply(
                StatusCode::OK,
                &Value::Array(all.into_iter().map(|s| split_json(s)).collect()),
            )
        }
        (&Method::GET, ["splits", route]) => match rt.splits.get(*route) {
            Some(s) => reply(StatusCode::OK, &split_json(s)),
            None => no_split(route),
        },
        (&Method::PUT, ["splits", route]) => {
            let Some(s) = rt.splits.get(*route).cloned() else {
                return no_split(route);
            };
            let body = match read_body(req).await {
                Ok(b) => b,
                Err(r) => return r,
            };
            set_weights(&s, &body)
        }
        (&Method::POST, ["splits", route, "shift"]) => {
            let Some(s) = rt.splits.get(*route).cloned() else {
                return no_split(route);
            };
            let body = match read_body(req).await {
                Ok(b) => b,
                Err(r) => return r,
            };
            start_shift(&s, &body)
        }
        (&Method::DELETE, ["splits", route, "shift"]) => match rt.splits.get(*route) {
            Some(s) if s.abort_shift() => reply(StatusCode::OK, &split_json(s)),
            Some(_) => error(StatusCode::CONFLICT, "no shift in progress"),
            None => no_split(route),
        },
        (&Method::POST, ["reload"]) => reload(req, &proxy).await,
        (&Method::POST, ["clusters", cluster, "endpoints", endpoint, action])
            if *action == "drain" || *action == "undrain" =>
        {
            drain(&rt, cluster, endpoint, *action == "drain")
        }
        (&Method::PUT, ["log-level"]) => {
            let body = match read_body(req).await {
                Ok(b) => b,
                Err(r) => return r,
            };
            let filter = String::from_utf8_lossy(&body).trim().to_owned();
            match proxy.set_log_level(&filter) {
                Ok(()) => {
                    tracing::info!(filter = %filter, "log level changed");
                    reply(StatusCode::OK, &json!({ "log_level": filter }))
                }
                Err(e) => error(StatusCode::BAD_REQUEST, &e),
            }
        }
        (_, segments) => match allowed(segments) {
            Some(allow) => {
                let mut r = error(StatusCode::METHOD_NOT_ALLOWED, &format!("use {allow}"));
                r.headers_mut()
                    .insert(header::ALLOW, http::HeaderValue::from_static(allow));
                r
            }
            None => error(StatusCode::NOT_FOUND, "no such admin path"),
        },
    }
}

/// `404` for a route without `backends`.
fn no_split(route: &str) -> Response<Full<Bytes>> {
    error(
        StatusCode::NOT_FOUND,
        &format!("no split route \"{route}\""),
    )
}

/// The methods an admin path takes (the `Allow` of its `405`); `None`: no such path.
fn allowed(segments: &[&str]) -> Option<&'static str> {
    match segments {
        ["healthz" | "readyz" | "metrics" | "config" | "fleet" | "clusters" | "caches"]
        | ["caches", _] => Some("GET"),
        ["caches", _, "purge"] => Some("POST"),
        ["splits"] => Some("GET"),
        ["splits", _] => Some("GET, PUT"),
        ["splits", _, "shift"] => Some("POST, DELETE"),
        ["reload"] | ["clusters", _, "endpoints", _, "drain" | "undrain"] => Some("POST"),
        ["log-level"] => Some("PUT"),
        ["dashboard"] | ["dashboard", "data" | "events"] => Some("GET"),
        _ => None,
    }
}

/// A split route: each backend's weight now and in the file, its answers and 5xx ones,
/// the shift in progress, and rollbacks so far.
fn split_json(s: &SplitState) -> Value {
    use std::sync::atomic::Ordering::Relaxed;
    let weights = s.weights();
    let total: u64 = weights.iter().map(|w| u64::from(*w)).sum::<u64>().max(1);
    let backends: Vec<Value> = s
        .backends
        .iter()
        .zip(&weights)
        .map(|(b, w)| {
            json!({
                "cluster": b.config.cluster,
                "weight": w,
                "share_percent": (u64::from(*w) * 10_000 / total) as f64 / 100.0,
                "config_weight": b.config.weight,
                "requests": b.requests.load(Relaxed),
                "errors_5xx": b.errors.load(Relaxed),
            })
        })
        .collect();
    let shift = s.shift_state().map(|(cluster, to, step, every)| {
        json!({ "cluster": cluster, "to_percent": to, "step_percent": step,
                "every": pylon_config::effective::duration_text(every) })
    });
    json!({ "route": s.route, "backends": backends, "shift": shift,
            "rollbacks": s.rollbacks.load(Relaxed) })
}

/// `PUT /splits/ROUTE` with `{"weights": {"CLUSTER": N, ...}}`.
fn set_weights(s: &SplitState, body: &[u8]) -> Response<Full<Bytes>> {
    let parsed = serde_json::from_slice::<Value>(body).ok().and_then(|v| {
        serde_json::from_value::<std::collections::HashMap<String, u32>>(v.get("weights")?.clone())
            .ok()
    });
    let Some(weights) = parsed else {
        return error(
            StatusCode::BAD_REQUEST,
            "body must be JSON: {\"weights\": {\"CLUSTER\": WEIGHT, ...}}",
        );
    };
    match s.set_by_name(&weights) {
        Ok(_) => reply(StatusCode::OK, &split_json(s)),
        Err(e) => error(StatusCode::BAD_REQUEST, &e),
    }
}

/// `POST /splits/ROUTE/shift` with `{"cluster": ..., "to": PERCENT, "step": PERCENT,
/// "every": DURATION}`.
fn start_shift(s: &std::sync::Arc<SplitState>, body: &[u8]) -> Response<Full<Bytes>> {
    let v: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    let every = v
        .get("every")
        .and_then(|e| e.as_str())
        .and_then(|e| pylon_config::parse_duration(e).ok());
    let number = |k: &str| {
        v.get(k)
            .and_then(Value::as_u64)
            .and_then(|n| u32::try_from(n).ok())
    };
    let (Some(cluster), Some(to), Some(step), Some(every)) = (
        v.get("cluster").and_then(|c| c.as_str()),
        number("to"),
        number("step"),
        every,
    ) else {
        return error(
            StatusCode::BAD_REQUEST,
            "body must be JSON: {\"cluster\": NAME, \"to\": PERCENT, \"step\": PERCENT, \"every\": \"1m\"}",
        );
    };
    match s.start_shift(cluster, to, step, every) {
        Ok(()) => reply(StatusCode::ACCEPTED, &split_json(s)),
        Err(e) => error(StatusCode::BAD_REQUEST, &e),
    }
}

/// Every cache zone: its size and counters.
fn caches(rt: &crate::runtime::Runtime) -> serde_json::Value {
    let mut zones: Vec<_> = rt.caches.values().map(|z| zone_json(&z.zone)).collect();
    zones.sort_by(|a, b| a["name"].as_str().cmp(&b["name"].as_str()));
    json!({ "caches": zones })
}

fn zone_json(z: &pylon_cache::Zone) -> serde_json::Value {
    let s = &z.stats;
    let n = |a: &std::sync::atomic::AtomicU64| a.load(std::sync::atomic::Ordering::Relaxed);
    let (entries, bytes) = z.size();
    let (disk_entries, disk_bytes) = z.disk.as_ref().map_or((0, 0), |d| d.size());
    let (hits, misses) = (n(&s.hits), n(&s.misses));
    let lookups = hits + misses + n(&s.collapsed) + n(&s.stale);
    json!({
        "name": z.name(),
        "entries": entries,
        "bytes": bytes,
        "memory": z.config.memory,
        "max_object": z.config.max_object,
        "disk_entries": disk_entries,
        "disk_bytes": disk_bytes,
        "fills_in_progress": z.fills.len(),
        "hits": hits,
        "misses": misses,
        "stale_served": n(&s.stale),
        "revalidations": n(&s.revalidated),
        "collapsed": n(&s.collapsed),
        "stored": n(&s.stored),
        "not_stored": n(&s.not_stored),
        "evictions": n(&s.evictions),
        "purged": n(&s.purged),
        "invalidated": n(&s.invalidated),
        "hit_ratio": if lookups == 0 { 0.0 } else { (hits + n(&s.stale) + n(&s.collapsed)) as f64 / lookups as f64 },
    })
}

/// `POST /caches/ZONE/purge` with one of `{"url": "..."}`, `{"prefix": "..."}`,
/// `{"tag": "..."}` or `{"all": true}`; URLs as `scheme://host/path?query`.
fn purge(z: &pylon_cache::Zone, body: &[u8]) -> Response<Full<Bytes>> {
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(body) else {
        return error(
            StatusCode::BAD_REQUEST,
            "body must be JSON: {\"url\": ...}, {\"prefix\": ...}, {\"tag\": ...} or {\"all\": true}",
        );
    };
    let url = |s: &str| -> Option<String> {
        let uri: http::Uri = s.parse().ok()?;
        let (scheme, authority) = (uri.scheme_str()?, uri.authority()?);
        let target = uri.path_and_query().map_or("/", |p| p.as_str());
        Some(pylon_cache::key::url_key(
            scheme,
            authority.as_str(),
            target,
        ))
    };
    let purged = if let Some(u) = v.get("url").and_then(|u| u.as_str()) {
        match url(u) {
            Some(k) => z.purge_url(&k),
            None => {
                return error(
                    StatusCode::BAD_REQUEST,
                    "url must be absolute: scheme://host/path",
                );
            }
        }
    } else if let Some(p) = v.get("prefix").and_then(|u| u.as_str()) {
        match url(p) {
            Some(k) => z.purge_prefix(&k),
            None => {
                return error(
                    StatusCode::BAD_REQUEST,
                    "prefix must be absolute: scheme://host/path",
                );
            }
        }
    } else if let Some(t) = v.get("tag").and_then(|u| u.as_str()) {
        z.purge_tag(t)
    } else if v.get("all").and_then(|a| a.as_bool()) == Some(true) {
        z.purge_all()
    } else {
        return error(
            StatusCode::BAD_REQUEST,
            "give one of \"url\", \"prefix\", \"tag\" or \"all\": true",
        );
    };
    tracing::info!(zone = z.name(), purged, "cache purge");
    reply(
        StatusCode::OK,
        &json!({ "zone": z.name(), "purged": purged }),
    )
}

/// Whether the client asks for JSON (`Accept: application/json`) rather than TOML.
fn wants_json(req: &Request<Incoming>) -> bool {
    req.headers()
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|m| m.split(';').next())
        .any(|m| m.trim().eq_ignore_ascii_case("application/json"))
}

/// `GET /config`: the configuration in force in the file's own keys, secrets redacted;
/// TOML that `pylon check` accepts (opening with `# hash: ...`), or the same document
/// as JSON. Both carry the hash in `x-pylon-config-hash`.
fn effective_config(rt: &crate::runtime::Runtime, json: bool) -> Response<Full<Bytes>> {
    let rendered = if json {
        serde_json::to_string_pretty(&pylon_config::effective::document(&rt.config))
            .map(|t| (t + "\n", "application/json"))
            .map_err(|e| e.to_string())
    } else {
        pylon_config::effective::to_toml(&rt.config, Some(&rt.config_hash))
            .map(|t| (t, "application/toml"))
            .map_err(|e| e.to_string())
    };
    let (text, content_type) = match rendered {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(error = %e, "cannot render the effective config");
            return error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "cannot render the effective config",
            );
        }
    };
    let mut r = Response::new(Full::new(Bytes::from(text)));
    let headers = r.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        http::HeaderValue::from_static(content_type),
    );
    headers.insert(header::VARY, http::HeaderValue::from_static("accept"));
    if let Ok(v) = http::HeaderValue::from_str(&rt.config_hash) {
        headers.insert(CONFIG_HASH_HEADER, v);
    }
    r
}

async fn read_body(req: Request<Incoming>) -> Result<Bytes, Response<Full<Bytes>>> {
    match Limited::new(req.into_body(), MAX_BODY).collect().await {
        Ok(b) => Ok(b.to_bytes()),
        Err(_) => Err(error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body too large or unreadable",
        )),
    }
}

/// `POST /reload`: the config file again, or the config in the body.
async fn reload(req: Request<Incoming>, proxy: &Proxy) -> Response<Full<Bytes>> {
    let body = match read_body(req).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let result = if body.iter().all(u8::is_ascii_whitespace) {
        proxy.reload_from_source().await
    } else {
        let text = String::from_utf8_lossy(&body);
        match pylon_config::parse(&text, "<POST /reload>") {
            Ok(c) => proxy.reload(&c).await,
            Err(e) => {
                proxy.reload_refused(&e);
                Err(StartError::Config(e))
            }
        }
    };
    match result {
        Ok(report) => reply(
            StatusCode::OK,
            &json!({ "status": "ok", "hash": report.hash, "changes": report.changes }),
        ),
        Err(e) => reply(
            StatusCode::BAD_REQUEST,
            &config_errors(e.into_config_errors()),
        ),
    }
}

fn drain(
    rt: &crate::runtime::Runtime,
    cluster: &str,
    endpoint: &str,
    drained: bool,
) -> Response<Full<Bytes>> {
    let Some(c) = rt.clusters.get(cluster) else {
        return error(StatusCode::NOT_FOUND, "no such cluster");
    };
    let set = c.endpoints();
    let Some(i) = set.ids.iter().position(|id| id == endpoint) else {
        return error(StatusCode::NOT_FOUND, "no such endpoint in this cluster");
    };
    let Some(state) = set.state.state(i) else {
        return error(StatusCode::NOT_FOUND, "no such endpoint in this cluster");
    };
    state.set_drained(drained);
    tracing::info!(cluster, endpoint, drained, "endpoint drain changed");
    reply(
        StatusCode::OK,
        &json!({
            "cluster": cluster,
            "endpoint": endpoint,
            "drained": drained,
            "in_flight": set.state.in_flight(i),
        }),
    )
}

fn clusters(rt: &crate::runtime::Runtime) -> Value {
    let mut names: Vec<&String> = rt.clusters.keys().collect();
    names.sort();
    let list: Vec<Value> = names
        .into_iter()
        .filter_map(|n| rt.clusters.get(n))
        .map(|c| {
            let set = c.endpoints();
            let endpoints: Vec<Value> = (0..set.len())
                .map(|i| {
                    let st = set.state.get(i);
                    json!({
                        "address": set.ids[i],
                        "available": set.state.is_available(i),
                        "healthy": st.is_some_and(|s| s.is_up()),
                        "ejected": set.state.is_ejected(i),
                        "drained": st.is_some_and(|s| s.is_drained()),
                        "weight": st.map_or(0, |s| s.weight),
                        "in_flight": set.state.in_flight(i),
                        "latency_ewma_ms": set.state.ewma_ns(i) as f64 / 1e6,
                    })
                })
                .collect();
            json!({
                "name": &*c.name,
                "endpoints": endpoints,
                "upstream_connections": c.open_connections(),
            })
        })
        .collect();
    json!({ "clusters": list })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_admin_path_knows_its_methods() {
        assert_eq!(allowed(&["config"]), Some("GET"));
        assert_eq!(allowed(&["healthz"]), Some("GET"));
        assert_eq!(allowed(&["reload"]), Some("POST"));
        assert_eq!(
            allowed(&["clusters", "c", "endpoints", "127.0.0.1:1", "drain"]),
            Some("POST")
        );
        assert_eq!(allowed(&["log-level"]), Some("PUT"));
        assert_eq!(allowed(&["nope"]), None);
        assert_eq!(
            allowed(&["clusters", "c", "endpoints", "x", "remove"]),
            None
        );
    }
}
