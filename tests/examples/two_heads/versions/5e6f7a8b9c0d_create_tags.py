"""create tags

Revision ID: 5e6f7a8b9c0d
Revises: 3c4d5e6f7a8b

Written on another branch from the same parent as 4d5e6f7a8b9c, without a
merge revision and without a branch label.
"""
from alembic import op
import sqlalchemy as sa

revision = "5e6f7a8b9c0d"
down_revision = "3c4d5e6f7a8b"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table("tags", sa.Column("id", sa.Integer(), primary_key=True), sa.Column("label", sa.String(50)))


def downgrade() -> None:
    op.drop_table("tags")
