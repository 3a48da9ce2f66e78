//! Entry points for the fuzz targets in `fuzz/` (not part of the public API): the HTTP/1
//! request path end to end over an in-memory connection, from the bytes a client sends
//! to the bytes Pylon answers. Give the listener short header-read and idle timeouts so
//! that unfinished input does not stall the fuzzer.

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::conn::ConnState;
use crate::http::pipeline::{ConnCtx, ListenerCtx};
use crate::http::server_h1h2;
use crate::observe::{Metrics, StatsRegistry};
use crate::runtime::Runtime;
use crate::shared::Shared;

/// A listener's request path without sockets.
pub struct H1Harness {
    rt: tokio::runtime::Runtime,
    runtime: Arc<ArcSwap<Runtime>>,
    shared: Arc<Shared>,
    listener: Arc<str>,
}

impl H1Harness {
    /// Builds the path of `listener` from `config` (routes that answer themselves:
    /// `respond` and `redirect`, or clusters nobody listens on).
    pub fn new(config: &pylon_config::Config, listener: &str) -> H1Harness {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap_or_else(|e| panic!("fuzz runtime: {e}"));
        let metrics = Arc::new(Metrics::default());
        let stats = Arc::new(StatsRegistry::default());
        let (runtime, shared) = rt.block_on(async {
            let plan = pylon_config::diff(&pylon_config::Config::empty(), config);
            let (built, _) = Runtime::build(config, &stats, None, &plan)
                .unwrap_or_else(|e| panic!("fuzz config: {e:?}"));
            let shared = Shared::start(
                &pylon_config::model::AccessLogTarget::Off,
                Arc::clone(&metrics),
                Arc::clone(&stats),
            )
            .unwrap_or_else(|e| panic!("access log: {e}"));
            (Arc::new(ArcSwap::from_pointee(built)), shared)
        });
        H1Harness {
            rt,
            runtime,
            shared,
            listener: Arc::from(listener),
        }
    }

    /// Serves one connection that sends `input` and closes its side; returns what
    /// Pylon wrote back.
    pub fn serve(&self, input: &[u8]) -> Vec<u8> {
        self.rt.block_on(async {
            let Some(lr) = self.runtime.load().listener(&self.listener) else {
                return Vec::new();
            };
            let limits = lr.config.limits.clone();
            let builders = Arc::new(server_h1h2::Builders::new(
                &limits,
                Arc::clone(&self.shared.metrics),
            ));
            let (mut client, server) = tokio::io::duplex(64 * 1024);
            let on = Arc::new(ListenerCtx {
                runtime: Arc::clone(&self.runtime),
                listener: Arc::clone(&self.listener),
                scheme: "http",
                alt_svc: None,
                shared: Arc::clone(&self.shared),
                stats: Arc::clone(&lr.stats),
            });
            let ctx = Arc::new(ConnCtx {
                on,
                client: "192.0.2.1:40000".parse().unwrap_or_else(|_| unreachable!()),
                local: "192.0.2.2:80".parse().unwrap_or_else(|_| unreachable!()),
                client_ip: http::HeaderValue::from_static("192.0.2.1"),
                client_cert: None,
                tls: None,
                state: Arc::new(ConnState::default()),
                response_timer: Default::default(),
                guard: None,
                client_socket: None,
                handshake_ns: Default::default(),
            });
            let (_drain, drain_rx) = tokio::sync::watch::channel(false);
            let server = tokio::spawn(server_h1h2::serve_connection(
                builders,
                server,
                ctx,
                limits,
                drain_rx,
                server_h1h2::Protocol::Detect,
            ));
            let _ = client.write_all(input).await;
            let _ = client.shutdown().await;
            let mut out = Vec::new();
            let _ =
                tokio::time::timeout(Duration::from_secs(3600), client.read_to_end(&mut out)).await;
            let _ = server.await;
            out
        })
    }
}
