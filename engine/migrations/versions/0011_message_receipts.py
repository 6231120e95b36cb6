"""message receipts: the idempotency keys of inbound messages, so a repeat gets the first answer

Revision ID: 0011
Revises: 0009
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "bpm_message_receipt",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True),
        sa.Column("sender", sa.String(length=64), nullable=False),
        sa.Column("message_name", sa.String(length=128), nullable=False),
        sa.Column("idempotency_key", sa.String(length=128), nullable=False),
        sa.Column("request_sha256", sa.String(length=64), nullable=False),
        sa.Column("instance_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
                  sa.ForeignKey("bpm_process_instance.id"), nullable=True),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.UniqueConstraint("sender", "message_name", "idempotency_key", name="uq_message_receipt_key"),
    )
    op.create_index("ix_message_receipt_received", "bpm_message_receipt", ["received_at"])


def downgrade() -> None:
    op.drop_index("ix_message_receipt_received", table_name="bpm_message_receipt")
    op.drop_table("bpm_message_receipt")
