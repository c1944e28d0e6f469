// Annotations on the slide viewer (issue 23): draw a rectangle or polygon, name/class/colour it,
// save, edit, delete; see every annotation of the slide on one canvas overlay (redrawn on each
// viewport update, culled by bounding box, Path2D per shape built once, so thousands stay smooth);
// import QuPath GeoJSON and download the slide's annotations as GeoJSON; "Find similar regions"
// from an annotation, a clicked point or a dragged box (region search), hits downloadable as GeoJSON.
// Geometry is GeoJSON in level-0 pixels, as QuPath writes it. viewer.js attaches this module to the
// patient page's viewer (#viewer[data-annotations]); the API is /api/v1/slides/<name>/annotations.
import { $, api, ApiFailure, clear, el, fail } from "./common.js";
import { renderRegions } from "./regions.js";

// QuPath's default classes and colours, offered in the class field (any other name is fine too).
export const CLASSES = [["Tumor", "#c80000"], ["Stroma", "#96c896"], ["Immune cells", "#a05aa0"], ["Necrosis", "#323232"],
  ["Other", "#ffc800"], ["Region*", "#0000b4"], ["Ignore*", "#b4b4b4"]];
const DEFAULT_COLOUR = "#e0a000";
const TOOLS = {
  pan: ["Pan / select", "Drag to pan, scroll to zoom; click an annotation to edit it"],
  rect: ["Rectangle", "Draw a rectangle annotation: drag over the slide. Esc cancels."],
  polygon: ["Polygon", "Draw a polygon annotation: click each corner; double-click, Enter or a click on the first corner closes it. Backspace removes the last corner, Esc cancels."],
  point: ["Search a point", "Find similar regions: click any point of tissue on the slide; the tile under it is the query. Esc cancels."],
  box: ["Search a box", "Find similar regions: drag a box over tissue (at least one tile); its tissue tiles, averaged, are the query. Esc cancels."],
};
const LIST_LIMIT = 100;
const CACHE_MARGIN = 0.25;
const THICK_FROM_PX = 40;  // shapes at least this wide on screen are outlined 2 px wide, smaller ones 1 device px  // the overlay's cache reaches this fraction of the view beyond each side  // rows in the annotation list; the overlay shows them all
const SEARCH = { k: 20, per_patient: 3 };

// -- geometry ----------------------------------------------------------------------------------------------
function ringPath(path, ring, close) {
  ring.forEach(([x, y], i) => (i ? path.lineTo(x, y) : path.moveTo(x, y)));
  if (close) path.closePath();
}

// A shape ready to draw: Path2D in level-0 px (built once), its bounding box, and whether it is an area, a line or points.
export function shapeOf(geometry) {
  const path = new Path2D();
  const points = [];
  let kind = "area";
  const polygons = geometry.type === "Polygon" ? [geometry.coordinates] : geometry.type === "MultiPolygon" ? geometry.coordinates : null;
  if (polygons) polygons.forEach((rings) => rings.forEach((ring) => ringPath(path, ring, true)));
  else if (geometry.type === "LineString" || geometry.type === "MultiLineString") {
    kind = "line";
    (geometry.type === "LineString" ? [geometry.coordinates] : geometry.coordinates).forEach((line) => ringPath(path, line, false));
  } else if (geometry.type === "Point" || geometry.type === "MultiPoint") {
    kind = "points";
    points.push(...(geometry.type === "Point" ? [geometry.coordinates] : geometry.coordinates));
  }
  let x0 = Infinity; let y0 = Infinity; let x1 = -Infinity; let y1 = -Infinity;
  const visit = (c) => {
    if (typeof c[0] === "number") { x0 = Math.min(x0, c[0]); y0 = Math.min(y0, c[1]); x1 = Math.max(x1, c[0]); y1 = Math.max(y1, c[1]); } else c.forEach(visit);
  };
  visit(geometry.coordinates);
  return { path, points, kind, bbox: [x0, y0, x1, y1] };
}

const rectGeometry = (a, b) => {
  const [x0, x1] = [Math.min(a.x, b.x), Math.max(a.x, b.x)].map(round2);
  const [y0, y1] = [Math.min(a.y, b.y), Math.max(a.y, b.y)].map(round2);
  return { type: "Polygon", coordinates: [[[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]]] };
};
const round2 = (v) => Math.round(v * 100) / 100;
const hexColour = (c) => (/^#[0-9a-f]{6}$/i.test(c || "") ? c.toLowerCase() : DEFAULT_COLOUR);
const slidePath = (name) => `/slides/${encodeURIComponent(name)}`;

function saveBlob(blob, filename) {
  const url = URL.createObjectURL(blob);
  const link = el("a", { href: url, download: filename, hidden: true });
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(url), 60_000);  // long after the browser took the download
}

// -- the layer -----------------------------------------------------------------------------------------------
export class AnnotationLayer {
  constructor(slideViewer, { tools, panel, results }) {
    this.sv = slideViewer;
    this.osd = slideViewer.viewer;
    this.root = slideViewer.root;
    this.toolsBox = tools;
    this.panel = panel;
    this.results = results;
    this.items = [];          // {a: annotation, shape}
    this.byId = new Map();
    this.slide = null;        // the overlays data of the slide shown
    this.tool = "pan";
    this.draft = null;        // {kind: "rect"|"polygon"|"box", points: [image px], cursor}
    this.selected = null;     // annotation id, or "new" while a drawn shape waits for its form
    this.pending = null;      // geometry of the drawn, unsaved shape
    this.query = null;        // the last point/box query, drawn dashed
    this.visible = true;
    this.drawMs = [];         // how long each overlay draw took (benchmarks read it)
    this.firstDrawAt = null;
    this.probe = document.createElement("canvas").getContext("2d");  // hit tests (isPointInPath, identity transform)
  }

  attach() {
    this.canvas = el("canvas", { class: "viewer-overlay annotation-overlay", "aria-hidden": "true" });
    this.osd.canvas.append(this.canvas);
    for (const name of ["update-viewport", "animation-finish", "resize", "open"]) this.osd.addHandler(name, () => this.draw());
    this.osd.addHandler("canvas-press", (e) => this.press(e));
    this.osd.addHandler("canvas-drag", (e) => this.drag(e));
    this.osd.addHandler("canvas-release", (e) => this.release(e));
    this.osd.addHandler("canvas-click", (e) => this.click(e));
    this.osd.addHandler("canvas-double-click", (e) => this.doubleClick(e));
    this.osd.canvas.addEventListener("pointermove", (e) => this.hover(e));
    // the browser's own double-click too: OpenSeadragon counts clicks itself and misses one after quick corners
    this.osd.canvas.addEventListener("dblclick", () => { if (this.tool === "polygon" && this.draft) this.closePolygon(); });
    document.addEventListener("keydown", (e) => this.key(e));
    this.root.addEventListener("slide-shown", (e) => this.load(e.detail));
    this.buildTools();
    this.buildPanel();
    this.root.annotationLayer = this;
    return this.load(this.sv.data);
  }

  // -- data ------------------------------------------------------------------------------------------------
  async load(slide) {
    this.slide = slide;
    this.items = [];
    this.byId.clear();
    this.selected = null;
    this.pending = null;
    this.draft = null;
    this.query = null;
    this.closeForm();
    delete this.root.dataset.annotations;
    if (!slide) return;
    this.download.href = `/api/v1${slidePath(slide.slide)}/annotations.geojson`;
    this.download.setAttribute("download", `${slide.slide}.geojson`);
    this.status(`loading the annotations of ${slide.slide}…`);
    try {
      const started = performance.now();
      const data = await api(`${slidePath(slide.slide)}/annotations`);
      if (this.slide !== slide) return;  // another slide was opened meanwhile
      const fetched = performance.now();
      this.setAll(data.annotations);
      this.timings = { fetchMs: fetched - started, buildMs: performance.now() - fetched, at: performance.now() };  // benchmarks read these
      this.status("");
    } catch (error) {
      this.setAll([]);
      this.status(`annotations unavailable: ${error.message}`);
    }
  }

  setAll(annotations) {
    this.items = annotations.map((a) => ({ a, shape: shapeOf(a.geometry) }));
    this.byId = new Map(this.items.map((it) => [it.a.id, it]));
    this.afterChange();
  }

  upsert(annotation) {
    const item = { a: annotation, shape: shapeOf(annotation.geometry) };
    const old = this.byId.get(annotation.id);
    if (old) this.items[this.items.indexOf(old)] = item;
    else this.items.push(item);
    this.byId.set(annotation.id, item);
    this.afterChange();
    return item;
  }

  remove(id) {
    const old = this.byId.get(id);
    if (!old) return;
    this.items.splice(this.items.indexOf(old), 1);
    this.byId.delete(id);
    this.afterChange();
  }

  afterChange() {
    this.invalidate();
    this.root.dataset.annotations = String(this.items.length);
    this.renderList();
    this.draw();
  }

  // -- drawing ---------------------------------------------------------------------------------------------
  // image px → viewer element px is x * s + ox (no rotation: the viewer never rotates)
  transform() {
    const item = this.sv.item();
    if (!item) return null;
    const OSD = this.sv.OSD;
    const p0 = item.imageToViewerElementCoordinates(new OSD.Point(0, 0));
    const p1 = item.imageToViewerElementCoordinates(new OSD.Point(1000, 0));
    return { s: (p1.x - p0.x) / 1000, ox: p0.x, oy: p0.y };
  }

  // The annotations are rendered into a cache canvas a margin larger than the view; while the viewer
  // animates (drag, wheel, zoom buttons) each frame only re-places that bitmap (one drawImage), and the
  // shapes are rendered again, crisp, once it rests, when the view leaves the cache or zooms past 2×.
  invalidate() { if (this.cache) this.cache.valid = false; }

  draw() {
    if (!this.canvas) return;
    const started = performance.now();
    const w = this.osd.container.clientWidth;
    const h = this.osd.container.clientHeight;
    const dpr = window.devicePixelRatio || 1;
    if (this.canvas.width !== Math.round(w * dpr) || this.canvas.height !== Math.round(h * dpr)) {
      this.canvas.width = Math.round(w * dpr);
      this.canvas.height = Math.round(h * dpr);
      this.invalidate();
    }
    const ctx = this.canvas.getContext("2d");
    ctx.setTransform(1, 0, 0, 1, 0, 0);
    ctx.clearRect(0, 0, this.canvas.width, this.canvas.height);
    const t = this.transform();
    if (!t) return;
    if (this.visible && this.items.length) {
      const c = this.cache;
      const k = c ? t.s / c.t.s : 1;
      const left = c ? t.ox - k * (c.t.ox + CACHE_MARGIN * c.w) : 0;
      const top = c ? t.oy - k * (c.t.oy + CACHE_MARGIN * c.h) : 0;
      const moved = !c || c.t.s !== t.s || c.t.ox !== t.ox || c.t.oy !== t.oy;
      const covers = c && k > 0.5 && k < 2 && left <= 0 && top <= 0
        && left + k * c.canvas.width / c.dpr >= w && top + k * c.canvas.height / c.dpr >= h;
      if (!c || !c.valid || c.w !== w || c.h !== h || c.dpr !== dpr || !covers || (moved && !this.osd.isAnimating())) {
        this.renderCache(t, w, h, dpr);
        ctx.drawImage(this.cache.canvas, -Math.round(CACHE_MARGIN * w * dpr), -Math.round(CACHE_MARGIN * h * dpr));
      } else {
        ctx.setTransform(k, 0, 0, k, dpr * left, dpr * top);
        ctx.drawImage(c.canvas, 0, 0);
      }
    } else this.root.dataset.annotationsDrawn = "0";
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    this.drawPending(ctx, t);
    this.drawDraft(ctx, t);
    this.drawQuery(ctx, t);
    const ms = performance.now() - started;
    if (this.drawMs.length >= 5000) this.drawMs.shift();
    this.drawMs.push(ms);
    if (this.firstDrawAt === null && this.items.length && this.visible) this.firstDrawAt = performance.now();
  }

  // every annotation in the view (+ margin) at transform t, into the cache canvas
  renderCache(t, w, h, dpr) {
    const cw = Math.round((1 + 2 * CACHE_MARGIN) * w * dpr);
    const ch = Math.round((1 + 2 * CACHE_MARGIN) * h * dpr);
    if (!this.cache) this.cache = { canvas: document.createElement("canvas") };
    const c = this.cache;
    if (c.canvas.width !== cw || c.canvas.height !== ch) { c.canvas.width = cw; c.canvas.height = ch; }
    Object.assign(c, { t, w, h, dpr, valid: true });
    const ctx = c.canvas.getContext("2d");
    ctx.setTransform(1, 0, 0, 1, 0, 0);
    ctx.clearRect(0, 0, cw, ch);
    // cache px = view px shifted by the margin
    const s = t.s;
    const ox = t.ox + CACHE_MARGIN * w;
    const oy = t.oy + CACHE_MARGIN * h;
    const pad = 8 / s;  // line widths
    const vx0 = -ox / s - pad; const vy0 = -oy / s - pad; const vx1 = (cw / dpr - ox) / s + pad; const vy1 = (ch / dpr - oy) / s + pad;
    let drawn = 0;
    const byColour = new Map();  // colour -> {thin, thick, points}: small shapes get hairlines (Skia's fast path), large ones 2 px
    const dots = new Map();
    for (const it of this.items) {
      const [x0, y0, x1, y1] = it.shape.bbox;
      if (x1 < vx0 || y1 < vy0 || x0 > vx1 || y0 > vy1) continue;  // culled: outside the view
      drawn += 1;
      const colour = it.a.color || DEFAULT_COLOUR;
      const size = Math.max(x1 - x0, y1 - y0) * s;
      if (it.shape.kind !== "points" && size < 3) {
        if (!dots.has(colour)) dots.set(colour, []);
        dots.get(colour).push(it);
        continue;
      }
      if (!byColour.has(colour)) byColour.set(colour, { thin: [], thick: [], points: [] });
      byColour.get(colour)[it.shape.kind === "points" ? "points" : size < THICK_FROM_PX ? "thin" : "thick"].push(it);
    }
    ctx.setTransform(dpr * s, 0, 0, dpr * s, dpr * ox, dpr * oy);
    ctx.lineJoin = "round";
    const r = 4 / s;
    for (const [colour, { thin, thick, points }] of byColour) {
      ctx.strokeStyle = colour;
      ctx.fillStyle = colour;
      ctx.lineWidth = 1 / (dpr * s);  // one device pixel
      for (const it of thin) ctx.stroke(it.shape.path);
      ctx.lineWidth = 2 / s;
      for (const it of thick) ctx.stroke(it.shape.path);
      for (const it of points) for (const [x, y] of it.shape.points) { ctx.beginPath(); ctx.arc(x, y, r, 0, 2 * Math.PI); ctx.fill(); }
    }
    // shapes smaller than 3 screen px: one dot each, one fill per colour
    for (const [colour, list] of dots) {
      ctx.fillStyle = colour;
      ctx.beginPath();
      for (const it of list) {
        const [x0, y0, x1, y1] = it.shape.bbox;
        ctx.rect((x0 + x1) / 2 - 1 / s, (y0 + y1) / 2 - 1 / s, 2 / s, 2 / s);
      }
      ctx.fill();
    }
    const chosen = this.byId.get(this.selected);
    if (chosen) {
      ctx.lineWidth = 3.5 / s;
      ctx.strokeStyle = "#ffffff";
      ctx.stroke(chosen.shape.path);
      ctx.lineWidth = 2 / s;
      ctx.strokeStyle = chosen.a.color || DEFAULT_COLOUR;
      ctx.globalAlpha = 0.22;
      ctx.fillStyle = ctx.strokeStyle;
      if (chosen.shape.kind === "area") ctx.fill(chosen.shape.path, "evenodd");
      ctx.globalAlpha = 1;
      ctx.stroke(chosen.shape.path);
    }
    this.labels(ctx, byColour, { s, ox, oy }, dpr, cw / dpr, ch / dpr);
    this.root.dataset.annotationsDrawn = String(drawn);
  }

  // names of annotations wide enough on screen, widest first, never over one another (at most 100)
  labels(ctx, byColour, { s, ox, oy }, dpr, w, h) {
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    ctx.font = "600 12px system-ui, sans-serif";
    ctx.textBaseline = "bottom";
    const wide = [];
    for (const { thick } of byColour.values()) for (const it of thick) if (it.a.name && (it.shape.bbox[2] - it.shape.bbox[0]) * s >= 70) wide.push(it);
    wide.sort((a, b) => (b.shape.bbox[2] - b.shape.bbox[0]) - (a.shape.bbox[2] - a.shape.bbox[0]));
    const placed = [];
    for (const it of wide) {
      if (placed.length >= 100) break;
      const [x0, y0] = it.shape.bbox;
      const x = Math.max(2, x0 * s + ox);
      const y = Math.max(16, y0 * s + oy - 2);
      if (x > w || y > h + 14) continue;
      const text = it.a.class_name ? `${it.a.name} · ${it.a.class_name}` : it.a.name;
      const tw = ctx.measureText(text).width + 8;
      const box = [x, y - 15, x + tw, y];
      if (placed.some((q) => box[0] < q[2] && q[0] < box[2] && box[1] < q[3] && q[1] < box[3])) continue;
      placed.push(box);
      ctx.fillStyle = "rgba(17, 24, 39, 0.72)";
      ctx.fillRect(x, y - 15, tw, 15);
      ctx.fillStyle = "#ffffff";
      ctx.fillText(text, x + 4, y - 1);
    }
  }

  screen({ s, ox, oy }, p) { return [p.x * s + ox, p.y * s + oy]; }

  drawPending(ctx, t) {
    if (!this.pending || this.selected !== "new") return;
    const shape = shapeOf(this.pending);
    const dpr = window.devicePixelRatio || 1;
    ctx.save();
    ctx.setTransform(dpr * t.s, 0, 0, dpr * t.s, dpr * t.ox, dpr * t.oy);
    ctx.lineWidth = 2 / t.s;
    ctx.setLineDash([8 / t.s, 5 / t.s]);
    ctx.strokeStyle = this.form?.elements.color.value || DEFAULT_COLOUR;
    ctx.stroke(shape.path);
    ctx.restore();
  }

  drawDraft(ctx, t) {
    const d = this.draft;
    if (!d || !d.points.length) return;
    const pts = d.points.map((p) => this.screen(t, p));
    ctx.save();
    ctx.lineWidth = 2;
    ctx.setLineDash([6, 4]);
    ctx.strokeStyle = d.kind === "box" ? "#111827" : "#8a356f";
    ctx.fillStyle = d.kind === "box" ? "rgba(17, 24, 39, 0.12)" : "rgba(138, 53, 111, 0.12)";
    ctx.beginPath();
    if (d.kind === "polygon") {
      pts.forEach(([x, y], i) => (i ? ctx.lineTo(x, y) : ctx.moveTo(x, y)));
      if (d.cursor) ctx.lineTo(...this.screen(t, d.cursor));
      ctx.stroke();
      ctx.setLineDash([]);
      ctx.fillStyle = "#8a356f";
      pts.forEach(([x, y], i) => ctx.fillRect(x - (i ? 3 : 5), y - (i ? 3 : 5), i ? 6 : 10, i ? 6 : 10));
    } else if (d.cursor) {
      const [x0, y0] = pts[0];
      const [x1, y1] = this.screen(t, d.cursor);
      ctx.rect(Math.min(x0, x1), Math.min(y0, y1), Math.abs(x1 - x0), Math.abs(y1 - y0));
      ctx.fill();
      ctx.stroke();
    }
    ctx.restore();
  }

  drawQuery(ctx, t) {
    const q = this.query;
    if (!q) return;
    const [x0, y0] = this.screen(t, { x: q[0], y: q[1] });
    const [x1, y1] = this.screen(t, { x: q[2], y: q[3] });
    ctx.save();
    ctx.lineWidth = 2;
    ctx.setLineDash([4, 3]);
    ctx.strokeStyle = "#111827";
    ctx.strokeRect(x0, y0, x1 - x0, y1 - y0);
    ctx.restore();
  }

  // -- pointer input ---------------------------------------------------------------------------------------
  imagePoint(position) {
    const item = this.sv.item();
    const p = item.viewerElementToImageCoordinates(position);
    return { x: p.x, y: p.y };
  }

  press(event) {
    if (this.tool !== "rect" && this.tool !== "box") return;
    this.draft = { kind: this.tool, points: [this.imagePoint(event.position)], cursor: null };
  }

  drag(event) {
    if (!this.draft || this.draft.kind === "polygon") return;
    event.preventDefaultAction = true;  // drawing, not panning
    this.draft.cursor = this.imagePoint(event.position);
    this.draw();
  }

  release(event) {
    const d = this.draft;
    if (!d || d.kind === "polygon") return;
    this.draft = null;
    const end = d.cursor ? this.imagePoint(event.position) : null;
    const [a] = d.points;
    const t = this.transform();
    if (!end || Math.abs(end.x - a.x) * t.s < 4 || Math.abs(end.y - a.y) * t.s < 4) { this.draw(); return; }  // a click, not a box
    this.setTool("pan");
    if (d.kind === "rect") this.newShape(rectGeometry(a, end));
    else this.searchBox(a, end);
  }

  click(event) {
    if (!event.quick) return;
    const p = this.imagePoint(event.position);
    if (this.tool === "point") { event.preventDefaultAction = true; this.setTool("pan"); this.searchPoint(p); return; }
    if (this.tool === "polygon") { event.preventDefaultAction = true; this.addVertex(p, event.position); return; }
    if (this.tool !== "pan" || event.preventDefaultAction) return;  // a selected tile's box took the click
    const hit = this.hitTest(p);
    if (hit) { event.preventDefaultAction = true; this.select(hit.a.id); }
  }

  doubleClick(event) {
    if (this.tool !== "polygon") return;
    event.preventDefaultAction = true;  // no zoom: it closes the polygon
    this.closePolygon();
  }

  hover(event) {
    if (!this.draft || this.draft.kind !== "polygon") return;
    const rect = this.osd.canvas.getBoundingClientRect();
    this.draft.cursor = this.imagePoint(new this.sv.OSD.Point(event.clientX - rect.left, event.clientY - rect.top));
    this.draw();
  }

  addVertex(p, position) {
    if (!this.draft) this.draft = { kind: "polygon", points: [], cursor: null };
    const pts = this.draft.points;
    const t = this.transform();
    if (pts.length) {
      const near = (q, px) => Math.hypot(q.x * t.s + t.ox - position.x, q.y * t.s + t.oy - position.y) < px;
      if (pts.length >= 3 && near(pts[0], 8)) { this.closePolygon(); return; }
      if (near(pts[pts.length - 1], 4)) return;  // the second click of a double-click
    }
    pts.push(p);
    this.status(`${pts.length} corner${pts.length === 1 ? "" : "s"}: double-click, Enter or a click on the first corner closes the polygon`);
    this.draw();
  }

  closePolygon() {
    const pts = this.draft?.points || [];
    if (pts.length < 3) { this.status("a polygon needs at least 3 corners"); return; }
    const ring = pts.map((p) => [round2(p.x), round2(p.y)]);
    ring.push([...ring[0]]);
    this.draft = null;
    this.setTool("pan");
    this.newShape({ type: "Polygon", coordinates: [ring] });
  }

  key(event) {
    const typing = /^(INPUT|TEXTAREA|SELECT)$/.test(event.target?.tagName || "");
    if (event.key === "Escape" && (this.tool !== "pan" || this.draft)) {
      event.preventDefault();
      this.draft = null;
      this.setTool("pan");
      this.status("cancelled");
      this.draw();
    } else if (event.key === "Escape" && this.selected === "new") {  // a drawn shape not saved yet goes
      event.preventDefault();
      this.closeForm();
      this.status("cancelled");
    } else if (!typing && this.draft?.kind === "polygon" && event.key === "Enter") {
      event.preventDefault();
      this.closePolygon();
    } else if (!typing && this.draft?.kind === "polygon" && event.key === "Backspace") {
      event.preventDefault();
      this.draft.points.pop();
      this.draw();
    }
  }

  hitTest(p) {
    const t = this.transform();
    const tol = 5 / t.s;
    let best = null;
    let bestArea = Infinity;
    for (const it of this.items) {
      const [x0, y0, x1, y1] = it.shape.bbox;
      if (p.x < x0 - tol || p.x > x1 + tol || p.y < y0 - tol || p.y > y1 + tol) continue;
      let inside;
      if (it.shape.kind === "area") inside = this.probe.isPointInPath(it.shape.path, p.x, p.y, "evenodd");
      else if (it.shape.kind === "points") inside = it.shape.points.some(([x, y]) => Math.hypot(x - p.x, y - p.y) <= tol);
      else { this.probe.lineWidth = 2 * tol; inside = this.probe.isPointInStroke(it.shape.path, p.x, p.y); }
      const area = (x1 - x0) * (y1 - y0);
      if (inside && area < bestArea) { best = it; bestArea = area; }
    }
    return best;
  }

  // -- tools -----------------------------------------------------------------------------------------------
  buildTools() {
    this.toolButtons = Object.entries(TOOLS).map(([key, [label, title]]) => el("button", {
      type: "button", class: "btn btn-small", "data-tool": key, title, "aria-pressed": String(key === this.tool),
      onclick: () => this.setTool(this.tool === key ? "pan" : key),
    }, label));
    this.hint = el("p", { class: "muted small tool-hint", id: "annotation-hint", "aria-live": "polite" });
    clear(this.toolsBox,
      el("div", { class: "btn-row annotation-tools", role: "toolbar", "aria-label": "Drawing and region search tools" },
        el("span", { class: "small tool-group", text: "Draw:" }), this.toolButtons.slice(0, 3),
        el("span", { class: "small tool-group", text: "Find similar regions:" }), this.toolButtons.slice(3)),
      this.hint);
    this.setTool("pan");
  }

  setTool(name) {
    this.tool = name;
    this.sv.tool = name === "pan" ? null : name;  // viewer.js leaves the clicks to us while a tool is on
    if (name !== "polygon" && this.draft?.kind === "polygon") this.draft = null;
    this.toolButtons.forEach((b) => b.setAttribute("aria-pressed", String(b.dataset.tool === name)));
    this.root.classList.toggle("drawing", name !== "pan");
    this.root.dataset.tool = name;
    this.hint.textContent = TOOLS[name][1];
  }

  // -- the panel: list, form, import/export ------------------------------------------------------------------
  buildPanel() {
    this.count = el("span", { class: "muted small" });
    this.filter = el("input", { type: "search", id: "annotation-filter", placeholder: "name or class", spellcheck: "false" });
    this.filter.addEventListener("input", () => this.renderList());
    this.list = el("ul", { class: "annotation-list", id: "annotation-list", "aria-label": "Annotations on this slide" });
    this.note = el("p", { class: "muted small", id: "annotation-status", role: "status", "aria-live": "polite" });
    const importInput = el("input", { type: "file", id: "annotation-import", class: "visually-hidden",
      accept: ".geojson,.json,application/geo+json,application/json" });
    importInput.addEventListener("change", () => { const file = importInput.files[0]; importInput.value = ""; if (file) this.importFile(file); });
    this.download = el("a", { class: "btn btn-small", id: "annotation-download", href: "#",
      title: "All annotations of this slide as a GeoJSON FeatureCollection QuPath opens (File › Import objects, or drag it onto the slide)" },
    "Download GeoJSON");
    const show = el("input", { type: "checkbox", id: "annotation-show", checked: true });
    show.addEventListener("change", () => { this.visible = show.checked; this.invalidate(); this.draw(); });
    this.formBox = el("div", { id: "annotation-form-box" });
    clear(this.panel,
      el("div", { class: "annotation-head" },
        el("h3", {}, "Annotations ", this.count),
        el("div", { class: "btn-row" },
          el("label", { class: "check small", title: "outline the slide's annotations on the viewer" }, show, "Show on the slide"),
          el("label", { class: "btn btn-small", for: "annotation-import", title: "A GeoJSON file exported from QuPath (File › Export objects as GeoJSON), or one downloaded here" },
            "Import QuPath GeoJSON"), importInput, this.download)),
      this.note, this.formBox,
      el("div", { class: "field" }, el("label", { for: "annotation-filter", class: "small" }, "Filter annotations"), this.filter),
      this.list);
  }

  status(text) { if (this.note) this.note.textContent = text; }

  renderList() {
    const q = this.filter.value.trim().toLowerCase();
    const shown = q ? this.items.filter((it) => `${it.a.name} ${it.a.class_name || ""}`.toLowerCase().includes(q)) : this.items;
    this.count.textContent = `(${this.items.length.toLocaleString("en-US")})`;
    const rows = shown.slice(0, LIST_LIMIT).map((it) => {
      const swatch = el("span", { class: "swatch", "aria-hidden": "true" });
      swatch.style.background = it.a.color || DEFAULT_COLOUR;
      return el("li", { "data-id": it.a.id }, el("button", { type: "button", class: "annotation-pick", "aria-current": String(it.a.id === this.selected),
        onclick: () => { this.select(it.a.id); this.zoomTo(it); } },
      swatch, el("span", { text: it.a.name || `#${it.a.id}` }), el("span", { class: "muted small", text: it.a.class_name || "" })));
    });
    if (shown.length > LIST_LIMIT) rows.push(el("li", { class: "muted small", text: `${(shown.length - LIST_LIMIT).toLocaleString("en-US")} more: filter by name or class, or click them on the slide` }));
    if (!this.items.length) rows.push(el("li", { class: "muted small", text: "none yet: draw one with Rectangle or Polygon, or import a QuPath GeoJSON file" }));
    clear(this.list, rows);
  }

  zoomTo(it) {
    const item = this.sv.item();
    const [x0, y0, x1, y1] = it.shape.bbox;
    const pad = Math.max(x1 - x0, y1 - y0, 200) * 0.3;
    this.osd.viewport.fitBounds(item.imageToViewportRectangle(x0 - pad, y0 - pad, x1 - x0 + 2 * pad, y1 - y0 + 2 * pad));
  }

  newShape(geometry) {
    this.pending = geometry;
    this.selected = "new";
    this.invalidate();
    this.status("name the shape, give it a class and a colour, and save it");
    this.openForm(null);
    this.draw();
  }

  select(id) {
    this.pending = null;
    this.selected = id;
    this.openForm(this.byId.get(id).a);
    this.renderList();
    this.invalidate();
    this.draw();
  }

  closeForm() {
    if (this.formBox) clear(this.formBox);
    this.form = null;
    if (this.selected !== null) { this.selected = null; this.pending = null; this.renderList(); this.invalidate(); this.draw(); }
  }

  // the form of a new shape (annotation null) or of a saved one
  openForm(annotation) {
    const isNew = !annotation;
    const classes = el("datalist", { id: "annotation-classes" }, CLASSES.map(([name]) => el("option", { value: name })));
    const name = el("input", { id: "annotation-name", name: "name", type: "text", required: true, maxlength: "200", spellcheck: "false",
      value: annotation?.name ?? `Region ${this.items.length + 1}` });
    const cls = el("input", { id: "annotation-class", name: "class_name", type: "text", list: "annotation-classes", spellcheck: "false",
      maxlength: "200", value: annotation?.class_name ?? "" });
    const colour = el("input", { id: "annotation-colour", name: "color", type: "color", value: hexColour(annotation?.color) });
    let colourTouched = !isNew;
    colour.addEventListener("input", () => { colourTouched = true; this.draw(); });
    cls.addEventListener("input", () => {  // QuPath's colour for its classes, unless one was picked
      const known = CLASSES.find(([n]) => n.toLowerCase() === cls.value.trim().toLowerCase());
      if (known && !colourTouched) { colour.value = known[1]; this.draw(); }
    });
    const status = el("span", { class: "muted small", id: "annotation-form-status", "aria-live": "polite" });
    const buttons = isNew
      ? [el("button", { type: "submit", class: "btn btn-small btn-primary" }, "Save annotation"),
        el("button", { type: "button", class: "btn btn-small", onclick: () => this.closeForm() }, "Cancel")]
      : [el("button", { type: "submit", class: "btn btn-small btn-primary" }, "Save changes"),
        el("button", { type: "button", class: "btn btn-small", title: "tiles across the archive that look like the tissue inside this annotation",
          onclick: () => this.searchAnnotation(annotation) }, "Find similar regions"),
        el("button", { type: "button", class: "btn btn-small", onclick: () => this.zoomTo(this.byId.get(annotation.id)) }, "Zoom to it"),
        el("button", { type: "button", class: "btn btn-small btn-danger", onclick: () => this.deleteAnnotation(annotation, status) }, "Delete"),
        el("button", { type: "button", class: "btn btn-small btn-quiet", onclick: () => this.closeForm() }, "Close")];
    const form = el("form", { class: "annotation-form", id: "annotation-form", "aria-label": isNew ? "New annotation" : `Annotation ${annotation.name}` },
      el("h4", { text: isNew ? "New annotation" : `Annotation ${annotation.name || `#${annotation.id}`}` }),
      el("div", { class: "field-row" },
        el("div", { class: "field" }, el("label", { for: "annotation-name" }, "Name"), name),
        el("div", { class: "field" }, el("label", { for: "annotation-class" }, "Class"), cls, classes),
        el("div", { class: "field field-colour" }, el("label", { for: "annotation-colour" }, "Colour"), colour)),
      isNew ? null : el("p", { class: "muted small", text: `${annotation.source ? `from ${annotation.source} · ` : ""}${annotation.shape || annotation.geometry.type}` }),
      el("div", { class: "btn-row" }, buttons, status));
    form.addEventListener("submit", (event) => { event.preventDefault(); this.save(annotation, status); });
    this.form = form;
    clear(this.formBox, form);
    if (isNew) name.select();
  }

  async save(annotation, status) {
    const f = this.form.elements;
    const body = { name: f.name.value.trim(), class_name: f.class_name.value.trim() || null, color: f.color.value };
    if (!body.name) { f.name.focus(); return; }
    status.textContent = "saving…";
    try {
      let saved;
      if (annotation) saved = await api(`/annotations/${annotation.id}`, { method: "PUT", body });
      else saved = await api(`${slidePath(this.slide.slide)}/annotations`, { method: "POST", body: { ...body, geometry: this.pending } });
      this.pending = null;
      this.upsert(saved);
      this.select(saved.id);
      this.status(`saved ${saved.name}`);
    } catch (error) { status.textContent = error.message; }
  }

  async deleteAnnotation(annotation, status) {
    try {
      await api(`/annotations/${annotation.id}`, { method: "DELETE" });
      this.selected = null;
      this.remove(annotation.id);
      this.closeForm();
      this.status(`deleted ${annotation.name}`);
    } catch (error) { status.textContent = error.message; }
  }

  async importFile(file) {
    if (!this.slide) return;
    const form = new FormData();
    form.append("file", file);
    this.status(`importing ${file.name}…`);
    try {
      const data = await api(`${slidePath(this.slide.slide)}/annotations/import`, { method: "POST", form });
      data.annotations.forEach((a) => { const it = { a, shape: shapeOf(a.geometry) }; this.items.push(it); this.byId.set(a.id, it); });
      this.afterChange();
      const skipped = data.skipped?.length ? `; ${data.skipped.length} feature${data.skipped.length === 1 ? "" : "s"} of other slides left out` : "";
      this.status(`imported ${data.imported} annotation${data.imported === 1 ? "" : "s"} from ${file.name}${skipped}`);
    } catch (error) { this.status(error.message); }
  }

  // -- region search ---------------------------------------------------------------------------------------
  // a slide without a recorded µm/px has no tile positions: region search cannot place a point or box on it
  placeable() {
    if (this.slide?.mpp && this.slide?.tile_px) return true;
    this.status("this slide records no µm per pixel, so a point or box on it cannot be searched");
    return false;
  }

  searchPoint(p) {
    if (!this.placeable()) return;
    const mpp = this.slide.mpp;
    const side = this.slide.tile_px;
    const col = Math.floor(p.x / side); const row = Math.floor(p.y / side);
    this.query = [col * side, row * side, (col + 1) * side, (row + 1) * side];  // the grid tile around the point (a stored tile may be offset)
    this.draw();
    this.search({ slide_id: this.slide.slide_id, x_um: round2(p.x * mpp), y_um: round2(p.y * mpp) }, `point-${Math.round(p.x)}-${Math.round(p.y)}`);
  }

  searchBox(a, b) {
    if (!this.placeable()) return;
    const mpp = this.slide.mpp;
    const [x0, x1] = [Math.min(a.x, b.x), Math.max(a.x, b.x)];
    const [y0, y1] = [Math.min(a.y, b.y), Math.max(a.y, b.y)];
    const box = [x0 * mpp, y0 * mpp, (x1 - x0) * mpp, (y1 - y0) * mpp].map(round2);
    const tileUm = this.slide.tile_um;
    this.query = [x0, y0, x1, y1];
    this.draw();
    if (box[2] < tileUm || box[3] < tileUm) {
      this.status(`the box is ${Math.round(box[2])} × ${Math.round(box[3])} µm: draw at least one tile (${Math.round(tileUm)} × ${Math.round(tileUm)} µm)`);
      return;
    }
    this.search({ slide_id: this.slide.slide_id, box }, "box");
  }

  searchAnnotation(annotation) {
    this.query = null;
    this.search({ slide: this.slide.slide, annotation: annotation.id }, (annotation.name || `annotation-${annotation.id}`).replace(/[^\w.-]+/g, "-"));
  }

  async search(query, label) {
    const body = { ...query, ...SEARCH };
    const section = this.results.closest("section");
    section.hidden = false;
    clear(this.results, el("p", { class: "muted", text: "searching…" }));
    this.status("searching the archive for similar regions…");
    try {
      const result = await api("/search/tiles", { method: "POST", body });
      const status = el("span", { class: "muted small", "aria-live": "polite" });
      const button = el("button", { type: "button", class: "btn btn-small", id: "hits-geojson",
        title: "Each hit tile as a rectangle with its score and patient, for QuPath (File › Import objects)",
        onclick: () => this.downloadHits(body, `similar-to-${label}.geojson`, status) }, "Download hits as GeoJSON");
      renderRegions(result, this.results, { actions: el("div", { class: "btn-row" }, button, status) });
      const n = result.patients.length;
      clear(this.note, el("a", { href: "#region-results-panel", text: `${n} patient${n === 1 ? "" : "s"} with similar regions` }), " (below the viewer)");
    } catch (error) {
      fail(error, this.results);
      clear(this.note, el("a", { href: "#region-results-panel", text: "the region search failed" }), `: ${error.message}`);
    }
  }

  async downloadHits(body, filename, status) {
    status.textContent = "preparing…";
    try {
      const response = await api("/search/tiles", { method: "POST", body: { ...body, format: "geojson" }, raw: true });
      if (!response.ok) {
        let message = `HTTP ${response.status}`;
        try { message = (await response.json()).error?.message || message; } catch { /* not JSON */ }
        throw new ApiFailure(response.status, message);
      }
      saveBlob(await response.blob(), filename);
      status.textContent = `downloaded ${filename}`;
    } catch (error) { status.textContent = error.message; }
  }
}

// viewer.js calls this once the patient page's viewer shows its first slide.
export async function attachAnnotations(slideViewer) {
  const layer = new AnnotationLayer(slideViewer, { tools: $("#annotation-tools"), panel: $("#annotation-panel"), results: $("#region-results") });
  await layer.attach();
  slideViewer.root.dataset.annotationsReady = "1";
  return layer;
}
