"""What process owners see of their processes: every deployed process with its versions (who
deployed each, when, how many cases run on it) and the ways a case of it starts."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from engine.access.identity import Actor
from engine.access.roles import PROCESS_OWNER
from engine.bpmn.parser import parse_xml
from engine.errors import PermissionDenied
from engine.models import Deployment, InstanceStatus, ProcessInstance, ProcessVersion
from engine.process import deployments

BPMN = "http://www.omg.org/spec/BPMN/20100524/MODEL"


def require_owner(actor: Actor) -> None:
    """The owners' pages (list, drafts, check, deploy, export) are a process owner's or an
    administrator's: a draft is work on the firm's procedures, not a case."""
    if not actor.has_role(PROCESS_OWNER):
        raise PermissionDenied("the process owners' pages need the process_owner role")


@dataclass(frozen=True)
class VersionRow:
    version: int
    name: str | None
    deployed_by: str | None
    deployed_at: datetime
    running: int
    failed: int
    start_messages: list[str]
    # A rollback: the earlier version this one deploys again.
    redeployed_from: int | None = None


@dataclass(frozen=True)
class StartRoute:
    """One start event of the process: ``kind`` none, message or timer; ``detail`` the
    message's name or the timer's text as the diagram writes it."""

    element_id: str
    name: str | None
    kind: str
    detail: str | None = None


@dataclass
class ProcessSummary:
    key: str
    name: str | None
    versions: list[VersionRow] = field(default_factory=list)
    start_routes: list[StartRoute] = field(default_factory=list)

    @property
    def latest(self) -> VersionRow:
        return self.versions[0]

    @property
    def running(self) -> int:
        return sum(v.running for v in self.versions)

    @property
    def failed(self) -> int:
        return sum(v.failed for v in self.versions)


def get_all(session: Session, *, actor: Actor) -> list[ProcessSummary]:
    """Every deployed process, newest version first, with its cases counted per version."""
    require_owner(actor)
    return _summaries(session, None)


def get(session: Session, process_key: str, *, actor: Actor) -> ProcessSummary:
    """One process with its versions and the start routes of its latest version."""
    require_owner(actor)
    found = _summaries(session, process_key)
    if not found:
        deployments.get_latest(session, process_key)  # raises ProcessNotFound
    summary = found[0]
    latest = deployments.get_version(session, process_key, summary.latest.version)
    summary.start_routes = start_routes(latest.bpmn_xml, process_key)
    return summary


def _summaries(session: Session, process_key: str | None) -> list[ProcessSummary]:
    # One grouped count for all versions, not a count per version.
    counts = select(ProcessInstance.process_version_id, ProcessInstance.status, func.count()) \
        .where(ProcessInstance.status.in_((InstanceStatus.RUNNING, InstanceStatus.FAILED))) \
        .group_by(ProcessInstance.process_version_id, ProcessInstance.status)
    if process_key is not None:
        counts = counts.where(ProcessInstance.process_key == process_key)
    by_version: dict[tuple[int, str], int] = {(v, s): n for v, s, n in session.execute(counts)}
    query = select(ProcessVersion, Deployment).join(Deployment, Deployment.id == ProcessVersion.deployment_id) \
        .order_by(ProcessVersion.process_key, ProcessVersion.version.desc())
    if process_key is not None:
        query = query.where(ProcessVersion.process_key == process_key)
    summaries: dict[str, ProcessSummary] = {}
    for version, deployment in session.execute(query):
        summary = summaries.setdefault(version.process_key, ProcessSummary(version.process_key, version.name))
        summary.versions.append(VersionRow(
            version=version.version, name=version.name, deployed_by=deployment.deployed_by,
            deployed_at=version.created_at, running=by_version.get((version.id, InstanceStatus.RUNNING), 0),
            failed=by_version.get((version.id, InstanceStatus.FAILED), 0),
            start_messages=list(version.start_messages or []), redeployed_from=version.redeployed_from))
    return list(summaries.values())


def start_routes(bpmn_xml: str, process_key: str) -> list[StartRoute]:
    """The start events directly in the process (not in its subprocesses), as the deployed
    XML writes them."""
    tree = parse_xml(bpmn_xml.encode(), f"{process_key}.bpmn")
    root = tree.getroot()
    messages = {m.get("id"): m.get("name") or m.get("id") for m in root.iter(f"{{{BPMN}}}message")}
    process = next((p for p in root.iter(f"{{{BPMN}}}process") if p.get("id") == process_key), None)
    if process is None:
        return []
    routes = []
    for event in process.findall(f"{{{BPMN}}}startEvent"):
        message = event.find(f"{{{BPMN}}}messageEventDefinition")
        timer = event.find(f"{{{BPMN}}}timerEventDefinition")
        if message is not None:
            routes.append(StartRoute(event.get("id", ""), event.get("name"), "message",
                                     messages.get(message.get("messageRef"), message.get("messageRef"))))
        elif timer is not None:
            text = next((" ".join((child.text or "").split()) for child in timer
                         if isinstance(child.tag, str)), None)
            routes.append(StartRoute(event.get("id", ""), event.get("name"), "timer", text))
        else:
            routes.append(StartRoute(event.get("id", ""), event.get("name"), "none"))
    return routes

