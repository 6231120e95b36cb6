"""Deploying bundles: parse, validate, lint, then store immutable process versions."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from SpiffWorkflow.bpmn.specs.event_definitions.message import MessageEventDefinition
from SpiffWorkflow.bpmn.specs.event_definitions.simple import NoneEventDefinition
from SpiffWorkflow.bpmn.specs.event_definitions.timer import TimerEventDefinition
from SpiffWorkflow.bpmn.specs.mixins.events.start_event import StartEvent
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from engine.access.identity import Actor, group_keys
from engine.access.roles import PROCESS_OWNER
from engine.audit import record_system_event
from engine.bpmn import lint as linter
from engine.bpmn.bundle import Bundle
from engine.bpmn.parser import PAYLOAD_FORM, ParsedProcess, camunda_of, parse_files, properties_of
from engine.bpmn.serializer import dump_spec
from engine.errors import (
    DeploymentRejected,
    InvalidInput,
    PermissionDenied,
    Problem,
    ProcessNotFound,
    VersionConflict,
)
from engine.models import Deployment, ProcessVersion
from engine.process.runtime import Runtime


@dataclass(frozen=True)
class DeployedVersion:
    version: ProcessVersion
    created: bool


def check(session: Session | None, rt: Runtime, bundle: Bundle) -> tuple[list[ParsedProcess], list[Problem]]:
    """Everything a deploy checks, storing nothing. ``session`` None skips the checks
    that need the database (do candidate groups exist)."""
    problems = list(bundle.problems)
    if not bundle.bpmn:
        problems.append(Problem(bundle.name or "-", None, None, "the bundle has no .bpmn file"))
        return [], problems
    processes, parse_problems = parse_files(bundle.bpmn)
    problems.extend(parse_problems)
    if processes:
        problems.extend(linter.lint(
            processes, forms=bundle.forms, evaluator=rt.evaluator, services=rt.services,
            allow_scripts=rt.settings.allow_script_tasks,
            known_groups=group_keys(session) if session is not None else None,
            known_policies={p.key for p in rt.policies.active(session)} if session is not None else None,
        ))
    return processes, problems


def warnings(bundle: Bundle) -> list[Problem]:
    """What a deploy reports but accepts: two forms on one path writing one field name
    (:func:`engine.bpmn.lint.form_overlaps`)."""
    processes, _ = parse_files(bundle.bpmn) if bundle.bpmn else ([], [])
    return linter.form_overlaps(processes, bundle.forms) if processes else []


def _forms_used(process: ParsedProcess, forms: dict[str, Any]) -> dict[str, Any]:
    used = {}
    for spec in [process.spec, *process.subprocess_specs.values()]:
        for task_spec in spec.task_specs.values():
            # A user task's form, and the form a message's payload is checked against.
            for key in (camunda_of(task_spec).get("formKey"), properties_of(task_spec).get(PAYLOAD_FORM)):
                if key in forms:
                    used[key] = forms[key]
    return used


def _start_messages(process: ParsedProcess) -> list[str]:
    names = []
    for task_spec in process.spec.task_specs.values():
        definition = getattr(task_spec, "event_definition", None)
        if isinstance(task_spec, StartEvent) and isinstance(definition, MessageEventDefinition):
            names.append(definition.name)
    return names


def start_routes(process: ParsedProcess) -> list[dict[str, Any]]:
    """How the process can be started, one entry per start event of the top-level process:
    ``none`` (started over the API or by hand, ``POST /processes/{key}/instances``),
    ``message`` (by the named message, ``POST /messages``) or ``timer``. Recorded at deploy so
    a start the diagram cannot take is refused by name instead of leaving a case no step
    will ever appear in."""
    routes = []
    for task_spec in process.spec.task_specs.values():
        if not isinstance(task_spec, StartEvent):
            continue
        definition = getattr(task_spec, "event_definition", None)
        route: dict[str, Any] = {"event_id": task_spec.bpmn_id, "name": task_spec.bpmn_name}
        if isinstance(definition, MessageEventDefinition):
            route.update(kind="message", message=definition.name)
        elif isinstance(definition, TimerEventDefinition):
            route.update(kind="timer")
        elif definition is None or isinstance(definition, NoneEventDefinition):
            route.update(kind="none")
        else:
            route.update(kind=type(definition).__name__.removesuffix("EventDefinition").lower())
        routes.append(route)
    return sorted(routes, key=lambda r: (r["kind"], r["event_id"] or ""))


def require_deployer(actor: Actor) -> None:
    """Deploying, and linting a bundle without storing it, are a process owner's: parsing an
    upload (XML, zip) is work the server does only for them. An adapter calls this before it
    reads the upload."""
    if not actor.has_role(PROCESS_OWNER):
        raise PermissionDenied("deploying or checking a bundle needs the process_owner role")


def lint(session: Session, rt: Runtime, bundle: Bundle, *, actor: Actor) -> list[Problem]:
    """``deploy --check``: every problem a deploy would refuse, storing nothing (process owner)."""
    require_deployer(actor)
    return check(session, rt, bundle)[1]


def deploy(session: Session, rt: Runtime, bundle: Bundle, *, actor: Actor, only: str | None = None,
           if_latest: int | None = None, redeployed_from: int | None = None,
           audit: dict[str, Any] | None = None) -> list[DeployedVersion]:
    """Store a new version of each process whose XML or forms changed; all or nothing.

    ``only`` deploys that one process of the bundle (a file may hold several);
    ``if_latest`` refuses (VersionConflict) when that process's latest version is no longer
    the one the caller saw; ``redeployed_from`` marks the new version as that earlier one
    deployed again; ``audit`` adds to each ``process.deployed`` event."""
    require_deployer(actor)
    processes, problems = check(session, rt, bundle)
    if problems:
        raise DeploymentRejected(problems)
    if only is not None:
        processes = [p for p in processes if p.key == only]
    now = rt.now()
    deployment: Deployment | None = None
    results = []
    for process in processes:
        forms = _forms_used(process, bundle.forms)
        # A called process in another file is part of this version's spec: a change to it
        # alone is a new version of the caller (new cases run it; running ones may move).
        # Without calls the digest is what it always was, so unchanged processes stay put.
        called = "".join(f"\n<!-- {name} -->\n{xml}" for name, xml in sorted(process.called_xml.items()))
        digest = hashlib.sha256(
            process.xml.encode() + called.encode() + json.dumps(forms, sort_keys=True).encode()
        ).hexdigest()
        latest = _latest_serialized(session, process.key)
        if if_latest is not None and (latest.version if latest else 0) != if_latest:
            raise VersionConflict(process.key, seen=if_latest, latest=latest)
        if latest is not None and latest.sha256 == digest:
            results.append(DeployedVersion(latest, created=False))
            continue
        if deployment is None:
            deployment = Deployment(name=bundle.name, deployed_by=actor.username, deployed_at=now,
                                    files=sorted([*bundle.bpmn, *(f"forms/{k}.json" for k in bundle.forms)]))
            session.add(deployment)
            session.flush()
        version = ProcessVersion(
            process_key=process.key, version=(latest.version + 1) if latest else 1,
            name=process.name, deployment_id=deployment.id, source_file=process.source_file,
            bpmn_xml=process.xml, spec_json=dump_spec(process.spec, process.subprocess_specs),
            forms=forms, start_messages=_start_messages(process),
            start_routes=start_routes(process), starter_groups=process.starter_groups,
            report_variables=process.report_variables, business_key_format=process.business_key_format,
            sha256=digest, created_at=now, redeployed_from=redeployed_from,
        )
        session.add(version)
        session.flush()
        record_system_event(session, kind="process.deployed", actor=actor.username, at=now,
                            data={"process_key": version.process_key, "version": version.version,
                                  "version_id": version.id, "sha256": digest,
                                  "deployment_id": deployment.id,
                                  **({"redeployed_from": redeployed_from} if redeployed_from else {}),
                                  **(audit or {})})
        results.append(DeployedVersion(version, created=True))
    return results


def _latest_serialized(session: Session, process_key: str) -> ProcessVersion | None:
    """The latest version, read after any deploy of the same process in flight has finished:
    locking the latest row makes a second deployer wait for the first's commit, and the
    fresh read then sees the version it stored, so both never number theirs alike."""
    session.execute(select(ProcessVersion.id).where(ProcessVersion.process_key == process_key)
                    .order_by(ProcessVersion.version.desc()).limit(1).with_for_update())
    return latest_version(session, process_key)


MAX_REASON = 500


def redeploy(session: Session, rt: Runtime, process_key: str, version: int, *, actor: Actor, reason: str,
             if_latest: int | None = None) -> DeployedVersion:
    """Roll back: deploy an earlier version's diagram and forms again as the next version, so
    new cases start on what it did. Checked by the same lint as any deploy (a candidate
    group or service removed since refuses it, with the problems) and audited the same way,
    with the version it came from and the reason. Running cases stay on their versions;
    moving them is a migration. ``if_latest`` is the latest version the owner saw when
    deciding: a deploy since then refuses it."""
    require_deployer(actor)
    reason = (reason or "").strip()
    if not reason:
        raise InvalidInput("a rollback states its reason (it is audited)", field="reason")
    if len(reason) > MAX_REASON:
        raise InvalidInput(f"the reason is longer than {MAX_REASON} characters", field="reason")
    chosen = get_version(session, process_key, version)
    latest = get_latest(session, process_key)
    if chosen.version == latest.version:
        raise VersionConflict(process_key, seen=version, latest=latest,
                              message=f"version {version} is the latest version of {process_key}: "
                                      "new cases already start on it")
    results = deploy(session, rt, _bundle_of(chosen), actor=actor, only=process_key, if_latest=if_latest,
                     redeployed_from=version, audit={"reason": reason})
    return next(r for r in results if r.version.process_key == process_key)


def redeploy_check(session: Session, rt: Runtime, process_key: str, version: int, *,
                   actor: Actor) -> list[Problem]:
    """What would refuse deploying ``version`` again today (a candidate group or a service
    removed since, a rule the lint gained), storing nothing: the rollback page shows it
    before the owner decides."""
    require_deployer(actor)
    chosen = get_version(session, process_key, version)
    return check(session, rt, _bundle_of(chosen))[1]


def _bundle_of(version: ProcessVersion) -> Bundle:
    bundle = Bundle(name=f"{version.process_key} v{version.version} again")
    bundle.bpmn[version.source_file] = version.bpmn_xml.encode("utf-8")
    bundle.forms.update(version.forms or {})
    return bundle


def latest_version(session: Session, process_key: str) -> ProcessVersion | None:
    return session.execute(
        select(ProcessVersion).where(ProcessVersion.process_key == process_key)
        .order_by(ProcessVersion.version.desc()).limit(1)
    ).scalar_one_or_none()


def get_latest(session: Session, process_key: str) -> ProcessVersion:
    version = latest_version(session, process_key)
    if version is None:
        raise ProcessNotFound(f"no process {process_key!r} is deployed")
    return version


def get_version(session: Session, process_key: str, version: int) -> ProcessVersion:
    found = session.execute(select(ProcessVersion).where(
        ProcessVersion.process_key == process_key, ProcessVersion.version == version)).scalar_one_or_none()
    if found is None:
        raise ProcessNotFound(f"process {process_key!r} has no version {version}")
    return found


def get_all(session: Session, *, process_key: str | None = None) -> list[ProcessVersion]:
    query = select(ProcessVersion).order_by(ProcessVersion.process_key, ProcessVersion.version.desc())
    if process_key:
        query = query.where(ProcessVersion.process_key == process_key)
    return list(session.execute(query).scalars())


def latest_versions(session: Session) -> list[ProcessVersion]:
    newest = (select(ProcessVersion.process_key, func.max(ProcessVersion.version).label("v"))
              .group_by(ProcessVersion.process_key).subquery())
    return list(session.execute(
        select(ProcessVersion).join(newest, (ProcessVersion.process_key == newest.c.process_key)
                                    & (ProcessVersion.version == newest.c.v))
        .order_by(ProcessVersion.process_key)
    ).scalars())
