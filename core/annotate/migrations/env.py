"""Alembic's environment: migrations run on the connection `core.annotate.db.migrate` hands over."""
from alembic import context

from core.annotate.db import metadata

connection = context.config.attributes["connection"]
context.configure(connection=connection, target_metadata=metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
