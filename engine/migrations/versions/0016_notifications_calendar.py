"""start routes of process versions; notifications and the calendar's years

Revision ID: 0016
Revises: 0013
Create Date: 2026-12-07
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from alembic import op
from lxml import etree

revision = "0016"
down_revision = "0014"
branch_labels = None
depends_on = None

BPMN = "{http://www.omg.org/spec/BPMN/20100524/MODEL}"


def _routes(xml: str, process_key: str) -> list[dict[str, Any]]:
    """The start events of the stored diagram's top-level process, as the deploy records them
    (engine.process.deployments.start_routes), for versions deployed before routes were kept."""
    # Diagrams already stored were checked at their deploy; still, read them without entities.
    parser = etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False)
    root = etree.fromstring(xml.encode(), parser)
    messages = {m.get("id"): m.get("name") or m.get("id") for m in root.iter(f"{BPMN}message")}
    routes = []
    for process in root.iter(f"{BPMN}process"):
        if process.get("id") != process_key:
            continue
        for event in process.findall(f"{BPMN}startEvent"):
            route: dict[str, Any] = {"event_id": event.get("id"), "name": event.get("name")}
            message = event.find(f"{BPMN}messageEventDefinition")
            if message is not None:
                route.update(kind="message", message=messages.get(message.get("messageRef")))
            elif event.find(f"{BPMN}timerEventDefinition") is not None:
                route.update(kind="timer")
            elif len([c for c in event if str(c.tag).endswith("EventDefinition")]) == 0:
                route.update(kind="none")
            else:
                kind = str(next(c for c in event if str(c.tag).endswith("EventDefinition")).tag).removeprefix(BPMN)
                route.update(kind=kind.removesuffix("EventDefinition").lower())
            routes.append(route)
    return sorted(routes, key=lambda r: (r["kind"], r["event_id"] or ""))


def upgrade() -> None:
    with op.batch_alter_table("bpm_process_version") as batch_op:
        batch_op.add_column(sa.Column("start_routes", sa.JSON(), nullable=True))
    bind = op.get_bind()
    version = sa.table("bpm_process_version", sa.column("id", sa.Integer()), sa.column("process_key", sa.String()),
                       sa.column("bpmn_xml", sa.Text()), sa.column("start_routes", sa.JSON()))
    for row in bind.execute(sa.select(version.c.id, version.c.process_key, version.c.bpmn_xml)).all():
        bind.execute(version.update().where(version.c.id == row.id)
                     .values(start_routes=_routes(row.bpmn_xml, row.process_key)))
    with op.batch_alter_table("bpm_process_version") as batch_op:
        batch_op.alter_column("start_routes", existing_type=sa.JSON(), nullable=False)


def downgrade() -> None:
    with op.batch_alter_table("bpm_process_version") as batch_op:
        batch_op.drop_column("start_routes")
