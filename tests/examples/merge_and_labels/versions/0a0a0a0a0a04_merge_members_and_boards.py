"""merge members and boards

Revision ID: 0a0a0a0a0a04

Merges the members and boards branches: stepping down from here, the check
must unapply the merge alone (Alembic's ``<rev>@-1`` is ambiguous for a merge).
"""
from alembic import op
import sqlalchemy as sa

revision = "0a0a0a0a0a04"
down_revision = ("0a0a0a0a0a02", "0a0a0a0a0a03")
branch_labels = None
depends_on = None


def upgrade() -> None:
    pass  # merge point


def downgrade() -> None:
    pass
