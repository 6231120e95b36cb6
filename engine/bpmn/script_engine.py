"""SpiffWorkflow's script engine, rebuilt on the safe evaluator.

SpiffWorkflow does not serialize the script engine: a deserialized workflow gets the
library's unrestricted default. :func:`engine.bpmn.serializer.load_workflow` therefore
attaches this engine on every load; nothing else creates workflows.

The engine is shared by every instance a process runs, so the business calendar an
instance's date functions use travels with the workflow instead: the runtime attaches a
:class:`~engine.date_functions.CalendarSnapshot` on every load (:func:`attach_calendar`),
and each evaluation binds the functions to it (:func:`date_functions_for`). SpiffWorkflow
evaluates timers and conditions itself, without a database session; the snapshot is why
it needs none.
"""

from __future__ import annotations

import logging
from typing import Any

from SpiffWorkflow.bpmn.exceptions import WorkflowTaskException
from SpiffWorkflow.bpmn.script_engine import PythonScriptEngine
from SpiffWorkflow.bpmn.script_engine.python_environment import BasePythonScriptEngineEnvironment

from engine.bpmn.date_functions import CalendarSnapshot, DateFunctions
from engine.bpmn.expressions import SafeEvaluator, json_safe
from engine.bpmn.service_tasks import ServiceRegistry
from engine.errors import BpmError, ExpressionError

log = logging.getLogger(__name__)

_CALENDAR_ATTRIBUTE = "bpm_calendar"
# Set (never cleared) in the data of a task whose expression computed with days beyond the
# calendar's known data: the path after it can route on it, and the case shows it.
CALENDAR_INCOMPLETE = "calendar_incomplete"


def attach_calendar(workflow: Any, snapshot: CalendarSnapshot) -> Any:
    """Give a workflow the calendar its expressions compute with (not serialized: attach
    it on every load, like the script engine)."""
    setattr(workflow, _CALENDAR_ATTRIBUTE, snapshot)
    return workflow


def date_functions_for(task: Any) -> DateFunctions | None:
    """Date functions for one evaluation in ``task``'s workflow, or None when the workflow
    has no calendar (then calling one fails with a message saying so)."""
    workflow = getattr(task, "workflow", None)
    top = getattr(workflow, "top_workflow", workflow)  # a sub-process's tasks live in a sub-workflow
    snapshot = getattr(top, _CALENDAR_ATTRIBUTE, None)
    return DateFunctions(snapshot) if snapshot is not None else None


def note_incomplete(task: Any, expression: str, dates: DateFunctions) -> None:
    """An answer computed on guessed days (Monday–Friday open) is flagged, never trusted
    silently: the task's data says so and the log names the days."""
    days = sorted(dates.unknown_days)
    element = getattr(task.task_spec, "bpmn_id", None) or task.task_spec.name
    log.warning("%s: %r used %d day(s) beyond the business calendar's known data (%s to %s), counted as "
                "Monday-Friday open; enter the year's holidays", element, expression, len(days),
                days[0].isoformat(), days[-1].isoformat())
    task.data[CALENDAR_INCOMPLETE] = True


class ScriptsDisabled(BpmError):
    code = "scripts_disabled"


class SafeEnvironment(BasePythonScriptEngineEnvironment):  # type: ignore[misc]
    def __init__(self, evaluator: SafeEvaluator, *, allow_scripts: bool) -> None:
        super().__init__({})
        self.evaluator = evaluator
        self.allow_scripts = allow_scripts

    def evaluate(self, expression: str, context: dict[str, Any],
                 external_context: dict[str, Any] | None = None, *, dates: DateFunctions | None = None) -> Any:
        names = dict(context)
        if external_context:
            names.update(external_context)
        return self.evaluator.evaluate(expression, names, dates=dates)

    def execute(self, script: str, context: dict[str, Any],
                external_context: dict[str, Any] | None = None) -> bool:
        # Deploy refuses script tasks unless allowed; this guards instances of older
        # versions after the setting was turned off.
        if not self.allow_scripts:
            raise ScriptsDisabled("script tasks are disabled (BPM_ALLOW_SCRIPT_TASKS)")
        self.evaluator.run_script(script, context)
        return True


class SafeScriptEngine(PythonScriptEngine):  # type: ignore[misc]
    def __init__(self, evaluator: SafeEvaluator, services: ServiceRegistry, *,
                 allow_scripts: bool = False) -> None:
        super().__init__(environment=SafeEnvironment(evaluator, allow_scripts=allow_scripts))
        self.evaluator = evaluator
        self.services = services

    def validate(self, expression: str) -> None:
        self.evaluator.check(expression)

    def evaluate(self, task: Any, expression: str, external_context: Any = None) -> Any:
        dates = date_functions_for(task)
        try:
            value = self.environment.evaluate(expression, task.data, external_context, dates=dates)
        except ExpressionError as exc:
            raise WorkflowTaskException(
                f"expression {expression!r} failed: {exc.message}", task=task, exception=exc
            ) from exc
        if dates is not None and dates.incomplete:
            note_incomplete(task, expression, dates)
        return value

    def execute(self, task: Any, script: str, external_context: Any = None) -> bool:
        try:
            return bool(self.environment.execute(script, task.data, external_context))
        except BpmError as exc:
            raise WorkflowTaskException(exc.message, task=task, exception=exc) from exc

    def call_service(self, task: Any, **kwargs: Any) -> Any:
        """Run a developer-written function from the registry; its result stays JSON data."""
        name = kwargs["operation_name"]
        params = {k: v["value"] for k, v in (kwargs.get("operation_params") or {}).items()}
        return json_safe(self.services.call(name, dict(task.data), params))
