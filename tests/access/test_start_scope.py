"""Starting a case for a client needs the client registry's scope (docs/domain.md#client-visibility)
or a role that starts cases for any client on the firm's behalf (the call centre, HQ desks,
outside systems); and the registry's values are the case's, not the start data's."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from engine.access import identity
from engine.access.identity import Actor
from engine.access.roles import INTEGRATION
from engine.errors import ClientNotFound, DataInvalid
from engine.models import ProcessInstance
from engine.process import instances, messages
from tests.support.bpmn import row_counts

pytestmark = pytest.mark.sqlite

CALLBACK = {"callback_type": "periodic"}


def _actor(db, username: str) -> Actor:
    with db.transaction() as s:
        return identity.actor_for(s, identity.get_user(s, username))


def _start(db, rt, who: Actor, client_id: str, **data) -> ProcessInstance:
    with db.transaction() as s:
        return instances.start(s, rt, process_key="callback", business_key=None, actor=who,
                               data={**CALLBACK, "client_id": client_id, **data})


@pytest.mark.parametrize("client_id", ["C01", "C0404"])  # an HZ01 client; no client at all
def test_a_counter_clerk_starts_nothing_for_a_client_outside_their_branch_and_learns_nothing(db, rt, demo_loaded,
                                                                                          client_id):
    clerk = _actor(db, "s302")  # 邵琳, SX01 counter
    before = row_counts(db)
    with pytest.raises(ClientNotFound) as by_hand, db.transaction() as s:
        instances.start(s, rt, process_key="callback", business_key=None, actor=clerk,
                        data={**CALLBACK, "client_id": client_id})
    with pytest.raises(ClientNotFound) as by_message, db.transaction() as s:
        messages.correlate(s, rt, name="account_opened", correlation_key=None, actor=clerk,
                           payload={"client_id": client_id, "opened_at": "2026-03-02"})
    # The same answer whether the client exists or not; nothing was started or numbered.
    assert str(by_hand.value) == str(by_message.value) == f"no client {client_id!r}"
    assert row_counts(db) == before


def test_the_clerk_starts_cases_for_their_own_branchs_clients(db, rt, demo_loaded):
    case = _start(db, rt, _actor(db, "s302"), "C05")  # an SX01 client
    assert (case.client_id, case.branch_code) == ("C05", "SX01")


@pytest.mark.parametrize("username", ["s003", "s007", "s001"])  # call centre, HQ complaints, HQ brokerage mgmt
def test_headquarters_desks_start_cases_for_any_client(db, rt, demo_loaded, username):
    case = _start(db, rt, _actor(db, username), "C01")
    assert (case.client_id, case.branch_code) == ("C01", "HZ01")


def test_an_outside_system_starts_cases_for_any_client_registered_or_not(db, rt, demo_loaded):
    account_system = Actor(username="account_system", groups=frozenset({INTEGRATION}))
    with db.transaction() as s:
        opened = messages.correlate(s, rt, name="account_opened", correlation_key=None, actor=account_system,
                                    payload={"client_id": "C0404", "branch_code": "HZ01", "opened_at": "2026-03-02"})
    assert (opened.client_id, opened.branch_code, opened.status) == ("C0404", "HZ01", "running")


@pytest.mark.parametrize(("given", "field"), [
    ({"service_group": "HZ01-G2"}, "data/service_group"),
    ({"branch_code": "SX01"}, "data/branch_code"),
    ({"vip_tier": "silver", "risk_level": "C1", "client_class": "G"}, None),
    ({"service_group": None}, "data/service_group"),  # the registry gives C01 a group
])
def test_start_data_cannot_override_the_client_registry(db, rt, demo_loaded, given, field):
    agent = _actor(db, "s003")
    before = row_counts(db)
    with pytest.raises(DataInvalid) as refused, db.transaction() as s:
        instances.start(s, rt, process_key="callback", business_key=None, actor=agent,
                        data={**CALLBACK, "client_id": "C01", **given})
    fields = [e.field for e in refused.value.errors]
    assert fields == ([field] if field else sorted(f"data/{k}" for k in given))
    assert row_counts(db) == before


def test_the_branch_given_beside_the_data_is_the_clients_or_refused(db, rt, demo_loaded):
    agent = _actor(db, "s003")
    with pytest.raises(DataInvalid) as refused, db.transaction() as s:
        instances.start(s, rt, process_key="callback", business_key=None, actor=agent, client_id="C01",
                        branch_code="NB01", data=CALLBACK)
    assert [e.field for e in refused.value.errors] == ["branch_code"]
    with db.transaction() as s:
        case = instances.start(s, rt, process_key="callback", business_key=None, actor=agent, client_id="C01",
                               branch_code="HZ01", data={**CALLBACK, "service_group": "HZ01-G1"})
    assert (case.client_id, case.branch_code) == ("C01", "HZ01")


def test_the_registrys_values_are_the_cases(db, rt, demo_loaded):
    case = _start(db, rt, _actor(db, "s003"), "C01", service_group="HZ01-G1")
    with db.transaction() as s:
        data = instances.data_of(s, rt, s.get(ProcessInstance, case.id))
        row = s.execute(select(ProcessInstance).where(ProcessInstance.id == case.id)).scalar_one()
    assert {k: data[k] for k in ("client_id", "branch_code", "service_group", "vip_tier", "risk_level")} == {
        "client_id": "C01", "branch_code": "HZ01", "service_group": "HZ01-G1", "vip_tier": "diamond",
        "risk_level": "C4"}
    assert (row.client_id, row.branch_code) == ("C01", "HZ01")
