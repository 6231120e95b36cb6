"""The safe evaluator: the only way diagram text is turned into values.

BPMN is written by process owners, not developers, so SpiffWorkflow's default script engine
(``eval``/``exec`` with full builtins) must never run. Every gateway condition, timer value,
assignment expression, correlation expression and multi-instance expression goes through
:class:`SafeEvaluator`, which is simpleeval with the attack surface cut down further:

* names resolve only to the task's data and a short list of pure functions;
* attribute access is refused except dotted access into dicts (``client.tier``) and a few
  string/dict methods; no dunders, no ``format``, no object graph to climb;
* exponents and sequence sizes are bounded, and a wall-clock budget stops evaluation that
  runs too long (``BPM_EXPRESSION_TIMEOUT_MS``).

Business-calendar functions (``add_trading_days``, ``next_trading_day_at``, …, see
:mod:`engine.date_functions`) are known everywhere but work only when the caller hands
:meth:`SafeEvaluator.evaluate` a :class:`~engine.date_functions.DateFunctions` bound to the
instance's calendar snapshot; the deploy check validates their literal arguments.

Script tasks are refused at deploy unless ``BPM_ALLOW_SCRIPT_TASKS`` is set, and even then a
script may only be a sequence of ``name = expression`` lines evaluated by the same evaluator.
"""

from __future__ import annotations

import ast
import gc
import json
import operator
import re
import time
from collections.abc import Callable, Mapping
from datetime import date, datetime, timedelta
from typing import Any

import simpleeval

from engine.bpmn import date_functions
from engine.bpmn.date_functions import DateFunctions
from engine.errors import ExpressionError

MAX_EXPRESSION_LENGTH = 2000
MAX_EXPONENT = 256
# Bits in the result of ``a ** b``: a bounded exponent alone still lets ``((10**256)**256)**256``
# run for seconds inside one C call, where the time budget cannot stop it.
MAX_POWER_BITS = 4096
# Elements plus characters in any one value, nested containers counted in full.
MAX_VALUE_SIZE = 1_000_000
_SCALARS = frozenset({int, float, bool, type(None)})
_WRAPPED = re.compile(r"^\s*[$#]\{(?P<body>.*)\}\s*$", re.DOTALL)

_SAFE_METHODS: dict[type, frozenset[str]] = {
    str: frozenset(
        {"startswith", "endswith", "lower", "upper", "strip", "lstrip", "rstrip", "split",
         "replace", "isdigit"}
    ),
    dict: frozenset({"get", "keys", "values", "items"}),
    list: frozenset({"count", "index"}),
}


def unwrap(expression: str) -> str:
    """Strip a Camunda-style ``${…}`` wrapper; expressions may be written with or without it."""
    match = _WRAPPED.match(expression)
    return match.group("body").strip() if match else expression.strip()


def _safe_pow(a: Any, b: Any) -> Any:
    if isinstance(b, (int, float)) and abs(b) > MAX_EXPONENT:
        raise ExpressionError(f"exponent {b} is larger than {MAX_EXPONENT}")
    if isinstance(a, int) and isinstance(b, int) and abs(a).bit_length() * abs(b) > MAX_POWER_BITS:
        raise ExpressionError(f"the result of a power would be larger than {MAX_POWER_BITS} bits")
    return operator.pow(a, b)


def _bounded_replace(value: str) -> Callable[..., str]:
    """``str.replace`` whose result stays within simpleeval's string limit (one call of it
    could otherwise build gigabytes: ``('a'*100000).replace('a', 'a'*100000)``)."""
    def replace(old: str, new: str, count: int = -1) -> str:
        if isinstance(old, str) and isinstance(new, str) and len(new) > len(old):
            hits = value.count(old) if count < 0 else min(count, value.count(old))
            if len(value) + hits * (len(new) - len(old)) > simpleeval.MAX_STRING_LENGTH:
                raise ExpressionError(f"replace would build more than {simpleeval.MAX_STRING_LENGTH} characters")
        return value.replace(old, new, count)

    return replace


def _sum(values: Any, start: Any = 0) -> Any:
    """``sum`` of numbers only: ``sum(lists, [])`` concatenates quadratically in one C call."""
    if not isinstance(start, (int, float)):
        raise ExpressionError("sum() adds numbers only")
    return sum(values, start)


def _date(value: Any) -> date:
    if isinstance(value, datetime):
        return value.date()
    return date.fromisoformat(str(value))


def _datetime(value: Any) -> datetime:
    parsed = datetime.fromisoformat(str(value))
    if parsed.tzinfo is None:
        raise ExpressionError(f"datetime {value!r} has no UTC offset")
    return parsed


FUNCTIONS: dict[str, Callable[..., Any]] = {
    "len": len, "min": min, "max": max, "abs": abs, "round": round, "sum": _sum,
    "any": any, "all": all, "sorted": sorted, "int": int, "float": float, "str": str,
    "bool": bool, "date": _date, "datetime": _datetime,
    "days": lambda n: timedelta(days=n), "hours": lambda n: timedelta(hours=n),
    "minutes": lambda n: timedelta(minutes=n),
    **date_functions.UNBOUND,
}


# Added by simpleeval's EvalWithCompoundTypes.
_COMPOUND_FUNCTIONS = frozenset({"list", "tuple", "dict", "set"})


class _Evaluator(simpleeval.EvalWithCompoundTypes):  # type: ignore[misc]
    def __init__(self, names: Mapping[str, Any], deadline: float,
                 functions: dict[str, Callable[..., Any]] = FUNCTIONS) -> None:
        operators = dict(simpleeval.DEFAULT_OPERATORS)
        operators[ast.Pow] = _safe_pow
        super().__init__(operators=operators, functions=functions, names=dict(names))
        self._deadline = deadline

    def _eval(self, node: ast.AST) -> Any:
        if time.thread_time() > self._deadline:
            raise ExpressionError("expression took too long and was stopped")
        return super()._eval(node)

    def _check_disallowed_items(self, item: Any) -> None:
        """simpleeval walks every node's result recursively, without a budget: a list of
        aliases such as ``[[1] * 100000] * 100000`` is cheap to build but 10^10 elements to
        walk (or to print, compare or sort, in one C call the time budget cannot stop).
        Walk with a budget instead, so no value grows beyond :data:`MAX_VALUE_SIZE`."""
        budget = MAX_VALUE_SIZE
        stack = [item]
        while stack:
            value = stack.pop()
            kind = type(value)
            if kind in _SCALARS:
                budget -= 1
            elif kind is str:
                budget -= len(value)
            elif isinstance(value, (list, tuple, set, frozenset, dict)):
                budget -= len(value) + 1
                if budget >= 0:
                    items = value.items() if isinstance(value, dict) else value
                    stack.extend(v for v in items if type(v) not in _SCALARS)
            else:
                budget -= 1
                super()._check_disallowed_items(value)  # modules, forbidden functions
            if budget < 0:
                raise ExpressionError(f"a value is larger than {MAX_VALUE_SIZE} elements and characters")

    def _eval_attribute(self, node: ast.Attribute) -> Any:
        if node.attr.startswith("_"):
            raise ExpressionError(f"access to {node.attr!r} is not allowed")
        value = self._eval(node.value)
        if isinstance(value, dict) and node.attr in value:
            return value[node.attr]
        allowed = _SAFE_METHODS.get(type(value), frozenset())
        if isinstance(value, str) and node.attr == "replace":
            return _bounded_replace(value)
        if node.attr in allowed:
            return getattr(value, node.attr)
        raise ExpressionError(
            f"attribute {node.attr!r} is not available on {type(value).__name__}"
        )

    def _eval_name(self, node: ast.Name) -> Any:
        try:
            return super()._eval_name(node)
        except simpleeval.NameNotDefined:
            raise ExpressionError(f"name {node.id!r} is not defined") from None


class SafeEvaluator:
    def __init__(self, *, timeout_ms: int = 100) -> None:
        self.timeout = timeout_ms / 1000.0

    def check(self, expression: str) -> None:
        """Parse-only check used by the deploy linter: syntax, forbidden constructs, unknown
        functions, and the literal arguments of the date functions."""
        self._parse(expression)

    def _parse(self, expression: str) -> ast.Expression:
        body = unwrap(expression)
        if len(body) > MAX_EXPRESSION_LENGTH:
            raise ExpressionError(f"expression is longer than {MAX_EXPRESSION_LENGTH} characters")
        try:
            tree = ast.parse(body, mode="eval")
        except SyntaxError as exc:
            raise ExpressionError(f"syntax error in {body!r}: {exc.msg}") from None
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and node.attr.startswith("_"):
                raise ExpressionError(f"access to {node.attr!r} is not allowed")
            if isinstance(node, ast.Name) and node.id.startswith("__"):
                raise ExpressionError(f"name {node.id!r} is not allowed")
            if isinstance(node, (ast.Lambda, ast.NamedExpr, ast.Await, ast.Yield, ast.YieldFrom)):
                raise ExpressionError(f"{type(node).__name__} is not allowed in expressions")
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
                    and node.func.id not in FUNCTIONS and node.func.id not in _COMPOUND_FUNCTIONS):
                raise ExpressionError(f"function {node.func.id!r} is not available in expressions")
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
                    and node.func.id in date_functions.NAMES):
                date_functions.check_call(node)
        return tree

    def evaluate(self, expression: str, names: Mapping[str, Any], *, dates: DateFunctions | None = None) -> Any:
        """The expression's value. ``dates``: the date functions bound to the instance's
        calendar snapshot; without them a call to one fails with a message saying why."""
        tree = self._parse(expression)
        functions = FUNCTIONS
        if dates is not None and date_functions.calls(tree):
            # Resolved before the budget starts: reading a new calendar revision is I/O done
            # once per revision and process, not work of this expression.
            dates.prepare()
            functions = {**FUNCTIONS, **dates.bound()}
        # The budget is this thread's CPU time, not the wall clock: a runaway expression
        # burns CPU, while a busy machine (or a pause in another thread) must not stop a
        # trivial condition halfway through a step. The garbage collector is held off for
        # the evaluation too: a full collection in a large process takes longer than the
        # budget and would be charged to whichever condition it interrupted. Sizes are
        # bounded, so an expression cannot build enough garbage to need it.
        collecting = gc.isenabled()
        gc.disable()
        evaluator = _Evaluator(names, time.thread_time() + self.timeout, functions)
        try:
            return evaluator.eval(unwrap(expression))
        except ExpressionError:
            raise
        except simpleeval.InvalidExpression as exc:
            raise ExpressionError(f"{unwrap(expression)!r}: {exc}") from None
        except (TypeError, ValueError, KeyError, IndexError, ZeroDivisionError, OverflowError,
                AttributeError) as exc:
            raise ExpressionError(f"{unwrap(expression)!r}: {type(exc).__name__}: {exc}") from None
        finally:
            if collecting:
                gc.enable()

    # -- restricted scripts (only when BPM_ALLOW_SCRIPT_TASKS is on) ----------------------
    def check_script(self, script: str) -> list[tuple[str, str]]:
        """A script is a list of ``name = expression`` lines; anything else is refused."""
        try:
            tree = ast.parse(script or "", mode="exec")
        except SyntaxError as exc:
            raise ExpressionError(f"syntax error on line {exc.lineno}: {exc.msg}") from None
        assignments = []
        for stmt in tree.body:
            if not (
                isinstance(stmt, ast.Assign)
                and len(stmt.targets) == 1
                and isinstance(stmt.targets[0], ast.Name)
                and not stmt.targets[0].id.startswith("_")
            ):
                raise ExpressionError(
                    f"line {stmt.lineno}: scripts may only assign expressions to names "
                    "(name = expression)"
                )
            source = ast.get_source_segment(script, stmt.value) or ""
            self.check(source)
            assignments.append((stmt.targets[0].id, source))
        return assignments

    def run_script(self, script: str, data: dict[str, Any]) -> None:
        for name, source in self.check_script(script):
            data[name] = self.evaluate(source, data)


def json_safe(value: Any) -> Any:
    """Round-trip through JSON so task data stays serializable (datetimes become text)."""
    return json.loads(json.dumps(value, default=_json_default))


def _json_default(value: Any) -> Any:
    if isinstance(value, (datetime, date)):
        return value.isoformat()
    if isinstance(value, timedelta):
        return value.total_seconds()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")
