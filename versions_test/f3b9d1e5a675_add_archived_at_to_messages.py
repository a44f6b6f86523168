"""add archived_at to messages

Revision ID: f3b9d1e5a675
Revises: d0c6e2a4f853
Create Date: 2024-08-05 13:47:36.804129

"""

from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision: str = "f3b9d1e5a675"
down_revision: str | None = "d0c6e2a4f853"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("messages", sa.Column("archived_at", sa.DateTime(), nullable=True))
    op.create_index(
        "ix_messages_archived_at", "messages", ["archived_at"], unique=False
    )


def downgrade() -> None:
    op.drop_index("ix_messages_archived_at", table_name="messages")
    # batch mode: SQLite recreates the table, other backends emit ALTER TABLE
    with op.batch_alter_table("messages") as batch:
        batch.drop_column("archived_at")
