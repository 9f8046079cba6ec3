"""The DICOM cases of issue 27, against the CLI and the running app (run by probe_hardening.py, or alone):

    python scripts/probe_dicom.py

- a deflate bomb (about 1 MB that inflates to 1 GB): `segment` on the CLI (exit code, message, seconds,
  the child's peak RSS) and the app's Segment with the bomb as the query (message, seconds, RSS change);
- a folder of good files plus one with `NumberOfFrames="abc"`, one that declares 2000 frames and stores 6,
  and one with identifying markers planted in nested sequences, free text and a private tag: `annotate`
  then `export --all --dicom-seg` (exit codes, what is named, frames registered, markers found anywhere
  under the project or the export).
Writes docs/results_hardening_dicom.json and re-renders docs/results.md.
"""
from __future__ import annotations

import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))


def cli(*args) -> tuple[subprocess.CompletedProcess, float, float]:
    """(result, seconds, the child's peak RSS in MB) of `python -m core ...` in a fresh process."""
    # the child's own peak (VmHWM starts afresh at exec; ru_maxrss would carry this probe's own peak)
    code = ("import runpy, sys\nsys.argv = ['core'] + sys.argv[1:]\ntry:\n    runpy.run_module('core', "
            "run_name='__main__')\nfinally:\n    hwm = [l for l in open('/proc/self/status') if l.startswith('VmHWM')]"
            "\n    sys.stderr.write('\\nPEAK_KB %s\\n' % hwm[0].split()[1])\n")
    t = time.perf_counter()
    r = subprocess.run([sys.executable, "-c", code, *args], cwd=ROOT, capture_output=True, text=True, timeout=900)
    peak = [int(line.split()[1]) for line in r.stderr.splitlines() if line.startswith("PEAK_KB")]
    return r, time.perf_counter() - t, (peak[-1] / 1024 if peak else float("nan"))


def last_line(text: str) -> str:
    lines = [ln for ln in text.strip().splitlines() if ln.strip() and not ln.startswith("PEAK_KB")]
    return lines[-1][:200] if lines else ""


def folder_cases(tmp: Path) -> dict:
    import numpy as np
    import pydicom
    from PIL import Image

    from tests.conftest import save_tiny_panet
    from tests.dicom_factory import MARKERS, disc_frames, make_dicom, plant_markers

    frames, masks = disc_frames(6)
    imgs = tmp / "imgs"
    imgs.mkdir()
    for i in range(3):
        make_dicom(imgs / f"good{i}.dcm", frames[i])
    plant_markers(make_dicom(imgs / "marked.dcm", frames[3]))
    odd = make_dicom(imgs / "odd.dcm", frames[4])
    ds = pydicom.dcmread(odd)
    ds.add(pydicom.DataElement(0x00280008, "LO", "abc"))
    ds.save_as(odd)
    loop = make_dicom(imgs / "declared2000.dcm", frames, frames=True)
    ds = pydicom.dcmread(loop)
    ds.NumberOfFrames = 2000
    ds.save_as(loop)
    make_dicom(tmp / "sup.dcm", frames[1])
    Image.fromarray(masks[1].astype(np.uint8) * 255).save(tmp / "sup_mask.png")
    save_tiny_panet(tmp)
    out, ex = tmp / "out", tmp / "ex"
    r, secs, _ = cli("annotate", "--images", str(imgs), "--support", str(tmp / "sup.dcm"), str(tmp / "sup_mask.png"),
                     "--project", "probe", "--checkpoint", str(tmp / "p"), "--output", str(out))
    ann = json.loads(r.stdout[r.stdout.index("{"):]) if "{" in r.stdout else {}
    r2, _, _ = cli("export", "--project", "probe", "--out", str(ex), "--output", str(out), "--all", "--dicom-seg")
    exp = json.loads(r2.stdout[r2.stdout.index("{"):]) if "{" in r2.stdout else {}
    hits = sorted({f"{m} in {f.name}" for folder in (out, ex) for f in folder.rglob("*") if f.is_file()
                   for m in MARKERS if m.encode() in f.read_bytes()})
    return {"annotate_exit": r.returncode, "annotate_seconds": round(secs, 1), "annotate_new_images": ann.get("new_images"),
            "annotate_errors": ann.get("errors"), "export_exit": r2.returncode, "exported": exp.get("exported"),
            "export_left_out": exp.get("left_out_unreadable"), "dicom_seg_written": exp.get("dicom_seg"),
            "files_in_folder": 6, "declared_2000_stored_6_frames_registered": _frames(out),
            "planted_markers": len(MARKERS), "marker_hits": hits}


def _frames(out: Path) -> int:
    from core.annotate.store import ProjectStore

    return sum(1 for r in ProjectStore(out, "probe").rows() if r["rel_path"].startswith("declared2000.dcm#"))


def bomb_cases(tmp: Path) -> dict:
    import numpy as np
    from PIL import Image

    from tests.conftest import save_tiny_panet
    from tests.dicom_factory import deflated_file

    bomb = tmp / "bomb.dcm"
    deflated_file(bomb, 1 << 30)
    sup = tmp / "s.png"
    Image.fromarray(np.full((64, 64, 3), 128, np.uint8)).save(sup)
    m = np.zeros((64, 64), np.uint8)
    m[20:40, 20:40] = 255
    Image.fromarray(m).save(tmp / "s_mask.png")
    save_tiny_panet(tmp)
    r, secs, peak = cli("segment", "--checkpoint", str(tmp / "p"), "--support", str(sup), str(tmp / "s_mask.png"),
                        "--query", str(bomb), "--out", str(tmp / "o.png"))
    _, base_secs, base_peak = cli("segment", "--checkpoint", str(tmp / "p"), "--support", str(sup),
                                  str(tmp / "s_mask.png"), "--query", str(sup), "--out", str(tmp / "o2.png"))
    return {"bomb_file_kb": round(bomb.stat().st_size / 1024), "bomb_inflates_to_mb": 1024,
            "cli_exit": r.returncode, "cli_message": last_line(r.stderr), "cli_seconds": round(secs, 1),
            "cli_peak_rss_mb": round(peak), "cli_baseline_seconds": round(base_secs, 1),
            "cli_baseline_peak_rss_mb": round(base_peak)}


def app_bomb(tmp: Path, bomb: Path) -> dict:
    """The bomb as the query of the running app's Segment (the API's upload path, the same checks as the canvas)."""
    from gradio_client import Client
    from probe_common import b64, phantom_inputs, rss_mb, segment, set_supports

    from webapp.context import AppConfig, AppContext
    from webapp.ui import build_app, launch_options

    ctx = AppContext(AppConfig(data_dir=None, output_dir=tmp / "appout"))
    demo = build_app(ctx)
    demo.launch(prevent_thread_lock=True, quiet=True, **launch_options(ctx))
    try:
        client = Client(demo.local_url, verbose=False, download_files=str(tmp / "client"))
        _, good, query = phantom_inputs(tmp)
        ckpt = ctx.default_checkpoint("panet")
        set_supports(client, [good])
        segment(client, query, ckpt)
        before, peak0, t = rss_mb(), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, time.perf_counter()
        try:
            segment(client, b64(bomb), ckpt)
            outcome = "accepted"
        except Exception as exc:   # the refusal's message is what we record
            outcome = str(exc).splitlines()[0][:200]
        return {"app_seconds": round(time.perf_counter() - t, 2), "app_rss_delta_mb": round(rss_mb() - before),
                "app_peak_growth_mb": round((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak0) / 1024),
                "app_outcome": outcome}
    finally:
        demo.close()


def main() -> dict:
    from core.evaluation.report import DOCS, save_result

    tmp = Path(tempfile.mkdtemp())
    (tmp / "folder").mkdir()
    (tmp / "bomb").mkdir()
    res = {"folder": folder_cases(tmp / "folder"), "bomb": bomb_cases(tmp / "bomb")}
    res["bomb"].update(app_bomb(tmp / "bomb", tmp / "bomb" / "bomb.dcm"))
    print(json.dumps(res, indent=2))
    save_result(res, DOCS / "results_hardening_dicom.json")
    return res


if __name__ == "__main__":
    main()
