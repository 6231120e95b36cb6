"""What every PostgreSQL session of the product is set to (engine/db.py): each statement is
planned for its own values, and none is JIT-compiled (docs/scale.md measured both)."""

from __future__ import annotations


def test_a_postgresql_session_plans_each_statement_for_its_values_and_never_jit_compiles(db):
    with db.engine.connect() as conn:
        assert conn.exec_driver_sql("SHOW plan_cache_mode").scalar() == "force_custom_plan"
        assert conn.exec_driver_sql("SHOW jit").scalar() == "off"
