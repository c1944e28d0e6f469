// Search page: query by patient (type-ahead) or uploaded slide; hits as evidence cards.
import { $, api, chips, clear, el, fail, fillSelect, fmt, image, patientUrl, pollTask, progressBar, regionLink, showTile, typeahead } from "./common.js";
import { renderRegions } from "./regions.js";

let meta = { labels: [], kinds: ["eagle"] };
let mode = "patient";
const MODES = ["patient", "upload", "region"];
let storedRegion = null; // {slide_id, x_um, y_um} from a "Find similar regions" link

function options() {
  const filters = {};
  const labelName = $("#opt-label-name").value;
  if (labelName) filters.labels = { [labelName]: [$("#opt-label-value").value || "*"] };
  const same = $("#opt-exclude-same").value;
  if (same) filters.exclude_same = [same];
  if ($("#opt-exclude-site").checked) filters.exclude_same_site = true;
  const minScore = $("#opt-min-score").value;
  if (minScore !== "") filters.min_score = Number(minScore);
  return { k: Number($("#opt-k").value), kind: $("#opt-kind").value, vote: $("#opt-vote").value || null, filters };
}

function setMode(next) {
  mode = next;
  for (const name of MODES) {
    const on = name === next;
    $(`#tab-${name}`).setAttribute("aria-selected", String(on));
    $(`#tab-${name}`).tabIndex = on ? 0 : -1;
    $(`#${name}-form`).hidden = !on;
  }
  $("#run-search").textContent = { patient: "Search", upload: "Embed and search", region: "Find similar regions" }[next];
  // Region search ranks tiles, not patient vectors: the result count, vector kind and label vote do not apply.
  for (const id of ["#opt-k", "#opt-kind", "#opt-vote"]) $(id).closest(".field").hidden = next === "region";
}

let queryPreview = null;  // an object URL of the chosen region image, shown as the query
function previewOf(file) {
  if (queryPreview) URL.revokeObjectURL(queryPreview);
  queryPreview = file ? URL.createObjectURL(file) : null;
  return queryPreview;
}

function voteView(vote, k) {
  if (!vote) return null;
  const total = Math.max(1, vote.neighbours);
  const rows = Object.entries(vote.counts).flatMap(([value, count]) => {
    const bar = el("div", { class: "bar" }, el("span"));
    bar.firstChild.style.width = `${(100 * count) / total}%`;
    return [el("span", { text: value }), bar, el("span", { class: "num", text: `${count} · Σ ${fmt(vote.weights[value], 2)}` })];
  });
  return el("div", { class: "vote" },
    el("h3", { text: `kNN vote on ${vote.label}` }),
    vote.majority === null
      ? el("p", { class: "muted", text: `none of the ${k} neighbours has this label` })
      : el("p", {}, el("span", { class: "vote-pred", text: vote.majority }),
        el("span", { class: "muted", text: vote.weighted !== vote.majority ? `  (score-weighted: ${vote.weighted})` : "  (majority and score-weighted agree)" })),
    el("div", { class: "bars" }, rows),
    el("p", { class: "muted small", text: `${vote.neighbours} labelled neighbours, ${vote.unlabelled} without the label` }));
}

function pairsView(pairs) {
  if (!pairs?.length) return el("p", { class: "muted small", text: "No tile pairs: one side has no slide artifacts (imported vectors)." });
  return pairs.map((pair, i) => {
    // the answer names each tile's slide id (null: a slide embedded on the fly, e.g. an upload): no URL parsing
    const tile = (url, slideId, slide, x, y, who, rank, of) => {
      const img = url ? image(url, `${who} tile, ${slide} at (${Math.round(x)}, ${Math.round(y)}) µm`, { lazy: false }) : el("div", { class: "tile-missing" });
      const region = url && slideId !== null && slideId !== undefined ? { slide_id: slideId, x_um: x, y_um: y } : null;
      const button = el("button", { type: "button", title: "show larger", onclick: () => url && showTile({
        url, title: `${who} tile`, facts: { slide, "x (µm)": fmt(x, 0), "y (µm)": fmt(y, 0), ...(rank ? { "attention rank": `${rank} of ${of}` } : {}), "pair similarity": fmt(pair.similarity, 3) }, region }) }, img);
      // each tile says where it lies (slide, position) and how much it weighs (its attention rank among the patient's selected tiles)
      const caption = el("figcaption", { class: "tile-where" },
        el("b", { text: `${who}: ${slide}` }), el("br"),
        el("span", { text: `x ${fmt(x, 0)} µm, y ${fmt(y, 0)} µm` }),
        rank ? el("span", { class: "tile-rank", title: "attention rank among the patient's selected tiles (1 = weighs most)", text: ` · tile #${rank} of ${of}` }) : null);
      return el("figure", {}, button, caption, region ? regionLink(slideId, x, y) : null);
    };
    return el("div", { class: "pair", "aria-label": `tile pair ${i + 1}` },
      tile(pair.query_tile_url, pair.query_slide_id, pair.query_slide, pair.query_x_um, pair.query_y_um, "query", pair.query_tile_rank, pair.query_tiles),
      el("div", { class: "pair-sim", title: "cosine similarity of the two tiles' Virchow2 class tokens" },
        el("span", { class: "pair-no", text: `pair ${i + 1}` }), el("span", { "aria-hidden": "true", text: "⟷" }), fmt(pair.similarity, 3)),
      tile(pair.hit_tile_url, pair.hit_slide_id, pair.hit_slide, pair.hit_x_um, pair.hit_y_um, "match", pair.hit_tile_rank, pair.hit_tiles));
  });
}

const compareUrl = (query, hit) => `/compare?query=${encodeURIComponent(query)}&hit=${encodeURIComponent(hit)}`;

function hitCard(hit, query) {
  const media = hit.thumbnail_url
    ? el("div", { class: "card-media" }, image(hit.thumbnail_url, `slide thumbnail of ${hit.patient} with its selected tiles outlined`, { size: 320 }),
      el("span", { class: "rank", text: `#${hit.rank}` }))
    : el("div", { class: "card-media no-image" }, el("span", { class: "rank", text: `#${hit.rank}` }),
      el("span", { class: "muted small", text: "no slide image (imported vector)" }));
  const bar = el("div", { class: "score-bar", title: "cosine similarity" }, el("span"));
  bar.firstChild.style.width = `${Math.max(0, Math.min(1, hit.score)) * 100}%`;
  const pairsBox = el("div", { class: "pairs", id: `pairs-${hit.rank}`, hidden: true });
  const toggle = el("button", { type: "button", class: "btn btn-small", "aria-expanded": "false", "aria-controls": pairsBox.id }, "Matching tiles");
  toggle.addEventListener("click", async () => {
    const open = toggle.getAttribute("aria-expanded") === "true";
    toggle.setAttribute("aria-expanded", String(!open));
    pairsBox.hidden = open;
    if (open || pairsBox.dataset.loaded) return;
    pairsBox.dataset.loaded = "1";
    if (hit.explanation || !query.patient || query.upload) {
      clear(pairsBox, pairsView(hit.explanation));
      return;
    }
    clear(pairsBox, el("p", { class: "muted small", text: "loading tile pairs…" }));
    try {
      const data = await api(`/patients/${encodeURIComponent(query.patient)}/matches/${encodeURIComponent(hit.patient)}?pairs=4`);
      clear(pairsBox, pairsView(data.pairs));
    } catch (error) { fail(error, pairsBox); }
  });
  return el("article", { class: "card", "data-patient": hit.patient },
    media,
    el("div", { class: "card-body" },
      el("div", { class: "card-title" }, el("a", { href: patientUrl(hit.patient), text: hit.patient }),
        el("span", { class: "score", title: "cosine similarity", text: fmt(hit.score, 4) })),
      bar,
      hit.percentile === null || hit.percentile === undefined ? null
        : el("p", { class: "muted small score-context", title: "share of all pairs of patients in this archive (same vector set) that score lower: what close means here",
          text: `closer than ${fmt(hit.percentile, 1)}% of patient pairs here` }),
      chips(hit.labels, query.labels || {}),
      el("div", { class: "card-foot" }, el("span", { class: "muted small", text: hit.slides.length ? `${hit.slides.length} slide${hit.slides.length === 1 ? "" : "s"}` : "imported vector" }),
        hit.thumbnail_url || hit.explanation ? toggle : null,
        query.patient && !query.upload ? el("a", { class: "btn btn-small", href: compareUrl(query.patient, hit.patient),
          title: "both patients side by side, with zoomable slides and the matching tile pairs" }, "Compare") : null)),
    pairsBox);
}

function csvCell(value) {
  let text = value === null || value === undefined ? "" : String(value);
  if (typeof value === "string" && /^[=+\-@\t\r]/.test(text)) text = `'${text}`;  // never a spreadsheet formula
  return /[",\n\r]/.test(text) ? `"${text.replaceAll('"', '""')}"` : text;
}

function resultsCsv(result) {
  const names = [...new Set(result.hits.flatMap((hit) => Object.keys(hit.labels || {})))].sort();
  const rows = [["rank", "patient", "score", "percentile", ...names]];
  for (const hit of result.hits) rows.push([hit.rank, hit.patient, hit.score, hit.percentile, ...names.map((n) => (hit.labels || {})[n])]);
  return rows.map((row) => row.map(csvCell).join(",")).join("\n") + "\n";
}

// Download links for the shown results (made in the page: the results are already here).
let downloadUrls = [];
function downloads(result, query) {
  downloadUrls.forEach((url) => URL.revokeObjectURL(url));
  const base = `lookalikes-${(query.patient || query.upload?.name || "query").replace(/[^A-Za-z0-9._-]+/g, "_")}`;
  const json = JSON.stringify({ query: result.query || query, hits: result.hits, vote: result.vote || null, notes: result.notes || [] }, null, 1);
  const files = [["csv", "CSV", resultsCsv(result), "text/csv"], ["json", "JSON", json, "application/json"]];
  downloadUrls = files.map(([, , body, type]) => URL.createObjectURL(new Blob([body], { type })));
  return el("div", { class: "btn-row", id: "results-download" }, el("span", { class: "muted small", text: "Download results:" }),
    files.map(([fmtName, label], i) => el("a", { class: "btn btn-small", href: downloadUrls[i], download: `${base}.${fmtName}`, "data-format": fmtName }, label)));
}

function render(result, query) {
  const head = query.upload
    ? el("div", {}, el("h2", { text: `Look-alikes of the uploaded slide` }), el("p", { class: "muted", text: query.upload.name }))
    : el("div", {}, el("h2", {}, "Look-alikes of ", el("a", { href: patientUrl(query.patient), text: query.patient })),
      chips(query.labels || {}));
  const picture = image(query.upload ? query.upload.thumbnail_url : query.thumbnail_url, "query slide thumbnail", { size: 320 });
  const summary = el("section", { class: "panel query-card", "aria-label": "query" }, picture, head,
    voteView(result.vote, result.hits.length) || el("div", { class: "muted small", text: "Choose a label under “Predict this label” for a kNN vote." }));
  const notes = (result.notes || []).map((n) => el("p", { class: "note", text: n }));
  const cards = result.hits.length
    ? el("div", { class: "results", id: "hits" }, result.hits.map((hit) => hitCard(hit, query)))
    : el("div", { class: "empty", text: "No patient matches these filters." });
  clear($("#results"), summary, result.hits.length ? downloads(result, query) : null, notes, cards);
}

async function searchPatient() {
  const patient = $("#patient").value.trim();
  const error = $("#patient-error");
  error.hidden = true;
  if (!patient) { error.textContent = "Type a patient id."; error.hidden = false; $("#patient").focus(); return; }
  const opts = options();
  $("#search-status").textContent = "searching…";
  try {
    const [result, detail] = await Promise.all([
      api("/search", { method: "POST", body: { patient, k: opts.k, kind: opts.kind, vote: opts.vote, filters: opts.filters } }),
      api(`/patients/${encodeURIComponent(patient)}`)]);
    history.replaceState(null, "", `/search?patient=${encodeURIComponent(patient)}`);
    render(result, { patient, labels: detail.labels, thumbnail_url: detail.thumbnail_url });
    $("#search-status").textContent = `${result.hits.length} hits`;
  } catch (err) {
    $("#search-status").textContent = "";
    fail(err, $("#results"));  // the previous query's look-alikes never stay under a failed query
    if (err.status === 404 || err.field === "patient") { error.textContent = err.message; error.hidden = false; }
  }
}

async function searchUpload() {
  const file = $("#slide-file").files[0];
  if (!file) { $("#slide-file").focus(); $("#search-status").textContent = "choose a slide file first"; return; }
  const opts = options();
  const form = new FormData();
  form.append("file", file);
  form.append("k", String(opts.k));
  form.append("kind", opts.kind);
  if (opts.vote) form.append("vote", opts.vote);
  const patient = $("#upload-patient").value.trim();
  if (patient) form.append("patient", patient);
  form.append("filters", JSON.stringify(opts.filters));
  const status = $("#search-status");
  const button = $("#run-search");
  button.disabled = true;
  const progress = el("div", {}, el("p", { class: "muted", text: `uploading ${file.name}…` }), progressBar(null));
  clear($("#results"), el("section", { class: "panel" }, progress));
  try {
    const started = await api("/search/upload", { method: "POST", form });
    const result = await pollTask(started.task, (task) => {
      clear(progress, el("p", { class: "muted", text: task.progress.message || task.state }), progressBar(task.progress.fraction));
    });
    render(result, { upload: result.upload, patient: null });
    status.textContent = `${result.hits.length} hits`;
  } catch (err) {
    status.textContent = "";
    fail(err, $("#results"));
  } finally { button.disabled = false; }
}

// -- region search: tiles like a stored tile or an uploaded image, grouped by patient -------------
async function searchRegion() {
  const opts = options();
  const k = Number($("#region-k").value) || 20;
  const perPatient = Number($("#region-per-patient").value) || 3;
  const file = $("#region-file").files[0];
  const status = $("#search-status");
  const filters = { ...opts.filters };
  status.textContent = file ? "encoding the image…" : "searching…";
  try {
    let result;
    if (file) {
      const form = new FormData();
      form.append("file", file);
      if ($("#region-mpp").value) form.append("mpp", $("#region-mpp").value);
      form.append("k", String(k));
      form.append("per_patient", String(perPatient));
      form.append("filters", JSON.stringify(filters));
      result = await api("/search/tiles", { method: "POST", form });
    } else if (storedRegion) {
      result = await api("/search/tiles", { method: "POST", body: { ...storedRegion, k, per_patient: perPatient, filters } });
    } else {
      status.textContent = "choose an image, or use “Find similar regions” on a tile";
      $("#region-file").focus();
      return;
    }
    renderRegions(result, $("#results"), { queryImage: file ? previewOf(file) : null });
    const q = result.query;
    if (!file && q.slide) {  // the link named only the slide's id: now say which slide and patient it is
      $("#region-stored").textContent = `Query: the stored tile at (${Math.round(q.x_um)}, ${Math.round(q.y_um)}) µm of slide ${q.slide}${q.patient ? ` (patient ${q.patient})` : ""}; choose an image instead to search with it.`;
    }
    status.textContent = `${result.patients.length} patients`;
  } catch (err) {
    status.textContent = "";
    fail(err, $("#results"));
  }
}

async function init() {
  typeahead($("#patient"), () => searchPatient());
  for (const name of MODES) {
    $(`#tab-${name}`).addEventListener("click", () => setMode(name));
    $(`#tab-${name}`).addEventListener("keydown", (event) => {
      if (event.key === "ArrowRight" || event.key === "ArrowLeft") {
        const step = event.key === "ArrowRight" ? 1 : MODES.length - 1;
        const next = MODES[(MODES.indexOf(mode) + step) % MODES.length];
        setMode(next);
        $(`#tab-${next}`).focus();
      }
    });
  }
  $("#region-form").addEventListener("submit", (event) => { event.preventDefault(); searchRegion(); });
  $("#patient-form").addEventListener("submit", (event) => { event.preventDefault(); searchPatient(); });
  $("#upload-form").addEventListener("submit", (event) => { event.preventDefault(); searchUpload(); });
  $("#run-search").addEventListener("click", () => ({ patient: searchPatient, upload: searchUpload, region: searchRegion })[mode]());
  $("#opt-label-name").addEventListener("change", () => {
    const label = meta.labels.find((l) => l.name === $("#opt-label-name").value);
    const select = $("#opt-label-value");
    select.disabled = !label;
    fillSelect(select, [["*", "(has it)"], ...Object.keys(label?.values || {})]);
  });
  try {
    meta = await api("/meta");
    fillSelect($("#opt-kind"), meta.kinds.length ? meta.kinds : ["eagle"], { selected: meta.kinds.includes("eagle") ? "eagle" : meta.kinds[0] });
    const names = meta.labels.map((l) => l.name);
    fillSelect($("#opt-vote"), names, { placeholder: "(no vote)" });  // a vote only when asked for
    fillSelect($("#opt-label-name"), names, { placeholder: "(any)" });
    fillSelect($("#opt-exclude-same"), names, { placeholder: "(nothing)" });
  } catch (err) { fail(err); }
  document.body.dataset.ready = "1";
  const params = new URLSearchParams(location.search);
  if (params.get("region_slide") && params.get("x_um") !== null && params.get("y_um") !== null) {
    storedRegion = { slide_id: Number(params.get("region_slide")), x_um: Number(params.get("x_um")), y_um: Number(params.get("y_um")) };
    const note = $("#region-stored");
    note.textContent = `Query: the stored tile at (${Math.round(storedRegion.x_um)}, ${Math.round(storedRegion.y_um)}) µm; choose an image instead to search with it.`;
    note.hidden = false;
    setMode("region");
    searchRegion();
  } else if ($("#patient").value.trim()) searchPatient();
}

init();
