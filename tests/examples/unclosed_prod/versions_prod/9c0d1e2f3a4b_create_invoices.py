"""create invoices

Revision ID: 9c0d1e2f3a4b
Revises: 8b9c0d1e2f3a

Promoted into versions_prod too early: it revises 8b9c0d1e2f3a, which is still
only in versions_test, so prod's graph is not closed.
"""
from alembic import op
import sqlalchemy as sa

revision = "9c0d1e2f3a4b"
down_revision = "8b9c0d1e2f3a"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table("invoices", sa.Column("id", sa.Integer(), primary_key=True), sa.Column("order_id", sa.Integer()))


def downgrade() -> None:
    op.drop_table("invoices")
