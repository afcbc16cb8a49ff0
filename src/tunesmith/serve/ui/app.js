// tunesmith web UI: one page, plain JavaScript, no CDN. Every action is a call to the same
// /v1 API the OpenAI SDK uses, with the API key the user signed in with.
"use strict";

const state = { key: localStorage.getItem("tunesmith-key") || "", me: null, timers: [] };
const $ = (sel, root = document) => root.querySelector(sel);

// ------------------------------------------------------------------ API and helpers

async function api(path, options = {}) {
  const headers = Object.assign({ Authorization: `Bearer ${state.key}` }, options.headers || {});
  if (options.json !== undefined) {
    headers["Content-Type"] = "application/json";
    options.body = JSON.stringify(options.json);
  }
  let response;
  try {
    response = await fetch(`/v1${path}`, Object.assign({}, options, { headers }));
  } catch (e) {
    throw new Error("The server cannot be reached; check that `tunesmith serve` is running.");
  }
  if (!response.ok) {
    let message = `The server answered ${response.status}.`;
    try { message = (await response.json()).error.message || message; } catch (e) { /* not JSON */ }
    if (response.status === 401 && path !== "/tunesmith/me") signOut(message);
    throw new Error(message);
  }
  return options.raw ? response : response.json();
}

function showError(error) {
  const box = $("#error");
  box.textContent = error ? String(error.message || error) : "";
  box.hidden = !error;
}

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "onclick" || k === "onchange" || k === "onsubmit" || k === "oninput") node[k] = v;
    else if (v !== null && v !== undefined && v !== false) node.setAttribute(k, v === true ? "" : v);
  }
  for (const child of children.flat()) {
    if (child !== null && child !== undefined) node.append(child instanceof Node ? child : String(child));
  }
  return node;
}

const when = (seconds) => (seconds ? new Date(seconds * 1000).toLocaleString() : "-");
const fmt = (v, digits = 4) => (typeof v === "number" ? Number(v.toPrecision(digits)).toString() : v ?? "-");

function table(headers, rows) {
  return el("table", {}, el("thead", {}, el("tr", {}, headers.map((h) => el("th", { scope: "col" }, h)))),
    el("tbody", {}, rows.length ? rows : [el("tr", {}, el("td", { colspan: headers.length, class: "muted" }, "Nothing yet."))]));
}

function action(label, fn, cls = "") {
  return el("button", { type: "button", class: cls, onclick: async (e) => {
    e.target.disabled = true;
    showError(null);
    try { await fn(); } catch (err) { showError(err); } finally { e.target.disabled = false; }
  } }, label);
}

// A file from the API (report, model card, metrics) as a blob URL, since links cannot carry the key.
async function fileURL(fileId, type) {
  const response = await api(`/files/${fileId}/content`, { raw: true });
  return URL.createObjectURL(new Blob([await response.blob()], { type }));
}

// ------------------------------------------------------------------ sign in and routing

function signOut(message) {
  localStorage.removeItem("tunesmith-key");
  state.key = "";
  state.me = null;
  location.hash = "#/signin";
  if (message) setTimeout(() => showError(message), 0);
}

async function signIn(key) {
  state.key = key.trim();
  const me = await api("/tunesmith/me");
  localStorage.setItem("tunesmith-key", state.key);
  state.me = me;
}

const pages = { signin, datasets, new: newJob, jobs, job, compare, playground, models };

async function route() {
  state.timers.forEach(clearInterval);
  state.timers = [];
  showError(null);
  const [name, arg] = location.hash.replace(/^#\//, "").split("/");
  if (state.key && !state.me) {
    try { await signIn(state.key); } catch (e) { signOut(e.message); return; }
  }
  const page = state.me ? (pages[name] && name !== "signin" ? name : "datasets") : "signin";
  if (page !== name) { location.hash = `#/${page}`; return; }
  $("#nav").hidden = !state.me;
  $("#who").replaceChildren(state.me ? el("span", {}, `project ${state.me.project}${state.me.admin ? " (admin)" : ""} `,
    el("button", { type: "button", class: "secondary", onclick: () => signOut() }, "Sign out")) : "");
  for (const a of document.querySelectorAll("nav a")) {
    const active = a.getAttribute("href") === `#/${page}` || (page === "job" && a.getAttribute("href") === "#/jobs");
    a.classList.toggle("active", active);
    if (active) a.setAttribute("aria-current", "page"); else a.removeAttribute("aria-current");
  }
  const main = $("#page");
  main.replaceChildren();
  try { await pages[page](main, arg ? decodeURIComponent(arg) : undefined); } catch (e) { showError(e); }
  main.focus();
}

function signin(main) {
  const input = el("input", { type: "password", id: "key", autocomplete: "off", placeholder: "ts-..." });
  main.append(el("h1", {}, "Sign in"), el("form", { class: "card", onsubmit: async (e) => {
    e.preventDefault();
    showError(null);
    try { await signIn(input.value); location.hash = "#/datasets"; } catch (err) { state.key = ""; showError(err); }
  } }, el("label", { for: "key" }, "API key ", el("span", { class: "hint" }, "(from `tunesmith keys create --project NAME`)")),
  input, el("p", {}, el("button", { type: "submit" }, "Sign in"))));
}

// ------------------------------------------------------------------ datasets

async function datasets(main, selected) {
  main.append(el("h1", {}, "Datasets"));
  const input = el("input", { type: "file", id: "upload", accept: ".jsonl,.json,.csv,.tsv,.parquet,.txt" });
  const drop = el("div", { class: "drop" }, el("p", {}, "Drop a data file here, or choose one: "), el("label", { for: "upload", class: "hint" }, "Data file"), input);
  const upload = async (file) => {
    showError(null);
    drop.querySelector("p").textContent = `Uploading and checking ${file.name}...`;
    const form = new FormData();
    form.append("purpose", "fine-tune");
    form.append("file", file);
    try {
      const f = await api("/files", { method: "POST", body: form });
      location.hash = `#/datasets/${f.id}`;
      if (selected === f.id) route();
    } catch (e) { showError(e); drop.querySelector("p").textContent = "Drop a data file here, or choose one: "; }
  };
  input.onchange = () => input.files[0] && upload(input.files[0]);
  drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => { e.preventDefault(); drop.classList.remove("over"); if (e.dataTransfer.files[0]) upload(e.dataTransfer.files[0]); });
  main.append(el("div", { class: "card" }, drop, el("p", { class: "hint" },
    "Chat (OpenAI JSONL), prompt/completion, text+label CSV, preference pairs or raw text. Each upload is checked by the data gate.")));

  const files = (await api("/files")).data;
  const detail = el("div", { id: "card" });
  main.append(el("div", { class: "row" }, el("div", {}, el("h2", {}, "Your files"), table(["file", "format", "rows", "gate", ""],
    files.map((f) => {
      const c = f.data_card || {};
      const gate = c.errors && c.errors.length ? el("span", { class: "sev-error" }, `${c.errors.length} error(s)`)
        : c.warnings && c.warnings.length ? el("span", { class: "sev-warn" }, `${c.warnings.length} warning(s)`) : el("span", { class: "sev-ok" }, "passed");
      return el("tr", {}, el("td", {}, el("a", { href: `#/datasets/${f.id}` }, f.filename), el("div", { class: "hint" }, f.id)),
        el("td", {}, `${c.format || "-"} (${c.task || "-"})`), el("td", {}, c.rows ?? "-"), el("td", {}, gate),
        el("td", {}, el("a", { class: "button secondary", href: `#/new/${f.id}` }, "Fine-tune")));
    }))), detail));
  const file = files.find((f) => f.id === selected);
  if (file) showCard(detail, file);
}

function showCard(box, f) {
  const c = f.data_card || {};
  const errors = (c.errors || []).length, warnings = (c.warnings || []).length;
  // Findings grouped by severity, each with a few of the rows it is about.
  const findings = c.findings || (c.errors || []).map((m) => ({ severity: "error", message: m, examples: [] }))
    .concat((c.warnings || []).map((m) => ({ severity: "warning", message: m, examples: [] })));
  const group = (severity, title, cls) => {
    const items = findings.filter((x) => x.severity === severity);
    return [el("h3", { class: cls }, `${title} (${items.length})`), el("ul", {}, items.map((x) => el("li", { class: cls },
      `${x.message} `, x.check ? el("span", { class: "hint" }, `(${x.check}, ${x.rows} row${x.rows === 1 ? "" : "s"})`) : "",
      x.examples.length ? el("ul", { class: "examples" }, x.examples.map((e) => el("li", {}, el("span", { class: "hint" }, `row ${e.row}: `), el("code", {}, e.text)))) : "")))];
  };
  const fixes = c.fixes;
  box.append(el("h2", {}, `Data card: ${f.filename}`), el("div", { class: "card", id: "data-card" },
    el("p", {}, `Format ${c.format}, task ${c.task}, ${c.rows} rows, quality score ${fmt(c.quality_score, 3)}.`),
    fixes ? el("p", { class: "sev-ok", id: "fix-summary" }, `Cleaned copy of ${c.fixed_from}: ${fixes.rows_in} rows in, ${fixes.rows_out} kept; `
      + `${fixes.dropped} dropped, ${fixes.redacted} redacted, ${fixes.changed} changed.`) : "",
    fixes && fixes.log.length ? el("details", {}, el("summary", {}, "What the fixes did, row by row"),
      table(["row", "action", "why"], fixes.log.map((l) => el("tr", {}, el("td", {}, l.row), el("td", {}, l.action), el("td", {}, l.reason))))) : "",
    group("error", "Errors", "sev-error"), group("warning", "Warnings", "sev-warn"),
    el("p", { class: "hint" }, errors
      ? "A job refuses a file with errors. Apply the safe fixes below, or fix the file by hand and upload it again, or set the advanced option force."
      : "The file passed the gate's quick checks; a job also runs the embedding-based label check."),
    el("p", { class: "hint" }, "Safe fixes drop exact duplicates and rows without an answer, strip control characters and HTML, and redact personal data into a new file; the original stays. Conflicting answers and label problems need you."),
    errors + warnings ? action("Apply safe fixes", async () => {
      const fixed = await api(`/tunesmith/files/${f.id}/fix`, { method: "POST" });
      location.hash = `#/datasets/${fixed.id}`;
    }) : "", " ",
    action("Download", async () => {
      const a = el("a", { href: await fileURL(f.id, "application/octet-stream"), download: f.filename });
      document.body.append(a); a.click(); a.remove();
    }, "secondary"), " ",
    el("a", { class: "button secondary", href: `#/new/${f.id}` }, "Fine-tune on it"), " ",
    action("Delete", async () => { await api(`/files/${f.id}`, { method: "DELETE" }); location.hash = "#/datasets"; }, "danger")));
}

// ------------------------------------------------------------------ new fine-tune

async function newJob(main, fileId) {
  main.append(el("h1", {}, "New fine-tune"));
  const [files, info, packs] = await Promise.all([api("/files"), api("/tunesmith/base_models"), api("/tunesmith/domains")]);
  const usable = files.data.filter((f) => f.purpose === "fine-tune");
  if (!usable.length) { main.append(el("p", {}, "Upload a dataset first: ", el("a", { href: "#/datasets" }, "Datasets"))); return; }
  const field = (id, label, control, hint) => el("div", {}, el("label", { for: id }, label, hint ? el("span", { class: "hint" }, ` ${hint}`) : ""), control);
  const select = (id, options, value) => el("select", { id }, options.map(([v, text]) => el("option", { value: v, selected: v === value }, text)));
  const modelSel = select("model", info.data.map((m) => [m.id, `${m.id} - ${m.params ? (m.params / 1e6).toFixed(0) + "M parameters, " : ""}${m.licence}`]));
  const fileSel = select("training_file", usable.map((f) => [f.id, `${f.filename} (${(f.data_card || {}).rows ?? "?"} rows)`]), fileId);
  const methodSel = select("method", Object.keys(info.methods).map((m) => [m, m]), "supervised");
  const adapterSel = select("adapter", Object.keys(info.adapters).map((a) => [a, a]), "lora");
  const explain = el("p", { class: "hint", id: "method-hint" });
  const adapterHint = el("p", { class: "hint", id: "adapter-hint" });
  const update = () => { explain.textContent = info.methods[methodSel.value]; adapterHint.textContent = info.adapters[adapterSel.value]; };
  methodSel.onchange = adapterSel.onchange = update;
  update();
  // A domain pack (GET /v1/tunesmith/domains): its compliance profile gates the data, its probes join the
  // evaluation, the job goes to the audit trail; a template of the pack picks the method and system prompt.
  const pack = (name) => packs.data.find((p) => p.name === name);
  const domainSel = select("domain", [["", "none"], ...packs.data.map((p) => [p.name, `${p.name} - ${p.title}`])], "");
  const templateSel = el("select", { id: "template", disabled: true });
  const domainHint = el("p", { class: "hint", id: "domain-hint" });
  const fillTemplates = () => {
    const p = pack(domainSel.value);
    templateSel.replaceChildren(...[["", "none"], ...(p ? p.templates.map((t) => [t.name, `${t.name} (${t.task}${t.labels.length ? `, ${t.labels.length} labels` : ""})`]) : [])]
      .map(([v, text]) => el("option", { value: v }, text)));
    templateSel.disabled = !p;
    domainHint.textContent = p ? `${p.summary} Profile ${p.profile.name}: ${p.profile.regulation}; identifiers checked: ${Object.keys(p.profile.kinds).join(", ")}.` : "";
  };
  domainSel.onchange = fillTemplates;
  templateSel.onchange = () => {
    const t = pack(domainSel.value)?.templates.find((x) => x.name === templateSel.value);
    if (t) { methodSel.value = t.task === "classify" ? "classify" : "supervised"; update(); }
    domainHint.textContent = t ? `${t.title}. System prompt: "${t.system_prompt}"` : (pack(domainSel.value) ? domainHint.textContent : "");
  };
  fillTemplates();
  const number = (id, placeholder) => el("input", { type: "text", id, placeholder, inputmode: "decimal" });
  const epochs = number("n_epochs", "auto"), lr = number("learning_rate_multiplier", "auto"), batch = number("batch_size", "auto");
  const suffix = el("input", { type: "text", id: "suffix", placeholder: "e.g. support-v1" });
  const advanced = el("textarea", { id: "advanced", placeholder: '{"max_steps": 200, "lora_r": 32, "force": false}' });
  // The job request the form describes, or [null, problem, input to fix] when it cannot be sent.
  const request = () => {
    const hp = {};
    for (const [name, input] of [["n_epochs", epochs], ["learning_rate_multiplier", lr], ["batch_size", batch]]) {
      const v = input.value.trim();
      if (v && v !== "auto") {
        if (Number.isNaN(Number(v))) return [null, `${name} must be a number or auto.`, input];
        hp[name] = Number(v);
      }
    }
    if (adapterSel.value !== "lora") hp.adapter = adapterSel.value;
    if (domainSel.value) hp.domain = domainSel.value;
    if (domainSel.value && templateSel.value) hp.template = templateSel.value;
    if (advanced.value.trim()) {
      let extra;
      try { extra = JSON.parse(advanced.value); } catch (err) { extra = null; }
      if (!extra || typeof extra !== "object" || Array.isArray(extra)) return [null, "The advanced options are not valid JSON: write them as {\"name\": value}.", advanced];
      Object.assign(hp, extra);
    }
    const type = methodSel.value;
    const body = { model: modelSel.value, training_file: fileSel.value, method: { type, [type]: { hyperparameters: hp } } };
    if (suffix.value.trim()) body.suffix = suffix.value.trim();
    return [body];
  };
  // What "auto" resolves to for this request, and why: refreshed shortly after every change.
  const preview = el("div", { id: "preview", "aria-live": "polite" });
  let pending = 0;
  const refresh = async () => {
    const ticket = ++pending;
    const [body, problem] = request();
    if (!body) { preview.replaceChildren(el("p", { class: "sev-error" }, problem)); return; }
    preview.replaceChildren(el("p", { class: "muted" }, "Resolving the automatic values..."));
    try {
      const p = await api("/tunesmith/fine_tuning/preview", { method: "POST", json: body });
      if (ticket !== pending) return;
      const r = p.resolved, reasons = r.reasons || {};
      preview.replaceChildren(table(["setting", "value", "why"], Object.entries(r).filter(([k]) => k !== "reasons").map(([k, v]) =>
        el("tr", {}, el("td", {}, k), el("td", {}, fmt(v)), el("td", { class: "hint" }, reasons[k] || "as you set it")))),
      el("p", { class: "hint" }, `Resolved on this server's hardware (${p.hardware}); a worker on other hardware resolves the hardware-dependent values again when it starts.`));
    } catch (err) {
      if (ticket === pending) preview.replaceChildren(el("p", { class: "sev-error", id: "preview-error" }, err.message));
    }
  };
  let debounce;
  // An edit makes a launch error stale: the preview says what is wrong with the form now.
  const changed = () => { showError(null); clearTimeout(debounce); debounce = setTimeout(refresh, 400); };
  main.append(el("form", { class: "card", oninput: changed, onchange: changed, onsubmit: async (e) => {
    e.preventDefault();
    showError(null);
    const [body, problem, input] = request();
    if (!body) { showError(problem); input.focus(); return; }
    try {
      const job = await api("/fine_tuning/jobs", { method: "POST", json: body });
      location.hash = `#/job/${job.id}`;
    } catch (err) { showError(err); }
  } },
  el("div", { class: "row" },
    el("div", {}, field("training_file", "Dataset", fileSel), field("model", "Base model", modelSel),
      field("domain", "Domain pack", domainSel, "(optional; its compliance profile gates the data)"),
      field("template", "Task template", templateSel), domainHint,
      field("method", "Method", methodSel), explain, field("adapter", "What is trained", adapterSel), adapterHint,
      field("suffix", "Name suffix", suffix, "(optional; part of the model's name)")),
    el("div", {}, el("h2", {}, "Hyperparameters"),
      el("p", { class: "hint" }, "Leave a value at auto and tunesmith picks it from the data, the model and the hardware; below is what each resolves to, and why."),
      field("n_epochs", "Epochs", epochs), field("learning_rate_multiplier", "Learning rate multiplier", lr, "(x the automatic rate)"),
      field("batch_size", "Batch size", batch),
      el("details", {}, el("summary", {}, "Advanced options"),
        field("advanced", "More settings, as JSON (the allow-list is in the README)", advanced, "(max_steps, lora_r, lora_alpha, max_length, eval_steps, validation_split, system_prompt, force, ...)")),
      el("h3", {}, "What auto resolves to"), preview)),
  el("p", {}, el("button", { type: "submit", id: "launch" }, "Launch fine-tune"))));
  refresh();
}

// ------------------------------------------------------------------ jobs

async function jobs(main) {
  main.append(el("h1", {}, "Jobs"));
  const box = el("div");
  main.append(box);
  const draw = async () => {
    const list = (await api("/fine_tuning/jobs?limit=100")).data;
    box.replaceChildren(table(["job", "status", "base", "method", "created", "model"], list.map((j) =>
      el("tr", {}, el("td", {}, el("a", { href: `#/job/${j.id}` }, j.id)), el("td", { class: `status ${j.status}` }, j.status),
        el("td", {}, j.model), el("td", {}, j.method.type), el("td", {}, when(j.created_at)), el("td", {}, j.fine_tuned_model || "-")))));
  };
  await draw();
  state.timers.push(setInterval(() => draw().catch(showError), 3000));
}

async function allEvents(jobId) {
  const events = [];
  let after = "";
  for (;;) {
    const page = await api(`/fine_tuning/jobs/${jobId}/events?limit=1000${after ? `&after=${after}` : ""}`);
    events.push(...page.data);
    if (!page.has_more) break;
    after = page.data[page.data.length - 1].id;
  }
  return events.reverse(); // oldest first
}

function curves(events) {
  const rows = events.filter((e) => e.type === "metrics").map((e) => e.data);
  return {
    train: rows.filter((r) => r.train_loss !== undefined).map((r) => [r.step, r.train_loss]),
    valid: rows.filter((r) => r.valid_loss !== undefined).map((r) => [r.step, r.valid_loss]),
    lr: rows.filter((r) => r.learning_rate !== undefined).map((r) => [r.step, r.learning_rate]),
    tokens: rows.filter((r) => r.tokens_per_s !== undefined).map((r) => [r.step, r.tokens_per_s]),
  };
}

const COLOURS = ["#2456c9", "#d9480f", "#2b8a3e", "#862e9c", "#c2255c", "#0b7285"];

// A line chart as SVG: series = [{name, points: [[x, y]], dashed}].
function chart(title, series) {
  const W = 560, H = 240, L = 52, R = 12, T = 22, B = 28;
  const all = series.flatMap((s) => s.points);
  const svg = document.createElementNS("http://www.w3.org/2000/svg", "svg");
  svg.setAttribute("viewBox", `0 0 ${W} ${H}`);
  svg.setAttribute("class", "chart");
  svg.setAttribute("role", "img");
  svg.setAttribute("aria-label", title);
  const add = (tag, attrs, text) => {
    const n = document.createElementNS("http://www.w3.org/2000/svg", tag);
    for (const [k, v] of Object.entries(attrs)) n.setAttribute(k, v);
    if (text !== undefined) n.textContent = text;
    svg.append(n);
  };
  add("text", { x: L, y: 14, "font-weight": "bold" }, title);
  // The legend sits under the plot as text, so long names never cover a line.
  const legend = el("div", { class: "legend" }, series.map((s, i) => el("span", { style: `color: ${s.colour || COLOURS[i % COLOURS.length]}` },
    `${s.dashed ? "- - " : "— "}${s.name}`)));
  const figure = el("figure", { class: "chart" }, svg, legend);
  if (!all.length) { add("text", { x: W / 2 - 40, y: H / 2 }, "no data yet"); return figure; }
  const xs = all.map((p) => p[0]), ys = all.map((p) => p[1]);
  const [x0, x1] = [Math.min(...xs), Math.max(...xs) || 1], [y0, y1] = [Math.min(...ys), Math.max(...ys)];
  const sx = (x) => L + ((x - x0) / (x1 - x0 || 1)) * (W - L - R);
  const sy = (y) => H - B - ((y - y0) / (y1 - y0 || 1)) * (H - T - B);
  add("line", { x1: L, y1: H - B, x2: W - R, y2: H - B, stroke: "#bbb" });
  add("line", { x1: L, y1: T, x2: L, y2: H - B, stroke: "#bbb" });
  for (const y of [y0, (y0 + y1) / 2, y1]) add("text", { x: 4, y: sy(y) + 4 }, fmt(y, 3));
  add("text", { x: L, y: H - 8 }, `step ${x0}`);
  add("text", { x: W - R - 60, y: H - 8 }, `step ${x1}`);
  series.forEach((s, i) => {
    if (!s.points.length) return;
    const colour = s.colour || COLOURS[i % COLOURS.length];
    add("polyline", { points: s.points.map(([x, y]) => `${sx(x)},${sy(y)}`).join(" "), fill: "none", stroke: colour,
      "stroke-width": 2, "stroke-dasharray": s.dashed ? "5 4" : "" });
  });
  return figure;
}

async function job(main, jobId) {
  const head = el("div"), charts = el("div", { class: "row" }), side = el("div", { class: "row" }), report = el("div");
  main.append(head, charts, side, report);
  let shownReport = false;
  const draw = async () => {
    const [j, events, checkpoints] = await Promise.all([api(`/fine_tuning/jobs/${jobId}`), allEvents(jobId),
      api(`/fine_tuning/jobs/${jobId}/checkpoints?limit=100`)]);
    const live = ["validating_files", "queued", "running", "paused"].includes(j.status);
    const buttons = [];
    if (j.status === "running" || j.status === "queued") buttons.push(action("Pause", () => api(`/fine_tuning/jobs/${jobId}/pause`, { method: "POST" }).then(draw), "secondary"));
    if (j.status === "paused") buttons.push(action("Resume", () => api(`/fine_tuning/jobs/${jobId}/resume`, { method: "POST" }).then(draw)));
    if (live) buttons.push(action("Cancel", () => api(`/fine_tuning/jobs/${jobId}/cancel`, { method: "POST" }).then(draw), "danger"));
    const resolved = (j.tunesmith || {}).resolved || {};
    const reasons = resolved.reasons || {};
    head.replaceChildren(el("h1", {}, `Job ${j.id}`), el("div", { class: "card" },
      el("p", {}, "Status: ", el("span", { class: `status ${j.status}`, id: "job-status" }, j.status), ` - ${j.method.type} on ${j.model}, created ${when(j.created_at)}`),
      j.error ? el("p", { class: "sev-error" }, j.error.message) : "",
      j.fine_tuned_model ? el("p", {}, "Model: ", el("code", {}, j.fine_tuned_model), " ", el("a", { href: `#/playground/${encodeURIComponent(j.fine_tuned_model)}` }, "try it in the playground")) : "",
      table(["setting", "value", "why"], Object.entries(j.hyperparameters).concat(Object.entries(resolved).filter(([k]) => k !== "reasons" && !(k in j.hyperparameters)))
        .map(([k, v]) => el("tr", {}, el("td", {}, k), el("td", {}, fmt(resolved[k] ?? v)), el("td", { class: "hint" }, reasons[k] || (v !== "auto" ? "as you set it" : resolved.reasons ? "" : "resolved when training starts"))))),
      el("p", {}, buttons)));
    const c = curves(events);
    charts.replaceChildren(chart("loss", [{ name: "training loss", points: c.train }, { name: "validation loss", points: c.valid, dashed: true }]),
      chart("learning rate", [{ name: "learning rate", points: c.lr }]), chart("tokens per second", [{ name: "tokens/s", points: c.tokens }]));
    side.replaceChildren(el("div", {}, el("h2", {}, "Events"), el("div", { class: "card events", id: "events" },
      events.slice().reverse().map((e) => el("div", { class: e.level === "error" ? "sev-error" : e.level === "warn" ? "sev-warn" : "" }, `${when(e.created_at)}  ${e.message}`)))),
    el("div", {}, el("h2", {}, "Checkpoints"), table(["step", "train loss", "validation loss"], checkpoints.data.map((k) =>
      el("tr", {}, el("td", {}, k.step_number), el("td", {}, fmt(k.metrics.train_loss)), el("td", {}, fmt(k.metrics.valid_loss)))))));
    if (j.status === "succeeded" && !shownReport) {
      shownReport = true;
      const files = await Promise.all(j.result_files.map((id) => api(`/files/${id}`)));
      const byName = Object.fromEntries(files.map((f) => [f.filename, f]));
      const parts = [el("h2", {}, "Evaluation report")];
      if (byName["report.html"]) {
        parts.push(el("iframe", { class: "report", id: "report", title: "evaluation report", sandbox: "allow-same-origin", src: await fileURL(byName["report.html"].id, "text/html") }));
      } else parts.push(el("p", { class: "muted" }, "No before/after report: the dataset had no test split (under 200 rows)."));
      if (byName["MODEL_CARD.md"]) {
        const text = await (await api(`/files/${byName["MODEL_CARD.md"].id}/content`, { raw: true })).text();
        parts.push(el("details", {}, el("summary", {}, "Model card"), el("pre", { class: "card", style: "white-space: pre-wrap" }, text)));
      }
      report.replaceChildren(...parts);
    }
    return live;
  };
  if (await draw()) {
    const timer = setInterval(async () => {
      try { if (!(await draw())) clearInterval(timer); } catch (e) { showError(e); clearInterval(timer); }
    }, 2000);
    state.timers.push(timer);
  }
}

// ------------------------------------------------------------------ compare

async function compare(main, ids) {
  main.append(el("h1", {}, "Compare runs"));
  const list = (await api("/fine_tuning/jobs?limit=100")).data;
  const chosen = new Set((ids || "").split(",").filter(Boolean));
  main.append(el("form", { class: "card", onsubmit: (e) => {
    e.preventDefault();
    const picked = [...main.querySelectorAll("input[name=job]:checked")].map((i) => i.value);
    location.hash = `#/compare/${picked.join(",")}`;
  } }, el("fieldset", {}, el("legend", {}, "Choose two or more jobs"), list.map((j) => el("label", { style: "font-weight: normal" },
    el("input", { type: "checkbox", name: "job", value: j.id, checked: chosen.has(j.id) }), ` ${j.id} (${j.status}, ${j.method.type} on ${j.model})`))),
  el("button", { type: "submit" }, "Compare")));
  const picked = list.filter((j) => chosen.has(j.id));
  if (picked.length < 2) return;
  const settings = picked.map((j) => Object.assign({ model: j.model, method: j.method.type }, j.hyperparameters,
    Object.fromEntries(Object.entries((j.tunesmith || {}).resolved || {}).filter(([k]) => k !== "reasons")),
    (j.method[j.method.type] || {}).hyperparameters || {}));
  const keys = [...new Set(settings.flatMap(Object.keys))];
  main.append(el("h2", {}, "Settings"), table(["setting", ...picked.map((j) => j.id)], keys.map((k) => {
    const values = settings.map((s) => JSON.stringify(s[k] ?? "-"));
    const differs = new Set(values).size > 1;
    return el("tr", {}, el("td", {}, k), values.map((v) => el("td", { class: differs ? "diff" : "" }, v.replace(/^"|"$/g, ""))));
  })));
  const [allCurves, tuned] = await Promise.all([Promise.all(picked.map((j) => allEvents(j.id).then(curves))), api("/tunesmith/models")]);
  const finalLoss = (c) => (c.valid.length ? c.valid[c.valid.length - 1][1] : null);
  // The test-set metrics of each run's model (before -> after), from its evaluation.
  const evaluation = Object.fromEntries(tuned.data.filter((m) => m.metrics).map((m) => [m.job, m.metrics]));
  const names = [...new Set(picked.flatMap((j) => Object.keys((evaluation[j.id] || {}).tuned || {})))].slice(0, 3);
  main.append(el("h2", {}, "Metrics"), table(["job", "status", "steps", "last validation loss", "best validation loss", ...names.map((n) => `${n.replace(/_/g, " ")} (base → tuned)`)], picked.map((j, i) =>
    el("tr", {}, el("td", {}, j.id), el("td", {}, j.status), el("td", {}, allCurves[i].train.length ? allCurves[i].train[allCurves[i].train.length - 1][0] : "-"),
      el("td", {}, fmt(finalLoss(allCurves[i]))), el("td", {}, fmt(allCurves[i].valid.length ? Math.min(...allCurves[i].valid.map((p) => p[1])) : null)),
      names.map((n) => { const e = evaluation[j.id]; return el("td", {}, e && n in e.tuned ? `${fmt(e.base[n], 3)} → ${fmt(e.tuned[n], 3)}` : "-"); })))),
  el("div", { class: "row" }, chart("training loss", picked.map((j, i) => ({ name: j.id, points: allCurves[i].train }))),
    chart("validation loss", picked.map((j, i) => ({ name: j.id, points: allCurves[i].valid })))));
}

// ------------------------------------------------------------------ playground

async function playground(main, modelId) {
  main.append(el("h1", {}, "Playground"));
  const all = (await api("/models")).data;
  const tuned = all.filter((m) => m.owned_by !== "tunesmith");
  const bases = all.filter((m) => m.owned_by === "tunesmith");
  if (!tuned.length) { main.append(el("p", {}, "No fine-tuned model yet: ", el("a", { href: "#/new" }, "start a fine-tune"), ".")); return; }
  const select = (id, models, value) => el("select", { id }, models.map((m) => el("option", { value: m.id, selected: m.id === value }, m.id)));
  const left = select("tuned-model", tuned, modelId), right = select("base-model", bases);
  const prompt = el("textarea", { id: "prompt", placeholder: "Ask both models the same thing" });
  const system = el("input", { type: "text", id: "system", placeholder: "optional system message" });
  const maxTokens = el("input", { type: "number", id: "max_tokens", value: 64, min: 1, max: 1024 });
  const out = [el("div", { class: "chat", id: "tuned-answer", "aria-live": "polite" }), el("div", { class: "chat", id: "base-answer", "aria-live": "polite" })];
  const ask = async () => {
    if (!prompt.value.trim()) { showError("Write a prompt first."); prompt.focus(); return; }
    const messages = (system.value.trim() ? [{ role: "system", content: system.value.trim() }] : []).concat([{ role: "user", content: prompt.value }]);
    out.forEach((o) => { o.textContent = "..."; });
    await Promise.all([left, right].map(async (sel, i) => {
      try {
        const r = await api("/chat/completions", { method: "POST", json: { model: sel.value, messages, max_tokens: Number(maxTokens.value) || 64, temperature: 0 } });
        out[i].textContent = r.choices[0].message.content;
      } catch (e) { out[i].textContent = ""; showError(e); }
    }));
  };
  main.append(el("div", { class: "card" }, el("label", { for: "system" }, "System message"), system, el("label", { for: "prompt" }, "Prompt"), prompt,
    el("label", { for: "max_tokens" }, "Longest answer (tokens)"), maxTokens, el("p", {}, action("Send to both", ask))),
  el("div", { class: "row" }, el("div", {}, el("label", { for: "tuned-model" }, "Fine-tuned model"), left, out[0]),
    el("div", {}, el("label", { for: "base-model" }, "Base model"), right, out[1])));
}

// ------------------------------------------------------------------ models

const WEIGHTS = { adapter: "Adapter", merged: "Merged model", full: "Full weights", gguf: "GGUF", ollama: "Ollama", onnx: "ONNX" };

async function models(main) {
  main.append(el("h1", {}, "Models"));
  const [tuned, all] = await Promise.all([api("/tunesmith/models"), api("/models")]);
  // The first two measured metrics, base -> tuned (the report has all of them).
  const metrics = (m) => {
    if (!m.metrics) return el("span", { class: "muted" }, "not evaluated");
    return Object.keys(m.metrics.tuned).slice(0, 2).map((k) => el("div", {}, `${k.replace(/_/g, " ")}: ${fmt(m.metrics.base[k], 3)} → `,
      el("strong", {}, fmt(m.metrics.tuned[k], 3))));
  };
  // The zip is built on the server first (merging, or exporting and verifying, takes a while), then fetched by a signed link,
  // so the browser downloads it straight to disk rather than through memory.
  const download = (m, weights) => action(WEIGHTS[weights], async () => {
    const link = await api(`/tunesmith/models/download_link?model=${encodeURIComponent(m.id)}&weights=${weights}`, { method: "POST" });
    const a = el("a", { href: link.url, download: "" });
    document.body.append(a); a.click(); a.remove();
  }, "secondary");
  main.append(table(["model", "method", "before → after", "alarms", "download", ""], tuned.data.map((m) => el("tr", {},
    el("td", {}, el("code", {}, m.id), el("div", { class: "hint" }, `from ${m.base}, `, m.job ? el("a", { href: `#/job/${m.job}` }, m.job) : "", `, ${when(m.created)}`)),
    el("td", {}, `${m.method || "-"} (${m.adapter || "-"})`),
    el("td", {}, metrics(m), m.test_rows ? el("div", { class: "hint" }, `${m.test_rows} test rows`) : ""),
    el("td", {}, m.alarms.length ? el("ul", { class: "sev-warn" }, m.alarms.map((a) => el("li", {}, a))) : el("span", { class: "sev-ok" }, m.metrics ? "none" : "-")),
    el("td", { class: "downloads" }, m.weights.map((w) => download(m, w))),
    el("td", {}, ["classify", "reward"].includes(m.method) ? "" : el("a", { class: "button secondary", href: `#/playground/${encodeURIComponent(m.id)}` }, "Chat"), " ",
      action("Delete", async () => {
        if (!confirm(`Delete ${m.id}? Its weights are removed.`)) return;
        await api(`/models/${encodeURIComponent(m.id)}`, { method: "DELETE" });
        route();
      }, "danger"))))),
  el("p", { class: "hint" }, "Adapter: the small trained file to load on top of the base model (PEFT). Merged model: the adapter folded into the base, a plain model folder any tool loads. GGUF: one file for llama.cpp and LM Studio (8-bit); Ollama: the GGUF with a Modelfile (ollama create NAME -f Modelfile); ONNX: float32 and int8 graphs for onnxruntime. Each export is built on first request and checked against the tuned model; its zip holds the check's report.json and the model card as README.md."),
  el("h2", {}, "Base models"), table(["model"], all.data.filter((m) => m.owned_by === "tunesmith").map((m) => el("tr", {}, el("td", {}, m.id)))));
}

window.addEventListener("hashchange", route);
route();
