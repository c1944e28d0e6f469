// Patient page: slides with interactive tile boxes, the selected-tile gallery, labels, neighbours.
import { $, api, chips, clear, el, fail, fmt, fmtInt, image, patientUrl, PLACEHOLDER, regionLink, showTile } from "./common.js";
import { patientViewer, slideButtons } from "./viewer.js";

const NS = "http://www.w3.org/2000/svg";
const patient = $("#patient-head").dataset.patient;
let tileUm = 448;

function tileFacts(tile) {
  return {
    rank: `#${tile.rank} of the patient's selected tiles`, slide: tile.slide,
    "x, y (µm)": `${fmt(tile.x_um, 0)}, ${fmt(tile.y_um, 0)}`, "size (µm)": `${tileUm} × ${tileUm}`,
    "attention (raw CHIEF)": fmt(tile.attention, 4),
  };
}

const openTile = (tile) => showTile({ url: tile.tile_url, title: `Tile #${tile.rank} · ${tile.slide}`, facts: tileFacts(tile),
  region: tile.slide_id !== null && tile.slide_id !== undefined ? tile : null });

function highlight(rank, on) {
  document.querySelectorAll(`[data-rank="${rank}"]`).forEach((node) => node.classList.toggle("hl", on));
}

function slideView(slide, tiles) {
  const mine = tiles.filter((t) => t.slide_id === slide.id);
  const box = el("div", { class: "slide-view" });
  if (!slide.thumbnail_url) {
    box.append(el("img", { src: PLACEHOLDER, alt: `no image for slide ${slide.name}` }));
  } else {
    const img = image(`${slide.thumbnail_url}?boxes=none`, `thumbnail of slide ${slide.name}`, { size: 768 });
    box.append(img);
    if (slide.width_um && slide.height_um && mine.length) {
      const overlay = document.createElementNS(NS, "svg");
      overlay.setAttribute("viewBox", `0 0 ${slide.width_um} ${slide.height_um}`);
      overlay.setAttribute("preserveAspectRatio", "none");
      overlay.setAttribute("aria-label", `${mine.length} selected tiles on ${slide.name}`);
      for (const tile of mine) {
        const rect = document.createElementNS(NS, "rect");
        for (const [k, v] of Object.entries({ x: tile.x_um, y: tile.y_um, width: tileUm, height: tileUm, class: "tile-box", tabindex: "0", role: "button" })) rect.setAttribute(k, v);
        rect.dataset.rank = tile.rank;
        rect.setAttribute("aria-label", `tile ${tile.rank}, raw CHIEF attention ${fmt(tile.attention, 3)}`);
        const title = document.createElementNS(NS, "title");
        title.textContent = `#${tile.rank} · raw CHIEF attention ${fmt(tile.attention, 4)} · (${fmt(tile.x_um, 0)}, ${fmt(tile.y_um, 0)}) µm`;
        rect.append(title);
        rect.addEventListener("click", () => openTile(tile));
        rect.addEventListener("keydown", (event) => { if (event.key === "Enter" || event.key === " ") { event.preventDefault(); openTile(tile); } });
        rect.addEventListener("mouseenter", () => highlight(tile.rank, true));
        rect.addEventListener("mouseleave", () => highlight(tile.rank, false));
        const label = document.createElementNS(NS, "text");
        label.setAttribute("x", tile.x_um + tileUm * 0.08);
        label.setAttribute("y", tile.y_um + tileUm * 0.3);
        label.setAttribute("font-size", tileUm * 0.24);
        label.setAttribute("stroke-width", tileUm * 0.04);
        label.textContent = tile.rank;
        overlay.append(rect, label);
      }
      box.append(overlay);
    }
  }
  const facts = [
    slide.width_px ? `${fmtInt(slide.width_px)} × ${fmtInt(slide.height_px)} px` : null,
    slide.mpp ? `${fmt(slide.mpp, 3)} µm/px (${slide.mpp_source})` : null,
    slide.n_tiles !== null ? `${slide.n_tiles} tissue tiles` : null,
    `${slide.selected_tiles} selected`,
  ].filter(Boolean);
  return el("article", { class: "slide-card" }, box,
    el("h3", {}, slide.name, " ", el("span", { class: `badge ${slide.status}`, text: slide.status })),
    el("div", { class: "slide-meta" }, facts.map((f) => el("span", { text: f }))),
    slide.error ? el("p", { class: "error-text", text: slide.error }) : null);
}

function gallery(tiles) {
  if (!tiles.length) return el("div", { class: "empty", text: "No tiles: this patient's vectors were imported, not computed from slides here." });
  return tiles.map((tile) => {
    const picture = tile.tile_url ? image(tile.tile_url, `tile ${tile.rank}`) : el("div", { class: "tile-missing" });
    const button = el("button", { type: "button", "data-rank": tile.rank, "aria-label": `tile ${tile.rank} from ${tile.slide}, raw CHIEF attention ${fmt(tile.attention, 3)}`,
      onclick: () => focusTile(tile), onmouseenter: () => highlight(tile.rank, true), onmouseleave: () => highlight(tile.rank, false),
      onfocus: () => highlight(tile.rank, true), onblur: () => highlight(tile.rank, false) },
    picture, el("span", {}, el("b", { text: `#${tile.rank}` }), el("span", { class: "num", title: "raw CHIEF attention", text: fmt(tile.attention, 3) })));
    const region = tile.slide_id !== null && tile.slide_id !== undefined ? regionLink(tile.slide_id, tile.x_um, tile.y_um) : null;
    return el("div", { class: "gallery-item" }, button, region);
  });
}

function labelRows(labels) {
  const entries = Object.entries(labels);
  if (!entries.length) return el("tr", {}, el("td", { colspan: "2", class: "muted", text: "no labels yet" }));
  return entries.map(([name, value]) => el("tr", {}, el("th", { scope: "row", text: name }), el("td", { text: value ?? "–" })));
}

async function neighbours(labels) {
  const list = $("#neighbours");
  try {
    const { hits } = await api(`/search?patient=${encodeURIComponent(patient)}&k=5`);
    if (!hits.length) { clear(list, el("li", { class: "muted", text: "no other patient has a vector of this kind" })); return; }
    clear(list, hits.map((hit) => el("li", {}, el("span", {}, el("a", { href: patientUrl(hit.patient), text: hit.patient }), " ", chips(hit.labels, labels)),
      el("span", { class: "num score", text: fmt(hit.score, 4) }))));
  } catch (error) {
    clear(list, el("li", { class: "muted", text: error.message }));
  }
}

async function load() {
  try {
    const [data, meta] = await Promise.all([api(`/patients/${encodeURIComponent(patient)}`), api("/meta")]);
    tileUm = meta.tile_um;
    $("#top-k").textContent = meta.top_k;
    clear($("#patient-labels"), chips(data.labels));
    clear($("#slides"), data.slides.length ? data.slides.map((s) => slideView(s, data.tiles))
      : el("div", { class: "empty" }, el("img", { src: PLACEHOLDER, alt: "", width: "160" }), el("p", { text: "No slides: this patient's vectors were imported." })));
    $("#slides-note").textContent = data.slides.length ? `(${data.slides.length})` : "";
    clear($("#gallery"), gallery(data.tiles));
    clear($("#label-rows"), labelRows(data.labels));
    clear($("#label-names"), meta.labels.map((l) => el("option", { value: l.name })));
    clear($("#vector-facts"),
      data.vectors.flatMap((v) => [el("dt", { text: v.kind }), el("dd", { class: "mono small", text: `${v.dim}-d · ${v.signature}` })]),
      el("dt", { text: "cohorts" }), el("dd", { text: data.cohorts.join(", ") || "none" }));
    neighbours(data.labels);
    setupViewer();
    document.body.dataset.ready = "1";
  } catch (error) {
    fail(error, $("#patient-error"));
  }
}

// The zoomable viewer: overlays, boxes that open the tile dialog, gallery tiles that zoom to their box.
let viewer = null;
let viewerBoxes = [];

async function setupViewer() {
  const root = $("#viewer");
  try {
    const view = await api(`/patients/${encodeURIComponent(patient)}/viewer`);
    viewerBoxes = view.selected;
    viewer = await patientViewer(root, $("#viewer-note"), view, { onBox: (box) => openTile(box) });
    if (!viewer) { $("#viewer-legend").hidden = true; return; }
    viewer.legend($("#viewer-legend"));
    slideButtons($("#viewer-slides"), view.slides, viewer, (error) => fail(error, $("#viewer-note")))();
    root.dataset.ready = "1";
  } catch (error) {
    root.hidden = true;
    $("#viewer-legend").hidden = true;
    fail(error, $("#viewer-note"));
  }
}

function focusTile(tile) {
  const box = viewerBoxes.find((b) => b.rank === tile.rank);
  if (!viewer || !box || box.x_px === null || box.slide_id === null) { openTile(tile); return; }
  $("#viewer-panel").scrollIntoView({ block: "nearest" });
  viewer.focus(box).catch((error) => fail(error, $("#viewer-note")));
}

$("#label-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const status = $("#label-status");
  const name = $("#label-name").value.trim();
  if (!name) { $("#label-name").focus(); return; }
  try {
    const data = await api(`/patients/${encodeURIComponent(patient)}/labels`, { method: "POST", body: { name, value: $("#label-value").value } });
    clear($("#label-rows"), labelRows(data.labels));
    clear($("#patient-labels"), chips(data.labels));
    status.textContent = `saved ${name}`;
    event.target.reset();
  } catch (error) { status.textContent = error.message; }
});

load();
