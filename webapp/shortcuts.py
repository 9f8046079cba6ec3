"""Keyboard shortcuts for the hands that repeat (issue 20). The canvases (webapp/static/canvas.js) handle
their own keys while they are on screen, and do nothing while the focus is in a text field; of the Segment
tab's two canvases, the one the hand used last owns the keys:

Segment tab, query: a / r / b / p / e modes (add, remove, box, brush, eraser), z undo, c clear clicks, space
overlay on/off. Supports: 1-5 slots, b / a / r / p / e the same modes, z undo, c clear the slot. Review queue ("Annotate a folder"): Enter accept (a mask corrected with the brush is saved as a
correction), n no lesion, s skip, right arrow next, left arrow back to the image decided last, u undo,
p / e brush / eraser, space overlay. This module adds `?` (the list, in a dialog) and `Esc` (closes it).
"""
from __future__ import annotations

KEYS = {
    "segment": [("a", "click mode: add lesion (+)"), ("r", "click mode: remove (-)"),
                ("b", "box mode: drag a box"), ("p", "brush: paint the lesion"), ("e", "eraser"),
                ("z", "undo the last click, box or brush stroke"), ("c", "clear clicks"), ("space", "overlay on / off")],
    "supports": [("1-5", "show that support slot"), ("b", "box: LiteMedSAM draws the target"),
                 ("a / r", "clicks: add / remove a part"), ("p / e", "brush / eraser"), ("z", "undo in the slot"),
                 ("c", "clear the slot")],
    "review": [("Enter", "accept (a brush correction is saved as a correction)"), ("n", "no lesion"),
               ("s", "skip"), ("→", "next"), ("←", "back to the image decided last"), ("u", "undo the last decision"),
               ("p / e", "brush / eraser")],
}

HELP_MD = ("**Keyboard** (press **?** for this list): Segment: " +
           ", ".join(f"**{k}** {v}" for k, v in KEYS["segment"]) + ". Supports (after a click on their canvas): " +
           ", ".join(f"**{k}** {v}" for k, v in KEYS["supports"]) + ". Review: " +
           ", ".join(f"**{k}** {v}" for k, v in KEYS["review"]) + ".")

# the page's own script (launch(head=...)): the help dialog
HEAD = """
<script>
(() => {
  const showHelp = () => {
    let box = document.getElementById("shortcut-help-overlay");
    if (box) { box.remove(); return; }
    box = document.createElement("div");
    box.id = "shortcut-help-overlay";
    box.setAttribute("role", "dialog");
    box.style.cssText = "position:fixed;top:20%;left:50%;transform:translateX(-50%);z-index:9999;background:#fff;" +
      "color:#111;border:1px solid #888;border-radius:8px;padding:16px 22px;box-shadow:0 4px 24px rgba(0,0,0,.3);" +
      "font:14px sans-serif;max-width:520px";
    box.innerHTML = __HELP_HTML__ + "<p style='color:#666'>Esc or ? closes this.</p>";
    document.body.appendChild(box);
  };
  document.addEventListener("keydown", (ev) => {
    const t = ev.target;
    if (ev.ctrlKey || ev.metaKey || ev.altKey) return;
    if (t && (t.tagName === "INPUT" || t.tagName === "TEXTAREA" || t.isContentEditable || t.tagName === "SELECT")) return;
    if (ev.key === "?") { showHelp(); ev.preventDefault(); }
    else if (ev.key === "Escape" && document.getElementById("shortcut-help-overlay")) {
      document.getElementById("shortcut-help-overlay").remove(); ev.preventDefault();
    }
  });
})();
</script>
"""


def head() -> str:
    import json

    html = ("<b>Keyboard shortcuts</b><table style='margin-top:8px'>"
            "<tr><td colspan=2><i>Segment</i></td></tr>" + "".join(
                f"<tr><td style='padding:2px 12px 2px 0'><b>{k}</b></td><td>{v}</td></tr>" for k, v in KEYS["segment"])
            + "<tr><td colspan=2><i>Supports (after a click on their canvas)</i></td></tr>" + "".join(
                f"<tr><td style='padding:2px 12px 2px 0'><b>{k}</b></td><td>{v}</td></tr>" for k, v in KEYS["supports"])
            + "<tr><td colspan=2><i>Review (Annotate a folder)</i></td></tr>" + "".join(
                f"<tr><td style='padding:2px 12px 2px 0'><b>{k}</b></td><td>{v}</td></tr>" for k, v in KEYS["review"])
            + "</table>")
    return HEAD.replace("__HELP_HTML__", json.dumps(html))
