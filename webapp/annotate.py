"""The Annotate tab: a project over the data folder, propagation from the session's supports, review of
the most uncertain images first (accept / no lesion / skip / correct / undo / promote), export."""
from __future__ import annotations

import shutil
from dataclasses import dataclass

import numpy as np

from core.annotate.propagate import export, propagate, reason_of
from core.annotate.store import DONE, ProjectStore
from core.checkpoint import CheckpointError
from core.data.io import DataError, read_image
from core.visual import overlay

from .context import AppContext, owner_tag
from .handlers import display_size, resize_mask
from .session import UserError


def open_project(ctx: AppContext, name: str, owner: str) -> ProjectStore:
    """The owner's project `name` (each user has a namespace of their own; one shared namespace in a
    single-user install, the same as the CLI's)."""
    if ctx.config.data_dir is None:
        raise UserError("no data folder configured: start the app with --data DIR (the folder to annotate)")
    try:
        if ctx.config.db_url:      # a team server: projects are shared by membership among signed-in users
            store = ProjectStore(ctx.config.output_dir, name, db_url=ctx.config.db_url, user=team_user(owner))
        else:
            store = ProjectStore(ctx.config.output_dir, name, namespace=ctx.project_namespace(owner))
        store.add_folder(ctx.config.data_dir, ctx.config.data_dir)
    except DataError as exc:
        raise UserError(str(exc)) from exc
    return store


def team_user(owner: str) -> str | None:
    """The member name a page acts as on a team server: the signed-in user (None: the single local user,
    who owns every project). A browser without sign-in cannot join a team."""
    from .context import LOCAL_USER

    if owner == LOCAL_USER:
        return None
    if owner.startswith("user:"):
        return owner[5:]
    raise UserError("team projects need sign-in: start the app with --auth-file (name:password lines)")


def status_text(store: ProjectStore) -> str:
    c = store.counts()
    total = sum(c.values())
    parts = ", ".join(f"{k} {v}" for k, v in sorted(c.items()))
    text = f"**Project {store.name}**: {total} images ({parts}); supports promoted: {len(store.project_supports())}."
    progress = store.progress() if store.user is not None or store.server else {}
    if progress:
        text += " Per annotator: " + "; ".join(
            f"{who or 'local'} {p['decided']} decided ({p['approved']} approved, {p['sent_back']} sent back, "
            f"{p['opinions']} overlap opinions{', holding 1' if p['holding'] else ''})" for who, p in progress.items()) + "."
    return text


def presence_decision(ctx):
    """The lesion probe's presence decision (the one `predict`, Classify and `annotate --no-lesion` use);
    without a probe, the older threshold on PANet++'s own map chosen on BUSI's validation split."""
    try:
        return ctx.presence_check()
    except CheckpointError:
        pass
    import json
    from pathlib import Path

    p = Path(__file__).resolve().parents[1] / "docs" / "results_presence.json"
    try:
        c = json.loads(p.read_text())["chosen_on_val"]
        return {"score": c["score"], "threshold": float(c["threshold"])}
    except (OSError, ValueError, KeyError):
        raise UserError("no lesion-presence decision available (install the lesion probe classifier)") from None


def run_propagation(ctx: AppContext, store: ProjectStore, checkpoint_name, supports, owner: str, job,
                    presence=None, delineate_with=None, temporal: bool = False):
    """Generator of progress lines; results land image by image (a stopped run resumes)."""
    from . import jobs

    seg = ctx.fewshot(checkpoint_name, owner)
    key = seg.support_key(supports)

    def work(emit):
        return propagate(store, seg, supports, key, str(checkpoint_name), who=owner_tag(owner), job=job,
                         on_progress=emit, presence=presence, owner=owner, delineate_with=delineate_with,
                         temporal=temporal)

    def render(events):
        e = events[-1]
        return (f"Propagating: {e['done']}/{e['total']} images, {e['images_per_s']:.1f} images/s, "
                f"about {e['seconds_left']:.0f} s left.")

    try:
        s = yield from jobs.stream(work, render)
    except Exception as exc:
        raise UserError(f"propagation failed: {exc}") from exc
    kept = (f" The {s['predicted']} predictions made are kept; Propagate again resumes with the rest."
            if s["stopped"] else "")
    abrupt = s.get("abrupt") or []
    if abrupt:
        kept += (f" Frames whose mask jumps from the previous frame's ({len(abrupt)}; review them): "
                 + ", ".join(abrupt[:12]) + (" ..." if len(abrupt) > 12 else "") + ".")
    yield (f"{'Stopped' if s['stopped'] else 'Done'}: {s['predicted']} of {s['to_do']} images predicted in "
           f"{s['seconds']:.0f} s" + (f"; {len(s['errors'])} unreadable (left out of the review)" if s["errors"]
                                      else "") + "." + kept + " " + status_text(store))


def next_image(store: ProjectStore, after: str | None = None) -> str | None:
    """The first image of the review queue (the most uncertain), `after` excluded. A signed-in member gets
    the next image nobody else holds, leased to them (sent back to them first)."""
    if store.user is not None:
        r = store.claim(exclude=after)
        return r["rel_path"] if r else None
    q = [r["rel_path"] for r in store.review_queue() if r["rel_path"] != after]
    return q[0] if q else None


@dataclass
class ReviewView:
    """What the page shows of the image under review, and the token a decision must carry back."""
    rel_path: str | None
    image: np.ndarray | None
    text: str
    token: str          # "image_id:version" of the image shown ("" when none)
    base: np.ndarray | None = None    # the image at display size (the canvas draws the mask on it)
    mask: np.ndarray | None = None    # the mask at display size


def view(store: ProjectStore, rel_path: str | None, who: str = "") -> ReviewView:
    """The image `rel_path` for review; an unreadable image is marked so (it leaves the queue, with a
    plain message naming it) and the next one is shown instead."""
    notes = []
    while rel_path is not None:
        try:
            img = read_image(store.image_path(rel_path))
            break
        except DataError as exc:
            store.mark_unreadable(rel_path, who=who, reason=reason_of(exc))
            notes.append(f"{rel_path} could not be read ({reason_of(exc)}): marked unreadable and left out "
                         "of the review.")
            rel_path = next_image(store)
    note = (" " + " ".join(notes)) if notes else ""
    if rel_path is None:
        return ReviewView(None, None, "Nothing left to review. " + status_text(store) + note, "")
    r = store.row(rel_path)
    mask = store.mask(rel_path)
    small, _ = display_size(img)
    m = resize_mask(mask, small.shape[:2]) if mask is not None else np.zeros(small.shape[:2], bool)
    unc = "" if r["uncertainty"] is None else f", uncertainty {r['uncertainty']:.3f}"
    if r["lesion_score"] is not None:
        unc += f", lesion-presence score {r['lesion_score']:.3f}" + ("" if mask is not None and mask.any()
                                                                   else " (below the threshold: no lesion predicted)")
    if mask is None and r["status"] in ("unlabelled", "skipped"):
        unc += "; no prediction yet: propagate, correct with the brush, or choose No lesion"
    if r["lease_holder"] and store.user is not None:
        import time
        unc += (f"; held by {r['lease_holder']} until {time.strftime('%H:%M:%S', time.localtime(r['lease_until']))}"
                " (renewed by each Next)")
    if r["review"] == "sent back":
        unc += f"; **sent back by {r['reviewer']}**: {r['review_note']}"
    return ReviewView(rel_path, overlay(small, m, 0.4),
                      f"**{rel_path}**: {r['status']}{unc} (version {r['version']}).{note}",
                      f"{r['id']}:{r['version']}", small, m)


def parse_token(token) -> tuple[int, int]:
    try:
        image_id, version = (int(v) for v in str(token).split(":"))
    except (TypeError, ValueError):
        raise UserError("no image under review: open the project again") from None
    return image_id, version


def decide(store: ProjectStore, rel_path: str | None, action: str, owner: str, token: str,
           painted=None) -> int | None:
    """A decision on exactly the image the person saw: `token` (image id and version shown) must match.
    Returns the version the decision made (None for promote).
    A correction comes from the canvas (`painted`: a PNG data URL at the size the image was shown)."""
    if not rel_path:
        raise UserError("open a project and pick an image first")
    who = store.user or owner_tag(owner)
    try:
        if action in ("accept", "no lesion", "skip", "correct"):
            image_id, version = parse_token(token)
            mask = None
            if action == "correct":
                mask = _correction(store, rel_path, painted)
                if not mask.any():
                    raise UserError("the correction is empty: paint the lesion, or choose No lesion")
            return store.decide(rel_path, action, image_id, version, who=who, mask=mask)
        elif action == "undo":
            return store.undo(rel_path, who=who)
        elif action == "promote":
            store.promote(rel_path)
            return None
        else:
            raise UserError(f"unknown action {action}")
    except DataError as exc:
        raise UserError(str(exc)) from exc


def _correction(store: ProjectStore, rel_path: str, painted) -> np.ndarray:
    if painted is None:
        raise UserError("paint the correction on the canvas first (brush p, eraser e)")
    from .canvas import read_mask

    img = read_image(store.image_path(rel_path))
    small, _ = display_size(img)
    return resize_mask(read_mask(painted, small.shape[:2]), img.shape[:2])


def promoted_supports(store: ProjectStore) -> list[tuple[np.ndarray, np.ndarray]]:
    out = []
    for rel in store.project_supports()[:5]:
        m = store.mask(rel)
        if m is not None and m.any():
            out.append((read_image(store.image_path(rel)), m))
    return out


def left_out_note(store: ProjectStore) -> str:
    """What an export of the decided images leaves out, and why ("" when nothing)."""
    left = {st: n for st, n in store.counts().items() if st not in DONE}
    if not left:
        return ""
    return (f"{sum(left.values())} image(s) left out of the export ("
            + ", ".join(f"{st} {n}" for st, n in sorted(left.items()))
            + "): only images a person accepted, corrected or marked no lesion are exported.")


def export_zip(ctx: AppContext, store: ProjectStore) -> str:
    d = ctx.new_export_dir()
    export(store, d / store.name, DONE)
    # the zip holds real files (the export's images/ are links to the data folder)
    for link in (d / store.name / "images").iterdir():
        if link.is_symlink():
            target = link.resolve()
            link.unlink()
            shutil.copy2(target, link)
    return shutil.make_archive(str(d / store.name), "zip", d, store.name)


def loop_frames(store: ProjectStore) -> list[str]:
    """The project's images that are frames of a cine loop ('X.dcm#k'), in loop order."""
    from core.data.dicom import frame_order, split_frame

    return sorted((r["rel_path"] for r in store.rows() if split_frame(r["rel_path"])[1] is not None), key=frame_order)
