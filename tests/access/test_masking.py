"""Masking of client identifiers (docs/domain.md#masking) by name and by value, at any depth,
for every reader, wherever case data leaves the engine: a case's variables and facts, its
history, a failed case's error, and the messages of a refused form. Ordinary values (dates,
times, amounts, case numbers, task ids) come out as they went in."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import select, update

from engine.access import field_policy
from engine.access.field_policy import FieldPolicy
from engine.access.masking import mask_account, mask_echo, mask_identifiers, mask_phone, mask_text, masker_for
from engine.errors import FormValidationError
from engine.models import ProcessInstance, Task
from engine.process import instances, messages, tasks

PHONE, PHONE_MASKED = "13761547720", "137****7720"
BACKUP_PHONES = ["13900000421", "13800000422"]
ID_NUMBER, ID_MASKED = "330105195801200548", "3301**********0548"  # the demo's C02
ID_VALID_CHECK_DIGIT = "11010519491231002X"  # GB 11643's example: the check character is right
BANK_CARD = "6222020200001234567"
FUND_ACCOUNT = "100210015521"


# -- by name ----------------------------------------------------------------------------------
# Values too short or too odd to be recognised by their look: only the name can tell.
PHONE_LIKE, ID_LIKE, ACCOUNT_LIKE = ("8765-43", "*******"), ("3301-0619", "3301*0619"), ("15521", "**** 5521")


@pytest.mark.parametrize(("name", "value", "shown"), [
    ("phone_number", *PHONE_LIKE), ("mobile_no", *PHONE_LIKE), ("contact_tel", *PHONE_LIKE),
    ("complainant_mobile", *PHONE_LIKE), ("complainant_phone", *PHONE_LIKE), ("phone_masked", *PHONE_LIKE),
    ("idNumber", *ID_LIKE), ("id_card", *ID_LIKE), ("id_no", *ID_LIKE), ("cert_no", *ID_LIKE),
    ("relative_id_number", *ID_LIKE), ("IDNumber", *ID_LIKE),
    ("bank_card", *ACCOUNT_LIKE), ("bank_account", *ACCOUNT_LIKE), ("fund_account", *ACCOUNT_LIKE),
    ("accountNumber", *ACCOUNT_LIKE), ("refund_account_no", *ACCOUNT_LIKE), ("refund_account_number", *ACCOUNT_LIKE),
])
def test_a_value_under_an_identifiers_name_is_masked_whatever_the_naming_style(name, value, shown):
    assert mask_identifiers({name: value}) == {name: shown}


def test_a_number_under_an_identifiers_name_is_masked_as_text():
    # Numbers too short to be recognised by their look: only the name can tell.
    assert mask_identifiers({"complainant_phone": 87654321, "fund_account": 15521, "id_no": 3301061973.0}) == {
        "complainant_phone": "876*4321", "fund_account": "**** 5521", "id_no": "3301**1973"}


def test_every_string_of_a_list_under_an_identifiers_name_is_masked():
    assert mask_identifiers({"backup_phone": BACKUP_PHONES}) == {"backup_phone": ["139****0421", "138****0422"]}
    assert mask_identifiers({"backup_phone": ["n/a"]}) == {"backup_phone": ["***"]}  # by the name, not the look


def test_an_account_of_four_characters_or_fewer_is_hidden_whole():
    assert (mask_account("5521"), mask_account("521"), mask_account("15521")) == ("****", "****", "**** 5521")


def test_a_trailing_masked_word_is_ignored_however_long_the_name():
    assert masker_for("complainant_phone_masked") is mask_phone
    assert masker_for("complainantPhoneMasked") is mask_phone


def test_what_is_not_a_string_nor_a_number_keeps_its_type_under_any_name():
    # Keys that are not text (an integer key) and booleans (``has_phone``: an identifier's
    # name, but a yes or no) are not identifiers; a fractional number under an account's name
    # is masked as the text it is written as, not as its integer part.
    assert mask_identifiers({1: "x", "has_phone": True, "phone": None, "bank_card": 1234567.5}) == \
        {1: "x", "has_phone": True, "phone": None, "bank_card": "**** 67.5"}


@pytest.mark.parametrize(("text", "shown"), [
    # GB 11643: a right check character makes an ID number whatever the digits of the date...
    ("330105199913400004", "3301**********0004"), ("33010519991340008X", "3301**********008X"),
    ("33010519991340008x", "3301**********008x"),
    # ...a wrong one needs a real birth date from 1900 to 2100; otherwise the 18 digits are
    # masked as a card number would be (last four shown).
    ("330105199913400005", "**** 0005"), ("330105190001010011", "3301**********0011"),
    ("330105210012310015", "3301**********0015"), ("330105189912310017", "**** 0017"),
    ("330105210101010014", "**** 0014"),
])
def test_an_id_number_is_told_by_its_check_character_or_its_birth_date(text, shown):
    assert mask_text(f"证件 {text}") == f"证件 {shown}"


def test_a_card_number_written_in_groups_is_masked_only_when_it_passes_the_luhn_check():
    # The number doubles digits above 4 (so 9 is subtracted), doubles a 5 (10 → 1) and keeps
    # an undoubled 9: every step of the check counts.
    assert mask_text("卡号 6222 4158 6834 4978") == "卡号 **** 4978"
    assert mask_text("卡号 6222 4158 6834 4979") == "卡号 6222 4158 6834 4979"  # a reference, not a card


def test_text_between_two_uuids_is_masked_too():
    uuid = "4b8f5c1e-0c0e-4b7a-9d1e-2f3a4b5c6d7e"
    assert mask_text(f"{uuid} 13761547720 {uuid} 13800000422") == f"{uuid} 137****7720 {uuid} 138****0422"


def test_names_that_name_no_identifier_are_left_to_the_value_check():
    data = {"client_id": "C02", "task_id": 4182, "account_status": "normal", "attempt_no": 2, "case_no": "X-1",
            "channel": "phone", "account_manager": "s106"}
    assert mask_identifiers(data) == data


# -- by value ---------------------------------------------------------------------------------
@pytest.mark.parametrize(("text", "shown"), [
    (f"客户电话{PHONE}，要求退还佣金", f"客户电话{PHONE_MASKED}，要求退还佣金"),
    ("回拨 +86 137-6154-7720 未接通", "回拨 +86 137****7720 未接通"),
    ("家里座机0571-87654321或(010)12345678", "家里座机057*****4321或010****5678"),
    (f"身份证号{ID_NUMBER}核对无误", f"身份证号{ID_MASKED}核对无误"),
    (ID_VALID_CHECK_DIGIT, "1101**********002X"),
    (f"银行卡{BANK_CARD}", "银行卡**** 4567"),
    ("卡号 4111 1111 1111 1111", "卡号 **** 1111"),  # written in groups: passes the Luhn check
    (f"资金账号{FUND_ACCOUNT}。", "资金账号**** 5521。"),
    ("账号200110030417", "账号**** 0417"),  # the demo's C03: twelve digits that also read as a time
])
def test_identifiers_inside_free_text_are_masked(text, shown):
    assert mask_text(text) == shown
    assert mask_identifiers({"summary": text}) == {"summary": shown}


def test_a_full_number_typed_into_a_field_meant_for_a_masked_one_is_masked():
    assert mask_identifiers({"dialled_number_masked": "17746215089"}) == {"dialled_number_masked": "177****5089"}
    assert mask_identifiers({"dialled_number_masked": "177****5089"}) == {"dialled_number_masked": "177****5089"}


def test_an_integer_that_reads_as_an_identifier_is_masked_under_any_name():
    assert mask_identifiers({"contact": 13761547720, "ref": [13761547720]}) == {
        "contact": PHONE_MASKED, "ref": [PHONE_MASKED]}


def test_identifiers_are_masked_at_every_depth_and_in_keys():
    data = {"contacts": [{"relation": "配偶", "tel": PHONE, "note": {"text": f"备用{BACKUP_PHONES[0]}"}}],
            "by_number": {PHONE: "本人"}}
    assert mask_identifiers(data) == {
        "contacts": [{"relation": "配偶", "tel": PHONE_MASKED, "note": {"text": "备用139****0421"}}],
        "by_number": {PHONE_MASKED: "本人"}}


ORDINARY: dict[str, Any] = {
    "business_key": "CMP-20261207-0001", "opened_at": "2026-12-07T09:30:00.123456+08:00", "due_on": "2026-12-21",
"amount": 90000, "amount_text": "90000.00", "assets": 13761547720.0,
    "claimed": "¥1,234,567.89", "ratio": "0.05712345678", "task_id": 4182, "instance_id": 77,
    "task_uuid": "4f3c2a10-9b1e-4c2d-8e7f-137615477200", "epoch": 1733567000, "epoch_ms": 1733567000000,
    "recording_id": "REC-20261207-0001", "score": 4.5, "satisfied": True, "none": None,
    "text": "2026-12-07 10:00 至 2026-12-21 17:00 处理，金额 50000 元，任务 4182",
}


def test_ordinary_values_survive_masking():
    assert mask_identifiers(ORDINARY) == ORDINARY
    assert mask_text(ORDINARY["text"]) == ORDINARY["text"]


def test_masking_twice_changes_nothing_more():
    once = mask_identifiers({"phone": PHONE, "summary": f"{ID_NUMBER} {FUND_ACCOUNT} {BANK_CARD}", "n": 13761547720})
    assert mask_identifiers(once) == once


def test_a_message_quoting_a_refused_value_quotes_it_masked():
    assert mask_echo(f"'{PHONE}' is too long", PHONE, "complainant_phone") == f"'{PHONE_MASKED}' is too long"
    assert mask_echo("'8765-43' is too long", "8765-43", "complainant_phone") == "'*******' is too long"
    assert mask_echo(f"'客户电话{PHONE}' is not of type 'integer'", f"客户电话{PHONE}", "summary") == (
        f"'客户电话{PHONE_MASKED}' is not of type 'integer'")


# -- where case data leaves the engine --------------------------------------------------------
CASE_DATA: dict[str, Any] = {
    "priority": 50, "due_at": None, "amount": 90000,
    "complainant_phone": PHONE, "backup_phone": BACKUP_PHONES, "client_mobile": "15067382276",
    "refund_account_no": FUND_ACCOUNT, "bank_account_number": BANK_CARD, "idNumber": ID_NUMBER,
    "summary": f"客户电话{PHONE}，要求退还佣金", "dialled_number_masked": "17746215089", "contact": 13800000422,
}
CLEAR = [PHONE, *BACKUP_PHONES, "15067382276", FUND_ACCOUNT, BANK_CARD, ID_NUMBER, "17746215089"]
CASE_SHOWN = {
    "priority": 50, "due_at": None, "amount": 90000,
    "complainant_phone": PHONE_MASKED, "backup_phone": ["139****0421", "138****0422"], "client_mobile": "150****2276",
    "refund_account_no": "**** 5521", "bank_account_number": "**** 4567", "idNumber": ID_MASKED,
    "summary": f"客户电话{PHONE_MASKED}，要求退还佣金", "dialled_number_masked": "177****5089",
    "contact": "138****0422",
}


def _start(db, rt, people, key="M-1", data=None) -> int:
    with db.transaction() as s:
        return instances.start(s, rt, process_key="review", business_key=key, actor=people.clerk,
                               data=data if data is not None else dict(CASE_DATA)).id


def _screened(db, rt, reader, instance_id):
    with db.transaction() as s:
        instance = instances.get(s, instance_id, actor=reader)
        return field_policy.screen_case(s, FieldPolicy(), actor=reader, instance=instance,
                                        data=instances.data_of(s, rt, instance))


def _history(db, rt, reader, instance_id):
    with db.transaction() as s:
        instance = instances.get(s, instance_id, actor=reader)
        return field_policy.screen_history(s, FieldPolicy(), actor=reader, instance=instance,
                                           data=instances.data_of(s, rt, instance),
                                           events=instances.history(s, instance_id, actor=reader))


@pytest.mark.store_independent
def test_case_data_is_masked_by_name_and_value_for_every_reader(db, rt, people, review):
    instance_id = _start(db, rt, people)
    for reader in (people.clerk, people.teammate, people.supervisor, people.system):
        case = _screened(db, rt, reader, instance_id)
        assert case.data is not None
        assert {k: case.data[k] for k in CASE_SHOWN} == CASE_SHOWN, reader.username
        assert not any(clear in repr(case.data) for clear in CLEAR)
    with db.transaction() as s:  # stored as given: only what is shown is masked
        assert instances.data_of(s, rt, s.get(ProcessInstance, instance_id))["complainant_phone"] == PHONE


@pytest.mark.store_independent
@pytest.mark.parametrize(("name", "value", "shown"), [
    ("client_mobile", *PHONE_LIKE), ("refund_account_no", *ACCOUNT_LIKE), ("refund_account_number", *ACCOUNT_LIKE),
])
def test_a_case_variable_named_like_an_identifier_is_masked_by_its_name(db, rt, people, review, name, value, shown):
    instance_id = _start(db, rt, people, data={"priority": 50, "due_at": None, name: value})
    for reader in (people.clerk, people.supervisor):
        case = _screened(db, rt, reader, instance_id)
        assert case.data is not None and case.data[name] == shown


@pytest.mark.store_independent
def test_history_is_masked_when_the_field_policy_withholds_nothing(db, rt, people, review):
    # The review process has no field policy: nothing is withheld from anyone, and every
    # identifier in every event is masked all the same.
    instance_id = _start(db, rt, people)
    with db.transaction() as s:
        task = s.execute(select(Task).where(Task.instance_id == instance_id)).scalar_one()
        tasks.complete(s, rt, task_id=task.id, actor=people.clerk,
                       data={"amount": 90000, "summary": f"已回拨{BACKUP_PHONES[1]}，核对身份证{ID_NUMBER}"})
    with db.transaction() as s:
        task = s.execute(select(Task).where(Task.instance_id == instance_id, Task.status == "open")).scalar_one()
        tasks.complete(s, rt, task_id=task.id, actor=people.manager, data={"approved": True, "comment": "同意"})
    with db.transaction() as s:
        messages.correlate(s, rt, name="client_ack", correlation_key="M-1", actor=people.system,
                           payload={"reply_phone": PHONE, "channel": "app"})
    for reader in (people.clerk, people.manager, people.supervisor):
        events = _history(db, rt, reader, instance_id)
        assert all(e.withheld == [] for e in events)
        assert not any(clear in repr(e.data) for e in events for clear in CLEAR), reader.username
        by_kind = {e.kind: e.data for e in events}
        assert by_kind["instance.started"]["data"]["complainant_phone"] == PHONE_MASKED
        completed = [e.data["data"] for e in events if e.kind == "task.completed"]
        assert completed[0] == {"amount": 90000, "summary": f"已回拨138****0422，核对身份证{ID_MASKED}"}
        assert completed[1] == {"approved": True, "comment": "同意"}
        assert by_kind["message.received"]["payload"] == {"reply_phone": PHONE_MASKED, "channel": "app"}


@pytest.mark.store_independent
def test_the_reader_who_filled_a_form_sees_it_masked_like_everyone_else(db, rt, people, review):
    instance_id = _start(db, rt, people, data={"priority": 50, "due_at": None})
    with db.transaction() as s:
        task = s.execute(select(Task).where(Task.instance_id == instance_id)).scalar_one()
        tasks.complete(s, rt, task_id=task.id, actor=people.clerk, data={"amount": 1, "summary": f"电话{PHONE}"})
    [own] = [e for e in _history(db, rt, people.clerk, instance_id) if e.kind == "task.completed"]
    assert own.actor == people.clerk.username and own.data["data"]["summary"] == f"电话{PHONE_MASKED}"


@pytest.mark.store_independent
def test_a_failed_cases_error_is_masked(db, rt, people, review):
    # A step's error may quote the data it choked on (a service answering "no client with
    # phone 137…").
    instance_id = _start(db, rt, people, data={"priority": 50, "due_at": None})
    with db.engine.begin() as conn:
        conn.execute(update(ProcessInstance.__table__).where(ProcessInstance.__table__.c.id == instance_id)
                     .values(status="failed", error=f"crm_lookup: no client with phone {PHONE}"))
    assert _screened(db, rt, people.supervisor, instance_id).error == f"crm_lookup: no client with phone {PHONE_MASKED}"
    with db.transaction() as s:
        [listed] = field_policy.screen_cases(s, FieldPolicy(), actor=people.supervisor,
                                             instances=[s.get(ProcessInstance, instance_id)])
    assert listed.error == f"crm_lookup: no client with phone {PHONE_MASKED}"


@pytest.mark.store_independent
def test_a_refused_form_quotes_the_values_it_refused_masked(db, rt, people, review):
    instance_id = _start(db, rt, people, data={"priority": 50, "due_at": None})
    with db.transaction() as s:
        task = s.execute(select(Task).where(Task.instance_id == instance_id)).scalar_one()
        with pytest.raises(FormValidationError) as refused:
            tasks.complete(s, rt, task_id=task.id, actor=people.clerk,
                           data={"amount": PHONE, "summary": 1, PHONE: "x"})
    messages_ = [(e.field, e.message) for e in refused.value.errors]
    assert not any(PHONE in field or PHONE in message for field, message in messages_), messages_
    assert ("amount", f"'{PHONE_MASKED}' is not of type 'number'") in messages_
    assert any(PHONE_MASKED in message and "unexpected" in message for _, message in messages_)
    assert not any(PHONE in repr(e) for e in refused.value.details["errors"])


@pytest.mark.store_independent
def test_a_refused_registry_row_quotes_the_cell_it_refused_masked(db, rt, people):
    # A client file is full of identifiers; a reason that quotes a cell quotes it masked.
    from engine.brokerage import registry_import

    header = "client_id,name,branch,service_group,id_number,phone,account_number,assets,turnover\n"
    with db.transaction() as s:
        report = registry_import.import_csv(s, kind="clients", source="clients.csv", actor=people.system,
                                            now=rt.now(), data=f"{header}C99,测试,HZ01,,,,,{PHONE}x,1\n")
    [error] = report.rejected
    assert error.column == "assets" and PHONE not in error.reason and f"{PHONE_MASKED}x" in error.reason
