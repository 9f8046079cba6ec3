"""The annotation store's database: one schema on two engines, SQLite (embedded, one file per project, the
default) or PostgreSQL (one server database shared by every app process and the CLI), through SQLAlchemy 2
Core, its schema kept by Alembic migrations (`core/annotate/migrations`).

A URL names the engine: `sqlite:///path/project.sqlite` or `postgresql://user@host:port/db` (the psycopg 3
driver is used). `engine_for(url)` creates one engine per URL and process, migrated to the newest schema
once (under a PostgreSQL advisory lock, so that two processes starting at once never both migrate)."""
from __future__ import annotations

import threading

import sqlalchemy as sa
from sqlalchemy import event

metadata = sa.MetaData()

projects = sa.Table(
    "projects", metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("name", sa.String(64), nullable=False, unique=True),
    sa.Column("owner", sa.String(128), nullable=False, server_default=""),
    sa.Column("image_dir", sa.Text),
    sa.Column("overlap", sa.Float, nullable=False, server_default="0"),
    sa.Column("created", sa.Float, nullable=False))

members = sa.Table(
    "members", metadata,
    sa.Column("project_id", sa.Integer, sa.ForeignKey("projects.id"), primary_key=True),
    sa.Column("user", sa.String(128), primary_key=True),
    sa.Column("role", sa.String(16), nullable=False),
    sa.Column("added", sa.Float, nullable=False))

images = sa.Table(
    "images", metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("project_id", sa.Integer, sa.ForeignKey("projects.id"), nullable=False, server_default="1"),
    sa.Column("rel_path", sa.Text, nullable=False),
    sa.Column("status", sa.String(16), nullable=False, server_default="unlabelled"),
    sa.Column("version", sa.Integer, nullable=False, server_default="0"),
    sa.Column("uncertainty", sa.Float), sa.Column("lesion_score", sa.Float),
    sa.Column("support_key", sa.Text), sa.Column("model", sa.Text), sa.Column("who", sa.Text),
    sa.Column("updated", sa.Float),
    sa.Column("lease_holder", sa.String(128)), sa.Column("lease_until", sa.Float),
    sa.Column("review", sa.String(16)), sa.Column("review_note", sa.Text), sa.Column("reviewer", sa.String(128)),
    sa.Column("overlap", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.UniqueConstraint("project_id", "rel_path", name="uq_images_project_path"))

versions = sa.Table(
    "versions", metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("image_id", sa.Integer, sa.ForeignKey("images.id"), nullable=False),
    sa.Column("version", sa.Integer, nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("mask_file", sa.Text),            # projects made before issue 30 kept masks as files
    sa.Column("mask_png", sa.LargeBinary),      # since then: the PNG bytes, committed with the row
    sa.Column("uncertainty", sa.Float), sa.Column("lesion_score", sa.Float),
    sa.Column("support_key", sa.Text), sa.Column("model", sa.Text), sa.Column("who", sa.Text),
    sa.Column("at", sa.Float, nullable=False), sa.Column("note", sa.Text),
    sa.UniqueConstraint("image_id", "version", name="uq_versions_image_version"))

supports = sa.Table(
    "supports", metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("project_id", sa.Integer, sa.ForeignKey("projects.id"), nullable=False, server_default="1"),
    sa.Column("rel_path", sa.Text, nullable=False),
    sa.Column("added", sa.Float, nullable=False),
    sa.UniqueConstraint("project_id", "rel_path", name="uq_supports_project_path"))

# Append-only: every decision, review, opinion and membership change (who, when, which version, what).
events = sa.Table(
    "events", metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("project_id", sa.Integer, sa.ForeignKey("projects.id"), nullable=False),
    sa.Column("image_id", sa.Integer, sa.ForeignKey("images.id")),
    sa.Column("version", sa.Integer),
    sa.Column("who", sa.String(128), nullable=False),
    sa.Column("at", sa.Float, nullable=False),
    sa.Column("action", sa.String(32), nullable=False),
    sa.Column("detail", sa.Text),
    sa.Index("ix_events_project_image", "project_id", "image_id"))

# One annotator's own decision on an image of the overlap sample (the agreement report compares them).
opinions = sa.Table(
    "opinions", metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("image_id", sa.Integer, sa.ForeignKey("images.id"), nullable=False),
    sa.Column("who", sa.String(128), nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("mask_png", sa.LargeBinary),
    sa.Column("at", sa.Float, nullable=False),
    sa.UniqueConstraint("image_id", "who", name="uq_opinions_image_who"))

def plain(row) -> dict:
    """A result row as a dict of plain str keys (SQLAlchemy's are a str subclass that JSON encoders refuse)."""
    return {str(k): v for k, v in row.items()}


_engines: dict[str, sa.Engine] = {}
_lock = threading.Lock()


def normalise_url(url: str) -> str:
    """`postgresql://` and `postgres://` use psycopg 3 (SQLAlchemy's default would be psycopg2)."""
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix):]
    return url


def is_server(url: str) -> bool:
    return normalise_url(url).startswith("postgresql")


def _sqlite_engine(url: str, foreign_keys: bool = True) -> sa.Engine:
    """foreign_keys=False for migrations only: SQLite rebuilds a table by copy, drop and rename, which the
    references to it must survive (and the pragma cannot change inside a transaction)."""
    engine = sa.create_engine(url, connect_args={"timeout": 30, "isolation_level": None}, poolclass=sa.NullPool)

    @event.listens_for(engine, "connect")
    def _pragmas(dbapi_con, _record):
        for pragma in ("journal_mode=WAL", "synchronous=FULL", f"foreign_keys={'ON' if foreign_keys else 'OFF'}"):
            dbapi_con.execute(f"PRAGMA {pragma}")

    @event.listens_for(engine, "begin")
    def _begin(con):
        # the writer takes the lock when the transaction starts: two writers never deadlock on an upgrade
        con.exec_driver_sql("BEGIN IMMEDIATE")
    return engine


def engine_for(url: str) -> sa.Engine:
    url = normalise_url(url)
    with _lock:
        if url not in _engines:
            if url.startswith("sqlite"):
                migrating = _sqlite_engine(url, foreign_keys=False)
                try:
                    migrate(migrating)
                finally:
                    migrating.dispose()
                engine = _sqlite_engine(url)
            else:
                engine = sa.create_engine(url, pool_pre_ping=True, pool_size=5, max_overflow=10)
                migrate(engine)
            _engines[url] = engine
        return _engines[url]


def dispose(url: str) -> None:
    """Forget an engine (tests; a project folder removed)."""
    with _lock:
        engine = _engines.pop(normalise_url(url), None)
    if engine is not None:
        engine.dispose()


def preload() -> None:
    """Import the migration machinery now (Alembic takes about 0.6 s to import on these CPUs): an app calls it
    at start, so that a user's first Open of a project does not wait for it."""
    import alembic.command  # noqa: F401
    import alembic.config  # noqa: F401


def migrate(engine: sa.Engine) -> None:
    """Bring the database to the newest schema with Alembic (a project made before Alembic is adopted by the
    first revision, which creates only what is missing)."""
    from pathlib import Path

    from alembic import command
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(Path(__file__).with_name("migrations")))
    with engine.begin() as con:
        if con.dialect.name == "postgresql":
            con.exec_driver_sql("SELECT pg_advisory_xact_lock(727230)")   # one migrating process at a time
        cfg.attributes["connection"] = con
        command.upgrade(cfg, "head")
