// Weft dashboard: polls the node that served this page and renders the fabric (map,
// nodes, links, refused requests) and a live tail of one stream over SSE. Plain JS, no
// build step, no third-party code; every string from the network goes through
// textContent, never parsed as HTML markup.
"use strict";

/** How often the views refresh. */
const POLL_MS = 2000;
/** Rows kept in the live tail. */
const TAIL_ROWS_MAX = 40;
/** Most extra nodes taken from ?nodes= (each is one request per poll). */
const EXTRA_NODES_MAX = 32;
/** Characters of event data shown per tail row. */
const DATA_CHARS_MAX = 140;

const SVG_NS = "http://www.w3.org/2000/svg";
const MAP_W = 1000;
const MAP_H = 440;
/** Room around the outermost nodes, in pixels (labels sit to their right or left). */
const MAP_PAD = 70;
/** Smallest area the map shows, in degrees, so that nearby regions are not zoomed into. */
const MAP_SPAN_LON_MIN = 60;
const MAP_SPAN_LAT_MIN = 30;

/** Audit denials shown (the node serves at most 20). */
const AUDIT_ROWS_MAX = 20;
/** Wait before the token-authenticated tail reconnects. */
const TAIL_RETRY_MS = 3000;

const params = new URLSearchParams(location.search);
/**
 * A bearer token from the page's fragment (`#token=...`): the fragment is never sent to a
 * server, and the token goes only into the Authorization header of this node's live tail,
 * which a node enforcing a policy authorizes (EventSource cannot send headers).
 */
const pageToken = new URLSearchParams(location.hash.slice(1)).get("token") || "";
const extraNodes = (params.get("nodes") || "")
  .split(",")
  .map((s) => s.trim())
  .filter((s) => /^[A-Za-z0-9.\-\[\]:]+$/.test(s))
  .slice(0, EXTRA_NODES_MAX);

const state = {
  regions: {},
  /** key -> {t, published, stored} at the previous poll, for rates. */
  prev: new Map(),
  /** key -> {published, stored} per second. */
  rates: new Map(),
  prevRejected: null,
  policyEpoch: 0,
  tail: { source: null, stream: "", rows: [] },
  nodes: [],
};

function el(tag, attrs, text) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
  if (text !== undefined && text !== null) e.textContent = String(text);
  return e;
}

function svg(tag, attrs, text) {
  const e = document.createElementNS(SVG_NS, tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
  if (text !== undefined && text !== null) e.textContent = String(text);
  return e;
}

async function getJSON(url) {
  const r = await fetch(url, { cache: "no-store" });
  if (!r.ok) {
    const e = new Error(`${url}: HTTP ${r.status}`);
    e.status = r.status;
    throw e;
  }
  return r.json();
}

async function getText(url) {
  const r = await fetch(url, { cache: "no-store" });
  if (!r.ok) throw new Error(`${url}: HTTP ${r.status}`);
  return r.text();
}

/** The counters the dashboard needs from the Prometheus text of /metrics. */
function parseMetrics(text) {
  const rejected = new Map();
  let published = 0;
  for (const line of text.split("\n")) {
    let m = line.match(/^weft_rejected_total\{reason="([^"]*)"\}\s+(\S+)/);
    if (m) {
      rejected.set(m[1], Number(m[2]));
      continue;
    }
    m = line.match(/^weft_publishes_total\{[^}]*\}\s+(\S+)/);
    if (m) published += Number(m[1]);
  }
  return { rejected, published };
}

/** The fabric-wide node list: /v1/mesh/nodes when the node has it, else the fallback. */
async function loadNodes(status, metrics) {
  try {
    const v = await getJSON("v1/mesh/nodes");
    return {
      source: "fabric view from gossip (/v1/mesh/nodes)",
      gossip: true,
      nodes: v.nodes.map((n) => ({ ...n, self: n.key === v.me })),
    };
  } catch (e) {
    if (e.status !== 404) throw e;
  }
  const peers = await getJSON("v1/mesh/peers");
  const me = {
    key: status.key,
    name: status.name,
    region: status.region,
    cloud: status.cloud,
    jurisdiction: status.jurisdiction,
    http: location.host,
    alive: true,
    published: metrics.published,
    stored: status.stored_events,
    missing: null,
    policy_epoch: status.policy_epoch,
    links: peers.peers
      .filter((p) => p.state === "up" && typeof p.rtt_ms === "number")
      .map((p) => ({ to: p.key, rtt_ms: p.rtt_ms })),
    self: true,
  };
  const byKey = new Map([[me.key, me]]);
  const nodes = [me];
  for (const p of peers.peers) {
    const n = {
      key: p.key,
      name: null,
      region: p.region,
      cloud: p.cloud,
      jurisdiction: p.jurisdiction,
      http: null,
      alive: p.state === "up",
      published: null,
      stored: null,
      missing: null,
      policy_epoch: p.policy_epoch,
      links: [],
    };
    byKey.set(p.key, n);
    nodes.push(n);
  }
  // Other nodes answer /dashboard/node.json to any origin (it holds what their
  // /v1/status shows anyway).
  const others = await Promise.allSettled(
    extraNodes.map((h) =>
      getJSON(`http://${h}/dashboard/node.json`).then((n) => ({ ...n, http: h })),
    ),
  );
  let reached = 0;
  for (const o of others) {
    if (o.status !== "fulfilled") continue;
    reached += 1;
    const n = o.value;
    const known = byKey.get(n.key);
    if (known) {
      // This node's membership view decides up or down.
      Object.assign(known, n, { alive: known.alive, self: known.self });
    } else {
      byKey.set(n.key, n);
      nodes.push(n);
    }
  }
  let source = "this node's /v1/status and /v1/mesh/peers";
  if (extraNodes.length) source += ` + ${reached}/${extraNodes.length} nodes from ?nodes=`;
  return { source, gossip: false, nodes };
}

function nodeLabel(n) {
  return n.name || (n.key ? n.key.slice(0, 8) : "?");
}

function fmt(x, digits) {
  if (typeof x !== "number" || !isFinite(x)) return "\u2013";
  return x.toLocaleString("en-US", { maximumFractionDigits: digits || 0 });
}

function updateRates(nodes, now) {
  for (const n of nodes) {
    const p = state.prev.get(n.key);
    if (p && now > p.t) {
      const dt = (now - p.t) / 1000;
      const rate = (a, b) =>
        typeof a === "number" && typeof b === "number" ? Math.max(0, (a - b) / dt) : null;
      state.rates.set(n.key, {
        published: rate(n.published, p.published),
        stored: rate(n.stored, p.stored),
      });
    }
    state.prev.set(n.key, { t: now, published: n.published, stored: n.stored });
  }
}

/**
 * An equirectangular projection fitted to the regions of `nodes` (same scale on both
 * axes), as a function (lat, lon) -> [x, y].
 */
function projection(nodes) {
  const pts = nodes.map((n) => state.regions[n.region]).filter(Boolean);
  let [lon0, lon1, lat0, lat1] = [-180, 180, -60, 75];
  if (pts.length) {
    lon0 = Math.min(...pts.map((r) => r.lon_deg));
    lon1 = Math.max(...pts.map((r) => r.lon_deg));
    lat0 = Math.min(...pts.map((r) => r.lat_deg));
    lat1 = Math.max(...pts.map((r) => r.lat_deg));
  }
  const grow = (lo, hi, min) => {
    const extra = Math.max(0, min - (hi - lo)) / 2;
    return [lo - extra, hi + extra];
  };
  [lon0, lon1] = grow(lon0, lon1, MAP_SPAN_LON_MIN);
  [lat0, lat1] = grow(lat0, lat1, MAP_SPAN_LAT_MIN);
  const scale = Math.min((MAP_W - 2 * MAP_PAD) / (lon1 - lon0), (MAP_H - 2 * MAP_PAD) / (lat1 - lat0));
  const cx = (lon0 + lon1) / 2;
  const cy = (lat0 + lat1) / 2;
  const f = (lat, lon) => [MAP_W / 2 + (lon - cx) * scale, MAP_H / 2 - (lat - cy) * scale];
  f.bounds = {
    lon0: cx - MAP_W / 2 / scale,
    lon1: cx + MAP_W / 2 / scale,
    lat0: cy - MAP_H / 2 / scale,
    lat1: cy + MAP_H / 2 / scale,
  };
  return f;
}

/** Map positions: the region's coordinates, nodes of one region spread around them. */
function positions(nodes, project) {
  const pos = new Map();
  const byRegion = new Map();
  for (const n of nodes) {
    if (!byRegion.has(n.region)) byRegion.set(n.region, []);
    byRegion.get(n.region).push(n);
  }
  let unknown = 0;
  for (const [region, members] of byRegion) {
    const r = state.regions[region];
    let base;
    if (r) {
      base = project(r.lat_deg, r.lon_deg);
    } else {
      // A region the catalog does not know: along the bottom edge.
      base = [MAP_PAD + unknown * 140, MAP_H - 24];
      unknown += 1;
    }
    members.forEach((n, i) => {
      const a = (2 * Math.PI * i) / members.length;
      const d = members.length > 1 ? 16 : 0;
      pos.set(n.key, [base[0] + d * Math.cos(a), base[1] + d * Math.sin(a)]);
    });
  }
  return pos;
}

/** Undirected links with the RTT each side measured (mean of the two when both did). */
function linkPairs(nodes) {
  const pairs = new Map();
  for (const n of nodes) {
    for (const l of n.links || []) {
      if (typeof l.rtt_ms !== "number") continue;
      const [a, b] = n.key < l.to ? [n.key, l.to] : [l.to, n.key];
      const id = `${a}|${b}`;
      if (!pairs.has(id)) pairs.set(id, { a, b, samples: [] });
      pairs.get(id).samples.push({ from: n.key, to: l.to, rtt: l.rtt_ms });
    }
  }
  for (const p of pairs.values()) {
    p.rtt = p.samples.reduce((s, x) => s + x.rtt, 0) / p.samples.length;
  }
  return [...pairs.values()];
}

function rttClass(ms) {
  if (ms < 60) return "near";
  if (ms < 160) return "mid";
  return "far";
}

function renderMap(nodes) {
  const map = document.getElementById("map");
  map.replaceChildren();
  const project = projection(nodes);
  const b = project.bounds;
  const grid = svg("g", { class: "grid" });
  for (let lon = Math.ceil(b.lon0 / 30) * 30; lon <= b.lon1; lon += 30) {
    const [x] = project(0, lon);
    grid.append(svg("line", { x1: x, y1: 0, x2: x, y2: MAP_H }));
  }
  for (let lat = Math.ceil(b.lat0 / 30) * 30; lat <= b.lat1; lat += 30) {
    const [, y] = project(lat, 0);
    grid.append(svg("line", { x1: 0, y1: y, x2: MAP_W, y2: y }));
  }
  map.append(grid);
  const pos = positions(nodes, project);
  const byKey = new Map(nodes.map((n) => [n.key, n]));
  const links = svg("g", { class: "links" });
  const labels = svg("g", { class: "link-labels" });
  for (const p of linkPairs(nodes)) {
    const a = pos.get(p.a);
    const c = pos.get(p.b);
    if (!a || !c) continue;
    const line = svg("line", {
      x1: a[0], y1: a[1], x2: c[0], y2: c[1],
      class: `link ${rttClass(p.rtt)}`,
    });
    line.append(
      svg("title", {}, `${nodeLabel(byKey.get(p.a))} \u2194 ${nodeLabel(byKey.get(p.b))}: ${fmt(p.rtt, 1)} ms RTT`),
    );
    links.append(line);
    const mx = (a[0] + c[0]) / 2;
    const my = (a[1] + c[1]) / 2;
    labels.append(svg("text", { x: mx, y: my - 4, class: "rtt" }, `${fmt(p.rtt, 1)} ms`));
  }
  map.append(links, labels);
  const dots = svg("g", { class: "nodes" });
  for (const n of nodes) {
    const [x, y] = pos.get(n.key);
    // Labels go to the left of nodes near the right edge.
    const left = x > MAP_W - 200;
    const tx = left ? x - 12 : x + 12;
    const anchor = left ? "end" : "start";
    const g = svg("g", { class: `node ${n.alive ? "up" : "down"}${n.self ? " self" : ""}` });
    g.append(svg("circle", { cx: x, cy: y, r: n.self ? 9 : 7 }));
    g.append(svg("text", { x: tx, y: y + 4, class: "name", "text-anchor": anchor }, nodeLabel(n)));
    g.append(svg("text", { x: tx, y: y + 18, class: "region", "text-anchor": anchor }, n.region));
    g.append(svg("title", {}, `${nodeLabel(n)} ${n.region} (${n.jurisdiction}) ${n.alive ? "up" : "down"}`));
    dots.append(g);
  }
  map.append(dots);
}

function renderNodes(nodes, gossip) {
  const body = document.querySelector("#nodes tbody");
  body.replaceChildren();
  const stored = nodes.map((n) => n.stored).filter((s) => typeof s === "number");
  const fullest = stored.length ? Math.max(...stored) : null;
  let estimated = false;
  for (const n of nodes) {
    const r = state.rates.get(n.key) || {};
    const tr = el("tr", { class: n.self ? "self" : "" });
    const name = el("td");
    if (n.http && !n.self) {
      const a = el("a", { href: `http://${n.http}/` }, nodeLabel(n));
      name.append(a);
    } else {
      name.textContent = nodeLabel(n) + (n.self ? " (this node)" : "");
    }
    tr.append(name, el("td", {}, n.region), el("td", {}, n.jurisdiction));
    tr.append(el("td", { class: n.alive ? "up" : "down" }, n.alive ? "up" : "down"));
    tr.append(el("td", { class: "num" }, fmt(n.published)));
    tr.append(el("td", { class: "num" }, r.published == null ? "\u2013" : `${fmt(r.published, 1)}/s`));
    tr.append(el("td", { class: "num" }, fmt(n.stored)));
    tr.append(el("td", { class: "num" }, r.stored == null ? "\u2013" : `${fmt(r.stored, 1)}/s`));
    let lag = "\u2013";
    if (typeof n.missing === "number") {
      lag = `${fmt(n.missing)} events`;
    } else if (typeof n.stored === "number" && fullest !== null) {
      lag = `~${fmt(fullest - n.stored)} events`;
      estimated = true;
    }
    tr.append(el("td", { class: "num" }, lag));
    tr.append(el("td", { class: "num" }, fmt(n.policy_epoch)));
    body.append(tr);
  }
  const notes = [];
  if (estimated) {
    notes.push(
      "~ lag is an estimate: events held by the fullest node minus events held here (exact once the node serves /v1/mesh/nodes).",
    );
  }
  if (!gossip && nodes.some((n) => n.name === null)) {
    notes.push(
      "Peers without a name are known only from this node's membership; add them to ?nodes=host:port,... to see their counters.",
    );
  }
  document.getElementById("nodes-note").textContent = notes.join(" ");
}

function renderLinks(nodes) {
  const body = document.querySelector("#links tbody");
  body.replaceChildren();
  const byKey = new Map(nodes.map((n) => [n.key, n]));
  const label = (k) => (byKey.get(k) ? nodeLabel(byKey.get(k)) : k.slice(0, 8));
  const rows = linkPairs(nodes).map((p) => {
    const [a, b] = [label(p.a), label(p.b)].sort();
    const ka = label(p.a) === a ? p.a : p.b;
    const one = (from) => p.samples.find((s) => s.from === from);
    const ab = one(ka);
    const ba = one(ka === p.a ? p.b : p.a);
    return [a, b, ab ? ab.rtt : null, ba ? ba.rtt : null];
  });
  rows.sort((x, y) => x[0].localeCompare(y[0]) || x[1].localeCompare(y[1]));
  for (const [a, b, ab, ba] of rows) {
    const tr = el("tr");
    tr.append(el("td", {}, `${a} \u2194 ${b}`));
    tr.append(el("td", { class: `num ${ab == null ? "" : rttClass(ab)}` }, fmt(ab, 1)));
    tr.append(el("td", { class: `num ${ba == null ? "" : rttClass(ba)}` }, fmt(ba, 1)));
    body.append(tr);
  }
}

function renderRejections(rejected, now) {
  const body = document.querySelector("#rejections tbody");
  body.replaceChildren();
  const prev = state.prevRejected;
  // Every known reason is there at 0 from the node's start; only those counted are rows.
  const entries = [...rejected.entries()].filter((e) => e[1] > 0).sort((a, b) => b[1] - a[1]);
  if (!entries.length) {
    const tr = el("tr");
    tr.append(el("td", { colspan: 3, class: "note" }, "none since the node started"));
    body.append(tr);
  }
  for (const [reason, count] of entries) {
    let rate = "\u2013";
    if (prev && now > prev.t) {
      const before = prev.values.get(reason) || 0;
      rate = `${fmt((count - before) / ((now - prev.t) / 1000), 2)}/s`;
    }
    const tr = el("tr");
    tr.append(el("td", {}, reason), el("td", { class: "num" }, fmt(count)), el("td", { class: "num" }, rate));
    body.append(tr);
  }
  state.prevRejected = { t: now, values: rejected };
}

function renderTail() {
  const body = document.querySelector("#tail tbody");
  body.replaceChildren();
  const byKey = new Map(state.nodes.map((n) => [n.key, n]));
  for (const ev of state.tail.rows) {
    const origin = byKey.get(ev.weftorigin);
    const tr = el("tr");
    const at = Date.parse(ev.time || "");
    tr.append(el("td", {}, Number.isNaN(at) ? "" : utc(at).slice(11)));
    tr.append(el("td", {}, ev.weftstream));
    tr.append(
      el("td", {}, origin ? `${nodeLabel(origin)} (${origin.region})` : String(ev.weftorigin || "").slice(0, 8)),
    );
    tr.append(el("td", {}, ev.type));
    let data = ev.data === undefined ? ev.data_base64 || "" : JSON.stringify(ev.data);
    if (data.length > DATA_CHARS_MAX) data = data.slice(0, DATA_CHARS_MAX) + "\u2026";
    tr.append(el("td", { class: "data" }, data));
    body.append(tr);
  }
}

function setTailState(text) {
  document.getElementById("tail-state").textContent = text;
}

function addTailEvent(data) {
  let ev;
  try {
    ev = JSON.parse(data);
  } catch {
    return;
  }
  state.tail.rows.unshift(ev);
  state.tail.rows.length = Math.min(state.tail.rows.length, TAIL_ROWS_MAX);
  renderTail();
}

/** The reason of an API error response, for the tail's state line. */
async function errorText(r) {
  try {
    const v = await r.json();
    return `${v.error.reason}: ${v.error.message}`;
  } catch {
    return `HTTP ${r.status}`;
  }
}

/**
 * The live tail with the page's token: SSE read through fetch (which can send the
 * Authorization header), frames split on blank lines, resuming after the last id.
 */
function followWithToken(stream) {
  const ctrl = new AbortController();
  state.tail.source = { close: () => ctrl.abort() };
  // The last cursor seen (an opaque token); before any, the newest TAIL_ROWS_MAX events.
  let last = null;
  (async () => {
    while (!ctrl.signal.aborted) {
      const from = last === null ? `last=${TAIL_ROWS_MAX}` : `after=${encodeURIComponent(last)}`;
      const url = `v1/streams/${encodeURIComponent(stream)}/subscribe?${from}`;
      try {
        const r = await fetch(url, {
          headers: { Authorization: `Bearer ${pageToken}`, Accept: "text/event-stream" },
          cache: "no-store",
          signal: ctrl.signal,
        });
        if (!r.ok) {
          // A cursor the node no longer takes (its cursor key was replaced): start again
          // from the newest events.
          if (r.status === 400) last = null;
          setTailState(`${stream}: ${await errorText(r)}; retrying`);
        } else {
          setTailState(`following ${stream} on this node (SSE, with the page's token)`);
          const reader = r.body.getReader();
          const decoder = new TextDecoder();
          let buf = "";
          for (;;) {
            const { value, done } = await reader.read();
            if (done) break;
            buf += decoder.decode(value, { stream: true });
            let end;
            while ((end = buf.indexOf("\n\n")) >= 0) {
              const frame = buf.slice(0, end);
              buf = buf.slice(end + 2);
              let data = "";
              for (const line of frame.split("\n")) {
                if (line.startsWith("data:")) data += line.slice(5).trimStart();
                else if (line.startsWith("id:")) last = line.slice(3).trim() || last;
              }
              if (data) addTailEvent(data);
            }
          }
          setTailState(`${stream}: the node closed the stream; reconnecting`);
        }
      } catch {
        if (ctrl.signal.aborted) return;
        setTailState(`${stream}: not connected (the node is down?); retrying`);
      }
      await new Promise((done) => setTimeout(done, TAIL_RETRY_MS));
    }
  })();
}

function follow(stream) {
  if (state.tail.source) state.tail.source.close();
  state.tail = { source: null, stream, rows: [] };
  renderTail();
  if (!stream) {
    setTailState("enter a stream name to follow it");
    return;
  }
  setTailState(`connecting to ${stream}\u2026`);
  if (pageToken) {
    followWithToken(stream);
    return;
  }
  // EventSource resumes after the last id it saw (Last-Event-ID) by itself.
  const url = `v1/streams/${encodeURIComponent(stream)}/subscribe?last=${TAIL_ROWS_MAX}`;
  const es = new EventSource(url);
  state.tail.source = es;
  es.onopen = () => setTailState(`following ${stream} on this node (SSE)`);
  es.onerror = () =>
    setTailState(
      state.policyEpoch > 0
        ? `${stream}: not connected: this node enforces a policy (epoch ${state.policyEpoch}), which authorizes reads; open the page with #token=<token>`
        : `${stream}: not connected (a stream this node does not store, or the node is down); retrying`,
    );
  es.onmessage = (m) => addTailEvent(m.data);
}

/** UTC `YYYY-MM-DD HH:MM:SS` of unix milliseconds. */
function utc(ms) {
  return new Date(ms).toISOString().replace("T", " ").slice(0, 19);
}

/** The newest audit denials (`/dashboard/audit.json`); a node without it shows a note. */
async function pollAudit() {
  const body = document.querySelector("#audit tbody");
  let v;
  try {
    v = await getJSON("dashboard/audit.json");
  } catch (e) {
    body.replaceChildren();
    const tr = el("tr");
    tr.append(el("td", { colspan: 3, class: "note" }, `audit log not readable here (${e.message})`));
    body.append(tr);
    return;
  }
  body.replaceChildren();
  const rows = (v.denials || []).slice(0, AUDIT_ROWS_MAX);
  if (!rows.length) {
    const tr = el("tr");
    tr.append(el("td", { colspan: 3, class: "note" }, "no denials in the audit log"));
    body.append(tr);
  }
  for (const d of rows) {
    const tr = el("tr", { class: "denial" });
    tr.append(el("td", {}, utc(d.time_ms)), el("td", {}, d.reason), el("td", { class: "num" }, fmt(d.epoch)));
    body.append(tr);
  }
}

function showError(text) {
  const e = document.getElementById("error");
  e.hidden = !text;
  e.textContent = text || "";
}

async function poll() {
  try {
    const [status, metricsText] = await Promise.all([getJSON("v1/status"), getText("metrics")]);
    const metrics = parseMetrics(metricsText);
    state.policyEpoch = status.policy_epoch || 0;
    const view = await loadNodes(status, metrics);
    const now = performance.now();
    // This node first, then by name.
    view.nodes.sort((a, b) => (b.self ? 1 : 0) - (a.self ? 1 : 0) || nodeLabel(a).localeCompare(nodeLabel(b)));
    state.nodes = view.nodes;
    updateRates(view.nodes, now);
    const regions = new Set(view.nodes.map((n) => n.region));
    const up = view.nodes.filter((n) => n.alive).length;
    document.getElementById("summary").textContent =
      `served by ${status.name} (${status.region}) \u00b7 ${view.nodes.length} nodes, ${up} up, in ${regions.size} regions \u00b7 v${status.version}`;
    document.getElementById("source").textContent = view.source;
    renderMap(view.nodes);
    renderNodes(view.nodes, view.gossip);
    renderLinks(view.nodes);
    renderRejections(metrics.rejected, now);
    await pollAudit();
    showError("");
  } catch (e) {
    showError(`cannot read this node's API: ${e.message}`);
  }
}

async function start() {
  try {
    state.regions = await getJSON("dashboard/regions.json");
  } catch {
    state.regions = {};
  }
  await poll();
  setInterval(poll, POLL_MS);
  const input = document.getElementById("stream");
  input.value = params.get("stream") || "";
  document.getElementById("tail-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    follow(input.value.trim());
  });
  follow(input.value.trim());
}

start();
