// Ingestion page: queue status with progress, failures with errors and re-queue, recent jobs.
import { $, api, badge, clear, el, fail, fmt, fmtInt, loadStats, poll, progressBar, toast } from "./common.js";

const STATES = ["queued", "running", "done", "failed", "skipped"];
const short = (path) => path.split("/").slice(-2).join("/");
const base = (path) => path.split("/").pop();

async function retry(job) {
  try {
    await api(`/jobs/${job}/retry`, { method: "POST" });
    toast(`job ${job} queued again`);
    refresh();
  } catch (err) { fail(err); }
}

async function refresh() {
  try {
    const [status, jobs] = await Promise.all([api("/status"), api("/jobs?limit=25")]);
    clear($("#queue-stats"), STATES.map((s) => el("div", { class: `stat ${s}` }, el("b", { text: fmtInt(status.queue[s]) }), el("span", { text: s }))));
    clear($("#running"), status.running.length ? status.running.map((job) => el("div", { class: "running-job" },
      el("p", {}, el("b", { text: short(job.file) }), el("span", { class: "muted small", text: `  patient ${job.patient ?? "–"} · attempt ${job.attempt}` })),
      progressBar(null),
      el("p", { class: "muted small", text: job.progress?.tiles !== undefined ? `${fmtInt(job.progress.tiles)} tiles embedded (${job.progress.stage || ""})` : (job.progress?.note || "starting") })))
      : el("p", { class: "muted", text: "Nothing running." }));
    clear($("#failure-rows"), status.failures.length ? status.failures.map((f) => el("tr", {},
      el("td", { class: "small", title: f.file, text: short(f.file) }), el("td", {}, el("div", { class: "error-text", text: f.error || "" })),
      el("td", { class: "num", text: f.attempts }),
      el("td", {}, el("button", { type: "button", class: "btn btn-small", "aria-label": `re-queue ${base(f.file)}`, onclick: () => retry(f.id) }, "Re-queue"))))
      : el("tr", {}, el("td", { colspan: "4", class: "muted", text: "No failures." })));
    const t = status.throughput;
    clear($("#index-facts"),
      status.index.flatMap((i) => [el("dt", { text: i.kind }), el("dd", { text: `${fmtInt(i.vectors)} vectors · ${i.dim}-d` })]),
      el("dt", { text: "patients" }), el("dd", { text: fmtInt(status.patients) }),
      el("dt", { text: "last hour" }), el("dd", { text: `${t.slides_last_hour} slides` }),
      el("dt", { text: "mean per slide" }), el("dd", { text: t.mean_seconds_per_slide ? `${fmt(t.mean_seconds_per_slide, 1)} s` : "–" }));
    clear($("#job-rows"), jobs.length ? jobs.map((j) => el("tr", {},
      el("td", { class: "num", text: j.id }), el("td", { class: "small", title: j.file, text: short(j.file) }), el("td", { text: j.patient ?? "–" }),
      el("td", {}, badge(j.state)), el("td", { class: "num", text: j.attempts }), el("td", { class: "small muted", text: (j.finished_at || "").replace("T", " ") })))
      : el("tr", {}, el("td", { colspan: "6", class: "muted", text: "No jobs yet." })));
    $("#refreshed").textContent = `updated ${new Date().toLocaleTimeString()}`;
    document.body.dataset.ready = "1";
  } catch (err) { fail(err); }
}

$("#enqueue-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const paths = $("#paths").value.split("\n").map((p) => p.trim()).filter(Boolean);
  const status = $("#enqueue-status");
  if (!paths.length) { $("#paths").focus(); return; }
  try {
    const result = await api("/jobs", { method: "POST", body: { paths, patient: $("#enqueue-patient").value.trim() || null } });
    status.textContent = `${result.jobs.length} file(s): ${result.jobs.map((j) => j.state).join(", ") || "none found"}`;
    refresh();
  } catch (err) { status.textContent = err.message; }
});

$("#labels-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const file = $("#labels-file").files[0];
  const status = $("#labels-status");
  if (!file) { $("#labels-file").focus(); return; }
  const form = new FormData();
  form.append("file", file);
  form.append("create_missing", String($("#labels-create").checked));
  try {
    const report = await api("/labels", { method: "POST", form });
    const skipped = (report.unknown_patients || []).length;
    status.textContent = report.already_imported ? "already imported, nothing changed"
      : `${report.labels} labels for ${report.patients} patients` + (skipped
        ? `; ${skipped} row(s) skipped, patients not in the catalog: ${report.unknown_patients.slice(0, 10).join(", ")}`
          + `${skipped > 10 ? ", …" : ""} (tick "add patients the archive does not know yet" to add them)` : "");
    loadStats();
  } catch (err) { status.textContent = err.message; }
});

// every 3 s while the page is visible, for as long as it is open
poll(async () => { if (!document.hidden) await refresh(); }, { interval: 3000, until: () => false });
