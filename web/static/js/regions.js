// Region search results ("Find similar regions"): the query, then patients with their matching tiles.
// One renderer for the Search page and the slide viewer's region searches (point, box, annotation).
import { chips, clear, el, fmt, image, patientUrl, regionLink, showTile } from "./common.js";

export const tileImage = (slideId, x, y) => `/api/v1/slides/${slideId}/tile.png?x_um=${Number(x).toFixed(3)}&y_um=${Number(y).toFixed(3)}`;

function regionTile(tile, patient) {
  const url = tileImage(tile.slide_id, tile.x_um, tile.y_um);
  const facts = { patient, slide: tile.slide, "x, y (µm)": `${fmt(tile.x_um, 0)}, ${fmt(tile.y_um, 0)}`, similarity: fmt(tile.score, 4),
    "selected tile": tile.patient_rank ? `#${tile.patient_rank}` : "no (a candidate of its slide)", "attention (raw CHIEF)": fmt(tile.attention, 4) };
  const button = el("button", { type: "button", title: "show larger",
    onclick: () => showTile({ url, title: `${patient} · ${tile.slide}`, facts, region: tile }) },
  image(url, `tile of ${patient}, ${tile.slide} at (${Math.round(tile.x_um)}, ${Math.round(tile.y_um)}) µm`));
  return el("figure", { class: "region-tile" }, button,
    el("figcaption", {}, el("span", { class: "num", text: fmt(tile.score, 3) }), " ", tile.slide), regionLink(tile.slide_id, tile.x_um, tile.y_um, "similar"));
}

function describe(q) {
  if (q.image) return `image ${q.image} (${fmt(q.mpp, 3)} µm/px, ${q.tiles} tile${q.tiles === 1 ? "" : "s"})`;
  if (q.annotation) {
    const name = typeof q.annotation === "object" ? q.annotation.name || `#${q.annotation.id}` : q.annotation;
    return `annotation ${name} on ${q.slide}${q.tiles ? ` (${q.tiles} tile${q.tiles === 1 ? "" : "s"})` : ""}`;
  }
  if (q.box) return `region of ${q.slide} (${q.box.map((v) => Math.round(v)).join(", ")} µm)`;
  return `tile of ${q.patient} · ${q.slide} at (${Math.round(q.x_um)}, ${Math.round(q.y_um)}) µm`;
}

// Fill `target` with a region search result; `actions` (nodes) go under the query's description.
// `queryImage`: a URL of the user's own query image (an upload shown from the browser), drawn as the query.
export function renderRegions(result, target, { actions = null, queryImage = null } = {}) {
  const q = result.query;
  const picture = queryImage ? image(queryImage, `query image ${q.image || ""}`.trim(), { lazy: false })
    : q.slide_id !== undefined && q.stored_tile !== false && q.x_um !== undefined
      ? image(tileImage(q.slide_id, q.x_um, q.y_um), "query tile", { lazy: false }) : el("div", { class: "tile-missing" });
  const head = el("section", { class: "panel region-query", "aria-label": "query" }, picture,
    el("div", {}, el("h2", { text: "Similar regions" }), el("p", { class: "muted", text: describe(q) }),
      el("p", { class: "muted small mono", text: q.signature }), actions));
  const notes = (result.notes || []).map((n) => el("p", { class: "note", text: n }));
  const cards = result.patients.length
    ? el("div", { class: "results", id: "region-hits" }, result.patients.map((hit, i) => {
      const bar = el("div", { class: "score-bar", title: "best tile's cosine similarity" }, el("span"));
      bar.firstChild.style.width = `${Math.max(0, Math.min(1, hit.score)) * 100}%`;
      return el("article", { class: "card region-patient", "data-patient": hit.patient },
        el("div", { class: "card-body" },
          el("div", { class: "card-title" }, el("span", { class: "rank", text: `#${i + 1}` }), el("a", { href: patientUrl(hit.patient), text: hit.patient }),
            el("span", { class: "score", title: "best tile's cosine similarity", text: fmt(hit.score, 4) })),
          bar, chips(hit.labels || {})),
        el("div", { class: "region-tiles" }, hit.tiles.map((t) => regionTile(t, hit.patient))));
    }))
    : el("div", { class: "empty", text: "No tiles match these filters." });
  clear(target, head, notes, cards);
}
