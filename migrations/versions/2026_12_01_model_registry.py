"""Model registry: names, versions, aliases

Revision ID: 20261201_0005
Revises: 20261201_0004
Create Date: 2026-12-01 17:00:00
"""
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "20261201_0005"
down_revision: str | None = "20261201_0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "registry_names",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("owner", sa.String(64), nullable=False),
        sa.Column("name", sa.String(128), nullable=False),
        sa.Column("last_version", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.UniqueConstraint("owner", "name", name="uq_registry_names_owner"),
    )
    op.create_table(
        "registry_versions",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("name_id", sa.String(32), sa.ForeignKey("registry_names.id", ondelete="CASCADE",
                                                          name="fk_registry_versions_name_id_registry_names"),
                  nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        # A model's deletion takes its versions with it (refused while an alias points at one of them).
        sa.Column("model_id", sa.String(32), sa.ForeignKey("models.id", ondelete="CASCADE",
                                                           name="fk_registry_versions_model_id_models"),
                  nullable=False),
        sa.Column("registered_by", sa.String(64), nullable=False),
        sa.Column("registered_at", sa.DateTime(timezone=True), nullable=False),
        sa.UniqueConstraint("name_id", "version", name="uq_registry_versions_name_id"),
        sa.UniqueConstraint("name_id", "model_id", name="uq_registry_versions_name_id_model_id"),
    )
    op.create_index("ix_registry_versions_model_id", "registry_versions", ["model_id"])
    op.create_table(
        "registry_aliases",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("name_id", sa.String(32), sa.ForeignKey("registry_names.id", ondelete="CASCADE",
                                                          name="fk_registry_aliases_name_id_registry_names"),
                  nullable=False),
        sa.Column("alias", sa.String(64), nullable=False),
        sa.Column("version_id", sa.Integer(), sa.ForeignKey("registry_versions.id", ondelete="RESTRICT",
                                                            name="fk_registry_aliases_version_id_registry_versions"),
                  nullable=False),
        sa.Column("moved_by", sa.String(64), nullable=False),
        sa.Column("moved_at", sa.DateTime(timezone=True), nullable=False),
        sa.UniqueConstraint("name_id", "alias", name="uq_registry_aliases_name_id"),
    )
    op.create_index("ix_registry_aliases_version_id", "registry_aliases", ["version_id"])
    op.create_table(
        "registry_alias_moves",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("name_id", sa.String(32), sa.ForeignKey("registry_names.id", ondelete="CASCADE",
                                                          name="fk_registry_alias_moves_name_id_registry_names"),
                  nullable=False),
        sa.Column("alias", sa.String(64), nullable=False),
        sa.Column("from_version", sa.Integer(), nullable=True),
        sa.Column("to_version", sa.Integer(), nullable=True),
        sa.Column("model_id", sa.String(32), nullable=True),
        sa.Column("moved_by", sa.String(64), nullable=False),
        sa.Column("key_id", sa.String(32), nullable=False),
        sa.Column("moved_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_registry_alias_moves_name_id", "registry_alias_moves", ["name_id"])


def downgrade() -> None:
    op.drop_index("ix_registry_alias_moves_name_id", "registry_alias_moves")
    op.drop_table("registry_alias_moves")
    op.drop_index("ix_registry_aliases_version_id", "registry_aliases")
    op.drop_table("registry_aliases")
    op.drop_index("ix_registry_versions_model_id", "registry_versions")
    op.drop_table("registry_versions")
    op.drop_table("registry_names")
