"""Annotation projects: a folder of images, each with a status and a mask history, in a database.

Two engines behind one interface (`core.annotate.db`): SQLite, embedded, one file per project in
`<output>/projects/[users/<namespace>/]<name>/project.sqlite` (the default: nothing to set up), or a
PostgreSQL server database that many app processes and the CLI share (`--db postgresql://...` or
`PANET_DB`). The schema is Alembic's; a project made before it keeps opening (adopted on first open).

Masks are PNG bytes in the database, in the same transaction as the version row that names them: a change is
all there or not at all after a crash or a `kill -9`, and every app process on every host reaches every mask
without a shared file system (a mask is a few kB). Projects made before issue 30 kept masks as files in
`masks/`; those versions are still read from there. Images are read in place from their folder, which must lie
inside the allowed data root; they are never copied or modified.

Team work (members and roles, leases, reviews, overlap opinions, the event log) is in `team.py`.
"""
from __future__ import annotations

import json
import os
import re
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import sqlalchemy as sa
from PIL import Image

from ..data.dicom import frame_refs
from ..data.io import IMAGE_SUFFIXES, DataError
from ..io import inside as _inside
from . import db
from .db import events, images, plain, projects, supports, versions
from .records import DONE, QUEUE, STATUSES, StaleDecision, from_png, in_overlap, png_bytes  # noqa: F401 (re-exported)
from .team import TeamMixin



class StoreError(DataError):
    """The project's storage failed (disk full, read-only, locked, server gone): said in plain words,
    nothing saved."""


def _plain(exc: BaseException) -> Exception:
    """The database's and the file system's errors as a message a person can act on."""
    import errno

    text = str(exc).lower()
    if isinstance(exc, StoreError):
        return exc
    if "full" in text or getattr(exc, "errno", None) == errno.ENOSPC:
        return StoreError("the disk is full: nothing was saved (free some space, then try again)")
    if "readonly" in text or "read-only" in text or getattr(exc, "errno", None) in (errno.EROFS, errno.EACCES):
        return StoreError("the project's folder cannot be written to: nothing was saved")
    if "locked" in text or "busy" in text:
        return StoreError("the project is busy (another process is writing): nothing was saved, try again")
    if "connection" in text and ("refused" in text or "failed" in text or "closed" in text):
        return StoreError("the project's database server cannot be reached: nothing was saved, try again")
    if isinstance(exc, OSError):
        return StoreError(f"the project's storage failed ({exc.strerror or exc}): nothing was saved")
    if isinstance(exc, sa.exc.DBAPIError):
        return StoreError(f"the project's database failed ({getattr(exc, 'orig', exc)}): nothing was saved")
    return exc if isinstance(exc, Exception) else StoreError(str(exc))


def safe_project_name(name: str) -> str:
    slug = re.sub(r"[^A-Za-z0-9_-]+", "_", (name or "").strip())[:64].strip("_")
    if not slug:
        raise DataError("a project needs a name (letters, digits, _ or -)")
    return slug


def project_dir(output_dir: str | Path, name: str, namespace: str | None = None) -> Path:
    base = Path(output_dir) / "projects"
    if namespace is not None:
        if not re.fullmatch(r"[A-Za-z0-9_-]{1,64}", namespace):
            raise DataError("bad project namespace")
        base = base / "users" / namespace
    return base / safe_project_name(name)


def project_names(output_dir: str | Path, namespace: str | None = None, db_url: str | None = None,
                  user: str | None = None) -> list[str]:
    """The projects a user may open: on a server database, those they are a member of (all of them for the
    single local user, `user` None); embedded, the project folders of their namespace."""
    if db_url:
        from .db import members
        engine = db.engine_for(db_url)
        q = sa.select(projects.c.name).order_by(projects.c.name)
        if user is not None:
            q = q.join(members, members.c.project_id == projects.c.id).where(members.c.user == user)
        with engine.connect() as con:
            return [r[0] for r in con.execute(q)]
    base = project_dir(output_dir, "x", namespace).parent
    return sorted(p.name for p in base.glob("*/project.sqlite")) if base.is_dir() else []


class ProjectStore(TeamMixin):
    """One project. `namespace`: the owner's folder under projects/ for the embedded engine (the web app gives
    each user one; None for the CLI and a single-user install). `db_url`: a server database shared by every
    process (None: the embedded SQLite file). `user`: who acts (None: the single local user, who may do
    everything); a named user must be a member, except the one who creates the project (its owner).
    `create=False` refuses a project that does not exist yet."""

    def __init__(self, output_dir: str | Path, name: str, namespace: str | None = None, db_url: str | None = None,
                 user: str | None = None, create: bool = True):
        self.name = safe_project_name(name)
        self.user = user
        self.dir = project_dir(output_dir, name, namespace)
        self.masks_dir = self.dir / "masks"          # mask files of projects made before issue 30
        self.server = bool(db_url)
        if not self.server:
            if not create and not (self.dir / "project.sqlite").exists():
                raise DataError(f"no project named {self.name}")
            self.dir.mkdir(parents=True, exist_ok=True)
            db_url = f"sqlite:///{(self.dir / 'project.sqlite').resolve()}"
        self.db_url = db_url
        try:
            self.engine = db.engine_for(db_url)
            self.project_id = self._open_project(create)
        except sa.exc.SQLAlchemyError as exc:
            raise _plain(exc) from exc
        self.swept = self.sweep()
        self._check_member()

    def _open_project(self, create: bool) -> int:
        now = time.time()
        with self._tx() as con:
            if not self.server:     # one project per file: adopted from a file made before issue 30
                row = con.execute(sa.select(projects.c.id, projects.c.name)).first()
                if row is not None and row.name != self.name:
                    con.execute(projects.update().where(projects.c.id == row.id).values(name=self.name))
            row = con.execute(sa.select(projects.c.id).where(projects.c.name == self.name)).first()
            if row is not None:
                return row.id
            if not create:
                raise DataError(f"no project named {self.name}")
            pid = con.execute(projects.insert().values(name=self.name, owner=self.user or "", created=now)
                              .returning(projects.c.id)).scalar_one()
            if self.user:
                from .db import members
                con.execute(members.insert().values(project_id=pid, user=self.user, role="owner", added=now))
                con.execute(events.insert().values(project_id=pid, who=self.user, at=now, action="member",
                                                   detail=json.dumps({"user": self.user, "role": "owner"})))
            return pid

    def sweep(self, min_age_s: float = 60.0) -> dict:
        """Remove what a crash could leave in the mask folder of a project made before issue 30: temporary
        files, and mask files no version references (only files older than `min_age_s`)."""
        removed = {"tmp": 0, "orphan": 0}
        if not self.masks_dir.is_dir():
            return removed
        with self._read() as con:
            used = {r[0] for r in con.execute(sa.select(versions.c.mask_file).where(versions.c.mask_file.is_not(None)))}
        now = time.time()
        for f in self.masks_dir.iterdir():
            try:
                old = now - f.stat().st_mtime > min_age_s
            except OSError:
                continue
            kind = "tmp" if f.name.endswith(".tmp") else ("orphan" if f.name not in used else None)
            if kind and old and f.is_file():
                f.unlink(missing_ok=True)
                removed[kind] += 1
        return removed

    # ------------------------------------------------------------------ plumbing
    @contextmanager
    def _tx(self):
        """One transaction (SQLite: BEGIN IMMEDIATE, the writer's lock taken at once); storage errors become
        StoreError, and nothing of the transaction is kept."""
        try:
            with self.engine.begin() as con:
                yield con
        except (sa.exc.SQLAlchemyError, OSError) as exc:
            raise _plain(exc) from exc

    @contextmanager
    def _read(self):
        try:
            with self.engine.connect() as con:
                yield con
        except (sa.exc.SQLAlchemyError, OSError) as exc:
            raise _plain(exc) from exc

    def _images(self):
        return images.c.project_id == self.project_id

    def meta(self) -> dict:
        with self._read() as con:
            p = con.execute(sa.select(projects).where(projects.c.id == self.project_id)).mappings().one()
        return {k: p[k] for k in ("image_dir", "created", "owner", "overlap") if p[k] is not None}

    # ------------------------------------------------------------------ images
    def add_folder(self, folder: str | Path, data_root: str | Path | None = None) -> int:
        """Register every image of `folder` (recursively; masks named *_mask* are skipped). The folder
        must lie inside `data_root` when one is given. Returns how many images are new."""
        folder = Path(folder)
        if not folder.is_dir():
            raise DataError(f"{folder.name}: not a folder")
        if data_root is not None and not _inside(folder, Path(data_root)):
            raise DataError(f"{folder.name}: the image folder must be inside the data root")
        old = self.meta().get("image_dir")
        if old and Path(old).resolve() != folder.resolve():
            raise DataError(f"project {self.name} already annotates another folder ({Path(old).name})")
        files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES
                       and "_mask" not in p.stem and p.is_file())
        if not files:
            raise DataError(f"{folder.name}: no images (PNG, JPEG, BMP, TIFF, DICOM)")
        refs = []
        for p in files:
            refs += frame_refs(p, str(p.relative_to(folder)))  # a cine loop: one image per frame
        overlap = float(self.meta().get("overlap") or 0)
        with self._tx() as con:
            con.execute(projects.update().where(projects.c.id == self.project_id)
                        .values(image_dir=str(folder.resolve())))
            have = {r[0] for r in con.execute(sa.select(images.c.rel_path).where(self._images()))}
            new = [r for r in refs if r not in have]
            if new:
                con.execute(images.insert(), [{"project_id": self.project_id, "rel_path": r,
                                               "overlap": in_overlap(r, overlap)} for r in new])
            return len(new)

    @property
    def image_dir(self) -> Path:
        d = self.meta().get("image_dir")
        if not d:
            raise DataError(f"project {self.name} has no images yet")
        return Path(d)

    def image_path(self, rel_path: str) -> Path:
        """The image's path inside the project's folder. Checked on the path as written (no `..` out of the
        folder), not on where a link in the folder points: a data folder of symbolic links is the owner's
        choice, and `add_folder` accepted them."""
        base = Path(os.path.normpath(self.image_dir))
        p = Path(os.path.normpath(base / rel_path))
        if p == base or base not in p.parents:
            raise DataError("refusing a path outside the project's folder")
        return p

    def rows(self, statuses=None, order: str = "rel_path", reviewed_only: bool = False,
             annotator: str | None = None) -> list[dict]:
        q = sa.select(images).where(self._images())
        if statuses:
            q = q.where(images.c.status.in_(tuple(statuses)))
        if reviewed_only:
            q = q.where(images.c.review == "approved")
        if annotator is not None:
            q = q.where(images.c.who == annotator)
        q = q.order_by(images.c.rel_path) if order == "rel_path" else q.order_by(
            images.c.uncertainty.is_(None), images.c.uncertainty.desc(), images.c.rel_path)
        with self._read() as con:
            return [plain(r) for r in con.execute(q).mappings()]

    def row(self, rel_path: str, con=None) -> dict:
        q = sa.select(images).where(self._images(), images.c.rel_path == rel_path)
        if con is not None:
            r = con.execute(q.with_for_update()).mappings().first()
        else:
            with self._read() as c:
                r = c.execute(q).mappings().first()
        if r is None:
            raise DataError(f"{rel_path}: not in project {self.name}")
        return plain(r)

    def review_queue(self) -> list[dict]:
        """Images awaiting a person's decision, the most uncertain first."""
        return self.rows(QUEUE, order="uncertainty")

    # ------------------------------------------------------------------ changes
    def record(self, rel_path: str, status: str, mask: np.ndarray | None = None, who: str = "", model: str = "",
               uncertainty: float | None = None, lesion_score: float | None = None, support_key: str = "",
               only_if_not_done: bool = False, image_id: int | None = None,
               seen_version: int | None = None, note: str = "") -> int | None:
        """One change of one image, in one transaction: the version row (with its mask's PNG bytes) and the
        image row. only_if_not_done: skip (return None) if a person has decided on this image meanwhile.
        image_id / seen_version (a person's decision): refused with StaleDecision unless `rel_path` is that
        image, its current version is the one the person saw, and no other annotator holds it now.
        Returns the new version number."""
        if status not in STATUSES:
            raise DataError(f"unknown status {status!r}")
        png = png_bytes(mask) if mask is not None else None
        fields = dict(uncertainty=uncertainty, lesion_score=lesion_score, support_key=support_key, model=model,
                      who=who, note=note or None)
        with self._tx() as con:
            cur = self.row(rel_path, con)
            self._check_decision(cur, rel_path, None if seen_version is None else int(seen_version), who, image_id)
            if only_if_not_done and cur["status"] in DONE:
                return None
            return self._commit(con, cur, status, png, fields, person=seen_version is not None)

    def _commit(self, con, cur: dict, status: str, png: bytes | None, f: dict, person: bool) -> int:
        now = time.time()
        version = cur["version"] + 1     # read under the row's lock (SQLite: the writer's lock)
        con.execute(versions.insert().values(image_id=cur["id"], version=version, status=status, mask_png=png,
                                             at=now, **f))
        values = dict(status=status, version=version, updated=now, **{k: v for k, v in f.items() if k != "note"})
        if person:      # a person's decision ends their lease and waits for a reviewer again
            values.update(lease_holder=None, lease_until=None, review=None, review_note=None, reviewer=None)
        con.execute(images.update().where(images.c.id == cur["id"]).values(**values))
        if person or status == "unreadable" or f["note"] == "undo":
            con.execute(events.insert().values(project_id=self.project_id, image_id=cur["id"], version=version,
                                               who=f["who"] or "", at=now, action=f["note"] if f["note"] == "undo"
                                               else status, detail=None))
        if person and cur["overlap"] and f["who"]:
            self._opinion(con, cur["id"], f["who"], status, png, now)
        return version

    def current(self, rel_path: str) -> dict:
        """The image's current version row (no mask: e.g. unlabelled or no lesion)."""
        r = self.row(rel_path)
        with self._read() as con:
            v = con.execute(sa.select(versions).where(versions.c.image_id == r["id"],
                                                      versions.c.version == r["version"])).mappings().first()
        return plain(v) if v else {"status": r["status"], "mask_file": None, "mask_png": None, "version": 0}

    def _mask_of(self, v: dict | None) -> np.ndarray | None:
        if not v:
            return None
        if v.get("mask_png") is not None:
            return from_png(v["mask_png"])
        if v.get("mask_file"):
            return np.asarray(Image.open(self.masks_dir / v["mask_file"])) > 0
        return None

    def mask(self, rel_path: str) -> np.ndarray | None:
        return self._mask_of(self.current(rel_path))

    def decide(self, rel_path: str, action: str, image_id: int, seen_version: int, who: str = "",
               mask: np.ndarray | None = None) -> int:
        """A person's decision on the image they saw (`image_id` at `seen_version`): accept, no lesion, skip
        or correct (with `mask`). Accept needs a mask to accept: an image without a prediction is refused."""
        self._require("annotator")
        who = who or self.user or ""
        current = self.mask(rel_path)
        if action == "accept":
            if current is None or self.row(rel_path)["status"] in ("unlabelled", "unreadable", "no lesion"):
                raise DataError(f"{rel_path}: there is no predicted mask to accept: propagate the supports first, "
                                "correct it with the brush, or choose No lesion")
            status, mask = "accepted", current
        elif action == "no lesion":
            status, mask = "no lesion", None
        elif action == "skip":
            status, mask = "skipped", current
        elif action == "correct":
            if mask is None or not np.asarray(mask).any():
                raise DataError(f"{rel_path}: the correction is empty: paint the lesion, or choose No lesion")
            status = "corrected"
        else:
            raise DataError(f"unknown decision {action!r}")
        if self._second_opinion(rel_path, who):
            return self.give_opinion(rel_path, status, mask, who, image_id, seen_version)
        return self.record(rel_path, status, mask, who=who, image_id=image_id, seen_version=seen_version)

    def mark_unreadable(self, rel_path: str, who: str = "", reason: str = "") -> None:
        """An image that cannot be decoded leaves the review queue (it keeps its history); `reason` is kept
        with the version (named by the image's place in the project, never a server path)."""
        if self.row(rel_path)["status"] != "unreadable":
            self.record(rel_path, "unreadable", None, who=who, note=reason)

    def unreadable(self) -> dict[str, str]:
        """{image: why it could not be read} for every image marked unreadable."""
        q = (sa.select(images.c.rel_path, versions.c.note)
             .select_from(images.outerjoin(versions, sa.and_(versions.c.image_id == images.c.id,
                                                             versions.c.version == images.c.version)))
             .where(self._images(), images.c.status == "unreadable").order_by(images.c.rel_path))
        with self._read() as con:
            return {r.rel_path: r.note or "not a readable image" for r in con.execute(q)}

    def undo(self, rel_path: str, who: str = "") -> int:
        """Go back to the version before the current one (as a new version: history is never rewritten)."""
        r = self.row(rel_path)
        if r["version"] == 0:
            raise DataError(f"{rel_path}: nothing to undo")
        with self._read() as con:
            prev = con.execute(sa.select(versions).where(versions.c.image_id == r["id"],
                                                         versions.c.version == r["version"] - 1)).mappings().first()
        prev = plain(prev) if prev else {}
        return self.record(rel_path, prev.get("status", "unlabelled"), self._mask_of(prev), who=who,
                           model=prev.get("model") or "", uncertainty=prev.get("uncertainty"),
                           lesion_score=prev.get("lesion_score"), support_key=prev.get("support_key") or "",
                           note="undo")

    def history(self, rel_path: str) -> list[dict]:
        r = self.row(rel_path)
        with self._read() as con:
            return [plain(v) for v in con.execute(sa.select(versions).where(versions.c.image_id == r["id"])
                                                 .order_by(versions.c.version)).mappings()]

    # ------------------------------------------------------------------ supports
    def promote(self, rel_path: str) -> None:
        """An accepted or corrected image becomes a support of the project."""
        r = self.row(rel_path)
        if r["status"] not in ("accepted", "corrected"):
            raise DataError(f"{rel_path}: only an accepted or corrected image can become a support")
        with self._tx() as con:
            have = con.execute(sa.select(supports.c.id).where(supports.c.project_id == self.project_id,
                                                              supports.c.rel_path == rel_path)).first()
            if have is None:
                con.execute(supports.insert().values(project_id=self.project_id, rel_path=rel_path,
                                                     added=time.time()))

    def project_supports(self) -> list[str]:
        with self._read() as con:
            return [r[0] for r in con.execute(sa.select(supports.c.rel_path).where(
                supports.c.project_id == self.project_id).order_by(supports.c.id))]

    def counts(self) -> dict[str, int]:
        with self._read() as con:
            return {r.status: r.n for r in con.execute(
                sa.select(images.c.status, sa.func.count().label("n")).where(self._images())
                .group_by(images.c.status))}

