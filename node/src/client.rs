//! The command-line client: `weft publish`, `tail`, `peers`, `routes`, `status`, `audit`,
//! over the node's HTTP API (reqwest).

use std::io::BufRead as _;
use std::time::Duration;

use anyhow::{Context as _, bail};
use futures_util::StreamExt as _;
use serde_json::Value;

/// Where and how to reach a node.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct Conn {
    /// Base URL of the node's HTTP API.
    #[arg(long, env = "WEFT_NODE", default_value = "http://127.0.0.1:8401")]
    pub(crate) node: String,
    /// Bearer token (or set WEFT_TOKEN, or use --token-file).
    #[arg(long, env = "WEFT_TOKEN", hide_env_values = true)]
    pub(crate) token: Option<String>,
    /// File holding the bearer token (as written by `weft keygen --client`).
    #[arg(long)]
    pub(crate) token_file: Option<std::path::PathBuf>,
}

impl Conn {
    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.node.trim_end_matches('/'))
    }

    fn token(&self) -> anyhow::Result<Option<String>> {
        if let Some(t) = &self.token {
            return Ok(Some(t.clone()));
        }
        match &self.token_file {
            Some(p) => Ok(Some(
                std::fs::read_to_string(p)
                    .with_context(|| format!("reading {}", p.display()))?
                    .trim()
                    .to_string(),
            )),
            None => Ok(None),
        }
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
}

/// Turns an error response into a readable error.
async fn check(resp: reqwest::Response) -> anyhow::Result<reqwest::Response> {
    if resp.status().is_success() {
        return Ok(resp);
    }
    let status = resp.status();
    let text = resp.text().await.unwrap_or_default();
    if let Ok(v) = serde_json::from_str::<Value>(&text)
        && v["complete"] == false
    {
        let regions: Vec<&str> = v["regions"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        bail!(
            "node answered {status}: the events are {} but confirmed in only {} region(s) ({}) \
             before the ack timeout; they keep replicating. ids: {}",
            if v["durable_local"] == true {
                "stored on the node"
            } else {
                "not yet durable"
            },
            v["regions_min"],
            regions.join(", "),
            v["ids"]
        );
    }
    let detail = serde_json::from_str::<Value>(&text)
        .ok()
        .and_then(|v| {
            let e = v.get("error")?;
            Some(format!(
                "{}: {}",
                e.get("reason")?.as_str()?,
                e.get("message")?.as_str()?
            ))
        })
        .unwrap_or(text);
    bail!("node answered {status}: {}", detail.trim())
}

fn ce_id() -> String {
    let r = crate::keys::random32()
        .map(|b| hex::encode(&b[..16]))
        .unwrap_or_default();
    format!("cli-{r}")
}

/// `weft publish`.
pub(crate) fn publish(
    conn: &Conn,
    stream: &str,
    data: Option<String>,
    ack: &str,
    key: Option<String>,
    ty: &str,
) -> anyhow::Result<()> {
    let rt = runtime()?;
    rt.block_on(async {
        let client = reqwest::Client::new();
        let token = conn.token()?.context(
            "publishing needs a token: --token, WEFT_TOKEN or --token-file (weft keygen --client)",
        )?;
        let url = conn.url(&format!("/v1/streams/{stream}/events?ack={ack}"));
        let lines: Vec<String> = match data.as_deref() {
            Some("-") | None => std::io::stdin()
                .lock()
                .lines()
                .collect::<Result<Vec<_>, _>>()
                .context("reading standard input")?
                .into_iter()
                .filter(|l| !l.trim().is_empty())
                .collect(),
            Some(d) => vec![d.to_string()],
        };
        if lines.is_empty() {
            bail!("nothing to publish (empty input)");
        }
        for chunk in lines.chunks(500) {
            let batch: Vec<Value> = chunk
                .iter()
                .map(|line| {
                    let mut ev = serde_json::json!({
                        "specversion": "1.0",
                        "id": ce_id(),
                        "source": "weft-cli",
                        "type": ty,
                    });
                    match serde_json::from_str::<Value>(line) {
                        Ok(v) => {
                            ev["datacontenttype"] = "application/json".into();
                            ev["data"] = v;
                        }
                        Err(_) => {
                            ev["datacontenttype"] = "text/plain".into();
                            ev["data"] = line.clone().into();
                        }
                    }
                    if let Some(k) = &key {
                        ev["weftkey"] = k.clone().into();
                    }
                    ev
                })
                .collect();
            let resp = client
                .post(&url)
                .bearer_auth(&token)
                .header("content-type", crate::cloudevents::CE_BATCH_JSON)
                .body(serde_json::to_vec(&batch)?)
                .send()
                .await
                .with_context(|| format!("POST {url}"))?;
            let body: Value = check(resp).await?.json().await?;
            for id in body["ids"].as_array().into_iter().flatten() {
                say!("{}", id.as_str().unwrap_or_default());
            }
            if let Some(regions) = body["regions"].as_array()
                && !regions.is_empty()
            {
                eprintln!(
                    "durable in: {}",
                    regions
                        .iter()
                        .filter_map(Value::as_str)
                        .collect::<Vec<_>>()
                        .join(", ")
                );
            }
        }
        Ok(())
    })
}

/// `weft tail`: prints each event as one line of CloudEvents JSON.
pub(crate) fn tail(
    conn: &Conn,
    stream: &str,
    (after, last): (Option<String>, Option<usize>),
    durable: Option<String>,
    count: Option<u64>,
    timeout: Option<u64>,
) -> anyhow::Result<()> {
    let rt = runtime()?;
    rt.block_on(async {
        let client = reqwest::Client::new();
        let base = conn.url(&format!("/v1/streams/{stream}/subscribe"));
        let mut url = reqwest::Url::parse(&base).with_context(|| format!("URL {base}"))?;
        {
            let mut q = url.query_pairs_mut();
            if let Some(a) = &after {
                q.append_pair("after", a);
            }
            if let Some(n) = last {
                q.append_pair("last", &n.to_string());
            }
            if let Some(d) = &durable {
                q.append_pair("durable", d);
            }
        }
        let url = url.to_string();
        // A node enforcing a policy authorizes subscriptions: send the token when given.
        let mut req = client.get(&url);
        if let Some(t) = conn.token()? {
            req = req.bearer_auth(t);
        }
        let resp = req.send().await.with_context(|| format!("GET {url}"))?;
        let mut body = check(resp).await?.bytes_stream();
        let mut buf = Vec::new();
        let mut seen = 0u64;
        // Durable subscriptions are at-least-once: acknowledge what was printed, every 100
        // events and when tail ends normally.
        let mut last_id: Option<String> = None;
        let mut acked: Option<String> = None;
        let token = match &durable {
            Some(_) => Some(conn.token()?.context(
                "a durable tail acknowledges what it printed and needs a token: --token, WEFT_TOKEN or --token-file",
            )?),
            None => None,
        };
        let ack = |cursor: String| {
            let url = conn.url(&format!(
                "/v1/streams/{stream}/subscriptions/{}/ack?cursor={cursor}",
                durable.as_deref().unwrap_or("")
            ));
            let client = client.clone();
            let token = token.clone().unwrap_or_default();
            async move {
                let resp = client
                    .post(&url)
                    .bearer_auth(token)
                    .send()
                    .await
                    .with_context(|| format!("POST {url}"))?;
                check(resp).await.map(|_| ())
            }
        };
        let deadline = timeout.map(|s| tokio::time::Instant::now() + Duration::from_secs(s));
        loop {
            let next = match deadline {
                Some(d) => match tokio::time::timeout_at(d, body.next()).await {
                    Ok(n) => n,
                    Err(_) => {
                        if let (Some(_), Some(p)) = (&durable, &last_id)
                            && acked.as_ref() != Some(p)
                        {
                            ack(p.clone()).await?;
                        }
                        bail!("timed out after {} events", seen)
                    }
                },
                None => body.next().await,
            };
            let Some(chunk) = next else { break };
            buf.extend_from_slice(&chunk.context("reading the event stream")?);
            while let Some(end) = buf.windows(2).position(|w| w == b"\n\n") {
                let frame: Vec<u8> = buf.drain(..end + 2).collect();
                let text = String::from_utf8_lossy(&frame).into_owned();
                let id = text
                    .lines()
                    .find_map(|l| l.strip_prefix("id:"))
                    .map(|i| i.trim().to_string());
                for line in text.lines() {
                    if let Some(data) = line.strip_prefix("data:") {
                        say!("{}", data.trim_start());
                        seen += 1;
                        if id.is_some() {
                            last_id.clone_from(&id);
                        }
                    }
                }
                let done = count.is_some_and(|c| seen >= c);
                if let (Some(_), Some(p)) = (&durable, &last_id)
                    && (done || seen.is_multiple_of(100))
                    && acked.as_ref() != Some(p)
                {
                    ack(p.clone()).await?;
                    acked = Some(p.clone());
                }
                if done {
                    return Ok(());
                }
            }
        }
        Ok(())
    })
}

async fn get_json(conn: &Conn, path: &str) -> anyhow::Result<Value> {
    let url = conn.url(path);
    let resp = reqwest::get(&url)
        .await
        .with_context(|| format!("GET {url}"))?;
    Ok(check(resp).await?.json().await?)
}

/// `weft peers`.
pub(crate) fn peers(conn: &Conn, json: bool) -> anyhow::Result<()> {
    let v = runtime()?.block_on(get_json(conn, "/v1/mesh/peers"))?;
    if json {
        say!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    let me = &v["self"];
    say!(
        "this node: {} {} in {} ({})",
        me["name"].as_str().unwrap_or(""),
        &me["key"].as_str().unwrap_or("")[..16.min(me["key"].as_str().unwrap_or("").len())],
        me["region"].as_str().unwrap_or(""),
        me["jurisdiction"].as_str().unwrap_or("")
    );
    say!(
        "{:<18} {:<28} {:<6} {:<5} {:>9}  ADDR",
        "PEER",
        "REGION",
        "JUR",
        "STATE",
        "RTT ms"
    );
    for p in v["peers"].as_array().into_iter().flatten() {
        let key = p["key"].as_str().unwrap_or("");
        say!(
            "{:<18} {:<28} {:<6} {:<5} {:>9}  {}",
            &key[..16.min(key.len())],
            p["region"].as_str().unwrap_or(""),
            p["jurisdiction"].as_str().unwrap_or(""),
            p["state"].as_str().unwrap_or(""),
            p["rtt_ms"]
                .as_f64()
                .map(|r| format!("{r:.1}"))
                .unwrap_or_else(|| "-".into()),
            p["addr"].as_str().unwrap_or(""),
        );
    }
    Ok(())
}

/// `weft routes`.
pub(crate) fn routes(conn: &Conn) -> anyhow::Result<()> {
    let v = runtime()?.block_on(get_json(conn, "/v1/mesh/routes"))?;
    say!("from {}", v["from"].as_str().unwrap_or(""));
    say!(
        "{:<28} {:<11} {:>8} {:>10}  PATH (ALTERNATIVES)",
        "TO REGION",
        "KIND",
        "EST ms",
        "DIRECT ms"
    );
    let ms = |x: &Value| x.as_f64().map_or_else(|| "-".into(), |x| format!("{x:.1}"));
    let path = |p: &Value| {
        p.as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect::<Vec<_>>()
            .join(" > ")
    };
    for r in v["routes"].as_array().into_iter().flatten() {
        let failed = if r["direct_failed"].as_bool() == Some(true) {
            " (failed)"
        } else {
            ""
        };
        let alternatives: Vec<String> = r["alternatives"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|a| format!("{} {} ms", path(&a["path"]), ms(&a["latency_ms"])))
            .collect();
        say!(
            "{:<28} {:<11} {:>8} {:>10}  {}{}",
            r["region"].as_str().unwrap_or(""),
            r["kind"].as_str().unwrap_or(""),
            ms(&r["latency_ms"]),
            format!("{}{failed}", ms(&r["direct_ms"])),
            path(&r["path"]),
            if alternatives.is_empty() {
                String::new()
            } else {
                format!("  ({})", alternatives.join("; "))
            }
        );
    }
    Ok(())
}

/// `weft status`.
pub(crate) fn status(conn: &Conn) -> anyhow::Result<()> {
    let v = runtime()?.block_on(get_json(conn, "/v1/status"))?;
    for k in [
        "name",
        "region",
        "cloud",
        "jurisdiction",
        "key",
        "version",
        "uptime_s",
        "members_up",
        "stored_events",
        "policy_epoch",
    ] {
        say!(
            "{k:<14} {}",
            match &v[k] {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            }
        );
    }
    // What retention and erasure removed (stream rules' retention_s / retention_bytes).
    let stat = |k: &str| v["stats"][k].as_u64().unwrap_or(0);
    let dropped = match stat("store_expired_ranges_dropped") {
        0 => String::new(),
        n => format!(", {n} older ranges dropped"),
    };
    say!(
        "{:<14} {} (in {} ranges of numbers{dropped}); erased {}",
        "expired",
        stat("store_expired"),
        stat("store_expired_ranges"),
        stat("store_erased")
    );
    Ok(())
}

/// `weft erase`: asks a node to erase a key or a principal's data fabric-wide.
pub(crate) fn erase(
    conn: &Conn,
    stream: Option<String>,
    key: Option<String>,
    principal: Option<String>,
    tenant: Option<String>,
) -> anyhow::Result<()> {
    let Some(token) = conn.token()? else {
        bail!("erasing needs an admin principal's token: --token, WEFT_TOKEN or --token-file");
    };
    let mut body = serde_json::Map::new();
    for (k, v) in [
        ("stream", stream),
        ("key", key),
        ("principal", principal),
        ("tenant", tenant),
    ] {
        if let Some(v) = v {
            body.insert(k.into(), Value::String(v));
        }
    }
    let v: Value = runtime()?.block_on(async {
        let url = conn.url("/v1/erase");
        let resp = reqwest::Client::new()
            .post(&url)
            .bearer_auth(token)
            .json(&body)
            .send()
            .await
            .with_context(|| format!("POST {url}"))?;
        anyhow::Ok(check(resp).await?.json::<Value>().await?)
    })?;
    say!(
        "erase applied on {}; carried to the fabric by event {}",
        conn.node,
        v["event"].as_str().unwrap_or("-")
    );
    Ok(())
}

/// `weft policy push`: hands a signed bundle to a node, which verifies it and sends it
/// through the fabric to every node.
pub(crate) fn policy_push(conn: &Conn, bundle: &std::path::Path) -> anyhow::Result<()> {
    let bytes = std::fs::read(bundle)
        .with_context(|| format!("reading signed bundle {}", bundle.display()))?;
    let Some(token) = conn.token()? else {
        bail!(
            "pushing a policy needs an admin principal's token: --token, WEFT_TOKEN or --token-file"
        );
    };
    let v: Value = runtime()?.block_on(async {
        let url = conn.url("/v1/policy");
        let resp = reqwest::Client::new()
            .post(&url)
            .bearer_auth(token)
            .header(reqwest::header::CONTENT_TYPE, "application/cbor")
            .body(bytes)
            .send()
            .await
            .with_context(|| format!("POST {url}"))?;
        anyhow::Ok(check(resp).await?.json::<Value>().await?)
    })?;
    say!(
        "epoch {} in force on {} (was {}); carried to the fabric by event {}",
        v["epoch"],
        conn.node,
        v["previous"],
        v["event"].as_str().unwrap_or("-")
    );
    say!("follow it with: weft policy status --node {}", conn.node);
    Ok(())
}

/// `weft policy status`: the policy epoch of every node the contacted node knows of (its
/// gossiped fabric view). With `expect`, fails unless every live node has that epoch.
pub(crate) fn policy_status(conn: &Conn, json: bool, expect: Option<u64>) -> anyhow::Result<bool> {
    let (policy, nodes) = runtime()?.block_on(async {
        let policy = get_json(conn, "/v1/policy").await?;
        let nodes = get_json(conn, "/v1/mesh/nodes").await?;
        anyhow::Ok((policy, nodes))
    })?;
    let list: Vec<&Value> = nodes["nodes"].as_array().into_iter().flatten().collect();
    let live = || list.iter().filter(|n| n["alive"] == true);
    let newest = live()
        .filter_map(|n| n["policy_epoch"].as_u64())
        .chain(policy["epoch"].as_u64())
        .max()
        .unwrap_or(0);
    let target = expect.unwrap_or(newest);
    let behind = live()
        .filter(|n| n["policy_epoch"].as_u64() != Some(target))
        .count();
    if json {
        say!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "node": policy,
                "newest_epoch": newest,
                "expected_epoch": target,
                "live_nodes": live().count(),
                "not_at_expected": behind,
                "nodes": list.iter().map(|n| serde_json::json!({
                    "name": n["name"], "key": n["key"], "region": n["region"],
                    "jurisdiction": n["jurisdiction"], "alive": n["alive"],
                    "policy_epoch": n["policy_epoch"], "age_ms": n["age_ms"],
                })).collect::<Vec<_>>(),
            }))?
        );
    } else {
        let signers = policy["signers"].as_array().map_or(0, std::vec::Vec::len);
        say!(
            "{}: epoch {} ({} signer(s))",
            conn.node,
            policy["epoch"],
            signers
        );
        say!(
            "{:<16} {:<28} {:<8} {:>6}  {:<8} {:>8}",
            "NODE",
            "REGION",
            "JUR",
            "EPOCH",
            "STATE",
            "SEEN s"
        );
        for n in &list {
            let epoch = n["policy_epoch"].as_u64().unwrap_or(0);
            let state = if n["alive"] != true {
                "down"
            } else if epoch == target {
                "current"
            } else if epoch < target {
                "behind"
            } else {
                "ahead"
            };
            say!(
                "{:<16} {:<28} {:<8} {:>6}  {:<8} {:>8.1}",
                n["name"].as_str().unwrap_or(""),
                n["region"].as_str().unwrap_or(""),
                n["jurisdiction"].as_str().unwrap_or(""),
                epoch,
                state,
                n["age_ms"].as_f64().unwrap_or(0.0) / 1000.0
            );
        }
        say!(
            "{} live node(s); {} at epoch {target}{}",
            live().count(),
            live().count() - behind,
            if expect.is_some() {
                " (expected)"
            } else {
                " (newest)"
            }
        );
    }
    Ok(behind == 0)
}

/// The URL of a table or one of its keys (the key percent-encoded as one path segment).
fn table_url(conn: &Conn, stream: &str, key: Option<&str>) -> anyhow::Result<reqwest::Url> {
    let mut url = reqwest::Url::parse(&conn.url("/v1/tables"))
        .with_context(|| format!("node URL {}", conn.node))?;
    {
        let mut segments = url
            .path_segments_mut()
            .map_err(|()| anyhow::anyhow!("node URL {} cannot take a path", conn.node))?;
        segments.push(stream);
        if let Some(k) = key {
            segments.push(k);
        }
    }
    Ok(url)
}

fn authed(conn: &Conn, req: reqwest::RequestBuilder) -> anyhow::Result<reqwest::RequestBuilder> {
    Ok(match conn.token()? {
        Some(t) => req.bearer_auth(t),
        None => req,
    })
}

/// How `weft get` prints one key.
fn print_key(v: &Value) {
    let show = |x: &Value| match x {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    let key = show(&v["key"]);
    match v["strategy"].as_str().unwrap_or("") {
        "multi-value" => {
            let siblings = v["siblings"].as_array().cloned().unwrap_or_default();
            say!("{key}: {} value(s)", siblings.len());
            for s in siblings {
                say!(
                    "  {}  (writer {}, seq {})",
                    show(&s["value"]),
                    &s["writer"].as_str().unwrap_or("")
                        [..16.min(s["writer"].as_str().unwrap_or("").len())],
                    s["seq"]
                );
            }
        }
        "set" => say!(
            "{key}: {{{}}}",
            v["elements"]
                .as_array()
                .into_iter()
                .flatten()
                .map(show)
                .collect::<Vec<_>>()
                .join(", ")
        ),
        _ => say!("{key}: {}", show(&v["value"])),
    }
    say!("  version {}", v["version"].as_str().unwrap_or(""));
}

/// How `weft get` lists a table's keys (without KEY).
#[derive(Debug, Clone, Default, clap::Args)]
pub(crate) struct ListArgs {
    /// Only keys starting with this.
    #[arg(long)]
    pub(crate) prefix: Option<String>,
    /// Start after this key (the `next_after` a listing printed).
    #[arg(long, value_name = "KEY")]
    pub(crate) after: Option<String>,
    /// Keys per page (the node allows 1 to 1000; it defaults to 100).
    #[arg(long, value_name = "N")]
    pub(crate) limit: Option<usize>,
    /// Follow the pages to the table's end (`next_after`), rather than one page.
    #[arg(long)]
    pub(crate) all: bool,
    /// Also print the table's state digest (SHA-256 of its whole state, equal on two
    /// replicas exactly when their states are; needs read access to every write).
    #[arg(long)]
    pub(crate) digest: bool,
}

/// What a listing read: every key of the pages read, the digest if asked, and the key to
/// continue after when keys remain that were not read.
#[derive(Debug, Default)]
struct Listing {
    keys: Vec<Value>,
    strategy: Value,
    digest: Option<String>,
    more_after: Option<Value>,
}

/// Reads one page of a table's keys, or every page with `all` (following `next_after`;
/// the digest is asked of the first page only).
async fn list_keys(
    conn: &Conn,
    client: &reqwest::Client,
    stream: &str,
    args: &ListArgs,
) -> anyhow::Result<Listing> {
    let mut listing = Listing::default();
    let mut after = args.after.clone();
    loop {
        let mut url = table_url(conn, stream, None)?;
        {
            let mut q = url.query_pairs_mut();
            if let Some(p) = &args.prefix {
                q.append_pair("prefix", p);
            }
            if let Some(a) = &after {
                q.append_pair("after", a);
            }
            if let Some(n) = args.limit {
                q.append_pair("limit", &n.to_string());
            }
            if args.digest && listing.digest.is_none() && listing.keys.is_empty() {
                q.append_pair("digest", "true");
            }
        }
        let resp = authed(conn, client.get(url.clone()))?
            .send()
            .await
            .with_context(|| format!("GET {url}"))?;
        let mut page: Value = check(resp).await?.json().await?;
        if let Some(d) = page["digest"].as_str() {
            listing.digest = Some(d.to_string());
        }
        listing.strategy = page["strategy"].take();
        if let Value::Array(keys) = page["keys"].take() {
            listing.keys.extend(keys);
        }
        match page.get("next_after").cloned() {
            Some(Value::String(next)) if args.all => after = Some(next),
            Some(Value::Null) | None => return Ok(listing),
            Some(next) => {
                if args.all {
                    bail!(
                        "the table continues after a key that is not UTF-8 ({next}): --after cannot name it"
                    );
                }
                listing.more_after = Some(next);
                return Ok(listing);
            }
        }
    }
}

/// `weft get STREAM [KEY]`: one key of a table, or its keys (a page, or all with --all).
pub(crate) fn table_get(
    conn: &Conn,
    stream: &str,
    key: Option<&str>,
    list: &ListArgs,
    json: bool,
) -> anyhow::Result<bool> {
    let Some(key) = key else {
        let l = runtime()?.block_on(list_keys(conn, &reqwest::Client::new(), stream, list))?;
        if json {
            let mut body = serde_json::json!({
                "stream": stream, "strategy": l.strategy, "keys": l.keys,
            });
            if let Some(d) = &l.digest {
                body["digest"] = d.clone().into();
            }
            if let Some(a) = &l.more_after {
                body["next_after"] = a.clone();
            }
            say!("{}", serde_json::to_string_pretty(&body)?);
        } else {
            for k in &l.keys {
                print_key(k);
            }
            if let Some(d) = &l.digest {
                say!("digest {d}");
            }
        }
        if let Some(a) = &l.more_after {
            let shown = a.as_str().map_or_else(|| a.to_string(), str::to_string);
            eprintln!(
                "({} key(s) shown; more follow: weft get --after {shown:?} ..., or --all for every page)",
                l.keys.len()
            );
        }
        return Ok(true);
    };
    let url = table_url(conn, stream, Some(key))?;
    let (status, v) = runtime()?.block_on(async {
        let resp = authed(conn, reqwest::Client::new().get(url.clone()))?
            .send()
            .await
            .with_context(|| format!("GET {url}"))?;
        let status = resp.status();
        if status == reqwest::StatusCode::NOT_FOUND {
            let v: Value = resp.json().await.unwrap_or(Value::Null);
            if v["error"]["reason"] == "no_such_key" {
                return anyhow::Ok((status, v));
            }
            bail!("node answered {status}: {}", v["error"]["message"]);
        }
        anyhow::Ok((status, check(resp).await?.json::<Value>().await?))
    })?;
    if json {
        say!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(status.is_success());
    }
    if !status.is_success() {
        say!(
            "{}{}",
            v["error"]["message"].as_str().unwrap_or("no such key"),
            if v["deleted"] == true {
                " (deleted)"
            } else {
                ""
            }
        );
        return Ok(false);
    }
    print_key(&v);
    Ok(true)
}

/// The body `weft put` sends for VALUE as JSON: VALUE itself when it is JSON, else VALUE
/// as a JSON string, with a note for stderr saying so. With `as_string`, always the JSON string of VALUE (`--string`: `42`
/// stored as the string "42"), without a note.
pub(crate) fn json_put_body(value: &str, as_string: bool) -> (String, Option<String>) {
    let quoted = || Value::String(value.to_string()).to_string();
    if as_string {
        return (quoted(), None);
    }
    match serde_json::from_str::<Value>(value) {
        Ok(_) => (value.to_string(), None),
        Err(e) => (
            quoted(),
            Some(format!(
                "note: VALUE is not JSON ({e}): sent as the JSON string {}; give --string to say so, or valid JSON",
                quoted()
            )),
        ),
    }
}

/// What `weft put` writes.
pub(crate) enum TableWrite {
    /// lww / multi-value: a value and its content type.
    Value(String, String),
    /// counter: add.
    Add(i64),
    /// set: insert.
    Insert(Vec<String>),
    /// set: remove.
    Remove(Vec<String>),
}

/// `weft put` and `weft del`.
pub(crate) fn table_write(
    conn: &Conn,
    stream: &str,
    key: &str,
    write: Option<TableWrite>,
    version: Option<&str>,
    ack: &str,
) -> anyhow::Result<()> {
    if conn.token()?.is_none() {
        bail!("writing a table needs a token: --token, WEFT_TOKEN or --token-file");
    }
    let mut url = table_url(conn, stream, Some(key))?;
    url.query_pairs_mut().append_pair("ack", ack);
    if let Some(v) = version {
        url.query_pairs_mut().append_pair("version", v);
    }
    let client = reqwest::Client::new();
    let req = match write {
        None => client.delete(url.clone()),
        Some(TableWrite::Value(value, content_type)) => client
            .put(url.clone())
            .header(reqwest::header::CONTENT_TYPE, content_type)
            .body(value),
        Some(TableWrite::Add(n)) => client.put(url.clone()).json(&serde_json::json!({"add": n})),
        Some(TableWrite::Insert(e)) => client
            .put(url.clone())
            .json(&serde_json::json!({"insert": e})),
        Some(TableWrite::Remove(e)) => client
            .put(url.clone())
            .json(&serde_json::json!({"remove": e})),
    };
    let v: Value = runtime()?.block_on(async {
        let resp = authed(conn, req)?
            .send()
            .await
            .with_context(|| format!("{url}"))?;
        anyhow::Ok(check(resp).await?.json::<Value>().await?)
    })?;
    say!(
        "ok: event {} (durable here: {}, regions {})",
        v["ids"][0].as_str().unwrap_or("-"),
        v["durable_local"],
        v["regions"]
    );
    Ok(())
}

/// `weft audit` filters.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct AuditArgs {
    /// Only entries at or after this time: unix milliseconds, or an age like 90s, 15m,
    /// 2h, 7d.
    #[arg(long)]
    pub(crate) since: Option<String>,
    /// Most entries to print (the node allows 1 to 1000).
    #[arg(long, default_value_t = 50)]
    pub(crate) limit: usize,
    /// Only entries older than this entry id: the `--before` the previous page's hint
    /// named (`next_before` in the JSON).
    #[arg(long, value_name = "ID")]
    pub(crate) before: Option<i64>,
    /// Only this decision: deny, apply, change, overflow or egress_failed.
    #[arg(long)]
    pub(crate) decision: Option<String>,
    /// Only this reason code, e.g. publish_forbidden.
    #[arg(long)]
    pub(crate) reason: Option<String>,
    /// Only this principal.
    #[arg(long)]
    pub(crate) principal: Option<String>,
    /// Only this stream.
    #[arg(long)]
    pub(crate) stream: Option<String>,
    /// Print the raw JSON.
    #[arg(long)]
    pub(crate) json: bool,
}

/// Parses `--since`: unix ms, or an age before `now_ms`.
fn since_ms(text: &str, now_ms: i64) -> anyhow::Result<i64> {
    if let Ok(ms) = text.parse::<i64>() {
        return Ok(ms);
    }
    let (num, unit) = text.split_at(
        text.find(|c: char| !c.is_ascii_digit())
            .unwrap_or(text.len()),
    );
    let n: i64 = num
        .parse()
        .with_context(|| format!("--since {text:?}: unix milliseconds or an age like 15m"))?;
    let ms = match unit {
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => bail!("--since {text:?}: the unit must be s, m, h or d"),
    };
    Ok(now_ms.saturating_sub(n.saturating_mul(ms)))
}

/// UTC `YYYY-MM-DD HH:MM:SS.mmm` of unix milliseconds (the CloudEvents timestamp, read
/// more easily); a time before 1970 or past 9999 prints as its milliseconds.
fn utc(ms: i64) -> String {
    u64::try_from(ms)
        .ok()
        .and_then(weft_fabric::cloudevents::rfc3339_from_ms)
        .map_or_else(
            || ms.to_string(),
            |t| t.replacen('T', " ", 1).trim_end_matches('Z').to_string(),
        )
}

/// `weft audit`: the node's audit log, newest first (needs an admin token).
pub(crate) fn audit(conn: &Conn, args: &AuditArgs) -> anyhow::Result<()> {
    let token = conn.token()?.context(
        "reading the audit log needs an admin token: --token, WEFT_TOKEN or --token-file",
    )?;
    let mut query = vec![format!("limit={}", args.limit)];
    if let Some(b) = args.before {
        query.push(format!("before={b}"));
    }
    if let Some(s) = &args.since {
        query.push(format!("since={}", since_ms(s, crate::driver::wall_ms())?));
    }
    for (k, v) in [
        ("decision", &args.decision),
        ("reason", &args.reason),
        ("principal", &args.principal),
        ("stream", &args.stream),
    ] {
        if let Some(v) = v {
            let enc: String = v
                .bytes()
                .map(|b| {
                    if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                        (b as char).to_string()
                    } else {
                        format!("%{b:02X}")
                    }
                })
                .collect();
            query.push(format!("{k}={enc}"));
        }
    }
    let url = conn.url(&format!("/v1/audit?{}", query.join("&")));
    let v: Value = runtime()?.block_on(async {
        let resp = reqwest::Client::new()
            .get(&url)
            .bearer_auth(&token)
            .send()
            .await
            .with_context(|| format!("GET {url}"))?;
        anyhow::Ok(check(resp).await?.json().await?)
    })?;
    if args.json {
        say!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    say!(
        "audit log of {} ({})",
        v["node"].as_str().unwrap_or(""),
        &v["node_key"].as_str().unwrap_or("")[..16.min(v["node_key"].as_str().unwrap_or("").len())]
    );
    say!(
        "{:<23} {:<8} {:<20} {:<16} {:<20} {:>5}  MESSAGE",
        "TIME (UTC)",
        "DECISION",
        "REASON",
        "PRINCIPAL",
        "STREAM",
        "EPOCH"
    );
    let text = |x: &Value| x.as_str().unwrap_or("-").to_string();
    let entries = v["entries"].as_array().cloned().unwrap_or_default();
    for e in &entries {
        say!(
            "{:<23} {:<8} {:<20} {:<16} {:<20} {:>5}  {}",
            utc(e["time_ms"].as_i64().unwrap_or(0)),
            text(&e["decision"]),
            text(&e["reason"]),
            text(&e["principal"]),
            text(&e["stream"]),
            e["epoch"].as_u64().unwrap_or(0),
            text(&e["message"]),
        );
    }
    if let Some(b) = v["next_before"].as_i64() {
        eprintln!("{}", older_hint(entries.len(), b));
    }
    Ok(())
}

/// The hint after a page of the audit log that has older entries: the same command with
/// `--before` (the other filters kept).
fn older_hint(shown: usize, next_before: i64) -> String {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    // Drop a --before already given (either form) so the hint names only the next one.
    let mut i = 0;
    while i < args.len() {
        if args[i] == "--before" {
            args.drain(i..(i + 2).min(args.len()));
        } else if args[i].starts_with("--before=") {
            args.remove(i);
        } else {
            i += 1;
        }
    }
    if args.first().map(String::as_str) != Some("audit") {
        args = vec!["audit".into()];
    }
    format!(
        "({shown} entries shown; older ones: weft {} --before {next_before})",
        args.join(" ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_formats_unix_milliseconds() {
        assert_eq!(utc(0), "1970-01-01 00:00:00.000");
        assert_eq!(utc(951_782_400_000), "2000-02-29 00:00:00.000");
        assert_eq!(utc(1_798_502_400_123), "2026-12-29 00:00:00.123");
    }

    /// A stand-in node serving `GET /v1/tables/t` as the node pages it: `n` keys `k000`..,
    /// `limit` (default 100) per page, `next_after` while more remain, and the digest when
    /// asked.
    async fn fake_table(n: usize) -> (String, tokio::task::JoinHandle<()>) {
        use axum::extract::Query;
        use std::collections::HashMap;
        let app = axum::Router::new().route(
            "/v1/tables/t",
            axum::routing::get(move |Query(q): Query<HashMap<String, String>>| async move {
                let limit: usize = q.get("limit").map_or(100, |l| l.parse().unwrap());
                let keys: Vec<String> = (0..n)
                    .map(|i| format!("k{i:03}"))
                    .filter(|k| q.get("after").is_none_or(|a| k > a))
                    .collect();
                let page: Vec<Value> = keys
                    .iter()
                    .take(limit)
                    .map(|k| serde_json::json!({"key": k, "strategy": "lww", "value": 1, "version": "v"}))
                    .collect();
                let mut body = serde_json::json!({"stream": "t", "strategy": "lww", "keys": page});
                if keys.len() > limit {
                    body["next_after"] = keys[limit - 1].clone().into();
                }
                if q.get("digest").is_some_and(|d| d == "true") {
                    body["digest"] = "abcd".into();
                }
                axum::Json(body)
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        (
            url,
            tokio::spawn(async move {
                axum::serve(listener, app).await.unwrap();
            }),
        )
    }

    /// A listing used to stop at the node's first page without a word: one page now says
    /// where it continues, and --all follows `next_after` to the end.
    #[tokio::test]
    async fn get_lists_one_page_or_all() {
        let (node, server) = fake_table(250).await;
        let conn = Conn {
            node,
            token: None,
            token_file: None,
        };
        let client = reqwest::Client::new();
        let one = list_keys(&conn, &client, "t", &ListArgs::default())
            .await
            .unwrap();
        assert_eq!(one.keys.len(), 100);
        assert_eq!(one.more_after, Some(Value::from("k099")));
        let all = ListArgs {
            all: true,
            digest: true,
            ..ListArgs::default()
        };
        let l = list_keys(&conn, &client, "t", &all).await.unwrap();
        assert_eq!(l.keys.len(), 250);
        assert_eq!(l.keys[249]["key"], "k249");
        assert_eq!(l.more_after, None);
        assert_eq!(l.digest.as_deref(), Some("abcd"));
        let from = ListArgs {
            after: Some("k239".into()),
            limit: Some(5),
            ..ListArgs::default()
        };
        let l = list_keys(&conn, &client, "t", &from).await.unwrap();
        assert_eq!(l.keys.len(), 5);
        assert_eq!(l.keys[0]["key"], "k240");
        assert_eq!(l.more_after, Some(Value::from("k244")));
        server.abort();
    }

    #[test]
    fn put_says_when_a_value_is_not_json() {
        assert_eq!(
            json_put_body("{\"a\": 1}", false),
            ("{\"a\": 1}".into(), None)
        );
        assert_eq!(json_put_body("42", false), ("42".into(), None));
        assert_eq!(json_put_body("42", true), ("\"42\"".into(), None));
        let (body, note) = json_put_body("dark mode", false);
        assert_eq!(body, "\"dark mode\"");
        assert!(note.expect("a note").contains("not JSON"));
        assert_eq!(json_put_body("dark", true), ("\"dark\"".into(), None));
    }

    #[test]
    fn the_audit_hint_names_the_cli_flag() {
        let hint = older_hint(50, 4);
        assert!(hint.contains("--before 4"), "{hint}");
        assert!(!hint.contains("GET /v1/audit"), "{hint}");
    }

    #[test]
    fn since_takes_milliseconds_or_an_age() {
        assert_eq!(since_ms("1234", 10_000_000).unwrap(), 1234);
        assert_eq!(since_ms("15m", 10_000_000).unwrap(), 10_000_000 - 900_000);
        assert_eq!(since_ms("2d", 0).unwrap(), -172_800_000);
        assert!(since_ms("5y", 0).is_err());
        assert!(since_ms("m", 0).is_err());
    }
}
