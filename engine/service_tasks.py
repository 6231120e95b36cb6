"""Service tasks call reviewed Python functions by name, never code from a diagram.

A diagram names a function with ``camunda:type="external" camunda:topic="<name>"`` on a
service task. The function receives a copy of the task data and the evaluated parameters
and returns a dict, merged into the task data (or stored under ``camunda:resultVariable``).
An exception from the function marks the instance failed with the error kept.
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

    def register(self, name: str) -> Callable[[ServiceFunction], ServiceFunction]:
        def decorate(function: ServiceFunction) -> ServiceFunction:
            self._functions[name] = function
            return function

        return decorate

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


registry = ServiceRegistry()


@registry.register("noop")
def _noop(data: dict[str, Any], params: dict[str, Any]) -> dict[str, Any]:
    """Does nothing; useful for drawing a placeholder step."""
    return {}


@registry.register("echo")
def _echo(data: dict[str, Any], params: dict[str, Any]) -> dict[str, Any]:
    """Copies its parameters into the task data."""
    return dict(params)


# Domain functions register themselves on import (after ``registry`` exists).
from engine import (  # noqa: E402
    callback_services,  # noqa: F401
    complaint_services,  # noqa: F401
    retention_services,  # noqa: F401
    vip_services,  # noqa: F401
)
