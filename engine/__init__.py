"""The workflow engine core: persistence, execution, assignment, audit.

Dependency rule: nothing under ``engine/`` imports Flask, marshmallow or rq's worker.
The API, the CLI, the pages and the workers are adapters that call these services;
``tests/test_architecture.py`` walks the imports to keep that true.
"""
