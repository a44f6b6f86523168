"""add workflow_data to sessions

Revision ID: 7c3d5e9f1a22
Revises: 4a1e7c2b9d10
Create Date: 2024-04-17 14:03:22.907114

"""

from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision: str = "7c3d5e9f1a22"
down_revision: str | None = "4a1e7c2b9d10"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("sessions", sa.Column("workflow_data", sa.JSON(), nullable=True))


def downgrade() -> None:
    # batch mode: SQLite recreates the table, other backends emit ALTER TABLE
    with op.batch_alter_table("sessions") as batch:
        batch.drop_column("workflow_data")
