// quorate status page: polls the node's JSON API (GET only) and draws it.
// Everything is built with DOM calls and textContent (never parsed as HTML), so key names
// from the API cannot inject markup; the CSP allows scripts from this node only.
"use strict";

const POLL_MS = 2000;
const POLICIES_EVERY = 5; // polls; policies change rarely
const KEYS_SHOWN = 50;
const LIST_MAX = 500;
// Full keys whose queue length is fetched per refresh (GET /v1/slots/{key} each):
// only a key at its limit can make a waiter wait on it alone.
const QUEUES_SHOWN = 10;
const AUDIT_SHOWN = 20;
const TOKEN_KEY = "quorate.token";

const $ = (id) => document.getElementById(id);
const state = { timer: null, polls: 0, policies: null, shadow: new Map(), allowlisted: new Map(), audit: [], auditSince: 0, auditForbidden: false, waitingForToken: false };

class Unauthorized extends Error {}
class Forbidden extends Error {}

function token() {
  return sessionStorage.getItem(TOKEN_KEY) || "";
}

async function getJson(path) {
  const headers = { Accept: "application/json" };
  const t = token();
  if (t) headers.Authorization = "Bearer " + t;
  const resp = await fetch(path, { headers, cache: "no-store", credentials: "omit" });
  if (resp.status === 401) throw new Unauthorized(path);
  if (resp.status === 403) throw new Forbidden(path);
  const body = await resp.json().catch(() => null);
  if (!resp.ok) {
    const why = body && body.message ? body.message : "HTTP " + resp.status;
    throw new Error(path + ": " + why);
  }
  return body;
}

// el("td", {class: "num"}, "text", childNode, ...)
function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") e.className = v;
    else e.setAttribute(k, v);
  }
  for (const c of children) {
    if (c === null || c === undefined) continue;
    e.append(typeof c === "string" || typeof c === "number" ? String(c) : c);
  }
  return e;
}

function svgEl(tag, attrs) {
  const e = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
  return e;
}

function replaceRows(tbody, rows, emptyText, columns) {
  if (rows.length === 0) {
    rows = [el("tr", { class: "empty" }, el("td", { colspan: String(columns) }, emptyText))];
  }
  tbody.replaceChildren(...rows);
}

function fmtIndex(i) {
  return i === null || i === undefined ? "–" : String(i);
}

function fmtAge(ms) {
  if (ms < 1000) return "now";
  if (ms < 120000) return Math.round(ms / 1000) + " s ago";
  return Math.round(ms / 60000) + " min ago";
}

function fmtNumber(v) {
  if (v >= 100) return Math.round(v).toLocaleString("en");
  if (v >= 10) return v.toFixed(1);
  return v.toFixed(2).replace(/\.?0+$/, "") || "0";
}

// ---- members ------------------------------------------------------------------

// Digests are compared by the serving node when both had applied the same entries
// (the digest of a different prefix says nothing), so the verdict comes from the API.
function digestCell(n, self) {
  if (!n.reachable || !n.state_digest) return el("td", {}, "–");
  const title = "digest " + n.state_digest + " at entry " + fmtIndex(n.applied_index);
  if (n.id === self.id) {
    return el("td", {}, el("code", { title }, n.state_digest.slice(0, 8)), el("span", { class: "muted" }, " reference"));
  }
  const at = n.digest_compared_at === null || n.digest_compared_at === undefined
    ? null : el("span", { class: "muted" }, " at #" + n.digest_compared_at);
  let verdict;
  if (n.digest_agrees === true) verdict = el("span", { class: "tag ok", title }, "✓ agrees");
  else if (n.digest_agrees === false) verdict = el("span", { class: "tag bad", title }, "✗ differs");
  else verdict = el("span", { class: "tag muted", title }, "not compared yet");
  return el("td", {}, verdict, at);
}

function memberRow(n, member, self) {
  const role = n.reachable ? n.role : "down";
  const offset = n.clock_offset_ms;
  const offsetText = !n.reachable || offset === null || offset === undefined
    ? "–" : (offset > 0 ? "+" : "") + offset + " ms";
  const me = n.id === self.id ? el("span", { class: "tag muted" }, "this node") : null;
  return el("tr", { "data-node": String(n.id), "data-role": role, class: "role-" + role },
    el("th", { scope: "row" }, "node " + n.id, " ", me),
    el("td", {}, el("code", {}, member ? member.api_addr : "?")),
    el("td", {}, el("span", { class: "badge " + role }, role)),
    el("td", {}, n.reachable ? String(n.term) : "–"),
    el("td", { class: "num" }, n.reachable ? fmtIndex(n.committed_index) : "–"),
    el("td", { class: "num" }, n.reachable ? fmtIndex(n.applied_index) : "–"),
    el("td", {}, n.reachable ? (n.ready ? "ready" : "not ready") : "–"),
    el("td", { class: "num" }, offsetText),
    digestCell(n, self),
    el("td", { class: "muted" }, n.reachable ? fmtAge(n.age_ms) : "unreachable"));
}

function renderCluster(c) {
  const members = new Map(c.members.map((m) => [m.id, m]));
  const nodes = c.nodes && c.nodes.length ? c.nodes : [];
  const self = nodes.find((n) => n.id === c.node_id) || { id: c.node_id };
  replaceRows($("members"), nodes.map((n) => memberRow(n, members.get(n.id), self)), "no members known", 10);

  const down = nodes.filter((n) => !n.reachable).length;
  const leaders = nodes.filter((n) => n.reachable && n.role === "leader").length;
  const disagree = nodes.some((n) => n.digest_agrees === false);
  const leader = c.leader_id === null || c.leader_id === undefined ? "none" : "node " + c.leader_id;
  $("summary").textContent = nodes.length + (nodes.length === 1 ? " member" : " members") + " · leader " + leader + " · term " + c.term
    + " · served by node " + c.node_id;
  const health = $("health");
  let text = "healthy";
  let cls = "ok";
  if (leaders !== 1) { text = "no leader"; cls = "bad"; }
  else if (disagree) { text = "digests differ"; cls = "bad"; }
  else if (down > 0) { text = down + " down"; cls = "warn"; }
  else if (nodes.some((n) => !n.ready)) { text = "catching up"; cls = "warn"; }
  health.textContent = text;
  health.className = "pill " + cls;
}

// ---- charts -------------------------------------------------------------------

function drawChart(id, points, format) {
  const fig = $(id);
  const svg = fig.querySelector("svg");
  const W = 300, H = 70, TOP = 16, BOTTOM = 3; // TOP leaves room for the max label
  const last = points.length ? points[points.length - 1] : null;
  fig.querySelector(".value").textContent = last === null ? "–" : format(last);
  const max = Math.max(...points, 0);
  const children = [svgEl("line", { x1: 0, y1: H - 0.5, x2: W, y2: H - 0.5, class: "axis" })];
  if (points.length > 1 && max > 0) {
    const step = W / (points.length - 1);
    const y = (v) => H - BOTTOM - (v / max) * (H - TOP - BOTTOM);
    const xy = points.map((v, i) => (i * step).toFixed(1) + "," + y(v).toFixed(1));
    children.push(svgEl("polygon", { points: "0," + H + " " + xy.join(" ") + " " + W + "," + H, class: "area" }));
    children.push(svgEl("polyline", { points: xy.join(" "), class: "line" }));
    const label = svgEl("text", { x: W - 2, y: 10, "text-anchor": "end", class: "max" });
    label.textContent = "max " + format(max);
    children.push(label);
  } else if (points.length <= 1) {
    const label = svgEl("text", { x: W / 2, y: H / 2, "text-anchor": "middle", class: "max" });
    label.textContent = "collecting samples…";
    children.push(label);
  }
  svg.replaceChildren(...children);
}

function renderStats(s) {
  const secs = Math.max(s.interval_ms, 1) / 1000;
  const per = (f) => s.samples.map((x) => x[f] / secs);
  drawChart("chart-granted", per("granted"), fmtNumber);
  drawChart("chart-denied", per("denied"), fmtNumber);
  drawChart("chart-unavailable", per("unavailable"), fmtNumber);
  drawChart("chart-latency", s.samples.map((x) => x.mean_latency_us / 1000), (v) => v.toFixed(1));
  const minutes = (s.samples.length * s.interval_ms) / 60000;
  const span = s.samples.length === 0 ? "first sample within " + secs + " s"
    : "last " + (minutes >= 1 ? Math.round(minutes) + " min" : Math.round(minutes * 60) + " s")
      + ", one sample every " + secs + " s";
  $("activity-note").textContent = "(node " + s.node_id + "'s own answers; " + span + ")";

  // `remaining` counts down from the bucket size (burst), which may differ from the
  // limit per period; a node older than the field reports burst 0.
  const rows = s.busiest_rate_keys.map((k) => { const size = k.burst || k.limit; return el("tr", { "data-rate-key": k.key },
    el("th", { scope: "row" }, el("code", {}, k.key)),
    el("td", {}, bar(size - k.remaining, size), " ", el("span", { class: "muted" }, k.remaining + " of " + size + " left")),
    el("td", { class: "num" }, String(k.checks)),
    el("td", { class: "num" + (k.limited > 0 ? " bad-text" : "") }, String(k.limited))); });
  replaceRows($("rate-keys"), rows, "no rate checks through this node lately", 4);
  // Requests this node allowed that a shadow-mode policy would have denied.
  state.shadow = new Map((s.shadow_denials || []).map((c) => [c.policy, c.count]));
  // Checks this node answered as allowlisted (not charged), by the check's policy.
  state.allowlisted = new Map((s.allowlisted || []).map((c) => [c.policy, c.count]));
  if (state.policies) renderPolicies(state.policies);
}

// ---- keys -------------------------------------------------------------------------

function bar(used, limit) {
  const ratio = limit > 0 ? Math.min(used / limit, 1) : 1;
  const fill = el("span", { class: "fill" + (ratio >= 1 ? " full" : ratio >= 0.8 ? " high" : "") });
  fill.style.width = (ratio * 100).toFixed(1) + "%";
  return el("span", { class: "bar", role: "meter", "aria-valuemin": "0", "aria-valuemax": String(limit), "aria-valuenow": String(used) }, fill);
}

function renderKeys(list) {
  const fullness = (e) => (e.limit > 0 ? e.used / e.limit : e.used > 0 ? Infinity : 0);
  const sorted = list.limits.slice().sort((a, b) =>
    fullness(b) - fullness(a) || b.used - a.used || (a.key < b.key ? -1 : 1));
  const rows = sorted.slice(0, KEYS_SHOWN).map((e) => el("tr", { "data-key": e.key, "data-used": String(e.used), "data-limit": String(e.limit) },
    el("th", { scope: "row" }, el("code", {}, e.key)),
    el("td", {}, bar(e.used, e.limit)),
    el("td", { class: "num" }, e.used + " / " + e.limit),
    el("td", { class: "muted" }, e.source === "policy" && e.policy ? "policy " + e.policy : e.source),
    el("td", { class: "num queue", "data-queue-key": e.key }, "–")));
  replaceRows($("keys"), rows, "no keys in use or overridden under this prefix", 5);
  fillQueues(sorted.slice(0, KEYS_SHOWN).filter((e) => e.limit > 0 && e.used >= e.limit).slice(0, QUEUES_SHOWN));
  $("keys-count").textContent = "(" + list.limits.length + (list.truncated ? "+" : "") + ", fullest first)";
  let note = "";
  if (sorted.length > KEYS_SHOWN) note = "Showing the " + KEYS_SHOWN + " fullest of " + sorted.length + ". ";
  if (list.truncated) note += "More than " + LIST_MAX + " keys match: narrow the prefix.";
  $("keys-note").textContent = note;
}

// The queue length of each full key shown, in its row's "Waiting" cell (best effort:
// a key whose read fails keeps its dash).
async function fillQueues(full) {
  await Promise.allSettled(full.map(async (e) => {
    const s = await getJson("/v1/slots/" + encodeURIComponent(e.key));
    const cell = [...document.querySelectorAll("#keys td[data-queue-key]")].find((c) => c.dataset.queueKey === e.key);
    if (cell && s.queue) cell.textContent = String(s.queue.length);
  }));
}

// ---- policies -----------------------------------------------------------------

function renderPolicies(p) {
  state.policies = p;
  const rule = (s) => s.kind === "concurrency"
    ? s.pattern + " → " + s.limit + " at once"
    : s.limit + " per " + (s.period_ms / 1000) + " s" + (s.burst ? ", burst " + s.burst : "");
  const mode = (e) => e.mode === "shadow"
    ? el("span", { class: "tag warn", title: "decided and counted, never denies" }, "shadow")
    : el("span", { class: "tag muted" }, "enforce");
  const rows = p.policies.map((e) => el("tr", { "data-policy": e.name, "data-mode": e.mode || "enforce" },
    el("th", { scope: "row" }, e.name),
    el("td", {}, el("span", { class: "tag muted" }, e.kind)),
    el("td", {}, rule(e)),
    el("td", {}, mode(e)),
    el("td", { class: "num" }, e.mode === "shadow" ? String(state.shadow.get(e.name) || 0) : "–"),
    el("td", { class: "num" }, String(state.allowlisted.get(e.name) || 0))));
  // Shadow denials under a name no policy has are an [envoy] descriptor limit's
  // (`shadow_mode = true`), counted under the limit's name.
  const named = new Set(p.policies.map((e) => e.name));
  for (const [name, count] of state.shadow) {
    if (named.has(name)) continue;
    rows.push(el("tr", { "data-policy": name, "data-mode": "shadow", "data-kind": "envoy" },
      el("th", { scope: "row" }, name),
      el("td", {}, el("span", { class: "tag muted" }, "envoy")),
      el("td", { class: "muted" }, "descriptor limit in [envoy]"),
      el("td", {}, mode({ mode: "shadow" })),
      el("td", { class: "num" }, String(count)),
      el("td", { class: "num" }, "–")));
  }
  replaceRows($("policies"), rows, "no policies", 6);
  $("default-limit").textContent = "(other keys: " + p.default_limit + " at once)";
  $("tiers").textContent = p.tiers.length
    ? "Tiers: " + p.tiers.map((t) => t.name + " ×" + t.multiplier).join(", ")
    : "";
}

// ---- allowlist ----------------------------------------------------------------

function renderAllowlist(a) {
  const rows = a.entries.map((e) => el("tr", { "data-allow": e.key !== undefined ? "key:" + e.key : "ip:" + e.ip },
    el("th", { scope: "row" }, e.policy ? "policy " + e.policy : el("span", { class: "tag muted" }, "every check")),
    el("td", {}, el("span", { class: "tag muted" }, e.key !== undefined ? "key" : "ip")),
    el("td", {}, el("code", {}, e.key !== undefined ? e.key : e.ip))));
  replaceRows($("allowlist"), rows, "no entries: every check is charged", 3);
  $("allowlist-count").textContent = "(" + a.entries.length + " of " + a.max + "; allowed without charge)";
}

// ---- audit trail ----------------------------------------------------------------

// The last changes, newest first. Read incrementally (`since` = the last index seen),
// so a large ring is read once, not on every poll. The trail needs an admin token:
// with a client token the panel says so instead of failing the page.
function renderAudit(a) {
  const v = (x) => (x === undefined || x === null ? el("span", { class: "muted" }, "–") : el("code", {}, x));
  state.audit = state.audit.concat(a.records).slice(-AUDIT_SHOWN);
  if (a.records.length) state.auditSince = a.records[a.records.length - 1].index;
  const rows = state.audit.slice().reverse().map((r) => el("tr", { "data-audit-key": r.key, "data-index": String(r.index) },
    el("td", { class: "num" }, String(r.index)),
    el("td", { class: "muted" }, new Date(r.time_ms).toLocaleString("en-GB")),
    el("td", {}, r.caller),
    el("td", {}, el("span", { class: "tag muted" }, r.op)),
    el("th", { scope: "row" }, el("code", {}, r.key)),
    el("td", {}, v(r.before)),
    el("td", {}, v(r.after))));
  replaceRows($("audit"), rows, "no admin changes recorded yet", 7);
  $("audit-note").textContent = "(admin changes, newest first; the cluster keeps the last " + a.capacity + ")";
}

function auditNeedsAdmin(err) {
  if (!(err instanceof Forbidden)) throw err;
  // Asked once per token: a client token will not become an admin one.
  state.auditForbidden = true;
  replaceRows($("audit"), [], "the audit trail needs an admin token", 7);
}

// ---- polling ------------------------------------------------------------------

async function poll() {
  clearTimeout(state.timer);
  state.timer = null;
  if (state.waitingForToken) return;
  const prefix = $("prefix").value.trim();
  const limitsPath = "/v1/limits?max=" + LIST_MAX + (prefix ? "&prefix=" + encodeURIComponent(prefix) : "");
  const wantPolicies = state.polls % POLICIES_EVERY === 0;
  state.polls += 1;
  const jobs = [
    getJson("/v1/cluster").then(renderCluster),
    getJson("/v1/stats").then(renderStats),
    getJson(limitsPath).then(renderKeys),
  ];
  if (wantPolicies) {
    jobs.push(getJson("/v1/policies").then(renderPolicies));
    jobs.push(getJson("/v1/allowlist").then(renderAllowlist));
    if (!state.auditForbidden) {
      jobs.push(getJson("/v1/audit?max=1000&since=" + state.auditSince).then(renderAudit, auditNeedsAdmin));
    }
  }
  const results = await Promise.allSettled(jobs);
  const failed = results.filter((r) => r.status === "rejected").map((r) => r.reason);
  if (failed.some((e) => e instanceof Unauthorized)) {
    askForToken(token() ? "That token was refused." : "");
    return;
  }
  const status = $("status");
  if (failed.length) {
    status.textContent = "error: " + failed[0].message;
    status.className = "error";
    if (wantPolicies) state.polls = 0; // try policies again next time
  } else {
    status.textContent = "live · updated " + new Date().toLocaleTimeString("en-GB");
    status.className = "";
  }
  schedule();
}

function schedule() {
  clearTimeout(state.timer);
  state.timer = document.hidden ? null : setTimeout(poll, POLL_MS);
}

function askForToken(message) {
  state.waitingForToken = true;
  $("auth").hidden = false;
  $("main").hidden = true;
  $("auth-error").textContent = message;
  $("status").textContent = "token needed";
  $("token").focus();
}

function start() {
  $("auth").addEventListener("submit", (ev) => {
    ev.preventDefault();
    sessionStorage.setItem(TOKEN_KEY, $("token").value.trim());
    $("token").value = "";
    $("auth").hidden = true;
    $("main").hidden = false;
    $("forget").hidden = false;
    state.waitingForToken = false;
    state.polls = 0;
    state.auditForbidden = false;
    poll();
  });
  $("forget").hidden = !token();
  $("forget").addEventListener("click", () => {
    sessionStorage.removeItem(TOKEN_KEY);
    $("forget").hidden = true;
    poll();
  });
  let debounce = null;
  $("filter").addEventListener("submit", (ev) => { ev.preventDefault(); poll(); });
  $("prefix").addEventListener("input", () => {
    clearTimeout(debounce);
    debounce = setTimeout(poll, 300);
  });
  document.addEventListener("visibilitychange", () => {
    if (document.hidden) {
      clearTimeout(state.timer);
      state.timer = null;
      $("status").textContent = "paused (tab hidden)";
    } else {
      poll();
    }
  });
  poll();
}

start();
