"""The case variables the engine writes, and the one rule for everyone else who would.

A data correction, a message's payload and a completed task's form all put values into a
case; none of them may rewrite what the engine set: where a case started by another case's
message came from (``runtime._send_messages``), the client registry's context copied at start
(``instances._with_client_context``: the registry is the truth, and the client and branch are
also the instance row's, which scopes who sees the case and resolves ``branch:`` groups), who
did a step (a diagram's ``completedByVariable``: recusal and separation of duties read it), and
SpiffWorkflow's own key for BPMN data objects.
"""

from __future__ import annotations

from typing import Any

from engine.bpmn.parser import COMPLETED_BY_VARIABLE, properties_of

ENGINE_VARIABLES = frozenset({
    "origin_business_key", "origin_process",
    "client_id", "branch_code", "service_group", "client_class", "vip_tier", "risk_level",
    "client_age_at_start",
    "data_objects",
})


def completed_by_variables(workflow: Any) -> set[str]:
    """Every ``completedByVariable`` a diagram of the workflow (its sub-processes too) names."""
    specs = [workflow.spec, *workflow.subprocess_specs.values()]
    return {name for spec in specs for task_spec in spec.task_specs.values()
            if (name := properties_of(task_spec).get(COMPLETED_BY_VARIABLE))}


def reserved_names(workflow: Any) -> set[str]:
    return set(ENGINE_VARIABLES) | completed_by_variables(workflow)


def changes_engine_value(current: dict[str, Any], name: str, value: Any) -> bool:
    """Whether giving ``name`` the ``value`` would change what the engine set. A name the
    engine has not set (absent, or None: a walk-in complainant has no client yet, a branch-pool
    client no service group) may still be given once; the value already there may be repeated."""
    return current.get(name) is not None and bool(current[name] != value)
