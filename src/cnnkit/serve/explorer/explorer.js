// cnnkit explorer: what a trained CNN computes, layer by layer, for one image. Reads the service's
// /v1/models/{name}/explore/ API, or the answers inlined in a static export (same keys, same shapes).
// Plain ES module, no build step, no dependencies.

const $ = (sel) => document.querySelector(sel);
const el = (tag, attrs = {}, ...kids) => {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") e.className = v;
    else if (k === "text") e.textContent = v;
    else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else e.setAttribute(k, v);
  }
  for (const kid of kids) if (kid != null) e.append(kid);
  return e;
};
const fmt = (v, d = 5) => (Number.isFinite(v) ? v.toFixed(d) : String(v));
// a control that is not a <button> (a canvas, a figure, a row): focusable, and Enter or Space acts as a click
const pressable = (e, label) => {
  e.setAttribute("role", "button");
  if (!e.hasAttribute("tabindex")) e.tabIndex = 0;
  if (label) e.setAttribute("aria-label", label);
  e.addEventListener("keydown", (ev) => {
    if (ev.key === "Enter" || ev.key === " ") { ev.preventDefault(); e.click(); }
  });
  return e;
};

const EXPORT = (() => {
  const tag = document.getElementById("cnnkit-data");
  return tag ? JSON.parse(tag.textContent) : null;
})();
const query = new URLSearchParams(location.search);
const token = query.get("token");
const segmenting = () => state.graph && state.graph.task === "segment";
const restoring = () => state.graph && state.graph.task === "restore";
const detecting = () => state.graph && state.graph.task === "detect";
const whyMethods = () => state.graph.methods;  // the task's explanation methods, as the graph answer lists them
const BOX_COLOURS = ["#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#42d4f4", "#f032e6", "#9a6324", "#800000", "#000075", "#808000"];

const orderParam = () => (state.order === "index" ? "&order=index" : "");  // the default is left out (exports)
const state = { model: null, graph: null, overview: null, image: null, scale: "layer", topk: 8, order: "activity",
                pages: {}, selected: null, gallery: [], target: null };

function status(text, error = false) {
  const s = $("#status");
  s.textContent = text;
  s.className = error ? "error" : "";
}

async function api(rel, options = {}) {
  if (EXPORT) {
    const answer = EXPORT.answers[rel];
    if (answer === undefined) throw new Error("this static export does not hold that: it holds each layer's " +
      "first channels' numbers and the explanations of the predicted and the true class; explore the live service for the rest");
    return answer;
  }
  const headers = { ...(options.headers || {}) };
  if (token) headers.Authorization = `Bearer ${token}`;
  const r = await fetch(`/v1/models/${encodeURIComponent(state.model)}/explore/${rel}`, { ...options, headers });
  const body = await r.json().catch(() => ({}));
  if (!r.ok) throw new Error(body.error ? body.error.message : `${r.status} ${r.statusText}`);
  return body;
}

// ---------------------------------------------------------------------------------------------- decoding
function bytes(b64) {
  const s = atob(b64);
  const out = new Uint8Array(s.length);
  for (let i = 0; i < s.length; i++) out[i] = s.charCodeAt(i);
  return out;
}
function floats(obj) {  // {shape, f32} (or an export's {shape, ref}: its bytes stored once) -> {shape, data}
  return { shape: obj.shape, data: new Float32Array(bytes(obj.f32 !== undefined ? obj.f32 : EXPORT.blobs[obj.ref]).buffer) };
}

// One colour rule everywhere, whatever the scale mode: white is zero, red positive, blue negative, each the
// deeper the larger |value| is against the scale's bound m = max(|lo|, |hi|). A layer of one sign (after a ReLU)
// thus uses one half (white to red), the half its values have in every other view; the input is drawn in grey.
function colour(v, lo, hi) {
  const m = Math.max(Math.abs(lo), Math.abs(hi)) || 1;
  const t = Math.max(-1, Math.min(1, v / m));
  return t >= 0 ? [255, Math.round(255 * (1 - t)), Math.round(255 * (1 - t))]
                : [Math.round(255 * (1 + t)), Math.round(255 * (1 + t)), 255];
}
function grey(v, lo, hi) {  // black at lo, white at hi: an input channel as the picture it is
  const g = Math.round(255 * (hi > lo ? Math.max(0, Math.min(1, (v - lo) / (hi - lo))) : 0.5));
  return [g, g, g];
}

function drawMap(canvas, values, h, w, lo, hi, paint = colour) {  // values: indexable, length h*w
  canvas.width = w; canvas.height = h;
  const ctx = canvas.getContext("2d");
  const img = ctx.createImageData(w, h);
  for (let i = 0; i < h * w; i++) {
    const [r, g, b] = paint(values[i], lo, hi);
    img.data[4 * i] = r; img.data[4 * i + 1] = g; img.data[4 * i + 2] = b; img.data[4 * i + 3] = 255;
  }
  ctx.putImageData(img, 0, 0);
}

function drawPng(canvas, b64) {
  return new Promise((resolve) => {
    const im = new Image();
    im.onload = () => {
      canvas.width = im.width; canvas.height = im.height;
      canvas.getContext("2d").drawImage(im, 0, 0);
      resolve(im);
    };
    im.src = `data:image/png;base64,${b64}`;
  });
}

// ---------------------------------------------------------------------------------------------- models, input
async function chooseModel() {
  if (EXPORT) {
    state.model = EXPORT.model;
    $("#model-select").closest("label").hidden = true;
    $("#order").closest("label").hidden = true;  // an export holds the default order only
    const held = Object.keys(EXPORT.answers).map((k) => (k.match(/^images\/[^/?]+\?topk=(\d+)$/) || [])[1]).find(Boolean);
    state.topk = Number(held);  // and one number of channels per layer: the menu offers only it
    $("#topk").replaceChildren(el("option", { text: held }));
    $("#drop").textContent = "Static export: pick one of the images below.";
    return;
  }
  const headers = token ? { Authorization: `Bearer ${token}` } : {};
  const r = await fetch("/v1/models", { headers });
  const body = await r.json();
  if (!r.ok) throw new Error(body.error ? body.error.message : "cannot list the models");
  const names = body.models.filter((m) => m.explainable).map((m) => m.name);
  if (!names.length) throw new Error("no explainable model is served (exported artifacts cannot be explored)");
  const select = $("#model-select");
  select.replaceChildren(...names.map((n) => el("option", { text: n })));
  state.model = names.includes(query.get("model")) ? query.get("model") : names[0];
  select.value = state.model;
  select.onchange = () => { location.search = `?model=${encodeURIComponent(select.value)}${token ? `&token=${token}` : ""}`; };
}

async function loadGallery() {
  const g = await api("gallery");
  state.gallery = g.images;
  state.galleryClasses = g.classes;
  const box = $("#gallery");
  box.replaceChildren();
  if (!g.images.length) box.append(el("p", { class: "note", text: g.note || "no test images" }));
  for (const item of g.images) {
    const cls = state.graph.classes, truth = g.classes || cls;  // the data's classes may not be the model's
    // a button (Tab, Enter and Space for free) named by what it shows: the caption, and for a screen reader both classes
    const px = item.pixel_accuracy;  // a segmentation image: the share of its labelled pixels predicted right
    const caption = item.detections !== undefined ? `${item.detections} found`
      : item.psnr !== undefined ? `${item.psnr.toFixed(1)} dB`
      : item.label === null ? (px === null || px === undefined ? "scene" : `${(100 * px).toFixed(0)}% px`)
      : item.correct === false ? `✗ ${cls[item.predicted]}` : truth[item.label];
    const fig = el("button", { type: "button", class: `thumb${item.correct === false ? " wrong" : ""}`, "data-id": item.id,
                               title: item.detections !== undefined ? `${item.objects} labelled objects; ${item.detections} detections above the threshold`
                                 : item.psnr !== undefined ? `restored: PSNR ${item.psnr.toFixed(2)} dB against the clean crop (${item.baseline}: ${item.baseline_psnr.toFixed(2)} dB)`
                                 : item.label === null ? "test image: the share of its labelled pixels the model gets right"
                                 : `true: ${truth[item.label]}, predicted: ${cls[item.predicted]}` },
      el("img", { src: `data:image/png;base64,${item.png}`, alt: "" }),
      el("span", { class: "caption", text: caption }),
      el("span", { class: "sr", text: item.detections !== undefined ? ` (${item.objects} labelled objects)`
        : item.psnr !== undefined ? ` restored PSNR (${item.baseline}: ${item.baseline_psnr.toFixed(1)} dB)`
        : item.label === null ? " of the pixels right (test image)"
        : item.correct === false ? ` (true class ${truth[item.label]}, misclassified)` : " (test image)" }));
    fig.onclick = () => showImage(item.id);
    box.append(fig);
  }
}

async function upload(file) {
  status(`uploading ${file.name} …`);
  const form = new FormData();
  form.append("file", file, file.name);
  try {
    const ov = await api(`images?topk=${state.topk}${orderParam()}`, { method: "POST", body: form });
    await render(ov);
  } catch (e) { status(e.message, true); }
}

function wireInput() {
  const drop = $("#drop");
  $("#file").onchange = (ev) => ev.target.files[0] && upload(ev.target.files[0]);
  const chooser = $("#drop .button");
  if (chooser) { chooser.tabIndex = 0; chooser.addEventListener("keydown", (ev) => {
    if (ev.key === "Enter" || ev.key === " ") { ev.preventDefault(); $("#file").click(); } }); }
  drop.addEventListener("dragover", (ev) => { ev.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (ev) => {
    ev.preventDefault(); drop.classList.remove("over");
    if (ev.dataTransfer.files[0]) upload(ev.dataTransfer.files[0]);
  });
  $("#scale").onchange = (ev) => { state.scale = ev.target.value; drawOverview(); };
  const again = async () => {  // the same image at another channel count or order: the detail view stays open
    if (!state.image) return;
    const keep = state.selected;
    await showImage(state.image);
    const node = keep && state.graph.nodes.find((n) => n.id === keep.node);
    if (node) openDetail(node, keep.channel, document.querySelector(`canvas.ch[data-node="${CSS.escape(node.id)}"][data-channel="${keep.channel}"]`));
  };
  $("#topk").onchange = (ev) => { state.topk = Number(ev.target.value); again(); };
  $("#order").onchange = (ev) => { state.order = ev.target.value; again(); };
}

async function showImage(id) {
  status("computing activations …");
  try {
    await render(await api(`images/${id}?topk=${state.topk}${orderParam()}`));
  } catch (e) { status(e.message, true); }
}

async function render(ov) {
  const t0 = performance.now();
  state.overview = ov; state.image = ov.image; state.pages = {}; state.target = null;
  for (const f of document.querySelectorAll("#gallery .thumb"))
    f.classList.toggle("current", f.dataset.id === ov.image);
  await drawPng($("#seen-canvas"), ov.input.png);
  const i = ov.input;
  $("#seen-text").textContent = `As the model sees it: ${i.channels}×${i.height}×${i.width} ` +
    `(${i.channels === 1 ? "gray" : "RGB"}), normalized with mean ${i.mean.map((v) => v.toFixed(3)).join(", ")} ` +
    `and std ${i.std.map((v) => v.toFixed(3)).join(", ")}: values from ${i.min.toFixed(3)} to ${i.max.toFixed(3)}.`;
  $("#why-section h2").textContent = restoring() ? "Where the restored pixels come from" : detecting() ? "Why this detection" : "Why this class";
  if (detecting()) $("#why-section .hint").textContent = "Choose a detection (best first): LayerCAM over the " +
    "backbone's maps and D-RISE (the image under random masks, each mask weighted by how well the masked image's " +
    "detections match this one), each with the match (IoU × same class × score) as the map's most relevant pixels " +
    "are deleted (red: lower is better) and revealed on a blurred copy (blue: higher is better).";
  if (restoring()) $("#why-section .hint").textContent = "A restoration network has no class: choose a point of " +
    "the restored image (the overview's last column) and its box is explained by the input pixels it depends on: " +
    "the gradient of the box's mean (saliency) and integrated gradients from a black image. A network sees only " +
    "its receptive field: nothing outside the map's bright area can change the box.";
  if (segmenting()) $("#why-section .hint").textContent = "Choose a class: Seg-Grad-CAM (and Grad-CAM++) of its " +
    "score summed over the pixels predicted as it, each with the class's mean probability over those pixels as the " +
    "map's most relevant pixels are deleted (red: lower is better) and as they are revealed on a blurred copy (blue: " +
    "higher is better). The bars are each class's share of the pixels.";
  drawOverview();
  drawScores();
  $("#detail").replaceChildren();
  $("#detail-title").textContent = "Click a channel to see what it computes";
  $("#why").replaceChildren();
  const cls = state.graph.classes[ov.predicted];
  const truth = (state.gallery.find((g) => g.id === ov.image) || {}).label;
  const classes = (state.galleryClasses || state.graph.classes);
  if (detecting()) {
    const d = ov.output.detections;
    status(`${d.length} detection${d.length === 1 ? "" : "s"}` + (d.length ? ` · best: ${state.graph.classes[d[0][5]]} (score ${d[0][4].toFixed(3)})` : "") +
           (EXPORT ? "" : ` · server ${(1000 * ov.seconds).toFixed(0)} ms`));
    document.body.dataset.predicted = d.length ? state.graph.classes[d[0][5]] : "";
  } else if (restoring()) {
    const item = state.gallery.find((g) => g.id === ov.image);
    status(`restored ${i.height}×${i.width} → ${ov.output.height}×${ov.output.width}` +
           (item ? ` · PSNR ${item.psnr.toFixed(2)} dB against the clean crop (${item.baseline}: ${item.baseline_psnr.toFixed(2)} dB)` : "") +
           (EXPORT ? "" : ` · server ${(1000 * ov.seconds).toFixed(0)} ms`));
    document.body.dataset.predicted = "";
  } else status(`${segmenting() ? "most pixels:" : "predicted"} ${cls} (${(100 * ov.probabilities[ov.predicted]).toFixed(1)}%` +
         `${segmenting() ? " of the pixels" : ""})` +
         (truth !== undefined && truth !== null ? ` · true class ${classes[truth]}` : "") +
         (EXPORT ? "" : ` · server ${(1000 * ov.seconds).toFixed(0)} ms`));  // an export's timing was another machine's
  if (!restoring() && !detecting()) document.body.dataset.predicted = cls;
  document.body.dataset.image = ov.image;
  document.body.dataset.ready = "1";
  window.cnnkitTimings = { ...(window.cnnkitTimings || {}), drawMs: performance.now() - t0, serverMs: 1000 * ov.seconds };
}

// ---------------------------------------------------------------------------------------------- overview
function stageOf(node) {  // a join (add, cat) outside any module takes the stage of the first input that has one
  const seen = new Set();
  while (node && !node.stage && !seen.has(node.id)) {
    seen.add(node.id);
    node = state.graph.nodes.find((n) => n.id === node.inputs[0]);
  }
  return node ? node.stage : "";
}

function scaleOf(node, page) {
  const ov = state.overview;
  if (state.scale === "global") return [ov.global.min, ov.global.max];
  const stage = state.scale === "stage" && node.kind !== "input" ? stageOf(node) : "";
  if (stage) {
    let lo = Infinity, hi = -Infinity;
    for (const n of state.graph.nodes) if (n.kind !== "input" && stageOf(n) === stage) {
      lo = Math.min(lo, ov.nodes[n.id].min); hi = Math.max(hi, ov.nodes[n.id].max);
    }
    return [lo, hi];
  }
  return [page.min, page.max];
}

const SCALE_TEXT = { layer: "each column against its own largest |value|",
                     stage: "each stage's columns against the stage's largest |value|",
                     global: "every column against the network's largest |value|" };

function drawLegend() {  // the colour rule and the current scale's meaning (and its bound, when there is one)
  const ov = state.overview;
  const c = $("#legend-bar");
  drawMap(c, Array.from({ length: 101 }, (_, i) => i / 50 - 1), 1, 101, -1, 1);
  const m = Math.max(Math.abs(ov.global.min), Math.abs(ov.global.max));
  $("#legend-low").textContent = state.scale === "global" ? `−${fmt(m, 3)}` : "−m";
  $("#legend-high").textContent = state.scale === "global" ? `+${fmt(m, 3)}` : "+m";
  $("#legend-text").textContent = `blue negative · white 0 · red positive; ${SCALE_TEXT[state.scale]}` +
    (state.scale === "global" ? "" : " (m, under each column)") + "; the input in grey";
}

function kindLabel(n) {
  const p = n.params || {};
  if (n.kind === "conv") return `conv ${p.kernel.join("×")}${p.stride[0] > 1 ? ` /${p.stride[0]}` : ""}${p.groups > 1 ? ` g${p.groups}` : ""}`;
  if (n.kind === "act") return p.function;
  if (n.kind === "pool") return `${p.op}pool ${p.kernel.join("×")}`;
  if (n.kind === "gpool") return `global ${p.op}`;
  if (n.kind === "upconv") return `upconv ${p.kernel.join("×")} ×${p.stride[0]}`;
  if (n.kind === "shuffle") return `pixel shuffle ×${p.scale}`;
  return n.kind === "other" ? n.type : n.kind;
}

function drawColumn(node) {
  const page = state.pages[node.id] || state.overview.nodes[node.id];
  const col = el("div", { class: `col${node.kind === "add" ? " join" : ""}${node.kind === "sub" ? " minus" : ""}${node.kind === "cat" ? " cat" : ""}`,
                          "data-node": node.id, title: `${node.label} (${node.type}) → ${node.shape.join("×")}` },
    el("header", { text: node.label }), el("div", { class: "kind", text: kindLabel(node) }),
    el("div", { class: "kind", text: node.shape.join("×") }));
  const [lo, hi] = scaleOf(node, page);
  const m = Math.max(Math.abs(lo), Math.abs(hi));
  Object.assign(col.dataset, { kind: node.kind, scale: `${lo},${hi}`, values: `${page.min},${page.max}`,
                               stage: state.scale === "stage" ? stageOf(node) : "" });
  if (node.kind !== "input") col.append(el("div", { class: "kind range", title: "this column's colour bound m", text: `m ${fmt(m, 3)}` }));
  if (node.kind === "input" && state.overview.input.channels === 3) {  // the picture, then its channels in grey
    col.append(el("img", { class: "ch picture", alt: "the input image", src: `data:image/png;base64,${state.overview.input.png}` }));
  }
  if (page.kind === "vector" && classLabel(node, 0)) {  // the logits (and what scales them): one row per class
    col.classList.add("classcol");
    col.append(classRows(page.values, lo, hi, (i, row) => openDetail(node, i, row), node.id));
  } else if (page.kind === "vector") {
    const c = el("canvas", { class: "vec", "data-node": node.id, "data-channel": "0" });
    const n = Math.min(page.values.length, 512);
    drawMap(c, page.values.slice(0, n), n, 1, lo, hi);
    const mark = el("span", { class: "vecmark", "aria-hidden": "true" });
    const at = (ev) => { const r = c.getBoundingClientRect(); return Math.max(0, Math.min(n - 1, Math.floor(((ev.clientY - r.top) / r.height) * n))); };
    // one element of the stripe is current: the mouse's on a click, the arrows' from the keyboard (Enter opens it)
    c.pick = (i) => {
      c.dataset.channel = String(i);
      c.setAttribute("aria-label", `${node.label}, element ${i} of ${page.size}: ${fmt(page.values[i])}`);
      mark.style.top = `${((i + 0.5) / n) * 100}%`;
    };
    c.pick(0);
    c.onmousemove = (ev) => { const i = at(ev); c.title = `element ${i}: ${fmt(page.values[i])} (click to open)`; };
    c.onclick = (ev) => { if (ev.detail !== 0) c.pick(at(ev)); openDetail(node, Number(c.dataset.channel), c); };
    c.vecKeys = (ev) => {  // Up/Down one element, PageUp/PageDown a tenth, Home/End the ends
      const i = Number(c.dataset.channel), step = Math.max(1, Math.round(n / 10));
      const to = { ArrowDown: i + 1, ArrowUp: i - 1, PageDown: i + step, PageUp: i - step, Home: 0, End: n - 1 }[ev.key];
      if (to === undefined) return false;
      ev.preventDefault(); c.pick(Math.max(0, Math.min(n - 1, to)));
      return true;
    };
    pressable(c).tabIndex = -1;
    c.pick(0);
    c.addEventListener("keydown", (ev) => channelKeys(ev, c, col, page));
    col.append(el("div", { class: "chwrap vecwrap" }, c, mark));
  } else {
    const q = bytes(page.data);
    const size = page.height * page.width;
    page.order.forEach((ch, k) => {
      const cname = segClass(node, ch);  // a segmentation network's last maps are its classes' scores
      const c = el("canvas", { class: "ch", "data-node": node.id, "data-channel": String(ch), title: `channel ${ch}${cname ? `: ${cname}` : ""}` });
      const a = page.lo[k], b = page.hi[k];
      const vals = new Float32Array(size);
      for (let i = 0; i < size; i++) vals[i] = a + (q[k * size + i] / 255) * (b - a);
      if (node.kind === "input") drawMap(c, vals, page.height, page.width, page.min, page.max, grey);
      else drawMap(c, vals, page.height, page.width, lo, hi);
      c.onclick = () => openDetail(node, ch, c);
      // the maps are one tab stop (the input's first), the arrows move between them (a roving tabindex)
      pressable(c, `${node.label}, channel ${ch}${cname ? `, ${cname}` : ""}`).tabIndex = k === 0 && node.kind === "input" ? 0 : -1;
      c.addEventListener("keydown", (ev) => channelKeys(ev, c, col, page));
      col.append(el("div", { class: "chwrap" }, c, el("span", { class: "chno", "aria-hidden": "true", text: String(ch) })));
    });
    if (page.pages > 1) {
      const go = async (p, focus = false) => {
        try {
          state.pages[node.id] = await api(`images/${state.image}/nodes/${node.id}?page=${p}&topk=${state.topk}${orderParam()}`);
          const fresh = drawColumn(node);
          col.replaceWith(fresh);
          drawEdges();
          if (focus) moveFocus(fresh.querySelector("canvas.ch"));
        } catch (e) { status(e.message, true); }
      };
      col.pageTo = (step, focus) => { const p = page.page + step; if (p >= 0 && p < page.pages) go(p, focus); };
      // the pagers are not tab stops (about 460 in a large network): PageUp and PageDown on a channel page too
      col.append(el("div", { class: "pager" },
        el("button", { text: "‹", tabindex: "-1", "aria-label": "previous channels", onclick: () => col.pageTo(-1) }),
        el("span", { text: `${page.page + 1}/${page.pages}` }),
        el("button", { text: "›", tabindex: "-1", "aria-label": "next channels", onclick: () => col.pageTo(1) })));
    }
  }
  return col;
}

function segClass(node, ch) {  // the class whose score map channel `ch` of the output (or the layer before it) is
  if (!segmenting() || node.shape[0] !== state.graph.classes.length) return "";
  const out = state.graph.nodes.find((n) => n.id === state.graph.output);
  return node.id === out.id || out.inputs[0] === node.id ? state.graph.classes[ch] : "";
}

// a vector as long as the class list, at the output or feeding it through a scaling or a flatten: its classes
function classLabel(node, i) {
  const cls = state.graph.classes, out = state.graph.nodes.find((n) => n.id === state.graph.output);
  const size = state.overview.nodes[node.id] && state.overview.nodes[node.id].size;
  if (size !== cls.length) return "";
  for (let n = out, hops = 0; n && hops < 4; n = state.graph.nodes.find((m) => m.id === n.inputs[0]), hops++) {
    if (n.id === node.id) return cls[i];
    if (!["mul", "flatten", "other", "linear"].includes(n.kind)) break;
  }
  return "";
}

function classRows(values, lo, hi, open, id, text = (v) => fmt(v, 3)) {  // one labelled row per class
  const cls = state.graph.classes, predicted = state.overview.predicted;
  const box = el("div", { class: "classes", "data-node": id });
  values.forEach((v, i) => {
    const [r, g, b] = colour(v, lo, hi);
    const row = el("div", { class: `cls${i === predicted ? " predicted" : ""}`, "data-channel": String(i),
                            title: `${cls[i]}: ${fmt(v)}${i === predicted ? " (the prediction)" : ""}` },
      el("span", { class: "swatch", style: `background: rgb(${r},${g},${b})` }),
      el("span", { class: "name", text: `${i === predicted ? "★ " : ""}${cls[i]}` }), el("span", { class: "v", text: text(v) }));
    row.onclick = () => { for (const s of document.querySelectorAll(".cls.selected")) s.classList.remove("selected");
                          row.classList.add("selected"); open(i, row); };
    box.append(pressable(row));  // named by its text: "★ class value"
  });
  return box;
}

const MAPS = "canvas.ch, canvas.vec";  // the overview's maps and vector stripes: one tab stop, arrows between them

function channelKeys(ev, canvas, col, page) {  // arrows within and across columns; PageDown/PageUp page
  const within = [...col.querySelectorAll(MAPS)];
  const cols = [...document.querySelectorAll("#columns .col")].filter((c) => c.querySelector(MAPS));
  let next = null;
  if (canvas.vecKeys && canvas.vecKeys(ev)) return;  // a stripe's own elements
  if (ev.key === "ArrowDown" || ev.key === "ArrowUp")
    next = within[within.indexOf(canvas) + (ev.key === "ArrowDown" ? 1 : -1)];
  else if (ev.key === "ArrowRight" || ev.key === "ArrowLeft") {
    const other = cols[cols.indexOf(col) + (ev.key === "ArrowRight" ? 1 : -1)];
    next = other && other.querySelector(MAPS);
  } else if (ev.key === "Home" || ev.key === "End") {  // the first or the last column (a stripe's own: its ends)
    next = cols[ev.key === "Home" ? 0 : cols.length - 1].querySelector(MAPS);
  } else if ((ev.key === "PageDown" || ev.key === "PageUp") && col.pageTo) {
    ev.preventDefault(); col.pageTo(ev.key === "PageDown" ? 1 : -1, true); return;
  } else return;
  ev.preventDefault();
  moveFocus(next);
}

function moveFocus(next) {  // the one map that Tab stops at
  if (!next) return;
  for (const c of document.querySelectorAll("#columns canvas[tabindex='0']")) c.tabIndex = -1;
  next.tabIndex = 0; next.focus();
}

function drawOverview() {
  const cols = $("#columns");
  cols.replaceChildren(...state.graph.nodes.map(drawColumn));
  const ov = state.overview;
  if (segmenting()) cols.append(maskColumn(ov));
  else if (restoring()) cols.append(restoredColumn(ov));
  else if (detecting()) cols.append(boxesColumn(ov));
  else {
    const soft = el("div", { class: "col classcol", "data-node": "softmax" }, el("header", { text: "softmax" }),
                    el("div", { class: "kind", text: "class scores" }));
    soft.append(classRows(ov.probabilities, 0, 1, (i) => openSoftmax(i), "softmax", (p) => `${(100 * p).toFixed(1)}%`));
    cols.append(soft);
  }
  drawLegend();
  requestAnimationFrame(drawEdges);
}

// a segmentation network's answer: the class of each pixel (the argmax of its class maps) as the mask, in the
// run's palette, and a legend of the classes it holds with their share of the pixels (a row explains its class)
function maskColumn(ov) {
  const cls = state.graph.classes, pal = state.graph.palette;
  const col = el("div", { class: "col classcol", "data-node": "mask" }, el("header", { text: "mask" }),
                 el("div", { class: "kind", text: "argmax per pixel" }), el("div", { class: "kind", text: `${ov.output.height}×${ov.output.width}` }),
                 el("img", { class: "mask", alt: "the predicted mask: each pixel coloured by its class", src: `data:image/png;base64,${ov.output.png}` }));
  const img = col.querySelector("img.mask");
  img.onclick = () => openMask(ov);
  pressable(img);
  const legend = el("div", { class: "classes", "data-node": "mask" });
  ov.probabilities.map((p, i) => [p, i]).filter(([p]) => p > 0).sort((a, b) => b[0] - a[0]).forEach(([p, i]) => {
    const row = el("div", { class: `cls${i === ov.predicted ? " predicted" : ""}`, "data-channel": String(i),
                            title: `${cls[i]}: ${(100 * p).toFixed(1)}% of the pixels (choose to explain it)` },
      el("span", { class: "swatch", style: `background: rgb(${pal[i].join(",")})` }),
      el("span", { class: "name", text: `${i === ov.predicted ? "★ " : ""}${cls[i]}` }), el("span", { class: "v", text: `${(100 * p).toFixed(1)}%` }));
    row.onclick = () => { explainClass(i); $("#why-section").scrollIntoView({ block: "start" }); };
    legend.append(pressable(row));
  });
  col.append(legend);
  return col;
}

function openMask(ov) {  // the mask at a readable size beside the input, with what a mask is
  const cls = state.graph.classes, pal = state.graph.palette;
  state.selected = null;
  $("#detail-title").textContent = "the mask: the class of each pixel";
  const pic = (src, alt) => el("img", { class: "big", alt, src: `data:image/png;base64,${src}` });
  const legend = ov.probabilities.map((p, i) => [p, i]).filter(([p]) => p > 0).sort((a, b) => b[0] - a[0])
    .map(([p, i]) => el("div", {}, el("span", { class: "swatch", style: `background: rgb(${pal[i].join(",")})` }), ` ${cls[i]}: ${(100 * p).toFixed(1)}% of the pixels`));
  $("#detail").replaceChildren(learn("mask"), el("div", { class: "panel" }, el("b", { text: "input" }), pic(ov.input.png, "the input image")),
    el("div", { class: "panel" }, el("b", { text: "mask" }), pic(ov.output.png, "the predicted mask")), el("div", { class: "panel legend" }, ...legend));
  document.body.dataset.detail = "mask:0";
  bringDetail();
}

// a restoration network's answer: the restored image; a click on it chooses the box "why" explains
function restoredColumn(ov) {
  const o = ov.output;
  const col = el("div", { class: "col classcol", "data-node": "restored" }, el("header", { text: "restored" }),
                 el("div", { class: "kind", text: o.scale > 1 ? `×${o.scale}` : "denoised" }), el("div", { class: "kind", text: `${o.height}×${o.width}` }));
  const wrap = el("div", { class: "mapbox restoredbox" });
  const img = el("img", { class: "restored", alt: "the restored image (choose a point: its box is explained)", src: `data:image/png;base64,${o.png}` });
  wrap.append(img);
  const side = Math.max(4, Math.floor(Math.min(o.height, o.width) / 4));
  const pick = (cy, cx) => {
    const y0 = Math.max(0, Math.min(o.height - side, cy - Math.floor(side / 2))), x0 = Math.max(0, Math.min(o.width - side, cx - Math.floor(side / 2)));
    explainRegion([x0, y0, x0 + side, y0 + side]);
  };
  img.onclick = (ev) => {
    const r = img.getBoundingClientRect();
    if (ev.detail === 0) { explainRegion(null); return; }  // Enter: the box at the centre
    pick(Math.floor(((ev.clientY - r.top) / r.height) * o.height), Math.floor(((ev.clientX - r.left) / r.width) * o.width));
  };
  pressable(img);
  col.append(wrap, el("div", { class: "kind", text: "choose a point to explain its box (Enter: the centre)" }));
  return col;
}

// a detector's answer: its boxes on the image (best first, coloured by class), each row explaining its detection
function drawBoxes(canvas, png, dets, size, only = null) {
  const im = new Image();
  im.onload = () => {
    const f = Math.max(1, Math.floor(canvas.width / size.width));
    const ctx = canvas.getContext("2d");
    ctx.imageSmoothingEnabled = false;
    ctx.drawImage(im, 0, 0, size.width * f, size.height * f);
    dets.forEach((d, k) => {
      if (only !== null && k !== only) return;
      ctx.strokeStyle = BOX_COLOURS[d[5] % BOX_COLOURS.length]; ctx.lineWidth = 2;
      ctx.strokeRect(d[0] * f, d[1] * f, (d[2] - d[0]) * f, (d[3] - d[1]) * f);
    });
  };
  im.src = `data:image/png;base64,${png}`;
}

const SHOWN_BOXES = 10;  // the best detections drawn and listed (all are in the "why" bars)
function boxesColumn(ov) {
  const o = ov.output, cls = state.graph.classes, dets = o.detections.slice(0, SHOWN_BOXES);
  const col = el("div", { class: "col classcol", "data-node": "boxes" }, el("header", { text: "detections" }),
                 el("div", { class: "kind", text: "head, threshold, NMS" }), el("div", { class: "kind", text: `${o.detections.length} boxes` }));
  const c = el("canvas", { class: "boxes", role: "img", "aria-label": `the image with its best ${dets.length} detections drawn` });
  c.width = o.width * 2; c.height = o.height * 2;
  drawBoxes(c, ov.input.png, dets, o);
  const list = el("div", { class: "classes", "data-node": "boxes" });
  dets.forEach((d, k) => {
    const row = el("div", { class: `cls${k === 0 ? " predicted" : ""}`, "data-channel": String(k),
                            title: `detection ${k}: ${cls[d[5]]}, score ${d[4].toFixed(3)}, box ${d.slice(0, 4).map((v) => v.toFixed(1)).join(", ")}` },
      el("span", { class: "swatch", style: `background: ${BOX_COLOURS[d[5] % BOX_COLOURS.length]}` }),
      el("span", { class: "name", text: `${k === 0 ? "★ " : ""}${cls[d[5]]}` }), el("span", { class: "v", text: d[4].toFixed(3) }));
    row.onclick = () => { explainClass(k); $("#why-section").scrollIntoView({ block: "start" }); };
    list.append(pressable(row));
  });
  col.append(c, list);
  return col;
}

function showRegion(box) {  // the explained box, outlined on the restored image
  const wrap = document.querySelector(".restoredbox"), img = wrap && wrap.querySelector("img");
  if (!img) return;
  let win = wrap.querySelector(".window");
  if (!win) { win = el("div", { class: "window" }); wrap.append(win); }
  const o = state.overview.output, r = img.getBoundingClientRect();
  const sy = r.height / o.height, sx = r.width / o.width;
  Object.assign(win.style, { left: `${box[0] * sx}px`, top: `${box[1] * sy}px`, width: `${(box[2] - box[0]) * sx}px`, height: `${(box[3] - box[1]) * sy}px` });
}

function drawEdges() {  // joins: an arc above the columns from each input that is not the column just before
  const svg = $("#edges"), box = $("#overview");
  const cols = [...document.querySelectorAll("#columns .col")];
  const at = Object.fromEntries(cols.map((c, i) => [c.dataset.node, i]));
  svg.setAttribute("width", box.scrollWidth); svg.setAttribute("height", 60);
  const paths = [];
  const base = box.getBoundingClientRect().left - box.scrollLeft;
  for (const n of state.graph.nodes) {
    n.inputs.forEach((src) => {
      if (at[src] === undefined || at[src] === at[n.id] - 1) return;
      const a = cols[at[src]].getBoundingClientRect(), b = cols[at[n.id]].getBoundingClientRect();
      const x1 = a.left + a.width / 2 - base, x2 = b.left + b.width / 2 - base;
      const rise = Math.min(48, 14 + (x2 - x1) / 40);
      paths.push(`<path d="M${x1},56 C${x1},${56 - rise} ${x2},${56 - rise} ${x2},56" fill="none" stroke="#2f6fde" stroke-width="1.4" opacity=".7"/>`);
    });
  }
  svg.innerHTML = paths.join("");
}

// ---------------------------------------------------------------------------------------------- detail views
function mapBox(values, h, w, title, lo, hi, cls = "map") {
  let a = lo, b = hi;
  if (a === undefined) { a = Infinity; b = -Infinity; for (const v of values) { a = Math.min(a, v); b = Math.max(b, v); } }
  const c = el("canvas", { class: cls, title });
  drawMap(c, values, h, w, a, b);
  const box = el("div", { class: "mapbox" }, c);
  box.canvas = c;
  return box;
}

function hoverPixel(box, h, w, fn) {  // fn(y, x) on mouse move over the map
  box.canvas.addEventListener("mousemove", (ev) => {
    const r = box.canvas.getBoundingClientRect();
    const x = Math.min(w - 1, Math.floor(((ev.clientX - r.left) / r.width) * w));
    const y = Math.min(h - 1, Math.floor(((ev.clientY - r.top) / r.height) * h));
    fn(y, x);
  });
}

function showWindow(box, h, w, y0, x0, kh, kw) {  // an outline of the kernel window (clipped to the map)
  let win = box.querySelector(".window");
  if (!win) { win = el("div", { class: "window" }); box.append(win); }
  const r = box.canvas.getBoundingClientRect();
  const sy = r.height / h, sx = r.width / w;
  const top = Math.max(0, y0), left = Math.max(0, x0);
  const bottom = Math.min(h, y0 + kh), right = Math.min(w, x0 + kw);
  Object.assign(win.style, { top: `${top * sy}px`, left: `${left * sx}px`, height: `${Math.max(0, bottom - top) * sy}px`,
                             width: `${Math.max(0, right - left) * sx}px` });
}

function channelOf(t, c) {  // tensor {shape, data} -> the c-th H×W slice (or the whole of a 2-D tensor)
  if (t.shape.length === 2) return t.data;
  const size = t.shape[1] * t.shape[2];
  return t.data.subarray(c * size, (c + 1) * size);
}

function activate(name, v) {
  switch (name) {
    case "relu": return Math.max(0, v);
    case "relu6": return Math.min(6, Math.max(0, v));
    case "sigmoid": return 1 / (1 + Math.exp(-v));
    case "tanh": return Math.tanh(v);
    case "silu": return v / (1 + Math.exp(-v));
    case "gelu": return 0.5 * v * (1 + erf(v / Math.SQRT2));
    case "leaky_relu": return v >= 0 ? v : 0.01 * v;
    case "hardswish": return v * Math.min(6, Math.max(0, v + 3)) / 6;
    case "hardsigmoid": return Math.min(1, Math.max(0, v / 6 + 0.5));
    case "elu": return v >= 0 ? v : Math.exp(v) - 1;
    case "mish": return v * Math.tanh(Math.log1p(Math.exp(v)));
    default: return NaN;
  }
}
function erf(x) {  // Abramowitz-Stegun 7.1.26 (|error| < 1.5e-7): only for drawing GELU's curve and formula
  const s = Math.sign(x); x = Math.abs(x);
  const t = 1 / (1 + 0.3275911 * x);
  const y = 1 - ((((1.061405429 * t - 1.453152027) * t + 1.421413741) * t - 0.284496736) * t + 0.254829592) * t * Math.exp(-x * x);
  return s * y;
}
const FORMULAS = { relu: "max(0, x)", relu6: "min(6, max(0, x))", sigmoid: "1 / (1 + e^−x)", tanh: "tanh(x)",
  silu: "x · sigmoid(x)", gelu: "x · Φ(x) = ½x(1 + erf(x/√2))", leaky_relu: "x if x ≥ 0 else 0.01x",
  hardswish: "x · min(6, max(0, x + 3)) / 6", hardsigmoid: "min(1, max(0, x/6 + ½))", elu: "x if x ≥ 0 else eˣ − 1",
  mish: "x · tanh(softplus(x))" };

// beside each detail view: what this kind of layer does, for a learner (CNN Explainer's article, one paragraph each)
const LEARN = {
  input: ["The input", "The image as the network receives it: each pixel scaled to [0, 1], then each channel " +
    "shifted by its mean and divided by its standard deviation (the training set's), so that values sit around 0. " +
    "A grey image is one channel, a colour image three (red, green, blue)."],
  conv: ["Convolution", "A convolution slides a small grid of learned weights, the kernel, over its input. At each " +
    "position it multiplies the window under the kernel by the kernel, value by value, adds up the products over " +
    "every input channel it reads, and adds a bias: that sum is one pixel of the output map. Each output channel " +
    "has its own kernel, so it lights up wherever its pattern (an edge, a texture, a part) appears. The stride is " +
    "how far the window moves between outputs; padding adds a border of zeros so that the edges get windows too."],
  act: ["Activation", "An activation function is applied to every value on its own, with no weights. It makes " +
    "the network non-linear: without it a stack of convolutions would be a single linear map. ReLU keeps positive " +
    "values and sets negative ones to 0, so after it a map has no blue (negative) pixels."],
  pool: ["Pooling", "Pooling shrinks each channel's map on its own: every output value summarises one window of " +
    "the input, by its maximum (max pooling) or its mean (average pooling). It has no weights. The map gets " +
    "smaller, and a small shift of the image changes the output less."],
  gpool: ["Global pooling", "Global pooling reduces each channel's whole map to one number, its mean (or maximum). " +
    "The maps become a vector with one value per channel, whatever the image's size: how strongly each channel's " +
    "pattern is present anywhere in the image."],
  bn: ["Batch normalization", "Batch normalization rescales each channel with four numbers fixed in training: it " +
    "subtracts the channel's mean and divides by its standard deviation (both measured on the training data), then " +
    "multiplies by a learned γ and adds a learned β. It keeps each layer's values in a range that trains well; at " +
    "inference it is a fixed multiply-and-add per channel, which can be folded into the convolution before it."],
  norm: ["Normalization", "A normalization layer (LayerNorm, GroupNorm, …) rescales values by statistics of this " +
    "image itself, the mean and spread over its channels or groups, then applies a learned scale and shift."],
  add: ["Residual addition", "A residual join adds its inputs element by element: a block's output and the input " +
    "that skipped around the block. The block then only has to learn a change to its input, which is what lets " +
    "very deep networks (ResNet) train."],
  cat: ["Concatenation", "A concatenation stacks its inputs' channels one after another: nothing is computed. The " +
    "next layer sees every branch's channels side by side (Inception's parallel branches, DenseNet's features)."],
  linear: ["Fully connected layer", "A fully connected (linear) layer computes each output as a weighted sum of " +
    "every input value, plus a bias. At the end of a classifier there is one output per class: the class's score, " +
    "its logit. A larger logit means more evidence for that class."],
  flatten: ["Flatten", "Flatten lays the C×H×W values out as one long vector, channel after channel, for the " +
    "layers that take vectors. Nothing is computed: the values are the same."],
  mul: ["Multiplication", "Every value is multiplied, by a constant or by another layer's value at the same place. " +
    "A constant scales the logits (ResNet-9 multiplies them by 0.125), which makes the softmax less peaked."],
  softmax: ["Softmax", "Softmax turns the logits into probabilities: each logit is exponentiated and divided by " +
    "the sum of them all. The probabilities are positive and add up to 1, and the largest logit gets the largest " +
    "probability: the prediction."],
  upconv: ["Transposed convolution", "A transposed convolution makes a map larger: each input value multiplies " +
    "the kernel and the product is stamped onto the output, the stamps placed stride pixels apart (overlapping ones " +
    "add up), summed over the input channels, plus a bias. U-Net's decoder uses it to go back up to the image's " +
    "size, where its output is joined with the encoder's map of the same size."],
  mask: ["The mask", "A segmentation network gives one map per class, the class's score at every pixel. Each pixel " +
    "takes the class whose map is highest there (the argmax): that is the mask, coloured by class. The legend lists " +
    "each class's share of the pixels; choosing one explains it over the pixels predicted as it."],
  shuffle: ["Pixel shuffle", "A pixel shuffle (ESPCN's sub-pixel convolution) makes the image larger without " +
    "computing anything: the convolution before it gives s² channels per output channel, computed at the small " +
    "size, and the shuffle interleaves them into one map s times larger: each s×s block of the output takes one " +
    "value from each of those channels. All the work happens at the small size, which is what makes ESPCN fast."],
  sub: ["Subtraction", "A subtraction, element by element. A residual denoiser (DnCNN) predicts the noise, not the " +
    "clean image, and subtracts it from its input: what the layers learn is the small difference."],
  const: ["A learned constant", "Not a layer of the image: one of the network's own parameters, such as " +
    "ConvNeXt's layer scale γ (one learned number per channel), reshaped so that it can multiply a layer's maps. " +
    "It is the same for every image."],
  other: ["This layer", "This layer has no explanation here; its input and output are shown as they are."],
};

function learn(kind) {  // the paragraph for this kind of layer, in an aside beside its view
  const [title, text] = LEARN[kind] || LEARN.other;
  return el("aside", { class: "learn", "data-kind": kind in LEARN ? kind : "other", "aria-label": `about ${title.toLowerCase()}` },
    el("b", { text: title }),
    el("p", { text }));
}

async function openDetail(node, channel, canvas) {
  for (const c of document.querySelectorAll("canvas.selected")) c.classList.remove("selected");
  canvas && canvas.classList.add("selected");
  const mine = state.selected = { node: node.id, channel };
  $("#detail-title").textContent = `${node.label} (${node.type}), channel ${channel}`;
  const box = $("#detail");
  box.replaceChildren(el("p", { class: "note", text: "loading …" }));
  if (node.kind === "input") {
    box.replaceChildren(learn("input"), el("p", { text: `The input image, channel ${channel}: pixels scaled to [0, 1], then (x − mean) / std.` }));
    document.body.dataset.detail = `${node.id}:${channel}`;
    bringDetail();
    return;
  }
  let d;
  try { d = await api(`images/${state.image}/nodes/${node.id}/channels/${channel}`); }
  catch (e) { if (state.selected === mine) box.replaceChildren(el("p", { class: "note", text: e.message })); return; }
  if (state.selected !== mine) return;  // another layer was opened while this one loaded: it is the one shown
  box.replaceChildren();
  const single = floats(d.output).data.length === 1 && ["mul", "flatten", "other", "norm", "const"].includes(node.kind);
  const view = single ? elementView : node.kind === "linear" && !d.weight ? otherView : { conv: convView, act: actView, pool: poolView, gpool: gpoolView, bn: bnView, linear: linearView, upconv: upconvView, sub: addView, shuffle: shuffleView,
                 add: addView, cat: catView }[node.kind] || otherView;
  view(box, node, channel, d);
  box.prepend(learn(node.kind));
  document.body.dataset.detail = `${node.id}:${channel}`;
  bringDetail();
}

function bringDetail() {  // the detail view opens below the overview: scroll to it, and flash it once
  const sec = $("#detail-section");
  sec.scrollIntoView({ behavior: matchMedia("(prefers-reduced-motion: reduce)").matches ? "auto" : "smooth", block: "start" });
  sec.classList.remove("flash"); void sec.offsetWidth; sec.classList.add("flash");
}

function convView(box, node, channel, d) {
  const x = floats(d.input), w = floats(d.weight), out = floats(d.output);
  const [cin, H, W] = x.shape, [, kh, kw] = w.shape, [oh, ow] = out.shape;
  const [sh, sw] = d.stride, [ph, pw] = d.padding, [dh, dw] = d.dilation;
  // where a window position outside the input reads from, by the layer's padding mode (-1: a zero)
  const pad = (i, n) => {
    if (i >= 0 && i < n) return i;
    if (d.padding_mode === "reflect") return i < 0 ? -i : 2 * (n - 1) - i;
    if (d.padding_mode === "replicate") return i < 0 ? 0 : n - 1;
    if (d.padding_mode === "circular") return ((i % n) + n) % n;
    return -1;
  };
  const shown = Math.min(cin, 16);
  // each input channel's own convolution with its kernel slice (CNN Explainer's intermediate maps): the output
  // is their sum plus the bias
  const parts = [];
  for (let c = 0; c < shown; c++) {
    const p = new Float32Array(oh * ow);
    for (let oy = 0; oy < oh; oy++) for (let ox = 0; ox < ow; ox++) {
      let s = 0;
      for (let ky = 0; ky < kh; ky++) for (let kx = 0; kx < kw; kx++) {
        const iy = pad(oy * sh - ph + ky * dh, H), ix = pad(ox * sw - pw + kx * dw, W);
        if (iy >= 0 && ix >= 0) s += x.data[(c * H + iy) * W + ix] * w.data[(c * kh + ky) * kw + kx];
      }
      p[oy * ow + ox] = s;
    }
    parts.push(p);
  }
  const range = (arrays) => { let a = Infinity, b = -Infinity; for (const t of arrays) for (const v of t) { a = Math.min(a, v); b = Math.max(b, v); } return [a, b]; };
  const [xl, xh] = range(Array.from({ length: shown }, (_, c) => channelOf(x, c)));  // one scale for the inputs
  const [pl, ph2] = range(parts);  // one for the maps they give (the output, their sum, has its own)
  const inputs = el("div", { class: "inputs" });
  const inBoxes = [], partBoxes = [];
  for (let c = 0; c < shown; c++) {
    const b = mapBox(channelOf(x, c), H, W, `input channel ${d.input_channels[c]}`, xl, xh);
    b.canvas.className = "";
    const pb = mapBox(parts[c], oh, ow, `input channel ${d.input_channels[c]} convolved with its kernel slice`, pl, ph2, "part");
    pb.canvas.values = parts[c];
    inputs.append(el("div", { class: "inch", "data-channel": String(d.input_channels[c]) },
      el("span", { class: "chlabel", text: `c${d.input_channels[c]}` }), b, el("span", { class: "op", text: "⋆ kernel →" }), pb));
    inBoxes.push(b); partBoxes.push(pb);
  }
  const groupNote = d.groups > 1 ? (cin === 1
    ? `depthwise: group ${d.group} of ${d.groups} reads input channel ${d.input_channels[0]} only`
    : `grouped: group ${d.group} of ${d.groups} reads input channels ${d.input_channels[0]}–${d.input_channels[cin - 1]}`)
    : `reads all ${cin} input channels`;
  const bn = d.chain.find((s) => s.kind === "bn");
  const act = d.chain.find((s) => s.kind === "act") || (bn && bn.activation ? { function: bn.activation, output: bn.output } : null);
  const final = d.chain.length ? floats(d.chain[d.chain.length - 1].output) : out;
  const outBox = mapBox(out.data, oh, ow, "output (hover a pixel, or focus it and use the arrows)");
  const formula = el("div", { id: "formula", text: "Hover a pixel of the output (or press ▶ slide) to write out its dot product." });
  const slide = el("button", { class: "slide", type: "button", text: "▶ slide the window" });
  box.append(el("div", { class: "panel" },
                el("b", { text: `Each input channel (${cin}${cin > shown ? `, first ${shown} shown` : ""}; ${groupNote}) convolved with its ` +
                         `${kh}×${kw} kernel slice, stride ${sh}, padding ${ph}${d.padding_mode !== "zeros" ? ` (${d.padding_mode})` : ""}${dh > 1 ? `, dilation ${dh}` : ""}` }),
                el("div", { class: "hint", text: "the inputs on one colour scale, the maps they give on another: compare channels' shares" }), inputs),
             el("div", { class: "panel" }, el("b", { text: `Output ${oh}×${ow} = the sum of those maps${d.has_bias === false ? "" : " + bias"}` }), outBox, slide),
             el("div", { class: "panel" }, formula));
  if (bn) {
    const scale = bn.gamma / Math.sqrt(bn.var + bn.eps);
    box.append(el("div", { class: "panel" }, el("b", { text: "BatchNorm, folded into this channel" }),
      el("div", { text: `w′ = w · γ/√(σ²+ε) = w · ${fmt(scale)}` }),
      el("div", { text: `b′ = (b − μ) · γ/√(σ²+ε) + β = ${fmt((d.bias - bn.mean) * scale + bn.beta)}` })));
  }
  const show = (oy, ox) => {
    const y0 = oy * sh - ph, x0 = ox * sw - pw;
    inBoxes.forEach((b) => showWindow(b, H, W, y0, x0, (kh - 1) * dh + 1, (kw - 1) * dw + 1));
    partBoxes.forEach((b) => showWindow(b, oh, ow, oy, ox, 1, 1));
    showWindow(outBox, oh, ow, oy, ox, 1, 1);
    let sum = 0;
    const terms = [], partial = new Float64Array(cin), windows = [];
    for (let c = 0; c < cin; c++) {
      const win = [];
      for (let ky = 0; ky < kh; ky++) for (let kx = 0; kx < kw; kx++) {
        const iy = pad(y0 + ky * dh, H), ix = pad(x0 + kx * dw, W);
        const v = iy >= 0 && ix >= 0 ? x.data[(c * H + iy) * W + ix] : 0;
        const wt = w.data[(c * kh + ky) * kw + kx];
        sum += v * wt; partial[c] += v * wt;
        terms.push([v * wt, v, wt, c]);
        win.push(v);
      }
      windows.push(win);
    }
    terms.sort((a, b) => Math.abs(b[0]) - Math.abs(a[0]));  // the largest contributions first
    const shownTerms = terms.slice(0, 12).map(([, v, wt, c]) => `${fmt(v, 3)}×${fmt(wt, 3)}${cin > 1 ? `[c${d.input_channels[c]}]` : ""}`);
    const z = sum + d.bias;
    const n = cin * kh * kw;
    const byChannel = [...partial.keys()].sort((a, b) => Math.abs(partial[b]) - Math.abs(partial[a]));
    const lines = [`output[${oy}, ${ox}] = Σ input × weight over ${cin}×${kh}×${kw} = ${n} terms`,
      `  largest first: ${shownTerms.join(" + ")}${n > shownTerms.length ? ` + … (${n - shownTerms.length} more)` : ""}`,
      ...(cin > 1 ? [`  per input channel (each channel's window · its kernel slice), largest first:`,
                     `    ${byChannel.slice(0, 8).map((c) => `c${d.input_channels[c]} ${fmt(partial[c], 4)}`).join(" + ")}${cin > 8 ? ` + … (${cin - 8} more)` : ""}`] : []),
      `  = ${fmt(sum)}`, ...(d.has_bias === false ? [] : [`  + bias ${fmt(d.bias)}`])];
    numbersOf(inBoxes, windows, w, kh, kw, shown, partial);
    const conv = el("span", { id: "dot-value", text: fmt(z) });
    let y = z;
    const tail = [];
    if (bn) {
      y = (z - bn.mean) / Math.sqrt(bn.var + bn.eps) * bn.gamma + bn.beta;
      tail.push(`BatchNorm: (${fmt(z)} − ${fmt(bn.mean)}) / √(${fmt(bn.var)} + ${bn.eps}) × ${fmt(bn.gamma)} + ${fmt(bn.beta)} = ${fmt(y)}`);
    }
    if (act) {
      const a = activate(act.function, y);
      tail.push(`${act.function}(${fmt(y)}) = ${FORMULAS[act.function] || act.function} = ${fmt(a)}`);
      y = a;
    }
    formula.replaceChildren(lines.join("\n") + "\n  = ", conv,
      el("span", { id: "dot-torch", text: `   (PyTorch: ${fmt(out.data[oy * ow + ox])})` }));
    if (tail.length) formula.append(el("div", {}, tail.join("\n"), "\n= ", el("span", { id: "dot-final", text: fmt(y) }),
                                       el("span", { text: `   (PyTorch: ${fmt(final.data[oy * ow + ox])})` })));
    formula.dataset.pixel = `${oy},${ox}`;
    outBox.canvas.setAttribute("aria-label", `output pixel ${oy}, ${ox}: ${fmt(z)}; arrows move, the formula is beside`);
  };
  let at = [0, 0];
  const go = (oy, ox) => { at = [oy, ox]; show(oy, ox); };
  hoverPixel(outBox, oh, ow, go);
  stepper(outBox.canvas, oh, ow, () => at, go);
  // the sliding animation: the window walks the output row by row (about 8 s in all); with reduced motion each
  // press moves it one position instead
  const reduced = matchMedia("(prefers-reduced-motion: reduce)").matches;
  if (reduced) slide.textContent = "▸ next position";
  let timer = null;
  const stop = () => { clearInterval(timer); timer = null; slide.textContent = reduced ? "▸ next position" : "▶ slide the window"; };
  const next = () => {
    const i = at[0] * ow + at[1] + (formula.dataset.pixel ? 1 : 0);
    if (i >= oh * ow) { stop(); return false; }
    go(Math.floor(i / ow), i % ow);
    return true;
  };
  slide.onclick = () => {
    if (reduced) { if (!next()) go(0, 0); return; }
    if (timer) { stop(); return; }
    if (at[0] * ow + at[1] >= oh * ow - 1) { at = [0, 0]; delete formula.dataset.pixel; }
    slide.textContent = "❚❚ pause";
    timer = setInterval(() => { if (!box.isConnected) stop(); else next(); }, Math.max(16, Math.min(250, 8000 / (oh * ow))));
  };
}

// a transposed convolution, backwards from one output pixel: the input pixels whose stamp covers it, each times
// the kernel entry that lands there, summed over the input channels, + the bias
function upconvView(box, node, channel, d) {
  const x = floats(d.input), w = floats(d.weight), out = floats(d.output);
  const [cin, H, W] = x.shape, [, kh, kw] = w.shape, [oh, ow] = out.shape;
  const [sh, sw] = d.stride, [ph, pw] = d.padding;
  const shown = Math.min(cin, 16);
  let xl = Infinity, xh = -Infinity;
  for (let c = 0; c < shown; c++) for (const v of channelOf(x, c)) { xl = Math.min(xl, v); xh = Math.max(xh, v); }
  const inBoxes = Array.from({ length: shown }, (_, c) => mapBox(channelOf(x, c), H, W, `input channel ${c}`, xl, xh));
  const outBox = mapBox(out.data, oh, ow, "output (hover a pixel, or focus it and use the arrows)");
  const formula = el("div", { id: "formula", text: "Hover a pixel of the output to see which input pixels' stamps cover it." });
  box.append(el("div", { class: "panel" }, el("b", { text: `Input channels (${cin}${cin > shown ? `, first ${shown} shown` : ""}), one colour scale` }),
                el("div", { class: "inputs" }, ...inBoxes.map((b, c) => el("div", { class: "inch" }, el("span", { class: "chlabel", text: `c${c}` }), b)))),
             el("div", { class: "panel" }, el("b", { text: `Output ${oh}×${ow}: ${kh}×${kw} kernel, stride ${sh}${ph ? `, padding ${ph}` : ""}` }), outBox),
             el("div", { class: "panel" }, formula));
  let at = [0, 0];
  const go = (oy, ox) => {
    at = [oy, ox];
    const terms = [];
    let sum = 0, where = null;
    for (let ky = 0; ky < kh; ky++) for (let kx = 0; kx < kw; kx++) {
      const ty = oy + ph - ky, tx = ox + pw - kx;  // output = input × stride − padding + kernel offset
      if (ty % sh || tx % sw) continue;
      const iy = ty / sh, ix = tx / sw;
      if (iy < 0 || iy >= H || ix < 0 || ix >= W) continue;
      where = where || [iy, ix];
      for (let c = 0; c < cin; c++) {
        const v = x.data[(c * H + iy) * W + ix], wt = w.data[(c * kh + ky) * kw + kx];
        sum += v * wt; terms.push([v * wt, v, wt, c, iy, ix, ky, kx]);
      }
    }
    inBoxes.forEach((b) => (where ? showWindow(b, H, W, where[0], where[1], 1, 1) : null));
    showWindow(outBox, oh, ow, oy, ox, 1, 1);
    terms.sort((a, b) => Math.abs(b[0]) - Math.abs(a[0]));
    const z = sum + d.bias;
    const cover = [...new Set(terms.map((t) => `(${t[4]}, ${t[5]}) with kernel entry (${t[6]}, ${t[7]})`))];
    formula.replaceChildren(`output[${oy}, ${ox}] is covered by the stamp of input pixel ${cover.join(", ") || "none"}\n` +
      `  = Σ over the ${cin} input channels of input × kernel entry, largest first:\n` +
      `  ${terms.slice(0, 12).map(([, v, wt, c]) => `${fmt(v, 3)}×${fmt(wt, 3)}[c${c}]`).join(" + ")}${terms.length > 12 ? ` + … (${terms.length - 12} more)` : ""}\n` +
      `  = ${fmt(sum)}${d.has_bias ? `\n  + bias ${fmt(d.bias)}` : ""}\n  = `, el("span", { id: "dot-value", text: fmt(z) }),
      el("span", { id: "dot-torch", text: `   (PyTorch: ${fmt(out.data[oy * ow + ox])})` }));
    formula.dataset.pixel = `${oy},${ox}`;
  };
  hoverPixel(outBox, oh, ow, go);
  stepper(outBox.canvas, oh, ow, () => at, go);
}

// a pixel shuffle, from one output pixel back to the input channel and pixel it is copied from
function shuffleView(box, node, channel, d) {
  const x = floats(d.input[0]), out = floats(d.output), s = node.params.scale;
  const [, H, W] = x.shape, [oh, ow] = out.shape;
  const feeds = Array.from({ length: s * s }, (_, k) => channel * s * s + k);  // the channels of this output channel
  let xl = Infinity, xh = -Infinity;
  for (const c of feeds) for (const v of channelOf(x, c)) { xl = Math.min(xl, v); xh = Math.max(xh, v); }
  const boxes = feeds.map((c) => mapBox(channelOf(x, c), H, W, `input channel ${c}`, xl, xh));
  const ob = mapBox(out.data, oh, ow, "output (hover, or focus it and use the arrows)");
  const f = el("div", { id: "formula", text: `output channel ${channel} interleaves input channels ${feeds[0]}–${feeds[feeds.length - 1]}. Hover the output.` });
  box.append(el("div", { class: "panel" }, el("b", { text: `the ${s * s} input channels of output channel ${channel}, one colour scale` }),
                el("div", { class: "inputs" }, ...boxes.map((b, k) => el("div", { class: "inch" }, el("span", { class: "chlabel", text: `c${feeds[k]}` }), b)))),
             el("div", { class: "panel" }, el("b", { text: `output ${oh}×${ow}` }), ob), el("div", { class: "panel" }, f));
  let at = [0, 0];
  const go = (oy, ox) => {
    at = [oy, ox];
    const k = (oy % s) * s + (ox % s), iy = Math.floor(oy / s), ix = Math.floor(ox / s);
    boxes.forEach((b, j) => (j === k ? showWindow(b, H, W, iy, ix, 1, 1) : b.querySelector(".window") && b.querySelector(".window").remove()));
    showWindow(ob, oh, ow, oy, ox, 1, 1);
    f.replaceChildren(`output[${channel}, ${oy}, ${ox}] = input[${feeds[k]}, ${iy}, ${ix}]  (channel ${channel}·${s * s} + (${oy} mod ${s})·${s} + (${ox} mod ${s}), at (⌊${oy}/${s}⌋, ⌊${ox}/${s}⌋))\n  = `,
      el("span", { id: "dot-value", text: fmt(x.data[(feeds[k] * H + iy) * W + ix]) }),
      el("span", { id: "dot-torch", text: `   (PyTorch: ${fmt(out.data[oy * ow + ox])})` }));
    f.dataset.pixel = `${oy},${ox}`;
  };
  hoverPixel(ob, oh, ow, go);
  stepper(ob.canvas, oh, ow, () => at, go);
}

function stepper(canvas, h, w, where, go) {  // a map's pixel chosen by keyboard: focus it, arrows move
  canvas.tabIndex = 0;
  canvas.addEventListener("keydown", (ev) => {
    const [y, x] = where();
    const to = { ArrowUp: [y - 1, x], ArrowDown: [y + 1, x], ArrowLeft: [y, x - 1], ArrowRight: [y, x + 1] }[ev.key];
    if (!to) return;
    ev.preventDefault();
    go(Math.max(0, Math.min(h - 1, to[0])), Math.max(0, Math.min(w - 1, to[1])));
  });
}

// under each input channel of the elastic view: its window's values beside its kernel slice, in numbers, and the
// channel's partial sum (the two grids' products added up)
function numbersOf(inBoxes, windows, w, kh, kw, shown, partial) {
  if (kh * kw > 49) return;
  inBoxes.forEach((b, c) => {
    if (c >= shown) return;
    const card = b.parentElement;  // under the input channel's map and the map it gives
    let t = card.querySelector(".nums");
    if (!t) { t = el("div", { class: "nums" }); card.append(t); }
    const grid = (vals, cls) => el("table", { class: cls }, ...Array.from({ length: kh }, (_, ky) =>
      el("tr", {}, ...Array.from({ length: kw }, (_, kx) => el("td", { text: fmt(vals[ky * kw + kx], 2) })))));
    t.replaceChildren(grid(windows[c], "win"), el("span", { text: "·" }),
                      grid(w.data.subarray(c * kh * kw, (c + 1) * kh * kw), "ker"),
                      el("span", { class: "partial", text: `= ${fmt(partial[c], 3)}` }));
  });
}

function actView(box, node, channel, d) {
  const fn = node.params.function;
  const inp = floats(d.input[0]), out = floats(d.output);
  const [h, w] = out.shape.length === 2 ? out.shape : [1, out.shape[0]];
  const ib = mapBox(channelOf(inp, 0), h, w, "input"), ob = mapBox(out.data, h, w, "output (hover)");
  const f = el("div", { id: "formula", text: `${fn}(x) = ${FORMULAS[fn] || fn}, applied to every value.` });
  box.append(el("div", { class: "panel" }, el("b", { text: "input" }), ib), el("div", { class: "panel" }, el("b", { text: "output" }), ob),
             el("div", { class: "panel" }, curve(fn), f));
  hoverPixel(ob, h, w, (y, x) => {
    const v = channelOf(inp, 0)[y * w + x];
    f.textContent = `${fn}(${fmt(v)}) = ${FORMULAS[fn] || fn} = ${fmt(activate(fn, v))}   (PyTorch: ${fmt(out.data[y * w + x])})`;
  });
}

function curve(fn) {  // the activation function on [-4, 4]
  const pts = [];
  for (let i = 0; i <= 80; i++) { const x = -4 + i / 10; pts.push([x, activate(fn, x)]); }
  const ys = pts.map((p) => p[1]);
  const lo = Math.min(...ys, -1), hi = Math.max(...ys, 1);
  const path = pts.map(([x, y], i) => `${i ? "L" : "M"}${(x + 4) * 20},${120 - ((y - lo) / (hi - lo)) * 120}`).join(" ");
  const svg = document.createElementNS("http://www.w3.org/2000/svg", "svg");
  svg.setAttribute("width", 160); svg.setAttribute("height", 120);
  svg.innerHTML = `<line x1="80" y1="0" x2="80" y2="120" stroke="#ccc"/><line x1="0" y1="${120 - ((0 - lo) / (hi - lo)) * 120}" x2="160" y2="${120 - ((0 - lo) / (hi - lo)) * 120}" stroke="#ccc"/><path d="${path}" fill="none" stroke="#2f6fde" stroke-width="2"/>`;
  return svg;
}

function poolView(box, node, channel, d) {
  const p = node.params;
  const inp = floats(d.input[0]), out = floats(d.output);
  const [H, W] = inp.shape.slice(-2), [oh, ow] = out.shape;
  const ib = mapBox(channelOf(inp, 0), H, W, "input"), ob = mapBox(out.data, oh, ow, "output (hover)");
  const f = el("div", { id: "formula", text: `${p.op} pooling, ${p.kernel.join("×")} window, stride ${p.stride[0]}, padding ${p.padding[0]}. Hover the output.` });
  box.append(el("div", { class: "panel" }, el("b", { text: `input ${H}×${W}` }), ib),
             el("div", { class: "panel" }, el("b", { text: `output ${oh}×${ow}` }), ob), el("div", { class: "panel" }, f));
  hoverPixel(ob, oh, ow, (oy, ox) => {
    const y0 = oy * p.stride[0] - p.padding[0], x0 = ox * p.stride[1] - p.padding[1];
    showWindow(ib, H, W, y0, x0, p.kernel[0], p.kernel[1]);
    const vals = [];
    let padded = 0;
    for (let ky = 0; ky < p.kernel[0]; ky++) for (let kx = 0; kx < p.kernel[1]; kx++) {
      const iy = y0 + ky, ix = x0 + kx;
      if (iy >= 0 && iy < H && ix >= 0 && ix < W) vals.push(channelOf(inp, 0)[iy * W + ix]); else padded++;
    }
    const v = p.op === "max" ? Math.max(...vals)
      : vals.reduce((a, b) => a + b, 0) / (p.count_include_pad ? vals.length + padded : vals.length);
    f.textContent = `${p.op}(${vals.map((a) => fmt(a, 3)).join(", ")}${padded ? `, ${padded} padding` : ""}) = ${fmt(v)}   (PyTorch: ${fmt(out.data[oy * ow + ox])})`;
  });
}

function gpoolView(box, node, channel, d) {
  const inp = floats(d.input[0]), out = floats(d.output);
  const src = channelOf(inp, 0);
  const [H, W] = inp.shape.length >= 2 ? inp.shape.slice(-2) : [1, src.length];
  const op = node.params.op;
  const v = op === "max" ? Math.max(...src) : src.reduce((a, b) => a + b, 0) / src.length;
  box.append(el("div", { class: "panel" }, el("b", { text: `input ${H}×${W}` }), mapBox(src, H, W, "input")),
             el("div", { id: "formula", text: `global ${op} pooling: ${op === "max" ? "max" : "mean"} of the ${src.length} values = ${fmt(v)}   (PyTorch: ${fmt(out.data[0])})` }));
}

function bnView(box, node, channel, d) {
  const inp = floats(d.input[0]), out = floats(d.output);
  const [h, w] = out.shape;
  const ib = mapBox(channelOf(inp, 0), h, w, "input"), ob = mapBox(out.data, h, w, "output (hover)");
  const f = el("div", { id: "formula", text: `y = (x − μ) / √(σ² + ε) · γ + β with μ = ${fmt(d.mean)}, σ² = ${fmt(d.var)}, ε = ${d.eps}, γ = ${fmt(d.gamma)}, β = ${fmt(d.beta)}` });
  box.append(el("div", { class: "panel" }, el("b", { text: "input" }), ib), el("div", { class: "panel" }, el("b", { text: "output" }), ob),
             el("div", { class: "panel" }, f));
  hoverPixel(ob, h, w, (y, x) => {
    const v = channelOf(inp, 0)[y * w + x];
    let r = (v - d.mean) / Math.sqrt(d.var + d.eps) * d.gamma + d.beta;
    const act = node.params.activation;
    f.textContent = `(${fmt(v)} − ${fmt(d.mean)}) / √(${fmt(d.var)} + ${d.eps}) · ${fmt(d.gamma)} + ${fmt(d.beta)} = ${fmt(r)}`;
    if (act) { r = activate(act, r); f.textContent += `, then ${act}: ${fmt(r)}`; }
    f.textContent += `   (PyTorch: ${fmt(out.data[y * w + x])})`;
  });
}

function linearView(box, node, channel, d) {
  const x = floats(d.input), w = floats(d.weight), out = floats(d.output);
  const terms = [...x.data].map((v, i) => [i, v, w.data[i], v * w.data[i]]);
  const sum = terms.reduce((a, t) => a + t[3], 0);
  const top = [...terms].sort((a, b) => Math.abs(b[3]) - Math.abs(a[3])).slice(0, 12);
  const cls = classLabel(node, channel) ? ` (class ${classLabel(node, channel)})` : "";
  box.append(el("div", { id: "formula" },
    `output ${channel}${cls} = Σ xᵢ·wᵢ over ${x.data.length} inputs + bias\n`,
    `largest terms: ${top.map(([i, v, wt]) => `x${i} ${fmt(v, 3)}×${fmt(wt, 3)}`).join(" + ")}${terms.length > 12 ? " + …" : ""}\n`,
    `  = ${fmt(sum)} + ${fmt(d.bias)} = `, el("span", { id: "dot-value", text: fmt(sum + d.bias) }),
    `   (PyTorch: ${fmt(out.data[0])})`));
}

function addView(box, node, channel, d) {  // an addition, or (DnCNN's) the input less the predicted noise
  const ins = d.input.map(floats), out = floats(d.output);
  const [h, w] = out.shape;
  const minus = node.kind === "sub";
  const f = el("div", { id: "formula", text: minus ? "A subtraction, element by element: the first input less the second. Hover the output."
    : "A residual join: the inputs are added element by element. Hover the output." });
  const name = (id) => { const n = state.graph.nodes.find((m) => m.id === id); return n ? `${n.label} (${kindLabel(n)})` : id; };
  const boxes = ins.map((t, i) => el("div", { class: "panel" }, el("b", { text: `input ${i + 1}: ${name(d.inputs[i])}` }), mapBox(channelOf(t, 0), h, w, "input")));
  const ob = mapBox(out.data, h, w, "output (hover)");
  box.append(...boxes, el("div", { class: "panel" }, el("b", { text: minus ? "difference" : "sum" }), ob), el("div", { class: "panel" }, f));
  hoverPixel(ob, h, w, (y, x) => {
    const vs = ins.map((t) => (t.shape.length === out.shape.length ? channelOf(t, 0)[y * w + x] : NaN));
    const v = minus ? vs.slice(1).reduce((a, b) => a - b, vs[0]) : vs.reduce((a, b) => a + b, 0);
    f.textContent = `${vs.map((u) => fmt(u)).join(minus ? " − " : " + ")} = ${fmt(v)}   (PyTorch: ${fmt(out.data[y * w + x])})`;
    f.dataset.pixel = `${y},${x}`;
  });
}

function catView(box, node, channel, d) {
  box.append(el("div", { id: "formula", text: `A concatenation of ${d.sizes.length} branches (${d.sizes.join(" + ")} channels): channel ${channel} is channel ${d.source_channel} of input ${d.source + 1} (${d.inputs[d.source]}), unchanged.` }));
  const out = floats(d.output);
  if (out.shape.length === 2) box.append(mapBox(out.data, out.shape[0], out.shape[1], "channel"));
}

function otherView(box, node, channel, d) {
  const out = floats(d.output);
  const panels = (d.input || []).map((t, i) => {
    const f = floats(t);
    const [h, w] = f.shape.length >= 2 ? f.shape.slice(-2) : [1, f.data.length];
    return el("div", { class: "panel" }, el("b", { text: `input ${i + 1}` }), mapBox(channelOf(f, 0), h, w, "input"));
  });
  const [h, w] = out.shape.length >= 2 ? out.shape.slice(-2) : [1, out.data.length];
  box.append(...panels, el("div", { class: "panel" }, el("b", { text: "output" }), mapBox(channelOf(out, 0), h, w, "output")),
             el("p", { class: "note", text: d.note || `${node.type}: ${node.kind === "flatten" ? "the same values, reshaped" : "no formula view here; its input and output are shown"}` }));
}

function elementView(box, node, channel, d) {  // one element of a vector layer (flatten, a scaling), in numbers
  const ins = (d.input || []).map((t) => floats(t).data[0]), y = floats(d.output).data[0];
  const f = node.params && node.params.factor;
  const cls = classLabel(node, channel);
  let text;
  if (node.kind === "mul" && f !== undefined)
    text = `A constant scaling: output[${channel}] = input × ${fmt(f, 5)} = ${fmt(ins[0])} × ${fmt(f, 5)} = `;
  else if (node.kind === "mul")
    text = `An element-wise product: output[${channel}] = ${ins.map((v) => fmt(v)).join(" × ")} = `;
  else if (node.kind === "const")
    text = `A learned constant, the same for every image: element ${channel} = `;
  else if (node.kind === "flatten")
    text = `Flatten: the values are kept, only their shape changes (C×H×W to one vector). output[${channel}] = input[${channel}] = `;
  else
    text = `${node.type}: input ${ins.map((v) => fmt(v)).join(", ")} → output[${channel}] = `;
  box.append(el("div", { id: "formula" }, text, el("span", { id: "dot-value", text: fmt(y) }), cls ? `   (class ${cls})` : ""));
}

function openSoftmax(chosen) {
  const ov = state.overview, cls = state.graph.classes;
  state.selected = null;  // a detail still loading is not shown over this one
  document.body.dataset.detail = `softmax:${chosen}`;
  bringDetail();
  const m = Math.max(...ov.logits);
  const ex = ov.logits.map((z) => Math.exp(z - m));
  const s = ex.reduce((a, b) => a + b, 0);
  $("#detail-title").textContent = "softmax: logits to probabilities";
  const rows = ov.logits.map((z, i) => `${i === chosen ? "▶ " : "  "}${cls[i].padEnd(14)} z = ${fmt(z, 4).padStart(9)}   e^(z − max) = ${fmt(ex[i], 5)}   p = ${fmt(ex[i] / s, 5)}   (PyTorch: ${fmt(ov.probabilities[i], 5)})${i === ov.predicted ? "  ★ predicted" : ""}`);
  $("#detail").replaceChildren(learn("softmax"), el("div", { id: "formula", text: `pᵢ = e^(zᵢ − max z) / Σⱼ e^(zⱼ − max z),  Σ = ${fmt(s)}\n${rows.join("\n")}` }));
}

// ---------------------------------------------------------------------------------------------- why this class
function drawScores() {
  const ov = state.overview, cls = state.graph.classes;
  if (detecting()) {  // the detections, best first: a bar is one detection's score
    const dets = ov.output.detections;
    const held = (k) => !EXPORT || EXPORT.answers[`images/${ov.image}/why?detection=${k}&method=${whyMethods()[0]}`] !== undefined;
    $("#scores").replaceChildren(...dets.map((d, k) => {
      const row = el("div", { class: `scorebar${held(k) ? "" : " unheld"}`, "data-class": String(k), role: "button", tabindex: "0",
                              ...(held(k) ? {} : { "aria-disabled": "true", title: "not in this export" }) },
        el("span", { text: `#${k} ${cls[d[5]]}${k === 0 ? " ★ best" : ""}` }), el("div", {}, el("div", { class: "bar", style: `width:${(100 * d[4]).toFixed(1)}%` })),
        el("span", { text: d[4].toFixed(3) }));
      row.onclick = () => (held(k) ? explainClass(k) : status("this static export holds the explanations of the best detection only"));
      return pressable(row);
    }));
    if (!dets.length) $("#scores").replaceChildren(el("p", { class: "note", text: "no detection scores above the threshold (cnnkit explore --score-threshold)" }));
    return;
  }
  if (restoring()) {  // no classes: the boxes of the restored image are what is explained
    const go = el("button", { type: "button", class: "region-centre", text: "explain the box at the centre" });
    go.onclick = () => explainRegion(null);
    $("#scores").replaceChildren(go);
    return;
  }
  const order = ov.probabilities.map((p, i) => [p, i]).sort((a, b) => b[0] - a[0]);
  const item = state.gallery.find((g) => g.id === ov.image);
  const same = !state.galleryClasses || state.galleryClasses.join() === cls.join();
  const truth = item && same ? item.label : undefined;
  // an export holds the explanations of the predicted and the true class only: the other bars say so
  // a segmentation model explains a class over the pixels predicted as it: a class on no pixel cannot be chosen
  const none = (i) => segmenting() && !(ov.probabilities[i] > 0);
  const held = (i) => !none(i) && (!EXPORT || EXPORT.answers[`images/${ov.image}/why?target=${i}&method=${whyMethods()[0]}`] !== undefined);
  $("#scores").replaceChildren(...order.map(([p, i]) => {
    const marks = `${i === ov.predicted ? (segmenting() ? " ★ most pixels" : " ★ predicted") : ""}${i === truth ? " ✓ true class" : ""}`;
    const row = el("div", { class: `scorebar${held(i) ? "" : " unheld"}${i === truth ? " truth" : ""}`, "data-class": String(i),
                            role: "button", tabindex: "0", ...(held(i) ? {} : { "aria-disabled": "true", title: "not in this export" }) },
      el("span", { text: cls[i] + marks }), el("div", {}, el("div", { class: "bar", style: `width:${(100 * p).toFixed(1)}%` })),
      el("span", { text: `${(100 * p).toFixed(1)}%` }));
    if (none(i)) row.title = "no pixel is predicted as this class";
    row.onclick = () => (held(i) ? explainClass(i) : status(none(i) ? `no pixel is predicted as ${cls[i]}: there is no region to explain it over`
      : "this static export holds the explanations of the predicted and the true class only"));
    return pressable(row);
  }));
}

function explainRegion(region) {  // a restoration model: which input pixels a box of its output depends on
  if (region && EXPORT) { status("this static export holds the explanations of the box at the centre only"); return; }
  return explainClass(null, region);
}

async function explainClass(target, region = null) {
  state.target = restoring() ? `region:${region}` : target;
  target = restoring() ? state.target : target;
  for (const r of document.querySelectorAll(".scorebar")) r.classList.toggle("chosen", Number(r.dataset.class) === target);
  const box = $("#why");
  box.replaceChildren();
  const image = state.image;
  const seen = $("#seen-canvas");
  for (const method of whyMethods()) {
    const card = el("div", { class: "why-card", "data-method": method }, el("b", { text: method }), el("p", { class: "note", text: "computing …" }));
    box.append(card);
  }
  for (const method of whyMethods()) {
    const card = box.querySelector(`[data-method="${CSS.escape(method)}"]`);
    let r;
    const query = restoring() ? `method=${encodeURIComponent(method)}${region ? `&region=${region.join(",")}` : ""}`
      : detecting() ? `detection=${target}&method=${encodeURIComponent(method)}`
      : `target=${target}&method=${encodeURIComponent(method)}`;
    try { r = await api(`images/${image}/why?${query}`); }
    catch (e) { r = { error: e.message }; }
    if (state.image !== image || state.target !== target) return;  // another choice since
    if (r.error) { card.replaceChildren(el("b", { text: method }), el("p", { class: "error", text: r.error })); continue; }
    const c = el("canvas", { class: "overlay" });
    const q = bytes(r.map);
    c.width = r.width; c.height = r.height;
    const ctx = c.getContext("2d");
    ctx.drawImage(seen, 0, 0, r.width, r.height);
    const base = ctx.getImageData(0, 0, r.width, r.height);
    for (let i = 0; i < q.length; i++) {  // jet-like colour over the gray image, half and half
      const t = q[i] / 255;
      const col = [Math.min(1, Math.max(0, 1.5 - Math.abs(4 * t - 3))), Math.min(1, Math.max(0, 1.5 - Math.abs(4 * t - 2))),
                   Math.min(1, Math.max(0, 1.5 - Math.abs(4 * t - 1)))];
      for (let k = 0; k < 3; k++) base.data[4 * i + k] = 0.5 * base.data[4 * i + k] + 127.5 * col[k];
    }
    ctx.putImageData(base, 0, 0);
    if (detecting() && r.box) {  // the explained box, on its map
      ctx.strokeStyle = "#ffffff"; ctx.lineWidth = 1;
      ctx.strokeRect(r.box[0] + 0.5, r.box[1] + 0.5, r.box[2] - r.box[0] - 1, r.box[3] - r.box[1] - 1);
      card.dataset.detection = String(r.detection);
    }
    if (restoring()) {  // no deletion curve: the map is where, in the input, the chosen box comes from
      showRegion(r.region);
      card.replaceChildren(el("b", { text: method.replace("_", " ") }), c,
        el("div", { class: "scores", text: `the input pixels the output box ${r.region[0]},${r.region[1]}–${r.region[2]},${r.region[3]} depends on` }));
      card.dataset.region = r.region.join(",");
      card.dataset.done = "1";
      continue;
    }
    card.replaceChildren(el("b", { text: method }), c,
      el("div", { class: "scores", text: `deletion ${r.deletion.toFixed(3)} · insertion ${r.insertion.toFixed(3)}` }),
      curves(r.deletion_curve, r.insertion_curve, detecting() ? `detection ${target} (its match)` : state.graph.classes[target]));
    if (r.zero_map) card.append(el("div", { class: "note", text: "the map is zero everywhere" }));
    card.dataset.done = "1";
  }
}

// the class's probability as the map's most relevant pixels are deleted (falls fast for a faithful map: a small
// area under it) and as they are revealed on a blurred copy (rises fast: a large area), against the share changed
const CURVE = { w: 150, h: 90, pad: 18 };
function curves(deletion, insertion, cls) {
  const { w, h, pad } = CURVE;
  const xy = (v, i, n) => [pad + (i / (n - 1)) * (w - pad - 4), 4 + (1 - v) * (h - pad - 4)];
  const line = (vals) => vals.map((v, i) => { const [x, y] = xy(v, i, vals.length); return `${i ? "L" : "M"}${x.toFixed(2)},${y.toFixed(2)}`; }).join(" ");
  const svg = document.createElementNS("http://www.w3.org/2000/svg", "svg");
  svg.setAttribute("width", w); svg.setAttribute("height", h); svg.setAttribute("class", "curves");
  svg.setAttribute("role", "img");
  svg.setAttribute("aria-label", `probability of ${cls} as pixels are deleted (red) and inserted (blue), by the share changed`);
  const [x0, y0] = xy(1, 0, 2), [x1, y1] = xy(0, 1, 2);  // the plot's corners: probability 1 at the top left
  svg.innerHTML = `<rect x="${x0}" y="${y0}" width="${x1 - x0}" height="${y1 - y0}" fill="none" stroke="#d0d5dd"/>` +
    `<text x="${x0 - 3}" y="${y0 + 3}" text-anchor="end">1</text><text x="${x0 - 3}" y="${y1}" text-anchor="end">0</text>` +
    `<text x="${(x0 + x1) / 2}" y="${h - 2}" text-anchor="middle">share of pixels changed</text>` +
    `<path class="deletion" d="${line(deletion)}" fill="none" stroke="#d92d20" stroke-width="1.5"/>` +
    `<path class="insertion" d="${line(insertion)}" fill="none" stroke="#2f6fde" stroke-width="1.5"/>`;
  svg.dataset.box = [x0, y0, x1, y1].join(",");
  return svg;
}

// ---------------------------------------------------------------------------------------------- playground
function playground() {
  const ids = ["size", "pad", "kernel", "stride"];
  const read = () => Object.fromEntries(ids.map((k) => [k, Number($(`#pg-${k}`).value)]));
  const cell = 22;
  const draw = (hover = null) => {
    const { size, pad, kernel, stride } = read();
    for (const k of ids) $(`#pg-${k}`).nextElementSibling.textContent = $(`#pg-${k}`).value;
    const n = size + 2 * pad;
    const f = $("#pg-formula");
    if (kernel > n) {
      f.className = "error";
      f.textContent = `The kernel (${kernel}) is larger than the padded input (${size} + 2×${pad} = ${n}): no output.`;
      $("#pg-input").innerHTML = ""; $("#pg-output").innerHTML = "";
      return;
    }
    const out = Math.floor((n - kernel) / stride) + 1;
    const unused = n - ((out - 1) * stride + kernel);
    f.className = "";
    f.textContent = `output size = ⌊(input + 2·padding − kernel) / stride⌋ + 1 = ⌊(${size} + ${2 * pad} − ${kernel}) / ${stride}⌋ + 1 = ${out}` +
      (unused ? `  (the last ${unused} row(s) and column(s) are never covered)` : "");
    const svgIn = $("#pg-input"), svgOut = $("#pg-output");
    svgIn.setAttribute("width", n * cell); svgIn.setAttribute("height", n * cell);
    svgOut.setAttribute("width", out * cell); svgOut.setAttribute("height", out * cell);
    let s = "";
    for (let y = 0; y < n; y++) for (let x = 0; x < n; x++) {
      const isPad = y < pad || x < pad || y >= n - pad || x >= n - pad;
      s += `<rect x="${x * cell}" y="${y * cell}" width="${cell - 1}" height="${cell - 1}" fill="${isPad ? "#eee" : "#c7d7fe"}"/>`;
    }
    const [hy, hx] = hover || [0, 0];
    s += `<rect x="${hx * stride * cell}" y="${hy * stride * cell}" width="${kernel * cell - 1}" height="${kernel * cell - 1}" fill="none" stroke="#f79009" stroke-width="3"/>`;
    svgIn.innerHTML = s;
    let o = "";
    for (let y = 0; y < out; y++) for (let x = 0; x < out; x++)
      o += `<rect data-y="${y}" data-x="${x}" x="${x * cell}" y="${y * cell}" width="${cell - 1}" height="${cell - 1}" fill="${y === hy && x === hx ? "#f79009" : "#fde2c0"}"/>`;
    svgOut.innerHTML = o;
  };
  for (const k of ids) $(`#pg-${k}`).oninput = () => draw();
  $("#pg-output").addEventListener("mousemove", (ev) => {
    const t = ev.target;
    if (t.dataset && t.dataset.y !== undefined) draw([Number(t.dataset.y), Number(t.dataset.x)]);
  });
  draw();
}

// ---------------------------------------------------------------------------------------------- start
async function main() {
  playground();
  wireInput();
  try {
    await chooseModel();
    state.graph = await api("graph");
    $("#model-name").textContent = `${state.graph.model} · ${state.graph.architecture || ""}`;
    $("#graph-note").textContent = state.graph.note || `${state.graph.nodes.length} layers from torch.fx`;
    await loadGallery();
    const first = state.gallery[0];
    if (first) await showImage(first.id);
    else { status("upload an image to begin"); document.body.dataset.ready = "1"; }
  } catch (e) {
    status(e.message, true);
    document.body.dataset.ready = "error";
  }
}

main();
