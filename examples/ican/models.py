"""SQLAlchemy models for the ``ican`` demo project.

These mirror the prod head revision (d0c6e2a4f853, versions_prod/) exactly, so
``alembic`` autogenerate against a database at that revision finds nothing to
do.  The candidate ``archived_at`` column (versions_test/) is deliberately NOT
modelled here.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Base(DeclarativeBase):
    pass


class Session(Base):
    __tablename__ = "sessions"
    __table_args__ = (
        sa.PrimaryKeyConstraint("id", name="pk_sessions"),
        sa.Index("ix_sessions_user_id", "user_id"),
    )

    id: Mapped[str] = mapped_column(sa.String(36))
    user_id: Mapped[str] = mapped_column(sa.String(64), nullable=False)
    created_at: Mapped[datetime] = mapped_column(
        sa.DateTime(), nullable=False, server_default=sa.func.now()
    )
    updated_at: Mapped[datetime | None] = mapped_column(sa.DateTime(), nullable=True)
    workflow_data: Mapped[Any | None] = mapped_column(sa.JSON(), nullable=True)


class Message(Base):
    __tablename__ = "messages"
    __table_args__ = (
        sa.PrimaryKeyConstraint("id", name="pk_messages"),
        sa.ForeignKeyConstraint(
            ["session_id"],
            ["sessions.id"],
            name="fk_messages_session_id_sessions",
            ondelete="CASCADE",
        ),
        sa.Index("ix_messages_session_id", "session_id"),
    )

    id: Mapped[int] = mapped_column(sa.Integer(), autoincrement=True)
    session_id: Mapped[str] = mapped_column(sa.String(36), nullable=False)
    role: Mapped[str] = mapped_column(sa.String(16), nullable=False)
    content: Mapped[str] = mapped_column(sa.Text(), nullable=False)
    created_at: Mapped[datetime] = mapped_column(
        sa.DateTime(), nullable=False, server_default=sa.func.now()
    )


class UserProfile(Base):
    __tablename__ = "user_profiles"
    __table_args__ = (
        sa.PrimaryKeyConstraint("user_id", name="pk_user_profiles"),
        sa.UniqueConstraint("email", name="uq_user_profiles_email"),
    )

    user_id: Mapped[str] = mapped_column(sa.String(64))
    display_name: Mapped[str] = mapped_column(sa.String(200), nullable=False)
    email: Mapped[str | None] = mapped_column(sa.String(320), nullable=True)
    created_at: Mapped[datetime] = mapped_column(
        sa.DateTime(), nullable=False, server_default=sa.func.now()
    )


class CareerReport(Base):
    __tablename__ = "career_reports"
    __table_args__ = (
        sa.PrimaryKeyConstraint("id", name="pk_career_reports"),
        sa.ForeignKeyConstraint(
            ["user_id"],
            ["user_profiles.user_id"],
            name="fk_career_reports_user_id_user_profiles",
        ),
    )

    id: Mapped[int] = mapped_column(sa.Integer(), autoincrement=True)
    user_id: Mapped[str] = mapped_column(sa.String(64), nullable=False)
    title: Mapped[str] = mapped_column(sa.String(200), nullable=False)
    body: Mapped[str | None] = mapped_column(sa.Text(), nullable=True)
    created_at: Mapped[datetime] = mapped_column(
        sa.DateTime(), nullable=False, server_default=sa.func.now()
    )
