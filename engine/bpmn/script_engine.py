"""SpiffWorkflow's script engine, rebuilt on the safe evaluator.

SpiffWorkflow does not serialize the script engine: a deserialized workflow gets the
library's unrestricted default. :func:`engine.bpmn.serializer.load_workflow` therefore
attaches this engine on every load; nothing else creates workflows.
"""

from __future__ import annotations

from typing import Any

from SpiffWorkflow.bpmn.exceptions import WorkflowTaskException
from SpiffWorkflow.bpmn.script_engine import PythonScriptEngine
from SpiffWorkflow.bpmn.script_engine.python_environment import BasePythonScriptEngineEnvironment

from engine.errors import BpmError, ExpressionError
from engine.expressions import SafeEvaluator, json_safe
from engine.service_tasks import ServiceRegistry


class ScriptsDisabled(BpmError):
    code = "scripts_disabled"


class SafeEnvironment(BasePythonScriptEngineEnvironment):  # type: ignore[misc]
    def __init__(self, evaluator: SafeEvaluator, *, allow_scripts: bool) -> None:
        super().__init__({})
        self.evaluator = evaluator
        self.allow_scripts = allow_scripts

    def evaluate(self, expression: str, context: dict[str, Any],
                 external_context: dict[str, Any] | None = None) -> Any:
        names = dict(context)
        if external_context:
            names.update(external_context)
        return self.evaluator.evaluate(expression, names)

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
        try:
            return self.environment.evaluate(expression, task.data, external_context)
        except ExpressionError as exc:
            raise WorkflowTaskException(
                f"expression {expression!r} failed: {exc.message}", task=task, exception=exc
            ) from exc

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
