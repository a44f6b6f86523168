"""create orders

Revision ID: 7a8b9c0d1e2f
Revises:
"""
from alembic import op
import sqlalchemy as sa

revision = "7a8b9c0d1e2f"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table("orders", sa.Column("id", sa.Integer(), primary_key=True), sa.Column("total", sa.Integer()))


def downgrade() -> None:
    op.drop_table("orders")
