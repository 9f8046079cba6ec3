"""Team projects (issue 30): many projects per database, members and roles, leases, reviews, an
append-only event log, overlap opinions, masks as PNG bytes in the database.

Revision ID: 0002
Revises: 0001
"""
import json
import time

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

OLD_IMAGES = ("id", "rel_path", "status", "version", "uncertainty", "lesion_score", "support_key", "model", "who",
              "updated")


def _old_table(name, columns):
    """The table as it was, without its single-column unique constraint (unnamed in projects made before
    Alembic): SQLite's batch mode rebuilds it from this."""
    types = {"id": sa.Integer, "version": sa.Integer, "uncertainty": sa.Float, "lesion_score": sa.Float,
             "updated": sa.Float, "added": sa.Float}
    defaults = {"status": "unlabelled", "version": "0"}
    required = {"rel_path", "status", "version", "added"}
    return sa.Table(name, sa.MetaData(), *[
        sa.Column(c, types.get(c, sa.Text), primary_key=c == "id", nullable=c not in required,
                  server_default=defaults.get(c)) for c in columns])


def upgrade():
    bind = op.get_bind()
    sqlite = bind.dialect.name == "sqlite"
    op.create_table(
        "projects", sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("name", sa.String(64), nullable=False, unique=True),
        sa.Column("owner", sa.String(128), nullable=False, server_default=""), sa.Column("image_dir", sa.Text),
        sa.Column("overlap", sa.Float, nullable=False, server_default="0"), sa.Column("created", sa.Float, nullable=False))
    op.create_table(
        "members", sa.Column("project_id", sa.Integer, sa.ForeignKey("projects.id"), primary_key=True),
        sa.Column("user", sa.String(128), primary_key=True), sa.Column("role", sa.String(16), nullable=False),
        sa.Column("added", sa.Float, nullable=False))
    for name, columns, old_unique, unique in (
            ("images", OLD_IMAGES, "uq_images_rel_path", "uq_images_project_path"),
            ("supports", ("id", "rel_path", "added"), "uq_supports_rel_path", "uq_supports_project_path")):
        with op.batch_alter_table(name, recreate="always" if sqlite else "auto",
                                  copy_from=_old_table(name, columns) if sqlite else None) as b:
            if not sqlite:
                b.drop_constraint(old_unique, type_="unique")
            b.add_column(sa.Column("project_id", sa.Integer, nullable=False, server_default="1"))
            if name == "images":
                for col in (sa.Column("lease_holder", sa.String(128)), sa.Column("lease_until", sa.Float),
                            sa.Column("review", sa.String(16)), sa.Column("review_note", sa.Text),
                            sa.Column("reviewer", sa.String(128)),
                            sa.Column("overlap", sa.Boolean, nullable=False, server_default=sa.false())):
                    b.add_column(col)
            b.create_unique_constraint(unique, ["project_id", "rel_path"])
            b.create_foreign_key(f"fk_{name}_project", "projects", ["project_id"], ["id"])
    op.add_column("versions", sa.Column("mask_png", sa.LargeBinary))
    op.create_table(
        "events", sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("project_id", sa.Integer, sa.ForeignKey("projects.id"), nullable=False),
        sa.Column("image_id", sa.Integer, sa.ForeignKey("images.id")), sa.Column("version", sa.Integer),
        sa.Column("who", sa.String(128), nullable=False), sa.Column("at", sa.Float, nullable=False),
        sa.Column("action", sa.String(32), nullable=False), sa.Column("detail", sa.Text))
    op.create_index("ix_events_project_image", "events", ["project_id", "image_id"])
    op.create_table(
        "opinions", sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("image_id", sa.Integer, sa.ForeignKey("images.id"), nullable=False),
        sa.Column("who", sa.String(128), nullable=False), sa.Column("status", sa.String(16), nullable=False),
        sa.Column("mask_png", sa.LargeBinary), sa.Column("at", sa.Float, nullable=False),
        sa.UniqueConstraint("image_id", "who", name="uq_opinions_image_who"))
    _adopt_single_project(bind)


def _adopt_single_project(bind):
    """A project file made before this revision holds one project: it becomes project 1 (its name is set by
    the store that opens it)."""
    meta = {k: json.loads(v) for k, v in bind.execute(sa.text("SELECT key, value FROM meta"))}
    if meta or bind.execute(sa.text("SELECT COUNT(*) FROM images")).scalar():
        bind.execute(sa.text("INSERT INTO projects (id, name, owner, image_dir, overlap, created) "
                             "VALUES (1, '', '', :d, 0, :c)"),
                     {"d": meta.get("image_dir"), "c": meta.get("created", time.time())})


def downgrade():
    raise NotImplementedError("issue 30's team schema has no downgrade: restore the project from a backup")
