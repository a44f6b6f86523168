"""Test helpers for projects that use the orchestrator: throwaway databases per dialect.

The pytest side lives in :mod:`orchestrator.pytest_plugin`; this package holds the
provisioning it uses, importable without pytest.
"""
from orchestrator.testing.databases import (
    DIALECTS,
    DatabaseUnavailable,
    DatabaseURL,
    Server,
    get_server,
    leftover_databases,
    safe_url,
    throwaway_database,
)

__all__ = [
    "DIALECTS",
    "DatabaseUnavailable",
    "DatabaseURL",
    "Server",
    "get_server",
    "leftover_databases",
    "safe_url",
    "throwaway_database",
]
