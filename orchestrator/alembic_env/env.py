"""The packaged Alembic environment: one call into the orchestrator.

Used when the registry's ``script_location`` is ``orchestrator:alembic_env``
(the default). It works the same under the orchestrator and under stock
``alembic`` with an ini written by ``orchestrator ini``.
"""
from alembic import context

from orchestrator.envpy import run_migrations

run_migrations(context)
