from datetime import UTC, datetime, timedelta

import pytest

from engine.process import instances, tasks


@pytest.mark.sqlite
def test_review_runs_to_the_manager_for_a_large_amount(db, rt, people, review):
    due = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)
    with db.transaction() as s:
        inst = instances.start(s, rt, process_key=review, business_key="R-1", actor=people.clerk,
                               data={"priority": 70, "due_at": due.isoformat()})
    with db.transaction() as s:
        mine, total = tasks.inbox(s, actor=people.clerk, query=tasks.InboxQuery(candidate_me=True), now=rt.now())
        assert total == 1 and mine[0].element_id == "register"
        assert mine[0].due_at == due and mine[0].priority == 70
        tasks.complete(s, rt, task_id=mine[0].id, actor=people.clerk, data={"amount": 60000, "summary": "大额"})
    with db.transaction() as s:
        theirs, _ = tasks.inbox(s, actor=people.manager, query=tasks.InboxQuery(), now=rt.now())
        assert [t.element_id for t in theirs] == ["approve_big"]
        nothing, _ = tasks.inbox(s, actor=people.clerk, query=tasks.InboxQuery(candidate_me=True), now=rt.now())
        assert nothing == []
        assert instances.get(s, inst.id, actor=people.clerk).status == "running"
        assert due - timedelta(days=1) < due
