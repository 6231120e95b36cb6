"""Demo people for ``make run`` (brief §4.2): three branches, their staff and groups.

Every demo user's password is ``demo``. Loading is idempotent.
"""

from __future__ import annotations

import json
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from engine import bundle, deployments, identity, sla
from engine.models import User
from engine.runtime import Runtime

BRANCHES = {"HZ01": "某某证券杭州示范营业部", "NB01": "某某证券宁波示范营业部", "SX01": "某某证券绍兴示范营业部"}

# (username, name, branch or None for HQ, job roles, service group, extra system roles)
STAFF: list[tuple[str, str, str | None, list[str], str | None, list[str]]] = [
    ("s001", "林卫东", None, ["hq_brokerage_mgmt"], None, ["process_owner"]),
    ("s002", "许婧", None, ["call_center_supervisor"], None, ["process_owner", "supervisor"]),
    ("s003", "高晨", None, ["call_center_agent"], None, []),
    ("s004", "马丽", None, ["call_center_agent"], None, []),
    ("s005", "罗斌", None, ["call_center_agent"], None, []),
    ("s006", "谢文", None, ["compliance"], None, ["supervisor"]),
    ("s007", "邓华", None, ["hq_complaint_dept"], None, ["process_owner", "supervisor"]),
    ("s008", "韩志远", None, ["hq_complaint_dept"], None, ["supervisor"]),
    ("s101", "黄建华", "HZ01", ["branch_head"], None, ["supervisor"]),
    ("s102", "曹莉", "HZ01", ["branch_ops_director"], None, ["process_owner"]),
    ("s103", "彭涛", "HZ01", ["branch_cs_director"], None, []),
    ("s104", "蒋芳", "HZ01", ["counter_staff"], "HZ01-G2", []),
    ("s105", "沈洁", "HZ01", ["counter_staff"], "HZ01-G1", []),
    ("s106", "钱磊", "HZ01", ["account_manager"], "HZ01-G1", []),
    ("s107", "杜娟", "HZ01", ["account_manager"], "HZ01-G1", []),
    ("s108", "魏强", "HZ01", ["account_manager"], "HZ01-G2", []),
    ("s109", "叶青", "HZ01", ["compliance"], None, []),
    ("s201", "袁志明", "NB01", ["branch_head"], None, ["supervisor"]),
    ("s202", "潘红", "NB01", ["branch_ops_director"], None, []),
    ("s203", "于海", "NB01", ["branch_cs_director"], None, []),
    ("s204", "任静", "NB01", ["counter_staff"], "NB01-G1", []),
    ("s205", "姚斌", "NB01", ["account_manager"], "NB01-G1", []),
    ("s206", "方敏", "NB01", ["account_manager"], "NB01-G2", []),
    ("s207", "石磊", "NB01", ["compliance"], None, []),
    ("s208", "龚丽", "NB01", ["counter_staff"], "NB01-G2", []),
    ("s301", "金国平", "SX01", ["branch_head", "branch_ops_director", "branch_cs_director"], None,
     ["supervisor"]),
    ("s302", "邵琳", "SX01", ["counter_staff"], "SX01-G1", []),
    ("s303", "孔伟", "SX01", ["account_manager"], "SX01-G1", []),
    ("s304", "汤雪", "SX01", ["account_manager"], "SX01-G1", []),
    ("s305", "贺军", "SX01", ["compliance"], None, []),
]

JOB_ROLES = {
    "counter_staff": "柜员", "account_manager": "客户经理", "call_center_agent": "客服中心坐席",
    "call_center_supervisor": "客服中心主管", "branch_head": "营业部负责人",
    "branch_ops_director": "营业部运营总监", "branch_cs_director": "营业部客服总监",
    "compliance": "合规", "hq_complaint_dept": "总部投诉处理部门", "hq_brokerage_mgmt": "总部经纪业务管理总部",
}
PASSWORD = "demo"


def load(session: Session, rt: Runtime) -> int:
    """Create the demo groups and users that do not exist yet; returns how many users."""
    for key, name in identity.SYSTEM_ROLES.items():
        identity.ensure_group(session, key=key, name=name)
    for key, name in JOB_ROLES.items():
        identity.ensure_group(session, key=key, name=name)
        for code in BRANCHES:
            identity.ensure_group(session, key=f"{code}:{key}", name=f"{code} {name}",
                                  kind="branch_role")
    existing = set(session.execute(select(User.username)).scalars())
    created = 0
    for username, name, branch, roles, group, extra in STAFF:
        if username in existing:
            continue
        groups = [*roles, *extra, *(f"{branch}:{r}" for r in roles if branch)]
        if group is not None:
            identity.ensure_group(session, key=group, name=f"服务小组 {group}", kind="service_group")
            groups.append(group)
        identity.create_user(session, username=username, display_name=name, now=rt.now(),
                             password=PASSWORD, branch_code=branch, groups=groups, actor="demo")
        created += 1
    if "admin" not in existing:
        identity.create_user(session, username="admin", display_name="系统管理员", now=rt.now(),
                             password=PASSWORD, groups=["admin"], actor="demo")
        created += 1
    return created


def load_workflows(session: Session, rt: Runtime, workflows: Path) -> tuple[list[deployments.DeployedVersion], int]:
    """Deploy the diagrams in ``workflows/`` and save the SLA policies in
    ``workflows/sla/*.json``; returns the versions and how many policies were saved."""
    results = []
    actor = identity.Actor.system("demo")
    if any(workflows.glob("*.bpmn")):
        results = deployments.deploy(session, rt, bundle.from_paths([workflows]), actor=actor)
    saved = 0
    for path in sorted((workflows / "sla").glob("*.json")):
        for policy in json.loads(path.read_text(encoding="utf-8")):
            sla.upsert_policy(session, rt, data=policy, actor=actor)
            saved += 1
    return results, saved
