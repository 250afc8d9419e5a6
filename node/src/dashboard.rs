//! The web dashboard every node serves at `GET /`: the mesh by region with RTT on links,
//! per-node event rates, replication lag, policy epochs, refused requests and a live event
//! tail. Plain HTML, CSS and JavaScript embedded in the binary (no CDN, no build step); the
//! page reads the node's own API (`/v1/mesh/nodes` when it exists, otherwise `/v1/status`,
//! `/v1/mesh/peers` and `/metrics`) and follows a stream over SSE.
//!
//! Besides the assets this module serves two small JSON documents: the region catalog's
//! coordinates for the map, and `/dashboard/node.json`, this node in the shape of one
//! `/v1/mesh/nodes` entry, readable from any origin so that a dashboard on one node can
//! show the counters of nodes listed in its `?nodes=` parameter before the fabric-wide
//! view exists.

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::{Value, json};

use crate::http::Api;

const INDEX_HTML: &str = include_str!("dashboard/index.html");
const DASHBOARD_JS: &str = include_str!("dashboard/dashboard.js");
const DASHBOARD_CSS: &str = include_str!("dashboard/dashboard.css");

/// The page may load only its own scripts and styles; it connects to this node and, for
/// `?nodes=`, to other nodes' `/dashboard/node.json`.
const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
                   connect-src 'self' http: https:; frame-ancestors 'none'; base-uri 'none'; form-action 'none'";

/// The dashboard's routes, merged into the API router (`http::router`).
pub(crate) fn routes() -> Router<Arc<Api>> {
    Router::new()
        .route("/", get(index))
        .route(
            "/dashboard.js",
            get(|| asset("text/javascript; charset=utf-8", DASHBOARD_JS)),
        )
        .route(
            "/dashboard.css",
            get(|| asset("text/css; charset=utf-8", DASHBOARD_CSS)),
        )
        .route("/dashboard/regions.json", get(regions))
        .route("/dashboard/node.json", get(node_json))
        .route("/dashboard/audit.json", get(audit_json))
}

/// Denials shown on the dashboard.
const AUDIT_DENIALS_SHOWN: usize = 20;

/// The dashboard's view of the audit log: the last [`AUDIT_DENIALS_SHOWN`] denials with
/// their time, reason code and policy epoch only. The page cannot authenticate (it is a
/// plain page; `EventSource` and `<a>` links carry no bearer token), and `GET /v1/audit`
/// needs an admin token, so this summary holds no more than what the unauthenticated
/// `/metrics` already tells (reason codes, and when they happen), leaving out principals,
/// streams, event ids and messages. Same origin only (no CORS header).
async fn audit_json(State(api): State<Arc<Api>>) -> Response {
    let audit = api.audit.clone();
    let rows = tokio::task::spawn_blocking(move || {
        audit.query(&crate::audit::Filter {
            decision: Some(crate::audit::Decision::Deny),
            limit: AUDIT_DENIALS_SHOWN,
            ..crate::audit::Filter::default()
        })
    })
    .await;
    match rows {
        Ok(Ok(rows)) => {
            let denials: Vec<Value> = rows
                .iter()
                .map(|r| json!({"time_ms": r.time_ms, "reason": r.reason, "epoch": r.epoch}))
                .collect();
            (
                [(header::CACHE_CONTROL, "no-store")],
                axum::Json(json!({"denials": denials})),
            )
                .into_response()
        }
        _ => {
            api.metrics.reject("audit_error");
            (
                axum::http::StatusCode::INTERNAL_SERVER_ERROR,
                axum::Json(json!({"error": {"reason": "audit_error",
                    "message": "reading the audit log failed (see the node's log)"}})),
            )
                .into_response()
        }
    }
}

async fn index() -> Response {
    let mut resp = asset("text/html; charset=utf-8", INDEX_HTML).await;
    resp.headers_mut().insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    resp.headers_mut()
        .insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    resp
}

async fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            // The assets change with the binary: always revalidate.
            (header::CACHE_CONTROL, "no-cache"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        body,
    )
        .into_response()
}

/// Region id to coordinates, location, cloud and jurisdiction, for the map.
async fn regions() -> Response {
    (
        [(header::CACHE_CONTROL, "max-age=3600")],
        axum::Json(crate::regions::regions()),
    )
        .into_response()
}

/// Events taken in by this node's publish API (all APIs).
fn published(api: &Api) -> u64 {
    crate::metrics::PUBLISH_APIS
        .iter()
        .map(|a| {
            api.metrics
                .publishes
                .get_or_create(&vec![("api", (*a).to_string())])
                .get()
        })
        .sum()
}

/// This node as one entry of `/v1/mesh/nodes` (`missing` is unknown here: null). Any
/// origin may read it: it carries what the unauthenticated `/v1/status` and
/// `/v1/mesh/peers` show, and no event data.
async fn node_json(State(api): State<Arc<Api>>) -> Response {
    let s = api.snapshot.borrow().clone();
    let links: Vec<Value> = s
        .peers
        .iter()
        .filter(|p| p.state == "up")
        .filter_map(|p| Some(json!({"to": p.key, "rtt_ms": p.rtt_ms?})))
        .collect();
    let body = json!({
        "key": hex::encode(api.me.key),
        "name": api.name,
        "region": api.me.region,
        "cloud": api.me.cloud,
        "jurisdiction": api.me.jurisdiction,
        "http": null,
        "alive": true,
        "age_ms": 0,
        "published": published(&api),
        "stored": s.stored_events,
        "missing": null,
        "policy_epoch": api.policy.epoch(),
        "links": links,
    });
    (
        [
            (header::ACCESS_CONTROL_ALLOW_ORIGIN, "*"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        axum::Json(body),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_loads_only_embedded_assets_and_writes_no_html_from_data() {
        // No CDN: every script and stylesheet is one of ours.
        for line in INDEX_HTML.lines() {
            if line.contains("<script") || line.contains("<link") {
                assert!(
                    line.contains("src=\"dashboard.js\"")
                        || line.contains("href=\"dashboard.css\""),
                    "{line}"
                );
            }
        }
        // Strings from the network go through textContent.
        assert!(!DASHBOARD_JS.contains("innerHTML"));
        assert!(!DASHBOARD_JS.contains("eval("));
        // The page documents what is not built yet rather than faking it.
        assert!(INDEX_HTML.contains("issue 6"));
    }
}
