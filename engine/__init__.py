"""The workflow engine: persistence, execution, assignment, SLA clocks, timers, audit.

The dependency rule, read from the bottom up (``tests/test_architecture.py`` walks the
imports and fails on any breach):

1. the foundation, at the top of this folder: ``errors``, ``clock``, ``db``, ``schema``,
   ``config``, ``models``, ``calendars``, ``audit``, ``numbering``, ``migrations``;
2. ``bpmn``: what a diagram says and how its expressions evaluate (no database);
3. ``access``: who may see and do what (identity, roles, scopes, masking, field policy);
4. ``sla``: due dates on business calendars, milestones;
5. ``process``: running instances (the runtime, the unit of work, the projections) and
   the commands on them (instances, tasks, messages, deployments);
6. ``timers``: what wakes the engine up (firing, schedules, the rq queue, notifications);
7. ``brokerage``: the brokerage's own processes and data;
8. ``bootstrap``, the one place a runtime is assembled, and ``jobs``, rq's entry point.

A module imports only from its own level and the levels below it, and no two modules
import each other, directly or round a loop. Nothing below ``brokerage`` knows it exists:
``bootstrap`` installs it. Nothing here imports Flask, marshmallow or rq's worker: the API,
the CLI, the pages and the worker (``api/``, ``worklist_ui/``) are adapters that call these
services.
"""
