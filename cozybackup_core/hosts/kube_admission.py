"""The ValidatingAdmissionPolicy that puts the CLI's tenant rules in front of the API server.

RBAC decides which kinds a tenant may write; it cannot look inside an object.  Two rules of
``_engine.admission`` need that, and a policy in CEL (admissionregistration.k8s.io/v1, no
webhook to run) enforces them for everyone but the controller and ``system:masters``:

* labels and annotations under ``backups.cozystack.io/`` are the platform's: a tenant who
  forged ``backups.cozystack.io/plan`` could make a job look like another Plan's, one who
  forged ``backups.cozystack.io/pinned`` could keep a Backup from retention.  On CREATE there
  may be none; on UPDATE the reserved keys and their values must be the ones already there.
* a BackupJob's or RestoreJob's spec never changes: the job runs what it was created with.

The objects are CustomResources, which reach CEL as plain maps: a missing ``labels`` or
``annotations`` is a missing key, so every read is guarded with ``has()``, and ``oldObject``
is read only on UPDATE (it is null on CREATE).
"""

from __future__ import annotations

from typing import Any

from .._api.types import GROUP
from .._engine.admission import IMMUTABLE_SPEC_KINDS, RESERVED_PREFIX

NAME = "cozybackup-platform-fields"
#: Groups whose members may set reserved keys by hand (the cluster's break-glass admins).
EXEMPT_GROUPS = ("system:masters",)


def cel_string(text: str) -> str:
    """``text`` as a single-quoted CEL string literal."""
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _cel_list(items: tuple[str, ...] | list[str]) -> str:
    return "[" + ", ".join(cel_string(i) for i in items) + "]"


def _maps(field: str) -> list[dict[str, str]]:
    """The variables ``<field>``, ``old<Field>`` (empty when absent or on CREATE) and
    ``changed<Field>``: the reserved keys added, removed or given another value."""
    cap = field[0].upper() + field[1:]
    new, old, prefix = f"variables.{field}", f"variables.old{cap}", cel_string(RESERVED_PREFIX)
    return [
        {
            "name": field,
            "expression": f"has(object.metadata.{field}) ? object.metadata.{field} : {{}}",
        },
        {
            "name": f"old{cap}",
            "expression": f"request.operation == 'UPDATE' && has(oldObject.metadata.{field})"
            f" ? oldObject.metadata.{field} : {{}}",
        },
        {
            "name": f"changed{cap}",
            "expression": f"{new}.filter(k, k.startsWith({prefix})\n"
            f"    && !(k in {old} && {old}[k] == {new}[k]))\n"
            f"+ {old}.filter(k, k.startsWith({prefix}) && !(k in {new}))",
        },
    ]


def _reserved_rule(field: str) -> dict[str, str]:
    cap = field[0].upper() + field[1:]
    refused = f"{field} reserved for the platform (prefix {RESERVED_PREFIX}) cannot be set, changed or removed"
    return {
        "expression": f"size(variables.changed{cap}) == 0",
        "message": refused,
        "messageExpression": f"{cel_string(refused + ': ')} + variables.changed{cap}.join(', ')",
        "reason": "Forbidden",
    }


def policy(platform_users: list[str]) -> dict[str, Any]:
    """The policy, exempting ``platform_users`` (the controller's and the workers'
    ServiceAccounts)."""
    kinds = [cls.kind for cls in IMMUTABLE_SPEC_KINDS]
    not_exempt = (
        f"!(request.userInfo.username in {_cel_list(platform_users)})\n"
        f"&& !(has(request.userInfo.groups)\n"
        f"     && request.userInfo.groups.exists(g, g in {_cel_list(EXEMPT_GROUPS)}))"
    )
    spec_rule = {
        "expression": "request.operation != 'UPDATE'\n"
        f"|| !(request.kind.kind in {_cel_list(kinds)})\n"
        "|| variables.spec == variables.oldSpec",
        "message": f"the spec of a {' or '.join(kinds)} cannot change once it is created; "
        "create a new one",
        "messageExpression": "request.kind.kind + ' ' + object.metadata.name"
        " + ' exists and its spec is immutable; create a new one'",
        "reason": "Forbidden",
    }
    return {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingAdmissionPolicy",
        "metadata": {"name": NAME},
        "spec": {
            "failurePolicy": "Fail",
            "matchConstraints": {
                # "*" is every resource of the group and none of its subresources: a PUT
                # on /status cannot change labels or spec, and tenants have no /status.
                "resourceRules": [
                    {
                        "apiGroups": [GROUP],
                        "apiVersions": ["*"],
                        "operations": ["CREATE", "UPDATE"],
                        "resources": ["*"],
                    }
                ]
            },
            "matchConditions": [{"name": "not-the-platform", "expression": not_exempt}],
            "variables": [
                *_maps("labels"),
                *_maps("annotations"),
                {"name": "spec", "expression": "has(object.spec) ? object.spec : {}"},
                {
                    "name": "oldSpec",
                    "expression": "request.operation == 'UPDATE' && has(oldObject.spec)"
                    " ? oldObject.spec : {}",
                },
            ],
            "validations": [
                _reserved_rule("labels"),
                _reserved_rule("annotations"),
                spec_rule,
            ],
        },
    }


def binding() -> dict[str, Any]:
    """Every object the policy matches, refused on failure (no audit-only mode)."""
    return {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingAdmissionPolicyBinding",
        "metadata": {"name": NAME},
        "spec": {"policyName": NAME, "validationActions": ["Deny"]},
    }
