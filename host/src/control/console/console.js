// The millrace operator console: plain DOM, no framework. Every datum comes from the admin API
// on this origin with the operator's token (sessionStorage of this tab only).

const $ = (selector, root = document) => root.querySelector(selector);
const TOKEN_KEY = "millrace.token";
let current = "overview";

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (key === "class") node.className = value;
    else if (key === "dataset") Object.assign(node.dataset, value);
    else if (key === "style") node.style.cssText = value; // CSSOM: allowed by the page's CSP
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else if (value !== undefined && value !== null && value !== false) node.setAttribute(key, value === true ? "" : value);
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function status(text, isError = false) {
  const s = $("#status");
  s.textContent = text;
  s.classList.toggle("error", isError);
}

class Unauthorized extends Error {}

async function api(path, options = {}) {
  const headers = { accept: "application/json" };
  const token = sessionStorage.getItem(TOKEN_KEY);
  if (token) headers.authorization = `Bearer ${token}`;
  if (options.body !== undefined) headers["content-type"] = "application/json";
  const response = await fetch(path, {
    method: options.method || "GET",
    headers,
    body: options.body === undefined ? undefined : JSON.stringify(options.body),
  });
  const text = await response.text();
  let doc = null;
  try { doc = text ? JSON.parse(text) : null; } catch { doc = { detail: text }; }
  if (response.status === 401) throw new Unauthorized(doc && doc.detail || "credentials needed");
  if (!response.ok) throw new Error(doc && (doc.detail || doc.title) || `HTTP ${response.status}`);
  return doc;
}

// ---- pictures ----------------------------------------------------------------------------

const SVG = "http://www.w3.org/2000/svg";

/** A sparkline of `values` (and `failed` in red under it), `width`×`height`. */
function sparkline(values, failed, label, width = 180, height = 32) {
  const svg = document.createElementNS(SVG, "svg");
  svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
  svg.setAttribute("width", width);
  svg.setAttribute("height", height);
  svg.setAttribute("role", "img");
  svg.setAttribute("aria-label", label);
  svg.classList.add("spark");
  const max = Math.max(1, ...values);
  const step = values.length > 1 ? width / (values.length - 1) : width;
  const line = (series, cls) => {
    if (!series.length) return;
    const points = series.map((v, i) => `${(i * step).toFixed(1)},${(height - 2 - (v / max) * (height - 4)).toFixed(1)}`);
    if (points.length === 1) points.push(`${width},${points[0].split(",")[1]}`);
    const path = document.createElementNS(SVG, "polyline");
    path.setAttribute("points", points.join(" "));
    path.setAttribute("class", cls);
    svg.append(path);
  };
  line(values, "received");
  if (failed.some((v) => v > 0)) line(failed, "failed");
  return svg;
}

/** Horizontal bars: `rows` of [label, value, class]. */
function bars(rows, unit) {
  const max = Math.max(1, ...rows.map((r) => r[1]));
  return el("ul", { class: "bars" }, rows.map(([label, value, cls]) =>
    el("li", {},
      el("span", { class: "bar-label" }, label),
      el("span", { class: `bar ${cls || ""}`, style: `width:${Math.max(2, (value / max) * 100)}%` }),
      el("span", { class: "bar-value" }, `${value}${unit || ""}`))));
}

// ---- overview ----------------------------------------------------------------------------

function fmtRate(failed, runs) {
  if (!runs) return "–";
  return `${((100 * failed) / runs).toFixed(1)} %`;
}

async function showOverview() {
  const doc = await api("/v1/overview");
  $("#interval").textContent = doc.interval_s;
  const body = $("#overview-table tbody");
  body.replaceChildren(...doc.routes.map((r) => {
    const received = r.points.map((p) => p.received);
    const failed = r.points.map((p) => p.failed);
    const p99s = r.points.map((p) => p.p99_ms).filter((v) => v !== null);
    const p99 = p99s.length ? `${p99s[p99s.length - 1]} ms` : "–";
    return el("tr", { dataset: { plant: r.plant, route: r.route } },
      el("td", {}, r.plant),
      el("th", { scope: "row" }, r.route),
      el("td", {}, `${r.source} → ${r.sink}`),
      el("td", { class: "versions" }, r.steps.map((s) =>
        el("span", { class: "version", title: s.digest }, `${s.plugin}@${s.version}`))),
      el("td", { class: "num received" }, r.received),
      el("td", { class: `num failed ${r.failed ? "bad" : ""}` }, r.failed),
      el("td", { class: "num rate", title: `${r.failed} of ${r.runs} chain runs failed (replays are runs)` }, fmtRate(r.failed, r.runs)),
      el("td", { class: "num p99" }, p99),
      el("td", {}, sparkline(received, failed, `${r.route}: messages per interval, last hour`)));
  }));
  if (!doc.routes.length) body.append(el("tr", {}, el("td", { colspan: 9 }, "No routes of your plants.")));
}

// ---- dead letters ------------------------------------------------------------------------

let deadLetters = [];

function fillSelect(select, values) {
  const chosen = select.value;
  select.replaceChildren(el("option", { value: "" }, "all"), ...[...new Set(values)].sort().map((v) => el("option", { value: v }, v)));
  select.value = [...select.options].some((o) => o.value === chosen) ? chosen : "";
}

async function showDeadLetters() {
  deadLetters = await api("/v1/dead-letters?limit=500");
  fillSelect($("#dl-plant"), deadLetters.map((d) => d.plant));
  fillSelect($("#dl-domain"), deadLetters.map((d) => d.domain));
  renderDeadLetters();
}

function renderDeadLetters() {
  const plant = $("#dl-plant").value;
  const domain = $("#dl-domain").value;
  const text = $("#dl-text").value.toLowerCase();
  const waitingOnly = $("#dl-waiting").checked;
  const shown = deadLetters.filter((d) => (!plant || d.plant === plant) && (!domain || d.domain === domain)
    && (!text || d.reason.toLowerCase().includes(text)) && (!waitingOnly || !d.replayed_at));
  const counts = new Map();
  for (const d of deadLetters.filter((d) => !d.replayed_at)) {
    const key = `${d.plant} · ${d.domain}`;
    counts.set(key, (counts.get(key) || 0) + 1);
  }
  $("#dl-chart").replaceChildren(counts.size
    ? bars([...counts.entries()].sort().map(([k, v]) => [k, v, "dead"]), " waiting")
    : el("p", { class: "hint" }, "No dead letter waits."));
  $("#dl-table tbody").replaceChildren(...shown.map((d) => el("tr", { dataset: { id: d.id, plant: d.plant, domain: d.domain } },
    el("td", {}, d.id),
    el("td", {}, d.at),
    el("td", { class: "plant" }, d.plant),
    el("td", {}, d.route),
    el("td", { class: "domain" }, d.domain),
    el("td", {}, `step ${d.step} ${d.plugin.name}@${d.plugin.version}`),
    el("td", {}, d.kind),
    el("td", { class: "reason" }, d.reason),
    el("td", { class: "state" }, d.replayed_at ? `replayed ${d.replayed_at}` : "waiting"),
    el("td", {},
      el("button", { type: "button", class: "dry-run", onclick: () => replay(d, true) }, "Dry run"),
      " ",
      el("button", { type: "button", class: "replay", disabled: true, "aria-disabled": "true",
        title: "Run a dry run first", onclick: () => replay(d, false) }, "Replay")))));
  if (!shown.length) $("#dl-table tbody").append(el("tr", {}, el("td", { colspan: 10 }, "No dead letters match.")));
}

async function replay(entry, dryRun) {
  const panel = $("#dl-result");
  panel.hidden = false;
  panel.replaceChildren(el("p", {}, dryRun ? `Dry run of dead letter ${entry.id}…` : `Replaying dead letter ${entry.id}…`));
  try {
    const done = await api(`/v1/dead-letters/${entry.id}/replay`, { method: "POST", body: { dry_run: dryRun } });
    const head = el("h3", {}, `Dead letter ${entry.id}: ${done.outcome}${dryRun ? " (dry run)" : ""}`);
    const parts = [head];
    if (done.reason) parts.push(el("p", { class: "error" }, `step ${done.step || "?"} ${done.plugin || ""}: ${done.reason}`));
    if (dryRun && done.outputs) {
      parts.push(el("p", {}, `${done.outputs.length} output(s) would be delivered:`));
      for (const o of done.outputs) parts.push(el("pre", { class: "output" }, `${o.id} (${o.content_type})\n${o.body}`));
    } else if (done.outputs) {
      parts.push(el("p", { class: "ok" }, `${done.outputs.length} output(s) ${done.outcome}.`));
    }
    panel.replaceChildren(...parts);
    panel.dataset.outcome = done.outcome;
    panel.dataset.dryRun = String(dryRun);
    if (dryRun) {
      const row = document.querySelector(`#dl-table tr[data-id="${entry.id}"]`);
      const button = row && $(".replay", row);
      if (button && done.outcome === "would-deliver") {
        button.disabled = false;
        button.removeAttribute("aria-disabled");
        button.title = "Run it again through the current chain and deliver";
        button.focus();
      }
    } else {
      await showDeadLetters();
    }
  } catch (e) {
    handle(e);
    panel.replaceChildren(el("p", { class: "error" }, String(e.message || e)));
  }
}

// ---- messages and lineage ----------------------------------------------------------------

async function searchMessages(event) {
  if (event) event.preventDefault();
  const id = $("#msg-id").value.trim();
  if (id) return showLineage(id);
  const query = new URLSearchParams();
  for (const key of ["subject", "plant", "route"]) {
    const value = $(`#msg-${key}`).value.trim();
    if (value) query.set(key, value);
  }
  query.set("limit", "100");
  const found = await api(`/v1/messages?${query}`);
  $("#msg-table tbody").replaceChildren(...found.map((m) => el("tr", {},
    el("td", {}, el("button", { type: "button", class: "link", onclick: () => showLineage(m.id) }, m.id)),
    el("td", {}, m.plant), el("td", {}, m.route), el("td", {}, m.subject || ""),
    el("td", {}, m.first_at), el("td", {}, m.last_event))));
  if (!found.length) $("#msg-table tbody").append(el("tr", {}, el("td", { colspan: 6 }, "No message matches.")));
}

function describeHop(h) {
  switch (h.event) {
    case "mediated": return `mediated (from ${h.source}): ${h.outputs.length} output(s)`;
    case "failed": return `failed at step ${h.step} (${h.kind}): ${h.reason}`;
    case "dead-lettered": return `dead-lettered in the ${h.store} store${h.dead_letter ? ` (id ${h.dead_letter})` : ""}: ${h.reason}`;
    case "retry": return `retry after attempt ${h.attempt}: ${h.reason}`;
    case "delivered": return `${h.outcome} ${h.count} output(s) to ${h.sink}`;
    case "not-delivered": return `not delivered to ${h.sink}: ${h.reason}`;
    case "replayed": return `replayed by ${h.by}${h.dead_letter ? ` (dead letter ${h.dead_letter})` : ""}`;
    default: return h.event;
  }
}

async function showLineage(id) {
  const panel = $("#lineage");
  panel.hidden = false;
  try {
    const path = await api(`/v1/messages/${encodeURIComponent(id)}`);
    const parts = [el("h3", {}, `Message ${path.id}`),
      el("p", {}, `plant ${path.plant} · route ${path.route}${path.subject ? ` · subject ${path.subject}` : ""}${path.trace_id ? ` · trace ${path.trace_id}` : ""}`)];
    const list = el("ol", { class: "hops" });
    for (const h of path.hops) {
      const item = el("li", { class: `hop ${h.event}`, dataset: { event: h.event } }, el("time", {}, h.at), " ", describeHop(h));
      if (h.steps && h.steps.length) {
        const max = Math.max(1, ...h.steps.map((s) => s.duration_us));
        item.append(el("ul", { class: "steps" }, h.steps.map((s) => el("li", { class: `step ${s.decision}` },
          el("span", { class: "step-name" }, `${s.step}. ${s.plugin}@${s.version}`),
          el("span", { class: "bar step-bar", style: `width:${Math.max(2, (s.duration_us / max) * 60)}%` }),
          el("span", { class: "step-facts" }, `${s.duration_us} µs · ${s.decision} · ${s.instance} instance · ${Math.round(s.memory_bytes / 1024)} KiB · ${s.digest.slice(0, 19)}`)))));
      }
      list.append(item);
    }
    parts.push(list);
    const links = (title, ids) => ids.length ? [el("h4", {}, title), el("ul", {}, ids.map((c) =>
      el("li", {}, el("button", { type: "button", class: "link", onclick: () => showLineage(c) }, c))))] : [];
    parts.push(...links("Its outputs, taken in again", path.children), ...links("Same trace", path.related));
    panel.replaceChildren(...parts);
    panel.dataset.message = path.id;
  } catch (e) {
    handle(e);
    panel.replaceChildren(el("p", { class: "error" }, String(e.message || e)));
  }
}

// ---- activations and refusals ------------------------------------------------------------

async function showActivations() {
  const overview = await api("/v1/overview");
  const seen = new Map();
  for (const r of overview.routes) for (const s of r.steps) seen.set(`${r.plant}/${s.plugin}`, [r.plant, s.plugin]);
  const sections = [];
  for (const [plant, plugin] of [...seen.values()].sort()) {
    const doc = await api(`/v1/plants/${encodeURIComponent(plant)}/plugins/${encodeURIComponent(plugin)}`);
    const active = doc.active ? `${doc.active.version}` : "–";
    sections.push(el("article", { class: "plugin", dataset: { plant, plugin } },
      el("h3", {}, `${plant} · ${plugin}`, el("span", { class: "version" }, `active ${active}`)),
      el("ol", { class: "timeline" }, (doc.history || []).map((a) =>
        el("li", { class: a.action }, el("time", {}, a.at), ` ${a.action} ${a.version}`, a.previous_version ? ` (was ${a.previous_version})` : "", ` by ${a.by}`))),
      el("button", { type: "button", class: "rollback", disabled: !(doc.history || []).length,
        onclick: async () => {
          if (!confirm(`Roll ${plugin} on ${plant} back to the version active before?`)) return;
          try { await api(`/v1/plants/${encodeURIComponent(plant)}/plugins/${encodeURIComponent(plugin)}/rollback`, { method: "POST" }); status(`${plugin} rolled back on ${plant}`); await showActivations(); }
          catch (e) { handle(e); }
        } }, "Roll back")));
  }
  $("#act-list").replaceChildren(...(sections.length ? sections : [el("p", {}, "No plugins.")]));
}

async function showRefusals() {
  const refusals = await api("/v1/refusals");
  $("#ref-table tbody").replaceChildren(...refusals.map((r) => el("tr", {},
    el("td", {}, r.at), el("td", {}, r.plant), el("td", {}, r.origin), el("td", {}, (r.digest || "").slice(0, 19)), el("td", { class: "reason" }, r.reason))));
  if (!refusals.length) $("#ref-table tbody").append(el("tr", {}, el("td", { colspan: 5 }, "The gate refused nothing.")));
}

// ---- navigation --------------------------------------------------------------------------

const views = {
  overview: showOverview,
  "dead-letters": showDeadLetters,
  messages: () => searchMessages(),
  activations: showActivations,
  refusals: showRefusals,
};

function handle(e) {
  if (e instanceof Unauthorized) {
    sessionStorage.removeItem(TOKEN_KEY);
    for (const section of document.querySelectorAll(".view")) section.hidden = true;
    $("#signin").hidden = false;
    $("#signin-error").textContent = e.message;
    $("#token").focus();
    status("Sign in needed", true);
  } else {
    status(String(e.message || e), true);
  }
}

async function show(view) {
  current = view;
  for (const button of document.querySelectorAll("#tabs button")) {
    if (button.dataset.view === view) button.setAttribute("aria-current", "page");
    else button.removeAttribute("aria-current");
  }
  for (const section of document.querySelectorAll(".view")) section.hidden = section.id !== `view-${view}`;
  await refresh();
}

async function refresh() {
  try {
    await views[current]();
    $("#signin").hidden = true;
    document.body.dataset.loaded = current;
    status(`Updated ${new Date().toLocaleTimeString()}`);
  } catch (e) {
    handle(e);
  }
}

function start() {
  $("#who").remove();
  for (const button of document.querySelectorAll("#tabs button")) button.addEventListener("click", () => show(button.dataset.view));
  $("#signin-form").addEventListener("submit", (event) => {
    event.preventDefault();
    sessionStorage.setItem(TOKEN_KEY, $("#token").value.trim());
    $("#token").value = "";
    $("#signin-error").textContent = "";
    show(current);
  });
  for (const id of ["#dl-plant", "#dl-domain", "#dl-text", "#dl-waiting"]) $(id).addEventListener("input", renderDeadLetters);
  $("#msg-search").addEventListener("submit", searchMessages);
  setInterval(() => { if (current === "overview" && sessionStorage.getItem(TOKEN_KEY) !== null) refresh(); }, 5000);
  if (sessionStorage.getItem(TOKEN_KEY) === null) {
    // Nothing is fetched before the operator says which token to use.
    $("#signin").hidden = false;
    $("#token").focus();
    status("Sign in");
  } else {
    show("overview");
  }
}

start();
