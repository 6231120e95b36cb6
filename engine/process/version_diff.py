"""Comparing a draft, or any version, with the deployed one (process owners): the elements
added, removed and changed, in words (:mod:`engine.bpmn.diff`), with the SLA policies that
would time each user task before and after."""

from __future__ import annotations

from sqlalchemy.orm import Session

from engine.access.identity import Actor
from engine.bpmn.diff import PolicyLookup, VersionDiff, compare
from engine.errors import DraftRejected
from engine.process import deployments, drafts
from engine.process.catalogue import require_owner
from engine.process.runtime import Runtime


def policy_lookup(session: Session, rt: Runtime, process_key: str) -> PolicyLookup:
    """The active SLA policies that could time a step of this process, by what the diagram
    decides (process, step id, lane), in the order they are tried. Policies that also match
    on the case's data or the task's priority are named too: which one wins depends on the
    case."""
    policies = rt.policies.active(session)

    def lookup(element_id: str, lane: str | None, named: str | None) -> list[str]:
        if named and any(p.active and p.key == named for p in policies):
            return [named]  # the step's own choice (engine.sla.clock.first_match)
        return [p.key for p in policies if p.active
                and p.process_key in (None, process_key)
                and p.element_id in (None, element_id)
                and p.lane in (None, lane)]
    return lookup


def diff(session: Session, rt: Runtime, process_key: str, *, actor: Actor, version: int | None = None,
         draft_xml: bytes | None = None, against: int | None = None) -> tuple[int, str, VersionDiff]:
    """Compare ``draft_xml`` (the canvas, unsaved), or ``version``, or else the stored draft,
    with version ``against`` (the latest deployed one by default). Returns the version
    compared against, what was compared ("draft" or "version N") and the differences."""
    require_owner(actor)
    base = deployments.get_version(session, process_key, against) if against is not None \
        else deployments.get_latest(session, process_key)
    if draft_xml is not None:
        problems = drafts.screen(rt, process_key, draft_xml)
        if problems:
            raise DraftRejected(problems)
        # The canvas goes with the draft's forms (as edited in the form editor).
        after, after_forms, label = draft_xml, drafts.get(session, process_key, actor=actor).forms, "draft"
    elif version is not None:
        chosen = deployments.get_version(session, process_key, version)
        after, after_forms, label = chosen.bpmn_xml.encode(), chosen.forms, f"version {version}"
    else:
        stored = drafts.get(session, process_key, actor=actor)
        after, after_forms, label = stored.xml.encode(), stored.forms, "draft"
    found = compare(process_key, base.bpmn_xml, after, before_forms=base.forms or {},
                    after_forms=after_forms or {}, policies=policy_lookup(session, rt, process_key))
    return base.version, label, found
