// Small SVG plots drawn by hand: line plots (ROC, few-shot curves) and a scatter (the cohort map).

const NS = "http://www.w3.org/2000/svg";
export const PALETTE = ["#245a8d", "#c0392b", "#2e8b57", "#8a356f", "#d68910", "#17a2b8", "#6c5ce7", "#7f8c8d", "#b7950b", "#1abc9c"];

function svg(tag, attrs = {}, ...children) {
  const node = document.createElementNS(NS, tag);
  for (const [k, v] of Object.entries(attrs)) if (v !== null && v !== undefined) node.setAttribute(k, v);
  for (const child of children.flat()) if (child) node.append(child);
  return node;
}

function ticks(lo, hi, count = 5) {
  const span = hi - lo || 1;
  const raw = span / count;
  const mag = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 2.5, 5, 10].map((m) => m * mag).find((s) => span / s <= count) || raw;
  const out = [];
  for (let v = Math.ceil(lo / step) * step; v <= hi + step * 1e-9; v += step) out.push(Number(v.toFixed(10)));
  return out;
}

function frame({ width, height, margin, x, y, xLabel, yLabel, xTicks, yTicks, xFormat, yFormat, title }) {
  const root = svg("svg", { viewBox: `0 0 ${width} ${height}`, class: "plot", role: "img", "aria-label": title || `${yLabel} by ${xLabel}` });
  if (title) root.append(svg("title", {}, document.createTextNode(title)));
  const grid = svg("g", { class: "grid" });
  const axes = svg("g", { class: "axis" });
  for (const t of yTicks) {
    grid.append(svg("line", { x1: margin.left, x2: width - margin.right, y1: y(t), y2: y(t) }));
    axes.append(svg("text", { x: margin.left - 6, y: y(t) + 4, "text-anchor": "end" }, document.createTextNode(yFormat(t))));
  }
  for (const t of xTicks) {
    grid.append(svg("line", { x1: x(t), x2: x(t), y1: margin.top, y2: height - margin.bottom }));
    axes.append(svg("text", { x: x(t), y: height - margin.bottom + 16, "text-anchor": "middle" }, document.createTextNode(xFormat(t))));
  }
  axes.append(svg("line", { x1: margin.left, x2: width - margin.right, y1: height - margin.bottom, y2: height - margin.bottom }));
  axes.append(svg("line", { x1: margin.left, x2: margin.left, y1: margin.top, y2: height - margin.bottom }));
  root.append(grid, axes);
  root.append(svg("text", { class: "axis-title", x: (margin.left + width - margin.right) / 2, y: height - 6, "text-anchor": "middle" }, document.createTextNode(xLabel)));
  root.append(svg("text", { class: "axis-title", x: 14, y: (margin.top + height - margin.bottom) / 2, "text-anchor": "middle",
    transform: `rotate(-90 14 ${(margin.top + height - margin.bottom) / 2})` }, document.createTextNode(yLabel)));
  return root;
}

// series: [{points: [[x, y], ...], cls, label}]; band: {points: [[x, lo, hi]]}; logX: log2 x axis
export function linePlot({ series, band, xLabel, yLabel, xDomain = [0, 1], yDomain = [0, 1], diagonal = false, logX = false,
  width = 420, height = 320, xTickValues, title, step = false }) {
  const margin = { top: 12, right: 14, bottom: 42, left: 48 };
  const tx = logX ? Math.log2 : (v) => v;
  const [x0, x1] = [tx(xDomain[0]), tx(xDomain[1])];
  const x = (v) => margin.left + ((tx(v) - x0) / (x1 - x0 || 1)) * (width - margin.left - margin.right);
  const y = (v) => height - margin.bottom - ((v - yDomain[0]) / (yDomain[1] - yDomain[0] || 1)) * (height - margin.top - margin.bottom);
  const root = frame({ width, height, margin, x, y, xLabel, yLabel, title,
    xTicks: xTickValues || ticks(xDomain[0], xDomain[1]), yTicks: ticks(yDomain[0], yDomain[1]),
    xFormat: (t) => (logX ? String(t) : t.toFixed(1).replace(/\.0$/, "")), yFormat: (t) => t.toFixed(1).replace(/\.0$/, "") });
  if (diagonal) root.append(svg("line", { class: "diag", x1: x(xDomain[0]), y1: y(yDomain[0]), x2: x(xDomain[1]), y2: y(yDomain[1]) }));
  if (band?.points?.length) {
    const upper = band.points.map(([bx, , hi]) => `${x(bx)},${y(Math.min(hi, yDomain[1]))}`);
    const lower = band.points.slice().reverse().map(([bx, lo]) => `${x(bx)},${y(Math.max(lo, yDomain[0]))}`);
    root.append(svg("polygon", { class: "band", points: [...upper, ...lower].join(" ") }));
  }
  for (const s of series) {
    if (!s.points.length) continue;
    let d = "";
    s.points.forEach(([px, py], i) => {
      if (i === 0) d += `M${x(px)},${y(py)}`;
      else if (step) d += `H${x(px)}V${y(py)}`;
      else d += `L${x(px)},${y(py)}`;
    });
    const path = svg("path", { class: `curve ${s.cls || ""}`, d });
    if (s.label) path.append(svg("title", {}, document.createTextNode(s.label)));
    root.append(path);
    if (s.markers) for (const [px, py] of s.points) root.append(svg("circle", { cx: x(px), cy: y(py), r: 3.5, fill: "#245a8d" }));
  }
  return root;
}

// points: [{x, y, color, label, href}]; hover/focus shows a tooltip, click/Enter opens href
export function scatter(container, { points, width = 640, height = 440, title, onOpen }) {
  const margin = { top: 12, right: 14, bottom: 36, left: 44 };
  const xs = points.map((p) => p.x);
  const ys = points.map((p) => p.y);
  const pad = (lo, hi) => { const d = (hi - lo) * 0.06 || 1; return [lo - d, hi + d]; };
  const [xa, xb] = pad(Math.min(...xs), Math.max(...xs));
  const [ya, yb] = pad(Math.min(...ys), Math.max(...ys));
  const x = (v) => margin.left + ((v - xa) / (xb - xa)) * (width - margin.left - margin.right);
  const y = (v) => height - margin.bottom - ((v - ya) / (yb - ya)) * (height - margin.top - margin.bottom);
  const root = frame({ width, height, margin, x, y, xLabel: "dimension 1", yLabel: "dimension 2", title,
    xTicks: ticks(xa, xb), yTicks: ticks(ya, yb), xFormat: (t) => String(Number(t.toFixed(2))), yFormat: (t) => String(Number(t.toFixed(2))) });
  const wrap = document.createElement("div");
  wrap.className = "plot-wrap";
  const tip = document.createElement("div");
  tip.className = "plot-tip";
  tip.hidden = true;
  const show = (p, circle) => {
    const box = root.getBoundingClientRect();
    const scale = box.width / width;
    tip.textContent = p.label;
    tip.style.left = `${Number(circle.getAttribute("cx")) * scale}px`;
    tip.style.top = `${Number(circle.getAttribute("cy")) * scale}px`;
    tip.hidden = false;
  };
  const dots = svg("g");
  for (const p of points) {
    const circle = svg("circle", { class: "pt", cx: x(p.x), cy: y(p.y), r: 5.5, fill: p.color, tabindex: "0", role: "link",
      "aria-label": p.label, "data-patient": p.patient });
    circle.addEventListener("mouseenter", () => show(p, circle));
    circle.addEventListener("focus", () => show(p, circle));
    circle.addEventListener("mouseleave", () => { tip.hidden = true; });
    circle.addEventListener("blur", () => { tip.hidden = true; });
    circle.addEventListener("click", () => onOpen?.(p));
    circle.addEventListener("keydown", (event) => { if (event.key === "Enter" || event.key === " ") { event.preventDefault(); onOpen?.(p); } });
    dots.append(circle);
  }
  root.append(dots);
  wrap.append(root, tip);
  container.replaceChildren(wrap);
  return root;
}
