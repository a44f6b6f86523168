"""seed test data

Revision ID: e8a7b9c1d264
Revises:
Create Date: 2024-07-24 09:30:02.118457

Lives on its own ``testdata`` branch (its own base) and depends on the prod
head d0c6e2a4f853 so that every table it writes to exists first.  Uses
lightweight ``sa.table()`` definitions rather than importing models, so the
revision keeps working however the models evolve.  Only plain
string/text values are written (``workflow_data`` is left NULL) so that the
revision also renders in offline ``--sql`` mode, where a JSON value has no
literal form.

"""

from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision: str = "e8a7b9c1d264"
down_revision: str | None = None
branch_labels = ("testdata",)
depends_on = "d0c6e2a4f853"


TEST_USER_IDS = ("test-user-alice", "test-user-bob")
TEST_SESSION_ID = "00000000-0000-4000-8000-00000000a11c"

user_profiles = sa.table(
    "user_profiles",
    sa.column("user_id", sa.String(64)),
    sa.column("display_name", sa.String(200)),
    sa.column("email", sa.String(320)),
)

sessions = sa.table(
    "sessions",
    sa.column("id", sa.String(36)),
    sa.column("user_id", sa.String(64)),
)

messages = sa.table(
    "messages",
    sa.column("session_id", sa.String(36)),
    sa.column("role", sa.String(16)),
    sa.column("content", sa.Text),
)

career_reports = sa.table(
    "career_reports",
    sa.column("user_id", sa.String(64)),
    sa.column("title", sa.String(200)),
    sa.column("body", sa.Text),
)


def upgrade() -> None:
    op.bulk_insert(
        user_profiles,
        [
            {
                "user_id": "test-user-alice",
                "display_name": "Alice Test",
                "email": "alice@example.test",
            },
            {
                "user_id": "test-user-bob",
                "display_name": "Bob Test",
                "email": None,
            },
        ],
    )
    op.bulk_insert(
        sessions,
        [
            {
                "id": TEST_SESSION_ID,
                "user_id": "test-user-alice",
            },
        ],
    )
    # Integer ids are left to the database so PostgreSQL sequences stay in
    # step; the rows are keyed by their (test-only) parent rows instead.
    op.bulk_insert(
        messages,
        [
            {
                "session_id": TEST_SESSION_ID,
                "role": "user",
                "content": "Hi, I would like some career advice.",
            },
            {
                "session_id": TEST_SESSION_ID,
                "role": "assistant",
                "content": "Happy to help. What do you do today?",
            },
        ],
    )
    op.bulk_insert(
        career_reports,
        [
            {
                "user_id": "test-user-alice",
                "title": "Alice's first career report",
                "body": "Test fixture report.",
            },
        ],
    )


def downgrade() -> None:
    # Children first: career_reports -> user_profiles has no ON DELETE CASCADE.
    op.execute(
        sa.delete(career_reports).where(
            career_reports.c.user_id.in_(TEST_USER_IDS)
        )
    )
    op.execute(
        sa.delete(messages).where(messages.c.session_id == TEST_SESSION_ID)
    )
    op.execute(sa.delete(sessions).where(sessions.c.id == TEST_SESSION_ID))
    op.execute(
        sa.delete(user_profiles).where(user_profiles.c.user_id.in_(TEST_USER_IDS))
    )
