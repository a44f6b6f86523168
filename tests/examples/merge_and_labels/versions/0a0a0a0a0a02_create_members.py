"""create members

Revision ID: 0a0a0a0a0a02
"""
from alembic import op
import sqlalchemy as sa

revision = "0a0a0a0a0a02"
down_revision = "0a0a0a0a0a01"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table("members", sa.Column("id", sa.Integer(), primary_key=True), sa.Column("team_id", sa.Integer()))


def downgrade() -> None:
    op.drop_table("members")
