// sam-jax web demo: the server computes the image embedding once (POST /api/embedding); every
// hover, click and box drag runs the exported decoder here, with onnxruntime-web (WebAssembly).
//
// Prompts follow the official SAM demo: coordinates in the resized-input frame (the image scaled so
// that its longest side is the model's image_size: x * input_w / W, y * input_h / H, as
// SamPredictor does); points only -> one extra (0, 0) point with label -1; a box -> its corners with
// labels 2 and 3 after the points; no mask input. The decoder returns one mask (logits at the original
// size); pixels with logit > 0 are drawn. One inference runs at a time: a newer request replaces a
// waiting one (stale mouse moves are dropped), and drawing happens in requestAnimationFrame.

import * as ort from './ort/ort.wasm.min.mjs';

ort.env.wasm.wasmPaths = new URL('./ort/', import.meta.url).href; // served locally: works offline
ort.env.wasm.numThreads = 1; // no SharedArrayBuffer, so no cross-origin isolation needed
ort.env.wasm.proxy = false;

const MASK_RGBA = [30, 144, 255, 150];
const DRAG_CSS_PIXELS = 5; // a press that moves farther than this is a box, not a click

const $ = (id) => document.getElementById(id);
const els = {
  file: $('file'), clear: $('clear'), status: $('status'), stage: $('stage'), drop: $('drop'),
  placeholder: $('placeholder'), image: $('image'), mask: $('mask'), marks: $('marks'),
};

const state = {
  session: null,
  meta: null, // from the server: shape, original_size [H, W], input_size [h, w], image_size, scale
  embedding: null, // ort.Tensor (1, C, h, w)
  maskInput: null, // zeros (1, 1, 4h, 4w)
  clicks: [], // committed points {x, y, label} in image pixels (label 1 positive, 0 negative)
  box: null, // committed {x0, y0, x1, y1} in image pixels
  hover: null, // {x, y}: previews a positive point while nothing is committed
  drag: null, // a left-button press in progress
  epoch: 0, // bumped by a new image or a clear: results of older requests are dropped
};

// Test and debugging hook: what the page last drew, and counters.
const debug = { state, runs: 0, drawCount: 0, lastMask: null, lastPrompt: null, lastDecodeMs: null, errors: [] };
window.__samDemo = debug;

function setStatus(text, kind) {
  els.status.textContent = text;
  els.status.className = kind === 'error' ? 'error' : '';
  if (kind) document.body.dataset.state = kind;
}

function fail(err) {
  console.error(err);
  debug.errors.push(String(err && err.message ? err.message : err));
  setStatus(`Error: ${err && err.message ? err.message : err}`, 'error');
}

const sessionReady = ort.InferenceSession.create(new URL('decoder.onnx', document.baseURI).href, {
  executionProviders: ['wasm'],
}).then((session) => {
  state.session = session;
  if (!state.meta) setStatus('Open an image to start.', 'decoder-ready');
  return session;
}).catch((err) => {
  fail(new Error(`could not load the decoder: ${err.message || err}`));
  throw err;
});

// ------------------------------------------------------------------------------------ images
let loads = 0; // a newer openFile supersedes an older one still waiting for its embedding

async function openFile(file) {
  if (!file) return;
  const load = ++loads;
  state.epoch++;
  pending = null;
  shownMask = null;
  state.meta = state.embedding = null;
  state.clicks = []; state.box = null; state.hover = null; state.drag = null;
  els.clear.disabled = true;
  els.stage.hidden = true;
  els.placeholder.hidden = false;
  setStatus('Computing the image embedding on the server…', 'embedding');
  try {
    const resp = await fetch('api/embedding', {
      method: 'POST', body: file, headers: { 'Content-Type': file.type || 'application/octet-stream' },
    });
    if (!resp.ok) {
      let msg = `${resp.status} ${resp.statusText}`;
      try { msg = (await resp.json()).error || msg; } catch (_) { /* not JSON */ }
      throw new Error(msg);
    }
    const meta = JSON.parse(resp.headers.get('X-SAM-Embedding'));
    const data = toFloat32(await resp.arrayBuffer());
    if (load !== loads) return;
    let bitmap;
    try {
      bitmap = await createImageBitmap(file, { imageOrientation: 'from-image' });
    } catch (err) {
      throw new Error(`the browser cannot display this image (${err.message || err})`);
    }
    const count = meta.shape.reduce((a, b) => a * b, 1);
    if (data.length !== count) throw new Error(`embedding has ${data.length} values, expected ${count}`);
    const [H, W] = meta.original_size;
    if (bitmap.width !== W || bitmap.height !== H) {
      bitmap.close();
      throw new Error(`the browser decoded ${bitmap.width}x${bitmap.height} but the server ${W}x${H}`);
    }
    await sessionReady;
    if (load !== loads) { bitmap.close(); return; }
    const [, , h, w] = meta.shape;
    state.meta = meta;
    state.embedding = new ort.Tensor('float32', data, meta.shape);
    state.maskInput = new ort.Tensor('float32', new Float32Array(16 * h * w), [1, 1, 4 * h, 4 * w]);
    for (const c of [els.image, els.mask, els.marks]) { c.width = W; c.height = H; }
    els.image.getContext('2d').drawImage(bitmap, 0, 0);
    bitmap.close();
    maskImage = null;
    els.mask.getContext('2d').clearRect(0, 0, W, H);
    els.marks.getContext('2d').clearRect(0, 0, W, H);
    els.stage.hidden = false;
    els.placeholder.hidden = true;
    setStatus(`${W}x${H} image ready: hover, click or drag.`, 'ready');
  } catch (err) {
    if (load === loads) fail(err);
  }
}

function toFloat32(buffer) {
  // The server sends float32 little-endian; every browser host is little-endian, but check.
  if (new Uint8Array(new Uint16Array([1]).buffer)[0] === 1) return new Float32Array(buffer);
  const view = new DataView(buffer);
  const out = new Float32Array(buffer.byteLength / 4);
  for (let i = 0; i < out.length; i++) out[i] = view.getFloat32(4 * i, true);
  return out;
}

// ------------------------------------------------------------------------------------ prompts
function currentPrompt() {
  const clicks = state.clicks.slice();
  let box = state.box;
  if (state.drag && state.drag.box) box = state.drag.box;
  if (!clicks.length && !box) {
    if (!state.hover) return null;
    clicks.push({ x: state.hover.x, y: state.hover.y, label: 1 });
  }
  return { clicks, box };
}

function decoderInputs(prompt) {
  const [H, W] = state.meta.original_size;
  const [h, w] = state.meta.input_size;
  const sx = w / W, sy = h / H;
  const points = prompt.clicks.map((c) => [c.x * sx, c.y * sy, c.label]);
  if (prompt.box) {
    const b = prompt.box;
    points.push([b.x0 * sx, b.y0 * sy, 2], [b.x1 * sx, b.y1 * sy, 3]);
  } else {
    points.push([0, 0, -1]); // the official demo's padding point when there is no box
  }
  const n = points.length;
  const coords = new Float32Array(2 * n), labels = new Float32Array(n);
  points.forEach(([x, y, l], i) => { coords[2 * i] = x; coords[2 * i + 1] = y; labels[i] = l; });
  const feeds = {
    image_embeddings: state.embedding,
    point_coords: new ort.Tensor('float32', coords, [1, n, 2]),
    point_labels: new ort.Tensor('float32', labels, [1, n]),
    mask_input: state.maskInput,
    has_mask_input: new ort.Tensor('float32', new Float32Array([0]), [1]),
    orig_im_size: new ort.Tensor('float32', new Float32Array([H, W]), [2]),
  };
  const used = {};
  for (const name of state.session.inputNames) used[name] = feeds[name];
  return used;
}

// One inference at a time; `pending` holds only the newest waiting request.
let pending = null;
let running = false;

function refresh() {
  const prompt = currentPrompt();
  els.clear.disabled = !(state.clicks.length || state.box);
  scheduleDraw();
  if (!state.embedding) return;
  if (!prompt) {
    state.epoch++; // drop whatever is in flight
    pending = null;
    shownMask = null;
    scheduleDraw();
    return;
  }
  pending = { prompt, epoch: state.epoch };
  pump();
}

async function pump() {
  if (running || !pending) return;
  running = true;
  const job = pending;
  pending = null;
  try {
    const t0 = performance.now();
    const out = await state.session.run(decoderInputs(job.prompt));
    const ms = performance.now() - t0;
    debug.runs++;
    const masks = out.masks || out[state.session.outputNames[0]];
    // Drawn unless the image or the prompts were reset meanwhile (a newer waiting request still
    // runs next; drawing this one first keeps the mask following a mouse that never stops).
    if (job.epoch === state.epoch) {
      const [H, W] = state.meta.original_size;
      const logits = masks.data;
      const bits = new Uint8Array(H * W);
      for (let i = 0; i < H * W; i++) bits[i] = logits[i] > 0 ? 1 : 0; // first (only) mask
      shownMask = { bits, width: W, height: H, prompt: job.prompt, ms };
      scheduleDraw();
    }
  } catch (err) {
    fail(err);
  } finally {
    running = false;
    if (pending) pump();
  }
}

// ------------------------------------------------------------------------------------ drawing
let shownMask = null; // the mask to draw (null: none)
let maskImage = null; // reused ImageData
let frameRequested = false;

// Nothing running, waiting or about to be drawn.
debug.idle = () => !running && !pending && !frameRequested;

function scheduleDraw() {
  if (frameRequested) return;
  frameRequested = true;
  requestAnimationFrame(draw);
}

function draw() {
  frameRequested = false;
  if (!state.meta) return;
  const [H, W] = state.meta.original_size;
  const mctx = els.mask.getContext('2d');
  if (!shownMask) {
    mctx.clearRect(0, 0, W, H);
    debug.lastMask = null;
    debug.lastPrompt = null;
  } else if (debug.lastMask !== shownMask) {
    if (!maskImage || maskImage.width !== W || maskImage.height !== H) maskImage = mctx.createImageData(W, H);
    const px = maskImage.data, bits = shownMask.bits;
    for (let i = 0, j = 0; i < bits.length; i++, j += 4) {
      if (bits[i]) { px[j] = MASK_RGBA[0]; px[j + 1] = MASK_RGBA[1]; px[j + 2] = MASK_RGBA[2]; px[j + 3] = MASK_RGBA[3]; }
      else { px[j] = px[j + 1] = px[j + 2] = px[j + 3] = 0; }
    }
    mctx.putImageData(maskImage, 0, 0);
    debug.lastMask = shownMask;
    debug.lastPrompt = shownMask.prompt;
    debug.lastDecodeMs = shownMask.ms;
    setStatus(`decoder ${shownMask.ms.toFixed(1)} ms`, 'ready');
  }
  debug.drawCount++;
  drawMarks(W, H);
}

function drawMarks(W, H) {
  const ctx = els.marks.getContext('2d');
  ctx.clearRect(0, 0, W, H);
  const rect = els.marks.getBoundingClientRect();
  const k = rect.width > 0 ? W / rect.width : 1; // image pixels per CSS pixel
  const box = state.drag && state.drag.box ? state.drag.box : state.box;
  if (box) {
    ctx.lineWidth = 2 * k;
    ctx.strokeStyle = '#1e90ff';
    ctx.strokeRect(box.x0, box.y0, box.x1 - box.x0, box.y1 - box.y0);
  }
  for (const c of state.clicks) {
    ctx.beginPath();
    ctx.arc(c.x, c.y, 5 * k, 0, 2 * Math.PI);
    ctx.fillStyle = c.label === 1 ? '#2ecc40' : '#ff4136';
    ctx.fill();
    ctx.lineWidth = 1.5 * k;
    ctx.strokeStyle = '#fff';
    ctx.stroke();
  }
}

// ------------------------------------------------------------------------------------ mouse
function toImage(ev) {
  const rect = els.marks.getBoundingClientRect();
  const [H, W] = state.meta.original_size;
  return { x: (ev.clientX - rect.left) * (W / rect.width), y: (ev.clientY - rect.top) * (H / rect.height) };
}

function clampBox(a, b) {
  const [H, W] = state.meta.original_size;
  const cx = (v) => Math.min(Math.max(v, 0), W), cy = (v) => Math.min(Math.max(v, 0), H);
  return { x0: cx(Math.min(a.x, b.x)), y0: cy(Math.min(a.y, b.y)), x1: cx(Math.max(a.x, b.x)), y1: cy(Math.max(a.y, b.y)) };
}

els.marks.addEventListener('contextmenu', (ev) => ev.preventDefault());

els.marks.addEventListener('mousedown', (ev) => {
  if (!state.embedding) return;
  ev.preventDefault();
  const p = toImage(ev);
  if (ev.button === 2) { // right-click: a negative point
    state.clicks.push({ x: p.x, y: p.y, label: 0 });
    refresh();
  } else if (ev.button === 0) {
    state.drag = { start: p, clientX: ev.clientX, clientY: ev.clientY, negative: ev.shiftKey, box: null };
  }
});

window.addEventListener('mousemove', (ev) => {
  if (!state.embedding) return;
  if (state.drag) {
    const d = state.drag;
    if (!d.box && Math.hypot(ev.clientX - d.clientX, ev.clientY - d.clientY) <= DRAG_CSS_PIXELS) return;
    d.box = clampBox(d.start, toImage(ev));
    refresh(); // live box preview
  } else if (ev.target === els.marks) {
    state.hover = toImage(ev);
    if (!state.clicks.length && !state.box) refresh();
  }
});

window.addEventListener('mouseup', (ev) => {
  if (!state.drag || ev.button !== 0) return;
  const d = state.drag;
  state.drag = null;
  if (d.box) {
    if (d.box.x1 > d.box.x0 && d.box.y1 > d.box.y0) state.box = d.box;
  } else {
    state.clicks.push({ x: d.start.x, y: d.start.y, label: d.negative ? 0 : 1 });
  }
  refresh();
});

els.marks.addEventListener('mouseleave', () => {
  state.hover = null;
  if (state.embedding && !state.drag && !state.clicks.length && !state.box) refresh();
});

els.clear.addEventListener('click', () => {
  state.clicks = [];
  state.box = null;
  state.hover = null;
  refresh();
});

// ------------------------------------------------------------------------------------ files
els.file.addEventListener('change', () => openFile(els.file.files[0]));
els.drop.addEventListener('dragover', (ev) => { ev.preventDefault(); els.drop.classList.add('dragover'); });
els.drop.addEventListener('dragleave', () => els.drop.classList.remove('dragover'));
els.drop.addEventListener('drop', (ev) => {
  ev.preventDefault();
  els.drop.classList.remove('dragover');
  if (ev.dataTransfer.files.length) openFile(ev.dataTransfer.files[0]);
});
