// attnkit explorer: the page. Plain JavaScript, no library, no network beyond this server.
// Matrices arrive as float16 (one head) or uint8 (the overview), base64, pooled into token blocks
// by the server when there are more tokens than pixels; everything is drawn on <canvas>.
'use strict';

const HEAT_PX = 512;          // heatmap side in CSS pixels: more tokens than this are pooled into blocks
const LINE_CELLS = 48;        // the lines view pools longer inputs into this many token groups
const OVERVIEW_CELLS = 48;    // cells per side of each overview panel
const SPECTRO_PX = 120;       // height of the spectrogram drawn under a speech heatmap (plus a band of words)
const HEAD_COLORS = ['#1f77b4', '#ff7f0e', '#2ca02c', '#d62728', '#9467bd', '#8c564b', '#e377c2', '#7f7f7f',
  '#bcbd22', '#17becf', '#393b79', '#637939'];

const $ = (id) => document.getElementById(id);
const S = {modes: [], mode: null, analysis: null, view: null, layer: 0, head: 0, selected: new Set(),
  heat: {}, selection: null, runStart: 0, runs: 0, hoverRow: null, picture: null};
const timings = {};

// ---------------------------------------------------------------------------------------- data
const F16 = (() => {  // float16 bits -> float32, as a lookup table
  const t = new Float32Array(65536);
  for (let h = 0; h < 65536; h++) {
    const s = h & 0x8000 ? -1 : 1, e = (h >> 10) & 0x1f, f = h & 0x3ff;
    t[h] = e === 0 ? s * f * 2 ** -24 : e === 31 ? (f ? NaN : s * Infinity) : s * (1 + f / 1024) * 2 ** (e - 15);
  }
  return t;
})();

function bytes(b64) {
  const s = atob(b64), out = new Uint8Array(s.length);
  for (let i = 0; i < s.length; i++) out[i] = s.charCodeAt(i);
  return out;
}

function decodeF16(b64) {
  const u16 = new Uint16Array(bytes(b64).buffer), out = new Float32Array(u16.length);
  for (let i = 0; i < u16.length; i++) out[i] = F16[u16[i]];
  return out;
}

async function api(path, body) {
  const opts = body === undefined ? {} : {method: 'POST', headers: {'Content-Type': 'application/json'},
    body: JSON.stringify(body)};
  const r = await fetch(path, opts);
  const data = await r.json().catch(() => ({error: `HTTP ${r.status}`}));
  if (!r.ok) throw new Error(data.error || `HTTP ${r.status}`);
  return data;
}

function showMessage(text) {
  const m = $('message');
  m.textContent = text || '';
  m.hidden = !text;
}

function esc(s) {
  return String(s).replace(/[&<>"]/g, (c) => ({'&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;'}[c]));
}

// ---------------------------------------------------------------------------------------- modes and form
function buildModes() {
  const nav = $('modes');
  nav.innerHTML = '';
  for (const m of S.modes) {
    const b = document.createElement('button');
    b.textContent = m.title;
    b.dataset.mode = m.name;
    b.onclick = () => selectMode(m.name);
    nav.appendChild(b);
  }
}

function selectMode(name) {
  S.mode = S.modes.find((m) => m.name === name);
  document.querySelectorAll('#modes button').forEach((b) => b.classList.toggle('active', b.dataset.mode === name));
  $('mode-help').textContent = S.mode.help;
  const form = $('form');
  form.innerHTML = '';
  for (const inp of S.mode.inputs) {
    const lab = document.createElement('label');
    lab.dataset.input = inp.name;
    lab.append(inp.label);
    let el;
    if (inp.kind === 'text') {
      el = document.createElement('textarea');
      el.placeholder = inp.placeholder || '';
    } else if (inp.kind === 'select') {
      el = document.createElement('select');
      for (const c of inp.choices) el.add(new Option(c, c, false, c === inp.default));
      el.onchange = applyWhen;
    } else {
      el = document.createElement('input');
      el.type = 'number';
      el.min = inp.low; el.max = inp.high; el.value = inp.default;
    }
    el.name = inp.name;
    lab.appendChild(el);
    form.appendChild(lab);
  }
  const go = document.createElement('button');
  go.type = 'submit';
  go.id = 'run';
  go.textContent = 'Show attention';
  form.appendChild(go);
  form.onsubmit = (ev) => { ev.preventDefault(); run(); };
  applyWhen();
  showMessage('');
  $('result').hidden = true;
  $('notices').innerHTML = '';
}

function applyWhen() {
  const form = $('form');
  for (const inp of S.mode.inputs) {
    const shown = Object.entries(inp.when || {}).every(([k, vals]) => vals.includes(form.elements[k].value));
    form.querySelector(`label[data-input="${inp.name}"]`).hidden = !shown;
  }
}

function formInputs() {
  const form = $('form'), out = {};
  for (const inp of S.mode.inputs) {
    const v = form.elements[inp.name].value;
    if (inp.kind === 'int') out[inp.name] = Number(v);
    else if (inp.kind === 'text') { if (v.trim() || inp.required) out[inp.name] = v; }
    else out[inp.name] = v;
  }
  return out;
}

// ---------------------------------------------------------------------------------------- running
async function run() {
  const inputs = formInputs();
  const first = S.mode.inputs.find((i) => i.kind === 'text' && i.required);
  if (first && !String(inputs[first.name] || '').trim()) {
    showMessage(`The ${first.label} is empty: type some text first.`);
    return;
  }
  showMessage('');
  $('run').disabled = true;
  S.runStart = performance.now();
  S.firstDrawn = false;
  try {
    const a = await api('/api/run', {mode: S.mode.name, inputs, first: {cells: HEAT_PX}});
    S.firstMatrix = a.first_matrix;  // the first picture's matrix came with the analysis
    delete a.first_matrix;
    timings.run_ms = performance.now() - S.runStart;
    await showAnalysis(a);
    timings.all_views_ms = performance.now() - S.runStart;
    await loadLater(a);
    S.runs += 1;
    showTimings();
  } catch (e) {
    showMessage(e.message);
  } finally {
    $('run').disabled = false;
  }
}

async function showAnalysis(a) {
  S.analysis = a;
  S.selected = new Set();
  S.selection = null;
  $('result').hidden = false;
  $('notices').innerHTML = (a.info.notices || []).map((n) => `<div class="notice">${esc(n)}</div>`).join('');
  const nums = a.info.numbers;
  $('numbers').innerHTML = nums ? '<dl>' + Object.entries(nums).map(([k, v]) =>
    `<dt>${esc(k)}</dt><dd data-number="${esc(k)}">${esc(v)}</dd>`).join('') + '</dl>' : '';
  const sel = $('view');
  sel.innerHTML = '';
  for (const [name, v] of Object.entries(a.views)) sel.add(new Option(v.title, name));
  S.view = Object.keys(a.views)[0];
  sel.value = S.view;
  S.layer = a.views[S.view].layers - 1;
  S.head = 0;
  $('flow').hidden = !(a.info.flow_available && !a.views.flow);
  buildTables(a.info.tables || []);
  await setView(S.view);
}

// tables the server computes only when asked (info.later: action names), after the first picture
async function loadLater(a) {
  for (const name of a.info.later || []) {
    if (S.analysis !== a) return;  // a newer run replaced this one
    const r = await api('/api/action', {key: a.key, action: name, params: {}});
    a.info.tables = r.tables;
  }
  if ((a.info.later || []).length && S.analysis === a) { buildTables(a.info.tables); markCurrent(); }
}

async function setView(name) {
  S.view = name;
  const v = S.analysis.views[name];
  S.layer = Math.min(S.layer, v.layers - 1);
  S.head = v.heads === 1 ? 0 : S.head;
  fillSelect($('layer'), v.layer_names.map((n, i) => [n, i]), S.layer);
  fillSelect($('head'), [...Array(v.heads).keys()].map((h) => [`head ${h}`, h]).concat([['mean of heads', 'mean']]),
    S.head);
  drawTokens();
  await drawHeatmaps();  // the picture first: the other views' requests would share the server with it
  await Promise.all([drawOverview(), drawLines()]);
  await updateSelection();
}

function fillSelect(sel, items, value) {
  sel.innerHTML = '';
  for (const [label, v] of items) sel.add(new Option(label, v));
  sel.value = value;
}

async function setHead(layer, head) {
  S.layer = layer;
  S.head = head;
  $('layer').value = layer;
  $('head').value = head;
  await Promise.all([drawHeatmaps(), drawLines(), updateSelection()]);
  markCurrent();
}

// ---------------------------------------------------------------------------------------- heatmaps
function heatColor(x) {  // 0..1 -> white..dark blue
  const t = Math.max(0, Math.min(1, x));
  return [Math.round(255 * (1 - t)), Math.round(255 * (1 - 0.75 * t)), Math.round(255 - 120 * t)];
}

async function fetchMatrix(view, layer, head, cells) {
  const q = new URLSearchParams({key: S.analysis.key, view, layer, head, cells});
  const t0 = performance.now();
  const f = S.firstMatrix;
  S.firstMatrix = null;  // used once, for exactly the matrix it is
  const m = f && f.view === view && f.layer === layer && String(f.head) === String(head) && cells === HEAT_PX
    ? f : await api('/api/matrix?' + q);
  const t1 = performance.now();
  m.values = decodeF16(m.data);
  delete m.data;
  timings.fetch_ms = t1 - t0;
  timings.decode_ms = performance.now() - t1;
  return m;
}

function drawMatrix(canvas, m, side) {
  const t0 = performance.now();
  const [n, k] = m.shape, vals = m.values, px1 = side / Math.max(n, k);
  canvas.style.width = `${Math.round(k * px1)}px`;
  // a wide, short matrix (a few tokens over many audio steps) gets taller rows, up to half the side
  canvas.style.height = `${Math.round(Math.max(n * px1, Math.min(n * 14, side / 2)))}px`;
  let mx = 1e-12;
  for (let i = 0; i < vals.length; i++) if (vals[i] > mx) mx = vals[i];
  canvas.width = k; canvas.height = n;
  const ctx = canvas.getContext('2d'), img = ctx.createImageData(k, n), px = img.data;
  for (let i = 0; i < vals.length; i++) {
    const [r, g, b] = heatColor(vals[i] / mx);
    px[4 * i] = r; px[4 * i + 1] = g; px[4 * i + 2] = b; px[4 * i + 3] = 255;
  }
  ctx.putImageData(img, 0, 0);
  m.max = mx;
  timings.draw_ms = performance.now() - t0;
}

async function drawHeatmaps() {
  const a = S.analysis, box = $('heatmaps');
  const names = a.info.side_by_side && a.info.side_by_side.includes(S.view) ? a.info.side_by_side : [S.view];
  box.className = names.length > 1 ? 'side' : '';
  box.innerHTML = '';
  S.heat = {};
  const mats = await Promise.all(names.map((v) => fetchMatrix(v, Math.min(S.layer, a.views[v].layers - 1),
    a.views[v].heads === 1 ? 0 : S.head, HEAT_PX)));
  names.forEach((v, idx) => {
    const m = mats[idx], wrap = document.createElement('div'), c = document.createElement('canvas');
    c.className = 'heat';
    c.id = `heat-${v}`;
    drawMatrix(c, m, names.length > 1 ? 340 : HEAT_PX);
    Object.assign(c.dataset, {view: v, layer: m.layer, head: m.head, shape: m.shape.join('x'),
      group: m.group.join('x'), ready: '1'});
    c.onmousemove = (ev) => hover(ev, c, m, v);
    c.onmouseleave = () => { $('hover').textContent = ''; if (S.hoverRow) { S.hoverRow = null; drawPicture(); } };
    wrap.appendChild(labelled(c, m, a.views[v]));
    wrap.append(a.views[v].title);
    box.appendChild(wrap);
    if (!S.firstDrawn) {  // the time a person waits for the first picture of a run
      S.firstDrawn = true;
      timings.first_heatmap_ms = performance.now() - S.runStart;
    }
    S.heat[v] = m;
  });
  const g = mats[0].group;
  $('pool-note').textContent = g[0] > 1 || g[1] > 1 ? `(${mats[0].tokens[0]} tokens: each cell is a block of ` +
    `${g[0]} x ${g[1]} tokens, the mean over its queries of the summed weight)` : '';
  S.hoverRow = null;
  drawPicture();
  box.dataset.ready = String(Date.now());
}

function labelled(canvas, m, view) {  // token labels beside and above the heatmap when they fit
  const [n, k] = m.shape, cellY = parseFloat(canvas.style.height) / n, cellX = parseFloat(canvas.style.width) / k;
  if (m.group[0] > 1 || m.group[1] > 1 || Math.min(cellX, cellY) < 9) return canvas;
  const grid = document.createElement('div');
  grid.className = 'labelled';
  const font = Math.min(12, Math.floor(Math.min(cellX, cellY) * 0.9));
  const axis = (labels, cls, cell) => {
    const d = document.createElement('div');
    d.className = cls;
    for (const t of labels) {
      const sp = document.createElement('span');
      sp.textContent = t.length > 12 ? t.slice(0, 11) + '…' : t;
      sp.style.fontSize = `${font}px`;
      sp.style[cls === 'cols' ? 'width' : 'height'] = `${cell}px`;
      d.appendChild(sp);
    }
    return d;
  };
  grid.append(document.createElement('span'), axis(view.cols, 'cols', cellX), axis(view.rows, 'rows', cellY), canvas);
  return grid;
}

function hover(ev, canvas, m, view) {
  const r = canvas.getBoundingClientRect();
  const j = Math.floor((ev.clientX - r.left) / r.width * m.shape[1]);
  const i = Math.floor((ev.clientY - r.top) / r.height * m.shape[0]);
  if (i < 0 || j < 0 || i >= m.shape[0] || j >= m.shape[1]) return;
  const v = S.analysis.views[view];
  const lab = (labels, idx, g) => g === 1 ? labels[idx] : `${labels[idx * g]}…${labels[Math.min(labels.length, (idx + 1) * g) - 1]}`;
  $('hover').textContent = `${lab(v.rows, i, m.group[0])} → ${lab(v.cols, j, m.group[1])}: ` +
    m.values[i * m.shape[1] + j].toFixed(4);
  if (S.analysis.info.picture && (!S.hoverRow || S.hoverRow.row !== i || S.hoverRow.view !== view)) {
    S.hoverRow = {view, row: i, label: lab(v.rows, i, m.group[0]), group: m.group[1],
      values: Array.from(m.values.subarray(i * m.shape[1], (i + 1) * m.shape[1]))};
    drawPicture();
  }
}

// ---------------------------------------------------------------------------------------- picture
// An analysis may carry a picture (info.picture): an image whose patches are columns of some views
// (picture.patches: view -> column of the first patch), or a spectrogram whose time steps are the
// columns of some views (picture.views). The attention of one row is laid over it: the hovered row,
// else the selected tokens' summed attention, else the heatmap's first row.
function pictureOverlay(p) {
  const applies = p.kind === 'image' ? (p.patches || {})[S.view] !== undefined : (p.views || []).includes(S.view);
  if (!applies) return null;
  if (S.hoverRow && S.hoverRow.view === S.view) return S.hoverRow;
  if (S.selection && S.selection.view === S.view) {
    const rows = S.analysis.views[S.view].rows;
    return {label: `selection (${S.selection.tokens.map((i) => rows[i]).join(' ')})`, group: 1, values: S.selection.rows};
  }
  const m = S.heat[S.view];
  if (!m) return null;
  return {label: S.analysis.views[S.view].rows[0] + (m.group[0] > 1 ? '…' : ''), group: m.group[1],
    values: Array.from(m.values.subarray(0, m.shape[1]))};
}

function drawPicture() {
  const p = S.analysis && S.analysis.info.picture;
  $('picture-panel').hidden = !(p && p.kind === 'image');
  $('spectrogram-box').hidden = !(p && p.kind === 'spectrogram' && (p.views || []).includes(S.view));
  if (!p) { S.picture = null; return; }
  if (!p.pixels) p.pixels = bytes(p.data);
  const o = pictureOverlay(p);
  if (p.kind === 'image') drawImagePicture(p, o); else drawSpectrogram(p, o);
}

function drawImagePicture(p, o) {  // native pixels, scaled up by CSS; patch weights tint the image red
  const c = $('picture'), [gh, gw] = p.grid, first = (p.patches || {})[S.view];
  c.width = p.width; c.height = p.height;
  const ctx = c.getContext('2d'), img = ctx.createImageData(p.width, p.height);
  let patches = null;
  if (o) {
    patches = [];
    for (let q = 0; q < gh * gw; q++) patches.push(o.values[Math.floor((first + q) / o.group)] || 0);
  }
  const mx = patches ? Math.max(...patches, 1e-12) : 1, ph = p.height / gh, pw = p.width / gw;
  for (let y = 0; y < p.height; y++) {
    for (let x = 0; x < p.width; x++) {
      const g = p.pixels[y * p.width + x], i = 4 * (y * p.width + x);
      const a = patches ? 0.8 * patches[Math.floor(y / ph) * gw + Math.floor(x / pw)] / mx : 0;
      img.data[i] = Math.round(g * (1 - a) + 255 * a);
      img.data[i + 1] = Math.round(g * (1 - a) + 40 * a);
      img.data[i + 2] = Math.round(g * (1 - a) + 20 * a);
      img.data[i + 3] = 255;
    }
  }
  ctx.putImageData(img, 0, 0);
  $('picture-note').textContent = `${p.title || 'image'} (${gh} x ${gw} patches)` + (o ? `; red: attention of ` +
    `${o.label} over the patches (largest ${mx.toFixed(4)})` : '; this view is not over the patches');
  S.picture = {kind: p.kind, view: S.view, label: o ? o.label : null, overlay: patches};
  c.dataset.ready = '1';
}

function drawSpectrogram(p, o) {  // under the heatmap, as wide as it: column j of the heatmap above time j
  const heat = document.querySelector('#heatmaps canvas.heat');
  const c = $('spectrogram'), W = Math.max(64, Math.round(parseFloat(heat ? heat.style.width : 512) || 512));
  const H = SPECTRO_PX, band = 18;
  c.width = W; c.height = H + band;
  c.style.width = `${W}px`; c.style.height = `${H + band}px`;
  const off = document.createElement('canvas');
  off.width = p.width; off.height = p.height;
  const octx = off.getContext('2d'), img = octx.createImageData(p.width, p.height);
  for (let i = 0; i < p.pixels.length; i++) {
    const [r, g, b] = heatColor(p.pixels[i] / 255);
    img.data.set([r, g, b, 255], 4 * i);
  }
  octx.putImageData(img, 0, 0);
  const ctx = c.getContext('2d');
  ctx.clearRect(0, 0, W, H + band);
  ctx.imageSmoothingEnabled = false;
  ctx.drawImage(off, 0, 0, W, H);
  const seconds = p.width / p.frames_per_col * p.seconds_per_col;
  ctx.font = '10px monospace';
  ctx.textBaseline = 'middle';
  (p.words || []).forEach((w, i) => {
    const x0 = w.start / seconds * W, x1 = w.end / seconds * W;
    ctx.fillStyle = i % 2 ? '#dde6f0' : '#c6d4e4';
    ctx.fillRect(x0, H + 1, Math.max(1, x1 - x0), band - 2);
    ctx.fillStyle = '#222';
    ctx.save();
    ctx.beginPath(); ctx.rect(x0, H, Math.max(1, x1 - x0), band); ctx.clip();
    ctx.fillText(w.word, x0 + 2, H + band / 2);
    ctx.restore();
  });
  let curve = null;
  if (o) {
    curve = o.values;
    const mx = Math.max(...curve, 1e-12), k = curve.length;
    ctx.strokeStyle = '#d00';
    ctx.lineWidth = 1.5;
    ctx.beginPath();
    curve.forEach((v, j) => {
      const x = (j + 0.5) * W / k, y = H - 4 - (H - 8) * v / mx;
      if (j) ctx.lineTo(x, y); else ctx.moveTo(x, y);
    });
    ctx.stroke();
  }
  c.title = o ? `red: attention of ${o.label} over time` : '';
  S.picture = {kind: p.kind, view: S.view, label: o ? o.label : null, overlay: curve && Array.from(curve),
    words: (p.words || []).length, width: W};
  c.dataset.ready = '1';
}

// ---------------------------------------------------------------------------------------- overview
async function drawOverview() {
  const v = S.analysis.views[S.view], box = $('overview');
  box.innerHTML = '';
  if (v.layers * v.heads <= 1) { box.textContent = '(one matrix)'; return; }
  const q = new URLSearchParams({key: S.analysis.key, view: S.view, cells: OVERVIEW_CELLS});
  const o = await api('/api/overview?' + q);
  const data = bytes(o.data), [L, H, n, k] = o.shape;
  box.style.gridTemplateColumns = `4em repeat(${H}, auto)`;
  box.appendChild(Object.assign(document.createElement('span'), {className: 'lab'}));
  for (let h = 0; h < H; h++) box.appendChild(Object.assign(document.createElement('span'), {className: 'lab', textContent: `h${h}`}));
  for (let l = 0; l < L; l++) {
    box.appendChild(Object.assign(document.createElement('span'), {className: 'lab', textContent: v.layer_names[l]}));
    for (let h = 0; h < H; h++) {
      const c = document.createElement('canvas');
      c.width = k; c.height = n;
      c.dataset.layer = l; c.dataset.head = h;
      c.title = `layer ${l}, head ${h}`;
      const ctx = c.getContext('2d'), img = ctx.createImageData(k, n), off = (l * H + h) * n * k;
      for (let i = 0; i < n * k; i++) {
        const [r, g, b] = heatColor(data[off + i] / 255);
        img.data.set([r, g, b, 255], 4 * i);
      }
      ctx.putImageData(img, 0, 0);
      c.onclick = () => setHead(l, h);
      box.appendChild(c);
    }
  }
  markCurrent();
}

function markCurrent() {
  document.querySelectorAll('#overview canvas').forEach((c) => c.classList.toggle('current',
    +c.dataset.layer === S.layer && String(c.dataset.head) === String(S.head)));
  document.querySelectorAll('tr.pick').forEach((tr) => tr.classList.toggle('current',
    +tr.dataset.layer === S.layer && String(tr.dataset.head) === String(S.head)));
}

// ---------------------------------------------------------------------------------------- lines
async function drawLines() {
  const v = S.analysis.views[S.view], canvas = $('lines');
  const all = $('all-heads').checked && v.heads > 1;
  const q = new URLSearchParams({key: S.analysis.key, view: S.view, layer: S.layer,
    head: all ? 'all' : (v.heads === 1 ? 0 : S.head), cells: LINE_CELLS});
  const m = await api('/api/matrix?' + q);
  const vals = decodeF16(m.data), shape = m.shape, heads = shape.length === 3 ? shape[0] : 1;
  const n = shape[shape.length - 2], k = shape[shape.length - 1], [gq, gk] = m.group;
  const rowH = 16, w = 420;
  canvas.width = w; canvas.height = Math.max(n, k) * rowH + 10;
  const ctx = canvas.getContext('2d');
  ctx.clearRect(0, 0, canvas.width, canvas.height);
  ctx.font = '11px monospace';
  const label = (labels, i, g) => g === 1 ? labels[i] : `${labels[i * g]}…`;
  const x0 = 125, x1 = w - 125;
  const focus = [...S.selected].map((i) => Math.floor(i / gq));
  for (let h = 0; h < heads; h++) {
    ctx.strokeStyle = HEAD_COLORS[(all ? h : (S.head === 'mean' ? 0 : +S.head)) % HEAD_COLORS.length];
    for (let i = 0; i < n; i++) {
      if (focus.length && !focus.includes(i)) continue;
      for (let j = 0; j < k; j++) {
        const x = vals[(h * n + i) * k + j];
        if (x < 0.02) continue;
        ctx.globalAlpha = Math.min(1, x / Math.sqrt(heads));
        ctx.lineWidth = 2;
        ctx.beginPath(); ctx.moveTo(x0 + 4, i * rowH + 12); ctx.lineTo(x1 - 4, j * rowH + 12); ctx.stroke();
      }
    }
  }
  ctx.globalAlpha = 1;
  ctx.fillStyle = '#222';
  ctx.textAlign = 'right';
  for (let i = 0; i < n; i++) ctx.fillText(label(v.rows, i, gq).slice(0, 16), x0, i * rowH + 16);
  ctx.textAlign = 'left';
  for (let j = 0; j < k; j++) ctx.fillText(label(v.cols, j, gk).slice(0, 16), x1, j * rowH + 16);
}

// ---------------------------------------------------------------------------------------- tokens and selection
function drawTokens() {
  const v = S.analysis.views[S.view], box = $('tokens');
  box.innerHTML = '';
  v.rows.forEach((t, i) => {
    const s = document.createElement('span');
    s.textContent = t;
    s.dataset.i = i;
    s.onclick = () => toggleToken(i);
    box.appendChild(s);
  });
}

async function toggleToken(i) {
  if (S.selected.has(i)) S.selected.delete(i); else S.selected.add(i);
  await Promise.all([updateSelection(), drawLines(), drawHeatmaps()]);
}

async function updateSelection() {
  const v = S.analysis.views[S.view], spans = $('tokens').children;
  for (const s of spans) { s.classList.toggle('selected', S.selected.has(+s.dataset.i)); s.style.background = ''; s.title = ''; }
  if (!S.selected.size) { S.selection = null; $('selection-info').textContent = ''; drawPicture(); return; }
  const sel = await api('/api/select', {key: S.analysis.key, view: S.view, layer: S.layer,
    head: v.heads === 1 ? 0 : S.head, tokens: [...S.selected]});
  S.selection = sel;
  drawPicture();
  const sameAxis = v.rows === v.cols || JSON.stringify(v.rows) === JSON.stringify(v.cols);
  const mx = Math.max(...sel.rows, 1e-12);
  if (sameAxis) {
    sel.rows.forEach((x, j) => {
      const [r, g, b] = heatColor(x / mx);
      spans[j].style.background = `rgb(${r},${g},${b})`;
      spans[j].title = `summed attention from the selection: ${x.toFixed(4)}`;
    });
  }
  const top = sel.rows.map((x, j) => [x, j]).sort((p, q) => q[0] - p[0]).slice(0, 5)
    .map(([x, j]) => `${v.cols[j]} ${x.toFixed(3)}`).join(', ');
  $('selection-info').textContent = `${sel.tokens.length} selected (${sel.tokens.map((i) => v.rows[i]).join(' ')}); ` +
    `their summed attention goes most to: ${top}`;
}

// ---------------------------------------------------------------------------------------- tables
function buildTables(tables) {
  const box = $('tables');
  box.innerHTML = '';
  for (const t of tables) {
    const h = document.createElement('h2');
    h.textContent = t.title;
    const wrap = document.createElement('div');
    wrap.className = 'tables-wrap';
    const table = document.createElement('table');
    table.id = `table-${t.id}`;
    const state = {col: -1, desc: false, rows: t.rows.slice()};
    const render = () => {
      table.innerHTML = '<tr>' + t.columns.map((c, i) => `<th data-col="${i}" class="${i === state.col ? 'sorted' : ''}"` +
        ` title="${esc((t.notes || {})[c] || 'click to sort')}">${esc(c)}${i === state.col ? (state.desc ? ' ▼' : ' ▲') : ''}</th>`).join('') + '</tr>' +
        state.rows.map((r) => `<tr class="${t.select_head ? 'pick' : ''}" data-layer="${r[0]}" data-head="${r[1]}">` +
          r.map((x) => `<td>${esc(x)}</td>`).join('') + '</tr>').join('');
      table.querySelectorAll('th').forEach((th) => { th.onclick = () => {
        const c = +th.dataset.col;
        state.desc = state.col === c ? !state.desc : true;
        state.col = c;
        state.rows.sort((a, b) => (a[c] < b[c] ? -1 : a[c] > b[c] ? 1 : 0) * (state.desc ? -1 : 1));
        render();
      }; });
      if (t.select_head) table.querySelectorAll('tr.pick').forEach((tr) => { tr.onclick = () =>
        setHead(+tr.dataset.layer, +tr.dataset.head); });
      markCurrent();
    };
    render();
    wrap.appendChild(table);
    box.append(h, wrap);
  }
}

// ---------------------------------------------------------------------------------------- timings and start
function showTimings() {
  $('timings').textContent = Object.entries(timings).map(([k, v]) => `${k} ${v.toFixed(1)}`).join(' · ');
}

async function start() {
  $('view').onchange = (ev) => setView(ev.target.value);
  $('layer').onchange = (ev) => setHead(+ev.target.value, S.head);
  $('head').onchange = (ev) => setHead(S.layer, ev.target.value === 'mean' ? 'mean' : +ev.target.value);
  $('all-heads').onchange = () => drawLines();
  $('flow').onclick = async () => {
    $('flow').disabled = true;
    try {
      const r = await api('/api/action', {key: S.analysis.key, action: 'flow'});
      S.analysis.views[r.view] = r.description;
      $('view').add(new Option(r.description.title, r.view));
      $('view').value = r.view;
      $('flow').hidden = true;
      await setView(r.view);
    } catch (e) { showMessage(e.message); } finally { $('flow').disabled = false; }
  };
  try {
    S.modes = (await api('/api/modes')).modes;
  } catch (e) { showMessage(`cannot reach the explorer server: ${e.message}`); return; }
  buildModes();
  selectMode(S.modes[0].name);
  document.body.dataset.ready = '1';
}

// the page's state, for scripts and tests: the values drawn in each heatmap, the selection, timings
window.explorer = {
  state: S, timings,
  heatmap: (view) => { const m = S.heat[view || S.view]; return m && {view: m.view, layer: m.layer, head: m.head,
    shape: m.shape, group: m.group, values: Array.from(m.values)}; },
  selection: () => S.selection,
  picture: () => S.picture,
  setHead, selectMode, toggleToken,
};
start();
