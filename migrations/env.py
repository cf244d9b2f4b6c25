"""Alembic environment: migrate the database of the Flask app being run."""

import logging
from logging.config import fileConfig

from alembic import context
from flask import current_app

if context.config.config_file_name:
    fileConfig(context.config.config_file_name)
logger = logging.getLogger("alembic.env")

db = current_app.extensions["migrate"].db
options = current_app.extensions["migrate"].configure_args


def skip_empty_autogenerate(context, revision, directives):  # noqa: ARG001
    """`flask db migrate` with no model change writes no empty revision."""
    if getattr(context.config.cmd_opts, "autogenerate", False):
        if directives[0].upgrade_ops.is_empty():
            directives[:] = []
            logger.info("No changes in schema detected.")


if context.is_offline_mode():
    context.configure(
        url=db.engine.url.render_as_string(hide_password=False),
        target_metadata=db.metadata,
        literal_binds=True,
    )
    with context.begin_transaction():
        context.run_migrations()
else:
    options.setdefault("process_revision_directives", skip_empty_autogenerate)
    # The service's connections autocommit (models.py), so the migrations ask
    # for their transaction, one for all of them: they apply whole or not at
    # all, on SQLite too, whose DDL is transactional once BEGIN is sent.
    options.setdefault("transactional_ddl", True)
    with db.engine.connect() as connection:
        context.configure(connection=connection, target_metadata=db.metadata, **options)
        with context.begin_transaction():
            connection.exec_driver_sql("BEGIN")
            context.run_migrations()
