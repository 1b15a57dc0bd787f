// The MLP Service web page: one script, no build step. Every figure comes from the JSON API (the same routes the
// Python client calls), sent with the HttpOnly session cookie that /ui/session sets. Pages are built from DOM nodes:
// text from the server is only ever a text node or an attribute value, never parsed as HTML.
"use strict";

// A path on this server to go to after signing in, or null ("/\\evil.example" reads as another host: refused).
function sameOrigin(next) {
  if (!next) return null;
  try {
    const url = new URL(next, location.origin);
    return url.origin === location.origin ? url.pathname + url.search + url.hash : null;
  } catch (e) {
    return null;
  }
}

// ---------------------------------------------------------------- DOM helpers

function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key.startsWith("on")) el.addEventListener(key.slice(2), value);
    else if (key === "class") el.className = value;
    else if (key === "data") Object.assign(el.dataset, value);
    else if (key === "value") el.value = value;
    else if (key === "checked" || key === "selected" || key === "disabled") el[key] = Boolean(value);
    else el.setAttribute(key, value === true ? "" : String(value));
  }
  put(el, children);
  return el;
}

function put(el, children) {
  for (const child of [children].flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : String(child));
  }
  return el;
}

function replace(el, ...children) {
  el.replaceChildren();
  return put(el, children);
}

const SVG = "http://www.w3.org/2000/svg";
function svg(tag, attrs, ...children) {
  const el = document.createElementNS(SVG, tag);
  for (const [key, value] of Object.entries(attrs || {})) el.setAttribute(key, String(value));
  for (const child of children) el.append(child);
  return el;
}

function num(value, digits = 4) {
  if (value === null || value === undefined) return "–";
  if (typeof value !== "number") return String(value);
  if (Number.isInteger(value)) return value.toLocaleString("en");
  const abs = Math.abs(value);
  if (abs !== 0 && (abs < 1e-3 || abs >= 1e6)) return value.toExponential(2);
  return value.toFixed(digits).replace(/\.?0+$/, "") || "0";
}

function bytes(n) {
  if (n === null || n === undefined) return "–";
  const units = ["B", "kB", "MB", "GB", "TB"];
  let i = 0;
  while (n >= 1000 && i < units.length - 1) { n /= 1000; i += 1; }
  return `${i ? n.toFixed(1) : n} ${units[i]}`;
}

function seconds(s) {
  if (s === null || s === undefined) return "–";
  if (s < 60) return `${s.toFixed(1)} s`;
  if (s < 3600) return `${Math.floor(s / 60)} min ${Math.round(s % 60)} s`;
  return `${Math.floor(s / 3600)} h ${Math.round((s % 3600) / 60)} min`;
}

function when(iso) {
  if (!iso) return "–";
  const d = new Date(iso);
  return d.toLocaleString(undefined, {dateStyle: "short", timeStyle: "medium"});
}

function link(href, text) { return h("a", {href}, text); }
function jobLink(id) { return link(`/ui/jobs/${encodeURIComponent(id)}`, id); }
function datasetLink(id, name) { return id ? link(`/ui/datasets/${encodeURIComponent(id)}`, name || id) : "–"; }
function modelLink(id) { return id ? link(`/ui/models/${encodeURIComponent(id)}`, id) : "–"; }

function badge(status) { return h("span", {class: `badge status-${status}`}, status); }

function keyValues(rows) {
  return h("dl", {class: "kv"}, rows.filter(Boolean).map(([k, v]) => [h("dt", {}, k), h("dd", {}, v)]));
}

function table(headers, rows, attrs = {}) {
  const body = h("tbody", {}, rows);
  labelCells(body, headers);
  return h("div", {class: "table-wrap"}, h("table", attrs,
    h("thead", {}, h("tr", {}, headers.map((x) => h("th", {scope: "col"}, x)))), body));
}

// Each cell names its column (data-label), so that a "stacked" table reads as cards at phone width.
function labelCells(body, headers) {
  for (const row of body.rows) {
    [...row.cells].forEach((cell, i) => {
      if (typeof headers[i] === "string" && headers[i]) cell.dataset.label = headers[i];
    });
  }
}

function section(title, ...children) {
  return h("section", {class: "card"}, h("h2", {}, title), ...children);
}

function jsonBlock(value) { return h("pre", {class: "json"}, JSON.stringify(value, null, 2)); }

function query(name) { return new URLSearchParams(location.search).get(name); }

// ---------------------------------------------------------------- the API

class ApiError extends Error {
  constructor(status, problem) {
    super(problem.detail || `HTTP ${status}`);
    this.status = status;
    this.problem = problem;
  }
}

async function readProblem(resp) {
  try { return await resp.json(); } catch { return {detail: `${resp.status} ${resp.statusText}`, errors: []}; }
}

async function api(path, {method = "GET", json, form, signIn = true} = {}) {
  const init = {method, headers: {Accept: "application/json"}, credentials: "same-origin"};
  if (json !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(json);
  } else if (form !== undefined) {
    init.body = form;
  }
  const resp = await fetch(path, init);
  if (resp.status === 401 && signIn) toSignIn();
  if (!resp.ok) throw new ApiError(resp.status, await readProblem(resp));
  return resp.status === 204 ? null : resp.json();
}

function toSignIn() {
  const next = location.pathname + location.search;
  location.assign(`/ui/sign-in?next=${encodeURIComponent(next)}`);
}

function problemBox(error) {
  const problem = error instanceof ApiError ? error.problem : {detail: String(error), errors: []};
  return h("div", {class: "problem", role: "alert"},
    h("strong", {}, problem.title ? `${problem.title}: ` : "Error: "), problem.detail || "",
    (problem.errors || []).length ? h("ul", {}, problem.errors.map((e) =>
      h("li", {}, [e.field, e.column && `column ${e.column}`].filter(Boolean).join(", "), ": ", e.message))) : null);
}

// Poll while the tab is visible; a failed poll is shown and retried.
function every(ms, fn) {
  let timer = null;
  const tick = async () => {
    if (document.visibilityState === "visible") {
      try { await fn(); } catch (error) { console.warn(error); }
    }
    timer = setTimeout(tick, ms);
  };
  timer = setTimeout(tick, ms);
  return () => clearTimeout(timer);
}

// ---------------------------------------------------------------- layout

let me = null;
const main = () => document.getElementById("main");

function page(title, ...children) {
  document.title = `${title} · MLP Service`;
  return replace(main(), h("h1", {}, title), ...children);
}

function renderNav() {
  const here = location.pathname;
  const items = [["/ui/jobs", "Jobs"], ["/ui/compare", "Compare"], ["/ui/datasets", "Data sets"],
    ["/ui/models", "Models"], ["/ui/workers", "Workers"], ["/docs", "API docs"]];
  const current = (href) => here === href || here.startsWith(`${href}/`) || (href === "/ui/jobs" && here === "/")
    || (href === "/ui/datasets" && here === "/ui/train");
  replace(document.getElementById("nav"),
    items.map(([href, text]) => h("a", {href, class: current(href) ? "current" : null,
      "aria-current": current(href) ? "page" : null}, text)),
    me ? h("span", {class: "who"}, h("span", {class: "owner", title: "Signed in as"}, me.owner + (me.admin ? " (admin)" : "")),
      h("button", {type: "button", class: "link", id: "sign-out", onclick: signOut}, "Sign out")) : null);
}

async function signOut() {
  await api("/ui/session", {method: "DELETE", signIn: false});
  location.assign("/ui/sign-in");
}

function notFound(message) {
  page("Not found", h("p", {class: "problem", id: "not-found"}, message || "There is nothing at this address."),
    h("p", {}, link("/ui/jobs", "Back to the jobs")));
}

// ---------------------------------------------------------------- sign in

function signInPage() {
  const keyInput = h("input", {id: "key", name: "key", type: "password", autocomplete: "off", required: true,
    placeholder: "mlps_…", "aria-describedby": "key-help"});
  const message = h("div", {class: "field-error", id: "key-error"});
  const form = h("form", {class: "card narrow", id: "sign-in-form", onsubmit: async (event) => {
    event.preventDefault();
    replace(message);
    try {
      await api("/ui/session", {method: "POST", json: {key: keyInput.value}, signIn: false});
    } catch (error) {
      replace(message, error instanceof ApiError ? error.problem.detail : String(error));
      return;
    }
    const next = query("next");
    location.assign(sameOrigin(next) || "/ui/jobs");
  }},
  h("label", {for: "key"}, "API key"), keyInput, message,
  h("p", {class: "muted", id: "key-help"}, "After ", h("code", {}, "make serve"), " the admin key is in ",
    h("code", {}, "./var/admin.key"), "; an administrator creates others with ", h("code", {}, "mlps keys create"),
    ". The key is kept for this browser session only, in a cookie the page's scripts cannot read."),
  h("button", {type: "submit", class: "primary"}, "Sign in"));
  page("Sign in", form);
  keyInput.focus();
}

// ---------------------------------------------------------------- jobs

const STATUSES = ["queued", "running", "succeeded", "failed", "cancelled"];
const TERMINAL = new Set(["succeeded", "failed", "cancelled"]);

function headline(job) {
  const figures = job.metrics || job.latest_metrics;
  if (!figures) return "–";
  for (const key of ["val_accuracy", "val_r2", "val_loss", "train_loss"]) {
    if (typeof figures[key] === "number") return `${key.replace("val_", "")} ${num(figures[key])}`;
  }
  return "–";
}

function elapsed(job) {
  if (job.duration_s !== null && job.duration_s !== undefined) return seconds(job.duration_s);
  if (job.started_at && job.status === "running") return seconds((Date.now() - Date.parse(job.started_at)) / 1000);
  return "–";
}

function progressBar(job) {
  const {epoch, epochs} = job.progress;
  return h("span", {class: "progress"}, h("progress", {max: epochs || 1, value: epoch}), ` ${epoch}/${epochs}`);
}

async function cancelJob(id) {
  await api(`/jobs/${encodeURIComponent(id)}/cancel`, {method: "POST"});
}

// A job's name and tags, where the API reports them.
function jobLabels(job) {
  const tags = Array.isArray(job.tags) ? job.tags : [];
  if (!job.name && !tags.length) return null;
  return h("div", {class: "small"}, job.name ? h("span", {class: "job-name"}, job.name) : null,
    tags.map((t) => [" ", h("code", {class: "label"}, t)]));
}

function modelType(job) { return (job.spec && job.spec.model && job.spec.model.type) || "–"; }

async function jobsPage() {
  const filters = {status: query("status") || "", dataset_id: query("dataset_id") || "", tag: query("tag") || ""};
  const selected = new Set();
  const datasets = (await api("/datasets?limit=500")).items;
  const names = Object.fromEntries(datasets.map((d) => [d.id, d.name]));
  const body = h("tbody", {id: "jobs-body"});
  const count = h("span", {class: "muted", id: "jobs-count"});
  const compare = h("button", {type: "button", id: "compare-selected", disabled: true, onclick: () =>
    location.assign(`/ui/compare?jobs=${[...selected].map(encodeURIComponent).join(",")}`)}, "Compare selected");
  const tagBox = h("label", {hidden: true}, "Tag ", h("input", {name: "tag", value: filters.tag, size: 10,
    onchange: (e) => setFilter("tag", e.target.value.trim())}));
  const setFilter = (name, value) => {
    filters[name] = value;
    const params = new URLSearchParams(Object.entries(filters).filter(([, v]) => v));
    history.replaceState(null, "", `/ui/jobs${params.size ? `?${params}` : ""}`);
    refresh();
  };
  const bar = h("div", {class: "toolbar"},
    h("label", {}, "Status ", h("select", {name: "status", onchange: (e) => setFilter("status", e.target.value)},
      h("option", {value: ""}, "any"), STATUSES.map((s) => h("option", {value: s, selected: s === filters.status}, s)))),
    h("label", {}, "Data set ", h("select", {name: "dataset_id", onchange: (e) => setFilter("dataset_id", e.target.value)},
      h("option", {value: ""}, "any"),
      datasets.map((d) => h("option", {value: d.id, selected: d.id === filters.dataset_id}, d.name)))),
    tagBox, compare, count);
  const headers = ["", "Job", "Data set", "Model", "Status", "Progress", "Kept / latest", "Device", "Duration",
    "Created", ""];
  page("Jobs", bar, h("div", {class: "table-wrap"}, h("table", {class: "jobs stack"},
    h("thead", {}, h("tr", {}, headers.map((x) => h("th", {scope: "col"}, x)))), body)),
  h("p", {class: "muted"}, "Updates every two seconds. Start a job from a ", link("/ui/datasets", "data set"), "."));

  async function refresh() {
    const params = new URLSearchParams({limit: "100"});
    for (const [k, v] of Object.entries(filters)) if (v) params.set(k, v);
    const result = await api(`/jobs?${params}`);
    if (result.items.some((j) => "tags" in j)) tagBox.hidden = false;
    const rows = result.items.map((job) => h("tr", {data: {job: job.id, status: job.status}},
      h("td", {}, h("input", {type: "checkbox", "aria-label": `select ${job.id}`, checked: selected.has(job.id),
        onchange: (e) => {
          if (e.target.checked) selected.add(job.id); else selected.delete(job.id);
          compare.disabled = selected.size < 2;
          compare.textContent = `Compare selected (${selected.size})`;
        }})),
      h("td", {}, jobLink(job.id), jobLabels(job)),
      h("td", {}, datasetLink(job.dataset_id, names[job.dataset_id])),
      h("td", {}, modelType(job)),
      h("td", {}, badge(job.status)),
      h("td", {}, progressBar(job)),
      h("td", {class: "metric"}, headline(job)),
      h("td", {}, job.device || job.device_request),
      h("td", {}, elapsed(job)),
      h("td", {}, when(job.created_at)),
      h("td", {}, TERMINAL.has(job.status) || job.cancel_requested ? null : h("button", {type: "button",
        class: "small", onclick: async () => { await cancelJob(job.id); refresh(); }}, "Cancel"))));
    replace(body, rows.length ? rows : h("tr", {}, h("td", {colspan: headers.length, class: "muted"},
      "No jobs yet.")));
    labelCells(body, headers);
    replace(count, `${result.total} job${result.total === 1 ? "" : "s"}`);
  }
  await refresh();
  every(2000, refresh);
}

// Learning curves: a uPlot chart whose data grows as epochs arrive; a dashed line marks the kept epoch.
const COLORS = ["#2563eb", "#dc2626", "#059669", "#d97706", "#7c3aed", "#db2777", "#0891b2", "#4b5563"];

function curveChart(container, title, labels, {kept = () => null, yLabel = ""} = {}) {
  const box = h("div", {class: "chart", data: {points: "0", title}});
  container.append(box);
  const width = () => Math.max(260, box.clientWidth || 600);
  const markKept = (u) => {
    const epoch = kept();
    if (!epoch) return;
    const x = u.valToPos(epoch, "x", true);
    const {ctx} = u;
    const text = `kept: epoch ${epoch}`;
    ctx.save();
    ctx.strokeStyle = "#111827";
    ctx.setLineDash([5, 4]);
    ctx.lineWidth = 1.5 * devicePixelRatio;
    ctx.beginPath();
    ctx.moveTo(x, u.bbox.top);
    ctx.lineTo(x, u.bbox.top + u.bbox.height);
    ctx.stroke();
    ctx.fillStyle = "#111827";
    ctx.font = `${11 * devicePixelRatio}px system-ui, sans-serif`;
    // left of the line when the line is in the right half, so that the label stays inside the plot
    const left = x > u.bbox.left + u.bbox.width / 2;
    ctx.textAlign = left ? "right" : "left";
    ctx.fillText(text, x + (left ? -4 : 4) * devicePixelRatio, u.bbox.top + 12 * devicePixelRatio);
    ctx.restore();
  };
  const plot = new uPlot({
    title, width: width(), height: 240,
    scales: {x: {time: false}},
    legend: {live: false},
    // epochs are whole numbers: ticks at 1, 2, 5, 10, 20, 50, ...
    axes: [{label: "epoch", incrs: [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000, 20000, 50000]},
      {label: yLabel, size: 50}],
    series: [{label: "epoch"}, ...labels.map((label, i) => ({label, stroke: COLORS[i % COLORS.length], width: 2,
      spanGaps: true, points: {show: false}}))],
    hooks: {draw: [markKept]},
  }, [[], ...labels.map(() => [])], box);
  // The box is a grid cell (min-width 0): its width is the layout's, whatever the canvas inside is.
  let last = 0;
  new ResizeObserver(() => {
    if (Math.abs(width() - last) < 2) return;
    last = width();
    plot.setSize({width: last, height: 240});
  }).observe(box);
  return {
    set(xs, ys) {
      plot.setData([xs, ...ys]);
      box.dataset.points = String(xs.length);
    },
    redraw() { plot.redraw(false, false); },
  };
}

// Which figures of an epoch row to plot: the losses, and the task's main metric with its train counterpart.
function mainMetric(rows) {
  for (const name of ["accuracy", "r2", "rmse"]) {
    if (rows.some((r) => typeof r[`val_${name}`] === "number" || typeof r[`train_${name}`] === "number")) return name;
  }
  return null;
}

function confusionTable(cm) {
  const max = Math.max(1, ...cm.matrix.flat());
  return h("div", {}, h("p", {class: "muted"}, `Rows: actual class, columns: predicted class (${cm.split} split).`),
    h("div", {class: "table-wrap"}, h("table", {class: "confusion"},
      h("thead", {}, h("tr", {}, h("th", {}, "actual \\ predicted"), cm.labels.map((l) => h("th", {scope: "col"}, l)))),
      h("tbody", {}, cm.matrix.map((row, i) => h("tr", {}, h("th", {scope: "row"}, cm.labels[i]),
        row.map((v, j) => h("td", {class: `cm-${Math.min(4, Math.ceil((4 * v) / max))}${i === j ? " diag" : ""}`},
          num(v)))))))));
}

// Figures as name/value pairs in columns, validation figures first.
function figuresTable(figures, skip = []) {
  const rank = (k) => (k.startsWith("val_") ? 0 : k.startsWith("test_") ? 1 : k.startsWith("train_") ? 2 : 3);
  const rows = Object.entries(figures || {}).filter(([k, v]) => !skip.includes(k) && typeof v !== "object")
    .sort((a, b) => rank(a[0]) - rank(b[0]));
  return h("dl", {class: "figures"}, rows.map(([k, v]) => h("div", {}, h("dt", {}, k), h("dd", {}, num(v)))));
}

function warningsList(warnings) {
  if (!Array.isArray(warnings) || !warnings.length) return null;
  return section("Warnings", h("ul", {class: "warnings", id: "warnings"}, warnings.map((w) => h("li", {},
    h("strong", {}, w.code || "warning"), w.column ? [" (column ", h("code", {}, w.column), ")"] : "", ": ",
    w.message || ""))));
}

async function jobPage(id) {
  const path = `/jobs/${encodeURIComponent(id)}`;
  let job;
  try { job = await api(path); } catch (error) {
    if (error instanceof ApiError && error.status === 404) return notFound(`No job '${id}' is yours to see.`);
    throw error;
  }
  let dataset = null;
  if (job.dataset_id) dataset = await api(`/datasets/${encodeURIComponent(job.dataset_id)}`).catch(() => null);
  const head = h("div", {class: "toolbar", id: "job-head"});
  const summary = h("div", {id: "job-summary"});
  const errorBox = h("div", {id: "job-error"});
  const charts = h("div", {class: "charts", id: "curves"});
  const epochNote = h("p", {class: "muted", id: "epoch-note"});
  const figures = h("div", {id: "job-figures"});
  page(`Job ${id}`, head, errorBox, summary,
    section("Learning curves", epochNote, charts), figures,
    warningsList(job.warnings), section("Spec", jsonBlock(job.spec)));
  const rows = [];
  const keptEpoch = () => (job.metrics && job.metrics.epoch) || (job.result && job.result.best_epoch) || null;
  let loss = null;
  let metric = null;
  let metricName = null;

  function draw() {
    const xs = rows.map((r) => r.epoch);
    if (!loss) loss = curveChart(charts, "Loss", ["train loss", "validation loss"], {kept: keptEpoch});
    loss.set(xs, [rows.map((r) => r.train_loss ?? null), rows.map((r) => r.val_loss ?? null)]);
    const name = mainMetric(rows);
    if (name && !metric) {
      metricName = name;
      metric = curveChart(charts, name, [`train ${name}`, `validation ${name}`], {kept: keptEpoch});
    }
    if (metric) metric.set(xs, [rows.map((r) => r[`train_${metricName}`] ?? null),
      rows.map((r) => r[`val_${metricName}`] ?? null)]);
    const kept = keptEpoch();
    replace(epochNote, rows.length ? `${rows.length} epoch${rows.length === 1 ? "" : "s"}` +
      (kept ? `; the kept model is epoch ${kept}'s (dashed line).` : TERMINAL.has(job.status) ? "." :
        " so far; the chart grows as epochs arrive.") : "No epoch has finished yet.");
  }

  function renderHead() {
    replace(head, badge(job.status), progressBar(job),
      !TERMINAL.has(job.status) && !job.cancel_requested ? h("button", {type: "button", id: "cancel",
        onclick: async () => { job = await api(`${path}/cancel`, {method: "POST"}); renderHead(); }}, "Cancel") : null,
      job.cancel_requested && !TERMINAL.has(job.status) ? h("span", {class: "muted"}, "cancelling…") : null,
      job.model_id ? link(`/ui/models/${encodeURIComponent(job.model_id)}`, "Open the model") : null,
      h("a", {href: `/ui/compare?jobs=${encodeURIComponent(id)}`}, "Compare with…"));
    const result = job.result || {};
    replace(summary, section("Run", keyValues([
      job.name ? ["Name", job.name] : null,
      Array.isArray(job.tags) && job.tags.length ? ["Tags", jobLabels({tags: job.tags})] : null,
      job.notes ? ["Notes", job.notes] : null,
      ["Data set", datasetLink(job.dataset_id, dataset && dataset.name)],
      ["Target", String((job.spec && (job.spec.targets || [job.spec.target]).join(", ")) || "–")],
      ["Task", job.task], ["Model type", modelType(job)], ["Model", modelLink(job.model_id)],
      ["Device", `${job.device || "not yet assigned"} (asked for ${job.device_request})`],
      job.waiting_for ? ["Waiting for", job.waiting_for] : null,
      ["Attempts", String(job.attempts)],
      ["Created", when(job.created_at)], ["Started", when(job.started_at)], ["Finished", when(job.finished_at)],
      ["Duration", elapsed(job)],
      result.parameters ? ["Parameters", num(result.parameters)] : null,
      result.epochs_run ? ["Epochs run", num(result.epochs_run)] : null,
      result.samples_per_second ? ["Samples per second", num(result.samples_per_second)] : null,
    ])));
    replace(errorBox, job.status === "failed" && job.error ? h("div", {class: "problem", role: "alert"},
      h("strong", {}, "This job failed: "), job.error) : null);
  }

  async function renderFigures() {
    const m = await api(`${path}/metrics`);
    rows.splice(0, rows.length, ...m.epochs.map((e) => ({epoch: e.epoch, ...e.metrics})));
    draw();
    const parts = [];
    if (job.metrics) parts.push(section("Kept model's figures", figuresTable(job.metrics, ["epoch", "seconds"])));
    if (m.test) parts.push(section("Test split", figuresTable(m.test)));
    if (m.confusion_matrix) parts.push(section("Confusion matrix", confusionTable(m.confusion_matrix)));
    if (m.report && m.report.classes) parts.push(section(`Per class (${m.report.split} split, ${m.report.n_rows} rows)`,
      table(["class", "precision", "recall", "F1", "rows"], m.report.classes.map((c) => h("tr", {},
        h("td", {}, c.label), h("td", {}, num(c.precision)), h("td", {}, num(c.recall)), h("td", {}, num(c.f1)),
        h("td", {}, num(c.support)))))));
    if (m.report && m.report.roc) parts.push(section("ROC curves", h("div", {class: "charts", id: "roc"})));
    replace(figures, parts);
    if (m.report && m.report.roc) rocChart(document.getElementById("roc"), m.report.roc);
  }

  renderHead();
  if (TERMINAL.has(job.status)) {
    await renderFigures();
    return;
  }
  draw();
  // The event stream sends every epoch so far, then each new one, then the final status, and ends.
  const events = new EventSource(`${path}/events`);
  events.addEventListener("epoch", (event) => {
    const data = JSON.parse(event.data);
    if (rows.length && rows[rows.length - 1].epoch >= data.epoch) return;
    rows.push({epoch: data.epoch, ...data.metrics});
    job.progress = {epoch: data.epoch, epochs: data.epochs};
    draw();
    renderHead();
  });
  events.addEventListener("status", async (event) => {
    job = JSON.parse(event.data);
    renderHead();
    if (TERMINAL.has(job.status)) {
      events.close();
      await renderFigures();
    }
  });
}

function rocChart(container, curves) {
  const box = h("div", {class: "roc-grid"});
  container.append(box);
  for (const curve of curves.slice(0, 12)) {
    const size = 180;
    const pts = curve.fpr.map((x, i) => `${(x * size).toFixed(1)},${((1 - curve.tpr[i]) * size).toFixed(1)}`);
    box.append(h("figure", {class: "roc"},
      svg("svg", {viewBox: `-1 -1 ${size + 2} ${size + 2}`, width: size, height: size, role: "img",
        "aria-label": `ROC curve for ${curve.label}`},
      svg("rect", {x: 0, y: 0, width: size, height: size, fill: "none", stroke: "#9ca3af"}),
      svg("line", {x1: 0, y1: size, x2: size, y2: 0, stroke: "#d1d5db", "stroke-dasharray": "4 3"}),
      svg("polyline", {points: pts.join(" "), fill: "none", stroke: "#2563eb", "stroke-width": 2})),
      h("figcaption", {}, `${curve.label}: AUC ${num(curve.auc, 3)}`)));
  }
}

// ---------------------------------------------------------------- compare

function flatten(value, prefix = "", out = {}) {
  if (value && typeof value === "object" && !Array.isArray(value)) {
    for (const [k, v] of Object.entries(value)) flatten(v, prefix ? `${prefix}.${k}` : k, out);
  } else {
    out[prefix] = JSON.stringify(value);
  }
  return out;
}

async function comparePage() {
  const ids = (query("jobs") || "").split(",").map((s) => s.trim()).filter(Boolean);
  const recent = (await api("/jobs?limit=100")).items;
  const chosen = new Set(ids);
  const picker = h("form", {class: "card", id: "compare-picker", onsubmit: (event) => {
    event.preventDefault();
    location.assign(`/ui/compare?jobs=${[...chosen].map(encodeURIComponent).join(",")}`);
  }}, h("h2", {}, "Jobs to compare"),
  h("div", {class: "pick-list"}, recent.map((job) => h("label", {class: "pick"},
    h("input", {type: "checkbox", name: "job", value: job.id, checked: chosen.has(job.id),
      onchange: (e) => { if (e.target.checked) chosen.add(job.id); else chosen.delete(job.id); }}),
    " ", h("code", {}, job.id), " ", badge(job.status), " ", modelType(job), " · ", headline(job)))),
  h("button", {type: "submit", class: "primary"}, "Compare"));
  if (ids.length < 1) {
    page("Compare jobs", h("p", {}, "Pick two or more jobs (or tick them in the ", link("/ui/jobs", "jobs list"), ")."),
      picker);
    return;
  }
  const jobs = [];
  const missing = [];
  for (const id of ids) {
    try {
      const [job, metrics] = await Promise.all([api(`/jobs/${encodeURIComponent(id)}`),
        api(`/jobs/${encodeURIComponent(id)}/metrics`)]);
      jobs.push({job, rows: metrics.epochs.map((e) => ({epoch: e.epoch, ...e.metrics})), test: metrics.test});
    } catch (error) {
      if (error instanceof ApiError && error.status === 404) missing.push(id); else throw error;
    }
  }
  const charts = h("div", {class: "charts", id: "compare-curves"});
  const finals = jobs.map(({job, rows}) => job.metrics || rows[rows.length - 1] || {});
  const rank = (k) => (k.startsWith("val_") ? 0 : k.startsWith("test_") ? 1 : k.startsWith("train_") ? 2 : 3);
  const names = [...new Set(finals.flatMap((f) => Object.keys(f)))]
    .filter((k) => !k.startsWith("member") && k !== "seconds" && finals.some((f) => typeof f[k] === "number"))
    .sort((a, b) => rank(a) - rank(b) || a.localeCompare(b));
  const specs = jobs.map(({job}) => flatten({dataset_id: job.dataset_id, ...job.spec}));
  const keys = [...new Set(specs.flatMap((s) => Object.keys(s)))].sort();
  const differing = keys.filter((k) => new Set(specs.map((s) => s[k])).size > 1);
  // a fresh header per table: a DOM node lives in one place only
  const header = () => ["", ...jobs.map(({job}) => h("span", {}, jobLink(job.id), " ", badge(job.status)))];
  page("Compare jobs",
    missing.length ? h("p", {class: "problem"}, `Not found (or not yours): ${missing.join(", ")}`) : null,
    section("Curves", h("p", {class: "muted"}, "Validation curves of each job, one colour per job."), charts),
    section("Final figures (kept model, else the last epoch)", table(header(), names.map((name) => h("tr", {},
      h("th", {scope: "row"}, name), finals.map((f) => h("td", {}, num(f[name]))))), {id: "compare-metrics"})),
    section("Spec differences", differing.length ? table(header(), differing.map((k) => h("tr", {},
      h("th", {scope: "row"}, k), specs.map((s) => h("td", {}, h("code", {}, s[k] ?? "–"))))),
    {id: "compare-spec"}) : h("p", {id: "compare-spec"}, "The specs are the same.")),
    h("details", {}, h("summary", {}, "Change the selection"), picker));
  const labels = jobs.map(({job}) => job.id);
  const plot = (title, key) => {
    if (!jobs.some(({rows}) => rows.some((r) => typeof r[key] === "number"))) return;
    const epochs = [...new Set(jobs.flatMap(({rows}) => rows.map((r) => r.epoch)))].sort((a, b) => a - b);
    const chart = curveChart(charts, title, labels);
    chart.set(epochs, jobs.map(({rows}) => {
      const byEpoch = new Map(rows.map((r) => [r.epoch, r[key]]));
      return epochs.map((e) => byEpoch.get(e) ?? null);
    }));
  };
  plot("validation loss", "val_loss");
  const metric = mainMetric(jobs.flatMap(({rows}) => rows));
  if (metric) plot(`validation ${metric}`, `val_${metric}`);
}

// ---------------------------------------------------------------- data sets

function uploadForm() {
  const fileInput = h("input", {type: "file", id: "file", name: "file", accept: ".csv,.tsv,.txt,.parquet,.npz"});
  const nameInput = h("input", {type: "text", id: "dataset-name", name: "name", placeholder: "(the file's name)",
    maxlength: 200});
  const bar = h("progress", {id: "upload-progress", max: 100, value: 0, hidden: true});
  const status = h("div", {id: "upload-status", "aria-live": "polite"});
  const zone = h("label", {class: "drop", id: "drop-zone", for: "file"},
    h("strong", {}, "Drop a CSV, TSV, Parquet or .npz file here"), h("span", {}, " or click to choose one"));
  const send = (file) => {
    const form = new FormData();
    form.append("file", file, file.name);
    if (nameInput.value.trim()) form.append("name", nameInput.value.trim());
    const xhr = new XMLHttpRequest();
    xhr.open("POST", "/datasets");
    xhr.setRequestHeader("Accept", "application/json");
    bar.hidden = false;
    bar.value = 0;
    replace(status, `Uploading ${file.name} (${bytes(file.size)})…`);
    xhr.upload.addEventListener("progress", (e) => {
      if (!e.lengthComputable) return;
      bar.value = Math.round((100 * e.loaded) / e.total);
      replace(status, `Uploading ${file.name}: ${bytes(e.loaded)} of ${bytes(e.total)} (${bar.value} %)`);
    });
    xhr.upload.addEventListener("load", () => replace(status, `Uploaded ${file.name}; the server is reading it…`));
    xhr.addEventListener("load", () => {
      let body = {};
      try { body = JSON.parse(xhr.responseText); } catch { body = {detail: xhr.statusText, errors: []}; }
      if (xhr.status === 201) {
        location.assign(`/ui/datasets/${encodeURIComponent(body.id)}`);
      } else if (xhr.status === 401) {
        toSignIn();
      } else {
        bar.hidden = true;
        replace(status, problemBox(new ApiError(xhr.status, body)));
      }
    });
    xhr.addEventListener("error", () => { bar.hidden = true; replace(status, problemBox("the upload failed (network)")); });
    xhr.send(form);
  };
  fileInput.addEventListener("change", () => { if (fileInput.files.length) send(fileInput.files[0]); });
  for (const name of ["dragenter", "dragover"]) zone.addEventListener(name, (e) => { e.preventDefault(); zone.classList.add("over"); });
  zone.addEventListener("dragleave", () => zone.classList.remove("over"));
  zone.addEventListener("drop", (e) => {
    e.preventDefault();
    zone.classList.remove("over");
    if (e.dataTransfer.files.length) send(e.dataTransfer.files[0]);
  });
  return section("Upload a data set", h("div", {class: "field"}, h("label", {for: "dataset-name"}, "Name (optional)"),
    nameInput), fileInput, zone, bar, status);
}

async function datasetsPage() {
  const result = await api("/datasets?limit=500");
  page("Data sets", uploadForm(), section(`Your data sets (${result.total})`, table(
    ["Name", "Rows", "Columns", "Size", "Uploaded", ""],
    result.items.map((d) => h("tr", {data: {dataset: d.id}}, h("td", {}, datasetLink(d.id, d.name)),
      h("td", {}, num(d.n_rows)), h("td", {}, num(d.n_columns)), h("td", {}, bytes(d.size_bytes)),
      h("td", {}, when(d.created_at)),
      h("td", {}, link(`/ui/train?dataset=${encodeURIComponent(d.id)}`, "Train a model")))),
    {id: "datasets-table", class: "stack"})));
}

function histogramSvg(hist) {
  const width = 120;
  const height = 32;
  const max = Math.max(1, ...hist.counts);
  const w = width / hist.counts.length;
  return svg("svg", {width, height, viewBox: `0 0 ${width} ${height}`, class: "hist", role: "img",
    "aria-label": `histogram of ${hist.column}`},
  ...hist.counts.map((c, i) => svg("rect", {x: (i * w + 0.5).toFixed(1), width: Math.max(1, w - 1).toFixed(1),
    y: (height - (height * c) / max).toFixed(1), height: ((height * c) / max).toFixed(1), fill: "#60a5fa"})));
}

function topBars(top, total) {
  return h("div", {class: "top-values"}, top.slice(0, 5).map((t) => h("div", {class: "top-value"},
    h("span", {class: "bar-track"}, meterBar(t.count / Math.max(1, total))),
    h("span", {class: "top-label"}, String(t.value)), h("span", {class: "muted"}, ` ${num(t.count)}`))));
}

function meterBar(fraction) {
  const bar = h("span", {class: "bar"});
  bar.style.width = `${Math.max(0, Math.min(1, fraction)) * 100}%`;  // CSSOM, allowed by the CSP
  return bar;
}

function columnSummary(col) {
  const s = col.stats || {};
  if (typeof s.mean === "number") {
    return `min ${num(s.min)} · mean ${num(s.mean)} · max ${num(s.max)} · sd ${num(s.std)}`;
  }
  if (col.shape) return `shape ${JSON.stringify(col.shape)}`;
  return "";
}

async function datasetPage(id) {
  const path = `/datasets/${encodeURIComponent(id)}`;
  let dataset;
  try { dataset = await api(path); } catch (error) {
    if (error instanceof ApiError && error.status === 404) return notFound(`No data set '${id}' is yours to see.`);
    throw error;
  }
  const [previewData, hist] = await Promise.all([api(`${path}/preview?limit=20`),
    api(`/ui/datasets/${encodeURIComponent(id)}/histograms`).catch(() => ({items: []}))]);
  const histograms = Object.fromEntries(hist.items.map((x) => [x.column, x]));
  const warnings = Array.isArray(dataset.warnings) ? dataset.warnings : [];
  const profile = table(["Column", "Kind", "Type", "Missing", "Distinct", "Summary", "Distribution"],
    dataset.columns.map((col) => h("tr", {}, h("th", {scope: "row", class: "colname"}, col.name),
      h("td", {}, col.kind, col.inferred_kind && col.inferred_kind !== col.kind ?
        h("div", {class: "muted small"}, `set by you (inferred: ${col.inferred_kind})`) : null,
      col.reason ? h("div", {class: "muted small"}, col.reason) : null),
      h("td", {}, col.dtype), h("td", {}, num(col.n_missing)), h("td", {}, num(col.n_unique)),
      h("td", {}, columnSummary(col),
        warnings.filter((w) => w.column === col.name).map((w) => h("div", {class: "warn small"}, w.message))),
      h("td", {}, histograms[col.name] ? histogramSvg(histograms[col.name])
        : col.stats && col.stats.top ? topBars(col.stats.top, dataset.n_rows - col.n_missing) : null))),
    {id: "profile", class: "stack"});
  const preview = table(previewData.columns, previewData.rows.map((row) => h("tr", {},
    previewData.columns.map((c) => h("td", {}, row[c] === null || row[c] === undefined ? "" :
      typeof row[c] === "object" ? JSON.stringify(row[c]) : num(row[c]))))), {id: "preview", class: "preview"});
  page(dataset.name,
    h("div", {class: "toolbar"}, h("a", {class: "button primary", id: "train-link",
      href: `/ui/train?dataset=${encodeURIComponent(id)}`}, "Train a model on this"),
    link(`/ui/jobs?dataset_id=${encodeURIComponent(id)}`, "Its jobs"),
    h("button", {type: "button", class: "danger", onclick: async () => {
      if (!confirm(`Delete the data set '${dataset.name}'?`)) return;
      try { await api(path, {method: "DELETE"}); location.assign("/ui/datasets"); } catch (error) {
        main().prepend(problemBox(error));
      }
    }}, "Delete")),
    section("Summary", keyValues([["Id", h("code", {}, dataset.id)], ["Rows", num(dataset.n_rows)],
      ["Columns", num(dataset.n_columns)], ["Format", dataset.format],
      dataset.dialect ? ["Read as", `delimiter ${JSON.stringify(dataset.dialect.delimiter)}, decimal ` +
        `${JSON.stringify(dataset.dialect.decimal)}, ${dataset.dialect.encoding}`] : null,
      ["Size", bytes(dataset.size_bytes)],
      ["SHA-256", h("code", {class: "small"}, dataset.sha256)], ["Uploaded", when(dataset.created_at)]])),
    warningsList(warnings),
    section("Column profile", hist.rows_read && hist.rows_read < dataset.n_rows ?
      h("p", {class: "muted"}, `Histograms from the first ${num(hist.rows_read)} rows.`) : null, profile),
    section(`Preview (first ${previewData.rows.length} rows)`, preview));
}

// ---------------------------------------------------------------- the training form

const MODEL_TYPES = ["ensemble", "mlp", "logistic_regression", "perceptron", "autoencoder"];
const ACTIVATIONS = ["relu", "leaky_relu", "tanh", "sigmoid", "gelu", "linear", "threshold"];
const OPTIMIZERS = ["adam", "adamw", "sgd", "rmsprop", "lbfgs"];

function deepMerge(base, extra) {
  for (const [k, v] of Object.entries(extra)) {
    if (v && typeof v === "object" && !Array.isArray(v) && base[k] && typeof base[k] === "object") deepMerge(base[k], v);
    else base[k] = v;
  }
  return base;
}

async function trainPage() {
  const all = (await api("/datasets?limit=500")).items;
  let dataset = all.find((d) => d.id === query("dataset")) || all[0];
  if (!dataset) {
    page("Train a model", h("p", {}, "Upload a data set first: ", link("/ui/datasets", "Data sets"), "."));
    return;
  }
  const fields = {};
  const errors = {};
  const field = (name, label, input, help) => {
    fields[name] = input;
    input.id = `f-${name.replace(/\./g, "-")}`;
    input.name = name;
    errors[name] = h("div", {class: "field-error", id: `${input.id}-error`});
    return h("div", {class: "field"}, h("label", {for: input.id}, label), input,
      help ? h("div", {class: "muted small"}, help) : null, errors[name]);
  };
  const select = (options, value) => h("select", {}, options.map((o) =>
    Array.isArray(o) ? h("option", {value: o[0], selected: o[0] === value}, o[1])
      : h("option", {value: o, selected: o === value}, o)));
  const number = (placeholder, step = "any") => h("input", {type: "number", step, placeholder, inputmode: "decimal"});
  const targetSelect = h("select", {});
  const fillTargets = () => {
    const last = dataset.columns[dataset.columns.length - 1];
    replace(targetSelect, h("option", {value: ""}, "(none: autoencoder)"),
      dataset.columns.map((c) => h("option", {value: c.name, selected: c === last}, `${c.name} (${c.kind})`)));
  };
  fillTargets();
  const datasetSelect = select(all.map((d) => [d.id, d.name]), dataset.id);
  datasetSelect.addEventListener("change", () => {
    dataset = all.find((d) => d.id === datasetSelect.value);
    fillTargets();
  });
  const advanced = h("textarea", {rows: 5, spellcheck: "false",
    placeholder: '{"training": {"test_fraction": 0.2}, "model": {"members": 8}}'});
  const banner = h("div", {id: "form-problem"});
  const form = h("form", {class: "card", id: "train-form", novalidate: true, onsubmit: submit},
    h("div", {class: "grid"},
      field("dataset_id", "Data set", datasetSelect),
      field("target", "Target (the column to predict)", targetSelect),
      field("task", "Task", select(["auto", "classification", "regression"], "auto")),
      field("model.type", "Model type", select(MODEL_TYPES, "ensemble"),
        "ensemble: the default, member MLPs trained together; the lecture's single networks otherwise"),
      field("model.hidden_layers", "Hidden layers", h("input", {type: "text", placeholder: "64, 64"}),
        "widths, comma-separated"),
      field("model.activation", "Activation", select([["", "(default: relu)"], ...ACTIVATIONS], "")),
      field("model.dropout", "Dropout", number("default 0.1")),
      field("training.epochs", "Epochs (at most)", number("default 300; ensemble 200", "1")),
      field("training.batch_size", "Batch size", number("default 32", "1")),
      field("training.optimizer", "Optimizer", select([["", "(default)"], ...OPTIMIZERS], "")),
      field("training.learning_rate", "Learning rate", number("default 0.001")),
      field("training.validation_fraction", "Validation fraction", number("default 0.2")),
      field("training.test_fraction", "Test fraction", number("default 0")),
      field("training.early_stopping_patience", "Early-stopping patience", number("default 20", "1"),
        "0 trains every epoch"),
      field("training.seed", "Seed", number("default 0", "1")),
      field("device", "Device", h("input", {type: "text", value: "auto", list: "devices"}),
        "auto, cpu, cuda, cuda:N or mps")),
    h("datalist", {id: "devices"}, ["auto", "cpu", "cuda", "cuda:0", "mps"].map((d) => h("option", {value: d}))),
    field("advanced", "Advanced: more of the spec as JSON (merged over the fields above)", advanced,
      "any field of the job spec; see the Job spec section of the README or POST /jobs in the API docs"),
    banner, h("button", {type: "submit", class: "primary", id: "submit-job"}, "Start training"));
  page("Train a model", form);

  function spec() {
    const out = {model: {}, training: {}};
    for (const [name, input] of Object.entries(fields)) {
      if (name === "advanced") continue;
      const raw = input.value.trim();
      if (raw === "") continue;
      let value = raw;
      if (name === "model.hidden_layers") {
        value = raw.split(/[\s,]+/).filter(Boolean).map((x) => (/^\d+$/.test(x) ? Number(x) : x));
      } else if (input.type === "number") {
        value = Number(raw);
      }
      const [head, tail] = name.split(".");
      if (tail) out[head][tail] = value; else out[head] = value;
    }
    if (!fields.target.value) out.target = null;
    const extra = advanced.value.trim();
    if (extra) {
      let parsed;
      try { parsed = JSON.parse(extra); } catch (e) { throw {field: "advanced", message: `not JSON: ${e.message}`}; }
      if (!parsed || typeof parsed !== "object" || Array.isArray(parsed)) {
        throw {field: "advanced", message: "a JSON object, e.g. {\"training\": {\"seed\": 1}}"};
      }
      deepMerge(out, parsed);
    }
    return out;
  }

  async function submit(event) {
    event.preventDefault();
    for (const el of Object.values(errors)) replace(el);
    replace(banner);
    let body;
    try { body = spec(); } catch (problem) {
      replace(errors[problem.field], problem.message);
      return;
    }
    try {
      const job = await api("/jobs", {method: "POST", json: body});
      location.assign(`/ui/jobs/${encodeURIComponent(job.id)}`);
    } catch (error) {
      if (!(error instanceof ApiError)) throw error;
      // Each of the API's errors goes next to the field it names (a deeper field under its form field), the rest
      // under the JSON box, which is where any other field of the spec comes from.
      for (const e of error.problem.errors || []) {
        const name = Object.keys(fields).filter((n) => n !== "advanced")
          .find((n) => e.field === n || (e.field || "").startsWith(`${n}.`)) || "advanced";
        put(errors[name], h("div", {}, [e.column && `column ${e.column}: `, e.message].filter(Boolean).join("")));
      }
      replace(banner, problemBox(error));
    }
  }
}

// ---------------------------------------------------------------- models

async function modelsPage() {
  const result = await api("/models?limit=500");
  page("Models", section(`Trained models (${result.total})`, table(
    ["Model", "Type", "Task", "Target", "Figures", "Size", "Created"],
    result.items.map((m) => h("tr", {}, h("td", {}, modelLink(m.id)), h("td", {}, m.model_type), h("td", {}, m.task),
      h("td", {}, m.target || "–"), h("td", {class: "metric"}, headline({metrics: m.metrics})),
      h("td", {}, bytes(m.size_bytes)), h("td", {}, when(m.created_at)))), {id: "models-table", class: "stack"})));
}

function probabilityBars(probabilities) {
  const entries = Object.entries(probabilities).sort((a, b) => b[1] - a[1]);
  return h("div", {class: "probs", id: "probabilities"}, entries.map(([label, p]) => h("div", {class: "prob"},
    h("span", {class: "prob-label"}, label), h("span", {class: "bar-track"}, meterBar(p)),
    h("span", {class: "prob-value"}, `${(100 * p).toFixed(1)} %`))));
}

async function modelPage(id) {
  const path = `/models/${encodeURIComponent(id)}`;
  let model;
  try { model = await api(path); } catch (error) {
    if (error instanceof ApiError && error.status === 404) return notFound(`No model '${id}' is yours to see.`);
    if (error instanceof ApiError && error.status === 410) {
      return page(`Model ${id}`, problemBox(error));
    }
    throw error;
  }
  // Prefill the form with the data set's first row, when the data set is still there.
  let example = {};
  let dataset = null;
  if (model.dataset_id) {
    const where = `/datasets/${encodeURIComponent(model.dataset_id)}`;
    const [info, preview] = await Promise.all([api(where).catch(() => null),
      api(`${where}/preview?limit=1`).catch(() => null)]);
    dataset = info;
    if (preview && preview.rows.length) example = preview.rows[0];
  }
  const tensor = model.features.length === 1 && model.features[0].kind === "tensor";
  const inputs = {};
  const formFields = tensor ? [h("div", {class: "field"}, h("label", {for: "inputs"}, `X: one record, shaped ${JSON.stringify(model.features[0].shape)} (JSON)`),
    inputs.X = h("textarea", {id: "inputs", rows: 4, spellcheck: "false"}))] : model.features.map((f, i) => {
    const fid = `feature-${i}`;
    let input;
    if (f.categories) {
      input = h("select", {id: fid}, f.categories.map((c) => h("option", {value: JSON.stringify(c),
        selected: example[f.name] === c}, String(c))));
    } else if (f.kind === "datetime") {  // dates go as text, in the column's layout or ISO 8601
      input = h("input", {id: fid, type: "text", placeholder: "e.g. 2012-01-31", "data-kind": "datetime",
        value: typeof example[f.name] === "string" ? example[f.name] : ""});
    } else {
      input = h("input", {id: fid, type: "number", step: "any", inputmode: "decimal",
        value: typeof example[f.name] === "number" ? String(example[f.name]) : ""});
    }
    inputs[f.name] = input;
    return h("div", {class: "field"}, h("label", {for: fid}, f.name, h("span", {class: "muted small"}, ` ${f.kind}`)),
      input);
  });
  const result = h("div", {id: "prediction", "aria-live": "polite"});
  const predictForm = h("form", {id: "predict-form", onsubmit: async (event) => {
    event.preventDefault();
    replace(result);
    let body;
    try {
      if (tensor) {
        body = {model_id: id, inputs: [JSON.parse(inputs.X.value)]};
      } else {
        const record = {};
        for (const [name, input] of Object.entries(inputs)) {
          if (input.tagName === "SELECT") record[name] = JSON.parse(input.value);
          else if (input.dataset.kind === "datetime") record[name] = input.value.trim() || null;
          else record[name] = input.value.trim() === "" ? null : Number(input.value);
        }
        body = {model_id: id, records: [record]};
      }
    } catch (error) {
      replace(result, problemBox(`the input is not valid JSON: ${error.message}`));
      return;
    }
    try {
      const answer = await api("/predict", {method: "POST", json: body});
      const prediction = answer.predictions[0];
      replace(result, h("p", {class: "answer"}, "Prediction: ", h("strong", {id: "predicted"},
        typeof prediction === "object" ? JSON.stringify(prediction) : num(prediction))),
      answer.probabilities ? probabilityBars(answer.probabilities[0]) : null);
    } catch (error) {
      replace(result, problemBox(error));
    }
  }}, h("div", {class: "grid"}, formFields), h("button", {type: "submit", class: "primary"}, "Predict"), result);

  const scoreFile = h("input", {type: "file", id: "score-file", accept: ".csv,.tsv,.txt,.parquet"});
  const scoreStatus = h("div", {id: "score-status", "aria-live": "polite"});
  const scoreForm = h("form", {id: "score-form", onsubmit: async (event) => {
    event.preventDefault();
    if (!scoreFile.files.length) { replace(scoreStatus, problemBox("choose a file first")); return; }
    const form = new FormData();
    form.append("file", scoreFile.files[0], scoreFile.files[0].name);
    replace(scoreStatus, "Scoring…");
    const resp = await fetch(`${path}/predict`, {method: "POST", body: form, credentials: "same-origin"});
    if (!resp.ok) { replace(scoreStatus, problemBox(new ApiError(resp.status, await readProblem(resp)))); return; }
    const blob = await resp.blob();
    const href = URL.createObjectURL(blob);
    const name = `predictions-${id}.csv`;
    const anchor = h("a", {href, download: name, id: "scored-download", class: "button"}, `Download ${name}`);
    replace(scoreStatus, h("p", {}, `Scored ${resp.headers.get("X-Row-Count") || "?"} rows. `, anchor));
    anchor.click();
  }}, h("p", {class: "muted"}, "A CSV, TSV or Parquet file with the model's feature columns; the answer is the same rows with ",
    h("code", {}, "prediction"), model.labels ? [" and ", h("code", {}, "p_<label>"), " columns"] : " column", "."),
  scoreFile, h("button", {type: "submit"}, "Score the file"), scoreStatus);

  page(`Model ${id}`,
    h("div", {class: "toolbar"}, h("a", {class: "button", href: `${path}/download`, id: "download"},
      "Download (safetensors + JSON, zip)"), model.job_id ? link(`/ui/jobs/${encodeURIComponent(model.job_id)}`,
      "The job that trained it") : null),
    section("Summary", keyValues([["Type", model.model_type], ["Task", model.task], ["Target", model.target || "–"],
      ["Data set", datasetLink(model.dataset_id, dataset && dataset.name)],
      ["Job", model.job_id ? jobLink(model.job_id) : "–"],
      ["Size", bytes(model.size_bytes)], ["Created", when(model.created_at)],
      model.labels ? ["Labels", h("span", {id: "labels"}, model.labels.map((l) => h("code", {class: "label"}, String(l))))] : null])),
    section("Predict one record", predictForm),
    tensor ? null : section("Score a file", scoreForm),
    section("Figures of the kept model", figuresTable(model.metrics, ["epoch", "seconds"])),
    section("Feature schema", table(["Column", "Kind", "Categories"], model.features.map((f) => h("tr", {},
      h("td", {}, f.name), h("td", {}, f.kind), h("td", {}, f.categories ? f.categories.map(String).join(", ") :
        f.shape ? JSON.stringify(f.shape) : ""))))));
}

// ---------------------------------------------------------------- workers

async function workersPage() {
  const depth = h("div", {class: "toolbar", id: "queue"});
  const list = h("div", {id: "workers"});
  page("Workers and queue", depth, list, h("p", {class: "muted"}, "Updates every two seconds."));
  async function refresh() {
    const [workers, queued, running] = await Promise.all([api("/workers"), api("/jobs?status=queued&limit=1"),
      api("/jobs?status=running&limit=1")]);
    replace(depth, h("span", {class: "stat"}, h("strong", {id: "queue-depth"}, String(queued.total)), " queued"),
      h("span", {class: "stat"}, h("strong", {}, String(running.total)), " running"),
      h("span", {class: "stat"}, h("strong", {}, String(workers.items.length)), " live workers"));
    replace(list, workers.items.length ? workers.items.map((w) => section(`${w.host} · pid ${w.pid}`, keyValues([
      ["Worker", h("code", {}, w.id)], ["Alive", w.alive ? "yes" : "no"], ["Started", when(w.started_at)],
      ["Last heartbeat", when(w.heartbeat_at)],
      ["Running", w.running_jobs.length ? h("span", {}, w.running_jobs.map((j) => [jobLink(j), " "])) : "nothing"],
    ]), table(["Device", "Kind", "Name", "Memory"], w.devices.map((d) => h("tr", {}, h("td", {}, h("code", {}, d.name)),
      h("td", {}, d.kind), h("td", {}, d.label || "–"), h("td", {}, d.memory_bytes ? bytes(d.memory_bytes) : "–"))),
    {class: "stack"}))) :
      h("p", {class: "problem"}, "No live worker: queued jobs wait until one starts (`mlps worker`)."));
  }
  await refresh();
  every(2000, refresh);
}

// ---------------------------------------------------------------- routes

const ROUTES = [
  [/^\/(ui\/?)?$/, jobsPage],
  [/^\/ui\/jobs\/?$/, jobsPage],
  [/^\/ui\/jobs\/([^/]+)$/, jobPage],
  [/^\/ui\/compare\/?$/, comparePage],
  [/^\/ui\/datasets\/?$/, datasetsPage],
  [/^\/ui\/datasets\/([^/]+)$/, datasetPage],
  [/^\/ui\/train\/?$/, trainPage],
  [/^\/ui\/models\/?$/, modelsPage],
  [/^\/ui\/models\/([^/]+)$/, modelPage],
  [/^\/ui\/workers\/?$/, workersPage],
];

async function start() {
  if (location.pathname === "/ui/sign-in") {
    signInPage();
    return;
  }
  try {
    me = await api("/ui/session", {signIn: false});
  } catch (error) {
    if (error instanceof ApiError && error.status === 401) { toSignIn(); return; }
    renderNav();
    page("The server could not be reached", problemBox(error));
    return;
  }
  renderNav();
  for (const [pattern, handler] of ROUTES) {
    const match = location.pathname.match(pattern);
    if (!match) continue;
    try {
      await handler(...match.slice(1).map(decodeURIComponent));
    } catch (error) {
      page("Something went wrong", problemBox(error));
    }
    return;
  }
  notFound();
}

window.addEventListener("DOMContentLoaded", start);
