"""Searches and their trials; a job's search, name, tags and notes

Revision ID: 20261201_0006
Revises: 20261201_0005
Create Date: 2026-12-01 17:00:00
"""
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "20261201_0006"
down_revision: str | None = "20261201_0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "searches",
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("owner", sa.String(64), nullable=False),
        sa.Column("dataset_id", sa.String(32), nullable=True),
        sa.Column("name", sa.String(255), nullable=True),
        sa.Column("tags", sa.JSON(), nullable=False),
        sa.Column("notes", sa.Text(), nullable=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("spec", sa.JSON(), nullable=False),
        sa.Column("task", sa.String(32), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("best_trial", sa.Integer(), nullable=True),
        sa.Column("model_id", sa.String(32), nullable=True),
        sa.Column("refit_job_id", sa.String(32), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_searches")),
    )
    op.create_index(op.f("ix_searches_owner"), "searches", ["owner"])
    op.create_index(op.f("ix_searches_status"), "searches", ["status"])
    op.create_table(
        "search_trials",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("search_id", sa.String(32), nullable=False),
        sa.Column("number", sa.Integer(), nullable=False),
        sa.Column("params", sa.JSON(), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("job_id", sa.String(32), nullable=True),
        sa.Column("value", sa.Float(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(["search_id"], ["searches.id"], name=op.f("fk_search_trials_search_id_searches"),
                                ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["job_id"], ["jobs.id"], name=op.f("fk_search_trials_job_id_jobs"),
                                ondelete="SET NULL"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_search_trials")),
        # the guard against two drivers (two API processes, a restart) creating the same trial twice
        sa.UniqueConstraint("search_id", "number", name=op.f("uq_search_trials_search_id")),
    )
    op.create_index(op.f("ix_search_trials_search_id"), "search_trials", ["search_id"])
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("search_id", sa.String(32), nullable=True))
        batch_op.add_column(sa.Column("name", sa.String(255), nullable=True))
        batch_op.add_column(sa.Column("tags", sa.JSON(), nullable=False, server_default="[]"))
        batch_op.add_column(sa.Column("notes", sa.Text(), nullable=True))
        batch_op.create_foreign_key(batch_op.f("fk_jobs_search_id_searches"), "searches", ["search_id"], ["id"],
                                    ondelete="SET NULL")
        batch_op.create_index(batch_op.f("ix_jobs_search_id"), ["search_id"])
        batch_op.create_index(batch_op.f("ix_jobs_name"), ["name"])


def downgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_jobs_name"))
        batch_op.drop_index(batch_op.f("ix_jobs_search_id"))
        batch_op.drop_constraint(batch_op.f("fk_jobs_search_id_searches"), type_="foreignkey")
        batch_op.drop_column("notes")
        batch_op.drop_column("tags")
        batch_op.drop_column("name")
        batch_op.drop_column("search_id")
    op.drop_index(op.f("ix_search_trials_search_id"), "search_trials")
    op.drop_table("search_trials")
    op.drop_index(op.f("ix_searches_status"), "searches")
    op.drop_index(op.f("ix_searches_owner"), "searches")
    op.drop_table("searches")
