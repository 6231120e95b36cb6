"""initial schema

Revision ID: 0001
Revises: 
Create Date: 2026-11-25
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op


revision = '0001'
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('bpm_audit_event',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('stream', sa.String(length=64), nullable=False),
    sa.Column('seq', sa.Integer(), nullable=False),
    sa.Column('occurred_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('actor', sa.String(length=64), nullable=True),
    sa.Column('kind', sa.String(length=32), nullable=False),
    sa.Column('instance_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=True),
    sa.Column('task_uuid', sa.String(length=36), nullable=True),
    sa.Column('data', sa.JSON(), nullable=False),
    sa.Column('prev_hash', sa.String(length=64), nullable=False),
    sa.Column('hash', sa.String(length=64), nullable=False),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('stream', 'seq', name='uq_audit_stream_seq')
    )
    with op.batch_alter_table('bpm_audit_event', schema=None) as batch_op:
        batch_op.create_index('ix_audit_instance', ['instance_id', 'seq'], unique=False)

    op.create_table('bpm_audit_stream',
    sa.Column('stream', sa.String(length=64), nullable=False),
    sa.Column('seq', sa.Integer(), nullable=False),
    sa.Column('head', sa.String(length=64), nullable=False),
    sa.PrimaryKeyConstraint('stream')
    )
    op.create_table('bpm_business_hours',
    sa.Column('name', sa.String(length=64), nullable=False),
    sa.Column('tz', sa.String(length=64), nullable=False),
    sa.Column('periods', sa.JSON(), nullable=False),
    sa.PrimaryKeyConstraint('name')
    )
    op.create_table('bpm_calendar_day',
    sa.Column('day', sa.Date(), nullable=False),
    sa.Column('working', sa.Boolean(), nullable=False),
    sa.Column('trading', sa.Boolean(), nullable=False),
    sa.Column('name', sa.String(length=64), nullable=True),
    sa.Column('source', sa.String(length=32), nullable=False),
    sa.Column('updated_by', sa.String(length=64), nullable=True),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('day')
    )
    op.create_table('bpm_deployment',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('name', sa.String(length=256), nullable=False),
    sa.Column('deployed_by', sa.String(length=64), nullable=True),
    sa.Column('deployed_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('files', sa.JSON(), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    op.create_table('bpm_group',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('key', sa.String(length=128), nullable=False),
    sa.Column('name', sa.String(length=128), nullable=False),
    sa.Column('kind', sa.String(length=32), nullable=False),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('key')
    )
    op.create_table('bpm_notification',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('channel', sa.String(length=32), nullable=False),
    sa.Column('recipient', sa.String(length=128), nullable=False),
    sa.Column('subject', sa.String(length=256), nullable=False),
    sa.Column('body', sa.Text(), nullable=False),
    sa.Column('instance_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=True),
    sa.Column('task_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('sent_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('attempts', sa.Integer(), nullable=False),
    sa.Column('last_error', sa.Text(), nullable=True),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('bpm_notification', schema=None) as batch_op:
        batch_op.create_index('ix_notification_pending', ['sent_at', 'id'], unique=False)

    op.create_table('bpm_schedule',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('key', sa.String(length=128), nullable=False),
    sa.Column('process_key', sa.String(length=128), nullable=False),
    sa.Column('rule', sa.String(length=64), nullable=False),
    sa.Column('at_time', sa.String(length=5), nullable=False),
    sa.Column('business_hours', sa.String(length=64), nullable=False),
    sa.Column('catch_up', sa.String(length=8), nullable=False),
    sa.Column('data', sa.JSON(), nullable=False),
    sa.Column('active', sa.Boolean(), nullable=False),
    sa.Column('next_run_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('last_run_at', sa.DateTime(timezone=True), nullable=True),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('key')
    )
    op.create_table('bpm_counter',
    sa.Column('name', sa.String(length=128), nullable=False),
    sa.Column('value', sa.BigInteger(), nullable=False),
    sa.PrimaryKeyConstraint('name')
    )
    op.create_table('bpm_setting',
    sa.Column('key', sa.String(length=64), nullable=False),
    sa.Column('value', sa.String(length=256), nullable=False),
    sa.PrimaryKeyConstraint('key')
    )
    op.create_table('bpm_sla_policy',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('key', sa.String(length=128), nullable=False),
    sa.Column('name', sa.String(length=256), nullable=False),
    sa.Column('position', sa.Integer(), nullable=False),
    sa.Column('active', sa.Boolean(), nullable=False),
    sa.Column('process_key', sa.String(length=128), nullable=True),
    sa.Column('element_id', sa.String(length=128), nullable=True),
    sa.Column('lane', sa.String(length=128), nullable=True),
    sa.Column('min_priority', sa.Integer(), nullable=True),
    sa.Column('match_data', sa.JSON(), nullable=False),
    sa.Column('target_amount', sa.Numeric(precision=10, scale=2), nullable=False),
    sa.Column('target_unit', sa.String(length=8), nullable=False),
    sa.Column('business_hours', sa.String(length=64), nullable=False),
    sa.Column('milestones', sa.JSON(), nullable=False),
    sa.Column('pausable', sa.Boolean(), nullable=False),
    sa.Column('anchor_variable', sa.String(length=128), nullable=True),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('updated_by', sa.String(length=64), nullable=True),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('key')
    )
    op.create_table('bpm_user',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('username', sa.String(length=64), nullable=False),
    sa.Column('display_name', sa.String(length=128), nullable=False),
    sa.Column('password_hash', sa.String(length=256), nullable=True),
    sa.Column('branch_code', sa.String(length=32), nullable=True),
    sa.Column('email', sa.String(length=256), nullable=True),
    sa.Column('active', sa.Boolean(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('username')
    )
    op.create_table('bpm_api_token',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('user_id', sa.Integer(), nullable=False),
    sa.Column('token_hash', sa.String(length=64), nullable=False),
    sa.Column('name', sa.String(length=64), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('expires_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('revoked_at', sa.DateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['user_id'], ['bpm_user.id'], ),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('token_hash')
    )
    op.create_table('bpm_group_member',
    sa.Column('group_id', sa.Integer(), nullable=False),
    sa.Column('user_id', sa.Integer(), nullable=False),
    sa.ForeignKeyConstraint(['group_id'], ['bpm_group.id'], ),
    sa.ForeignKeyConstraint(['user_id'], ['bpm_user.id'], ),
    sa.PrimaryKeyConstraint('group_id', 'user_id')
    )
    with op.batch_alter_table('bpm_group_member', schema=None) as batch_op:
        batch_op.create_index('ix_group_member_user', ['user_id'], unique=False)

    op.create_table('bpm_process_version',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('process_key', sa.String(length=128), nullable=False),
    sa.Column('version', sa.Integer(), nullable=False),
    sa.Column('name', sa.String(length=256), nullable=True),
    sa.Column('deployment_id', sa.Integer(), nullable=False),
    sa.Column('source_file', sa.String(length=256), nullable=False),
    sa.Column('bpmn_xml', sa.Text(), nullable=False),
    sa.Column('spec_json', sa.Text(), nullable=False),
    sa.Column('forms', sa.JSON(), nullable=False),
    sa.Column('start_messages', sa.JSON(), nullable=False),
    sa.Column('starter_groups', sa.JSON(), nullable=False),
    sa.Column('report_variables', sa.JSON(), nullable=True),
    sa.Column('business_key_format', sa.String(length=128), nullable=True),
    sa.Column('sha256', sa.String(length=64), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['deployment_id'], ['bpm_deployment.id'], ),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('process_key', 'version', name='uq_process_version')
    )
    op.create_table('bpm_process_instance',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('process_version_id', sa.Integer(), nullable=False),
    sa.Column('process_key', sa.String(length=128), nullable=False),
    sa.Column('business_key', sa.String(length=128), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('client_id', sa.String(length=64), nullable=True),
    sa.Column('branch_code', sa.String(length=32), nullable=True),
    sa.Column('state', sa.LargeBinary(), nullable=False),
    sa.Column('projected', sa.JSON(), nullable=False),
    sa.Column('error', sa.Text(), nullable=True),
    sa.Column('facts', sa.JSON(), nullable=True),
    sa.Column('started_by', sa.String(length=64), nullable=True),
    sa.Column('started_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('ended_by', sa.String(length=64), nullable=True),
    sa.Column('ended_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('audit_seq', sa.Integer(), nullable=False),
    sa.Column('audit_head', sa.String(length=64), nullable=False),
    sa.ForeignKeyConstraint(['process_version_id'], ['bpm_process_version.id'], ),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('process_key', 'business_key', name='uq_instance_business_key')
    )
    with op.batch_alter_table('bpm_process_instance', schema=None) as batch_op:
        batch_op.create_index('ix_instance_client', ['client_id'], unique=False)
        batch_op.create_index('ix_instance_status', ['status', 'process_key'], unique=False)

    op.create_table('bpm_message_subscription',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('instance_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('task_uuid', sa.String(length=36), nullable=False),
    sa.Column('element_id', sa.String(length=128), nullable=False),
    sa.Column('message_name', sa.String(length=128), nullable=False),
    sa.Column('correlation_key', sa.String(length=128), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['instance_id'], ['bpm_process_instance.id'], ),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('task_uuid')
    )
    with op.batch_alter_table('bpm_message_subscription', schema=None) as batch_op:
        batch_op.create_index('ix_subscription_lookup', ['message_name', 'correlation_key'], unique=False)

    op.create_table('bpm_task',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('task_uuid', sa.String(length=36), nullable=False),
    sa.Column('instance_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('process_key', sa.String(length=128), nullable=False),
    sa.Column('element_id', sa.String(length=128), nullable=False),
    sa.Column('name', sa.String(length=256), nullable=True),
    sa.Column('lane', sa.String(length=128), nullable=True),
    sa.Column('candidate_groups', sa.JSON(), nullable=False),
    sa.Column('assignee', sa.String(length=64), nullable=True),
    sa.Column('owner', sa.String(length=64), nullable=True),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('priority', sa.Integer(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('due_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('follow_up_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('completed_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('completed_by', sa.String(length=64), nullable=True),
    sa.Column('business_key', sa.String(length=128), nullable=False),
    sa.Column('client_id', sa.String(length=64), nullable=True),
    sa.Column('branch_code', sa.String(length=32), nullable=True),
    sa.Column('form_key', sa.String(length=128), nullable=True),
    sa.Column('kind', sa.String(length=16), server_default='bpmn', nullable=False),
    sa.Column('due_source', sa.String(length=16), nullable=True),
    sa.Column('sla_policy_id', sa.Integer(), nullable=True),
    sa.Column('sla_started_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('sla_paused_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('sla_paused_seconds', sa.Integer(), server_default='0', nullable=False),
    sa.Column('at_risk_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('breached_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('calendar_incomplete', sa.Boolean(), server_default=sa.false(), nullable=False),
    sa.Column('excluded', sa.JSON(), nullable=True),
    sa.ForeignKeyConstraint(['instance_id'], ['bpm_process_instance.id'], ),
    sa.ForeignKeyConstraint(['sla_policy_id'], ['bpm_sla_policy.id'], ),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('task_uuid')
    )
    with op.batch_alter_table('bpm_task', schema=None) as batch_op:
        batch_op.create_index('ix_task_assignee_status_due', ['assignee', 'status', 'due_at'], unique=False)
        batch_op.create_index('ix_task_business_key', ['business_key'], unique=False)
        batch_op.create_index('ix_task_instance', ['instance_id'], unique=False)
        batch_op.create_index('ix_task_status_due', ['status', 'due_at'], unique=False)

    op.create_table('bpm_timer',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('kind', sa.String(length=16), server_default='bpmn', nullable=False),
    sa.Column('instance_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=True),
    sa.Column('task_uuid', sa.String(length=36), nullable=True),
    sa.Column('element_id', sa.String(length=128), nullable=False),
    sa.Column('payload', sa.JSON(), nullable=True),
    sa.Column('due_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('fired_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('attempts', sa.Integer(), server_default='0', nullable=False),
    sa.Column('last_error', sa.Text(), nullable=True),
    sa.ForeignKeyConstraint(['instance_id'], ['bpm_process_instance.id'], ),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('bpm_timer', schema=None) as batch_op:
        batch_op.create_index('ix_timer_status_due', ['status', 'due_at'], unique=False)
        batch_op.create_index('ix_timer_task', ['task_uuid'], unique=False)

    op.create_table('bpm_task_candidate',
    sa.Column('task_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('group_key', sa.String(length=128), nullable=False),
    sa.ForeignKeyConstraint(['task_id'], ['bpm_task.id'], ),
    sa.PrimaryKeyConstraint('task_id', 'group_key')
    )
    with op.batch_alter_table('bpm_task_candidate', schema=None) as batch_op:
        batch_op.create_index('ix_task_candidate_group', ['group_key', 'task_id'], unique=False)

    op.create_table('bpm_task_exclusion',
    sa.Column('task_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('principal', sa.String(length=160), nullable=False),
    sa.ForeignKeyConstraint(['task_id'], ['bpm_task.id'], ),
    sa.PrimaryKeyConstraint('task_id', 'principal')
    )



def downgrade() -> None:
    op.drop_table('bpm_task_exclusion')
    with op.batch_alter_table('bpm_task_candidate', schema=None) as batch_op:
        batch_op.drop_index('ix_task_candidate_group')

    op.drop_table('bpm_task_candidate')
    with op.batch_alter_table('bpm_timer', schema=None) as batch_op:
        batch_op.drop_index('ix_timer_task')
        batch_op.drop_index('ix_timer_status_due')

    op.drop_table('bpm_timer')
    with op.batch_alter_table('bpm_task', schema=None) as batch_op:
        batch_op.drop_index('ix_task_status_due')
        batch_op.drop_index('ix_task_instance')
        batch_op.drop_index('ix_task_business_key')
        batch_op.drop_index('ix_task_assignee_status_due')

    op.drop_table('bpm_task')
    with op.batch_alter_table('bpm_message_subscription', schema=None) as batch_op:
        batch_op.drop_index('ix_subscription_lookup')

    op.drop_table('bpm_message_subscription')
    with op.batch_alter_table('bpm_process_instance', schema=None) as batch_op:
        batch_op.drop_index('ix_instance_status')
        batch_op.drop_index('ix_instance_client')

    op.drop_table('bpm_process_instance')
    op.drop_table('bpm_process_version')
    with op.batch_alter_table('bpm_group_member', schema=None) as batch_op:
        batch_op.drop_index('ix_group_member_user')

    op.drop_table('bpm_group_member')
    op.drop_table('bpm_api_token')
    op.drop_table('bpm_user')
    op.drop_table('bpm_sla_policy')
    op.drop_table('bpm_setting')
    op.drop_table('bpm_counter')
    op.drop_table('bpm_schedule')
    with op.batch_alter_table('bpm_notification', schema=None) as batch_op:
        batch_op.drop_index('ix_notification_pending')

    op.drop_table('bpm_notification')
    op.drop_table('bpm_group')
    op.drop_table('bpm_deployment')
    op.drop_table('bpm_calendar_day')
    op.drop_table('bpm_business_hours')
    op.drop_table('bpm_audit_stream')
    with op.batch_alter_table('bpm_audit_event', schema=None) as batch_op:
        batch_op.drop_index('ix_audit_instance')

    op.drop_table('bpm_audit_event')
