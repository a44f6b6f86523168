"""create projects

Revision ID: 3c4d5e6f7a8b
Revises:
"""
from alembic import op
import sqlalchemy as sa

revision = "3c4d5e6f7a8b"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table("projects", sa.Column("id", sa.Integer(), primary_key=True), sa.Column("name", sa.String(100)))


def downgrade() -> None:
    op.drop_table("projects")
