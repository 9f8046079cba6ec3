"""Baseline: the project schema before Alembic (issues 16-27). Creates only what is missing, so a project
made before Alembic is adopted as it is.

Revision ID: 0001
"""
import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade():
    have = set(sa.inspect(op.get_bind()).get_table_names())
    if "meta" not in have:
        op.create_table("meta", sa.Column("key", sa.Text, primary_key=True), sa.Column("value", sa.Text, nullable=False))
    if "images" not in have:
        op.create_table(
            "images", sa.Column("id", sa.Integer, primary_key=True),
            sa.Column("rel_path", sa.Text, nullable=False),
            sa.Column("status", sa.Text, nullable=False, server_default="unlabelled"),
            sa.Column("version", sa.Integer, nullable=False, server_default="0"),
            sa.Column("uncertainty", sa.Float), sa.Column("lesion_score", sa.Float), sa.Column("support_key", sa.Text),
            sa.Column("model", sa.Text), sa.Column("who", sa.Text), sa.Column("updated", sa.Float),
            sa.UniqueConstraint("rel_path", name="uq_images_rel_path"))
    if "versions" not in have:
        op.create_table(
            "versions", sa.Column("id", sa.Integer, primary_key=True),
            sa.Column("image_id", sa.Integer, sa.ForeignKey("images.id"), nullable=False),
            sa.Column("version", sa.Integer, nullable=False), sa.Column("status", sa.Text, nullable=False),
            sa.Column("mask_file", sa.Text), sa.Column("uncertainty", sa.Float), sa.Column("lesion_score", sa.Float),
            sa.Column("support_key", sa.Text), sa.Column("model", sa.Text), sa.Column("who", sa.Text),
            sa.Column("at", sa.Float, nullable=False), sa.Column("note", sa.Text),
            sa.UniqueConstraint("image_id", "version", name="uq_versions_image_version"))
    elif "note" not in {c["name"] for c in sa.inspect(op.get_bind()).get_columns("versions")}:
        op.add_column("versions", sa.Column("note", sa.Text))      # projects made before issue 27
    if "supports" not in have:
        op.create_table(
            "supports", sa.Column("id", sa.Integer, primary_key=True), sa.Column("rel_path", sa.Text, nullable=False),
            sa.Column("added", sa.Float, nullable=False), sa.UniqueConstraint("rel_path", name="uq_supports_rel_path"))


def downgrade():
    for t in ("supports", "versions", "images", "meta"):
        op.drop_table(t)
