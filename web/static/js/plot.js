// The Cohorts map (a scatter) and the Probes page's curves (ROC, few-shot), drawn on a canvas by
// Chart.js. Chart.js is served from /static/vendor (installed by `make` from npm, never a CDN) and
// loaded on first use; a chart's instance is Chart.getChart(canvas) (the tests read it).
import { ApiFailure, el } from "./common.js";

const CHART_URL = "/static/vendor/chartjs/chart.umd.min.js";
export const PALETTE = ["#245a8d", "#c0392b", "#2e8b57", "#8a356f", "#d68910", "#17a2b8", "#6c5ce7", "#7f8c8d", "#b7950b", "#1abc9c"];
const PRIMARY = "#245a8d";
const FOLD = "#9bb4cf";
const GRID = "#e8ebef";
const TEXT = "#3b4450";

let loading = null;
export function loadChart() {
  if (window.Chart) return Promise.resolve(window.Chart);
  if (!loading) {
    loading = new Promise((resolve, reject) => {
      const script = el("script", { src: CHART_URL });
      script.addEventListener("load", () => resolve(window.Chart));
      script.addEventListener("error", () => {
        loading = null;
        reject(new ApiFailure(404, "the charts are not installed on this server (Chart.js is missing: run `make install`)"));
      });
      document.head.append(script);
    });
  }
  return loading;
}

// A fixed-height box the chart fills (its width follows the page); the canvas is an image whose
// name says what it shows.
function frame(container, { height, title }) {
  const canvas = el("canvas", { role: "img", "aria-label": title, tabindex: "0" });
  const box = el("div", { class: "plot-box" }, canvas);
  box.style.height = `${height}px`;
  const tip = el("div", { class: "plot-tip", hidden: true, "aria-live": "polite" });
  const wrap = el("div", { class: "plot-wrap" }, box, tip);
  container.replaceChildren(wrap);
  return { canvas, tip };
}

function axis(title, extra = {}) {
  return { type: "linear", title: { display: true, text: title, color: "#2b3440", font: { weight: "600" } },
    grid: { color: GRID }, ticks: { color: TEXT }, ...extra };
}

function baseOptions(Chart) {
  Chart.defaults.font.family = getComputedStyle(document.body).fontFamily;
  return { animation: false, responsive: true, maintainAspectRatio: false, parsing: false };
}

// points: [{x, y, color, label, patient}]. Hovering a point (or stepping through them with the
// arrow keys while the map has focus) shows its label; a click (or Enter) calls onOpen(point).
// One dataset per colour keeps per-point work off the drawing loop (200,000 points draw).
export async function scatter(container, { points, height = 440, title, onOpen }) {
  const Chart = await loadChart();
  const { canvas, tip } = frame(container, { height, title: `${title}: ${points.length} points; focus and use the arrow keys to step through them, Enter opens one` });
  const groups = new Map();
  points.forEach((p, i) => {
    if (!groups.has(p.color)) groups.set(p.color, []);
    groups.get(p.color).push({ x: p.x, y: p.y, i });
  });
  // Chart.js reads unparsed data as sorted by x (its scale bounds and hit tests search it)
  for (const data of groups.values()) data.sort((a, b) => a.x - b.x);
  const radius = points.length > 5000 ? 2 : 5.5;
  const datasets = [...groups].map(([color, data]) => ({ data, backgroundColor: color, borderColor: "#fff", borderWidth: radius > 2 ? 1 : 0,
    pointRadius: radius, pointHoverRadius: radius + 1, pointHoverBorderColor: "#111", pointHoverBorderWidth: 2, hitRadius: 2 }));
  const pointAt = (active) => points[datasets[active.datasetIndex].data[active.index].i];
  const showTip = (label, x, y) => {
    tip.textContent = label;
    tip.style.left = `${x}px`;
    tip.style.top = `${y}px`;
    tip.hidden = false;
  };
  const chart = new Chart(canvas, {
    type: "scatter",
    data: { datasets },
    options: {
      ...baseOptions(Chart),
      events: ["mousemove", "mouseout", "click"],
      interaction: { mode: "nearest", intersect: true },
      scales: { x: axis("dimension 1", { grace: "6%" }), y: axis("dimension 2", { grace: "6%" }) },
      plugins: {
        legend: { display: false },
        tooltip: {
          enabled: false,
          external: ({ tooltip }) => {
            if (!tooltip.opacity || !tooltip.dataPoints?.length) { tip.hidden = true; return; }
            const [first] = tooltip.dataPoints;
            showTip(pointAt({ datasetIndex: first.datasetIndex, index: first.dataIndex }).label, first.element.x, first.element.y);
          },
        },
      },
      onHover: (event, active) => { canvas.style.cursor = active.length ? "pointer" : "default"; },
      onClick: (event, active) => { if (active.length && onOpen) onOpen(pointAt(active[0])); },
    },
  });
  // the keyboard: the points in the order given
  const where = points.map(() => null);
  datasets.forEach((d, datasetIndex) => d.data.forEach((p, index) => { where[p.i] = { datasetIndex, index }; }));
  let focused = -1;
  const focus = (i) => {
    focused = i;
    const active = [where[i]];
    chart.setActiveElements(active);
    chart.tooltip.setActiveElements(active, { x: 0, y: 0 });
    chart.update("none");
    const element = chart.getDatasetMeta(where[i].datasetIndex).data[where[i].index];
    showTip(points[i].label, element.x, element.y);
  };
  canvas.addEventListener("keydown", (event) => {
    if (!points.length) return;
    if (["ArrowRight", "ArrowDown"].includes(event.key)) { event.preventDefault(); focus((focused + 1) % points.length); }
    else if (["ArrowLeft", "ArrowUp"].includes(event.key)) { event.preventDefault(); focus(focused <= 0 ? points.length - 1 : focused - 1); }
    else if ((event.key === "Enter" || event.key === " ") && focused >= 0) { event.preventDefault(); onOpen?.(points[focused]); }
  });
  canvas.addEventListener("blur", () => { tip.hidden = true; });
  return chart;
}

// series: [{points: [[x, y], ...], fold, label, markers}]; band: {points: [[x, lo, hi]], label};
// logX: a log2 x axis (ticks at xTickValues); diagonal: the chance line of a ROC plot. Points in
// increasing x (ROC and few-shot curves are), as Chart.js reads unparsed data.
export async function linePlot(container, { series, band, xLabel, yLabel, xDomain = [0, 1], yDomain = [0, 1], diagonal = false, logX = false,
  height = 320, xTickValues, title, id }) {
  const Chart = await loadChart();
  const { canvas } = frame(container, { height, title: title || `${yLabel} by ${xLabel}` });
  if (id) canvas.id = id;
  const xy = (points) => points.map(([x, y]) => ({ x, y }));
  const datasets = [];
  if (diagonal) {
    datasets.push({ label: "chance", data: xy([[xDomain[0], yDomain[0]], [xDomain[1], yDomain[1]]]), borderColor: "#a3acb8", borderDash: [4, 4],
      borderWidth: 1, pointRadius: 0, pointHitRadius: 0 });
  }
  if (band?.points?.length) {
    const clamp = (v) => Math.min(yDomain[1], Math.max(yDomain[0], v));
    datasets.push({ label: `${band.label || "band"} (low)`, data: band.points.map(([x, lo]) => ({ x, y: clamp(lo) })), borderWidth: 0, pointRadius: 0, pointHitRadius: 0 });
    datasets.push({ label: band.label || "band", data: band.points.map(([x, , hi]) => ({ x, y: clamp(hi) })), borderWidth: 0, pointRadius: 0, pointHitRadius: 0,
      fill: "-1", backgroundColor: "rgba(36, 90, 141, .15)" });
  }
  for (const s of series) {
    if (!s.points.length) continue;
    datasets.push({ label: s.label, data: xy(s.points), borderColor: s.fold ? FOLD : PRIMARY, borderWidth: s.fold ? 1.2 : 2.5,
      pointRadius: s.markers ? 3.5 : 0, pointBackgroundColor: PRIMARY, pointHitRadius: 6, clip: s.markers ? false : undefined });  // markers on the edge stay whole
  }
  const fmtTick = (v) => String(Number(Number(v).toFixed(2)));
  const xScale = logX
    ? { type: "logarithmic", min: xDomain[0], max: xDomain[1], title: { display: true, text: xLabel, color: "#2b3440", font: { weight: "600" } },
      grid: { color: GRID }, ticks: { color: TEXT, callback: (v) => String(v) },
      afterBuildTicks: (scale) => { if (xTickValues) scale.ticks = xTickValues.map((value) => ({ value })); } }
    : axis(xLabel, { min: xDomain[0], max: xDomain[1], ticks: { color: TEXT, callback: fmtTick } });
  return new Chart(canvas, {
    type: "line",
    data: { datasets },
    options: {
      ...baseOptions(Chart),
      interaction: { mode: "nearest", intersect: false },
      scales: { x: xScale, y: axis(yLabel, { min: yDomain[0], max: yDomain[1], ticks: { color: TEXT, callback: fmtTick } }) },
      plugins: {
        legend: { display: false },
        tooltip: { filter: (item) => item.dataset.pointHitRadius !== 0,
          callbacks: { label: (item) => `${item.dataset.label}: (${fmtTick(item.parsed.x)}, ${fmtTick(item.parsed.y)})` } },
      },
    },
  });
}
