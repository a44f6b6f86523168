"""create user_profiles

Revision ID: b5f8a1c3e742
Revises: 9e2b4d6f8a31
Create Date: 2024-06-11 16:25:57.640492

"""

from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision: str = "b5f8a1c3e742"
down_revision: str | None = "9e2b4d6f8a31"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "user_profiles",
        sa.Column("user_id", sa.String(length=64), nullable=False),
        sa.Column("display_name", sa.String(length=200), nullable=False),
        sa.Column("email", sa.String(length=320), nullable=True),
        sa.Column(
            "created_at",
            sa.DateTime(),
            server_default=sa.func.now(),
            nullable=False,
        ),
        sa.PrimaryKeyConstraint("user_id", name="pk_user_profiles"),
        sa.UniqueConstraint("email", name="uq_user_profiles_email"),
    )


def downgrade() -> None:
    op.drop_table("user_profiles")
