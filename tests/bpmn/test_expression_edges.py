"""The safe evaluator's limits at their exact edges, and the words of each refusal: what the
mutation run (docs/mutation.md) found the other tests let pass. A process owner reads these
messages at deploy time or in a failed case, so each says what was wrong and by how much."""

from __future__ import annotations

from datetime import date, datetime

import pytest
import simpleeval

from engine.bpmn.expressions import MAX_EXPONENT, MAX_POWER_BITS, SafeEvaluator, json_safe
from engine.errors import ExpressionError

LIMIT = simpleeval.MAX_STRING_LENGTH  # 100,000 characters


@pytest.fixture
def ev():
    return SafeEvaluator(timeout_ms=500)


def refusal(ev, expression, names=None) -> str:
    with pytest.raises(ExpressionError) as refused:
        ev.evaluate(expression, names or {})
    return refused.value.message


def test_an_exponent_may_be_256_and_no_more(ev):
    assert MAX_EXPONENT == 256
    assert ev.evaluate("2 ** 256", {}) == 2 ** 256
    assert ev.evaluate("2 ** -256", {}) == 2 ** -256
    assert refusal(ev, "2 ** 257") == "exponent 257 is larger than 256"
    assert refusal(ev, "2 ** -257") == "exponent -257 is larger than 256"


def test_a_power_may_build_4096_bits_and_no_more(ev):
    assert MAX_POWER_BITS == 4096
    # 65535 has 16 bits: to the 256th it needs at most 4096 bits; 65536 has 17.
    assert ev.evaluate("65535 ** 256", {}) == 65535 ** 256
    assert refusal(ev, "65536 ** 241") == "the result of a power would be larger than 4096 bits"
    assert ev.evaluate("65536 ** 240", {}) == 65536 ** 240


def test_replace_may_grow_a_text_to_the_string_limit_exactly(ev):
    names = {"text": "a" * (LIMIT // 2)}
    assert len(ev.evaluate("text.replace('a', 'aa')", names)) == LIMIT
    longer = {"text": "a" * (LIMIT // 2 + 1)}
    assert refusal(ev, "text.replace('a', 'aa')", longer) == f"replace would build more than {LIMIT} characters"
    # Each hit adds two characters here: a third of the limit is already too many.
    third = {"text": "a" * (LIMIT // 3 + 1)}
    assert refusal(ev, "text.replace('a', 'aaa')", third) == f"replace would build more than {LIMIT} characters"


def test_replace_counts_only_the_hits_it_is_allowed(ev):
    longer = {"text": "a" * (LIMIT // 2 + 1)}
    assert ev.evaluate("text.replace('a', 'aa', 1)", longer) == "aa" + "a" * (LIMIT // 2)
    assert ev.evaluate("text.replace('a', 'aa', 0)", longer) == longer["text"]
    assert len(ev.evaluate("text.replace('a', 'aa', -1)", {"text": "a" * 10})) == 20
    assert refusal(ev, "text.replace('a', 'aa', -1)", longer) == f"replace would build more than {LIMIT} characters"


def test_replace_keeps_its_count_whether_it_grows_the_text_or_not(ev):
    assert ev.evaluate("'aaa'.replace('a', 'b', 1)", {}) == "baa"
    assert ev.evaluate("'aaa'.replace('a', 'bb', 2)", {}) == "bbbba"
    assert ev.evaluate("'aaa'.replace('aa', 'b')", {}) == "ba"


def test_replace_with_something_other_than_text_says_so(ev):
    assert "must be str, not int" in refusal(ev, "'abc'.replace('a', 5)")
    assert "must be str, not int" in refusal(ev, "'abc'.replace(5, 'a')")


def test_sum_adds_numbers_from_a_start(ev):
    assert ev.evaluate("sum([1, 2], 10)", {}) == 13
    assert ev.evaluate("sum([1.5, 2])", {}) == 3.5
    assert refusal(ev, "sum([[1], [2]], [])") == "sum() adds numbers only"


def test_date_reads_text_and_datetimes(ev):
    assert ev.evaluate("date('2025-06-13')", {}) == date(2025, 6, 13)
    assert ev.evaluate("date(when)", {"when": "2025-06-13"}) == date(2025, 6, 13)
    assert ev.evaluate("date(datetime('2025-06-13T23:30:00+08:00'))", {}) == date(2025, 6, 13)
    assert "Invalid isoformat string: '13/06/2025'" in refusal(ev, "date('13/06/2025')")


def test_a_script_is_name_equals_expression_lines_and_an_empty_one_does_nothing(ev):
    assert ev.check_script("") == []
    assert ev.check_script(None) == []  # an empty script element
    assert ev.check_script("a = 1\nb = a + 1") == [("a", "1"), ("b", "a + 1")]
    with pytest.raises(ExpressionError) as refused:
        ev.check_script("a = 1\nprint(a)")
    assert refused.value.message == "line 2: scripts may only assign expressions to names (name = expression)"
    with pytest.raises(ExpressionError) as refused:
        ev.check_script("a = = 1")
    assert refused.value.message == "syntax error on line 1: invalid syntax"


def test_data_that_json_cannot_hold_is_named_by_its_type():
    assert json_safe({"at": datetime(2025, 6, 13, 10), "on": date(2025, 6, 13)}) == \
        {"at": "2025-06-13T10:00:00", "on": "2025-06-13"}
    with pytest.raises(TypeError) as refused:
        json_safe({"x": {1, 2}})
    assert str(refused.value) == "set is not JSON serializable"
