// The observatory page: polls this node's JSON routes and draws them with inline SVG.
// Everything comes from the node that served the page (node/ops/observatory.py); text from
// the ledger (task names, ids) is only ever set as textContent, never parsed as HTML.
"use strict";

const POLL_MS = 2000;
const SVG = "http://www.w3.org/2000/svg";
const KIND_COLOR = { identity: "#8a8f94", template: "#2c6fbb", attestation: "#d08a1c" };
const state = { task: "", selected: "", me: "", lineageAt: 0 };

function $(id) { return document.getElementById(id); }
function short(hex) { return hex ? String(hex).slice(0, 8) : "-"; }
function num(x, digits) { return x === null || x === undefined ? "-" : Number(x).toFixed(digits); }

function hue(hex) {
  let h = 0;
  for (const c of String(hex).slice(0, 12)) h = (h * 31 + c.charCodeAt(0)) % 360;
  return h;
}
function authorColor(hex) { return `hsl(${hue(hex)}, 60%, 45%)`; }

function el(tag, attrs, parent, text) {
  const node = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, String(v));
  if (text !== undefined) node.textContent = text;
  if (parent) parent.appendChild(node);
  return node;
}
function html(tag, parent, text, cls) {
  const node = document.createElement(tag);
  if (text !== undefined) node.textContent = text;
  if (cls) node.className = cls;
  if (parent) parent.appendChild(node);
  return node;
}
function clear(node) { while (node.firstChild) node.removeChild(node.firstChild); }
function title(node, text) { el("title", {}, node, text); }

async function getJSON(path) {
  const response = await fetch(path, { cache: "no-store" });
  if (!response.ok) throw new Error(`${path}: HTTP ${response.status}`);
  return response.json();
}

// --- header ------------------------------------------------------------------------------
function drawHeader(status) {
  state.me = status.key_id;
  $("whoami").textContent =
    `key ${short(status.key_id)} · peer ${short(status.peer_id)} · up ${Math.round(status.uptime_s)} s`;
}

// --- peers and links ---------------------------------------------------------------------
// Nodes: this node, its connected peers (by the key each proved) and the other authors of the
// newest vertices. Links: connections (grey), and among the newest vertices who attested whose
// template (orange) and whose template bred from whose (blue).
function authorLinks(dag) {
  const authorOf = new Map(dag.vertices.map((v) => [v.id, v.author]));
  const links = new Map();
  const add = (from, to, kind) => {
    if (from && to && from !== to) {
      const key = `${kind} ${from} ${to}`;
      links.set(key, { from, to, kind, n: (links.get(key)?.n || 0) + 1 });
    }
  };
  for (const v of dag.vertices) {
    if (v.kind === "attestation") add(v.author, authorOf.get(v.template), "attests");
    if (v.kind === "template") for (const p of v.genetic_parents) add(v.author, authorOf.get(p), "breeds from");
  }
  return [...links.values()];
}

function drawPeers(peers, dag) {
  const svg = $("peers-graph");
  clear(svg);
  const cx = 180, cy = 105, r = 80;
  const list = peers.peers;
  const keyed = new Set(list.map((p) => p.author).filter(Boolean));
  const others = [...new Set(dag.vertices.map((v) => v.author))]
    .filter((a) => a !== peers.me && !keyed.has(a)).sort();
  const ring = [...list.map((p) => ({ id: p.author || p.peer, peer: p })), ...others.map((a) => ({ id: a }))];
  const pos = new Map([[peers.me, [cx, cy]]]);
  ring.forEach((n, i) => {
    const a = (2 * Math.PI * i) / Math.max(1, ring.length) - Math.PI / 2;
    pos.set(n.id, [cx + r * Math.cos(a), cy + r * Math.sin(a)]);
  });
  for (const n of ring) {
    if (!n.peer) continue;
    const [x, y] = pos.get(n.id);
    el("line", { x1: cx, y1: cy, x2: x, y2: y, class: "edge link connection", "stroke-width": 3 }, svg);
  }
  for (const l of authorLinks(dag)) {
    const a = pos.get(l.from), b = pos.get(l.to);
    if (!a || !b) continue;
    const bend = l.kind === "attests" ? 18 : -18;  // the two kinds curve apart
    const mx = (a[0] + b[0]) / 2 + bend * Math.sign(b[1] - a[1] || 1);
    const my = (a[1] + b[1]) / 2 - bend * Math.sign(b[0] - a[0] || 1);
    const path = el("path", {
      d: `M${a[0]},${a[1]} Q${mx},${my} ${b[0]},${b[1]}`, fill: "none", class: "link",
      stroke: l.kind === "attests" ? KIND_COLOR.attestation : KIND_COLOR.template,
      "stroke-width": Math.min(4, 1 + Math.log2(l.n)), opacity: 0.8,
    }, svg);
    title(path, `${short(l.from)} ${l.kind} ${short(l.to)}: ${l.n} among the newest vertices`);
  }
  for (const n of ring) {
    const [x, y] = pos.get(n.id);
    const known = n.peer ? n.peer.author : n.id;
    const dot = el("circle", { cx: x, cy: y, r: n.peer ? 9 : 6, fill: known ? authorColor(known) : "#bbb" }, svg);
    title(dot, n.peer ? `peer ${n.peer.peer}\nkey ${n.peer.author || "(handshake pending)"}`
      : `author ${n.id} (not connected to this node)`);
    el("text", { x: x, y: y + 20, "text-anchor": "middle" }, svg, short(n.id));
  }
  el("circle", { cx, cy, r: 13, fill: authorColor(peers.me), stroke: "#000" }, svg);
  el("text", { x: cx, y: cy + 26, "text-anchor": "middle" }, svg, `me ${short(peers.me)}`);
  const ul = $("peers");
  clear(ul);
  if (!list.length) html("li", ul, "no peer connected", "muted");
  for (const p of list) {
    html("li", ul, `${p.peer.slice(0, 16)}… key ${p.author ? short(p.author) : "pending"}`);
  }
}

// --- ledger DAG --------------------------------------------------------------------------
function drawDag(dag) {
  const svg = $("dag-graph");
  clear(svg);
  const kinds = Object.entries(dag.by_kind).map(([k, n]) => `${n} ${k}`).join(", ");
  $("dag-summary").textContent =
    `${dag.total} vertices (${kinds}); ${dag.tips} tips; newest ${dag.vertices.length} shown`;
  const vs = dag.vertices;
  const legend = $("dag-legend");
  clear(legend);
  if (!vs.length) return;
  const authors = [...new Set(vs.map((v) => v.author))].sort();
  const depths = vs.map((v) => v.depth);
  const d0 = Math.min(...depths), d1 = Math.max(...depths);
  const W = 760, H = 240, left = 10, right = 10;
  const lane = (H - 20) / Math.max(1, authors.length);
  const pos = new Map();
  for (const v of vs) {
    const x = left + ((v.depth - d0) / Math.max(1, d1 - d0)) * (W - left - right);
    const y = 10 + lane * (authors.indexOf(v.author) + 0.5);
    pos.set(v.id, [x, y]);
  }
  for (const v of vs) {
    const [x, y] = pos.get(v.id);
    for (const p of v.parents) {
      const q = pos.get(p);
      if (q) el("line", { x1: q[0], y1: q[1], x2: x, y2: y, class: "edge", "stroke-width": 0.6 }, svg);
    }
  }
  for (const v of vs) {
    const [x, y] = pos.get(v.id);
    const dot = el("circle", {
      cx: x, cy: y, r: v.kind === "template" ? 5 : 3.5,
      fill: KIND_COLOR[v.kind] || "#000", stroke: authorColor(v.author), "stroke-width": 1.5,
      class: "vertex " + v.kind,
    }, svg);
    let text = `${v.kind} ${v.id}\nauthor ${v.author} seq ${v.seq} depth ${v.depth}`;
    if (v.kind === "template") text += `\ntask ${v.task} claimed fitness ${num(v.fitness, 4)}`;
    if (v.kind === "attestation") text += `\n${v.verdict} on ${short(v.template)} measured ${num(v.fitness, 4)}`;
    title(dot, text);
    if (v.kind === "template") {
      dot.style.cursor = "pointer";
      dot.addEventListener("click", () => selectTemplate(v.id));
    }
  }
  for (const [kind, color] of Object.entries(KIND_COLOR)) {
    html("span", legend, "", "chip").style.background = color;
    html("span", legend, kind);
  }
  html("span", legend, "  · lanes: authors ·", "muted");
  for (const a of authors) {
    html("span", legend, "", "chip").style.background = authorColor(a);
    html("span", legend, short(a) + (a === dag.me ? " (me)" : ""), "mono");
  }
}

// --- evolution progress and rejections -----------------------------------------------------
function drawProgress(status) {
  const table = $("progress");
  clear(table);
  const cols = ["task", "generation", "evaluations", "best", "best verified", "published",
    "bred from others", "migrants in", "ES sets pooled"];
  const head = html("tr", html("thead", table));
  for (const c of cols) html("th", head, c);
  const body = html("tbody", table);
  for (const [task, t] of Object.entries(status.tasks)) {
    const row = html("tr", body);
    for (const v of [task, t.generation, t.evaluations, num(t.best_fitness, 4),
      num(t.best_verified_fitness, 4), t.published, t.bred_from_others,
      t.migrants_injected, t.es_sets_pooled]) html("td", row, String(v));
  }
  if (!Object.keys(status.tasks).length) html("td", html("tr", body), "this node evolves no task");
}

function drawRejections(status) {
  const svg = $("rejections");
  clear(svg);
  const items = Object.entries(status.rejected).sort((a, b) => b[1] - a[1]).slice(0, 8);
  if (!items.length) {
    el("text", { x: 10, y: 20 }, svg, "nothing rejected");
    return;
  }
  const max = Math.max(...items.map((i) => i[1]));
  items.forEach(([reason, n], i) => {
    const y = 8 + i * 19;
    el("text", { x: 0, y: y + 11 }, svg, reason.slice(0, 22));
    el("rect", { x: 150, y, width: Math.max(1, (170 * n) / max), height: 13, fill: "#b3261e" }, svg);
    el("text", { x: 154 + (170 * n) / max, y: y + 11 }, svg, String(n));
  });
}

// --- best fitness over time ------------------------------------------------------------------
function drawHistory(h) {
  const svg = $("history");
  clear(svg);
  const W = 760, H = 220, L = 40, R = 10, T = 10, B = 24;
  const node = h.node.filter((p) => p.best_fitness !== undefined);
  const pts = [];
  for (const p of node) {
    if (p.best_fitness !== null) pts.push([p.t_ms, p.best_fitness]);
    if (p.best_verified_fitness !== null) pts.push([p.t_ms, p.best_verified_fitness]);
  }
  for (const c of h.claims) pts.push([c.ts_ms, c.fitness]);
  if (!pts.length) {
    el("text", { x: L, y: 30 }, svg, `no fitness yet for task ${h.task}`);
    return;
  }
  const t0 = Math.min(...pts.map((p) => p[0])), t1 = Math.max(...pts.map((p) => p[0]));
  let f0 = Math.min(...pts.map((p) => p[1])), f1 = Math.max(...pts.map((p) => p[1]));
  if (f1 - f0 < 1e-9) { f0 -= 0.5; f1 += 0.5; }
  const X = (t) => L + ((t - t0) / Math.max(1, t1 - t0)) * (W - L - R);
  const Y = (f) => H - B - ((f - f0) / (f1 - f0)) * (H - T - B);
  el("line", { x1: L, y1: H - B, x2: W - R, y2: H - B, class: "axis" }, svg);
  el("line", { x1: L, y1: T, x2: L, y2: H - B, class: "axis" }, svg);
  el("text", { x: 2, y: Y(f1) + 4 }, svg, num(f1, 3));
  el("text", { x: 2, y: Y(f0) + 4 }, svg, num(f0, 3));
  el("text", { x: L, y: H - 6 }, svg, new Date(t0).toLocaleTimeString());
  el("text", { x: W - R, y: H - 6, "text-anchor": "end" }, svg, new Date(t1).toLocaleTimeString());
  for (const c of h.claims) {
    title(el("circle", { cx: X(c.ts_ms), cy: Y(c.fitness), r: 2.5, fill: authorColor(c.author), opacity: 0.7 }, svg),
      `claim ${num(c.fitness, 4)} by ${short(c.author)} (template ${short(c.id)})`);
  }
  const line = (key, color, dash) => {
    const d = node.filter((p) => p[key] !== null)
      .map((p, i) => `${i ? "L" : "M"}${X(p.t_ms).toFixed(1)},${Y(p[key]).toFixed(1)}`).join("");
    if (d) el("path", { d, stroke: color, fill: "none", "stroke-width": 2, "stroke-dasharray": dash || "" }, svg);
  };
  line("best_fitness", "#555", "4 3");
  line("best_verified_fitness", "#1b7f3b");
  el("text", { x: W - R, y: T + 10, "text-anchor": "end" }, svg, "— best verified   - - best (own)");
}

// --- leaderboard -----------------------------------------------------------------------------
// The held-out score beside the claim (issue 17), whose it is: a test subset or fresh episode
// seeds drawn after the template was published ("-": nobody we trust measured one).
function heldOut(t) {
  if (!t.held_out) return "-";
  const by = t.held_out.by === "us" ? "" : ` by ${short(t.held_out.by)}`;
  return num(t.held_out.fitness, 4) + by + (t.overfit ? " overfit" : "");
}

// The task author's score on its private held-out rows: shown as such, not reproducible.
function designated(t) {
  if (!t.designated) return "-";
  const by = t.designated.by === "us" ? "us" : short(t.designated.by);
  return `${num(t.designated.fitness, 4)} (task author ${by}, private: not reproducible)`;
}

function drawLeaderboard(board) {
  const select = $("task");
  const options = [...select.options].map((o) => o.value).join("\n");
  if (options !== board.tasks.join("\n")) {
    clear(select);
    for (const t of board.tasks) html("option", select, t).value = t;
  }
  select.value = board.task;
  const table = $("leaderboard");
  clear(table);
  const head = html("tr", html("thead", table));
  for (const c of ["", "template", "author", "verified", "fitness", "claimed", "held-out",
    "task author's private", "attest.", "params", "bytes", "latency µs", "gen"]) html("th", head, c);
  const body = html("tbody", table);
  board.templates.forEach((t) => {
    const row = html("tr", body, undefined, "pick" + (t.id === state.selected ? " selected" : ""));
    row.dataset.id = t.id;
    const shown = t.verified_fitness === null ? t.claimed_fitness : t.verified_fitness;
    const cells = [t.pareto ? "★" : "", short(t.id), short(t.author) + (t.author === state.me ? " (me)" : ""),
      t.verified ? (t.measured_by ? `yes, measured by ${t.measured_by === "us" ? "us" : short(t.measured_by)}` : "yes, attested") : t.overfit ? "no: overfit" : "no",
      num(shown, 4), num(t.claimed_fitness, 4), heldOut(t), designated(t), t.verifications, t.params, t.bytes,
      num(t.latency_ns / 1000, 1), t.generation];
    cells.forEach((v, i) => {
      const td = html("td", row, String(v));
      if (i === 3) td.className = t.verified ? "good" : "muted";
    });
    row.addEventListener("click", () => selectTemplate(t.id));
  });
  if (!board.templates.length) html("td", html("tr", body), `no template of ${board.task} yet`);
  // Until the user picks one: the best template with ancestors, else the best.
  if (!state.selected && board.templates.length) {
    const bred = board.templates.find((t) => t.genetic_parents > 0);
    selectTemplate((bred || board.templates[0]).id);
  }
}

// --- lineage ---------------------------------------------------------------------------------
function selectTemplate(id) {
  state.selected = id;
  state.lineageAt = 0;
  for (const row of document.querySelectorAll("#leaderboard tr.pick")) {
    row.classList.toggle("selected", row.dataset.id === id);
  }
  refreshLineage().catch(showError);
}

async function refreshLineage() {
  if (!state.selected) return;
  state.lineageAt = Date.now();
  drawLineage(await getJSON(`/api/lineage/${state.selected}?limit=32`));
}

function drawLineage(view) {
  $("lineage-title").textContent = `of ${view.root}` + (view.truncated ? " (first 32 ancestors)" : "");
  const svg = $("lineage");
  clear(svg);
  const rows = new Map();
  for (const n of view.nodes) {
    if (!rows.has(n.depth)) rows.set(n.depth, []);
    rows.get(n.depth).push(n);
  }
  const bw = 130, bh = 40, gap = 8, W = 1100;
  const depthCount = rows.size;
  const H = Math.max(120, depthCount * (bh + 26) + 10);
  svg.setAttribute("viewBox", `0 0 ${W} ${H}`);
  const pos = new Map();
  for (const [depth, list] of rows) {
    const perRow = Math.max(1, Math.floor(W / (bw + gap)));
    list.slice(0, perRow).forEach((n, i) => {
      const x = (W - Math.min(list.length, perRow) * (bw + gap)) / 2 + i * (bw + gap);
      pos.set(n.id, [x, 6 + depth * (bh + 26)]);
    });
  }
  for (const n of view.nodes) {
    const p = pos.get(n.id);
    if (!p || n.missing) continue;
    for (const parent of n.genetic_parents) {
      const q = pos.get(parent);
      if (q) el("line", { x1: p[0] + bw / 2, y1: p[1] + bh, x2: q[0] + bw / 2, y2: q[1], class: "edge", "stroke-width": 1.2 }, svg);
    }
  }
  const ol = $("lineage-list");
  clear(ol);
  for (const n of view.nodes) {
    const p = pos.get(n.id);
    const g = p ? el("g", { class: "lineage-node", transform: `translate(${p[0]},${p[1]})` }, svg) : null;
    if (n.missing) {
      if (g) {
        el("rect", { width: bw, height: bh, rx: 5, fill: "#f3f3f3", stroke: "#bbb", "stroke-dasharray": "3 2" }, g);
        el("text", { x: 6, y: 16 }, g, short(n.id));
        el("text", { x: 6, y: 31 }, g, "not in this ledger");
      }
      html("li", ol, `${short(n.id)}: not in this ledger (yet)`, "muted");
      continue;
    }
    const valid = n.verdicts.filter((v) => v.verdict === "valid").length;
    const invalid = n.verdicts.length - valid;
    if (g) {
      el("rect", { width: bw, height: bh, rx: 5, fill: "#fff", stroke: authorColor(n.author), "stroke-width": n.depth === 0 ? 3 : 1.5 }, g);
      el("text", { x: 6, y: 15 }, g, `${short(n.id)} g${n.generation}`);
      el("text", { x: 6, y: 31 }, g, `${num(n.fitness, 3)} ✓${valid}${invalid ? " ✗" + invalid : ""} ${short(n.author).slice(0, 4)}`);
      title(g, `template ${n.id}\nauthor ${n.author}${n.mine ? " (me)" : ""}\n` +
        `claimed ${num(n.fitness, 4)}, generation ${n.generation}, ${n.operator}`);
      g.addEventListener("click", () => selectTemplate(n.id));
    }
    const verdicts = n.verdicts.map((v) => `${v.verdict} ${num(v.fitness, 4)} by ${short(v.verifier)}` +
      (v.attestation ? "" : " (local)")).join("; ");
    html("li", ol, `${"  ".repeat(n.depth)}${short(n.id)} by ${short(n.author)}${n.mine ? " (me)" : ""}: ` +
      `claimed ${num(n.fitness, 4)}, gen ${n.generation}, ${n.operator}; ` +
      (verdicts || "no verdict yet"));
  }
}

// --- polling ---------------------------------------------------------------------------------
function showError(err) {
  const s = $("state");
  s.textContent = `node not answering: ${err.message}`;
  s.className = "bad";
}

async function refresh() {
  const task = state.task ? `?task=${encodeURIComponent(state.task)}` : "";
  const [status, peers, dag, board, history] = await Promise.all([
    getJSON("/status"), getJSON("/api/peers"), getJSON("/api/dag?limit=120"),
    getJSON(`/api/leaderboard${task}${task ? "&" : "?"}limit=20`), getJSON(`/api/history${task}`),
  ]);
  drawHeader(status);
  drawPeers(peers, dag);
  drawDag(dag);
  drawProgress(status);
  drawRejections(status);
  drawHistory(history);
  drawLeaderboard(board);
  if (state.selected && Date.now() - state.lineageAt > 3 * POLL_MS) await refreshLineage();
  const s = $("state");
  s.textContent = `updated ${new Date().toLocaleTimeString()}`;
  s.className = "muted";
}

async function loop() {
  try {
    await refresh();
  } catch (err) {
    showError(err);
  }
  setTimeout(loop, POLL_MS);
}

$("task").addEventListener("change", (e) => {
  state.task = e.target.value;
  state.selected = "";
  refresh().catch(showError);
});
loop();
