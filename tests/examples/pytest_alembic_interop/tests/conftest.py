"""pytest-alembic's engine: a throwaway database from the orchestrator's plugin.

The environment and dialect come from the outer test (INTEROP_ENV, INTEROP_DIALECT):
pytest-alembic's items are not parametrized, so the dialect is fixed here.
"""
import os

import pytest
import sqlalchemy as sa
from sqlalchemy.pool import NullPool

ENV = os.environ["INTEROP_ENV"]
DIALECT = os.environ.get("INTEROP_DIALECT", "sqlite")
# "connection" (default) hands pytest-alembic a Connection; "engine" an Engine, as its docs show.
HAND_OVER = os.environ.get("INTEROP_HAND_OVER", "connection")


@pytest.fixture
def orchestrator_dialect() -> str:
    return DIALECT


@pytest.fixture
def alembic_engine(orchestrator_db_url, monkeypatch):
    # The packaged env.py resolves the environment's URL from the registry at run time:
    # point it at the same throwaway database, so the lock and the history go there too.
    monkeypatch.setenv(f"{ENV.upper()}_DATABASE_URL", orchestrator_db_url)
    engine = sa.create_engine(orchestrator_db_url, poolclass=NullPool)
    try:
        if HAND_OVER == "engine":
            yield engine
        else:
            with engine.connect() as connection:
                yield connection
    finally:
        engine.dispose()
