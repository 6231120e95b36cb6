"""Service tasks call reviewed Python functions by name, never code from a diagram.

A diagram names a function with ``camunda:type="external" camunda:topic="<name>"`` on a
service task. The function receives a copy of the task data and the evaluated parameters
and returns a dict, merged into the task data (or stored under ``camunda:resultVariable``).
An exception from the function marks the instance failed with the error kept.

This module is the registry only. The functions are registered explicitly when the runtime
is built (:func:`engine.bootstrap.build_runtime`): the brokerage's by
``engine.brokerage.install``, a deployment's own by the modules ``BPM_SERVICE_MODULES`` names.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from engine.errors import BpmError

ServiceFunction = Callable[[dict[str, Any], dict[str, Any]], dict[str, Any] | None]


class UnknownService(BpmError):
    code = "service_unknown"


class ServiceRegistry:
    def __init__(self) -> None:
        self._functions: dict[str, ServiceFunction] = {}

    @classmethod
    def with_builtins(cls) -> ServiceRegistry:
        """A registry holding the engine's own functions (``noop``, ``echo``)."""
        registry = cls()
        registry.include(BUILTINS)
        return registry

    def register(self, name: str) -> Callable[[ServiceFunction], ServiceFunction]:
        """Decorator: ``@functions.register("complaint_classify")``."""
        def decorate(function: ServiceFunction) -> ServiceFunction:
            self._functions[name] = function
            return function

        return decorate

    def include(self, other: ServiceRegistry) -> None:
        """Register every function of ``other`` (a module's own registry) here as well."""
        self._functions.update(other._functions)

    def __contains__(self, name: object) -> bool:
        return name in self._functions

    def names(self) -> list[str]:
        return sorted(self._functions)

    def call(self, name: str, data: dict[str, Any], params: dict[str, Any]) -> dict[str, Any]:
        try:
            function = self._functions[name]
        except KeyError:
            raise UnknownService(f"no service task function named {name!r}") from None
        return function(data, params) or {}


BUILTINS = ServiceRegistry()


@BUILTINS.register("noop")
def _noop(data: dict[str, Any], params: dict[str, Any]) -> dict[str, Any]:
    """Does nothing; useful for drawing a placeholder step."""
    return {}


@BUILTINS.register("echo")
def _echo(data: dict[str, Any], params: dict[str, Any]) -> dict[str, Any]:
    """Copies its parameters into the task data."""
    return dict(params)
