"""Alembic migrations across environments, from one YAML registry.

The public Python API mirrors the command line: one function per verb in
:mod:`orchestrator.commands`.
"""
__version__ = "0.1.0"
