"""Annotation projects: a folder of images, each with a status and a mask history, in SQLite.

A project lives in `<output>/projects/<name>/`: `project.sqlite` (WAL mode, one transaction per change)
and `masks/` (one PNG per mask version, at the image's size). A mask file is written completely
(temporary name + rename) before the row that points to it is committed, so after a crash or a
`kill -9` a change is either fully there or not at all (an unreferenced mask file may remain; it is
never read). Images are read in place from their folder, which must lie inside the allowed data root;
they are never copied or modified. Several processes (the CLI, two browser sessions) can use one
project: SQLite serialises the writers (busy timeout) and WAL lets readers go on.
"""
from __future__ import annotations

import json
import os
import re
import sqlite3
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from PIL import Image

from ..data.dicom import frame_refs
from ..data.io import IMAGE_SUFFIXES, DataError
from ..io import inside as _inside

STATUSES = ("unlabelled", "predicted", "accepted", "corrected", "no lesion", "skipped", "unreadable")
DONE = ("accepted", "corrected", "no lesion")       # a person decided: propagation leaves these alone

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS images (
    id INTEGER PRIMARY KEY, rel_path TEXT UNIQUE NOT NULL, status TEXT NOT NULL DEFAULT 'unlabelled',
    version INTEGER NOT NULL DEFAULT 0, uncertainty REAL, lesion_score REAL, support_key TEXT,
    model TEXT, who TEXT, updated REAL);
CREATE TABLE IF NOT EXISTS versions (
    id INTEGER PRIMARY KEY, image_id INTEGER NOT NULL REFERENCES images(id), version INTEGER NOT NULL,
    status TEXT NOT NULL, mask_file TEXT, uncertainty REAL, lesion_score REAL, support_key TEXT, model TEXT,
    who TEXT, at REAL NOT NULL, note TEXT, UNIQUE (image_id, version));
CREATE TABLE IF NOT EXISTS supports (
    id INTEGER PRIMARY KEY, rel_path TEXT UNIQUE NOT NULL, added REAL NOT NULL);
"""


class StoreError(DataError):
    """The project's storage failed (disk full, read-only, locked): said in plain words, nothing saved."""


def _plain(exc: BaseException) -> Exception:
    """SQLite's and the file system's errors as a message a person can act on."""
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
    if isinstance(exc, sqlite3.OperationalError):
        return StoreError(f"the project's database failed ({exc}): nothing was saved")
    return exc if isinstance(exc, Exception) else StoreError(str(exc))


def safe_project_name(name: str) -> str:
    slug = re.sub(r"[^A-Za-z0-9_-]+", "_", (name or "").strip())[:64].strip("_")
    if not slug:
        raise DataError("a project needs a name (letters, digits, _ or -)")
    return slug


class StaleDecision(DataError):
    """A decision for an image that is not the one named, or that changed since the person saw it."""


class ProjectStore:
    """`namespace`: the owner's folder under projects/ (the web app gives each user one, so two users'
    projects of the same name never meet); None for the CLI and a single-user install."""

    def __init__(self, output_dir: str | Path, name: str, namespace: str | None = None):
        self.name = safe_project_name(name)
        base = Path(output_dir) / "projects"
        if namespace is not None:
            if not re.fullmatch(r"[A-Za-z0-9_-]{1,64}", namespace):
                raise DataError("bad project namespace")
            base = base / "users" / namespace
        self.dir = base / self.name
        self.masks_dir = self.dir / "masks"
        self.masks_dir.mkdir(parents=True, exist_ok=True)
        self.db_path = self.dir / "project.sqlite"
        con = self._connect()
        try:
            con.executescript(SCHEMA)
            if "note" not in {r["name"] for r in con.execute("PRAGMA table_info(versions)")}:
                con.execute("ALTER TABLE versions ADD COLUMN note TEXT")   # projects made before issue 27
        except sqlite3.OperationalError as exc:
            raise _plain(exc) from exc
        finally:
            con.close()
        self.swept = self.sweep()

    def sweep(self, min_age_s: float = 60.0) -> dict:
        """Remove what a crash (kill -9, power loss) can leave: temporary mask files, and mask files that no
        version references. Only files older than `min_age_s`: a writer in another process may have renamed
        its mask into place and not yet committed the row that names it."""
        now = time.time()
        con = self._connect()
        try:
            used = {r[0] for r in con.execute("SELECT mask_file FROM versions WHERE mask_file IS NOT NULL")}
        finally:
            con.close()
        removed = {"tmp": 0, "orphan": 0}
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
    def _connect(self) -> sqlite3.Connection:
        con = sqlite3.connect(self.db_path, timeout=30, isolation_level=None)
        con.execute("PRAGMA journal_mode=WAL")
        con.execute("PRAGMA synchronous=FULL")
        con.execute("PRAGMA foreign_keys=ON")
        con.row_factory = sqlite3.Row
        return con

    @contextmanager
    def _tx(self):
        con = self._connect()
        try:
            con.execute("BEGIN IMMEDIATE")
            yield con
            con.execute("COMMIT")
        except BaseException as exc:
            if con.in_transaction:     # SQLite ends the transaction itself on some errors (disk full)
                con.execute("ROLLBACK")
            if isinstance(exc, (sqlite3.OperationalError, OSError)):
                raise _plain(exc) from exc
            raise
        finally:
            con.close()

    def meta(self) -> dict:
        con = self._connect()
        try:
            return {r["key"]: json.loads(r["value"]) for r in con.execute("SELECT key, value FROM meta")}
        finally:
            con.close()

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
            rel = str(p.relative_to(folder))
            refs += [(r,) for r in frame_refs(p, rel)]  # a cine loop: one image per frame
        with self._tx() as con:
            con.execute("INSERT OR REPLACE INTO meta VALUES ('image_dir', ?)", (json.dumps(str(folder.resolve())),))
            con.execute("INSERT OR IGNORE INTO meta VALUES ('created', ?)", (json.dumps(time.time()),))
            before = con.execute("SELECT COUNT(*) FROM images").fetchone()[0]
            con.executemany("INSERT OR IGNORE INTO images (rel_path) VALUES (?)", refs)
            return con.execute("SELECT COUNT(*) FROM images").fetchone()[0] - before

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

    def rows(self, statuses=None, order: str = "rel_path") -> list[dict]:
        sql = "SELECT * FROM images"
        args: tuple = ()
        if statuses:
            sql += f" WHERE status IN ({','.join('?' * len(statuses))})"
            args = tuple(statuses)
        sql += {"rel_path": " ORDER BY rel_path",
                "uncertainty": " ORDER BY uncertainty IS NULL, uncertainty DESC, rel_path"}[order]
        con = self._connect()
        try:
            return [dict(r) for r in con.execute(sql, args)]
        finally:
            con.close()

    def row(self, rel_path: str) -> dict:
        con = self._connect()
        try:
            r = con.execute("SELECT * FROM images WHERE rel_path = ?", (rel_path,)).fetchone()
        finally:
            con.close()
        if r is None:
            raise DataError(f"{rel_path}: not in project {self.name}")
        return dict(r)

    def review_queue(self) -> list[dict]:
        """Images awaiting a person's decision, the most uncertain first."""
        return self.rows(("predicted", "skipped", "unlabelled"), order="uncertainty")

    # ------------------------------------------------------------------ changes
    def _write_mask(self, image_id: int, mask: np.ndarray) -> str:
        """A new mask file with a name of its own (two writers never share one), complete before it is named."""
        import uuid

        name = f"{image_id}_{uuid.uuid4().hex[:12]}.png"
        fd, tmp = tempfile.mkstemp(dir=self.masks_dir, prefix=f".{name}.", suffix=".tmp")
        os.close(fd)
        try:
            Image.fromarray(np.asarray(mask, bool).astype(np.uint8) * 255).save(tmp, format="PNG")
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
            os.replace(tmp, self.masks_dir / name)
        except BaseException as exc:
            if os.path.exists(tmp):
                os.unlink(tmp)
            if isinstance(exc, OSError):
                raise _plain(exc) from exc
            raise
        return name

    def record(self, rel_path: str, status: str, mask: np.ndarray | None = None, who: str = "", model: str = "",
               uncertainty: float | None = None, lesion_score: float | None = None, support_key: str = "",
               only_if_not_done: bool = False, image_id: int | None = None,
               seen_version: int | None = None, note: str = "") -> int | None:
        """One change of one image, in one transaction: the mask file first, then the version row and the
        image row. only_if_not_done: skip (return None) if a person has decided on this image meanwhile.
        image_id / seen_version (a person's decision): refused with StaleDecision unless `rel_path` is that
        image and its current version is the one the person saw. Returns the new version number."""
        if status not in STATUSES:
            raise DataError(f"unknown status {status!r}")
        r = self.row(rel_path)
        if image_id is not None and int(image_id) != r["id"]:
            raise StaleDecision(f"{rel_path}: this decision names another image; nothing was saved")
        mask_file = self._write_mask(r["id"], mask) if mask is not None else None
        try:
            return self._commit(r["id"], rel_path, status, mask_file, dict(
                uncertainty=uncertainty, lesion_score=lesion_score, support_key=support_key, model=model, who=who,
                note=note or None), only_if_not_done, seen_version)
        except BaseException:
            if mask_file:          # nothing was committed: the file would be an orphan
                (self.masks_dir / mask_file).unlink(missing_ok=True)
            raise

    def _commit(self, image_id: int, rel_path: str, status: str, mask_file: str | None, fields: dict,
                only_if_not_done: bool, seen_version: int | None) -> int | None:
        now = time.time()
        with self._tx() as con:
            cur = con.execute("SELECT version, status FROM images WHERE id = ?", (image_id,)).fetchone()
            stale = seen_version is not None and int(seen_version) != cur["version"]
            if (only_if_not_done and cur["status"] in DONE) or stale:
                if mask_file:
                    os.unlink(self.masks_dir / mask_file)
                if stale:
                    raise StaleDecision(f"{rel_path} changed since it was shown (version {cur['version']}, you saw "
                                        f"{seen_version}); nothing was saved: look at it again")
                return None
            version = cur["version"] + 1     # read inside the write transaction: no other writer between
            f = fields
            con.execute("INSERT INTO versions (image_id, version, status, mask_file, uncertainty, lesion_score, "
                        "support_key, model, who, at, note) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                        (image_id, version, status, mask_file, f["uncertainty"], f["lesion_score"], f["support_key"],
                         f["model"], f["who"], now, f["note"]))
            con.execute("UPDATE images SET status=?, version=?, uncertainty=?, lesion_score=?, support_key=?, model=?, "
                        "who=?, updated=? WHERE id=?",
                        (status, version, f["uncertainty"], f["lesion_score"], f["support_key"], f["model"], f["who"],
                         now, image_id))
        return version

    def current(self, rel_path: str) -> dict:
        """The image's current version row (mask_file None: no mask, e.g. unlabelled or no lesion)."""
        r = self.row(rel_path)
        con = self._connect()
        try:
            v = con.execute("SELECT * FROM versions WHERE image_id=? AND version=?", (r["id"], r["version"])).fetchone()
        finally:
            con.close()
        return dict(v) if v else {"status": r["status"], "mask_file": None, "version": 0}

    def mask(self, rel_path: str) -> np.ndarray | None:
        f = self.current(rel_path).get("mask_file")
        return np.asarray(Image.open(self.masks_dir / f)) > 0 if f else None

    def decide(self, rel_path: str, action: str, image_id: int, seen_version: int, who: str = "",
               mask: np.ndarray | None = None) -> int:
        """A person's decision on the image they saw (`image_id` at `seen_version`): accept, no lesion, skip
        or correct (with `mask`). Accept needs a mask to accept: an image without a prediction is refused."""
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
        return self.record(rel_path, status, mask, who=who, image_id=image_id, seen_version=seen_version)

    def mark_unreadable(self, rel_path: str, who: str = "", reason: str = "") -> None:
        """An image that cannot be decoded leaves the review queue (it keeps its history); `reason` is kept
        with the version (named by the image's place in the project, never a server path)."""
        if self.row(rel_path)["status"] != "unreadable":
            self.record(rel_path, "unreadable", None, who=who, note=reason)

    def unreadable(self) -> dict[str, str]:
        """{image: why it could not be read} for every image marked unreadable."""
        con = self._connect()
        try:
            return {r["rel_path"]: r["note"] or "not a readable image" for r in con.execute(
                "SELECT i.rel_path, v.note FROM images i LEFT JOIN versions v ON v.image_id = i.id AND "
                "v.version = i.version WHERE i.status = 'unreadable' ORDER BY i.rel_path")}
        finally:
            con.close()

    def undo(self, rel_path: str, who: str = "") -> int:
        """Go back to the version before the current one (as a new version: history is never rewritten)."""
        r = self.row(rel_path)
        if r["version"] == 0:
            raise DataError(f"{rel_path}: nothing to undo")
        con = self._connect()
        try:
            prev = con.execute("SELECT * FROM versions WHERE image_id=? AND version=?",
                               (r["id"], r["version"] - 1)).fetchone()
        finally:
            con.close()
        status = prev["status"] if prev else "unlabelled"
        mask = np.asarray(Image.open(self.masks_dir / prev["mask_file"])) > 0 if prev and prev["mask_file"] else None
        return self.record(rel_path, status, mask, who=who, model=(prev["model"] if prev else "") or "",
                           uncertainty=prev["uncertainty"] if prev else None,
                           lesion_score=prev["lesion_score"] if prev else None,
                           support_key=(prev["support_key"] if prev else "") or "")

    def history(self, rel_path: str) -> list[dict]:
        r = self.row(rel_path)
        con = self._connect()
        try:
            return [dict(v) for v in con.execute("SELECT * FROM versions WHERE image_id=? ORDER BY version", (r["id"],))]
        finally:
            con.close()

    # ------------------------------------------------------------------ supports
    def promote(self, rel_path: str) -> None:
        """An accepted or corrected image becomes a support of the project."""
        r = self.row(rel_path)
        if r["status"] not in ("accepted", "corrected"):
            raise DataError(f"{rel_path}: only an accepted or corrected image can become a support")
        with self._tx() as con:
            con.execute("INSERT OR IGNORE INTO supports (rel_path, added) VALUES (?, ?)", (rel_path, time.time()))

    def project_supports(self) -> list[str]:
        con = self._connect()
        try:
            return [r["rel_path"] for r in con.execute("SELECT rel_path FROM supports ORDER BY id")]
        finally:
            con.close()

    def counts(self) -> dict[str, int]:
        con = self._connect()
        try:
            return {r["status"]: r["n"] for r in con.execute("SELECT status, COUNT(*) AS n FROM images GROUP BY status")}
        finally:
            con.close()
