"""create messages

Revision ID: 9e2b4d6f8a31
Revises: 7c3d5e9f1a22
Create Date: 2024-05-02 10:41:09.331870

"""

from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision: str = "9e2b4d6f8a31"
down_revision: str | None = "7c3d5e9f1a22"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "messages",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("session_id", sa.String(length=36), nullable=False),
        sa.Column("role", sa.String(length=16), nullable=False),
        sa.Column("content", sa.Text(), nullable=False),
        sa.Column(
            "created_at",
            sa.DateTime(),
            server_default=sa.func.now(),
            nullable=False,
        ),
        sa.ForeignKeyConstraint(
            ["session_id"],
            ["sessions.id"],
            name="fk_messages_session_id_sessions",
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name="pk_messages"),
    )
    op.create_index(
        "ix_messages_session_id", "messages", ["session_id"], unique=False
    )


def downgrade() -> None:
    # ix_messages_session_id goes with the table.  It is not dropped on its own
    # first because MySQL/MariaDB refuse to drop an index that backs a foreign
    # key (error 1553).
    op.drop_table("messages")
