"""Drafts: the diagram a process owner edits in the browser before deploying it.

One draft per process, shared by its owners and kept on the server. It starts as the latest
version's XML. Every save names the revision it started from (the pages send it as
``If-Match``); a save from an older revision is refused with who saved last, so two owners
never overwrite each other silently. Checking and deploying a draft go through the same
``deployments.lint`` and ``deployments.deploy`` as the API's upload, with the latest
version's forms, so the same problems refuse it and the same audit event records it.
"""

from __future__ import annotations

import io
import json
import zipfile
from dataclasses import dataclass
from datetime import datetime

from lxml import etree
from sqlalchemy import update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from engine.access.identity import Actor
from engine.audit import record_system_event
from engine.bpmn.bundle import Bundle
from engine.bpmn.parser import MAX_BPMN_BYTES, ParseFailure, parse_xml
from engine.db import rowcount
from engine.errors import DraftConflict, DraftRejected, InvalidInput, Problem
from engine.models import ProcessDraft, ProcessVersion
from engine.process import deployments
from engine.process.catalogue import BPMN, require_owner
from engine.process.runtime import Runtime

CAMUNDA = "http://camunda.org/schema/1.0/bpmn"
# A fixed timestamp for the exported zip's entries, so the same diagram exports the same bytes.
_ZIP_TIME = (2020, 1, 1, 0, 0, 0)


@dataclass(frozen=True)
class Draft:
    process_key: str
    based_on_version: int
    xml: str
    # 0 until the first save: the latest version's XML, not yet a draft of anyone's.
    revision: int
    saved_by: str | None
    saved_at: datetime | None


def get(session: Session, process_key: str, *, actor: Actor) -> Draft:
    require_owner(actor)
    latest = deployments.get_latest(session, process_key)
    row = session.get(ProcessDraft, process_key)
    if row is None:
        return Draft(process_key, latest.version, latest.bpmn_xml, 0, None, None)
    return _of(row)


def _of(row: ProcessDraft) -> Draft:
    return Draft(row.process_key, row.based_on_version, row.bpmn_xml, row.revision, row.saved_by, row.saved_at)


def screen(rt: Runtime, process_key: str, data: bytes) -> list[Problem]:
    """What keeps a draft from being stored at all: too large, not well-formed XML, a DOCTYPE
    (entities, external or expanding), not a BPMN diagram of this process, or code (script
    tasks, scripts in listeners) the engine refuses to run. Anything else a deploy would
    refuse (an unknown form, a bad expression) may be saved and fixed later: Check shows it."""
    filename = f"{process_key}.bpmn"
    if len(data) > MAX_BPMN_BYTES:
        return [Problem(filename, None, None, f"the diagram is larger than {MAX_BPMN_BYTES} bytes")]
    try:
        root = parse_xml(data, filename).getroot()
    except ParseFailure as exc:
        return [exc.problem]
    if root.tag != f"{{{BPMN}}}definitions":
        return [Problem(filename, root.sourceline, None, "not a BPMN 2.0 diagram (bpmn:definitions)")]
    problems = []
    if not any(p.get("id") == process_key for p in root.iter(f"{{{BPMN}}}process")):
        problems.append(Problem(filename, None, None, f"the diagram has no process with id {process_key!r}"))
    if not rt.settings.allow_script_tasks:
        for element in root.iter(f"{{{BPMN}}}scriptTask", f"{{{CAMUNDA}}}script"):
            owner = element if element.get("id") else _nearest_with_id(element)
            problems.append(Problem(filename, element.sourceline, owner.get("id") if owner is not None else None,
                                    "script tasks are not allowed: diagrams may not run code. Ask a developer "
                                    "for a service task function"))
    return problems


def _nearest_with_id(element: etree._Element) -> etree._Element | None:
    for ancestor in element.iterancestors():
        if ancestor.get("id"):
            return ancestor
    return None


def save(session: Session, rt: Runtime, process_key: str, data: bytes, *, if_match: int, actor: Actor,
         now: datetime) -> Draft:
    """Store the draft if ``if_match`` is the stored revision; raises DraftRejected (nothing
    stored) or DraftConflict (someone saved since)."""
    require_owner(actor)
    latest = deployments.get_latest(session, process_key)
    problems = screen(rt, process_key, data)
    if problems:
        raise DraftRejected(problems)
    xml = data.decode("utf-8")
    row = session.get(ProcessDraft, process_key)
    if row is None:
        if if_match != 0:
            raise InvalidInput(f"there is no saved draft of {process_key!r} at revision {if_match}")
        row = ProcessDraft(process_key=process_key, based_on_version=latest.version, bpmn_xml=xml, revision=1,
                           saved_by=actor.username, saved_at=now)
        try:
            # Two first saves at once: the primary key lets one in; the other is a conflict.
            with session.begin_nested():
                session.add(row)
        except IntegrityError:
            raise _conflict(session, process_key) from None
    else:
        # A conditional UPDATE: of two saves from the same revision, one changes the row and
        # the other changes nothing and is told who won.
        changed = rowcount(session.execute(
            update(ProcessDraft).where(ProcessDraft.process_key == process_key, ProcessDraft.revision == if_match)
            .values(bpmn_xml=xml, revision=ProcessDraft.revision + 1, saved_by=actor.username, saved_at=now)
            .execution_options(synchronize_session=False)))
        if changed != 1:
            raise _conflict(session, process_key)
        session.refresh(row)
    record_system_event(session, kind="process.draft_saved", actor=actor.username, at=now,
                        data={"process_key": process_key, "revision": row.revision,
                              "based_on_version": row.based_on_version})
    return _of(row)


def _conflict(session: Session, process_key: str) -> DraftConflict:
    session.expire_all()
    row = session.get(ProcessDraft, process_key)
    assert row is not None  # a conflict means someone saved it
    return DraftConflict(saved_by=row.saved_by, saved_at=row.saved_at, revision=row.revision)


def _bundle(process_key: str, data: bytes, latest: ProcessVersion) -> Bundle:
    """The draft as a deploy reads it: the diagram with the latest version's forms."""
    bundle = Bundle(name=f"{process_key} (draft)")
    bundle.add_file(f"{process_key}.bpmn", data)
    bundle.forms = dict(latest.forms or {})
    return bundle


def check(session: Session, rt: Runtime, process_key: str, data: bytes, *, actor: Actor) -> list[Problem]:
    """Every problem a deploy of this XML would refuse, storing nothing."""
    require_owner(actor)
    latest = deployments.get_latest(session, process_key)
    problems = screen(rt, process_key, data)
    if problems:
        return problems
    return deployments.lint(session, rt, _bundle(process_key, data, latest), actor=actor)


def deploy(session: Session, rt: Runtime, process_key: str, *, if_match: int, actor: Actor,
           now: datetime) -> tuple[deployments.DeployedVersion, Draft]:
    """Deploy the saved draft at revision ``if_match`` as the next version (raises
    DeploymentRejected with the problems, nothing stored). The draft then counts as based on
    the new version."""
    require_owner(actor)
    latest = deployments.get_latest(session, process_key)
    row = session.get(ProcessDraft, process_key, with_for_update=True)
    if row is None:
        raise InvalidInput("save the draft before deploying it")
    if row.revision != if_match:
        raise DraftConflict(saved_by=row.saved_by, saved_at=row.saved_at, revision=row.revision)
    results = deployments.deploy(session, rt, _bundle(process_key, row.bpmn_xml.encode(), latest), actor=actor)
    deployed = next(r for r in results if r.version.process_key == process_key)
    row.based_on_version = deployed.version.version
    row.revision += 1
    row.saved_by, row.saved_at = actor.username, now
    session.flush()
    return deployed, _of(row)


def export(session: Session, process_key: str, *, version: int | None, actor: Actor) -> tuple[str, bytes]:
    """A zip Camunda Modeler opens and ``bpm deploy`` takes: ``<key>.bpmn`` and ``forms/*.json``.
    ``version`` None exports the draft (with the latest version's forms)."""
    require_owner(actor)
    latest = deployments.get_latest(session, process_key)
    if version is None:
        xml = get(session, process_key, actor=actor).xml
        forms, name = latest.forms, f"{process_key}-draft.zip"
    else:
        chosen = deployments.get_version(session, process_key, version)
        xml, forms, name = chosen.bpmn_xml, chosen.forms, f"{process_key}-v{version}.zip"
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr(zipfile.ZipInfo(f"{process_key}.bpmn", _ZIP_TIME), xml.encode("utf-8"))
        for key in sorted(forms or {}):
            body = json.dumps(forms[key], ensure_ascii=False, indent=2).encode("utf-8")
            archive.writestr(zipfile.ZipInfo(f"forms/{key}.json", _ZIP_TIME), body)
    return name, out.getvalue()
