// The interaction canvas of PANet++ Studio (issue 20): runs as the js_on_load of a gr.HTML component
// (webapp/canvas.py). `element`, `props`, `server` and `trigger` come from Gradio.
//
// The query (or the image under review) is an <img>; the mask is drawn on a <canvas> above it, from a
// compact PNG (alpha = mask) at the displayed size, with the opacity chosen here; clicks, the box and
// brush strokes are drawn the moment they are made. Only coordinates (or, after a brush stroke, the mask)
// travel to the server, through the component's server functions (a direct POST, not Gradio's queue),
// and only the new mask comes back. Every call of one page goes out in order (a click waits for the
// Segment before it).
(() => {
  const kind = element.querySelector(".pc-root").dataset.kind;        // "segment", "support" or "review"
  const st = {
    image: null, w: 0, h: 0, maskCanvas: null, truthImg: null, clicks: [], box: null, dragging: null,
    mode: {segment: "+", support: "box", review: "brush"}[kind], opacity: 0.45, shown: true, brush: 14, busy: 0,
    painted: false, token: "", drawn: 0, stroke: null, slot: 1, slots: [], timing: null,
  };
  // the canvas the hand used last owns the keyboard (the query's and the supports' share the Segment tab)
  const own = () => { window.panetKeys = kind; };
  let chain = Promise.resolve();
  const q = (sel) => element.querySelector(sel);
  const stage = () => q(".pc-stage");

  // ------------------------------------------------------------------ drawing
  const newMaskCanvas = () => {
    const c = document.createElement("canvas");
    c.width = st.w; c.height = st.h;
    return c;
  };
  const loadImage = (src) => new Promise((ok, fail) => {
    const im = new Image();
    im.onload = () => ok(im);
    im.onerror = fail;
    im.src = src;
  });
  const drawMarks = () => {
    const c = q(".pc-marks");
    if (!c) return;
    const g = fit(c);
    const r = Math.max(4, Math.round(Math.max(st.w, st.h) / 110));
    for (const [x, y, pos] of st.clicks) {
      g.beginPath(); g.arc(x, y, r, 0, 2 * Math.PI);
      g.fillStyle = pos ? "#19c819" : "#e61e1e"; g.fill();
      g.lineWidth = 1.5; g.strokeStyle = "#fff"; g.stroke();
    }
    const b = st.dragging || st.box;
    if (b) {
      g.lineWidth = 2; g.strokeStyle = "#ffd200";
      g.strokeRect(Math.min(b[0], b[2]), Math.min(b[1], b[3]), Math.abs(b[2] - b[0]), Math.abs(b[3] - b[1]));
    }
  };
  const fit = (c) => {      // a canvas's backing store is reallocated only when the image's size changes
    if (c.width !== st.w || c.height !== st.h) { c.width = st.w; c.height = st.h; }
    const g = c.getContext("2d");
    g.clearRect(0, 0, c.width, c.height);
    return g;
  };
  const drawMask = () => {
    const c = q(".pc-mask");
    if (!c) return;
    const g = fit(c);
    if (st.shown && st.maskCanvas) {
      g.globalAlpha = st.opacity;
      g.drawImage(st.maskCanvas, 0, 0);
      g.globalAlpha = 1;
    }
    if (st.shown && st.truthImg) g.drawImage(st.truthImg, 0, 0, st.w, st.h);
  };
  const redraw = () => {
    const img = q(".pc-img");
    if (img && st.image && img.getAttribute("src") !== st.image) img.setAttribute("src", st.image);
    if (img) img.style.display = st.image ? "block" : "none";
    const empty = q(".pc-empty");
    if (empty) empty.style.display = st.image ? "none" : "block";
    drawMask(); drawMarks();
    for (const b of element.querySelectorAll("[data-mode]")) b.classList.toggle("pc-on", b.dataset.mode === st.mode);
    const t = q(".pc-toggle");
    if (t) t.classList.toggle("pc-on", st.shown);
    for (const b of element.querySelectorAll("[data-slot]")) {
      const k = parseInt(b.dataset.slot, 10), state = st.slots[k - 1];
      b.classList.toggle("pc-current", k === st.slot);
      b.classList.toggle("pc-ready", state === "ready");
      b.classList.toggle("pc-waiting", state === "waiting");
    }
    stage() && stage().classList.toggle("pc-busy", st.busy > 0);
  };
  const drawn = () => {      // after the next paint: the page shows the new state
    requestAnimationFrame(() => {
      st.drawn += 1;
      element.dataset.drawn = String(st.drawn);
      element.dispatchEvent(new CustomEvent("panet-drawn", {bubbles: true, detail: {t: performance.now()}}));
    });
  };
  const md = (text) => {      // the server's status line: plain text with **bold** and *italic*
    const esc = String(text || "").replace(/[&<>"']/g, (ch) => ({"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;"}[ch]));
    return esc.replace(/\*\*(.+?)\*\*/g, "<b>$1</b>").replace(/\*(.+?)\*/g, "<i>$1</i>").replace(/\n\n/g, "<br>");
  };
  const say = (text, isError) => {
    const s = q(".pc-status");
    if (!s) return;
    s.innerHTML = md(text);
    s.classList.toggle("pc-error", !!isError);
  };

  // ------------------------------------------------------------------ state from the server
  const apply = async (p) => {
    if (!p) return;
    if (p.error) { say(p.error, true); drawn(); return; }
    if ("image" in p) {
      st.image = p.image; st.w = p.w || 0; st.h = p.h || 0;
      if (!p.image) { const img = q(".pc-img"); if (img) img.removeAttribute("src"); }
      st.maskCanvas = null; st.truthImg = null; st.clicks = []; st.box = null; st.painted = false;
    }
    if ("truth" in p) st.truthImg = p.truth ? await loadImage(p.truth) : null;
    if ("mask" in p) {
      if (p.mask) {
        const im = await loadImage(p.mask);
        const c = newMaskCanvas();
        c.getContext("2d").drawImage(im, 0, 0, st.w, st.h);
        st.maskCanvas = c;
      } else st.maskCanvas = null;
      st.painted = false;
    }
    if ("clicks" in p) st.clicks = p.clicks || [];
    if ("box" in p) st.box = p.box || null;
    if ("token" in p) st.token = p.token || "";
    if ("slot" in p) st.slot = p.slot;
    if ("slots" in p) st.slots = p.slots || [];
    if ("supports" in p) { const sl = q(".pc-slots"); if (sl) sl.innerHTML = md(p.supports); }
    if ("status" in p) say(p.status, false);
    if (p.status_more) { const s = q(".pc-status"); if (s) s.innerHTML += " " + md(p.status_more); }
    if ("project" in p && p.project) { const ps = q(".pc-project"); if (ps) ps.innerHTML = md(p.project); }
    redraw();
    const img = q(".pc-img");
    if ("image" in p && p.image && img && img.decode) await img.decode().catch(() => {});   // shown, not only set
    drawn();
    // a Segment answered before the query was encoded: PANet++'s mask is shown, LiteMedSAM's redraw follows
    if (p.follow) call(p.follow, {});
  };
  const busy = (d) => { st.busy += d; const s = stage(); if (s) s.classList.toggle("pc-busy", st.busy > 0); };
  const call = (name, ...args) => {
    // calls of one page go out one after the other (a click after a Segment refines the new mask); only the
    // busy mark changes meanwhile (apply draws the answer once); the last call's timing is kept for benchmarks
    const t = {name, asked: performance.now()};
    busy(1);
    const run = chain.then(() => { t.sent = performance.now(); return server[name](...args); })
      .then((p) => { t.answered = performance.now(); return apply(p); },
            (e) => apply({error: "The server did not answer: " + e}))
      .finally(() => { busy(-1); t.applied = performance.now(); st.timing = t; });
    chain = run.catch(() => {});
    return run;
  };
  if (typeof watch === "function") {
    watch("value", () => {
      let p = null;
      try { p = props.value ? JSON.parse(props.value) : null; } catch (e) { p = null; }
      if (p) apply(p); else redraw();
    });
  }

  // ------------------------------------------------------------------ pointer: clicks, box, brush
  const toImage = (ev) => {
    const img = q(".pc-img");
    const r = img.getBoundingClientRect();
    return [(ev.clientX - r.left) * st.w / r.width, (ev.clientY - r.top) * st.h / r.height];
  };
  const paintTo = (x, y) => {
    if (!st.maskCanvas) st.maskCanvas = newMaskCanvas();
    const g = st.maskCanvas.getContext("2d");
    g.globalCompositeOperation = st.mode === "erase" ? "destination-out" : "source-over";
    g.strokeStyle = g.fillStyle = "rgb(255,0,0)";
    g.lineCap = "round"; g.lineJoin = "round";
    g.lineWidth = st.brush * st.w / q(".pc-img").getBoundingClientRect().width;
    const [x0, y0] = st.stroke || [x, y];
    g.beginPath(); g.moveTo(x0, y0); g.lineTo(x, y); g.stroke();
    g.globalCompositeOperation = "source-over";
    st.stroke = [x, y];
    drawMask();
  };
  element.addEventListener("pointerdown", (ev) => {
    if (element.contains(ev.target)) own();
    if (!ev.target.classList.contains("pc-marks") || !st.image || ev.button !== 0) return;
    ev.preventDefault();
    const [x, y] = toImage(ev);
    if (st.mode === "box") { st.dragging = [x, y, x, y]; ev.target.setPointerCapture(ev.pointerId); drawMarks(); return; }
    if (st.mode === "brush" || st.mode === "erase") {
      st.stroke = null; paintTo(x, y); ev.target.setPointerCapture(ev.pointerId); return;
    }
    if (kind === "review") return;
    st.clicks = st.clicks.concat([[x, y, st.mode === "+"]]);   // drawn now; the new mask follows
    drawMarks();
    if (kind === "support") call("slot_click", {slot: st.slot, x, y, mode: st.mode});
    else call("click", {x, y, mode: st.mode, threshold: threshold()});
  });
  element.addEventListener("pointermove", (ev) => {
    if (st.dragging) { const [x, y] = toImage(ev); st.dragging[2] = x; st.dragging[3] = y; drawMarks(); }
    else if (st.stroke) { const [x, y] = toImage(ev); paintTo(x, y); }
  });
  element.addEventListener("pointerup", (ev) => {
    if (st.dragging) {
      const b = st.dragging; st.dragging = null;
      const box = [Math.min(b[0], b[2]), Math.min(b[1], b[3]), Math.max(b[0], b[2]), Math.max(b[1], b[3])];
      if (box[2] - box[0] < 3 || box[3] - box[1] < 3) { drawMarks(); say("Box: drag from one corner to the opposite one.", true); return; }
      st.box = box; st.clicks = []; drawMarks();
      if (kind === "segment") call("box", {box, threshold: threshold()});
      if (kind === "support") call("slot_box", {slot: st.slot, box});
    } else if (st.stroke) {
      st.stroke = null; st.painted = true;
      if (kind === "segment") call("paint", {mask: st.maskCanvas.toDataURL("image/png")});
      else if (kind === "support") call("slot_paint", {slot: st.slot, mask: st.maskCanvas.toDataURL("image/png")});
      else say("Corrected on the page: Accept (Enter) or Save correction stores this mask.", false);
    }
  });

  // ------------------------------------------------------------------ the toolbar and the keyboard
  let thresholdValue = 0.5;
  const threshold = () => thresholdValue;
  const setMode = (m) => { st.mode = m; redraw(); };
  const toggle = () => { st.shown = !st.shown; redraw(); };
  const act = (name) => {
    if (kind === "support") {
      if (name === "undo" || name === "clear") call("slot_" + name, {slot: st.slot});
      return;
    }
    if (kind === "segment") {
      if (name === "undo" || name === "clear") call(name, {threshold: threshold()});
      return;
    }
    // review decisions: an edited mask is stored as a correction (the mask the person saw and kept)
    const args = {action: name, token: st.token};
    if (name === "save" && !st.painted) {
      say("Nothing corrected yet: paint with the brush (p) or erase (e) first, or Accept (Enter) the mask as it is.", true);
      return;
    }
    if (name === "save" || (name === "accept" && st.painted)) {
      args.action = "correct"; args.mask = (st.maskCanvas || newMaskCanvas()).toDataURL("image/png");
    }
    call("decide", args);
  };
  element.addEventListener("click", (ev) => {
    const b = ev.target.closest("button");
    if (!b || !element.contains(b)) return;
    own();
    if (b.dataset.slot) showSlot(parseInt(b.dataset.slot, 10));
    else if (b.dataset.mode) setMode(b.dataset.mode);
    else if (b.dataset.act === "toggle") toggle();
    else if (b.dataset.act) act(b.dataset.act);
  });
  // the query chosen here goes up as a file (Gradio's upload) and is read by the canvas's own call: no queued
  // event (each queued event makes Gradio's image editors export and upload their layers again)
  element.addEventListener("change", async (ev) => {
    const isMask = ev.target.classList.contains("pc-maskfile");
    if (!(isMask || ev.target.classList.contains("pc-file")) || !ev.target.files || !ev.target.files.length) return;
    own();
    const file = ev.target.files[0];
    say("Uploading " + file.name + "...", false);
    try {
      const up = await upload(file);
      if (kind === "support") await call(isMask ? "slot_mask_file" : "slot_upload", {slot: st.slot, path: up.path, name: file.name});
      else await call("set_query", {path: up.path, name: file.name});
    } catch (e) { say("The upload failed: " + e, true); }
    ev.target.value = "";
  });
  const showSlot = (k) => { if (k >= 1 && k <= 5) { st.slot = k; redraw(); return call("slot_show", {slot: k}); } };
  element.addEventListener("input", (ev) => {
    if (ev.target.classList.contains("pc-opacity")) { st.opacity = parseFloat(ev.target.value); drawMask(); }
    if (ev.target.classList.contains("pc-brush")) st.brush = parseFloat(ev.target.value);
  });
  const visible = () => element.offsetParent !== null && (!!st.image || kind === "support");
  document.addEventListener("keydown", (ev) => {
    const t = ev.target;
    if (ev.ctrlKey || ev.metaKey || ev.altKey || !visible()) return;
    if (t && (t.tagName === "INPUT" && t.type !== "range" || t.tagName === "TEXTAREA" || t.isContentEditable || t.tagName === "SELECT")) return;
    const k = ev.key;
    if (t && t.tagName === "BUTTON" && !element.contains(t) && (k === "Enter" || k === " ")) return;   // that button's own key
    if (kind !== "review" && (window.panetKeys || "segment") !== kind) return;   // the other canvas of the tab
    const slotKeys = {1: () => showSlot(1), 2: () => showSlot(2), 3: () => showSlot(3), 4: () => showSlot(4),
                      5: () => showSlot(5), b: () => setMode("box"), a: () => setMode("+"), r: () => setMode("-"),
                      p: () => setMode("brush"), e: () => setMode("erase"), z: () => act("undo"), c: () => act("clear"),
                      " ": toggle};
    const keys = kind === "support" ? slotKeys : kind === "segment"
      ? {a: () => setMode("+"), r: () => setMode("-"), b: () => setMode("box"), p: () => setMode("brush"),
         e: () => setMode("erase"), z: () => act("undo"), c: () => act("clear"), " ": toggle}
      : {Enter: () => act("accept"), n: () => act("no lesion"), s: () => act("skip"), ArrowRight: () => act("next"),
         ArrowLeft: () => act("back"), u: () => act("undo"), p: () => setMode("brush"), e: () => setMode("erase"),
         " ": toggle};
    if (keys[k]) { ev.preventDefault(); keys[k](); }
  });

  // ------------------------------------------------------------------ what the rest of the page calls
  const api = {
    segment: (s) => { if (!st.busy) { thresholdValue = s.threshold; return call("segment", s); } },
    threshold: (t) => { thresholdValue = t; if (st.image) return call("rethreshold", {threshold: t}); },
    usePicked: () => call("use_picked", {}),
    state: () => ({mode: st.mode, clicks: st.clicks.length, box: st.box, shown: st.shown, painted: st.painted,
                   drawn: st.drawn, busy: st.busy, token: st.token, w: st.w, h: st.h, slot: st.slot,
                   slots: st.slots.slice(), timing: st.timing || null}),
    setMode, toggle, act,
  };
  api.restore = () => call(kind === "support" ? "slot_show" : "show", {});
  if (kind === "support") {
    Object.assign(api, {show: showSlot, pick: () => { own(); return call("slot_pick", {slot: st.slot}); },
                        fromQuery: () => { own(); return call("slot_from_query", {}); }});
  }
  window[{segment: "panetCanvas", support: "panetSupports", review: "panetReview"}[kind]] = api;
  redraw();
  if (window.panetRestored) api.restore();     // the page loaded before this canvas was drawn (a later tab)
})();
