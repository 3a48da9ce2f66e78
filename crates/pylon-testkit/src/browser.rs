//! Headless Chromium (Debian's `chromium`, installed by scripts/test.sh) driven through
//! the DevTools protocol: open a page, evaluate script in it, set request headers, take
//! a screenshot. The browser listens for DevTools on a port it picks itself (written
//! to its profile's `DevToolsActivePort`), on loopback.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use http::Request;
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::client::{empty, send_h1};

/// A headless Chromium, killed when dropped.
pub struct Browser {
    _child: tokio::process::Child,
    port: u16,
}

impl Browser {
    /// Starts Chromium with a fresh profile under `dir` and a `width` x `height` window.
    pub async fn start(dir: &Path, width: u32, height: u32) -> Browser {
        let profile = dir.join("chromium-profile");
        let child = tokio::process::Command::new("chromium")
            .args([
                "--headless=new",
                "--no-sandbox",
                "--disable-gpu",
                "--no-first-run",
                "--disable-dev-shm-usage",
                "--remote-debugging-address=127.0.0.1",
                "--remote-debugging-port=0",
                "--hide-scrollbars",
            ])
            .arg(format!("--window-size={width},{height}"))
            .arg(format!("--user-data-dir={}", profile.display()))
            .arg("about:blank")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("chromium runs (Debian's chromium, installed by scripts/test.sh)");
        let file = profile.join("DevToolsActivePort");
        let deadline = Instant::now() + Duration::from_secs(30);
        let port = loop {
            if let Some(port) = std::fs::read_to_string(&file)
                .ok()
                .and_then(|t| t.lines().next()?.trim().parse().ok())
            {
                break port;
            }
            assert!(
                Instant::now() < deadline,
                "chromium did not start its DevTools"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        Browser {
            _child: child,
            port,
        }
    }

    /// A new tab, blank, ready to be told what to load.
    pub async fn new_page(&self) -> Page {
        let addr = ([127, 0, 0, 1], self.port).into();
        let req = Request::put("/json/new?about:blank")
            .header("host", format!("127.0.0.1:{}", self.port))
            .body(empty())
            .unwrap();
        let target = send_h1(addr, req).await.json();
        let url = target["webSocketDebuggerUrl"]
            .as_str()
            .unwrap_or_else(|| panic!("no DevTools socket for the new tab: {target}"))
            .to_owned();
        let (ws, _) = tokio_tungstenite::connect_async(url.as_str())
            .await
            .expect("DevTools socket");
        Page { ws, next: 0 }
    }
}

/// One tab, spoken to over its DevTools socket.
pub struct Page {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    next: u64,
}

impl Page {
    /// Calls a DevTools method and returns its result (events in between are skipped);
    /// panics on a protocol error.
    pub async fn call(&mut self, method: &str, params: Value) -> Value {
        self.next += 1;
        let id = self.next;
        let text = json!({ "id": id, "method": method, "params": params }).to_string();
        self.ws
            .send(Message::text(text))
            .await
            .expect("DevTools send");
        let deadline = Duration::from_secs(30);
        loop {
            let msg = tokio::time::timeout(deadline, self.ws.next())
                .await
                .unwrap_or_else(|_| panic!("no answer to {method}"))
                .expect("DevTools socket open")
                .expect("DevTools message");
            let Message::Text(t) = msg else { continue };
            let v: Value = serde_json::from_str(&t).expect("DevTools JSON");
            if v["id"] == id {
                if let Some(e) = v.get("error") {
                    panic!("{method} failed: {e}");
                }
                return v["result"].clone();
            }
        }
    }

    /// Sends these headers with every request the page makes from now on.
    pub async fn set_headers(&mut self, headers: Value) {
        self.call("Network.enable", json!({})).await;
        self.call("Network.setExtraHTTPHeaders", json!({ "headers": headers }))
            .await;
    }

    pub async fn navigate(&mut self, url: &str) {
        self.call("Page.enable", json!({})).await;
        self.call("Page.navigate", json!({ "url": url })).await;
    }

    /// The value of a script expression (awaited when it is a promise).
    pub async fn eval(&mut self, expression: &str) -> Value {
        let r = self
            .call(
                "Runtime.evaluate",
                json!({ "expression": expression, "returnByValue": true, "awaitPromise": true }),
            )
            .await;
        if let Some(e) = r.get("exceptionDetails") {
            panic!("script failed: {e}");
        }
        r["result"]["value"].clone()
    }

    /// Waits (up to `within`) until `expression` is true in the page; the last value of
    /// `report` in the panic message otherwise.
    pub async fn wait_for(&mut self, what: &str, expression: &str, report: &str, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            if self.eval(expression).await == Value::Bool(true) {
                return;
            }
            if Instant::now() >= deadline {
                let seen = self.eval(report).await;
                panic!("{what}: not within {within:?}; the page shows {seen}");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Saves a PNG of the page as it is now.
    pub async fn screenshot(&mut self, path: &Path) -> PathBuf {
        use base64::Engine as _;
        let r = self
            .call("Page.captureScreenshot", json!({ "format": "png" }))
            .await;
        let png = base64::engine::general_purpose::STANDARD
            .decode(r["data"].as_str().expect("screenshot data"))
            .expect("screenshot base64");
        std::fs::write(path, png).expect("screenshot written");
        path.to_owned()
    }
}
