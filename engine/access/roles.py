"""Every role name the engine decides access by. A role is a group: one membership table
answers both "may this person claim that task" and "may this person deploy".

System roles are the product's own; job roles are the brokerage's staff (a staff member's
job roles are mirrored as memberships of the role group, ``counter_staff``, and of the
branch's role group, ``HZ01:counter_staff``, which ``branch:<role>`` candidate groups
resolve to). The last sets say how far a role's view of clients and cases reaches.
"""

from __future__ import annotations

ADMIN = "admin"
PROCESS_OWNER = "process_owner"
SUPERVISOR = "supervisor"
# Outside systems (account opening, HR, surveillance, the 12386 gateway) sending messages.
INTEGRATION = "integration"
SYSTEM_ROLES = {ADMIN: "系统管理员 Administrator", PROCESS_OWNER: "流程负责人 Process owner",
                SUPERVISOR: "主管 Supervisor", INTEGRATION: "外部系统 Integration"}

JOB_ROLES = {
    "counter_staff": "柜员", "account_manager": "客户经理", "back_office": "中后台",
    "call_center_agent": "客服中心坐席", "call_center_supervisor": "客服中心主管", "branch_head": "营业部负责人",
    "branch_ops_director": "营业部运营总监", "branch_cs_director": "营业部客服总监",
    "compliance": "合规", "hq_complaint_dept": "总部投诉处理部门", "hq_brokerage_mgmt": "总部经纪业务管理总部",
}
# Roles that exist only inside a branch.
BRANCH_ONLY_ROLES = frozenset({"counter_staff", "account_manager", "back_office", "branch_head",
                               "branch_ops_director", "branch_cs_director"})
# Middle/back office (中后台) unless the staff row says otherwise: the demo marks every
# counter clerk 中后台.
BACK_OFFICE_ROLES = frozenset({"counter_staff", "back_office"})

# -- how far a role sees -------------------------------------------------------------------
# The whole of their own branch.
BRANCH_ROLES = frozenset({"counter_staff", "branch_head", "branch_ops_director", "branch_cs_director"})
BRANCH_MANAGEMENT = frozenset({"branch_head", "branch_ops_director", "branch_cs_director"})
# The whole firm.
HQ_ALL = frozenset({"hq_complaint_dept", "hq_brokerage_mgmt"})
# Their branch when the person belongs to one, the whole firm when they sit at headquarters.
BRANCH_OR_ALL = frozenset({"compliance", SUPERVISOR})
# Candidate groups offered firm-wide whose members at a branch are offered only that branch's
# tasks (and tasks tied to no branch); their members at headquarters are offered every one.
# A complaint's compliance review names "compliance": the branch's officer reviews it, or HQ.
BRANCH_BOUND_CANDIDATES = frozenset({"compliance"})
# Start cases for any client on the firm's behalf: the headquarters desks that take clients'
# calls, transfers and evaluations from every branch (docs/domain.md#roles), and outside
# systems. Everyone else starts cases only for the clients they may see.
FIRM_STARTERS = frozenset({"call_center_agent", "call_center_supervisor", "hq_complaint_dept", "hq_brokerage_mgmt",
                           INTEGRATION})
