// Probe workbench: train with progress, metrics (mean ± sd), ROC and few-shot plots, apply and rank.
import { $, api, badge, clear, el, fail, fillSelect, fmt, image, patientUrl, poll, pollTask, progressBar, toast } from "./common.js";
import { linePlot } from "./plot.js";

let meta = { labels: [], kinds: [], probe_models: [], cohorts: [] };
let current = null;
const METRICS = [["auroc", "AUROC"], ["auprc", "AUPRC"], ["balanced_accuracy", "Balanced accuracy"], ["f1", "F1"]];

function fillPositive() {
  const label = meta.labels.find((l) => l.name === $("#probe-label").value);
  fillSelect($("#probe-positive"), Object.keys(label?.values || {}), { placeholder: "(automatic)" });
}

async function loadList() {
  const probes = await api("/probes");
  if (!probes.length) { clear($("#probe-rows"), el("tr", {}, el("td", { colspan: "7", class: "muted", text: "No probes yet: train one on the left." }))); return probes; }
  clear($("#probe-rows"), probes.map((p) => el("tr", { class: p.name === current ? "selected" : null, "data-probe": p.name },
    el("td", {}, el("button", { type: "button", class: "btn btn-small btn-quiet", onclick: () => select(p.name) }, el("b", { text: p.name }))),
    el("td", { text: p.label }), el("td", { text: p.kind }), el("td", { text: p.model }), el("td", {}, badge(p.status)),
    el("td", { class: "num", text: p.auroc ? `${fmt(p.auroc.mean)} ± ${fmt(p.auroc.sd)}` : "–" }), el("td", { class: "num", text: p.n ?? "–" }))));
  return probes;
}

function metricsView(probe) {
  return el("div", { class: "metric-grid" }, METRICS.map(([key, name]) => el("div", { class: "metric" },
    el("span", { text: name }), el("b", { text: probe[key] ? fmt(probe[key].mean) : "–" }),
    el("small", { text: probe[key] ? ` ± ${fmt(probe[key].sd)} sd` : "" }))));
}

async function showRoc(name) {
  try {
    const roc = await api(`/probes/${encodeURIComponent(name)}/roc`);
    await linePlot($("#roc-plot"), { id: "roc-chart", height: 320, title: `ROC curve of ${name}`, xLabel: "false positive rate", yLabel: "true positive rate", diagonal: true,
      series: [...roc.folds.map((f) => ({ points: f.points, fold: true, label: `fold ${f.fold + 1}: AUROC ${fmt(f.auroc)}` })),
        { points: roc.points, label: `pooled: AUROC ${fmt(roc.auroc)}` }] });
    $("#roc-note").textContent = `Pooled out-of-fold AUROC ${fmt(roc.auroc)} (${roc.n} patients, ${roc.n_positive} “${roc.positive}”); thin lines: each fold.`;
  } catch (err) { fail(err, $("#roc-plot")); }
}

async function fewshot() {
  const probe = await api(`/probes/${encodeURIComponent(current)}`);
  const box = $("#fewshot-plot");
  const progress = el("div", {}, el("p", { class: "muted", text: "training few-shot probes…" }), progressBar(null));
  clear(box, progress);
  try {
    const body = { label: probe.label, kind: probe.kind, positive: probe.params.vs_rest ? probe.positive : null,
      vs_rest: !!probe.params.vs_rest, cohort: probe.params.cohort || null, draws: 5 };
    const started = await api("/fewshot", { method: "POST", body });
    const result = await pollTask(started.task, (t) => clear(progress, el("p", { class: "muted", text: t.progress.message || t.state }), progressBar(t.progress.fraction)));
    const done = result.curve.filter((p) => !p.skipped);
    if (!done.length) { clear(box, el("div", { class: "empty", text: result.curve[0]?.skipped || "not enough patients for a few-shot curve" })); return; }
    const ks = done.map((p) => p.k);
    await linePlot(box, { id: "fewshot-chart", height: 320, title: "few-shot AUROC", xLabel: "labelled patients per class (k)", yLabel: "AUROC", logX: true,
      xDomain: [Math.min(...ks), Math.max(...ks, Math.min(...ks) * 2)], yDomain: [0, 1], xTickValues: ks,
      band: { points: done.map((p) => [p.k, p.auroc.mean - p.auroc.sd, p.auroc.mean + p.auroc.sd]), label: "± sd" },
      series: [{ points: done.map((p) => [p.k, p.auroc.mean]), markers: true, label: "mean AUROC" }] });
    const skipped = result.curve.filter((p) => p.skipped).map((p) => p.k);
    $("#fewshot-note").textContent = `Mean ± sd over ${result.draws} draws, tested on the remaining patients.${skipped.length ? ` Skipped k = ${skipped.join(", ")} (too few patients).` : ""}`;
  } catch (err) { fail(err, box); }
}

function candidateRows(rows) {
  if (!rows.length) return el("tr", {}, el("td", { colspan: "6", class: "muted", text: "no candidates" }));
  return rows.map((c) => el("tr", { "data-patient": c.patient },
    el("td", { class: "num", text: c.rank }),
    el("td", {}, c.thumbnail_url ? image(c.thumbnail_url, `thumbnail of ${c.patient}`, { cls: "thumb-sm", size: 160 }) : el("span", { class: "muted small", text: "no slide" })),
    el("td", {}, el("a", { href: patientUrl(c.patient), text: c.patient }), c.in_training ? el("span", { class: "badge", text: "training" }) : null),
    el("td", { class: "num", text: fmt(c.probability, 3) }), el("td", { text: c.predicted ?? "–" }), el("td", { text: c.label_value ?? "unknown" })));
}

async function select(name) {
  current = name;
  document.querySelectorAll("#probe-rows tr").forEach((tr) => tr.classList.toggle("selected", tr.dataset.probe === name));
  const probe = await api(`/probes/${encodeURIComponent(name)}`);
  $("#probe-detail").hidden = false;
  $("#probe-title").textContent = probe.name;
  $("#probe-sub").textContent = `${probe.label} (positive: ${probe.positive ?? "–"}) · ${probe.kind} vectors · ${probe.model} · ${probe.folds}-fold CV · seed ${probe.seed}`;
  clear($("#fewshot-plot"), el("div", { class: "empty" }, "How good is a probe trained on only k patients per class? ", el("br"),
    el("button", { type: "button", class: "btn btn-small", id: "fewshot-run", onclick: fewshot }, "Compute")));
  $("#fewshot-note").textContent = "";
  if (probe.status !== "done") {
    clear($("#metrics"), el("p", { class: probe.status === "failed" ? "alert" : "note", text: probe.status === "failed" ? probe.error : "training…" }));
    clear($("#roc-plot")); clear($("#fold-rows"));
    $("#apply-panel").hidden = true;
    return;
  }
  clear($("#metrics"), metricsView(probe), el("p", { class: "muted small", text: `${probe.n} patients (${Object.entries(probe.counts?.per_class || {}).map(([k, v]) => `${k}: ${v}`).join(", ")}); trained in ${fmt(probe.seconds, 1)} s` }));
  clear($("#fold-rows"), (probe.per_fold || []).map((f) => el("tr", {}, el("td", { text: f.fold + 1 }), el("td", { class: "num", text: f.n_train }), el("td", { class: "num", text: f.n_test }),
    METRICS.map(([key]) => el("td", { class: "num", text: fmt(f[key]) })))));
  showRoc(name);
  $("#apply-panel").hidden = false;
  await showStored(name);
}

// The table, its note and the CSV link all read the stored scores with the same choice of
// "hide training patients" (ranks are archive-wide either way), so what is shown and what is
// exported agree; the CSV holds every listed patient, the table the top N of them.
async function showStored(name, applied = null) {
  const hide = $("#apply-exclude").checked;
  const query = hide ? "exclude_training=1" : "";
  const base = `/probes/${encodeURIComponent(name)}/candidates`;
  const link = $("#export-candidates");
  link.href = `/api/v1${base}.csv${query ? `?${query}` : ""}`;
  const stored = await api(`${base}?limit=${Number($("#apply-top").value)}${query ? `&${query}` : ""}`);
  const scored = applied ? applied.scored : null;
  link.hidden = !(stored.total || applied);
  link.textContent = `Export all ${stored.total} as CSV`;
  link.title = `${stored.total} patients by rank${hide ? ", training patients hidden" : ""}: the list below continued`;
  $("#apply-note").textContent = stored.total || applied
    ? `${scored !== null ? `${scored} patients scored${applied.positive ? ` by P(${applied.positive})` : ""}; ` : ""}${stored.total} listed${hide ? " (training patients hidden)" : ""}; showing the top ${stored.candidates.length}. The CSV holds all ${stored.total}, in the same order.`
    : "Not applied yet.";
  clear($("#candidate-rows"), stored.total ? candidateRows(stored.candidates) : (applied ? candidateRows([]) : []));
}

async function train(event) {
  event.preventDefault();
  const error = $("#train-error");
  error.hidden = true;
  const body = { label: $("#probe-label").value, kind: $("#probe-kind").value, model: $("#probe-model").value,
    folds: Number($("#probe-folds").value), positive: $("#probe-positive").value || null, vs_rest: $("#probe-vs-rest").checked,
    cohort: $("#probe-cohort").value || null, name: $("#probe-name").value.trim() || null };
  const button = $("#train-button");
  button.disabled = true;
  const progress = $("#train-progress");
  try {
    const started = await api("/probes", { method: "POST", body });
    current = started.probe;
    await loadList();
    await poll(async () => {
      const probe = await api(`/probes/${encodeURIComponent(started.probe)}`);
      const task = probe.task;
      clear(progress, el("p", { class: "muted small", text: `${started.probe}: ${task?.progress?.message || probe.status}` }), progressBar(task?.progress?.fraction ?? null));
      return probe;
    }, { interval: 400, until: (probe) => probe.status !== "training" || probe.task?.state === "failed" });
    clear(progress);
    await loadList();
    await select(started.probe);
    toast(`trained ${started.probe}`);
  } catch (err) {
    clear(progress);
    error.textContent = err.message;
    error.hidden = false;
  } finally { button.disabled = false; }
}

async function init() {
  $("#probe-label").addEventListener("change", fillPositive);
  $("#train-form").addEventListener("submit", train);
  $("#delete-probe").addEventListener("click", async () => {
    if (!current || !window.confirm(`Delete probe ${current} and its scores?`)) return;
    try { await api(`/probes/${encodeURIComponent(current)}`, { method: "DELETE" }); current = null; $("#probe-detail").hidden = true; $("#apply-panel").hidden = true; await loadList(); } catch (err) { fail(err); }
  });
  $("#apply-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    const button = $("#apply-button");
    button.disabled = true;
    try {
      const result = await api(`/probes/${encodeURIComponent(current)}/apply`, { method: "POST",
        body: { top: Number($("#apply-top").value), exclude_training: $("#apply-exclude").checked } });
      await showStored(current, result);
    } catch (err) { fail(err); } finally { button.disabled = false; }
  });
  for (const id of ["#apply-exclude", "#apply-top"]) {
    $(id).addEventListener("change", () => { if (current) showStored(current).catch(fail); });
  }
  try {
    meta = await api("/meta");
    fillSelect($("#probe-label"), meta.labels.map((l) => l.name));
    fillPositive();
    fillSelect($("#probe-kind"), meta.kinds, { selected: meta.kinds.includes("eagle") ? "eagle" : meta.kinds[0] });
    fillSelect($("#probe-model"), meta.probe_models, { selected: "logreg" });
    fillSelect($("#probe-cohort"), meta.cohorts, { placeholder: "(all)" });
    const probes = await loadList();
    const done = probes.filter((p) => p.status === "done");
    if (done.length) select(done[done.length - 1].name);
  } catch (err) { fail(err); }
  document.body.dataset.ready = "1";
}

init();
