// Slide viewer: OpenSeadragon (served from /static/vendor, installed by `make` from npm) over the
// Deep Zoom tiles of /api/v1/slides/{id}/tiles, with one canvas overlay drawn on every viewport
// update: the tissue tile grid, the patient's selected tiles (numbered boxes, rank order) and the
// CHIEF attention heatmap (colour scale, opacity). Image coordinates are level-0 pixels.
// For tests and debugging the OpenSeadragon viewer is reachable as element.eagleViewer, and the
// element's data-slide / data-center-x / data-center-y / data-zoom describe what it shows.
import { api, ApiFailure, clear, el, fmt } from "./common.js";

const OSD_URL = "/static/vendor/openseadragon/openseadragon.min.js";
const OSD_IMAGES = "/static/vendor/openseadragon/images/";
// RdYlBu reversed: low attention blue, high red (the legend's gradient in app.css uses the same stops)
const STOPS = [[0, [49, 54, 149]], [0.25, [116, 173, 209]], [0.5, [255, 255, 191]], [0.75, [244, 109, 67]], [1, [165, 0, 38]]];
export const LAYERS = [
  ["grid", "Tissue tiles", "every tile the pipeline kept (grid)"],
  ["boxes", "Selected tiles", "the patient's selected tiles, numbered by rank; select one to see it"],
  ["heat", "Attention heatmap", "raw CHIEF attention of every tissue tile"],
];

let loading = null;
export function loadOpenSeadragon() {
  if (window.OpenSeadragon) return Promise.resolve(window.OpenSeadragon);
  if (!loading) {
    loading = new Promise((resolve, reject) => {
      const script = el("script", { src: OSD_URL });
      script.addEventListener("load", () => resolve(window.OpenSeadragon));
      script.addEventListener("error", () => {
        loading = null;
        reject(new ApiFailure(404, "the slide viewer is not installed on this server (OpenSeadragon is missing: run `make install`)"));
      });
      document.head.append(script);
    });
  }
  return loading;
}

export function heatColour(t) {
  const x = Math.max(0, Math.min(1, Number.isFinite(t) ? t : 0));
  for (let i = 1; i < STOPS.length; i += 1) {
    const [t1, c1] = STOPS[i];
    if (x <= t1) {
      const [t0, c0] = STOPS[i - 1];
      const f = (x - t0) / (t1 - t0);
      return `rgb(${c0.map((v, k) => Math.round(v + f * (c1[k] - v))).join(",")})`;
    }
  }
  return "rgb(165,0,38)";
}

export class SlideViewer {
  constructor(root, { onBox, layers } = {}) {
    this.root = root;
    this.onBox = onBox;
    this.layers = { grid: false, boxes: true, heat: false, ...(layers || {}) };
    this.opacity = 0.45;
    // The heatmap's colour scale: {lo, hi, shared} for every slide shown (a patient's, or both patients' in the
    // compare view), or null for each slide's own range.
    this.scale = null;
    this.data = null;
    this.slideId = null;
    this.viewer = null;
    this.listeners = [];
  }

  async init() {
    const OSD = await loadOpenSeadragon();
    this.OSD = OSD;
    this.viewer = OSD({
      element: this.root, prefixUrl: OSD_IMAGES, drawer: "canvas", showNavigator: false, showRotationControl: false,
      showFullPageControl: false, animationTime: 0.5, blendTime: 0, maxZoomPixelRatio: 2, visibilityRatio: 0.5,
      gestureSettingsMouse: { clickToZoom: false, dblClickToZoom: true }, crossOriginPolicy: false, immediateRender: false,
    });
    this.root.eagleViewer = this.viewer;
    this.root.slideViewer = this;  // annotations.js draws and searches on this viewer
    this.canvas = el("canvas", { class: "viewer-overlay", "aria-hidden": "true" });
    this.viewer.canvas.append(this.canvas);
    const redraw = () => { this.draw(); this.report(); };
    for (const name of ["update-viewport", "animation-finish", "resize", "open"]) this.viewer.addHandler(name, redraw);
    this.viewer.addHandler("zoom", () => this.listeners.forEach((fn) => fn(this)));
    this.viewer.addHandler("canvas-click", (event) => {
      if (this.tool || !event.quick || !this.layers.boxes || !this.data) return;  // a drawing/search tool takes the clicks
      const item = this.viewer.world.getItemAt(0);
      if (!item) return;
      const p = item.viewerElementToImageCoordinates(event.position);
      const box = this.data.selected.find((b) => b.x_px !== null && p.x >= b.x_px && p.x <= b.x_px + b.size_px && p.y >= b.y_px && p.y <= b.y_px + b.size_px);
      if (box) {
        event.preventDefaultAction = true;
        this.onBox?.(box);
      }
    });
    return this;
  }

  async show(slideId) {
    const data = await api(`/slides/${slideId}/overlays`);
    const d = data.dzi;
    const source = {
      width: d.width, height: d.height, tileSize: d.tile_size, tileOverlap: d.overlap, minLevel: 0, maxLevel: d.levels - 1,
      getTileUrl: (level, x, y) => `${d.tiles_url}${level}/${x}_${y}.${d.format}`,
    };
    await new Promise((resolve, reject) => {
      const ok = () => { this.viewer.removeHandler("open-failed", bad); resolve(); };
      const bad = (event) => { this.viewer.removeHandler("open", ok); reject(new Error(event.message || "the slide could not be opened")); };
      this.viewer.addOnceHandler("open", ok);
      this.viewer.addOnceHandler("open-failed", bad);
      this.viewer.open(source);
    });
    this.data = data;
    this.slideId = slideId;
    this.root.dataset.slide = String(slideId);
    this.draw();
    this.report();
    this.legendUpdate?.();
    this.root.dispatchEvent(new CustomEvent("slide-shown", { detail: data }));
    return data;
  }

  item() { return this.viewer?.world.getItemAt(0) || null; }

  report() {
    const item = this.item();
    if (!item) return;
    const viewport = this.viewer.viewport;
    const center = item.viewportToImageCoordinates(viewport.getCenter(true));
    Object.assign(this.root.dataset, {
      centerX: center.x.toFixed(1), centerY: center.y.toFixed(1), zoom: item.viewportToImageZoom(viewport.getZoom(true)).toFixed(6),
      layers: Object.entries(this.layers).filter(([, on]) => on).map(([k]) => k).join(" "),
    });
  }

  draw() {
    if (!this.canvas || !this.viewer) return;
    const container = this.viewer.container;
    const w = container.clientWidth;
    const h = container.clientHeight;
    const dpr = window.devicePixelRatio || 1;
    if (this.canvas.width !== Math.round(w * dpr) || this.canvas.height !== Math.round(h * dpr)) {
      this.canvas.width = Math.round(w * dpr);
      this.canvas.height = Math.round(h * dpr);
    }
    const ctx = this.canvas.getContext("2d");
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    ctx.clearRect(0, 0, w, h);
    const item = this.item();
    const data = this.data;
    if (!item || !data || !data.tile_px) return;
    const p0 = item.imageToViewerElementCoordinates(new this.OSD.Point(0, 0));
    const p1 = item.imageToViewerElementCoordinates(new this.OSD.Point(1000, 1000));
    const sx = (p1.x - p0.x) / 1000;
    const sy = (p1.y - p0.y) / 1000;
    const side = data.tile_px * sx;
    const visible = (x, y) => x + side >= 0 && y + side >= 0 && x <= w && y <= h;
    const tissue = data.tissue;
    const n = tissue.x_px ? tissue.x_px.length : 0;
    const range = this.range();
    if (this.layers.heat && n && range) {
      const lo = range.lo;
      const span = range.hi - lo || 1;
      ctx.globalAlpha = this.opacity;
      for (let i = 0; i < n; i += 1) {
        const x = p0.x + tissue.x_px[i] * sx;
        const y = p0.y + tissue.y_px[i] * sy;
        if (!visible(x, y)) continue;
        ctx.fillStyle = heatColour(Math.min(1, Math.max(0, (tissue.attention[i] - lo) / span)));
        ctx.fillRect(x, y, side, side);
      }
      ctx.globalAlpha = 1;
    }
    if (this.layers.grid && n) {
      ctx.strokeStyle = "rgba(17, 24, 39, 0.6)";
      ctx.lineWidth = 1;
      for (let i = 0; i < n; i += 1) {
        const x = p0.x + tissue.x_px[i] * sx;
        const y = p0.y + tissue.y_px[i] * sy;
        if (visible(x, y)) ctx.strokeRect(x + 0.5, y + 0.5, side - 1, side - 1);
      }
    }
    if (this.layers.boxes) {
      ctx.lineWidth = 2.5;
      ctx.textBaseline = "top";
      const font = Math.max(11, Math.min(28, side * 0.22));
      ctx.font = `700 ${font}px system-ui, sans-serif`;
      for (const box of data.selected) {
        if (box.x_px === null) continue;
        const x = p0.x + box.x_px * sx;
        const y = p0.y + box.y_px * sy;
        if (!visible(x, y)) continue;
        const active = this.highlight === box.rank;
        ctx.strokeStyle = active ? "#8a356f" : "#1f5fa3";
        ctx.strokeRect(x, y, side, side);
        const label = String(box.rank);
        const tw = ctx.measureText(label).width + 6;
        ctx.fillStyle = active ? "#8a356f" : "#1f5fa3";
        ctx.fillRect(x, y, tw, font + 4);
        ctx.fillStyle = "#ffffff";
        ctx.fillText(label, x + 3, y + 2);
      }
    }
  }

  // The attention range colours are scaled to: the shared scale if set, else this slide's own.
  range() {
    if (this.scale) return this.scale;
    const d = this.data;
    if (!d || d.attention_min === null || d.attention_min === undefined || d.attention_max === null) return null;
    return { lo: d.attention_min, hi: d.attention_max, shared: null };
  }

  setScale(scale) { this.scale = scale; this.draw(); this.legendUpdate?.(); }

  setLayer(name, on) { this.layers[name] = on; this.draw(); this.report(); }
  setOpacity(value) { this.opacity = value; this.draw(); }

  // Zoom to one tile (a TileBox: x_px, y_px, size_px), switching slides if needed.
  async focus(box, { margin = 1.5 } = {}) {
    if (box.slide_id !== null && box.slide_id !== this.slideId) await this.show(box.slide_id);
    const item = this.item();
    if (!item || box.x_px === null) return;
    const pad = box.size_px * margin;
    this.highlight = box.rank ?? null;
    this.viewer.viewport.fitBounds(item.imageToViewportRectangle(box.x_px - pad, box.y_px - pad, box.size_px + 2 * pad, box.size_px + 2 * pad));
    this.draw();
  }

  // The layer switches, the heatmap's opacity and colour scale, and notes about this slide.
  legend(container) {
    const boxes = LAYERS.map(([key, text, title]) => {
      const input = el("input", { type: "checkbox", checked: this.layers[key], "data-layer": key });
      input.addEventListener("change", () => this.setLayer(key, input.checked));
      return el("label", { class: "check", title }, input, el("span", { class: `swatch swatch-${key}`, "aria-hidden": "true" }), text);
    });
    const opacityId = `${this.root.id || "viewer"}-opacity`;
    const range = el("input", { type: "range", id: opacityId, min: "0.05", max: "1", step: "0.05", value: String(this.opacity) });
    range.addEventListener("input", () => this.setOpacity(Number(range.value)));
    const low = el("span", { class: "num small" });
    const high = el("span", { class: "num small" });
    const note = el("p", { class: "muted small", "aria-live": "polite" });
    const scaleNote = el("p", { class: "muted small heat-scope" });
    clear(container, el("div", { class: "legend-layers", role: "group", "aria-label": "Overlays" }, boxes),
      el("div", { class: "legend-heat" },
        el("label", { for: opacityId, class: "small" }, "Heatmap opacity"), range,
        el("div", { class: "heat-scale", role: "img", "aria-label": "attention colour scale, low (blue) to high (red)" }),
        el("div", { class: "heat-ends" }, low, el("span", { class: "muted small", text: "raw CHIEF attention" }), high),
        scaleNote),
      note);
    this.legendUpdate = () => {
      const d = this.data;
      const r = this.range();
      low.textContent = r ? fmt(r.lo, 3) : "–";
      high.textContent = r ? fmt(r.hi, 3) : "–";
      scaleNote.textContent = r?.shared ? `one scale for ${r.shared}` : (r ? "scaled to this slide" : "");
      note.textContent = d?.note || (d ? `${d.slide}: ${d.tissue.x_um.length} tissue tiles, ${d.selected.length} selected` : "");
    };
    this.legendUpdate();
  }

  onZoom(fn) { this.listeners.push(fn); }
}

// Buttons to switch the viewer between a patient's slides (only those it can show).
export function slideButtons(container, slides, viewer, onError) {
  const shown = slides.filter((s) => s.viewable);
  const buttons = shown.map((slide) => el("button", {
    type: "button", class: "btn btn-small", "aria-pressed": "false", "data-slide": slide.id,
    onclick: async () => { try { await viewer.show(slide.id); } catch (error) { onError?.(error); } },
  }, slide.name));
  clear(container, shown.length > 1 ? buttons : []);
  const mark = () => buttons.forEach((b) => b.setAttribute("aria-pressed", String(Number(b.dataset.slide) === viewer.slideId)));
  viewer.viewer?.addHandler("open", mark);
  return mark;
}

// Open a patient's first viewable slide (the one with most selected tiles) in a new viewer, or explain why not.
export async function patientViewer(root, note, view, options = {}) {
  const shown = view.slides.filter((s) => s.viewable);
  if (!shown.length) {
    root.hidden = true;
    clear(note, el("p", { class: "note", text: view.note || "No slide of this patient can be shown." }));
    return null;
  }
  const viewer = await new SlideViewer(root, options).init();
  const r = view.attention_range;
  if (r) viewer.scale = { lo: r[0], hi: r[1], shared: options.scaleScope || (shown.length > 1 ? "all of this patient's slides" : null) };
  const first = shown.reduce((best, s) => (s.selected_tiles > best.selected_tiles ? s : best), shown[0]);
  await viewer.show(first.id);
  if (root.dataset.annotations !== undefined) {  // the patient page: drawing, annotations, click/box region search
    import("./annotations.js").then((m) => m.attachAnnotations(viewer)).catch((error) => clear(note, el("p", { class: "alert", text: error.message })));
  }
  const problems = view.slides.filter((s) => !s.viewable).map((s) => s.reason);
  clear(note, problems.map((text) => el("p", { class: "muted small", text })));
  return viewer;
}
