"""add teams slug

Revision ID: 0a0a0a0a0a05
"""
from alembic import op
import sqlalchemy as sa

revision = "0a0a0a0a0a05"
down_revision = "0a0a0a0a0a04"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("teams", sa.Column("slug", sa.String(100), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("teams") as batch:
        batch.drop_column("slug")
