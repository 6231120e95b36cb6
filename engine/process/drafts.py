"""Drafts: the diagram a process owner edits in the browser before deploying it.

One draft per process, shared by its owners and kept on the server. It starts as the latest
version's XML. Every save names the revision it started from (the pages send it as
``If-Match``); a save from an older revision is refused with who saved last, so two owners
never overwrite each other silently. Checking and deploying a draft go through the same
``deployments.lint`` and ``deployments.deploy`` as the API's upload, with the draft's
forms (the latest version's until an owner saves or imports one), so the same problems
refuse it and the same audit event records it. A form saved or a bundle imported is a new
revision of the same draft, under the same conflict rule.
"""

from __future__ import annotations

import io
import json
import re
import zipfile
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from lxml import etree
from sqlalchemy import update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from engine.access.identity import Actor
from engine.audit import record_system_event
from engine.bpmn.bundle import UNREADABLE_ZIP, Bundle, from_zip
from engine.bpmn.forms import condition_problems, shape_problems, unchecked_formats
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
    # The forms a deploy of the draft takes: its own once an owner saved or imported one,
    # else the based-on version's.
    forms: dict[str, Any]


def get(session: Session, process_key: str, *, actor: Actor) -> Draft:
    require_owner(actor)
    latest = deployments.get_latest(session, process_key)
    row = session.get(ProcessDraft, process_key)
    if row is None:
        return Draft(process_key, latest.version, latest.bpmn_xml, 0, None, None, dict(latest.forms or {}))
    return _of(row, latest)


def _of(row: ProcessDraft, latest: ProcessVersion) -> Draft:
    forms = row.forms if row.forms is not None else (latest.forms or {})
    return Draft(row.process_key, row.based_on_version, row.bpmn_xml, row.revision, row.saved_by, row.saved_at,
                 dict(forms))


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
    return _store(session, process_key, latest, {"bpmn_xml": data.decode("utf-8")}, if_match=if_match,
                  actor=actor, now=now, kind="process.draft_saved")


def _store(session: Session, process_key: str, latest: ProcessVersion, values: dict[str, Any], *, if_match: int,
           actor: Actor, now: datetime, kind: str, audit: dict[str, Any] | None = None) -> Draft:
    """Write ``values`` (the diagram, the forms or both) into the draft at revision
    ``if_match``, making the next revision; a first save starts from the latest version."""
    row = session.get(ProcessDraft, process_key)
    if row is None:
        if if_match != 0:
            raise InvalidInput(f"there is no saved draft of {process_key!r} at revision {if_match}")
        row = ProcessDraft(process_key=process_key, based_on_version=latest.version, bpmn_xml=latest.bpmn_xml,
                           revision=1, saved_by=actor.username, saved_at=now, forms=None)
        for name, value in values.items():
            setattr(row, name, value)
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
            .values(**values, revision=ProcessDraft.revision + 1, saved_by=actor.username, saved_at=now)
            .execution_options(synchronize_session=False)))
        if changed != 1:
            raise _conflict(session, process_key)
        session.refresh(row)
    record_system_event(session, kind=kind, actor=actor.username, at=now,
                        data={"process_key": process_key, "revision": row.revision,
                              "based_on_version": row.based_on_version, **(audit or {})})
    return _of(row, latest)


FORM_KEY = re.compile(r"^[a-z][a-z0-9_]{0,63}$")


def form_problems(form_key: str, data: bytes) -> tuple[Any, list[Problem]]:
    """A form as a deploy reads ``forms/<key>.json`` (JSON, storable, a valid JSON Schema),
    with the lint's own findings on it (formats nobody checks, conditional rules naming
    fields the form lacks): (the schema or None, the problems)."""
    filename = f"forms/{form_key}.json"
    if not FORM_KEY.match(form_key):
        return None, [Problem(filename, None, None, "a form key is lower-case letters, digits and underscores, "
                                                   "starting with a letter, at most 64 characters")]
    if len(data) > MAX_FORM_BYTES:
        return None, [Problem(filename, None, None, f"the form is larger than {MAX_FORM_BYTES} bytes")]
    bundle = Bundle(name=filename)
    bundle.add_file(filename, data)
    if bundle.problems:
        return None, bundle.problems
    schema = bundle.forms[form_key]
    problems = [Problem(filename, None, None, f"format(s) {', '.join(unchecked)} cannot be checked (any text "
                                              "would pass): use date-time, date, email, … or a pattern")
                for unchecked in [unchecked_formats(schema)] if unchecked]
    problems += [Problem(filename, None, None, message)
                 for message in shape_problems(schema) + condition_problems(schema)]
    return schema, problems


MAX_FORM_BYTES = 1024 * 1024


def save_form(session: Session, process_key: str, form_key: str, data: bytes, *, if_match: int, actor: Actor,
              now: datetime) -> tuple[Draft, list[Problem]]:
    """Store one form (new or changed) in the draft at revision ``if_match``. Refused with
    nothing stored (DraftRejected) when it is not JSON or not a JSON Schema; what the deploy
    lint would still refuse (an unchecked format, a condition on a missing field) is stored
    and returned, as a draft diagram may hold problems until it is deployed."""
    require_owner(actor)
    latest = deployments.get_latest(session, process_key)
    schema, problems = form_problems(form_key, data)
    if schema is None:
        raise DraftRejected(problems)
    forms = get(session, process_key, actor=actor).forms
    added = form_key not in forms
    forms[form_key] = schema
    draft = _store(session, process_key, latest, {"forms": forms}, if_match=if_match, actor=actor, now=now,
                   kind="process.draft_form_saved", audit={"form_key": form_key, "added": added})
    return draft, problems


def _conflict(session: Session, process_key: str) -> DraftConflict:
    session.expire_all()
    row = session.get(ProcessDraft, process_key)
    assert row is not None  # a conflict means someone saved it
    return DraftConflict(saved_by=row.saved_by, saved_at=row.saved_at, revision=row.revision)


def _bundle(process_key: str, data: bytes, forms: dict[str, Any]) -> Bundle:
    """The draft as a deploy reads it: the diagram with the draft's forms."""
    bundle = Bundle(name=f"{process_key} (draft)")
    bundle.add_file(f"{process_key}.bpmn", data)
    bundle.forms = dict(forms)
    return bundle


def check(session: Session, rt: Runtime, process_key: str, data: bytes, *, actor: Actor) -> list[Problem]:
    """Every problem a deploy of this XML would refuse, storing nothing."""
    require_owner(actor)
    forms = get(session, process_key, actor=actor).forms
    problems = screen(rt, process_key, data)
    if problems:
        return problems
    return deployments.lint(session, rt, _bundle(process_key, data, forms), actor=actor)


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
    forms = _of(row, latest).forms
    results = deployments.deploy(session, rt, _bundle(process_key, row.bpmn_xml.encode(), forms), actor=actor)
    deployed = next(r for r in results if r.version.process_key == process_key)
    row.based_on_version = deployed.version.version
    row.revision += 1
    row.saved_by, row.saved_at = actor.username, now
    session.flush()
    return deployed, _of(row, latest)


def export(session: Session, process_key: str, *, version: int | None, actor: Actor) -> tuple[str, bytes]:
    """A zip Camunda Modeler opens and ``bpm deploy`` takes: ``<key>.bpmn`` and ``forms/*.json``.
    ``version`` None exports the draft with its forms."""
    require_owner(actor)
    if version is None:
        draft = get(session, process_key, actor=actor)
        xml, forms, name = draft.xml, draft.forms, f"{process_key}-draft.zip"
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


MAX_IMPORT_BYTES = 10 * 1024 * 1024  # the zip as uploaded; what it unpacks to is bounded by the bundle reader


def import_bundle(session: Session, rt: Runtime, process_key: str, data: bytes, *, filename: str, if_match: int,
                  actor: Actor, now: datetime) -> tuple[Draft, list[str]]:
    """Replace the draft's diagram with the one in a zip (as exported here and edited in
    Camunda Modeler) and take its ``forms/*.json``; forms the zip does not carry stay.
    Refused with every reason and nothing stored (DraftRejected) for an upload that is not a
    zip, a zip bomb or too many files, a path leaving the archive, no diagram of this process
    or another diagram beside it, a diagram the draft screen refuses (too large, not
    well-formed, a DOCTYPE, not BPMN, a script), a Camunda Forms file, or a form that is not
    a JSON Schema. Answers the draft and the keys of the forms it took."""
    require_owner(actor)
    latest = deployments.get_latest(session, process_key)
    if len(data) > MAX_IMPORT_BYTES:
        raise DraftRejected([Problem(filename, None, None, f"the zip is larger than {MAX_IMPORT_BYTES} bytes")])
    bundle = from_zip(data, filename)
    problems = list(bundle.problems)
    problems += [Problem(name, None, None, "Camunda Forms (.form) are not this engine's forms: a step's form is a "
                                           "JSON Schema in forms/<key>.json")
                 for name in _zip_names(data) if name.endswith(".form")]
    diagram: bytes | None = None
    if not bundle.problems:
        if not bundle.bpmn:
            problems.append(Problem(filename, None, None, "the zip has no .bpmn diagram"))
        for name, xml in sorted(bundle.bpmn.items()):
            found = screen(rt, process_key, xml)
            if any("no process with id" in p.message for p in found) and len(bundle.bpmn) > 1:
                problems.append(Problem(name, None, None, f"another diagram beside {process_key}'s: a draft is one "
                                                          "process; import its diagram with its own process"))
                continue
            problems += [Problem(name, p.line, p.element_id, p.message) for p in found]
            if not found:
                diagram = xml
    if problems or diagram is None:
        raise DraftRejected(problems or [Problem(filename, None, None, f"no diagram of {process_key!r}")])
    forms = get(session, process_key, actor=actor).forms
    forms.update(bundle.forms)
    draft = _store(session, process_key, latest, {"bpmn_xml": diagram.decode("utf-8"), "forms": forms},
                   if_match=if_match, actor=actor, now=now, kind="process.draft_imported",
                   audit={"file": filename, "forms": sorted(bundle.forms)})
    return draft, sorted(bundle.forms)


def _zip_names(data: bytes) -> list[str]:
    try:
        return zipfile.ZipFile(io.BytesIO(data)).namelist()
    except UNREADABLE_ZIP:
        return []
