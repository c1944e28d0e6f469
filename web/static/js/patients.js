// Patients page: the archive's patients, paged, filtered by id and by a label, each linked to its page.
import { $, api, chips, clear, el, fail, fillSelect, fmtInt, patientUrl } from "./common.js";

const PAGE = 50;
let meta = { labels: [] };
let offset = 0;

function query() {
  const params = new URLSearchParams({ limit: String(PAGE), offset: String(offset) });
  const q = $("#filter-q").value.trim();
  if (q) params.set("q", q);
  const label = $("#filter-label").value;
  if (label) params.append("label", `${label}=${$("#filter-value").value.trim() || "*"}`);
  return params;
}

async function load() {
  try {
    const page = await api(`/patients?${query()}`);
    clear($("#patient-rows"), page.items.length ? page.items.map((p) => el("tr", { "data-patient": p.patient },
      el("th", { scope: "row" }, el("a", { href: patientUrl(p.patient), text: p.patient })),
      el("td", { class: "num", text: fmtInt(p.slides) }),
      el("td", { class: "small", text: p.vectors.join(", ") || "none" }),
      el("td", {}, chips(p.labels || {}))))
      : el("tr", {}, el("td", { colspan: "4", class: "muted", text: "No patient matches." })));
    const last = Math.min(page.total, offset + page.items.length);
    $("#patient-count").textContent = `${fmtInt(page.total)} patient${page.total === 1 ? "" : "s"}`;
    $("#page-info").textContent = page.total ? `${fmtInt(offset + 1)}–${fmtInt(last)} of ${fmtInt(page.total)}` : "";
    $("#page-prev").disabled = offset === 0;
    $("#page-next").disabled = last >= page.total;
  } catch (err) { fail(err, $("#patient-rows")); }
  document.body.dataset.ready = "1";
}

function fillValues() {
  const label = meta.labels.find((l) => l.name === $("#filter-label").value);
  clear($("#filter-values"), Object.keys(label?.values || {}).map((v) => el("option", { value: v })));
  $("#filter-value").disabled = !label;
}

async function init() {
  try {
    meta = await api("/meta");
  } catch (err) { fail(err); }
  fillSelect($("#filter-label"), meta.labels.map((l) => l.name), { placeholder: "(any)" });
  fillValues();
  $("#filter-label").addEventListener("change", fillValues);
  $("#patient-filter").addEventListener("submit", (event) => { event.preventDefault(); offset = 0; load(); });
  $("#page-prev").addEventListener("click", () => { offset = Math.max(0, offset - PAGE); load(); });
  $("#page-next").addEventListener("click", () => { offset += PAGE; load(); });
  await load();
}

init();
