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
    /// Base URL of the node's HTTP API (`http://HOST:PORT`).
    #[arg(long, env = "WEFT_NODE", default_value = "http://127.0.0.1:8400", value_parser = node_url)]
    pub(crate) node: String,
    /// Bearer token. An explicit --token or --token-file comes before WEFT_TOKEN.
    #[arg(long, conflicts_with = "token_file")]
    pub(crate) token: Option<String>,
    /// File holding the bearer token (as written by `weft keygen --client`).
    #[arg(long)]
    pub(crate) token_file: Option<std::path::PathBuf>,
}

/// `--node`: an `http://` URL with a host, and no query or fragment; its trailing `/`
/// dropped. The node's API speaks plain HTTP (TLS, where wanted, is a proxy's), so an
/// `https://` URL could never work, and a bare `HOST:PORT` parses as a URL with `HOST` as
/// its scheme: both are said at once instead of failing every request.
fn node_url(text: &str) -> Result<String, String> {
    let url = reqwest::Url::parse(text).ok().filter(|u| u.has_host());
    let Some(url) = url else {
        return Err(format!(
            "not a URL with a host: write it as http://HOST:PORT (http://{text})"
        ));
    };
    if url.scheme() != "http" {
        let scheme = url.scheme().to_string();
        let mut plain = url.clone();
        let suggestion = match plain.set_scheme("http") {
            Ok(()) => format!(": {}", plain.as_str().trim_end_matches('/')),
            Err(()) => String::new(),
        };
        return Err(format!(
            "the node's API is served over plain http, not {scheme}{suggestion}"
        ));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err("a node URL takes no query (?) or fragment (#)".into());
    }
    // Credentials in the URL would go as HTTP Basic beside (or instead of) the bearer
    // token, which the node refuses: every call failed with a 401 that named neither.
    if !url.username().is_empty() || url.password().is_some() {
        return Err(
            "a node URL takes no user or password (user:pw@): the API takes a bearer token, given with --token, --token-file or WEFT_TOKEN".into(),
        );
    }
    Ok(text.trim_end_matches('/').to_string())
}

impl Conn {
    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.node.trim_end_matches('/'))
    }

    /// The URL of the API path `segments`, each percent-encoded as one path segment (a
    /// stream name or pattern, a key, a subscription name: a `/`, `%`, `?` or `#` in one
    /// stays in it, and the node refuses a name it does not take, instead of the request
    /// going to another path).
    fn endpoint(&self, segments: &[&str]) -> anyhow::Result<reqwest::Url> {
        // URLs resolve `.` and `..` segments (encoded or not) before anything is sent,
        // and an empty one names another route.
        if let Some(dots) = segments.iter().find(|s| matches!(**s, "." | "..")) {
            bail!("\"{dots}\" cannot be sent as a name in a URL path (URLs resolve it)");
        }
        if segments.iter().any(|s| s.is_empty()) {
            bail!("an empty name (stream, key or subscription) cannot be sent");
        }
        let mut url =
            reqwest::Url::parse(&self.node).with_context(|| format!("node URL {}", self.node))?;
        url.path_segments_mut()
            .map_err(|()| anyhow::anyhow!("node URL {} cannot take a path", self.node))?
            .pop_if_empty()
            .extend(segments);
        Ok(url)
    }

    fn token(&self) -> anyhow::Result<Option<String>> {
        pick_token(
            self.token.as_deref(),
            self.token_file.as_deref(),
            std::env::var("WEFT_TOKEN").ok(),
        )
    }
}

/// The token: `--token` (`flag`), else the one in `--token-file` (`file`), else
/// `WEFT_TOKEN` (`env`) when set and not empty: what is given on the command line comes
/// before the environment, which may hold a stale token from another node.
fn pick_token(
    flag: Option<&str>,
    file: Option<&std::path::Path>,
    env: Option<String>,
) -> anyhow::Result<Option<String>> {
    if let Some(t) = flag {
        return Ok(Some(t.to_string()));
    }
    if let Some(p) = file {
        let token = std::fs::read_to_string(p)
            .with_context(|| format!("reading the token file {}", p.display()))?
            .trim()
            .to_string();
        if token.is_empty() {
            bail!("the token file {} is empty", p.display());
        }
        return Ok(Some(token));
    }
    Ok(env.map(|t| t.trim().to_string()).filter(|t| !t.is_empty()))
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

/// How `weft publish` batches standard input.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct PublishArgs {
    /// Most lines of standard input per request (at most the node's 1000 events a request).
    #[arg(long, value_name = "N", default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..=weft_fabric::cloudevents::BATCH_LEN_MAX as u64))]
    pub(crate) batch: u64,
    /// Send what has been read after this many milliseconds without a new line.
    #[arg(long, value_name = "MS", default_value_t = 100)]
    pub(crate) linger_ms: u64,
}

/// Attempts of one batch answered 429 or 503 before `weft publish` gives up.
const PUBLISH_RETRIES: u32 = 5;
/// Longest `Retry-After` `weft publish` waits for; a longer one (a daily quota) ends it.
const PUBLISH_RETRY_AFTER_MAX: Duration = Duration::from_secs(60);

/// One CloudEvent of `weft publish` from a line of input (JSON data, or text).
fn cli_event(line: &str, ty: &str, key: Option<&str>) -> Value {
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
            ev["data"] = line.into();
        }
    }
    if let Some(k) = key {
        ev["weftkey"] = k.into();
    }
    ev
}

/// How one request of a batch ended.
enum Sent {
    /// Published: the answer's body.
    Done(Value),
    /// 400 `batch_over_burst`: no rate-limit bucket could ever take the batch whole.
    OverBurst(anyhow::Error),
    /// 429 / 503: try again after this.
    Later(Option<Duration>, anyhow::Error),
}

/// Where `weft publish` sends and how it names its events.
struct Publisher<'a> {
    client: reqwest::Client,
    url: String,
    token: String,
    ty: &'a str,
    key: Option<&'a str>,
    /// One event given on the command line (DATA): its error needs no input line.
    single: bool,
}

impl Publisher<'_> {
    async fn post(&self, batch: &[Value]) -> anyhow::Result<Sent> {
        let sent = self
            .client
            .post(&self.url)
            .bearer_auth(&self.token)
            .header("content-type", crate::cloudevents::CE_BATCH_JSON)
            .body(serde_json::to_vec(batch)?)
            .send()
            .await;
        // A lost connection may have lost only the answer: the same batch is sent again
        // (the same CloudEvent ids, which the node answers from its idempotency record
        // if it stored them), not dropped with the rest of the input.
        let resp = match sent {
            Ok(r) => r,
            Err(e) if e.is_connect() || e.is_timeout() || e.is_request() => {
                return Ok(Sent::Later(
                    Some(Duration::from_secs(1)),
                    anyhow::Error::new(e).context(format!("POST {}", self.url)),
                ));
            }
            Err(e) => return Err(anyhow::Error::new(e).context(format!("POST {}", self.url))),
        };
        let status = resp.status();
        if status.is_success() {
            return Ok(Sent::Done(resp.json().await?));
        }
        let retry_after = resp
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok()?.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        let error = check(resp)
            .await
            .err()
            .unwrap_or_else(|| anyhow::anyhow!("{status}"));
        if status == reqwest::StatusCode::BAD_REQUEST
            && format!("{error}").contains("batch_over_burst")
        {
            return Ok(Sent::OverBurst(error));
        }
        // 504: stored here but not yet confirmed in the regions asked for; sent again, the
        // same events are answered by idempotency and waited for once more.
        if status == reqwest::StatusCode::TOO_MANY_REQUESTS
            || status == reqwest::StatusCode::SERVICE_UNAVAILABLE
            || status == reqwest::StatusCode::GATEWAY_TIMEOUT
        {
            return Ok(Sent::Later(retry_after, error));
        }
        Err(error)
    }

    /// Publishes `lines` in order, in requests of at most `*size` events: a request
    /// refused as over the burst is split in halves (and `*size` lowered for what
    /// follows), one answered 429 / 503 is sent again after its `Retry-After` (at most
    /// [`PUBLISH_RETRIES`] times, waits of at most [`PUBLISH_RETRY_AFTER_MAX`]). Each
    /// published batch's answer goes to `done`.
    /// `before`: the events published before `lines` (a failure names the input's lines by
    /// their number among the non-blank ones).
    async fn send(
        &self,
        lines: &[String],
        before: u64,
        size: &mut usize,
        done: &mut impl FnMut(&Value),
    ) -> anyhow::Result<()> {
        let mut rest = lines;
        while !rest.is_empty() {
            let first = before + (lines.len() - rest.len()) as u64 + 1;
            let n = rest.len().min((*size).max(1));
            let failed = |e: anyhow::Error| {
                if self.single {
                    return e;
                }
                // The node names an event of the request as `event N:` or `at index N`.
                let at = format!("{e:#}");
                let index = ["at index ", "event "].into_iter().find_map(|mark| {
                    at.split(mark).skip(1).find_map(|rest| {
                        let digits: String =
                            rest.chars().take_while(char::is_ascii_digit).collect();
                        (!digits.is_empty())
                            .then(|| digits.parse::<u64>().ok())
                            .flatten()
                    })
                });
                let line = index
                    .filter(|i| *i < n as u64)
                    .map(|i| format!("; its event {i} is input line {}", first + i))
                    .unwrap_or_default();
                e.context(format!(
                    "input lines {first} to {} (counting non-blank lines) and those after them were not published; the {} before them were{line}",
                    first + n as u64 - 1,
                    first - 1
                ))
            };
            let batch: Vec<Value> = rest[..n]
                .iter()
                .map(|l| cli_event(l, self.ty, self.key))
                .collect();
            let mut attempt = 0;
            loop {
                match self.post(&batch).await.map_err(failed)? {
                    Sent::Done(body) => {
                        done(&body);
                        rest = &rest[n..];
                        break;
                    }
                    Sent::OverBurst(_) if n > 1 => {
                        *size = n / 2;
                        eprintln!(
                            "weft publish: {n} events are over the principal's rate-limit burst: sending them {} at a time",
                            *size
                        );
                        break;
                    }
                    Sent::OverBurst(e) => return Err(failed(e)),
                    Sent::Later(wait, e) => {
                        attempt += 1;
                        let wait = wait.unwrap_or(Duration::from_secs(1));
                        if attempt > PUBLISH_RETRIES {
                            return Err(failed(
                                e.context(format!("gave up after {PUBLISH_RETRIES} retries")),
                            ));
                        }
                        if wait > PUBLISH_RETRY_AFTER_MAX {
                            return Err(failed(e.context(format!(
                                "the node asks to retry in {} s: not waiting that long",
                                wait.as_secs()
                            ))));
                        }
                        eprintln!(
                            "weft publish: {e:#}; retrying in {} s ({attempt} of {PUBLISH_RETRIES})",
                            wait.as_secs_f64()
                        );
                        tokio::time::sleep(wait).await;
                    }
                }
            }
        }
        Ok(())
    }
}

/// Reads lines from `input` as they come and publishes them: a batch goes when it has
/// `batch` lines, or when `linger` passes without a new line, or at the end of input.
/// Blank lines are skipped. Returns how many lines were published.
async fn publish_lines(
    publisher: &Publisher<'_>,
    mut input: tokio::sync::mpsc::Receiver<std::io::Result<String>>,
    args: &PublishArgs,
    mut done: impl FnMut(&Value),
) -> anyhow::Result<u64> {
    let linger = Duration::from_millis(args.linger_ms);
    let batch_max = usize::try_from(args.batch).unwrap_or(usize::MAX);
    let mut size = batch_max;
    let mut published = 0u64;
    let mut ended = false;
    while !ended {
        let mut lines = Vec::new();
        while lines.len() < batch_max {
            // The first line of a batch is waited for as long as it takes; later ones for
            // the linger.
            let next = if lines.is_empty() {
                input.recv().await
            } else {
                match tokio::time::timeout(linger, input.recv()).await {
                    Ok(n) => n,
                    Err(_) => break,
                }
            };
            match next {
                None => {
                    ended = true;
                    break;
                }
                Some(line) => {
                    let line = line.context("reading standard input")?;
                    if !line.trim().is_empty() {
                        lines.push(line);
                    }
                }
            }
        }
        if !lines.is_empty() {
            publisher
                .send(&lines, published, &mut size, &mut done)
                .await?;
            published += lines.len() as u64;
        }
    }
    Ok(published)
}

/// `weft publish`: DATA, or the lines of standard input as they come.
pub(crate) fn publish(
    conn: &Conn,
    stream: &str,
    data: Option<String>,
    ack: &str,
    (key, ty): (Option<String>, &str),
    args: &PublishArgs,
) -> anyhow::Result<()> {
    // Said here, by the flag's name: the node would name the CloudEvents attribute of
    // event 0 of a batch (`type`, `weftkey`) for what the user typed as one flag.
    if ty.is_empty() {
        bail!("--type is empty: give the CloudEvents type of the events (default weft.cli)");
    }
    if key.as_deref() == Some("") {
        bail!("--key is empty: give the table key, or leave --key out for an event without one");
    }
    let rt = runtime()?;
    rt.block_on(async {
        let token = conn.token()?.context(
            "publishing needs a token: --token, WEFT_TOKEN or --token-file (weft keygen --client)",
        )?;
        let publisher = Publisher {
            client: reqwest::Client::new(),
            url: {
                let mut url = conn.endpoint(&["v1", "streams", stream, "events"])?;
                url.query_pairs_mut().append_pair("ack", ack);
                url.to_string()
            },
            token,
            ty,
            key: key.as_deref(),
            single: data.as_deref().is_some_and(|d| d != "-"),
        };
        let (tx, rx) = tokio::sync::mpsc::channel(1024);
        match data {
            Some(d) if d != "-" => {
                // An empty DATA is no event (the same as empty input), not text to note.
                if d.trim().is_empty() {
                    bail!("nothing to publish: DATA is empty (give a JSON value or text, or - to read lines from standard input)");
                }
                if let Err(e) = serde_json::from_str::<Value>(&d) {
                    eprintln!(
                        "weft publish: note: DATA is not JSON ({e}): published as text/plain"
                    );
                }
                tx.send(Ok(d)).await.ok();
                drop(tx);
            }
            _ => {
                // A thread of its own: reading standard input blocks.
                std::thread::spawn(move || {
                    for line in std::io::stdin().lock().lines() {
                        if tx.blocking_send(line).is_err() {
                            break;
                        }
                    }
                });
            }
        }
        // Once standard output is closed (`weft publish ... | head -1`) the ids are no
        // longer printed, but publishing goes on to the end of the input: `say!` would end
        // the process at the closed pipe with lines still unsent.
        let mut stdout_open = true;
        let published = publish_lines(&publisher, rx, args, |body| {
            use std::io::Write as _;
            for id in body["ids"].as_array().into_iter().flatten() {
                if stdout_open {
                    let mut out = std::io::stdout().lock();
                    stdout_open = writeln!(out, "{}", id.as_str().unwrap_or_default())
                        .and_then(|()| out.flush())
                        .is_ok();
                }
            }
            say_durable_in(body);
        })
        .await?;
        if published == 0 {
            bail!("nothing to publish (empty input)");
        }
        Ok(())
    })
}

/// `weft tail` options.
#[derive(Debug, Clone, Default, clap::Args)]
pub(crate) struct TailArgs {
    /// Start after this cursor: a token the node gave (an event's `weftcursor`, the
    /// SSE id, `weft-next-cursor`), or 0 for the beginning.
    #[arg(long, conflicts_with = "last")]
    pub(crate) after: Option<String>,
    /// Start with the newest N events (that this token may read).
    #[arg(long)]
    pub(crate) last: Option<usize>,
    /// A durable subscription name: resumes where it left off, across restarts.
    #[arg(long)]
    pub(crate) durable: Option<String>,
    /// Stop after this many events (at least 1).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub(crate) count: Option<u64>,
    /// Give up after this many seconds.
    #[arg(long)]
    pub(crate) timeout: Option<u64>,
    /// End at the first lost connection (exit status 1) instead of reconnecting.
    #[arg(long)]
    pub(crate) no_reconnect: bool,
    /// Give up (exit status 1) after this many seconds of failed reconnection attempts.
    #[arg(long, value_name = "SECS", default_value_t = 60)]
    pub(crate) reconnect_for: u64,
}

/// First wait before a reconnection; it doubles at each failure up to
/// [`RECONNECT_WAIT_MAX`].
const RECONNECT_WAIT_FIRST: Duration = Duration::from_millis(250);
/// Longest wait between reconnection attempts (a node's `Retry-After` may be longer).
const RECONNECT_WAIT_MAX: Duration = Duration::from_secs(5);
/// A connection that lasted this long, or printed an event, ends a run of failures: the
/// next loss starts the backoff and the `--reconnect-for` bound again.
const RECONNECT_HEALTHY: Duration = Duration::from_secs(5);
/// How long an acknowledgement at the end may take (after Ctrl-C, say) before tail gives
/// up on it.
const FINAL_ACK_TIMEOUT: Duration = Duration::from_secs(5);

/// Longest `weft tail` waits for anything from the node (it sends a keep-alive every 15 s)
/// before it takes the connection as lost and reconnects.
const TAIL_IDLE_MAX: Duration = Duration::from_secs(45);

/// What a tail has printed: how many events, the cursor of the last one, and the last
/// cursor a durable subscription acknowledged.
#[derive(Debug, Default)]
struct TailState {
    seen: u64,
    last_id: Option<String>,
    acked: Option<String>,
}

/// How one connection of a tail ended.
enum Ending {
    /// `--count` events printed.
    Count,
    /// `--timeout` passed.
    Timeout,
    /// SIGINT or SIGTERM: the exit status to end with.
    Signal(u8),
    /// A refusal that a reconnection would meet again (401, 403, a bad cursor...).
    Fatal(anyhow::Error),
    /// The connection failed or was lost: worth reconnecting.
    Lost {
        error: anyhow::Error,
        /// The node asked for this wait (429, 503 with `Retry-After`).
        retry_after: Option<Duration>,
        /// The connection was healthy for a while ([`RECONNECT_HEALTHY`]).
        healthy: bool,
    },
}

/// `weft tail`: prints each event as one line of CloudEvents JSON, reconnecting when the
/// connection is lost. Returns the exit status: 0, or 130 / 143 when ended by SIGINT /
/// SIGTERM (after acknowledging what was printed, for a durable subscription).
pub(crate) fn tail(conn: &Conn, stream: &str, args: &TailArgs) -> anyhow::Result<u8> {
    let rt = runtime()?;
    rt.block_on(async {
        use tokio::signal::unix::{SignalKind, signal};
        // Registered before the first connection, so a signal at any time is caught.
        let mut int = signal(SignalKind::interrupt()).context("catching SIGINT")?;
        let mut term = signal(SignalKind::terminate()).context("catching SIGTERM")?;
        let stop = async move {
            tokio::select! {
                _ = int.recv() => 130u8,
                _ = term.recv() => 143u8,
            }
        };
        follow(conn, stream, args, |line| say!("{line}"), stop).await
    })
}

/// The subscription URL for the tail's options (the first connection's; reconnections add
/// `Last-Event-ID`, which the node takes before any of these).
fn subscribe_url(conn: &Conn, stream: &str, args: &TailArgs) -> anyhow::Result<String> {
    let mut url = conn.endpoint(&["v1", "streams", stream, "subscribe"])?;
    {
        let mut q = url.query_pairs_mut();
        if let Some(a) = &args.after {
            q.append_pair("after", a);
        }
        if let Some(n) = args.last {
            q.append_pair("last", &n.to_string());
        }
        if let Some(d) = &args.durable {
            q.append_pair("durable", d);
        }
    }
    if url.query() == Some("") {
        url.set_query(None);
    }
    Ok(url.to_string())
}

/// Acknowledges the last event printed on a durable subscription, if not yet.
async fn ack_printed(
    client: &reqwest::Client,
    conn: &Conn,
    stream: &str,
    args: &TailArgs,
    token: Option<&str>,
    st: &mut TailState,
) -> anyhow::Result<()> {
    let (Some(name), Some(cursor)) = (&args.durable, &st.last_id) else {
        return Ok(());
    };
    if st.acked.as_ref() == Some(cursor) {
        return Ok(());
    }
    let mut url = conn.endpoint(&["v1", "streams", stream, "subscriptions", name, "ack"])?;
    url.query_pairs_mut().append_pair("cursor", cursor);
    let url = url.to_string();
    let resp = client
        .post(&url)
        .bearer_auth(token.unwrap_or_default())
        .send()
        .await
        .with_context(|| format!("POST {url}"))?;
    check(resp).await?;
    st.acked = Some(cursor.clone());
    Ok(())
}

/// The tail itself, printing through `out`; `stop` resolves to an exit status when the
/// tail is to end (a signal).
async fn follow(
    conn: &Conn,
    stream: &str,
    args: &TailArgs,
    mut out: impl FnMut(&str),
    stop: impl std::future::Future<Output = u8>,
) -> anyhow::Result<u8> {
    let client = reqwest::Client::new();
    let url = subscribe_url(conn, stream, args)?;
    // A node enforcing a policy authorizes subscriptions: send the token when given.
    let token = conn.token()?;
    if args.durable.is_some() && token.is_none() {
        bail!(
            "a durable tail acknowledges what it printed and needs a token: --token, WEFT_TOKEN or --token-file"
        );
    }
    let mut st = TailState::default();
    let deadline = args
        .timeout
        .map(|s| tokio::time::Instant::now() + Duration::from_secs(s));
    let give_up_after = Duration::from_secs(args.reconnect_for);
    tokio::pin!(stop);
    // The start of the current run of failures, and the next wait.
    let mut failing: Option<(tokio::time::Instant, Duration)> = None;
    loop {
        let ended = session(
            &client,
            conn,
            (stream, &url),
            args,
            token.as_deref(),
            &mut st,
            &mut out,
            deadline,
            stop.as_mut(),
        )
        .await;
        let ack = async |st: &mut TailState| {
            tokio::time::timeout(
                FINAL_ACK_TIMEOUT,
                ack_printed(&client, conn, stream, args, token.as_deref(), st),
            )
            .await
            .unwrap_or_else(|_| Err(anyhow::anyhow!("no answer in {FINAL_ACK_TIMEOUT:?}")))
            .context("acknowledging what was printed (the next tail of this subscription prints it again)")
        };
        let (error, retry_after) = match ended {
            Ending::Count => {
                ack(&mut st).await?;
                return Ok(0);
            }
            Ending::Timeout => {
                ack(&mut st).await?;
                bail!("timed out after {} events", st.seen)
            }
            Ending::Signal(code) => {
                ack(&mut st).await?;
                return Ok(code);
            }
            Ending::Fatal(e) => return Err(e),
            Ending::Lost {
                error,
                retry_after,
                healthy,
            } => {
                if args.no_reconnect {
                    return Err(error);
                }
                if healthy {
                    failing = None;
                }
                (error, retry_after)
            }
        };
        let now = tokio::time::Instant::now();
        let (since, wait) = failing.get_or_insert((now, RECONNECT_WAIT_FIRST));
        if now.duration_since(*since) >= give_up_after {
            bail!(
                "gave up reconnecting to {} after {} s of failures ({} event(s) printed): {error:#}",
                conn.node,
                args.reconnect_for,
                st.seen
            );
        }
        let this_wait = retry_after.unwrap_or(*wait);
        *wait = (*wait * 2).min(RECONNECT_WAIT_MAX);
        eprintln!(
            "weft tail: {error:#}; reconnecting in {:.1} s{} (giving up after {} s of failures)",
            this_wait.as_secs_f64(),
            match st.seen {
                0 => String::new(),
                n => format!(", resuming after the last of {n} event(s) printed"),
            },
            args.reconnect_for
        );
        let at_deadline = async {
            match deadline {
                Some(d) => tokio::time::sleep_until(d).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            biased;
            code = &mut stop => {
                ack(&mut st).await?;
                return Ok(code);
            }
            () = at_deadline => {
                ack(&mut st).await?;
                bail!("timed out after {} events", st.seen)
            }
            () = tokio::time::sleep(this_wait) => {}
        }
    }
}

/// One connection of a tail: connects (resuming after the last event printed, with
/// `Last-Event-ID`), prints what arrives, and says how it ended.
#[allow(clippy::too_many_arguments)]
async fn session(
    client: &reqwest::Client,
    conn: &Conn,
    (stream, url): (&str, &str),
    args: &TailArgs,
    token: Option<&str>,
    st: &mut TailState,
    out: &mut impl FnMut(&str),
    deadline: Option<tokio::time::Instant>,
    mut stop: std::pin::Pin<&mut impl std::future::Future<Output = u8>>,
) -> Ending {
    let lost = |error: anyhow::Error, retry_after: Option<Duration>, healthy: bool| Ending::Lost {
        error,
        retry_after,
        healthy,
    };
    let at_deadline = async {
        match deadline {
            Some(d) => tokio::time::sleep_until(d).await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(at_deadline);
    let mut req = client.get(url);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    if let Some(id) = &st.last_id {
        req = req.header("last-event-id", id);
    }
    let sent = tokio::select! {
        biased;
        code = &mut stop => return Ending::Signal(code),
        () = &mut at_deadline => return Ending::Timeout,
        r = req.send() => r,
    };
    let resp = match sent {
        Ok(r) => r,
        Err(e) => {
            return lost(
                anyhow::Error::new(e).context(format!("GET {url}")),
                None,
                false,
            );
        }
    };
    let status = resp.status();
    if !status.is_success() {
        let retry_after = resp
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok()?.trim().parse::<u64>().ok())
            .map(|s| Duration::from_secs(s.min(60)));
        let error = check(resp)
            .await
            .err()
            .unwrap_or_else(|| anyhow::anyhow!("{status}"));
        // 507 (the node's table of durable positions is full) does not pass by waiting.
        return if status == reqwest::StatusCode::TOO_MANY_REQUESTS
            || status.is_server_error() && status != reqwest::StatusCode::INSUFFICIENT_STORAGE
        {
            lost(error, retry_after, false)
        } else {
            Ending::Fatal(error)
        };
    }
    let started = tokio::time::Instant::now();
    let seen_before = st.seen;
    let healthy = |st: &TailState| st.seen > seen_before || started.elapsed() >= RECONNECT_HEALTHY;
    let mut body = resp.bytes_stream();
    let mut buf = Vec::new();
    loop {
        let next = tokio::select! {
            biased;
            code = &mut stop => return Ending::Signal(code),
            () = &mut at_deadline => return Ending::Timeout,
            // The node sends a comment every 15 s: three missed, and the connection is
            // taken as lost (one whose host vanished sends no reset, and would be waited
            // on for ever).
            n = tokio::time::timeout(TAIL_IDLE_MAX, body.next()) => match n {
                Ok(n) => n,
                Err(_) => {
                    return lost(
                        anyhow::anyhow!(
                            "no data or keep-alive from the node for {} s",
                            TAIL_IDLE_MAX.as_secs()
                        ),
                        None,
                        healthy(st),
                    );
                }
            },
        };
        let chunk = match next {
            None => {
                return lost(
                    anyhow::anyhow!("the node ended the event stream"),
                    None,
                    healthy(st),
                );
            }
            Some(Err(e)) => {
                return lost(
                    anyhow::Error::new(e).context("reading the event stream"),
                    None,
                    healthy(st),
                );
            }
            Some(Ok(c)) => c,
        };
        buf.extend_from_slice(&chunk);
        while let Some(end) = buf.windows(2).position(|w| w == b"\n\n") {
            let frame: Vec<u8> = buf.drain(..end + 2).collect();
            let text = String::from_utf8_lossy(&frame).into_owned();
            let id = text
                .lines()
                .find_map(|l| l.strip_prefix("id:"))
                .map(|i| i.trim().to_string());
            let mut data_lines = 0;
            for line in text.lines() {
                if let Some(data) = line.strip_prefix("data:") {
                    out(data.trim_start());
                    st.seen += 1;
                    data_lines += 1;
                    if id.is_some() {
                        st.last_id.clone_from(&id);
                    }
                }
            }
            // An id without data: where the stream starts (`--last N` on a stream with
            // fewer new events), to resume from there rather than ask for the newest N
            // again and miss what came in between.
            if data_lines == 0 && id.is_some() {
                st.last_id = id;
            }
            if args.count.is_some_and(|c| st.seen >= c) {
                return Ending::Count;
            }
            // Durable subscriptions are at-least-once: acknowledge what was printed every
            // 100 events (and when tail ends).
            if data_lines > 0 && st.seen.is_multiple_of(100) {
                let acked = tokio::select! {
                    biased;
                    code = &mut stop => return Ending::Signal(code),
                    a = tokio::time::timeout(
                        FINAL_ACK_TIMEOUT,
                        ack_printed(client, conn, stream, args, token, st),
                    ) => a.unwrap_or_else(|_| {
                        Err(anyhow::anyhow!("no answer to an ack in {FINAL_ACK_TIMEOUT:?}"))
                    }),
                };
                if let Err(e) = acked {
                    return lost(e, None, healthy(st));
                }
            }
        }
    }
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
pub(crate) fn routes(conn: &Conn, json: bool) -> anyhow::Result<()> {
    let v = runtime()?.block_on(get_json(conn, "/v1/mesh/routes"))?;
    if json {
        say!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    say!(
        "from {} (one-way latency estimates, ms; `weft peers` shows round trips)",
        v["from"].as_str().unwrap_or("")
    );
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
pub(crate) fn status(conn: &Conn, json: bool) -> anyhow::Result<()> {
    let v = runtime()?.block_on(get_json(conn, "/v1/status"))?;
    if json {
        say!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
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
    // Whether it takes clients (`/readyz`), and why not: a node waiting for its first policy
    // bundle shows policy_epoch 0 like a node without a policy.
    match (v["ready"].as_bool(), v["not_ready"].as_str()) {
        (Some(true), _) => say!("{:<14} yes", "ready"),
        (Some(false), why) => say!("{:<14} no: {}", "ready", why.unwrap_or("unknown")),
        (None, _) => {}
    }
    // A start whose wait for its own numbering found no member answering: numbered past a
    // wall-clock floor (peers take the numbers skipped as lost, once).
    if let Some(floor) = v["own_numbers_floor"].as_u64() {
        say!(
            "{:<14} past the wall-clock floor {floor}: no member confirmed this node's own numbering at its start",
            "numbering"
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
            .body(bytes.clone())
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
    // The digest `weft policy status --expect-digest` compares: of the canonical bundle
    // the signatures cover, as the node reports it (GET /v1/policy `bundle_sha256`).
    let digest = weft_policy::SignedBundle::decode(&bytes).ok().map(|s| {
        use sha2::Digest as _;
        hex::encode(sha2::Sha256::digest(&s.bundle))
    });
    if let Some(d) = &digest {
        say!("bundle sha256 {d}");
    }
    say!(
        "follow it with: weft policy status --node {} --expect {}{}",
        conn.node,
        v["epoch"],
        digest.map_or(String::new(), |d| format!(" --expect-digest {d}"))
    );
    Ok(())
}

/// The rows of `weft policy status`: every node of the contacted node's gossiped view,
/// except that the contacted node's own row (`me` of `/v1/mesh/nodes`) takes its epoch
/// from its own state (`/v1/policy`), not from gossip about itself, which can lag a push it
/// just applied. Added when the view does not list it.
fn policy_rows(policy: &Value, nodes: &Value, status: &Value) -> Vec<Value> {
    let me = nodes["me"]
        .as_str()
        .or(status["key"].as_str())
        .unwrap_or("");
    let own_epoch = policy["epoch"].clone();
    let mut rows: Vec<Value> = nodes["nodes"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|n| {
            let own = !me.is_empty() && n["key"].as_str() == Some(me);
            serde_json::json!({
                "name": n["name"], "key": n["key"], "region": n["region"],
                "jurisdiction": n["jurisdiction"],
                "alive": if own { Value::Bool(true) } else { n["alive"].clone() },
                "policy_epoch": if own { own_epoch.clone() } else { n["policy_epoch"].clone() },
                "age_ms": if own { Value::from(0) } else { n["age_ms"].clone() },
                "this_node": own,
            })
        })
        .collect();
    if !me.is_empty() && !rows.iter().any(|r| r["this_node"] == true) {
        rows.insert(
            0,
            serde_json::json!({
                "name": status["name"], "key": me, "region": status["region"],
                "jurisdiction": status["jurisdiction"], "alive": true,
                "policy_epoch": own_epoch, "age_ms": 0, "this_node": true,
            }),
        );
    }
    rows
}

/// `weft policy status`: the policy epoch of every node the contacted node knows of (its
/// gossiped fabric view; its own row from its own state). With `expect`, fails unless
/// every live node has that epoch; with `expect_digest`, unless the contacted node
/// enforces the bundle of that SHA-256.
pub(crate) fn policy_status(
    conn: &Conn,
    json: bool,
    expect: Option<u64>,
    expect_digest: Option<&str>,
) -> anyhow::Result<bool> {
    let (policy, nodes, status) = runtime()?.block_on(async {
        let policy = get_json(conn, "/v1/policy").await?;
        let nodes = get_json(conn, "/v1/mesh/nodes").await?;
        let status = get_json(conn, "/v1/status").await?;
        anyhow::Ok((policy, nodes, status))
    })?;
    let list = policy_rows(&policy, &nodes, &status);
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
    let digest = policy["bundle_sha256"].as_str();
    let digest_ok = expect_digest
        .is_none_or(|want| digest.is_some_and(|d| d.eq_ignore_ascii_case(want.trim())));
    if json {
        say!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "node": policy,
                "newest_epoch": newest,
                "expected_epoch": target,
                "expected_bundle_sha256": expect_digest,
                "bundle_sha256_matches": digest_ok,
                "live_nodes": live().count(),
                "not_at_expected": behind,
                "nodes": list,
            }))?
        );
    } else {
        let signers = policy["signers"].as_array().map_or(0, std::vec::Vec::len);
        say!(
            "{}: epoch {} ({} signer(s)), bundle sha256 {}",
            conn.node,
            policy["epoch"],
            signers,
            digest.unwrap_or("-")
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
                "{:<16} {:<28} {:<8} {:>6}  {:<8} {:>8}{}",
                n["name"].as_str().unwrap_or(""),
                n["region"].as_str().unwrap_or(""),
                n["jurisdiction"].as_str().unwrap_or(""),
                epoch,
                state,
                format!("{:.1}", n["age_ms"].as_f64().unwrap_or(0.0) / 1000.0),
                if n["this_node"] == true {
                    "  (this node: its own state)"
                } else {
                    ""
                }
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
        if let Some(want) = expect_digest {
            say!(
                "bundle sha256 of {}: {} (expected {want})",
                conn.node,
                if digest_ok { "matches" } else { "DIFFERS" }
            );
        }
    }
    Ok(behind == 0 && digest_ok)
}

/// The URL of a table or one of its keys (the key percent-encoded as one path segment).
fn table_url(conn: &Conn, stream: &str, key: Option<&str>) -> anyhow::Result<reqwest::Url> {
    match key {
        Some(k) => conn.endpoint(&["v1", "tables", stream, k]),
        None => conn.endpoint(&["v1", "tables", stream]),
    }
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
            // Keys come in byte order: a next page starts after the last, never at it.
            Some(Value::String(next)) if args.all => {
                if after
                    .as_ref()
                    .is_some_and(|a| next.as_bytes() <= a.as_bytes())
                {
                    bail!(
                        "the node's next page would start at {next:?}, not after {after:?}: stopped"
                    );
                }
                after = Some(next);
            }
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
            if l.keys.is_empty() && l.more_after.is_none() {
                eprintln!(
                    "({stream} has no keys{})",
                    if list.after.is_some() || list.prefix.is_some() {
                        " in that range"
                    } else {
                        ""
                    }
                );
            }
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
            bail!(
                "node answered {status}: {}: {}",
                v["error"]["reason"].as_str().unwrap_or("not_found"),
                v["error"]["message"].as_str().unwrap_or("")
            );
        }
        anyhow::Ok((status, check(resp).await?.json::<Value>().await?))
    })?;
    if json {
        say!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(status.is_success());
    }
    if !status.is_success() {
        // On stderr, as every error: `v=$(weft get ...)` must not take it for the value.
        eprintln!(
            "weft get: {}{}",
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
    // The operation meant, so that a table of another strategy refuses it (`wrong_op`)
    // rather than storing `{"add": 5}` as an lww value.
    let op = match &write {
        None => None,
        Some(TableWrite::Value(..)) => Some("value"),
        Some(TableWrite::Add(_)) => Some("add"),
        Some(TableWrite::Insert(_)) => Some("insert"),
        Some(TableWrite::Remove(_)) => Some("remove"),
    };
    if let Some(op) = op {
        url.query_pairs_mut().append_pair("op", op);
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
    // As `weft publish` prints: the write's event id on stdout (for a script to keep), the
    // regions it is durable in on stderr.
    for id in v["ids"].as_array().into_iter().flatten() {
        say!("{}", id.as_str().unwrap_or_default());
    }
    say_durable_in(&v);
    Ok(())
}

/// The `durable in: REGION, ...` line on stderr for a publish's or table write's answer
/// (nothing when it names no region).
fn say_durable_in(answer: &Value) {
    if let Some(regions) = answer["regions"].as_array()
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

/// `weft subscriptions`: the caller's durable subscriptions on the node (stream, name,
/// position), or with `delete = Some((stream, name))` forgets one of them.
pub(crate) fn subscriptions(
    conn: &Conn,
    delete: Option<&[String]>,
    json: bool,
) -> anyhow::Result<()> {
    let token = conn.token()?.context(
        "durable subscriptions belong to a principal: give its token (--token, WEFT_TOKEN or --token-file)",
    )?;
    runtime()?.block_on(async {
        let http = reqwest::Client::new();
        if let Some([stream, name]) = delete {
            let url = conn.endpoint(&["v1", "streams", stream, "subscriptions", name])?;
            let resp = http
                .delete(url.clone())
                .bearer_auth(&token)
                .send()
                .await
                .with_context(|| format!("DELETE {url}"))?;
            check(resp).await?;
            say!("deleted durable subscription {name} on {stream}");
            return Ok(());
        }
        let url = conn.url("/v1/subscriptions");
        let resp = http
            .get(&url)
            .bearer_auth(&token)
            .send()
            .await
            .with_context(|| format!("GET {url}"))?;
        let v: Value = check(resp).await?.json().await?;
        if json {
            say!("{}", serde_json::to_string_pretty(&v)?);
            return Ok(());
        }
        let held = v["subscriptions"].as_array().cloned().unwrap_or_default();
        say!(
            "{} durable subscription(s) of principal {} on this node",
            held.len(),
            v["principal"].as_str().unwrap_or("?")
        );
        if !held.is_empty() {
            say!("{:<32} {:<24} CURSOR", "STREAM", "NAME");
        }
        for h in &held {
            say!(
                "{:<32} {:<24} {}",
                h["stream"].as_str().unwrap_or(""),
                h["name"].as_str().unwrap_or(""),
                h["cursor"].as_str().unwrap_or("")
            );
        }
        if v["truncated"] == true {
            eprintln!(
                "more are held than listed (limits.cursors_per_principal_max was lowered since): delete some to see the rest"
            );
        }
        anyhow::Ok(())
    })
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
    if let (Some(reason), Some(held)) = (&args.reason, v["reasons_in_log"].as_array()) {
        let held: Vec<&str> = held.iter().filter_map(Value::as_str).collect();
        eprintln!(
            "no entry of this log has reason {reason:?}; the reasons it holds: {}",
            if held.is_empty() {
                "none (the log is empty)".to_string()
            } else {
                held.join(", ")
            }
        );
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
    // A token given on the command line is not echoed: the hint may end up in a log.
    for i in 0..args.len() {
        if args[i] == "--token" && i + 1 < args.len() {
            args[i + 1] = "TOKEN".into();
        } else if args[i].starts_with("--token=") {
            args[i] = "--token=TOKEN".into();
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

    /// Serves `app` on a free loopback port: the base URL, and the server's task.
    async fn stand_in(app: axum::Router) -> (String, tokio::task::JoinHandle<()>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let node = format!("http://{}", listener.local_addr().unwrap());
        let server = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        (node, server)
    }

    /// `--node` takes an http URL with a host and nothing after its path; the mistakes
    /// users make (no scheme, https, a query) are said at the start, not per request.
    #[test]
    fn a_node_url_is_checked_when_given() {
        assert_eq!(
            node_url("http://127.0.0.1:8400/").unwrap(),
            "http://127.0.0.1:8400"
        );
        assert_eq!(node_url("http://h:1/weft").unwrap(), "http://h:1/weft");
        let bare = node_url("127.0.0.1:8400").unwrap_err();
        assert!(bare.contains("http://127.0.0.1:8400"), "{bare}");
        let tls = node_url("https://127.0.0.1:8400").unwrap_err();
        assert!(
            tls.contains("plain http") && tls.contains("http://127.0.0.1:8400"),
            "{tls}"
        );
        assert!(node_url("http://h:1/?x=1").unwrap_err().contains("query"));
        assert!(node_url("http://h:1/#f").unwrap_err().contains("fragment"));
        assert!(
            node_url("http://u:pw@h:1")
                .unwrap_err()
                .contains("bearer token")
        );
        assert!(node_url("http://u@h:1").unwrap_err().contains("no user"));
        assert!(node_url("nonsense").is_err());
        // No "://" in what was typed (a panic before, slicing past its end).
        for odd in ["https:x", "ftp:h", "https:x\u{e9}"] {
            assert!(node_url(odd).is_err(), "{odd}");
        }
    }

    /// A stream name, pattern, key or subscription name is one path segment whatever it
    /// holds: a `/`, `%`, `?`, `#` or `..` in it cannot move the request to another path or
    /// stream (before, `orders%2Eeu` published to `orders.eu`, and `a/../../v1/x` walked
    /// the path).
    #[test]
    fn names_are_one_path_segment_each() {
        let conn = Conn {
            node: "http://127.0.0.1:8400".into(),
            token: None,
            token_file: None,
        };
        let path = |segments: &[&str]| conn.endpoint(segments).unwrap().path().to_string();
        assert_eq!(
            path(&["v1", "streams", "orders.eu", "events"]),
            "/v1/streams/orders.eu/events"
        );
        assert_eq!(
            path(&["v1", "streams", "orders%2Eeu", "events"]),
            "/v1/streams/orders%252Eeu/events"
        );
        assert_eq!(
            path(&["v1", "streams", "orders/eu", "events"]),
            "/v1/streams/orders%2Feu/events"
        );
        assert_eq!(
            path(&["v1", "streams", "orders.>", "subscribe"]),
            "/v1/streams/orders.%3E/subscribe"
        );
        let dots = conn.endpoint(&["v1", "tables", "kv", ".."]).unwrap_err();
        assert!(format!("{dots}").contains("cannot be sent"), "{dots}");
        let empty = conn.endpoint(&["v1", "tables", "kv", ""]).unwrap_err();
        assert!(format!("{empty}").contains("empty name"), "{empty}");
        assert_eq!(
            path(&["v1", "streams", "a?b#c", "events"]),
            "/v1/streams/a%3Fb%23c/events"
        );
        let behind = Conn {
            node: "http://h:1/weft".into(),
            ..conn.clone()
        };
        assert_eq!(
            behind.endpoint(&["v1", "status"]).unwrap().path(),
            "/weft/v1/status"
        );
    }

    /// `--token` before `--token-file` before `WEFT_TOKEN`; an empty `WEFT_TOKEN` is no
    /// token, an empty token file an error. Before, WEFT_TOKEN (even empty) overrode an
    /// explicit `--token-file`.
    #[test]
    fn an_explicit_token_comes_before_the_environment() {
        let dir = std::env::temp_dir().join(format!("weft-token-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("t.token");
        std::fs::write(&file, "weft_file\n").unwrap();
        let env = || Some("weft_env".to_string());
        let pick = |flag, file, env| pick_token(flag, file, env).unwrap();
        assert_eq!(
            pick(Some("weft_flag"), Some(file.as_path()), env()).as_deref(),
            Some("weft_flag")
        );
        assert_eq!(
            pick(None, Some(file.as_path()), env()).as_deref(),
            Some("weft_file")
        );
        assert_eq!(
            pick(None, Some(file.as_path()), Some(String::new())).as_deref(),
            Some("weft_file")
        );
        assert_eq!(pick(None, None, env()).as_deref(), Some("weft_env"));
        assert_eq!(pick(None, None, Some(" ".into())), None);
        assert_eq!(pick(None, None, None), None);
        std::fs::write(&file, "\n").unwrap();
        let empty = pick_token(None, Some(file.as_path()), env()).unwrap_err();
        assert!(format!("{empty}").contains("is empty"), "{empty}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

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
        stand_in(app).await
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

    /// A stand-in node serving `GET /v1/streams/s/subscribe` as SSE: events `1`..`10` with
    /// ids `c1`..`c10`, resuming after `Last-Event-ID`. The first connection breaks after
    /// `break_after` events (as a node killed with -9 leaves it: the body cut short, an
    /// error in the client); later ones send what remains and stay open. Acks are
    /// recorded; so is every connection's `Last-Event-ID`.
    struct FakeSse {
        node: String,
        acks: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
        resumed: std::sync::Arc<std::sync::Mutex<Vec<Option<String>>>>,
        server: tokio::task::JoinHandle<()>,
    }

    async fn fake_sse(break_after: usize) -> FakeSse {
        use axum::extract::Query;
        use std::collections::HashMap;
        use std::sync::{Arc, Mutex};
        let acks = Arc::new(Mutex::new(Vec::new()));
        let resumed: Arc<Mutex<Vec<Option<String>>>> = Arc::new(Mutex::new(Vec::new()));
        let (acks2, resumed2) = (acks.clone(), resumed.clone());
        let app = axum::Router::new()
            .route(
                "/v1/streams/s/subscribe",
                axum::routing::get(move |headers: axum::http::HeaderMap| {
                    let resumed = resumed2.clone();
                    async move {
                        let from = headers
                            .get("last-event-id")
                            .map(|v| v.to_str().unwrap().to_string());
                        let first = {
                            let mut r = resumed.lock().unwrap();
                            r.push(from.clone());
                            r.len() == 1
                        };
                        let start: usize = from.map_or(0, |c| c[1..].parse().unwrap());
                        // Where it starts first, an id without data, as the node sends it
                        // for `last=N`.
                        let frames: Vec<Result<bytes::Bytes, std::io::Error>> =
                            std::iter::once(Ok(format!("id: c{start}\n\n").into()))
                                .chain(
                                    (start + 1..=10)
                                        .take(if first { break_after } else { usize::MAX })
                                        .map(|i| {
                                            Ok(format!("id: c{i}\ndata: {{\"n\":{i}}}\n\n").into())
                                        }),
                                )
                                .collect();
                        let tail = futures_util::stream::once(async move {
                            if first {
                                // Sent first, then the connection dies.
                                tokio::time::sleep(Duration::from_millis(200)).await;
                                Err(std::io::Error::other("killed"))
                            } else {
                                std::future::pending().await
                            }
                        });
                        axum::body::Body::from_stream(
                            futures_util::stream::iter(frames).chain(tail),
                        )
                    }
                }),
            )
            .route(
                "/v1/streams/s/subscriptions/d/ack",
                axum::routing::post(move |Query(q): Query<HashMap<String, String>>| {
                    let acks = acks2.clone();
                    async move {
                        acks.lock().unwrap().push(q["cursor"].clone());
                        axum::Json(serde_json::json!({"cursor": q["cursor"]}))
                    }
                }),
            );
        let (node, server) = stand_in(app).await;
        FakeSse {
            node,
            acks,
            resumed,
            server,
        }
    }

    fn conn_to(node: &str) -> Conn {
        Conn {
            node: node.to_string(),
            token: Some("t".into()),
            token_file: None,
        }
    }

    /// A lost connection used to end the tail with an error: it reconnects, resuming after
    /// the last event printed, so every event prints once.
    #[tokio::test]
    async fn tail_reconnects_and_resumes_after_the_last_event_printed() {
        let fake = fake_sse(3).await;
        let mut lines = Vec::new();
        let args = TailArgs {
            count: Some(10),
            timeout: Some(20),
            reconnect_for: 10,
            ..TailArgs::default()
        };
        let code = follow(
            &conn_to(&fake.node),
            "s",
            &args,
            |l| lines.push(l.to_string()),
            std::future::pending(),
        )
        .await
        .unwrap();
        assert_eq!(code, 0);
        let want: Vec<String> = (1..=10).map(|i| format!("{{\"n\":{i}}}")).collect();
        assert_eq!(lines, want);
        assert_eq!(
            *fake.resumed.lock().unwrap(),
            vec![None, Some("c3".to_string())]
        );
        // --no-reconnect keeps the old ending: an error at the first loss.
        let fake = fake_sse(3).await;
        let args = TailArgs {
            no_reconnect: true,
            ..args
        };
        let e = follow(
            &conn_to(&fake.node),
            "s",
            &args,
            |_| {},
            std::future::pending(),
        )
        .await
        .unwrap_err();
        assert!(
            format!("{e:#}").contains("reading the event stream"),
            "{e:#}"
        );
        fake.server.abort();
    }

    /// A tail whose connection died before it printed anything resumed with no position
    /// and asked for `last=N` again, missing what came in between beyond N: it resumes
    /// from where the stream started (the id without data the node sends first).
    #[tokio::test]
    async fn tail_lost_before_printing_resumes_from_where_its_stream_started() {
        let fake = fake_sse(0).await;
        let mut lines = Vec::new();
        let args = TailArgs {
            count: Some(10),
            timeout: Some(20),
            reconnect_for: 10,
            ..TailArgs::default()
        };
        let code = follow(
            &conn_to(&fake.node),
            "s",
            &args,
            |l| lines.push(l.to_string()),
            std::future::pending(),
        )
        .await
        .unwrap();
        assert_eq!(code, 0);
        assert_eq!(lines.len(), 10, "{lines:?}");
        assert_eq!(
            *fake.resumed.lock().unwrap(),
            vec![None, Some("c0".to_string())]
        );
        fake.server.abort();
    }

    /// A node that stays down: bounded attempts, then an error that says so.
    #[tokio::test]
    async fn tail_gives_up_after_its_reconnection_bound() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let node = format!("http://{}", listener.local_addr().unwrap());
        drop(listener);
        let args = TailArgs {
            reconnect_for: 1,
            ..TailArgs::default()
        };
        let started = std::time::Instant::now();
        let e = follow(&conn_to(&node), "s", &args, |_| {}, std::future::pending())
            .await
            .unwrap_err();
        assert!(format!("{e:#}").contains("gave up reconnecting"), "{e:#}");
        assert!(started.elapsed() < Duration::from_secs(5));
    }

    /// SIGINT / SIGTERM used to end a durable tail without acknowledging what it printed:
    /// the next tail printed it again. The stop acknowledges the last event printed first.
    #[tokio::test]
    async fn a_stopped_durable_tail_acknowledges_what_it_printed() {
        let fake = fake_sse(usize::MAX).await;
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let mut tx = Some(tx);
        let mut printed = 0;
        let args = TailArgs {
            durable: Some("d".into()),
            timeout: Some(20),
            reconnect_for: 10,
            ..TailArgs::default()
        };
        let code = follow(
            &conn_to(&fake.node),
            "s",
            &args,
            |_| {
                printed += 1;
                if printed == 5 {
                    tx.take().unwrap().send(()).unwrap();
                }
            },
            async {
                rx.await.unwrap();
                130
            },
        )
        .await
        .unwrap();
        assert_eq!(code, 130);
        assert!(printed >= 5);
        assert_eq!(*fake.acks.lock().unwrap(), vec![format!("c{printed}")]);
        fake.server.abort();
    }

    /// Right after a push the contacted node's gossip about itself can still say the old
    /// epoch: its own row comes from its own state, so it is not shown behind.
    #[test]
    fn policy_status_takes_the_asked_nodes_row_from_its_own_state() {
        let policy = serde_json::json!({"epoch": 5, "bundle_sha256": "ab"});
        let status =
            serde_json::json!({"key": "k1", "name": "eu-1", "region": "r", "jurisdiction": "EU"});
        let nodes = serde_json::json!({"me": "k1", "nodes": [
            {"name": "eu-1", "key": "k1", "alive": true, "policy_epoch": 4, "age_ms": 900},
            {"name": "us-1", "key": "k2", "alive": true, "policy_epoch": 5, "age_ms": 100},
        ]});
        let rows = policy_rows(&policy, &nodes, &status);
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0]["policy_epoch"], 5);
        assert_eq!(rows[0]["this_node"], true);
        assert_eq!(rows[1]["policy_epoch"], 5);
        // Not in the gossiped view at all: added from /v1/status.
        let nodes = serde_json::json!({"me": "k1", "nodes": [
            {"name": "us-1", "key": "k2", "alive": true, "policy_epoch": 5, "age_ms": 100},
        ]});
        let rows = policy_rows(&policy, &nodes, &status);
        assert_eq!(rows.len(), 2);
        assert_eq!(
            (rows[0]["name"].as_str(), rows[0]["policy_epoch"].as_u64()),
            (Some("eu-1"), Some(5))
        );
    }

    /// A stand-in node taking `POST /v1/streams/s/events` under a burst of 3: a larger
    /// batch is 400 `batch_over_burst`; request number `busy_at` (from 1) is answered 429
    /// with `Retry-After: 1` once. Records each accepted batch's data.
    async fn fake_publish(
        busy_at: usize,
    ) -> (
        String,
        std::sync::Arc<std::sync::Mutex<Vec<Vec<Value>>>>,
        tokio::task::JoinHandle<()>,
    ) {
        use std::sync::{Arc, Mutex};
        let got: Arc<Mutex<Vec<Vec<Value>>>> = Arc::new(Mutex::new(Vec::new()));
        let calls = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let got2 = got.clone();
        let app = axum::Router::new().route(
            "/v1/streams/s/events",
            axum::routing::post(move |body: axum::body::Bytes| {
                let (got, calls) = (got2.clone(), calls.clone());
                async move {
                    use axum::response::IntoResponse as _;
                    let call = calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
                    let batch: Vec<Value> = serde_json::from_slice(&body).unwrap();
                    if call == busy_at {
                        return (
                            axum::http::StatusCode::TOO_MANY_REQUESTS,
                            [("retry-after", "1")],
                            axum::Json(serde_json::json!({"error": {"reason": "rate_limited", "message": "over"}})),
                        )
                            .into_response();
                    }
                    if batch.len() > 3 {
                        return (
                            axum::http::StatusCode::BAD_REQUEST,
                            axum::Json(serde_json::json!({"error": {"reason": "batch_over_burst", "message": "burst 3"}})),
                        )
                            .into_response();
                    }
                    let ids: Vec<String> = batch.iter().map(|e| e["id"].as_str().unwrap().to_string()).collect();
                    got.lock().unwrap().push(batch.iter().map(|e| e["data"].clone()).collect());
                    axum::Json(serde_json::json!({"ids": ids})).into_response()
                }
            }),
        );
        let (node, server) = stand_in(app).await;
        (node, got, server)
    }

    fn publisher(node: &str) -> Publisher<'static> {
        Publisher {
            client: reqwest::Client::new(),
            url: format!("{node}/v1/streams/s/events?ack=local"),
            token: "t".into(),
            ty: "weft.cli",
            key: None,
            single: false,
        }
    }

    /// Input used to be read to its end before anything was sent: a line followed by a
    /// pause is published during the pause (after the linger), not after it.
    #[tokio::test]
    async fn publish_sends_what_it_has_after_the_linger() {
        let (node, got, server) = fake_publish(0).await;
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        let args = PublishArgs {
            batch: 100,
            linger_ms: 100,
        };
        let task =
            tokio::spawn(async move { publish_lines(&publisher(&node), rx, &args, |_| {}).await });
        tx.send(Ok("{\"n\":1}".to_string())).await.unwrap();
        tokio::time::sleep(Duration::from_millis(600)).await;
        assert_eq!(
            *got.lock().unwrap(),
            vec![vec![serde_json::json!({"n": 1})]],
            "not sent during the pause"
        );
        tx.send(Ok("{\"n\":2}".to_string())).await.unwrap();
        drop(tx);
        assert_eq!(task.await.unwrap().unwrap(), 2);
        assert_eq!(got.lock().unwrap().len(), 2);
        server.abort();
    }

    /// Under a burst of 3, 5 lines used to be one request refused 400
    /// `batch_over_burst`: the batch is split down, and a 429 is retried after its
    /// Retry-After; every line is published once, in order.
    #[tokio::test]
    async fn publish_splits_over_the_burst_and_honours_retry_after() {
        let (node, got, server) = fake_publish(3).await;
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        for n in 1..=5 {
            tx.send(Ok(format!("{{\"n\":{n}}}"))).await.unwrap();
        }
        drop(tx);
        let args = PublishArgs {
            batch: 100,
            linger_ms: 100,
        };
        let mut answers = 0;
        let n = publish_lines(&publisher(&node), rx, &args, |_| answers += 1)
            .await
            .unwrap();
        assert_eq!(n, 5);
        let got = got.lock().unwrap().clone();
        let flat: Vec<Value> = got.iter().flatten().cloned().collect();
        let want: Vec<Value> = (1..=5).map(|n| serde_json::json!({"n": n})).collect();
        assert_eq!(flat, want);
        assert!(got.iter().all(|b| b.len() <= 3), "{got:?}");
        assert_eq!(answers, got.len());
        server.abort();
    }

    /// A batch whose answer was lost (504: stored but not yet confirmed; or a dropped
    /// connection) is sent again with the same CloudEvent ids, which the node answers from
    /// its idempotency record, instead of ending the publish with the rest of the input
    /// unsent (a review, 2026-12-06).
    #[tokio::test]
    async fn publish_sends_a_batch_whose_answer_was_lost_again_with_the_same_ids() {
        use std::sync::{Arc, Mutex};
        let calls: Arc<Mutex<Vec<Vec<String>>>> = Arc::new(Mutex::new(Vec::new()));
        let calls2 = calls.clone();
        let app = axum::Router::new().route(
            "/v1/streams/s/events",
            axum::routing::post(move |body: axum::body::Bytes| {
                let calls = calls2.clone();
                async move {
                    use axum::response::IntoResponse as _;
                    let batch: Vec<Value> = serde_json::from_slice(&body).unwrap();
                    let ids: Vec<String> =
                        batch.iter().map(|e| e["id"].as_str().unwrap().to_string()).collect();
                    let first = {
                        let mut c = calls.lock().unwrap();
                        c.push(ids.clone());
                        c.len() == 1
                    };
                    if first {
                        return (
                            axum::http::StatusCode::GATEWAY_TIMEOUT,
                            [("retry-after", "1")],
                            axum::Json(serde_json::json!({"error": {"reason": "ack_timeout", "message": "not confirmed yet"}})),
                        )
                            .into_response();
                    }
                    axum::Json(serde_json::json!({"ids": ids})).into_response()
                }
            }),
        );
        let (node, server) = stand_in(app).await;
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        for n in 1..=3 {
            tx.send(Ok(format!("{{\"n\":{n}}}"))).await.unwrap();
        }
        drop(tx);
        let args = PublishArgs {
            batch: 100,
            linger_ms: 50,
        };
        let n = publish_lines(&publisher(&node), rx, &args, |_| {})
            .await
            .unwrap();
        assert_eq!(n, 3);
        let calls = calls.lock().unwrap().clone();
        assert_eq!(calls.len(), 2, "{calls:?}");
        assert_eq!(calls[0], calls[1], "the same events again, by their ids");
        server.abort();
    }

    /// A batch the node refuses names the input lines that were not published, and the
    /// line an event index points at (before: "batch event at index 1" alone, with no
    /// word of which lines went and which did not).
    #[tokio::test]
    async fn a_refused_batch_names_the_input_lines_not_published() {
        let app = axum::Router::new().route(
            "/v1/streams/s/events",
            axum::routing::post(move |body: axum::body::Bytes| async move {
                use axum::response::IntoResponse as _;
                let batch: Vec<Value> = serde_json::from_slice(&body).unwrap();
                if batch.iter().any(|e| e["data"]["n"] == 5) {
                    return (
                        axum::http::StatusCode::BAD_REQUEST,
                        axum::Json(serde_json::json!({"error": {"reason": "payload_too_large",
                            "message": "batch event at index 1: too large"}})),
                    )
                        .into_response();
                }
                let ids: Vec<String> = batch
                    .iter()
                    .map(|e| e["id"].as_str().unwrap().to_string())
                    .collect();
                axum::Json(serde_json::json!({"ids": ids})).into_response()
            }),
        );
        let (node, server) = stand_in(app).await;
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        for n in 1..=6 {
            tx.send(Ok(format!("{{\"n\":{n}}}"))).await.unwrap();
        }
        drop(tx);
        let args = PublishArgs {
            batch: 3,
            linger_ms: 50,
        };
        let mut answers = 0;
        let e = publish_lines(&publisher(&node), rx, &args, |_| answers += 1)
            .await
            .unwrap_err();
        let said = format!("{e:#}");
        assert!(said.contains("input lines 4 to 6"), "{said}");
        assert!(said.contains("the 3 before them were"), "{said}");
        assert!(said.contains("its event 1 is input line 5"), "{said}");
        assert_eq!(answers, 1);
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
