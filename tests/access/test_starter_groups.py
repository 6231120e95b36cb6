"""camunda:candidateStarterGroups: who may start a process."""

from __future__ import annotations

import pytest

from engine.bpmn import bundle
from engine.errors import PermissionDenied
from engine.process import deployments, instances
from tests.conftest import FIXTURES


def _deploy_review_for_clerks_only(db, rt, owner):
    xml = (FIXTURES / "review" / "review.bpmn").read_text(encoding="utf-8").replace(
        '<bpmn:process id="review"', '<bpmn:process id="review" camunda:candidateStarterGroups="clerks"')
    the_bundle = bundle.from_paths([FIXTURES / "review"])
    the_bundle.bpmn = {"review.bpmn": xml.encode()}
    with db.transaction() as s:
        (result,) = deployments.deploy(s, rt, the_bundle, actor=owner)
    assert result.version.starter_groups == ["clerks"]


@pytest.mark.sqlite
def test_only_starter_groups_and_supervisors_may_start_the_process(db, rt, people):
    _deploy_review_for_clerks_only(db, rt, people.owner)
    data = {"priority": 50, "due_at": None}
    with db.transaction() as s:
        instances.start(s, rt, process_key="review", business_key="S-1", actor=people.clerk, data=data)
        instances.start(s, rt, process_key="review", business_key="S-2", actor=people.supervisor, data=data)
    with pytest.raises(PermissionDenied), db.transaction() as s:
        instances.start(s, rt, process_key="review", business_key="S-3", actor=people.outsider, data=data)


@pytest.mark.sqlite
def test_without_starter_groups_any_signed_in_user_may_start(db, rt, people, review):
    with db.transaction() as s:
        instances.start(s, rt, process_key="review", business_key="S-4", actor=people.outsider,
                        data={"priority": 50, "due_at": None})
