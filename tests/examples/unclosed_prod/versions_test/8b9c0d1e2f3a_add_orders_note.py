"""add orders.note

Revision ID: 8b9c0d1e2f3a
Revises: 7a8b9c0d1e2f

A candidate still in versions_test: not promoted yet.
"""
from alembic import op
import sqlalchemy as sa

revision = "8b9c0d1e2f3a"
down_revision = "7a8b9c0d1e2f"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("orders", sa.Column("note", sa.String(200), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("orders") as batch:
        batch.drop_column("note")
