"""create boards

Revision ID: 0a0a0a0a0a03
"""
from alembic import op
import sqlalchemy as sa

revision = "0a0a0a0a0a03"
down_revision = "0a0a0a0a0a01"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table("boards", sa.Column("id", sa.Integer(), primary_key=True), sa.Column("title", sa.String(100)))


def downgrade() -> None:
    op.drop_table("boards")
