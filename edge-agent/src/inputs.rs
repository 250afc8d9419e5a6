//! Inputs: standard input (one JSON or text line per event), a local HTTP endpoint on a
//! loopback address accepting CloudEvents (and serving `GET /v1/status`), and file
//! followers (like `tail -f`, resuming at a stored offset after a restart).
//!
//! Every input wraps what it reads as a structured CloudEvent (`specversion` 1.0, a fresh
//! `id`, `source` `weft-agent/<name>`, `type` `weft.agent.line` for lines) and hands it
//! to the ingest task; bad input (an over-long line, a request that is not a CloudEvent)
//! is refused with a reason and counted (`bad_input`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde_json::{Map, Value, json};
use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _};
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, info, warn};
use weft_fabric::StreamName;
use weft_fabric::cloudevents::{self, IncomingEvent};

use crate::agent::{InEvent, IngestOutcome, Input, Shared};

/// Longest input line, bytes (a line is one event; the envelope's payload limit is larger,
/// but a device line this long is a runaway writer, not an event).
pub(crate) const LINE_LEN_MAX: usize = 256 << 10;
/// Largest HTTP request body, bytes.
pub(crate) const HTTP_BODY_MAX: usize = 1 << 20;
/// Largest HTTP request head, bytes.
const HTTP_HEAD_MAX: usize = 16 << 10;
/// Events in one CloudEvents batch request.
const HTTP_BATCH_LEN_MAX: usize = 512;
/// HTTP connections served at once.
const HTTP_CONNS_MAX: usize = 64;
/// Bytes read from a followed file per poll.
const FILE_READ_MAX: usize = 1 << 20;
/// How often followed files are polled.
const FILE_POLL: Duration = Duration::from_millis(250);
/// How long a followed file that was rotated away (its path now names another file) is
/// still read after it last grew: a logger goes on writing to the renamed file until it
/// reopens its path.
const ROTATE_GRACE: Duration = Duration::from_secs(5);
/// Lines from standard input grouped into one input message.
const STDIN_GROUP_MAX: usize = 256;

static NEXT_ID: AtomicU64 = AtomicU64::new(0);
static BOOT: std::sync::OnceLock<String> = std::sync::OnceLock::new();

/// A fresh CloudEvents id: a random per-run prefix and a counter.
pub(crate) fn event_id() -> String {
    let boot = BOOT.get_or_init(|| {
        let r = crate::keys::random32().unwrap_or([0; 32]);
        hex::encode(&r[..8])
    });
    format!("{boot}-{}", NEXT_ID.fetch_add(1, Ordering::Relaxed))
}

/// A line as a CloudEvent: JSON lines as JSON data, other lines as text.
fn line_event(name: &str, stream: &StreamName, priority: u8, line: &str) -> InEvent {
    let (data, ct) = match serde_json::from_str::<Value>(line) {
        Ok(v) => (v, "application/json"),
        Err(_) => (Value::String(line.to_string()), "text/plain"),
    };
    let mut ce = Map::new();
    ce.insert("specversion".into(), json!("1.0"));
    ce.insert("id".into(), json!(event_id()));
    ce.insert("source".into(), json!(format!("weft-agent/{name}")));
    ce.insert("type".into(), json!("weft.agent.line"));
    ce.insert("datacontenttype".into(), json!(ct));
    ce.insert("data".into(), data);
    InEvent {
        stream: stream.clone(),
        priority,
        ce,
    }
}

/// Reads standard input until it ends; `done` fires then (after its last events are in
/// the outbox).
pub(crate) fn stdin(
    name: String,
    stream: StreamName,
    priority: u8,
    tx: mpsc::Sender<Input>,
    done: oneshot::Sender<()>,
) {
    tokio::spawn(async move {
        let reader = match stdin_pipe() {
            Ok(r) => r,
            Err(e) => {
                warn!(error = %e, "standard input could not be read");
                return;
            }
        };
        let reader = tokio::io::BufReader::with_capacity(64 << 10, reader);
        if read_lines(reader, &name, &stream, priority, &tx).await {
            info!("standard input ended");
            let _ = done.send(());
        }
    });
}

/// Standard input as an async stream, copied by a thread of its own through a socket pair.
/// `tokio::io::stdin` reads on the runtime's blocking pool, and a read on an open, idle
/// standard input (a terminal, a quiet pipe) never returns: the runtime's shutdown waited
/// for it, so a stop hung until a line came. A thread of its own ends with the process.
fn stdin_pipe() -> std::io::Result<tokio::net::UnixStream> {
    let (mut writer, reader) = std::os::unix::net::UnixStream::pair()?;
    std::thread::Builder::new()
        .name("stdin".into())
        .spawn(move || {
            // Ends at standard input's end (closing the writer: the reader sees its end)
            // or when the reader is gone.
            let _ = std::io::copy(&mut std::io::stdin().lock(), &mut writer);
        })?;
    reader.set_nonblocking(true)?;
    tokio::net::UnixStream::from_std(reader)
}

/// Standard input's loop over any reader: lines in groups, each group offered to the
/// ingest task until the outbox holds it. Returns whether the input ended (`false`: the
/// agent is stopping).
async fn read_lines<R: tokio::io::AsyncRead + Unpin>(
    mut reader: tokio::io::BufReader<R>,
    name: &str,
    stream: &StreamName,
    priority: u8,
    tx: &mpsc::Sender<Input>,
) -> bool {
    {
        let mut buf = Vec::new();
        let mut eof = false;
        while !eof {
            let mut events = Vec::new();
            let mut bad = 0;
            // Group what is already buffered into one message (one transaction).
            loop {
                buf.clear();
                let n = match (&mut reader)
                    .take(LINE_LEN_MAX as u64 + 1)
                    .read_until(b'\n', &mut buf)
                    .await
                {
                    Ok(n) => n,
                    Err(e) => {
                        warn!(error = %e, "reading standard input failed");
                        0
                    }
                };
                if n == 0 {
                    eof = true;
                    break;
                }
                if buf.last() != Some(&b'\n') && buf.len() > LINE_LEN_MAX {
                    warn!(limit = LINE_LEN_MAX, "input line over LINE_LEN_MAX refused");
                    bad += 1;
                    // Skip the rest of the long line, buffer by buffer: held in memory it
                    // could be gigabytes (a binary file piped in).
                    skip_line(&mut reader).await;
                    continue;
                }
                let line = String::from_utf8_lossy(&buf);
                let line = line.trim_end_matches(['\n', '\r']);
                if !line.is_empty() {
                    events.push(line_event(name, stream, priority, line));
                }
                if events.len() >= STDIN_GROUP_MAX || reader.buffer().is_empty() {
                    break;
                }
            }
            if events.is_empty() && bad == 0 {
                continue;
            }
            // Wait until the outbox has them: standard input is read no faster than the
            // outbox takes it (backpressure to the producer). A failed outbox write (a full
            // disk) kept none of them: the same lines are offered again, with a growing
            // pause, and no further line is read until they are stored.
            let mut pause = STDIN_RETRY_FIRST;
            loop {
                let (rtx, rrx) = oneshot::channel();
                let msg = Input {
                    events: events.clone(),
                    meta: Vec::new(),
                    bad,
                    not_enrolled: 0,
                    whole: true,
                    retries: true,
                    progress: Vec::new(),
                    reply: Some(rtx),
                };
                if tx.send(msg).await.is_err() {
                    return false;
                }
                match rrx.await {
                    Ok(o) if o.error.is_some() => {
                        warn!(
                            lines = events.len(),
                            error = o.error.as_deref().unwrap_or(""),
                            retry_in_ms = pause.as_millis() as u64,
                            "the outbox could not store standard input's lines; retrying them"
                        );
                        tokio::time::sleep(pause).await;
                        pause = (pause * 2).min(STDIN_RETRY_MAX);
                    }
                    // The outbox is full (`refuse`): the first `taken` lines are in; no line
                    // is read on until the others fit.
                    Ok(o) if o.waiting => {
                        if pause == STDIN_RETRY_FIRST {
                            warn!(
                                lines = events.len() - o.taken.min(events.len()),
                                "outbox full: standard input waits for room (nothing is refused)"
                            );
                        }
                        events.drain(..o.taken.min(events.len()));
                        tokio::time::sleep(pause).await;
                        pause = (pause * 2).min(STDIN_RETRY_MAX);
                    }
                    Ok(o) => {
                        if o.refused_full > 0 {
                            warn!(
                                refused = o.refused_full,
                                "outbox full: lines refused (counted)"
                            );
                        }
                        break;
                    }
                    // The ingest task is gone: the agent is stopping.
                    Err(_) => return false,
                }
            }
        }
    }
    true
}

/// Follows a file like `tail -f`: new complete lines become events; the offset is stored
/// with them, so a restart neither skips nor repeats lines; a truncated or replaced file
/// is read again from its start.
pub(crate) fn follow(
    shared: Arc<Shared>,
    name: String,
    path: PathBuf,
    stream: StreamName,
    priority: u8,
    from_start: bool,
    tx: mpsc::Sender<Input>,
) {
    use std::os::unix::fs::MetadataExt as _;
    tokio::spawn(async move {
        let key = format!("file_offset:{}", path.display());
        let k2 = key.clone();
        let stored = crate::agent::with_outbox(&shared, move |o| o.meta_get(&k2))
            .await
            .ok()
            .flatten()
            .filter(|v| v.len() == 16)
            .map(|v| {
                let ino = u64::from_be_bytes(v[..8].try_into().unwrap_or([0; 8]));
                let off = u64::from_be_bytes(v[8..].try_into().unwrap_or([0; 8]));
                (ino, off)
            });
        let mut state: Option<(u64, u64)> = stored;
        // The file being read, held open: after a rotation (the path renamed away and a new
        // file made) it is read to its end, and for ROTATE_GRACE past it (a logger writes
        // to the renamed file until it reopens), before the new file is taken from its
        // start. Reopening by path at every poll lost whatever the old file got after the
        // last poll.
        let mut open: Option<(tokio::fs::File, u64)> = None;
        let mut idle_since: Option<std::time::Instant> = None;
        // Said once per episode of a full outbox.
        let mut waiting = false;
        // The last bytes read (up to TAIL_CHECK_LEN) and the offset they end at: read again
        // at each poll, to notice a file truncated and rewritten between two polls.
        let mut tail: Option<(u64, Vec<u8>)> = None;
        info!(path = %path.display(), "following file");
        loop {
            tokio::time::sleep(FILE_POLL).await;
            if open.is_none() {
                let Ok(f) = tokio::fs::File::open(&path).await else {
                    continue;
                };
                let Ok(meta) = f.metadata().await else {
                    continue;
                };
                open = Some((f, meta.ino()));
                idle_since = None;
            }
            let Some((f, ino)) = open.as_mut() else {
                continue;
            };
            let ino = *ino;
            let Ok(meta) = f.metadata().await else {
                open = None;
                continue;
            };
            let len = meta.len();
            // Truncated and written again past the offset within one poll (logrotate's
            // copytruncate, then a burst): the length alone does not show it, the bytes
            // just before the offset do.
            let rewritten = match (&state, &tail) {
                (Some((i, off)), Some((at, bytes)))
                    if *i == ino && *off <= len && *at == *off && !bytes.is_empty() =>
                {
                    let mut now = vec![0u8; bytes.len()];
                    let start = off - bytes.len() as u64;
                    let same = tokio::io::AsyncSeekExt::seek(f, std::io::SeekFrom::Start(start))
                        .await
                        .is_ok()
                        && f.read_exact(&mut now).await.is_ok()
                        && now == *bytes;
                    !same
                }
                _ => false,
            };
            let offset = match state {
                Some((i, off)) if i == ino && off <= len && !rewritten => off,
                Some((i, _)) if i == ino => {
                    info!(path = %path.display(), "followed file truncated: reading it from its start");
                    tail = None;
                    0
                }
                Some(_) => 0, // another file than the one read before: from its start
                None if from_start => 0,
                None => len,
            };
            state = Some((ino, offset));
            // The path names another file now (rotated), and this one has had nothing new
            // for ROTATE_GRACE: what is left of it (a last line without its newline) goes,
            // and the new file is read from its start.
            let rotated = tokio::fs::metadata(&path)
                .await
                .is_ok_and(|m| m.ino() != ino);
            let finished = rotated && idle_since.is_some_and(|t| t.elapsed() >= ROTATE_GRACE);
            if len == offset && !finished {
                if rotated {
                    idle_since.get_or_insert_with(std::time::Instant::now);
                }
                continue;
            }
            let mut buf = Vec::new();
            if len > offset {
                if tokio::io::AsyncSeekExt::seek(f, std::io::SeekFrom::Start(offset))
                    .await
                    .is_err()
                {
                    continue;
                }
                buf = vec![0u8; ((len - offset) as usize).min(FILE_READ_MAX)];
                let Ok(n) = f.read(&mut buf).await else {
                    continue;
                };
                buf.truncate(n);
            }
            // Complete lines only; a partial last line waits for its newline, unless the
            // read is full and has no newline at all (an over-long line: refused), or the
            // file was rotated away and is finished.
            let end = match buf.iter().rposition(|b| *b == b'\n') {
                Some(i) => i + 1,
                None if buf.len() >= FILE_READ_MAX || finished => buf.len(),
                None => {
                    if rotated {
                        idle_since.get_or_insert_with(std::time::Instant::now);
                    }
                    continue;
                }
            };
            idle_since = None;
            let mut events = Vec::new();
            let mut bad = 0;
            // The offset past each event's line: where a restart resumes if the outbox takes
            // only the lines up to it.
            let mut ends = Vec::new();
            let mut at = offset;
            for line in buf[..end].split(|b| *b == b'\n') {
                // Past the line and its newline (the last piece may have none).
                at = (at + line.len() as u64 + 1).min(offset + end as u64);
                if line.len() > LINE_LEN_MAX {
                    bad += 1;
                    continue;
                }
                let text = String::from_utf8_lossy(line);
                let text = text.trim_end_matches('\r');
                if !text.is_empty() {
                    events.push(line_event(&name, &stream, priority, text));
                    ends.push(at);
                }
            }
            let new_off = offset + end as u64;
            let position = |off: u64| {
                let mut v = ino.to_be_bytes().to_vec();
                v.extend_from_slice(&off.to_be_bytes());
                v
            };
            let v = position(new_off);
            if !events.is_empty() || bad > 0 {
                let (rtx, rrx) = oneshot::channel();
                let msg = Input {
                    events,
                    meta: vec![(key.clone(), v)],
                    bad,
                    not_enrolled: 0,
                    whole: true,
                    retries: true,
                    progress: ends.iter().map(|o| position(*o)).collect(),
                    reply: Some(rtx),
                };
                if tx.send(msg).await.is_err() {
                    return;
                }
                match rrx.await {
                    // The outbox is full (`refuse`): it took the lines up to the `taken`th
                    // (their offset stored with them); the rest is read again at the next
                    // poll.
                    Ok(o) if o.waiting => {
                        if !waiting {
                            warn!(path = %path.display(), "outbox full: the followed file waits for room (nothing is refused)");
                        }
                        waiting = true;
                        if let Some(off) = o.taken.checked_sub(1).and_then(|i| ends.get(i)) {
                            state = Some((ino, *off));
                        }
                        continue;
                    }
                    Ok(o) if o.error.is_none() => {
                        waiting = false;
                        state = Some((ino, new_off));
                        tail = tail_of(&buf[..end], new_off);
                    }
                    _ => continue,
                }
            } else {
                state = Some((ino, new_off));
                tail = tail_of(&buf[..end], new_off);
            }
            if finished && new_off >= len {
                info!(path = %path.display(), "followed file rotated: reading the new one from its start");
                open = None;
                // Not this file: the next one is read from its start.
                state = Some((0, 0));
            }
        }
    });
}

/// Bytes of a followed file kept to notice a rewrite before the offset (see `follow`).
const TAIL_CHECK_LEN: usize = 64;

/// The last [`TAIL_CHECK_LEN`] bytes of what was just taken, ending at `offset`.
fn tail_of(taken: &[u8], offset: u64) -> Option<(u64, Vec<u8>)> {
    let n = taken.len().min(TAIL_CHECK_LEN);
    (n > 0).then(|| (offset, taken[taken.len() - n..].to_vec()))
}

/// Serves the local HTTP endpoint.
pub(crate) async fn http(
    shared: Arc<Shared>,
    listen: SocketAddr,
    default_stream: Option<StreamName>,
    priority: u8,
    tx: mpsc::Sender<Input>,
) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| anyhow::anyhow!("binding the HTTP input on {listen}: {e}"))?;
    info!(%listen, "HTTP input listening");
    let conns = Arc::new(tokio::sync::Semaphore::new(HTTP_CONNS_MAX));
    tokio::spawn(async move {
        loop {
            let Ok((sock, _)) = listener.accept().await else {
                continue;
            };
            let Ok(permit) = conns.clone().try_acquire_owned() else {
                drop(sock);
                continue;
            };
            let (shared, tx, ds) = (shared.clone(), tx.clone(), default_stream.clone());
            tokio::spawn(async move {
                let _permit = permit;
                if let Err(e) = serve_http(sock, &shared, ds.as_ref(), priority, &tx).await {
                    debug!(error = %e, "HTTP input connection");
                }
            });
        }
    });
    Ok(())
}

struct Request {
    method: String,
    path: String,
    /// Every header, name as sent (the CloudEvents parser matches names without case).
    headers: Vec<(String, Vec<u8>)>,
    body: Vec<u8>,
}

/// The error reason of a request refused before it is read whole, by its status: a client
/// can tell a body too large from a slow one without parsing the message.
fn http_reason(status: u16) -> &'static str {
    match status {
        408 => "request_timeout",
        411 => "length_required",
        413 => "body_too_large",
        431 => "head_too_large",
        _ => "bad_request",
    }
}

async fn read_request(sock: &mut tokio::net::TcpStream) -> Result<Request, (u16, String)> {
    let mut buf = Vec::with_capacity(4096);
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        if buf.len() > HTTP_HEAD_MAX {
            return Err((431, format!("request head over {HTTP_HEAD_MAX} bytes")));
        }
        let mut chunk = [0u8; 4096];
        let n = tokio::time::timeout(Duration::from_secs(10), sock.read(&mut chunk))
            .await
            .map_err(|_| (408, "request timed out".to_string()))?
            .map_err(|e| (400, e.to_string()))?;
        if n == 0 {
            return Err((400, "connection closed mid-request".into()));
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let mut first = lines.next().unwrap_or("").split(' ');
    let method = first.next().unwrap_or("").to_string();
    let path = first.next().unwrap_or("").to_string();
    let mut len = 0usize;
    let mut headers = Vec::new();
    for l in lines {
        let Some((k, v)) = l.split_once(':') else {
            continue;
        };
        let v = v.trim();
        headers.push((k.trim().to_string(), v.as_bytes().to_vec()));
        match k.trim().to_ascii_lowercase().as_str() {
            "content-length" => {
                len = v
                    .parse()
                    .map_err(|_| (400, format!("bad content-length {v:?}")))?;
            }
            "transfer-encoding" => {
                return Err((
                    411,
                    "chunked bodies are not supported; send content-length".into(),
                ));
            }
            _ => {}
        }
    }
    if len > HTTP_BODY_MAX {
        return Err((
            413,
            format!("body of {len} bytes, over HTTP_BODY_MAX ({HTTP_BODY_MAX})"),
        ));
    }
    let mut body = buf[head_end..].to_vec();
    while body.len() < len {
        let mut chunk = vec![0u8; (len - body.len()).min(64 << 10)];
        let n = tokio::time::timeout(Duration::from_secs(10), sock.read(&mut chunk))
            .await
            .map_err(|_| (408, "request timed out".to_string()))?
            .map_err(|e| (400, e.to_string()))?;
        if n == 0 {
            return Err((400, "connection closed mid-body".into()));
        }
        body.extend_from_slice(&chunk[..n]);
    }
    body.truncate(len);
    Ok(Request {
        method,
        path,
        headers,
        body,
    })
}

async fn respond(
    sock: &mut tokio::net::TcpStream,
    status: u16,
    body: &Value,
) -> std::io::Result<()> {
    let text = body.to_string();
    let reason = match status {
        200 => "OK",
        202 => "Accepted",
        400 => "Bad Request",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        411 => "Length Required",
        413 => "Payload Too Large",
        415 => "Unsupported Media Type",
        431 => "Request Header Fields Too Large",
        503 => "Service Unavailable",
        507 => "Insufficient Storage",
        _ => "Error",
    };
    let out = format!(
        "HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{text}",
        text.len()
    );
    sock.write_all(out.as_bytes()).await?;
    sock.shutdown().await
}

/// First pause before standard input's lines are offered again after a failed outbox
/// write; it doubles up to [`STDIN_RETRY_MAX`].
const STDIN_RETRY_FIRST: Duration = Duration::from_millis(100);
/// Longest pause between offers of the same lines.
const STDIN_RETRY_MAX: Duration = Duration::from_secs(5);

fn error(reason: &str, message: impl Into<String>) -> Value {
    json!({"error": {"reason": reason, "message": message.into()}})
}

/// Picks the stream of one CloudEvent the shared parser accepted
/// (`weft_fabric::cloudevents`: every attribute, the data, the envelope's payload limit):
/// the path's, else its `weftstream`, else `inputs.http.stream`; a system stream is refused.
fn pick_stream(
    event: &IncomingEvent,
    path_stream: Option<&StreamName>,
    default: Option<&StreamName>,
    i: usize,
) -> Result<StreamName, String> {
    let stream = match (path_stream, &event.stream) {
        (Some(p), Some(o)) if p != o => {
            return Err(format!(
                "event {i}: weftstream {} differs from the path's {}",
                o.as_str(),
                p.as_str()
            ));
        }
        (Some(p), _) => p.clone(),
        (None, Some(o)) => o.clone(),
        (None, None) => default.cloned().ok_or_else(|| {
            format!("event {i}: no stream: POST to /v1/streams/{{stream}}/events, set weftstream, or configure inputs.http.stream")
        })?,
    };
    if stream.is_system() {
        return Err(format!(
            "event {i}: {} is a system stream (_weft.>): a device publishes application streams only",
            stream.as_str()
        ));
    }
    Ok(stream)
}

async fn serve_http(
    mut sock: tokio::net::TcpStream,
    shared: &Arc<Shared>,
    default: Option<&StreamName>,
    priority: u8,
    tx: &mpsc::Sender<Input>,
) -> anyhow::Result<()> {
    let req = match read_request(&mut sock).await {
        Ok(r) => r,
        Err((status, message)) => {
            count_bad(tx).await;
            respond(&mut sock, status, &error(http_reason(status), message)).await?;
            return Ok(());
        }
    };
    // No path takes parameters. Refused rather than ignored: `?ack=regions:2`, which a
    // node's API takes, would otherwise be dropped in silence (the agent answers once an
    // event is in its outbox, whatever is asked).
    if let Some((path, query)) = req.path.split_once('?') {
        count_bad(tx).await;
        respond(
            &mut sock,
            400,
            &error(
                "unknown_parameter",
                format!(
                    "{path} takes no query parameters (got {query:?}): the agent answers once the events are in its outbox; acknowledgements from the fabric (ack=...) are the node API's"
                ),
            ),
        )
        .await?;
        return Ok(());
    }
    if req.method == "GET" && (req.path == "/v1/status" || req.path == "/status") {
        let status = serde_json::to_value(shared.status().await?)?;
        respond(&mut sock, 200, &status).await?;
        return Ok(());
    }
    let path_stream = match req
        .path
        .strip_prefix("/v1/streams/")
        .and_then(|r| r.strip_suffix("/events"))
    {
        Some(s) => match StreamName::new(s.to_string()) {
            Ok(s) => Some(s),
            Err(e) => {
                count_bad(tx).await;
                respond(
                    &mut sock,
                    400,
                    &error("bad_stream", format!("stream {s:?}: {e}")),
                )
                .await?;
                return Ok(());
            }
        },
        None if req.path == "/v1/events" => None,
        None => {
            respond(
                &mut sock,
                404,
                &error("not_found", format!("no route {}", req.path)),
            )
            .await?;
            return Ok(());
        }
    };
    if req.method != "POST" {
        respond(
            &mut sock,
            405,
            &error("method_not_allowed", "POST events here"),
        )
        .await?;
        return Ok(());
    }
    // Structured, batched or binary mode, by the content type, exactly as the node reads
    // them (`weft_fabric::cloudevents::parse_http`).
    let parsed = cloudevents::parse_http(
        req.headers.iter().map(|(n, v)| (n.as_str(), v.as_slice())),
        &req.body,
    );
    let checked: Result<Vec<InEvent>, (&'static str, String)> = match parsed {
        Err(e) => Err((e.reason(), e.to_string())),
        Ok(events) if events.len() > HTTP_BATCH_LEN_MAX => Err((
            "batch_too_large",
            format!(
                "batch of {} events, over HTTP_BATCH_LEN_MAX ({HTTP_BATCH_LEN_MAX})",
                events.len()
            ),
        )),
        Ok(events) => events
            .into_iter()
            .enumerate()
            .map(|(i, event)| {
                let stream = pick_stream(&event, path_stream.as_ref(), default, i)
                    .map_err(|m| ("bad_stream", m))?;
                Ok(InEvent {
                    stream,
                    priority,
                    ce: event.structured,
                })
            })
            .collect(),
    };
    let events = match checked {
        Ok(e) => e,
        Err((reason, message)) => {
            count_bad(tx).await;
            respond(&mut sock, 400, &error(reason, message)).await?;
            return Ok(());
        }
    };
    // A stream the device is not enrolled for would be taken, then moved to the dead
    // letters when the drain signs it: its client is told now instead, with what is allowed.
    // Only while connected: offline, the profile at hand is the last one stored, and a
    // policy since may have enrolled the stream (the drain signs under the profile of the
    // node it reaches).
    let refusal = if shared.connected() {
        let profile = shared
            .profile
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        not_enrolled(profile.as_ref(), &events)
    } else {
        None
    };
    if let Some(body) = refusal {
        count_refused(tx, 0, 1).await;
        respond(&mut sock, 403, &body).await?;
        return Ok(());
    }
    let (rtx, rrx) = oneshot::channel();
    if tx
        .send(Input {
            events,
            meta: Vec::new(),
            bad: 0,
            not_enrolled: 0,
            // All or none in `refuse` mode: a 507 means nothing was taken, retry it all.
            whole: true,
            retries: false,
            progress: Vec::new(),
            reply: Some(rtx),
        })
        .await
        .is_err()
    {
        respond(
            &mut sock,
            503,
            &error("shutting_down", "the agent is stopping"),
        )
        .await?;
        return Ok(());
    }
    let outcome: IngestOutcome = rrx.await.unwrap_or_default();
    let fullness = outcome.full.clone().unwrap_or_default();
    let (status, body) = if let Some(e) = &outcome.error {
        (503, error("outbox_error", e.clone()))
    } else if outcome.waiting {
        (
            507,
            json!({"error": {"reason": "outbox_full", "message": format!("the outbox has no room for this request ({fullness}): nothing of it was taken; send it again later")},
                   "accepted": 0, "refused": outcome.refused_full}),
        )
    } else if outcome.refused_full > 0 {
        (
            507,
            json!({"error": {"reason": "outbox_full", "message": format!("the outbox had no room for some of this request's events ({fullness}): the overflow rule refused those at `refused_at` (positions in the request); the others were taken")},
                   "accepted": outcome.accepted, "refused": outcome.refused_full,
                   "refused_at": outcome.refused_at}),
        )
    } else {
        (202, serde_json::to_value(&outcome)?)
    };
    respond(&mut sock, status, &body).await?;
    Ok(())
}

/// The 403 body for the first event of a request whose stream the device's profile does
/// not enroll (`None`: all are enrolled, or no profile: then the drain decides, by the
/// profile of the node it reaches).
fn not_enrolled(profile: Option<&weft_fabric::edge::Profile>, events: &[InEvent]) -> Option<Value> {
    let profile = profile?;
    let patterns: Vec<weft_fabric::StreamPattern> = profile
        .streams
        .iter()
        .filter_map(|p| weft_fabric::StreamPattern::new(p.clone()).ok())
        .collect();
    let (i, e) = events
        .iter()
        .enumerate()
        .find(|(_, e)| !patterns.iter().any(|p| p.matches(&e.stream)))?;
    let allowed = if profile.streams.is_empty() {
        "none".to_string()
    } else {
        profile.streams.join(", ")
    };
    Some(json!({
        "error": {
            "reason": "stream_not_enrolled",
            "message": format!(
                "event {i}: stream {} is not among this device's enrolled streams ({allowed}; policy epoch {} from node {}): nothing of this request was taken",
                e.stream.as_str(),
                profile.epoch,
                profile.node
            ),
        },
        "stream": e.stream.as_str(),
        "allowed": profile.streams,
    }))
}

async fn count_bad(tx: &mpsc::Sender<Input>) {
    count_refused(tx, 1, 0).await;
}

/// Counts requests refused at the input: `bad` (not readable as events) and
/// `not_enrolled` (a stream the device's profile does not enroll).
async fn count_refused(tx: &mpsc::Sender<Input>, bad: u64, not_enrolled: u64) {
    let _ = tx
        .send(Input {
            events: Vec::new(),
            meta: Vec::new(),
            bad,
            not_enrolled,
            whole: false,
            retries: false,
            progress: Vec::new(),
            reply: None,
        })
        .await;
}

/// Reads past the next newline (or to the end), discarding what it reads one buffer at a
/// time.
async fn skip_line<R: tokio::io::AsyncBufRead + Unpin>(reader: &mut R) {
    use tokio::io::AsyncBufReadExt as _;
    loop {
        let (done, used) = match reader.fill_buf().await {
            Ok([]) | Err(_) => return,
            Ok(buf) => match buf.iter().position(|b| *b == b'\n') {
                Some(at) => (true, at + 1),
                None => (false, buf.len()),
            },
        };
        reader.consume(used);
        if done {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Requests refused before their body is read get a status and a reason of their own:
    /// a body over `HTTP_BODY_MAX` (413 `body_too_large`), a chunked one (411
    /// `length_required`), a head over `HTTP_HEAD_MAX` (431 `head_too_large`), a bad
    /// content-length (400 `bad_request`).
    #[tokio::test]
    async fn refused_requests_say_which_limit() {
        async fn refusal(request: Vec<u8>) -> (u16, &'static str, String) {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let client = tokio::spawn(async move {
                let mut c = tokio::net::TcpStream::connect(addr).await.unwrap();
                let _ = tokio::io::AsyncWriteExt::write_all(&mut c, &request).await;
                c // kept open until the server has read
            });
            let (mut sock, _) = listener.accept().await.unwrap();
            let (status, message) = match read_request(&mut sock).await {
                Ok(r) => panic!("taken: {} {}", r.method, r.path),
                Err(e) => e,
            };
            drop(client.await);
            (status, http_reason(status), message)
        }
        let post =
            |headers: &str| format!("POST /v1/events HTTP/1.1\r\n{headers}\r\n").into_bytes();
        let (status, reason, message) =
            refusal(post(&format!("content-length: {}\r\n", HTTP_BODY_MAX + 1))).await;
        assert_eq!((status, reason), (413, "body_too_large"));
        assert!(message.contains("HTTP_BODY_MAX"), "{message}");
        let (status, reason, _) = refusal(post("transfer-encoding: chunked\r\n")).await;
        assert_eq!((status, reason), (411, "length_required"));
        // A head that has not ended within the limit (read 4 KiB at a time).
        let (status, reason, message) = refusal(
            format!(
                "POST /v1/events HTTP/1.1\r\nx-pad: {}",
                "a".repeat(2 * HTTP_HEAD_MAX)
            )
            .into_bytes(),
        )
        .await;
        assert_eq!((status, reason), (431, "head_too_large"));
        assert!(message.contains(&HTTP_HEAD_MAX.to_string()), "{message}");
        let (status, reason, _) = refusal(post("content-length: lots\r\n")).await;
        assert_eq!((status, reason), (400, "bad_request"));
    }

    #[tokio::test]
    async fn an_over_long_line_is_skipped_without_holding_it() {
        let mut text = vec![b'x'; 3 * 1024 * 1024];
        text.extend_from_slice(b"\nnext line\n");
        // A small buffer: the long line passes through it in many pieces.
        let mut reader = tokio::io::BufReader::with_capacity(4096, &text[..]);
        skip_line(&mut reader).await;
        let mut rest = String::new();
        tokio::io::AsyncReadExt::read_to_string(&mut reader, &mut rest)
            .await
            .unwrap();
        assert_eq!(rest, "next line\n");
        // At the end without a newline: it stops there.
        let mut tail = tokio::io::BufReader::new(&b"no newline"[..]);
        skip_line(&mut tail).await;
        assert!(
            tokio::io::AsyncBufReadExt::fill_buf(&mut tail)
                .await
                .unwrap()
                .is_empty()
        );
    }

    fn ce(data: &str) -> Value {
        json!({"specversion": "1.0", "id": "1", "source": "s", "type": "t", "data": data})
    }

    fn parsed(v: &Value) -> IncomingEvent {
        cloudevents::parse_structured(&serde_json::to_vec(v).unwrap()).unwrap()
    }

    /// A system stream is refused at the input, whichever way it is named, with a reason.
    #[test]
    fn a_system_stream_is_refused_at_the_input() {
        let void = StreamName::new("_weft.void").unwrap();
        let app = StreamName::new("telemetry.x").unwrap();
        for (path, default) in [(Some(&void), None), (None, Some(&void))] {
            let err = pick_stream(&parsed(&ce("x")), path, default, 0).unwrap_err();
            assert!(err.contains("system stream"), "{err}");
        }
        let mut own = ce("x");
        own["weftstream"] = json!("_weft.policy");
        let err = pick_stream(&parsed(&own), None, Some(&app), 3).unwrap_err();
        assert!(
            err.contains("event 3") && err.contains("_weft.policy"),
            "{err}"
        );
        assert_eq!(
            pick_stream(&parsed(&ce("x")), None, Some(&app), 0).unwrap(),
            app
        );
        // The path's stream and the event's must agree.
        let mut other = ce("x");
        other["weftstream"] = json!("telemetry.y");
        let err = pick_stream(&parsed(&other), Some(&app), None, 0).unwrap_err();
        assert!(err.contains("differs"), "{err}");
    }

    /// An event that cannot be an envelope's payload is refused by the parser the input
    /// uses, naming the limit; one just under it is taken.
    #[test]
    fn an_event_over_the_payload_limit_is_refused_at_the_input() {
        use weft_fabric::limits::PAYLOAD_LEN_MAX;
        let base = cloudevents::json_len(ce("").as_object().unwrap());
        let fits = "a".repeat(PAYLOAD_LEN_MAX - base);
        let m = parsed(&ce(&fits)).structured;
        assert_eq!(cloudevents::json_len(&m), PAYLOAD_LEN_MAX);
        assert_eq!(serde_json::to_vec(&m).unwrap().len(), PAYLOAD_LEN_MAX);
        let over = "a".repeat(PAYLOAD_LEN_MAX - base + 1);
        let err =
            cloudevents::parse_structured(&serde_json::to_vec(&ce(&over)).unwrap()).unwrap_err();
        assert_eq!(err.reason(), "payload_too_large");
        assert!(
            err.to_string().contains(&PAYLOAD_LEN_MAX.to_string()),
            "{err}"
        );
    }

    /// A failed outbox write (a full disk) keeps none of a group of standard input's
    /// lines: the same lines are offered again until the outbox takes them, and no line
    /// after them is read before.
    #[tokio::test]
    async fn standard_input_offers_its_lines_again_after_a_failed_write() {
        let text = b"{\"n\":0}\n{\"n\":1}\n{\"n\":2}\n";
        let reader = tokio::io::BufReader::new(&text[..]);
        let stream = StreamName::new("telemetry.x").unwrap();
        let (tx, mut rx) = mpsc::channel::<Input>(4);
        let ingest = tokio::spawn(async move {
            let mut offers = Vec::new();
            while let Some(input) = rx.recv().await {
                let ns: Vec<i64> = input
                    .events
                    .iter()
                    .map(|e| e.ce["data"]["n"].as_i64().unwrap())
                    .collect();
                let fail = offers.len() < 2;
                offers.push(ns);
                let _ = input.reply.unwrap().send(IngestOutcome {
                    accepted: if fail { 0 } else { input.events.len() },
                    error: fail.then(|| "database or disk is full".to_string()),
                    ..IngestOutcome::default()
                });
            }
            offers
        });
        assert!(read_lines(reader, "dev", &stream, 5, &tx).await);
        drop(tx);
        let offers = ingest.await.unwrap();
        // Offered three times (two failures), the same lines each time, nothing lost.
        assert_eq!(offers.len(), 3, "{offers:?}");
        assert!(offers.iter().all(|o| *o == offers[0]), "{offers:?}");
        assert_eq!(offers[0], vec![0, 1, 2]);
    }

    /// A request naming a stream the device's profile does not enroll is refused at the
    /// input (403, the stream and the allowed ones named), not taken and dead-lettered
    /// later; before any profile came, the drain decides.
    #[test]
    fn a_stream_the_device_is_not_enrolled_for_is_refused_at_the_input() {
        let profile = weft_fabric::edge::Profile {
            node: "n1".into(),
            region: "r".into(),
            epoch: 3,
            principal: "sensor-1".into(),
            tenant: "acme".into(),
            streams: vec!["telemetry.s1".into(), "telemetry.s1.>".into()],
            stamps: vec![],
            default_stamp: None,
            rules: vec![],
            commands: None,
            batch_len_max: 256,
            batches_inflight_max: 4,
            origin_seq_max: 0,
        };
        let event = |stream: &str| InEvent {
            stream: StreamName::new(stream.to_string()).unwrap(),
            priority: 5,
            ce: Map::new(),
        };
        let ok = [event("telemetry.s1"), event("telemetry.s1.temp")];
        assert_eq!(not_enrolled(Some(&profile), &ok), None);
        let mixed = [event("telemetry.s1"), event("telemetry.s2")];
        let body = not_enrolled(Some(&profile), &mixed).unwrap();
        assert_eq!(body["error"]["reason"], "stream_not_enrolled");
        let message = body["error"]["message"].as_str().unwrap();
        assert!(
            message.starts_with("event 1: stream telemetry.s2 is not among")
                && message.contains("telemetry.s1, telemetry.s1.>")
                && message.contains("epoch 3"),
            "{message}"
        );
        assert_eq!(body["stream"], "telemetry.s2");
        assert_eq!(body["allowed"], json!(["telemetry.s1", "telemetry.s1.>"]));
        // No profile yet: taken (the drain dead-letters it if the profile does not allow it).
        assert_eq!(not_enrolled(None, &mixed), None);
    }
}
