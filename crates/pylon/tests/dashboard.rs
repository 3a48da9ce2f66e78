//! The live dashboard on the admin listener, driven in headless Chromium through the
//! DevTools protocol: the page loads under the admin token, receives live data, and
//! its charts and tables show the traffic the test makes (answers, a proxy-made error,
//! a reload, the slowest requests with their breakdown). The same data is JSON at
//! `/dashboard/data`. Needs Debian's `chromium`, installed by scripts/test.sh.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use base64::Engine as _;
use http::{Request, Response};
use pylon_testkit::*;
use serde_json::json;

const TOKEN: &str = "s3cret-admin-token-0123";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_shows_live_traffic_in_chromium() {
    let origin = Origin::start(|req: Request<hyper::body::Incoming>| async move {
        if req.uri().path() == "/slow" {
            tokio::time::sleep(Duration::from_millis(30)).await;
        }
        Response::new(full("ok"))
    })
    .await;
    let dead = closed_port();
    let dir = temp_dir();
    let config = format!(
        r#"
access_log = {{ path = "{log}" }}
[admin]
bind = "127.0.0.1:0"
token = "{TOKEN}"

[[listeners]]
name = "front"
bind = "127.0.0.1:0"

[[routes]]
name = "broken"
path_prefix = "/broken"
cluster = "gone"

[[routes]]
name = "app"
cluster = "app"

[[clusters]]
name = "app"
endpoints = ["{origin}"]

[[clusters]]
name = "gone"
endpoints = ["{dead}"]
"#,
        log = dir.join("access.log").display(),
        origin = origin.addr,
    );
    let p = TestProxy::start(&config).await;
    let front = p.addr("front");
    let admin = p.proxy.admin_addr().await.expect("admin listener");

    // The token rules: nothing without it, a browser is asked for it (Basic), and the
    // token is accepted as a bearer token or as the Basic password.
    let ask = |auth: Option<String>, path: &'static str| async move {
        let mut req = Request::get(path).header("host", "admin");
        if let Some(a) = auth {
            req = req.header("authorization", a);
        }
        send_h1(admin, req.body(empty()).unwrap()).await
    };
    let refused = ask(None, "/dashboard").await;
    assert_eq!(refused.status.as_u16(), 401);
    assert!(
        refused
            .header("www-authenticate")
            .unwrap()
            .starts_with("Basic ")
    );
    let basic = base64::engine::general_purpose::STANDARD.encode(format!("ops:{TOKEN}"));
    let page = ask(Some(format!("Basic {basic}")), "/dashboard").await;
    assert_eq!(page.status.as_u16(), 200);
    assert!(page.text().contains("<title>Pylon dashboard</title>"));
    // Self-contained: nothing loaded from elsewhere.
    assert!(!page.text().contains("http://") && !page.text().contains("https://"));
    assert_eq!(
        ask(
            Some(
                "Basic ".to_owned() + &base64::engine::general_purpose::STANDARD.encode("ops:nope")
            ),
            "/dashboard/data"
        )
        .await
        .status
        .as_u16(),
        401
    );

    // Traffic while the page watches: answers, a slow one, proxy-made errors.
    let traffic = tokio::spawn(async move {
        loop {
            assert_eq!(get(front, "/").await.status.as_u16(), 200);
            assert_eq!(get(front, "/slow").await.status.as_u16(), 200);
            assert_eq!(get(front, "/broken").await.status.as_u16(), 502);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    // A reload the page lists (the same config: applied, no changes) and a refused one.
    let reload = |body: String| async move {
        let req = Request::post("/reload")
            .header("host", "admin")
            .header("authorization", format!("Bearer {TOKEN}"))
            .body(pylon_testkit::body(body))
            .unwrap();
        send_h1(admin, req).await.status.as_u16()
    };
    assert_eq!(reload(config.clone()).await, 200);
    assert_eq!(reload("[[listeners]]\nbind = 1".into()).await, 400);

    let browser = Browser::start(&dir, 1400, 1500).await;
    let mut tab = browser.new_page().await;
    tab.set_headers(json!({ "authorization": format!("Bearer {TOKEN}") }))
        .await;
    tab.navigate(&format!("http://{admin}/dashboard")).await;
    let report = r##"JSON.stringify({
        status: document.getElementById("status")?.textContent,
        rate_points: document.getElementById("rate-chart")?.dataset.points,
        routes: [...document.querySelectorAll("#routes [data-route]")].map((e) => e.textContent.replace(/\s+/g, " ")),
        errors: document.getElementById("errors")?.innerText,
        clusters: document.getElementById("clusters")?.innerText,
        listeners: document.getElementById("listeners")?.innerText,
        slowest: document.getElementById("slowest")?.innerText,
        reloads: document.getElementById("reloads")?.innerText,
    })"##;
    let ready = format!(
        r##"(() => {{
        const t = (id) => document.getElementById(id)?.innerText ?? "";
        const rate = document.querySelector("#rate-chart path");
        const lat = document.querySelectorAll("#routes svg path").length;
        return document.getElementById("status")?.textContent === "live"
            && Number(document.getElementById("rate-chart")?.dataset.points) >= 2
            && !!rate && lat >= 2
            && Number(document.getElementById("rps-now")?.textContent) > 0
            && t("errors").includes("connect_failed")
            && t("clusters").includes("{origin}") && t("clusters").includes("healthy")
            && t("listeners").includes("front")
            && t("slowest").includes("/slow") && t("slowest").includes("upstream")
            && t("reloads").includes("applied") && t("reloads").includes("refused");
    }})()"##,
        origin = origin.addr
    );
    tab.wait_for(
        "the dashboard shows the traffic",
        &ready,
        report,
        Duration::from_secs(40),
    )
    .await;
    // Live: the page's figures move on without a reload of the page.
    let before = tab
        .eval(r#"document.getElementById("updated").textContent"#)
        .await;
    tab.wait_for(
        "the page updates itself",
        &format!(r#"document.getElementById("updated").textContent !== {before}"#),
        report,
        Duration::from_secs(10),
    )
    .await;
    let shot = std::env::var_os("PYLON_DASHBOARD_SCREENSHOT")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| dir.join("dashboard.png"));
    tab.screenshot(&shot).await;
    assert!(std::fs::metadata(&shot).unwrap().len() > 10_000);
    traffic.abort();

    // The same data as JSON.
    let data = ask(Some(format!("Bearer {TOKEN}")), "/dashboard/data")
        .await
        .json();
    assert!(data["series"]["requests_per_s"].as_array().unwrap().len() >= 2);
    let app = data["routes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["route"] == "app")
        .unwrap();
    assert!(
        app["p99_ms"]
            .as_array()
            .unwrap()
            .iter()
            .any(|v| v.as_f64().is_some())
    );
    assert!(
        data["errors_by_reason"]["upstream_connect_failed"]
            .as_u64()
            .unwrap()
            > 0,
        "{data}"
    );
    assert_eq!(data["slowest"][0]["path"], "/slow");
}
