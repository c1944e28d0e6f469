// Shared helpers: API calls (CSRF header, one error shape), DOM building from text nodes only,
// toasts, the tile dialog, image placeholders, the patient type-ahead, the top-bar counts.

const CSRF = document.querySelector('meta[name="csrf-token"]')?.content || "";
export const PLACEHOLDER = "/static/img/no-slide.svg";

export class ApiFailure extends Error {
  constructor(status, message, field) {
    super(message);
    this.status = status;
    this.field = field;
  }
}

export async function api(path, { method = "GET", body, form, raw = false, signal } = {}) {
  const headers = { Accept: "application/json" };
  const init = { method, headers, credentials: "same-origin", signal };
  if (method !== "GET") headers["X-CSRF-Token"] = CSRF;
  if (form) init.body = form;
  else if (body !== undefined) {
    headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const response = await fetch(`/api/v1${path}`, init);
  if (response.status === 401) {
    window.location.assign(`/login?next=${encodeURIComponent(location.pathname + location.search)}`);
    throw new ApiFailure(401, "log in first");
  }
  if (raw) return response;
  let data = null;
  try { data = await response.json(); } catch { data = null; }
  if (!response.ok) {
    const err = data?.error || {};
    throw new ApiFailure(response.status, err.message || `HTTP ${response.status}`, err.field);
  }
  return data;
}

export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key === "class") node.className = value;
    else if (key === "text") node.textContent = value;
    else if (key === "dataset") Object.assign(node.dataset, value);
    else if (key.startsWith("on") && typeof value === "function") node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value === true ? "" : value);
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

export const $ = (selector, root = document) => root.querySelector(selector);

export function clear(node, ...children) {
  node.replaceChildren(...children.flat().filter((c) => c !== null && c !== undefined && c !== false));
  return node;
}

let toastTimer = null;
export function toast(message, bad = false) {
  const box = $("#toast");
  box.textContent = message;
  box.classList.toggle("bad", bad);
  box.hidden = false;
  clearTimeout(toastTimer);
  toastTimer = setTimeout(() => { box.hidden = true; }, bad ? 7000 : 3500);
}

export function fail(error, where) {
  const message = error instanceof ApiFailure ? error.message : `unexpected error: ${error.message || error}`;
  if (where) clear(where, el("p", { class: "alert", role: "alert", text: message }));
  else toast(message, true);
}

export const fmt = (x, digits = 3) => (x === null || x === undefined || Number.isNaN(x) ? "–" : Number(x).toFixed(digits));
export const fmtInt = (x) => (x === null || x === undefined ? "–" : Number(x).toLocaleString("en-US"));
export const patientUrl = (id) => `/patients/${encodeURIComponent(id)}`;

export function debounce(fn, ms = 250) {
  let timer = null;
  return (...args) => { clearTimeout(timer); timer = setTimeout(() => fn(...args), ms); };
}

export function image(url, alt, { cls = "", size, lazy = true } = {}) {
  const src = url ? (size ? `${url}${url.includes("?") ? "&" : "?"}size=${size}` : url) : PLACEHOLDER;
  const img = el("img", { src, alt, class: cls || null, loading: lazy ? "lazy" : "eager", decoding: "async" });
  img.addEventListener("error", () => { if (!img.src.endsWith(PLACEHOLDER)) img.src = PLACEHOLDER; }, { once: true });
  return img;
}

export function chips(labels, reference = {}) {
  const entries = Object.entries(labels || {});
  if (!entries.length) return el("span", { class: "muted small", text: "no labels" });
  return el("div", { class: "chips" }, entries.map(([name, value]) =>
    el("span", { class: `chip${reference[name] !== undefined && reference[name] === value ? " same" : ""}`,
      title: reference[name] === value ? "same as the query" : null }, `${name} `, el("b", { text: value ?? "–" }))));
}

export function badge(state) {
  return el("span", { class: `badge ${state}`, text: state });
}

export function progressBar(fraction) {
  const bar = el("div", { class: `progress${fraction === null || fraction === undefined ? " indeterminate" : ""}`, role: "progressbar",
    "aria-valuemin": "0", "aria-valuemax": "100", "aria-valuenow": fraction === null || fraction === undefined ? null : Math.round(fraction * 100) });
  const fill = el("span");
  if (fraction !== null && fraction !== undefined) fill.style.width = `${Math.round(fraction * 100)}%`;
  bar.append(fill);
  return bar;
}

// "Find similar regions": the Search page's region search, for a stored tile (slide id + top-left µm).
export function regionUrl(slideId, x, y) {
  return `/search?region_slide=${encodeURIComponent(slideId)}&x_um=${Number(x).toFixed(3)}&y_um=${Number(y).toFixed(3)}`;
}

export function regionLink(slideId, x, y, label = "Find similar regions") {
  return el("a", { class: "region-link", href: regionUrl(slideId, x, y), title: "tiles across the archive that look like this one", text: label });
}

export function showTile({ url, title, facts, region = null }) {
  const link = $("#tile-dialog-region");
  if (link) {
    link.hidden = !region;
    if (region) link.href = regionUrl(region.slide_id, region.x_um, region.y_um);
  }
  const dialog = $("#tile-dialog");
  $("#tile-dialog-title").textContent = title;
  const img = $("#tile-dialog-img");
  img.src = url || PLACEHOLDER;
  img.alt = title;
  clear($("#tile-dialog-facts"), Object.entries(facts).flatMap(([k, v]) => [el("dt", { text: k }), el("dd", { text: v })]));
  if (!dialog.open) dialog.showModal();
}

// The one polling loop: calls fn() now and then every `interval` ms (after the previous call has
// settled) until until(value) holds, and returns that value. fn's errors end the loop (it throws
// them); `signal` (an AbortSignal) stops it between calls, rejecting with the signal's reason.
export function poll(fn, { interval = 500, until = () => true, signal } = {}) {
  return new Promise((resolve, reject) => {
    let timer = null;
    const stop = () => { clearTimeout(timer); reject(signal.reason); };
    if (signal?.aborted) { reject(signal.reason); return; }
    signal?.addEventListener("abort", stop, { once: true });
    const step = async () => {
      try {
        const value = await fn();
        if (signal?.aborted) return;
        if (until(value)) { signal?.removeEventListener("abort", stop); resolve(value); return; }
        timer = setTimeout(step, interval);
      } catch (err) {
        signal?.removeEventListener("abort", stop);
        reject(err);
      }
    };
    step();
  });
}

// A server task (/api/v1/tasks/<id>) polled until it is done (its result) or failed (thrown).
export async function pollTask(taskId, onProgress, intervalMs = 500, { signal } = {}) {
  const task = await poll(async () => {
    const state = await api(`/tasks/${taskId}`, { signal });
    onProgress?.(state);
    return state;
  }, { interval: intervalMs, until: (state) => state.state === "done" || state.state === "failed", signal });
  if (task.state === "failed") throw new ApiFailure(400, task.error || "the task failed");
  return task.result;
}

// Patient type-ahead: an ARIA combobox over /api/v1/patients?q=
export function typeahead(input, onPick) {
  const list = el("ul", { class: "suggestions", role: "listbox", id: `${input.id}-list`, hidden: true });
  input.after(list);
  input.setAttribute("role", "combobox");
  input.setAttribute("aria-autocomplete", "list");
  input.setAttribute("aria-controls", list.id);
  input.setAttribute("aria-expanded", "false");
  input.setAttribute("autocomplete", "off");
  let items = [];
  let active = -1;
  const close = () => { list.hidden = true; input.setAttribute("aria-expanded", "false"); input.removeAttribute("aria-activedescendant"); active = -1; };
  const highlight = (i) => {
    active = i;
    [...list.children].forEach((li, j) => li.setAttribute("aria-selected", String(j === i)));
    if (i >= 0) { input.setAttribute("aria-activedescendant", list.children[i].id); list.children[i].scrollIntoView({ block: "nearest" }); }
  };
  const pick = (i) => { input.value = items[i].patient; close(); onPick?.(items[i].patient); };
  // Answers can come back out of order: each keystroke's request aborts the one before, and an
  // answer is shown only if no later request has started since (the last keystroke's answer wins).
  let pending = null;
  const load = debounce(async () => {
    pending?.abort();
    pending = null;
    const q = input.value.trim();
    if (!q) { close(); return; }
    const mine = new AbortController();
    pending = mine;
    try {
      const data = await api(`/patients?q=${encodeURIComponent(q)}&limit=8`, { signal: mine.signal });
      if (pending !== mine) return;
      pending = null;
      items = data.items;
      list.dataset.query = q;
      clear(list, items.map((item, i) => el("li", { id: `${list.id}-${i}`, role: "option", "aria-selected": "false",
        onmousedown: (event) => { event.preventDefault(); pick(i); } },
        el("span", { text: item.patient }), el("span", { class: "muted small", text: `${item.slides} slide${item.slides === 1 ? "" : "s"}` }))));
      list.hidden = !items.length;
      input.setAttribute("aria-expanded", String(!!items.length));
      active = -1;
    } catch {
      if (pending === mine) { pending = null; close(); }
    }
  }, 180);
  input.addEventListener("input", load);
  input.addEventListener("blur", () => setTimeout(close, 120));
  input.addEventListener("keydown", (event) => {
    if (list.hidden) return;
    if (event.key === "ArrowDown") { event.preventDefault(); highlight(Math.min(items.length - 1, active + 1)); }
    else if (event.key === "ArrowUp") { event.preventDefault(); highlight(Math.max(0, active - 1)); }
    else if (event.key === "Enter" && active >= 0) { event.preventDefault(); pick(active); }
    else if (event.key === "Escape") close();
  });
}

export async function loadStats() {
  const target = $("#archive-stats");
  if (!target) return;
  try {
    const stats = await api("/stats");
    const eagle = stats.vectors?.eagle ?? 0;
    target.textContent = `${fmtInt(stats.patients)} patients · ${fmtInt(stats.slides)} slides · ${fmtInt(eagle)} EAGLE vectors`;
  } catch { target.textContent = ""; }
}

export function fillSelect(select, options, { placeholder, selected } = {}) {
  const nodes = [];
  if (placeholder !== undefined) nodes.push(el("option", { value: "", text: placeholder }));
  for (const option of options) {
    const [value, text] = Array.isArray(option) ? option : [option, option];
    nodes.push(el("option", { value, text, selected: value === selected }));
  }
  clear(select, nodes);
}

export function download(href) {
  const link = el("a", { href, download: "" });
  document.body.append(link);
  link.click();
  link.remove();
}

loadStats();
