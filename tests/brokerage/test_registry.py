"""The client registry (engine.registry, engine.registry_import): service-group rules,
groups kept in step with candidate groups, CSV import with a report of rejected rows,
idempotent re-import, and ``bpm registry import``.

The demo files in ``engine/demo_data`` (brief §4) are the registry most tests start from.
"""

from __future__ import annotations

from datetime import UTC, date, datetime

import pytest
from sqlalchemy import func, select

from engine.access import identity
from engine.access.assignment import resolve_candidate_groups
from engine.access.identity import Actor
from engine.brokerage import registry, registry_import
from engine.brokerage.demo import FILES
from engine.errors import Conflict, PermissionDenied, ServiceGroupInvalid
from engine.models import AuditEvent, Client, Group, GroupMember, ProcessInstance, ServiceGroup, StaffProfile, User
from tests.support.cli import bpm

ADMIN = Actor.system("importer")
NOW = datetime(2025, 6, 16, 2, tzinfo=UTC)
CLIENT_HEADER = "client_id,name,branch,service_group,id_number,phone,account_number,assets,turnover\n"


def load(db, *kinds: str) -> registry_import.ImportReport:
    """Import the demo files of these kinds (all four by default)."""
    kinds = kinds or registry_import.KINDS
    with db.transaction() as s:
        report = registry_import.import_files(
            s, files={k: (FILES[k].name, FILES[k].read_bytes()) for k in kinds}, actor=ADMIN, now=NOW)
    assert report.rejected == 0, [e for f in report.files for e in f.rejected]
    return report


def import_text(db, kind: str, text: str | bytes, source: str = "upload.csv") -> registry_import.FileReport:
    with db.transaction() as s:
        return registry_import.import_csv(s, kind=kind, data=text, actor=ADMIN, now=NOW, source=source)


def members_of(db, key: str) -> set[str]:
    """bpm_group_member rows of the candidate group ``key``."""
    with db.transaction() as s:
        return set(s.execute(select(User.username).join(GroupMember, GroupMember.user_id == User.id)
                             .join(Group, Group.id == GroupMember.group_id).where(Group.key == key)).scalars())


def profile_keys(db, *usernames: str) -> dict[str, str | None]:
    with db.transaction() as s:
        return dict(s.execute(select(User.username, StaffProfile.service_group_key)
                              .join(StaffProfile, StaffProfile.user_id == User.id)
                              .where(User.username.in_(usernames))).all())


def count_events(db, kind: str) -> int:
    with db.transaction() as s:
        return s.execute(select(func.count()).select_from(AuditEvent).where(AuditEvent.kind == kind)).scalar_one()


def save_group(db, **values):
    with db.transaction() as s:
        return registry.upsert_service_group(s, values=values, actor=ADMIN, now=NOW).outcome


# -- service-group rules ------------------------------------------------------------------
@pytest.mark.sqlite
@pytest.mark.parametrize(("members", "rule", "words"), [
    (["s103"], "size", "needs 2–3 members, got 1"),
    (["s103", "s109", "s101", "s102"], "size", "needs 2–3 members, got 4"),
    (["s103", "s109"], "back_office", "at least one middle/back-office"),
    (["s103", "s204"], "branch", "s204 works in NB01, not in HZ01"),
    (["s103", "s105"], "one_group", "s105 already belongs to service group HZ01-G1"),
    (["s103", "s003"], "branch", "s003 works in HQ, not in HZ01"),
    (["s103", "nobody"], "staff", "no user 'nobody'"),
])
def test_a_service_group_that_breaks_the_seed_rule_is_refused_and_nothing_is_written(db, members, rule, words):
    load(db, "branches", "staff", "groups")
    with pytest.raises(ServiceGroupInvalid) as refused, db.transaction() as s:
        registry.create_service_group(s, values={"key": "HZ01-G9", "branch": "HZ01", "members": members},
                                      actor=ADMIN, now=NOW)
    assert refused.value.code == "service_group_invalid"
    assert refused.value.details == {"field": "members", "rule": rule}
    assert words in refused.value.message
    with db.transaction() as s:
        assert s.get(ServiceGroup, "HZ01-G9") is None
        assert s.execute(select(Group).where(Group.key == "HZ01-G9")).first() is None
    assert profile_keys(db, "s103")["s103"] is None


@pytest.mark.sqlite
def test_the_only_back_office_member_cannot_stop_being_back_office_or_leave_the_branch(db):
    load(db, "branches", "staff", "groups")
    for change, field in (({"back_office": False}, "back_office"), ({"branch": "NB01"}, "branch")):
        with pytest.raises(ServiceGroupInvalid) as refused, db.transaction() as s:
            registry.update_staff(s, values={"username": "s104", **change}, actor=ADMIN, now=NOW)
        assert refused.value.details["field"] == field
    with db.transaction() as s:
        user, profile = registry.get_staff(s, "s104")
        assert (user.branch_code, profile.back_office, profile.service_group_key) == ("HZ01", True, "HZ01-G2")


@pytest.mark.sqlite
def test_members_of_a_service_group_change_only_through_the_registry(db):
    load(db, "branches", "staff", "groups")
    with pytest.raises(Conflict) as refused, db.transaction() as s:
        identity.add_member(s, group_key="HZ01-G1", username="s103")
    assert "service group" in refused.value.message
    assert members_of(db, "HZ01-G1") == {"s105", "s106", "s107"}


@pytest.mark.sqlite
def test_a_service_group_is_a_candidate_group_whose_members_stay_in_step(db, rt):
    load(db, "branches", "staff", "groups")
    with db.transaction() as s:
        group = s.execute(select(Group).where(Group.key == "HZ01-G1")).scalar_one()
        assert (group.kind, group.name) == ("service_group", "服务小组 HZ01-G1")
        # A diagram's client:service_group resolves to the key that the members hold.
        instance = ProcessInstance(branch_code="HZ01")
        assert resolve_candidate_groups(s, rt.evaluator, ["client:service_group", "branch:counter_staff"],
                                        instance=instance, data={"service_group": "HZ01-G1"}) == \
            ["HZ01-G1", "HZ01:counter_staff"]
        assert "HZ01-G1" in identity.actor_for(s, identity.get_user(s, "s106")).groups
    assert members_of(db, "HZ01-G1") == {"s105", "s106", "s107"}

    # s107 leaves, s103 joins: both sides move together, and the change is audited.
    assert save_group(db, key="HZ01-G1", branch="HZ01", members=["s106", "s105", "s103"]) == "updated"
    assert members_of(db, "HZ01-G1") == {"s103", "s105", "s106"}
    assert profile_keys(db, "s103", "s107") == {"s103": "HZ01-G1", "s107": None}
    with db.transaction() as s:
        event = s.execute(select(AuditEvent).where(AuditEvent.kind == "service_group.members")
                          .order_by(AuditEvent.id.desc()).limit(1)).scalar_one()
        assert event.data == {"key": "HZ01-G1",
                              "changes": {"members": [["s105", "s106", "s107"], ["s103", "s105", "s106"]]}}
        assert "HZ01-G1" not in identity.actor_for(s, identity.get_user(s, "s107")).groups
    # The same members again: nothing to do.
    assert save_group(db, key="HZ01-G1", branch="HZ01", members=["s103", "s106", "s105"]) == "unchanged"


@pytest.mark.sqlite
def test_staff_roles_are_mirrored_as_role_and_branch_role_groups(db):
    load(db, "branches")
    report = import_text(db, "staff", "username,name,branch,job_roles\nx1,新人,HZ01,counter_staff;account_manager\n")
    assert (report.created, report.rejected) == (1, [])
    for key in ("counter_staff", "HZ01:counter_staff", "account_manager", "HZ01:account_manager"):
        assert "x1" in members_of(db, key)
    assert "x1" not in members_of(db, "NB01:counter_staff")
    with db.transaction() as s:
        assert registry.get_staff(s, "x1")[1].back_office is True  # counter staff: 中后台 unless told otherwise
    # Moved to NB01 and no longer an account manager.
    report = import_text(db, "staff", "username,branch,job_roles\nx1,NB01,counter_staff\n")
    assert (report.updated, report.rejected) == (1, [])
    assert "x1" in members_of(db, "NB01:counter_staff")
    assert not {"x1"} & (members_of(db, "HZ01:counter_staff") | members_of(db, "account_manager"))


# -- CSV import --------------------------------------------------------------------------
MIXED_CLIENTS = (
    CLIENT_HEADER                                                                      # line 1
    + "K01,好客户,HZ01,HZ01-G1,330106197303152315,13957120421,100210015521,6200000,4.2\n"  # 2 good
    + "K02,错营业部,XX99,,,,,100,1\n"                                                     # 3 branch
    + "K03,坏资产,HZ01,,,,,lots,1\n"                                                      # 4 assets
    + '"K04","两行\n名字",HZ01,,,,,5000,0\n'                                              # 5-6 good (2 lines)
    + "K05,别的小组,HZ01,NB01-G1,,,,5000,0\n"                                             # 7 group of NB01
    + "K01,重复,HZ01,,,,,1,1\n"                                                           # 8 duplicate
    + "K06,坏证件,HZ01,,3301-bad,,,1,1\n"                                                 # 9 id number
    + "\n"                                                                               # 10 blank
    + "K07,太多,HZ01,,,,,1,1,extra\n"                                                     # 11 cells
    + "K08,池子客户,SX01,,,13136584472,,32000,0.4\n"                                       # 12 good
)


@pytest.mark.sqlite
def test_a_csv_with_good_and_bad_rows_keeps_the_good_ones_and_reports_each_bad_line(db):
    load(db, "branches", "staff", "groups")
    report = import_text(db, "clients", MIXED_CLIENTS, source="clients.csv")
    assert (report.created, report.updated, report.unchanged) == (3, 0, 0)
    assert [(e.line, e.column) for e in report.rejected] == [
        (3, "branch"), (4, "assets"), (7, "service_group"), (8, "client_id"), (9, "id_number"), (11, None)]
    reasons = [e.reason for e in report.rejected]
    assert reasons[0] == "no branch 'XX99' (import branches first)"
    assert reasons[1] == "'lots' is not a number"
    assert reasons[2] == "service group NB01-G1 belongs to NB01, not to the client's branch HZ01"
    assert reasons[3] == "K01 already appears on line 2"
    assert reasons[4].startswith("id_number must be")
    assert reasons[5] == "10 cells but the header has 9 columns"
    assert report.rejected[0].format("clients.csv") == "clients.csv:3 branch: no branch 'XX99' (import branches first)"

    with db.transaction() as s:
        kept = {c.client_id: c for c in s.execute(select(Client)).scalars()}
        assert set(kept) == {"K01", "K04", "K08"}
        assert kept["K04"].name == "两行\n名字"
        assert (kept["K01"].service_group_key, kept["K01"].assets) == ("HZ01-G1", 6200000)
        assert kept["K08"].service_group_key is None  # the branch pool
        # The audit trail of a created client shows identifiers masked, never in clear.
        created = s.execute(select(AuditEvent).where(AuditEvent.kind == "client.created")
                            .order_by(AuditEvent.id)).scalars().first()
        assert created is not None and created.data["changes"]["id_number"] == [None, "3301**********2315"]
        assert "330106197303152315" not in str(created.data)
        summary = s.execute(select(AuditEvent).where(AuditEvent.kind == "registry.imported")
                            .order_by(AuditEvent.id.desc()).limit(1)).scalar_one()
        assert (summary.data["kind"], summary.data["created"], len(summary.data["rejected"])) == ("clients", 3, 6)


@pytest.mark.sqlite
def test_importing_the_same_file_again_changes_nothing(db):
    load(db, "branches", "staff", "groups")
    first = import_text(db, "clients", MIXED_CLIENTS)
    writes = count_events(db, "client.created") + count_events(db, "client.updated")
    again = import_text(db, "clients", MIXED_CLIENTS)
    assert (again.created, again.updated, again.unchanged) == (0, 0, 3)
    assert again.rejected == first.rejected
    assert count_events(db, "client.created") + count_events(db, "client.updated") == writes

    demo = load(db)  # the demo files on top of an already loaded registry: all unchanged
    assert [(f.kind, f.created, f.updated) for f in demo.files] == [
        ("branches", 0, 0), ("staff", 0, 0), ("groups", 0, 0), ("clients", 10, 0)]
    assert [(f.kind, f.created, f.updated, f.unchanged) for f in load(db).files] == [
        ("branches", 0, 0, 3), ("staff", 0, 0, 30), ("groups", 0, 0, 5), ("clients", 0, 0, 10)]


@pytest.mark.sqlite
def test_a_changed_row_updates_only_what_changed_and_vip_columns_count_for_new_clients_only(db):
    load(db)
    changed = FILES["clients"].read_text(encoding="utf-8").replace(
        "C07,吴海涛,SX01,SX01-G1,1984-03-30,330621198403305154,15857416640,300210072265,180000,1.9,C3,,off_site,gold,",
        "C07,吴海涛,SX01,,1984-03-30,330621198403305154,15857416640,300210072265,150000,1.9,C3,,off_site,diamond,")
    report = import_text(db, "clients", changed)
    assert (report.created, report.updated, report.unchanged, report.rejected) == (0, 1, 9, [])
    with db.transaction() as s:
        c07 = s.get(Client, "C07")
        assert (c07.service_group_key, c07.assets) == (None, 150000)
        # The VIP columns stay the evaluation's, not the file's.
        assert (c07.vip_tier, c07.downgrade_grace_until) == ("gold", date(2025, 8, 1))
        event = s.execute(select(AuditEvent).where(AuditEvent.kind == "client.updated")).scalar_one()
        assert event.data == {"key": "C07", "changes": {"service_group_key": ["SX01-G1", None],
                                                       "assets": ["180000.00", "150000.00"]}}
        # An explicit update may correct the tier (e.g. an approved override).
        registry.update_client(s, values={"client_id": "C07", "vip_tier": "silver", "downgrade_grace_until": None},
                               actor=ADMIN, now=NOW)
    with db.transaction() as s:
        assert (s.get(Client, "C07").vip_tier, s.get(Client, "C07").downgrade_grace_until) == ("silver", None)


@pytest.mark.sqlite
def test_a_file_with_a_wrong_header_is_refused_whole(db):
    load(db, "branches")
    report = import_text(db, "clients", "client_id,nmae,branch\nK01,x,HZ01\n")
    assert [(e.line, e.column, e.reason) for e in report.rejected] == [
        (1, "name", "missing column"),
        (1, "nmae", "unknown column; expected some of " + ", ".join(registry_import.LAYOUTS["clients"].columns)),
    ]
    assert (report.created, report.updated) == (0, 0)
    assert import_text(db, "branches", "").rejected[0].reason == "the file is empty (a header line is needed)"


@pytest.mark.sqlite
def test_gb18030_files_from_excel_are_read(db):
    report = import_text(db, "branches", "code,name,city\r\nJX01,某某证券嘉兴示范营业部,嘉兴\r\n".encode("gb18030"))
    assert (report.created, report.rejected) == (1, [])
    with db.transaction() as s:
        assert registry.get_branch(s, "JX01").city == "嘉兴"


@pytest.mark.sqlite
def test_only_an_admin_may_import(db):
    with pytest.raises(PermissionDenied), db.transaction() as s:
        registry_import.import_csv(s, kind="branches", data="code,name,city\n", now=NOW,
                                   actor=Actor("s104", frozenset({"counter_staff"}), "HZ01"))


# -- bpm registry import ----------------------------------------------------------------
@pytest.mark.sqlite
def test_cli_import_prints_the_report_and_exits_1_when_a_row_was_rejected(database_url, db, tmp_path):
    clean = bpm(database_url, "registry", "import", "--branches", FILES["branches"], "--staff", FILES["staff"],
                "--groups", FILES["groups"])
    assert clean.exit_code == 0, clean.output
    assert clean.stdout.splitlines() == [
        f"{FILES['branches']} (branches): 3 created, 0 updated, 0 unchanged, 0 rejected",
        f"{FILES['staff']} (staff): 30 created, 0 updated, 0 unchanged, 0 rejected",
        f"{FILES['groups']} (groups): 5 created, 0 updated, 0 unchanged, 0 rejected",
    ]
    bad = tmp_path / "clients.csv"
    bad.write_text(MIXED_CLIENTS, encoding="utf-8")
    mixed = bpm(database_url, "registry", "import", "--clients", bad)
    assert mixed.exit_code == 1
    lines = mixed.stdout.splitlines()
    assert lines[0] == f"{bad} (clients): 3 created, 0 updated, 0 unchanged, 6 rejected"
    assert lines[1] == f"  {bad}:3 branch: no branch 'XX99' (import branches first)"
    assert [line.split(" ")[2].split(":")[-1] for line in lines[1:]] == ["3", "4", "7", "8", "9", "11"]
    with db.transaction() as s:
        assert s.execute(select(func.count()).select_from(Client)).scalar_one() == 3  # the good rows were kept

    nothing = bpm(database_url, "registry", "import")
    assert nothing.exit_code == 2
    assert "give at least one of" in nothing.output
