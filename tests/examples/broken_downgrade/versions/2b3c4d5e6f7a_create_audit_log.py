"""create audit_log

Revision ID: 2b3c4d5e6f7a
Revises: 1a2b3c4d5e6f

The upgrade is written to be re-runnable (IF NOT EXISTS), so upgrading again
after the downgrade succeeds: only the trace left at base shows the bug.
"""
from alembic import op
import sqlalchemy as sa

revision = "2b3c4d5e6f7a"
down_revision = "1a2b3c4d5e6f"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "audit_log",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("account_id", sa.Integer(), nullable=False),
        sa.Column("action", sa.String(50), nullable=False),
        if_not_exists=True,
    )


def downgrade() -> None:
    pass  # the bug: audit_log is never dropped
