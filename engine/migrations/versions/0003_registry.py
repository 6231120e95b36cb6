"""client registry: branches, staff profiles, service groups, clients, classification rules

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-26
"""

from __future__ import annotations

from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

import sqlalchemy as sa
from alembic import op

# Version 1 of the classification standard as it was when this migration was written: a
# migration carries its own data, so a later change to the defaults in
# engine.brokerage.classification (which never imports back into migrations) cannot change
# what this revision seeds.
COMPANY = "company"
DEFAULT_EFFECTIVE_FROM = date(2000, 1, 1)
DEFAULT_RULES: dict[str, Any] = {
    "turnover_threshold": "3",
    "bands": [
        {"min_assets": "0", "active": "G", "inactive": "G"},
        {"min_assets": "10000", "active": "E", "inactive": "F"},
        {"min_assets": "100000", "active": "C-", "inactive": "D-"},
        {"min_assets": "500000", "active": "C", "inactive": "D"},
        {"min_assets": "1000000", "active": "A", "inactive": "B"},
        {"min_assets": "5000000", "active": "A+", "inactive": "B+"},
    ],
    "vip_thresholds": {"silver": "50000", "gold": "300000", "diamond": "1000000"},
    "downgrade_grace_months": 3,
}
DEFAULT_APPROVED_BY = "brief §3.2/§3.3 defaults"

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

rule_set = sa.table(
    "bpm_class_rule_set",
    sa.column("scope", sa.String), sa.column("version", sa.Integer), sa.column("effective_from", sa.Date),
    sa.column("effective_to", sa.Date), sa.column("turnover_threshold", sa.Numeric(10, 4)),
    sa.column("bands", sa.JSON), sa.column("vip_thresholds", sa.JSON),
    sa.column("downgrade_grace_months", sa.Integer), sa.column("approved_by", sa.String),
    sa.column("note", sa.Text), sa.column("created_by", sa.String),
    sa.column("created_at", sa.DateTime(timezone=True)),
)


def upgrade() -> None:
    op.create_table(
        "bpm_branch",
        sa.Column("code", sa.String(length=32), nullable=False),
        sa.Column("name", sa.String(length=128), nullable=False),
        sa.Column("city", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("code"),
    )
    op.create_table(
        "bpm_service_group",
        sa.Column("key", sa.String(length=64), nullable=False),
        sa.Column("group_id", sa.Integer(), nullable=False),
        sa.Column("branch_code", sa.String(length=32), nullable=False),
        sa.Column("lead_user_id", sa.Integer(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["branch_code"], ["bpm_branch.code"]),
        sa.ForeignKeyConstraint(["group_id"], ["bpm_group.id"]),
        sa.ForeignKeyConstraint(["lead_user_id"], ["bpm_user.id"]),
        sa.PrimaryKeyConstraint("key"),
        sa.UniqueConstraint("group_id"),
    )
    with op.batch_alter_table("bpm_service_group", schema=None) as batch_op:
        batch_op.create_index("ix_service_group_branch", ["branch_code"], unique=False)

    op.create_table(
        "bpm_staff",
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("staff_no", sa.String(length=32), nullable=True),
        sa.Column("branch_code", sa.String(length=32), nullable=True),
        sa.Column("job_roles", sa.JSON(), nullable=False),
        sa.Column("back_office", sa.Boolean(), nullable=False),
        sa.Column("service_group_key", sa.String(length=64), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["branch_code"], ["bpm_branch.code"]),
        sa.ForeignKeyConstraint(["service_group_key"], ["bpm_service_group.key"]),
        sa.ForeignKeyConstraint(["user_id"], ["bpm_user.id"]),
        sa.PrimaryKeyConstraint("user_id"),
        sa.UniqueConstraint("staff_no"),
    )
    with op.batch_alter_table("bpm_staff", schema=None) as batch_op:
        batch_op.create_index("ix_staff_service_group", ["service_group_key"], unique=False)

    op.create_table(
        "bpm_class_rule_set",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("scope", sa.String(length=32), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("effective_from", sa.Date(), nullable=False),
        sa.Column("effective_to", sa.Date(), nullable=True),
        sa.Column("turnover_threshold", sa.Numeric(precision=10, scale=4), nullable=False),
        sa.Column("bands", sa.JSON(), nullable=False),
        sa.Column("vip_thresholds", sa.JSON(), nullable=False),
        sa.Column("downgrade_grace_months", sa.Integer(), nullable=False),
        sa.Column("approved_by", sa.String(length=64), nullable=False),
        sa.Column("note", sa.Text(), nullable=True),
        sa.Column("created_by", sa.String(length=64), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("scope", "version", name="uq_class_rule_set_version"),
    )
    op.create_table(
        "bpm_client",
        sa.Column("client_id", sa.String(length=64), nullable=False),
        sa.Column("name", sa.String(length=128), nullable=False),
        sa.Column("branch_code", sa.String(length=32), nullable=False),
        sa.Column("service_group_key", sa.String(length=64), nullable=True),
        sa.Column("birth_date", sa.Date(), nullable=True),
        sa.Column("id_number", sa.String(length=32), nullable=True),
        sa.Column("phone", sa.String(length=32), nullable=True),
        sa.Column("account_number", sa.String(length=32), nullable=True),
        sa.Column("assets", sa.Numeric(precision=18, scale=2), nullable=False),
        sa.Column("turnover", sa.Numeric(precision=10, scale=4), nullable=False),
        sa.Column("risk_level", sa.String(length=8), nullable=True),
        sa.Column("c1_lowest", sa.Boolean(), nullable=False),
        sa.Column("operating_habit", sa.String(length=16), nullable=True),
        sa.Column("classification", sa.String(length=4), nullable=True),
        sa.Column("class_rule_set_id", sa.Integer(), nullable=True),
        sa.Column("classified_on", sa.Date(), nullable=True),
        sa.Column("vip_tier", sa.String(length=16), nullable=True),
        sa.Column("tier_since", sa.Date(), nullable=True),
        sa.Column("downgrade_grace_until", sa.Date(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["branch_code"], ["bpm_branch.code"]),
        sa.ForeignKeyConstraint(["class_rule_set_id"], ["bpm_class_rule_set.id"]),
        sa.ForeignKeyConstraint(["service_group_key"], ["bpm_service_group.key"]),
        sa.PrimaryKeyConstraint("client_id"),
    )
    with op.batch_alter_table("bpm_client", schema=None) as batch_op:
        batch_op.create_index("ix_client_branch_group", ["branch_code", "service_group_key"], unique=False)
        batch_op.create_index("ix_client_service_group", ["service_group_key"], unique=False)

    # Version 1 of the classification standard: turnover threshold 3 (docs/domain.md#classification)
    # and the diamond tier at 100万 (an assumed default, docs/domain.md#vip).
    op.bulk_insert(rule_set, [{
        "scope": COMPANY, "version": 1, "effective_from": DEFAULT_EFFECTIVE_FROM, "effective_to": None,
        "turnover_threshold": Decimal(DEFAULT_RULES["turnover_threshold"]), "bands": DEFAULT_RULES["bands"],
        "vip_thresholds": DEFAULT_RULES["vip_thresholds"],
        "downgrade_grace_months": DEFAULT_RULES["downgrade_grace_months"], "approved_by": DEFAULT_APPROVED_BY,
        "note": None, "created_by": None, "created_at": datetime.now(UTC),
    }])


def downgrade() -> None:
    with op.batch_alter_table("bpm_client", schema=None) as batch_op:
        batch_op.drop_index("ix_client_service_group")
        batch_op.drop_index("ix_client_branch_group")
    op.drop_table("bpm_client")
    op.drop_table("bpm_class_rule_set")
    with op.batch_alter_table("bpm_staff", schema=None) as batch_op:
        batch_op.drop_index("ix_staff_service_group")
    op.drop_table("bpm_staff")
    with op.batch_alter_table("bpm_service_group", schema=None) as batch_op:
        batch_op.drop_index("ix_service_group_branch")
    op.drop_table("bpm_service_group")
    op.drop_table("bpm_branch")
