"""create teams

Revision ID: 0a0a0a0a0a01
"""
from alembic import op
import sqlalchemy as sa

revision = "0a0a0a0a0a01"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table("teams", sa.Column("id", sa.Integer(), primary_key=True), sa.Column("name", sa.String(100)))


def downgrade() -> None:
    op.drop_table("teams")
