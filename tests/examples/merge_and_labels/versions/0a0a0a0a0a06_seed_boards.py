"""seed boards

Revision ID: 0a0a0a0a0a06

Its own branch (label ``seed``) from base, depending on 0a0a0a0a0a03 for the
boards table: the shape of the demo's testdata branch.
"""
from alembic import op
import sqlalchemy as sa

revision = "0a0a0a0a0a06"
down_revision = None
branch_labels = ("seed",)
depends_on = "0a0a0a0a0a03"


def upgrade() -> None:
    op.execute("INSERT INTO boards (id, title) VALUES (1, 'seeded')")


def downgrade() -> None:
    op.execute("DELETE FROM boards WHERE id = 1")
