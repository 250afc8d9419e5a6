//! The web dashboard in a real browser: three real nodes (127.40.0.x), Debian's headless
//! Chromium loads node 0's dashboard, and the rendered DOM must name every node; a
//! screenshot is saved as `target/dashboard.png`. Then the live tail: `--dump-dom` with a
//! virtual-time budget cannot show it (an open SSE connection is a pending fetch, which
//! stops virtual time for good), so a second run drives Chromium over the DevTools protocol
//! (`--remote-debugging-pipe`) in real time until an event published on another node
//! appears in the tail, and saves `target/dashboard-live.png`. Also the dashboard's assets
//! and JSON over plain HTTP. Needs `chromium` (scripts/test.sh installs it in CI); without
//! it the test fails and says so.

mod common;

use std::io::{BufRead as _, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::*;
use serde_json::{Value, json};

/// Most time one Chromium run may take (it usually takes 2 s; a cold start on a loaded
/// machine far longer).
const CHROMIUM_WAIT_MAX: Duration = Duration::from_secs(120);
/// Virtual time the page runs before the DOM is dumped: several 2-second polls.
const VIRTUAL_TIME_MS: u32 = 10_000;
const WINDOW: (u32, u32) = (1400, 1300);

fn specs() -> Vec<Spec> {
    // Names that occur nowhere else on the page, so finding them means the page shows
    // the node.
    let mut s = three_regions();
    for (spec, name) in s.iter_mut().zip(["dash-eu-1", "dash-us-1", "dash-ap-1"]) {
        spec.name = name;
    }
    s
}

/// Debian's Chromium: `WEFT_CHROMIUM`, else `chromium` or `chromium-browser` on PATH.
fn chromium() -> PathBuf {
    if let Some(p) = std::env::var_os("WEFT_CHROMIUM") {
        return PathBuf::from(p);
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    for dir in std::env::split_paths(&path) {
        for name in ["chromium", "chromium-browser"] {
            let cand = dir.join(name);
            if cand.is_file() {
                return cand;
            }
        }
    }
    panic!(
        "the dashboard test needs Chromium and found none: install Debian's `chromium` \
         (apt-get install -y chromium; scripts/test.sh does this when /usr/bin/chromium is \
         missing) or set WEFT_CHROMIUM to a Chromium binary"
    );
}

/// Runs headless Chromium with `args` and a fresh profile; returns its standard output.
/// Bounded by [`CHROMIUM_WAIT_MAX`]; the whole process group is killed after it.
fn run_chromium(dir: &Path, args: &[String]) -> String {
    let profile = dir.join(format!("chromium-profile-{}", args.len()));
    std::fs::create_dir_all(&profile).unwrap();
    let err_path = dir.join("chromium.err");
    let out_path = dir.join("chromium.out");
    let mut cmd = Command::new(chromium());
    cmd.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
    ])
    .arg(format!("--user-data-dir={}", profile.display()))
    .args(args)
    .stdin(Stdio::null())
    .stdout(std::fs::File::create(&out_path).unwrap())
    .stderr(std::fs::File::create(&err_path).unwrap());
    std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
    let mut child = cmd.spawn().expect("start chromium");
    let started = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break Some(s);
        }
        if started.elapsed() > CHROMIUM_WAIT_MAX {
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    // Chromium's helper processes share its process group: end them all.
    let _ = Command::new("kill")
        .args(["-KILL", "--", &format!("-{}", child.id())])
        .stderr(Stdio::null())
        .status();
    let _ = child.wait();
    let err = std::fs::read_to_string(&err_path).unwrap_or_default();
    match status {
        Some(s) if s.success() => {}
        Some(s) => panic!("chromium {args:?} failed ({s}):\n{err}"),
        None => panic!("chromium {args:?} did not finish in {CHROMIUM_WAIT_MAX:?}:\n{err}"),
    }
    std::fs::read_to_string(&out_path).unwrap()
}

/// Headless Chromium driven over the DevTools protocol on a pipe (JSON messages ended by
/// NUL on file descriptors 3 and 4, mapped by `sh` onto our stdin and stdout pipes).
struct Devtools {
    child: Child,
    to: ChildStdin,
    from: mpsc::Receiver<Value>,
    next_id: u64,
    session: Option<String>,
}

/// Longest wait for one DevTools answer.
const DEVTOOLS_ANSWER_MAX: Duration = Duration::from_secs(30);

impl Devtools {
    fn start(dir: &Path) -> Self {
        let profile = dir.join("chromium-profile-devtools");
        std::fs::create_dir_all(&profile).unwrap();
        let mut cmd = Command::new("sh");
        cmd.arg("-c")
            .arg(r#"exec "$0" "$@" 3<&0 4>&1 1>&2 0</dev/null"#)
            .arg(chromium())
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--disable-dev-shm-usage",
                "--remote-debugging-pipe",
            ])
            .arg(format!("--user-data-dir={}", profile.display()))
            .arg("about:blank")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(dir.join("chromium-devtools.err")).unwrap());
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        let mut child = cmd.spawn().expect("start chromium");
        let to = child.stdin.take().unwrap();
        let mut from = std::io::BufReader::new(child.stdout.take().unwrap());
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            while from.read_until(0, &mut buf).unwrap_or(0) > 0 {
                if buf.last() == Some(&0) {
                    buf.pop();
                }
                if let Ok(v) = serde_json::from_slice::<Value>(&buf)
                    && tx.send(v).is_err()
                {
                    return;
                }
                buf.clear();
            }
        });
        Self {
            child,
            to,
            from: rx,
            next_id: 0,
            session: None,
        }
    }

    /// Sends one command (to the attached page once there is one) and returns its result.
    fn call(&mut self, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let mut msg = json!({"id": id, "method": method, "params": params});
        if let Some(s) = &self.session {
            msg["sessionId"] = s.clone().into();
        }
        let mut bytes = serde_json::to_vec(&msg).unwrap();
        bytes.push(0);
        self.to.write_all(&bytes).expect("write to chromium");
        let deadline = Instant::now() + DEVTOOLS_ANSWER_MAX;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let v = self
                .from
                .recv_timeout(left)
                .unwrap_or_else(|e| panic!("{method}: no answer from chromium ({e})"));
            if v["id"] == id {
                assert!(v.get("error").is_none(), "{method}: {v}");
                return v["result"].clone();
            }
        }
    }

    /// Opens a page of `width` x `height` at `url`.
    fn open(&mut self, url: &str, width: u32, height: u32) {
        let target = self.call("Target.createTarget", json!({"url": "about:blank"}));
        let attached = self.call(
            "Target.attachToTarget",
            json!({"targetId": target["targetId"], "flatten": true}),
        );
        self.session = Some(attached["sessionId"].as_str().unwrap().to_string());
        self.call(
            "Emulation.setDeviceMetricsOverride",
            json!({"width": width, "height": height, "deviceScaleFactor": 1, "mobile": false}),
        );
        self.call("Page.navigate", json!({"url": url}));
    }

    /// Evaluates a JavaScript expression in the page and returns its value.
    fn eval(&mut self, expression: &str) -> Value {
        let r = self.call(
            "Runtime.evaluate",
            json!({"expression": expression, "returnByValue": true}),
        );
        r["result"]["value"].clone()
    }
}

impl Drop for Devtools {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", self.child.id())])
            .stderr(Stdio::null())
            .status();
        let _ = self.child.wait();
    }
}

#[test]
fn the_dashboard_shows_every_node_in_headless_chromium() {
    let browser = chromium();
    rt().block_on(async {
        let mut c = Cluster::new("dashboard", 52, &specs(), "");
        c.start_all();
        c.wait_meshed().await;
        for i in 0..3 {
            c.chaos(i, latency_rules(i)).await;
        }
        for i in 0..3 {
            let (status, body) = c.publish(i, "orders.eu", "local", &[json!({"n": i})]).await;
            assert_eq!(status, 200, "{body}");
        }

        // The page and its assets, over plain HTTP.
        let http = reqwest::Client::new();
        // A refused token: an audit denial for the page's audit panel.
        let r = http
            .post(c.url(0, "/v1/streams/orders.eu/events"))
            .bearer_auth("not-a-token")
            .header("content-type", "application/cloudevents+json")
            .body(r#"{"specversion":"1.0","id":"x","source":"it","type":"t"}"#)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401);
        let summary = wait_for(Duration::from_secs(10), || async {
            let v: Value = http
                .get(c.url(0, "/dashboard/audit.json"))
                .send()
                .await
                .ok()?
                .json()
                .await
                .ok()?;
            (v["denials"][0]["reason"] == "bad_token").then_some(v)
        })
        .await
        .expect("the refused token is not in /dashboard/audit.json");
        assert!(summary["denials"][0]["time_ms"].as_i64().unwrap() > 0);
        let page = http.get(c.url(0, "/")).send().await.unwrap();
        assert_eq!(page.status(), 200);
        let csp = page.headers()["content-security-policy"]
            .to_str()
            .unwrap()
            .to_string();
        assert!(csp.contains("script-src 'self'"), "{csp}");
        assert!(
            page.headers()["content-type"]
                .to_str()
                .unwrap()
                .starts_with("text/html")
        );
        assert!(page.text().await.unwrap().contains("dashboard.js"));
        for (path, ty) in [
            ("/dashboard.js", "text/javascript"),
            ("/dashboard.css", "text/css"),
        ] {
            let r = http.get(c.url(0, path)).send().await.unwrap();
            assert_eq!(r.status(), 200, "{path}");
            assert!(
                r.headers()["content-type"]
                    .to_str()
                    .unwrap()
                    .starts_with(ty),
                "{path}"
            );
        }
        let regions: Value = http
            .get(c.url(0, "/dashboard/regions.json"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(regions["aws:eu-west-1"]["jurisdiction"], "EU");
        // node.json: this node in the /v1/mesh/nodes shape, readable from any origin.
        let r = http
            .get(c.url(1, "/dashboard/node.json"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.headers()["access-control-allow-origin"], "*");
        let node: Value = r.json().await.unwrap();
        assert_eq!(node["name"], "dash-us-1");
        assert_eq!(node["region"], "aws:us-east-1");
        assert_eq!(node["key"], c.keys[1].as_str());
        assert_eq!(node["published"], 1);
        assert_eq!(node["policy_epoch"], 0);
        // Links with the injected latency (each estimate within 20 % of the measured RTT)
        // once the estimator's window of loopback samples has passed.
        let rtt_ms = [[0.0, 80.6, 198.6], [80.6, 0.0, 145.3], [198.6, 145.3, 0.0]];
        for (i, expected) in rtt_ms.iter().enumerate() {
            let links = wait_for(Duration::from_secs(40), || async {
                let v: Value = http
                    .get(c.url(i, "/dashboard/node.json"))
                    .send()
                    .await
                    .ok()?
                    .json()
                    .await
                    .ok()?;
                let links = v["links"].as_array()?.clone();
                let realistic = links.iter().all(|l| {
                    let j = c.keys.iter().position(|k| l["to"] == k.as_str()).unwrap();
                    let rtt = l["rtt_ms"].as_f64().unwrap_or(0.0);
                    (rtt - expected[j]).abs() < 0.2 * expected[j]
                });
                (links.len() == 2 && realistic).then_some(links)
            })
            .await;
            assert!(
                links.is_some(),
                "node {i}'s node.json lists no links with the injected RTTs"
            );
        }

        // Node 0's gossiped fabric view (what the page reads first) has caught up: all
        // three nodes, each with its two links at the injected RTTs.
        let view = wait_for(Duration::from_secs(60), || async {
            let v: Value = http
                .get(c.url(0, "/v1/mesh/nodes"))
                .send()
                .await
                .ok()?
                .json()
                .await
                .ok()?;
            let nodes = v["nodes"].as_array()?;
            let complete = nodes.len() == 3
                && nodes.iter().all(|n| {
                    let i = c.keys.iter().position(|k| n["key"] == k.as_str());
                    let links = n["links"].as_array().cloned().unwrap_or_default();
                    i.is_some_and(|i| {
                        links.len() == 2
                            && links.iter().all(|l| {
                                let j = c.keys.iter().position(|k| l["to"] == k.as_str());
                                let rtt = l["rtt_ms"].as_f64().unwrap_or(0.0);
                                j.is_some_and(|j| (rtt - rtt_ms[i][j]).abs() < 0.2 * rtt_ms[i][j])
                            })
                    })
                });
            complete.then_some(v)
        })
        .await;
        assert!(
            view.is_some(),
            "node 0's /v1/mesh/nodes never showed the three nodes with their links"
        );

        // The page in Chromium, as an operator opens it: node 0's dashboard, told where
        // the other two nodes are (the fabric-wide /v1/mesh/nodes view makes that
        // unnecessary once nodes serve it).
        let others: Vec<String> = (1..3)
            .map(|i| c.nodes[i].http.trim_start_matches("http://").to_string())
            .collect();
        let url = format!("{}/?nodes={}", c.nodes[0].http, others.join(","));
        let dom = run_chromium(
            &c.dir,
            &[
                format!("--virtual-time-budget={VIRTUAL_TIME_MS}"),
                "--dump-dom".into(),
                url.clone(),
            ],
        );
        for s in specs() {
            assert!(
                dom.contains(&format!(">{}<", s.name))
                    || dom.contains(&format!(">{} (this node)<", s.name)),
                "node {} is not on the page:\n{dom}",
                s.name
            );
            assert!(
                dom.contains(s.region),
                "region {} missing:\n{dom}",
                s.region
            );
        }
        assert!(dom.contains("3 nodes, 3 up, in 3 regions"), "{dom}");
        // The map drew the three nodes and the three links between them.
        assert_eq!(dom.matches("<circle").count(), 3, "{dom}");
        assert_eq!(dom.matches("class=\"link ").count(), 3, "{dom}");
        assert!(!dom.contains("cannot read this node's API"), "{dom}");
        // The audit panel lists the refused token.
        let audit = dom
            .split("id=\"audit\"")
            .nth(1)
            .and_then(|rest| rest.split("</table>").next())
            .expect("the audit panel");
        assert!(
            audit.contains("class=\"denial\"") && audit.contains(">bad_token<"),
            "{audit}"
        );
        // The links are labelled with the measured RTTs (80.6, 145.3, 198.6 ms injected).
        let mut labels: Vec<f64> = dom
            .split("class=\"rtt\">")
            .skip(1)
            .map(|rest| rest.split(" ms").next().unwrap().parse().unwrap())
            .collect();
        labels.sort_by(f64::total_cmp);
        assert_eq!(labels.len(), 3, "{dom}");
        for (got, want) in labels.iter().zip([80.6, 145.3, 198.6]) {
            assert!((got - want).abs() < 0.2 * want, "RTT labels {labels:?}");
        }

        let target = Path::new(env!("CARGO_TARGET_TMPDIR"))
            .parent()
            .unwrap()
            .to_path_buf();
        let png = target.join("dashboard.png");
        let _ = std::fs::remove_file(&png);
        run_chromium(
            &c.dir,
            &[
                format!("--virtual-time-budget={VIRTUAL_TIME_MS}"),
                format!("--window-size={},{}", WINDOW.0, WINDOW.1),
                format!("--screenshot={}", png.display()),
                url,
            ],
        );
        let bytes = std::fs::read(&png).expect("chromium wrote the screenshot");
        assert!(bytes.len() > 10_000, "{} bytes", bytes.len());
        assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n", "not a PNG");
        let width = u32::from_be_bytes(bytes[16..20].try_into().unwrap());
        let height = u32::from_be_bytes(bytes[20..24].try_into().unwrap());
        assert_eq!((width, height), WINDOW, "screenshot size");
        println!(
            "dashboard screenshot ({} bytes, {}): {}",
            bytes.len(),
            browser.display(),
            png.display()
        );

        // The live tail, in real time: node 0's dashboard follows orders.us over SSE while
        // node 1 (us) publishes; the events must appear with their origin named.
        let live_url = format!(
            "{}/?nodes={}&stream=orders.us",
            c.nodes[0].http,
            others.join(",")
        );
        let mut browser = Devtools::start(&c.dir);
        browser.open(&live_url, WINDOW.0, WINDOW.1);
        let expr = "JSON.stringify({rows: [...document.querySelectorAll('#tail tbody tr')].map(r => r.innerText), \
                    tail: document.getElementById('tail-state').textContent, \
                    nodes: document.querySelector('#nodes tbody').innerText})";
        let mut seen = Value::Null;
        let started = Instant::now();
        let mut k = 0;
        while started.elapsed() < Duration::from_secs(60) {
            k += 1;
            let (status, body) = c
                .publish(1, "orders.us", "local", &[json!({"live": k})])
                .await;
            assert_eq!(status, 200, "{body}");
            tokio::time::sleep(Duration::from_millis(500)).await;
            seen = serde_json::from_str(browser.eval(expr).as_str().unwrap_or("null"))
                .unwrap_or(Value::Null);
            let rows = seen["rows"].as_array().cloned().unwrap_or_default();
            if rows.len() >= 2 && seen["nodes"].as_str().is_some_and(|n| n.contains("/s")) {
                break;
            }
        }
        let rows = seen["rows"].as_array().cloned().unwrap_or_default();
        assert!(rows.len() >= 2, "the live tail shows no events: {seen}");
        assert!(
            rows.iter().all(|r| {
                let r = r.as_str().unwrap_or("");
                r.contains("orders.us") && r.contains("dash-us-1 (aws:us-east-1)") && r.contains("\"live\"")
            }),
            "{seen}"
        );
        assert!(
            seen["tail"]
                .as_str()
                .is_some_and(|t| t.contains("following orders.us")),
            "{seen}"
        );
        // Rates come from counters differenced between polls.
        assert!(seen["nodes"].as_str().unwrap().contains("/s"), "{seen}");
        let shot = browser.call("Page.captureScreenshot", json!({"format": "png"}));
        let live = base64::Engine::decode(
            &base64::engine::general_purpose::STANDARD,
            shot["data"].as_str().unwrap(),
        )
        .unwrap();
        assert_eq!(&live[..8], b"\x89PNG\r\n\x1a\n", "not a PNG");
        let live_png = target.join("dashboard-live.png");
        std::fs::write(&live_png, &live).unwrap();
        println!(
            "live dashboard screenshot ({} bytes): {}",
            live.len(),
            live_png.display()
        );
    });
}

/// The page against `/v1/mesh/nodes`, the fabric-wide view learned by gossip, in its
/// specified shape: served here by a stub with the dashboard's own assets, so the page's
/// gossip path is checked whether or not the node serves that endpoint yet.
#[test]
fn the_dashboard_renders_the_fabric_view_of_v1_mesh_nodes() {
    use axum::routing::get;
    chromium();
    let key = |b: u8| format!("{b:02x}").repeat(32);
    let nodes = json!({
        "me": key(1),
        "nodes": [
            {"key": key(1), "name": "gossip-eu-1", "region": "aws:eu-west-1", "cloud": "aws",
             "jurisdiction": "EU", "http": "127.0.0.1:1", "alive": true, "age_ms": 0,
             "published": 120, "stored": 450, "missing": 0, "policy_epoch": 3,
             "links": [{"to": key(2), "rtt_ms": 80.6}, {"to": key(3), "rtt_ms": 198.6}]},
            {"key": key(2), "name": "gossip-us-1", "region": "aws:us-east-1", "cloud": "aws",
             "jurisdiction": "US", "http": "127.0.0.1:2", "alive": true, "age_ms": 900,
             "published": 130, "stored": 433, "missing": 17, "policy_epoch": 3,
             "links": [{"to": key(1), "rtt_ms": 81.0}]},
            {"key": key(3), "name": "gossip-ap-1", "region": "aws:ap-northeast-1", "cloud": "aws",
             "jurisdiction": "JP", "http": "127.0.0.1:3", "alive": false, "age_ms": 45000,
             "published": 200, "stored": 300, "missing": 150, "policy_epoch": 2,
             "links": []},
        ]
    });
    let status = json!({"name": "gossip-eu-1", "key": key(1), "region": "aws:eu-west-1",
        "cloud": "aws", "jurisdiction": "EU", "version": "0.1.0",
        "stored_events": 450, "policy_epoch": 3});
    let regions = json!({
        "aws:eu-west-1": {"lat_deg": 53.35, "lon_deg": -6.26},
        "aws:us-east-1": {"lat_deg": 39.04, "lon_deg": -77.49},
        "aws:ap-northeast-1": {"lat_deg": 35.68, "lon_deg": 139.69},
    });
    // Every known reason is exported at 0 from the start; only counted ones are rows.
    let metrics = "weft_rejected_total{reason=\"bad_signature\"} 0\nweft_rejected_total{reason=\"bad_token\"} 2\nweft_publishes_total{api=\"cloudevents\"} 120\n";
    let html = |body: &'static str, ty: &'static str| {
        get(move || async move { ([("content-type", ty)], body) })
    };
    let app = axum::Router::new()
        .route(
            "/",
            html(
                include_str!("../src/dashboard/index.html"),
                "text/html; charset=utf-8",
            ),
        )
        .route(
            "/dashboard.js",
            html(
                include_str!("../src/dashboard/dashboard.js"),
                "text/javascript",
            ),
        )
        .route(
            "/dashboard.css",
            html(include_str!("../src/dashboard/dashboard.css"), "text/css"),
        )
        .route(
            "/dashboard/regions.json",
            get(move || async move { axum::Json(regions) }),
        )
        .route("/v1/status", get(move || async move { axum::Json(status) }))
        .route(
            "/v1/mesh/nodes",
            get(move || async move { axum::Json(nodes) }),
        )
        .route("/metrics", get(move || async move { metrics }))
        .route(
            "/dashboard/audit.json",
            get(move || async move {
                axum::Json(json!({"denials": [
                    {"time_ms": 1_798_502_400_000_i64, "reason": "read_forbidden", "epoch": 3}
                ]}))
            }),
        );
    let dir = std::env::temp_dir().join(format!("weft-it-dashboard-gossip-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let runtime = rt();
    let listener = runtime
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let addr = listener.local_addr().unwrap();
    runtime.spawn(async move { axum::serve(listener, app).await });
    let dom = run_chromium(
        &dir,
        &[
            format!("--virtual-time-budget={VIRTUAL_TIME_MS}"),
            "--dump-dom".into(),
            format!("http://{addr}/"),
        ],
    );
    std::fs::remove_dir_all(&dir).unwrap();
    assert!(
        dom.contains("fabric view from gossip (/v1/mesh/nodes)"),
        "{dom}"
    );
    assert!(dom.contains("3 nodes, 2 up, in 3 regions"), "{dom}");
    assert!(dom.contains(">gossip-eu-1 (this node)<"), "{dom}");
    for name in ["gossip-us-1", "gossip-ap-1"] {
        // Other nodes link to their own dashboards.
        assert!(dom.contains(&format!(">{name}</a>")), "{name}: {dom}");
    }
    // Replication lag is the nodes' own count of missing events, not an estimate.
    assert!(
        dom.contains(">17 events<") && dom.contains(">150 events<"),
        "{dom}"
    );
    assert!(!dom.contains("~"), "{dom}");
    assert!(dom.contains("class=\"down\">down<"), "{dom}");
    // The eu <-> us link measured from both sides: the mean on the map; eu <-> ap.
    assert!(
        dom.contains(">80.8 ms<") && dom.contains(">198.6 ms<"),
        "{dom}"
    );
    assert!(dom.contains(">bad_token<"), "{dom}");
    assert!(
        !dom.contains(">bad_signature<"),
        "a reason at 0 is no row: {dom}"
    );
    // The audit panel: time in UTC, reason, epoch.
    assert!(
        dom.contains(">2026-12-29 00:00:00<") && dom.contains(">read_forbidden<"),
        "{dom}"
    );
}
