// Cohorts page: filter builder with a live member count, saved cohorts, exports, map, quality reports.
import { $, api, chips, clear, debounce, el, fail, fillSelect, fmt, patientUrl, toast } from "./common.js";
import { PALETTE, scatter } from "./plot.js";

let meta = { labels: [], cohorts: [], probes: [], kinds: ["eagle"], export_formats: [] };
let current = null;
let mapData = null;
const EXPORT_NAMES = { stamp: "STAMP slide table (.csv)", clinical: "Clinical table (.csv)", "eagle-h5": "EAGLE vectors (.h5)", parquet: "Parquet" };

function ruleRow() {
  const name = el("select", { "aria-label": "label" });
  fillSelect(name, meta.labels.map((l) => l.name));
  const values = el("div", { class: "value-checks", role: "group", "aria-label": "values" });
  const fillValues = () => {
    const label = meta.labels.find((l) => l.name === name.value);
    clear(values, Object.entries(label?.values || {}).map(([value, count]) =>
      el("label", { class: "check" }, el("input", { type: "checkbox", value, onchange: refreshCount }), `${value} `, el("span", { class: "muted small", text: `(${count})` }))));
  };
  name.addEventListener("change", () => { fillValues(); refreshCount(); });
  fillValues();
  const row = el("div", { class: "label-rule" }, name, values,
    el("button", { type: "button", class: "btn btn-small btn-quiet", "aria-label": "remove this rule", onclick: () => { row.remove(); refreshCount(); } }, "✕"));
  return row;
}

function definition() {
  const labels = {};
  for (const row of document.querySelectorAll(".label-rule")) {
    const name = row.querySelector("select").value;
    const values = [...row.querySelectorAll("input:checked")].map((i) => i.value);
    if (name && values.length) labels[name] = [...(labels[name] || []), ...values];
  }
  const out = { labels, kind: $("#cohort-kind").value || "eagle" };
  const member = $("#member-of").value;
  if (member) out.cohorts = [member];
  const seeds = $("#seeds").value.split(",").map((s) => s.trim()).filter(Boolean);
  if (seeds.length) out.seeds = seeds;
  if ($("#min-similarity").value !== "") out.min_similarity = Number($("#min-similarity").value);
  if ($("#probe").value) out.probe = $("#probe").value;
  if ($("#min-probability").value !== "") out.min_probability = Number($("#min-probability").value);
  return out;
}

const refreshCount = debounce(async () => {
  const error = $("#builder-error");
  try {
    const preview = await api("/cohorts/preview", { method: "POST", body: { definition: definition() } });
    $("#live-count b").textContent = preview.count;
    error.hidden = true;
  } catch (err) {
    $("#live-count b").textContent = "–";
    error.textContent = err.message;
    error.hidden = false;
  }
}, 250);

function describe(def) {
  const parts = Object.entries(def.labels || {}).map(([k, v]) => `${k} ∈ {${v.join(", ")}}`);
  if (def.cohorts?.length) parts.push(`in ${def.cohorts.join(" & ")}`);
  if (def.seeds?.length) parts.push(`cos ≥ ${def.min_similarity} to ${def.seeds.join(", ")}`);
  if (def.probe) parts.push(`${def.probe} ≥ ${def.min_probability}`);
  return parts.join("; ") || "all patients";
}

// Leakage compares two different cohorts: A and B never default to the same one (a cohort against
// itself "leaks" every member); the choices made are kept when the list is reloaded.
function fillLeakage() {
  const [a, b] = [$("#leak-a").value, $("#leak-b").value];
  const names = meta.cohorts;
  const first = names.includes(a) ? a : names[0];
  const second = names.includes(b) && b !== first ? b : names.find((n) => n !== first);
  fillSelect($("#leak-a"), names, { selected: first });
  fillSelect($("#leak-b"), names, { placeholder: names.length < 2 ? "(save a second cohort)" : "(choose)", selected: second });
  checkLeakagePair();
}

function checkLeakagePair() {
  const [a, b] = [$("#leak-a").value, $("#leak-b").value];
  const problem = !a || !b ? "Choose two cohorts: e.g. a training and a test set." : a === b ? "Cohort A and B are the same cohort: choose two different ones." : "";
  $("#leak-form button[type=submit]").disabled = Boolean(problem);
  const hint = $("#leak-hint");
  hint.textContent = problem;
  hint.hidden = !problem;
}

async function loadList(select) {
  const rows = await api("/cohorts");
  meta.cohorts = rows.map((r) => r.name);
  fillSelect($("#member-of"), meta.cohorts, { placeholder: "(any)" });
  fillSelect($("#dup-cohort"), meta.cohorts, { placeholder: "the whole archive" });
  fillLeakage();
  if (!rows.length) { clear($("#cohort-rows"), el("tr", {}, el("td", { colspan: "5", class: "muted", text: "No cohorts yet: build one on the left." }))); return; }
  clear($("#cohort-rows"), rows.map((row) => el("tr", { class: current === row.name ? "selected" : null, "data-cohort": row.name },
    el("td", {}, el("button", { type: "button", class: "btn btn-small btn-quiet", onclick: () => open(row.name), "aria-label": `open cohort ${row.name}` }, el("b", { text: row.name }))),
    el("td", { class: "num", text: row.member_count }),
    el("td", { class: "small", text: describe(row.definition) }),
    el("td", { class: "small muted", text: (row.materialized_at || "").replace("T", " ") }),
    el("td", {}, el("div", { class: "btn-row" },
      el("button", { type: "button", class: "btn btn-small", onclick: async () => { try { await api(`/cohorts/${encodeURIComponent(row.name)}/refresh`, { method: "POST" }); toast(`refreshed ${row.name}`); await loadList(); if (current === row.name) open(row.name); } catch (e) { fail(e); } } }, "Refresh"),
      el("button", { type: "button", class: "btn btn-small btn-danger", onclick: async () => {
        if (!window.confirm(`Delete cohort ${row.name}?`)) return;
        try { await api(`/cohorts/${encodeURIComponent(row.name)}`, { method: "DELETE" }); if (current === row.name) { current = null; $("#detail").hidden = true; } await loadList(); } catch (e) { fail(e); }
      } }, "Delete"))))));
  if (select) open(select);
}

function colorOptions() {
  fillSelect($("#color-by"), [...meta.labels.map((l) => [`label:${l.name}`, `label ${l.name}`]), ["cohort", "other cohorts"]]);
}

function drawMap() {
  if (!mapData) return;
  const by = $("#color-by").value || "cohort";
  const key = (p) => (by === "cohort" ? (p.cohorts.filter((c) => c !== current)[0] || "no other cohort") : (p.labels[by.slice(6)] ?? "unlabelled"));
  const values = [...new Set(mapData.points.map(key))].sort();
  const color = (v) => (v === "unlabelled" || v === "no other cohort" ? "#a3acb8" : PALETTE[values.filter((x) => x !== "unlabelled" && x !== "no other cohort").indexOf(v) % PALETTE.length]);
  scatter($("#map"), {
    height: Math.max(300, Math.round($("#map").clientWidth * 0.72)),
    title: `${mapData.method.toUpperCase()} map of ${current}`,
    points: mapData.points.map((p) => ({ x: p.x, y: p.y, patient: p.patient, color: color(key(p)),
      label: `${p.patient} · ${Object.entries(p.labels).map(([k, v]) => `${k}=${v}`).join(", ") || "no labels"}` })),
    onOpen: (p) => window.location.assign(patientUrl(p.patient)),
  }).catch((err) => fail(err, $("#map")));
  clear($("#map-legend"), values.map((v) => { const dot = el("i"); dot.style.background = color(v); return el("span", {}, dot, v); }));
}

async function open(name) {
  current = name;
  document.querySelectorAll("#cohort-rows tr").forEach((tr) => tr.classList.toggle("selected", tr.dataset.cohort === name));
  const panel = $("#detail");
  panel.hidden = false;
  $("#detail-title").textContent = `Cohort ${name}`;
  const base = `/api/v1/cohorts/${encodeURIComponent(name)}/export`;
  clear($("#export-buttons"), el("span", { class: "muted small", text: "Export:" }),
    meta.export_formats.map((fmtName) => el("a", { class: "btn btn-small", href: `${base}/${fmtName}`, download: "", "data-format": fmtName }, EXPORT_NAMES[fmtName] || fmtName)));
  try {
    const members = await api(`/cohorts/${encodeURIComponent(name)}/members?limit=100`);
    clear($("#member-rows"), members.members.map((m) => el("tr", {},
      el("td", {}, el("a", { href: patientUrl(m.patient), text: m.patient })), el("td", { class: "num", text: m.score === null ? "–" : fmt(m.score, 3) }),
      el("td", {}, chips(m.labels)))));
    $("#member-note").textContent = members.total > members.members.length ? `first ${members.members.length} of ${members.total}` : `${members.total} members`;
  } catch (err) { fail(err, $("#member-rows")); }
  clear($("#map"), el("div", { class: "empty", text: "computing the map…" }));
  try {
    mapData = await api(`/cohorts/${encodeURIComponent(name)}/map`);
    const spread = (label) => new Set(mapData.points.map((p) => p.labels[label]).filter((v) => v !== undefined)).size;
    const best = meta.labels.map((l) => l.name).sort((a, b) => spread(b) - spread(a))[0];
    if (best && spread(best) > 1) $("#color-by").value = `label:${best}`;
    $("#map-note").textContent = mapData.note || `${mapData.method.toUpperCase()} (cosine, ${mapData.params.n_neighbors} neighbours) of ${mapData.points.length} members. Hover a point for the patient; select it to open.`;
    drawMap();
  } catch (err) {
    mapData = null;
    clear($("#map"), el("div", { class: "empty", text: err.message }));
    clear($("#map-legend"));
  }
  panel.scrollIntoView({ behavior: "smooth", block: "start" });
}

async function init() {
  $("#add-rule").addEventListener("click", () => { $("#label-rules").append(ruleRow()); refreshCount(); });
  $("#builder").addEventListener("input", refreshCount);
  $("#builder").addEventListener("change", refreshCount);
  $("#color-by").addEventListener("change", drawMap);
  $("#builder").addEventListener("submit", async (event) => {
    event.preventDefault();
    const name = $("#cohort-name").value.trim();
    const error = $("#builder-error");
    if (!name) { error.textContent = "Give the cohort a name."; error.hidden = false; $("#cohort-name").focus(); return; }
    try {
      const saved = await api("/cohorts", { method: "POST", body: { name, definition: definition() } });
      toast(`saved ${saved.name}: ${saved.member_count} patients`);
      error.hidden = true;
      await loadList(saved.name);
    } catch (err) { error.textContent = err.message; error.hidden = false; }
  });
  $("#dup-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    const out = $("#dup-result");
    const cohort = $("#dup-cohort").value;
    try {
      const report = await api(`/quality/duplicates?threshold=${encodeURIComponent($("#dup-threshold").value)}${cohort ? `&cohort=${encodeURIComponent(cohort)}` : ""}`);
      clear(out, el("p", { class: "small", text: `${report.pairs.length} pair(s) among ${report.patients} patients, ${report.groups.length} group(s).` }),
        report.pairs.length ? el("div", { class: "table-wrap" }, el("table", {}, el("thead", {}, el("tr", {}, ["A", "B", "cosine", "label conflicts"].map((h) => el("th", { scope: "col", text: h })))),
          el("tbody", {}, report.pairs.slice(0, 50).map((p) => el("tr", {}, el("td", {}, el("a", { href: patientUrl(p.a), text: p.a })), el("td", {}, el("a", { href: patientUrl(p.b), text: p.b })),
            el("td", { class: "num", text: fmt(p.score, 4) }), el("td", { class: "small", text: Object.entries(p.label_conflicts).map(([k, v]) => `${k}: ${v.join(" ≠ ")}`).join("; ") || "none" }))))))
          : null);
    } catch (err) { fail(err, out); }
  });
  $("#leak-a").addEventListener("change", checkLeakagePair);
  $("#leak-b").addEventListener("change", checkLeakagePair);
  $("#leak-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    const out = $("#leak-result");
    try {
      const r = await api(`/quality/leakage?a=${encodeURIComponent($("#leak-a").value)}&b=${encodeURIComponent($("#leak-b").value)}&threshold=${encodeURIComponent($("#leak-threshold").value)}`);
      clear(out, el("p", { class: r.leak ? "alert" : "note", text: r.leak ? `Leakage: ${r.shared_patients.length} shared patient(s), ${r.near_duplicates.length} near-duplicate pair(s).` : "No leakage found." }),
        r.shared_patients.length ? el("p", { class: "small", text: `shared: ${r.shared_patients.slice(0, 20).join(", ")}` }) : null,
        r.near_duplicates.length ? el("p", { class: "small", text: `near-duplicates: ${r.near_duplicates.slice(0, 10).map((p) => `${p.a}~${p.b} (${fmt(p.score, 3)})`).join(", ")}` }) : null);
    } catch (err) { fail(err, out); }
  });
  try {
    meta = await api("/meta");
    fillSelect($("#probe"), meta.probes, { placeholder: "(none)" });
    fillSelect($("#cohort-kind"), meta.kinds.length ? meta.kinds : ["eagle"], { selected: "eagle" });
    colorOptions();
    await loadList();
  } catch (err) { fail(err); }
  refreshCount();
  document.body.dataset.ready = "1";
}

init();
