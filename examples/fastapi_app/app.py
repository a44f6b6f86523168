"""A FastAPI application that migrates its database from its lifespan hook.

Run several workers at once; each revision is applied once (under the
environment's lock) and every worker starts::

    ALEMBIC_ENV=dev uvicorn examples.fastapi_app.app:app --workers 4

``MIGRATE_AT_START=verify`` (what production should use, migrating as a
deploy step with ``orchestrator upgrade``) only checks that the database is at
heads and stops the start-up with one clear line if it is not.
"""
from __future__ import annotations

import os
from contextlib import asynccontextmanager
from typing import AsyncIterator

from fastapi import FastAPI

from orchestrator.appstart import migrate_at_start_async


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """Bring the database to heads (or check it is there) before serving."""
    app.state.migration = await migrate_at_start_async(mode=os.environ.get("MIGRATE_AT_START", "upgrade"))
    yield


app = FastAPI(lifespan=lifespan)


@app.get("/health")
def health() -> dict[str, object]:
    """Answer once the lifespan hook has run: what start-up found or did."""
    result = app.state.migration
    return {"status": "ok", "pid": os.getpid(), "env": result.env, "migration": result.status,
            "heads": list(result.heads), "applied": list(result.applied)}
