// Compare page: two patients side by side, each in a zoomable viewer with overlays, and the
// explanation's matching tile pairs; choosing a pair pans both viewers to its tiles.
import { $, api, chips, clear, el, fail, fmt, image, showTile } from "./common.js";
import { patientViewer, slideButtons } from "./viewer.js";

const head = $("#compare-head");  // absent on the empty state (no patients chosen): nothing to load
const query = head?.dataset.query;
const hit = head?.dataset.hit;
const viewers = {};
let syncing = false;

function tileFacts(box, who) {
  return { patient: who, slide: box.slide, rank: box.rank ? `#${box.rank}` : "–", "x, y (µm)": `${fmt(box.x_um, 0)}, ${fmt(box.y_um, 0)}`,
    "attention (raw CHIEF)": fmt(box.attention, 4) };
}

async function side(key, view, labels) {
  clear($(`#${key}-labels`), chips(labels));
  const who = key === "query" ? query : hit;
  const viewer = await patientViewer($(`#${key}-viewer`), $(`#${key}-note`), view,
    { onBox: (box) => showTile({ url: box.tile_url, title: `${who} · tile #${box.rank}`, facts: tileFacts(box, who) }) });
  if (!viewer) { $(`#${key}-legend`).hidden = true; return null; }
  viewer.legend($(`#${key}-legend`));
  slideButtons($(`#${key}-slides`), view.slides, viewer, (error) => fail(error, $(`#${key}-note`)))();
  viewer.mpp = () => viewer.data?.mpp || 1;
  return viewer;
}

// Same µm per screen pixel in both viewers: image zoom B = image zoom A × mpp B / mpp A.
function follow(source) {
  if (!$("#sync-zoom").checked || syncing) return;
  const target = source === viewers.query ? viewers.hit : viewers.query;
  const a = source?.item();
  const b = target?.item();
  if (!a || !b) return;
  syncing = true;
  try {
    const imageZoom = a.viewportToImageZoom(source.viewer.viewport.getZoom(false)) * (target.mpp() / source.mpp());
    target.viewer.viewport.zoomTo(b.imageToViewportZoom(imageZoom), null, true);
  } finally { syncing = false; }
}

function pairView(pair, index) {
  const tile = (box, who) => (box.tile_url ? image(box.tile_url, `${who} tile, ${box.slide} at (${Math.round(box.x_um)}, ${Math.round(box.y_um)}) µm`, { lazy: false })
    : el("div", { class: "tile-missing" }));
  const button = el("button", { type: "button", class: "pair-pick", "aria-pressed": "false", "data-pair": index,
    "aria-label": `pair ${pair.rank}: similarity ${fmt(pair.similarity, 3)}; show both tiles` },
  el("span", { class: "pair-rank", text: `#${pair.rank}` }),
  el("div", { class: "pair" },
    el("figure", {}, tile(pair.query, "query"), el("figcaption", { text: `${query}: ${pair.query.slide}${pair.query.rank ? ` · #${pair.query.rank}` : ""}` })),
    el("div", { class: "pair-sim", title: "cosine similarity of the two tiles' Virchow2 class tokens" }, el("span", { "aria-hidden": "true", text: "⟷" }), fmt(pair.similarity, 3)),
    el("figure", {}, tile(pair.hit, "match"), el("figcaption", { text: `${hit}: ${pair.hit.slide}${pair.hit.rank ? ` · #${pair.hit.rank}` : ""}` }))));
  button.addEventListener("click", async () => {
    document.querySelectorAll("#pairs .pair-pick").forEach((b) => b.setAttribute("aria-pressed", String(b === button)));
    try {
      await Promise.all([viewers.query?.focus(pair.query), viewers.hit?.focus(pair.hit)]);
    } catch (error) { fail(error, $("#compare-error")); }
  });
  return el("li", {}, button);
}

async function load() {
  try {
    const [data, q, h] = await Promise.all([
      api(`/compare?query=${encodeURIComponent(query)}&hit=${encodeURIComponent(hit)}&pairs=10`),
      api(`/patients/${encodeURIComponent(query)}`), api(`/patients/${encodeURIComponent(hit)}`)]);
    const [qv, hv] = await Promise.all([side("query", data.query, q.labels), side("hit", data.hit, h.labels)]);
    viewers.query = qv;
    viewers.hit = hv;
    for (const viewer of [qv, hv]) viewer?.onZoom(follow);
    // One heatmap scale for both viewers: the union of the two patients' attention ranges.
    const ranges = [data.query.attention_range, data.hit.attention_range].filter(Boolean);
    if (ranges.length) {
      const scale = { lo: Math.min(...ranges.map((r) => r[0])), hi: Math.max(...ranges.map((r) => r[1])), shared: "both patients, all their slides" };
      for (const viewer of [qv, hv]) viewer?.setScale(scale);
    }
    $("#sync-zoom").addEventListener("change", () => follow(viewers.query));
    clear($("#pairs"), data.pairs.length ? data.pairs.map(pairView) : el("li", { class: "muted", text: data.note || "no matching tile pairs" }));
  } catch (error) {
    fail(error, $("#compare-error"));
  }
  document.body.dataset.ready = "1";
}

if (head) load();
else document.body.dataset.ready = "1";
