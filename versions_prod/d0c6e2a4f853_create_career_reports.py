"""create career_reports

Revision ID: d0c6e2a4f853
Revises: b5f8a1c3e742
Create Date: 2024-07-23 11:08:14.275306

"""

from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision: str = "d0c6e2a4f853"
down_revision: str | None = "b5f8a1c3e742"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "career_reports",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("user_id", sa.String(length=64), nullable=False),
        sa.Column("title", sa.String(length=200), nullable=False),
        sa.Column("body", sa.Text(), nullable=True),
        sa.Column(
            "created_at",
            sa.DateTime(),
            server_default=sa.func.now(),
            nullable=False,
        ),
        sa.ForeignKeyConstraint(
            ["user_id"],
            ["user_profiles.user_id"],
            name="fk_career_reports_user_id_user_profiles",
        ),
        sa.PrimaryKeyConstraint("id", name="pk_career_reports"),
    )


def downgrade() -> None:
    op.drop_table("career_reports")
