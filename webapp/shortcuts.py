"""Keyboard shortcuts for the hands that repeat (issue 20): run in the page, they press the same buttons a
mouse would (so every rule of the server applies), and do nothing while the focus is in a text field.
A click on the overlay is also drawn at once in the page (before the refined mask comes back).

Segment tab: a / r / b click modes (add, remove, box), z undo the last click, c clear clicks, space
overlay on/off (opacity 0 <-> the last opacity). Review queue ("Annotate a folder"): Enter accept, n no
lesion, s skip, right arrow next, left arrow back to the image decided last, u undo. ? shows the list.
"""
from __future__ import annotations

KEYS = {
    "segment": [("a", "click mode: add lesion (+)"), ("r", "click mode: remove (-)"), ("b", "click mode: box"),
                ("z", "undo the last click"), ("c", "clear clicks"), ("space", "overlay on / off")],
    "review": [("Enter", "accept"), ("n", "no lesion"), ("s", "skip"), ("→", "next"),
               ("←", "back to the image decided last"), ("u", "undo the last decision")],
}

HELP_MD = ("**Keyboard** (press **?** for this list): Segment: " +
           ", ".join(f"**{k}** {v}" for k, v in KEYS["segment"]) + ". Review: " +
           ", ".join(f"**{k}** {v}" for k, v in KEYS["review"]) + ".")

# the page's own script (gr.Blocks(head=...)): buttons are found by their elem_id or visible label
HEAD = """
<script>
(() => {
  const visible = (el) => el && el.offsetParent !== null;
  const byId = (id) => document.getElementById(id);
  const button = (id) => { const el = byId(id); return el && (el.tagName === "BUTTON" ? el : el.querySelector("button")) || el; };
  const press = (id) => { const b = button(id); if (visible(b)) { b.click(); return true; } return false; };
  const mode = (value) => {
    const radio = document.querySelector(`#click-mode input[value="${value}"]`);
    if (radio && visible(radio.closest("#click-mode"))) { radio.click(); return true; }
    return false;
  };
  let lastOpacity = null;
  const toggleOverlay = () => {
    const input = document.querySelector("#opacity-slider input[type=number], #opacity-slider input[type=range]");
    if (!input || !visible(byId("overlay"))) return false;
    const now = parseFloat(input.value);
    const next = now > 0 ? 0 : (lastOpacity || 0.4);
    if (now > 0) lastOpacity = now;
    for (const el of document.querySelectorAll("#opacity-slider input")) {
      el.value = String(next);
      el.dispatchEvent(new Event("input", {bubbles: true}));
      el.dispatchEvent(new Event("change", {bubbles: true}));
    }
    const range = document.querySelector("#opacity-slider input[type=range]");
    if (range) range.dispatchEvent(new PointerEvent("pointerup", {bubbles: true}));
    return true;
  };
  const showHelp = () => {
    let box = byId("shortcut-help-overlay");
    if (box) { box.remove(); return true; }
    box = document.createElement("div");
    box.id = "shortcut-help-overlay";
    box.setAttribute("role", "dialog");
    box.style.cssText = "position:fixed;top:20%;left:50%;transform:translateX(-50%);z-index:9999;background:#fff;" +
      "color:#111;border:1px solid #888;border-radius:8px;padding:16px 22px;box-shadow:0 4px 24px rgba(0,0,0,.3);" +
      "font:14px sans-serif;max-width:520px";
    box.innerHTML = __HELP_HTML__ + "<p style='color:#666'>Esc or ? closes this.</p>";
    document.body.appendChild(box);
    return true;
  };
  // a click on the overlay is drawn at once (a dot in the click mode's colour); the server's overlay, which
  // draws every click itself, replaces it when it arrives
  const markers = [];
  document.addEventListener("click", (ev) => {
    const img = ev.target;
    if (!(img instanceof HTMLImageElement) || !img.closest("#overlay")) return;
    const checked = document.querySelector("#click-mode input:checked");
    const m = checked ? checked.value : "+";
    const dot = document.createElement("div");
    dot.className = "instant-click-marker";
    const r = img.getBoundingClientRect();
    dot.style.cssText = `position:fixed;left:${ev.clientX - 6}px;top:${ev.clientY - 6}px;width:12px;height:12px;` +
      `border-radius:${m === "box" ? "0" : "50%"};border:2px solid #fff;pointer-events:none;z-index:50;` +
      `background:${m === "+" ? "#19c819" : m === "-" ? "#e61e1e" : "transparent"};`;
    if (ev.clientX < r.left || ev.clientX > r.right) return;
    document.body.appendChild(dot);
    markers.push(dot);
    const src = img.src;
    const watch = new MutationObserver(() => {
      const now = document.querySelector("#overlay img");
      if (!now || now.src !== src) { markers.splice(0).forEach((d) => d.remove()); watch.disconnect(); }
    });
    watch.observe(document.querySelector("#overlay"), {subtree: true, childList: true, attributes: true});
    setTimeout(() => { dot.remove(); watch.disconnect(); }, 15000);
  }, true);
  document.addEventListener("keydown", (ev) => {
    const t = ev.target;
    if (ev.ctrlKey || ev.metaKey || ev.altKey) return;
    if (t && (t.tagName === "INPUT" || t.tagName === "TEXTAREA" || t.isContentEditable || t.tagName === "SELECT")) return;
    if (t && t.closest && t.closest("canvas, .image-editor, [data-testid='image-editor']")) return;
    const review = visible(button("accept-button"));
    const segment = visible(button("segment-button"));
    let done = false;
    const k = ev.key;
    if (k === "?") done = showHelp();
    else if (k === "Escape" && byId("shortcut-help-overlay")) { byId("shortcut-help-overlay").remove(); done = true; }
    else if (review) {
      if (k === "Enter") done = press("accept-button");
      else if (k === "n") done = press("nolesion-button");
      else if (k === "s") done = press("skip-button");
      else if (k === "ArrowRight") done = press("next-button");
      else if (k === "ArrowLeft") done = press("back-button");
      else if (k === "u") done = press("undo-button");
    } else if (segment) {
      if (k === "a") done = mode("+");
      else if (k === "r") done = mode("-");
      else if (k === "b") done = mode("box");
      else if (k === "z") done = press("undo-click");
      else if (k === "c") done = press("clear-clicks");
      else if (k === " ") done = toggleOverlay();
    }
    if (done) ev.preventDefault();
  });
})();
</script>
"""


def head() -> str:
    import json

    html = ("<b>Keyboard shortcuts</b><table style='margin-top:8px'>"
            "<tr><td colspan=2><i>Segment</i></td></tr>" + "".join(
                f"<tr><td style='padding:2px 12px 2px 0'><b>{k}</b></td><td>{v}</td></tr>" for k, v in KEYS["segment"])
            + "<tr><td colspan=2><i>Review (Annotate a folder)</i></td></tr>" + "".join(
                f"<tr><td style='padding:2px 12px 2px 0'><b>{k}</b></td><td>{v}</td></tr>" for k, v in KEYS["review"])
            + "</table>")
    return HEAD.replace("__HELP_HTML__", json.dumps(html))
