"""The Job strategy's own guarantees: what is substituted where, failures that commit
nothing and leak nothing to the tenant, deadlines that kill the whole process group,
per-class restore modes, apply-time refusal of bad parameters, any kind."""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import time
from pathlib import Path
from typing import Any

import attrs
import pytest
import yaml
from cozybackup_job import JobDriver, JobParameters
from cozybackup_job._params import Command
from cozybackup_job._template import ARGV, ENV, Ref, TemplateError, parse, render
from hypothesis import given
from hypothesis import strategies as st

from cozybackup_core import (
    ApplicationRef,
    AppLocation,
    ArtifactRecord,
    Catalog,
    DriverParametersError,
    EngineConfig,
    GroupKind,
    PluginHost,
    ToolRequest,
    load_yaml,
)
from cozybackup_core.testing import LocalPlatform

NS = "tenant-a"
GROUP = "apps.example.com"
TOKEN = "tok-3b1f9c0e-very-secret"


def job_class(params: dict[str, Any], name: str = "things", kind: str = "Thing") -> str:
    return yaml.safe_dump(
        {
            "apiVersion": "backups.cozystack.io/v1alpha1",
            "kind": "BackupClass",
            "metadata": {"name": name},
            "spec": {
                "strategies": [
                    {
                        "application": {"apiGroup": GROUP, "kind": kind},
                        "strategyRef": {"kind": "Job", "name": name},
                        "parameters": params,
                    }
                ]
            },
        }
    )


def platform(tmp_path: Path, params: dict[str, Any], **config: Any) -> LocalPlatform:
    cfg = EngineConfig(attempts=1, backoff=0.01, workers=1, **config)
    plat = LocalPlatform(tmp_path / "home", drivers=(JobDriver,), config=cfg)
    plat.apply(job_class(params))
    return plat


def thing(plat: LocalPlatform, tmp_path: Path, name: str = "thing") -> tuple[ApplicationRef, Path]:
    d = tmp_path / "apps" / name
    d.mkdir(parents=True)
    ref = plat.declare_app(
        NS,
        name,
        "Thing",
        {"dir": str(d), "host": f"{name}.db.internal", "port": 7000},
        {"token": TOKEN, "username": "svc"},
        api_group=GROUP,
    )
    return ref, d


def assert_nothing_committed(plat: LocalPlatform) -> None:
    assert plat.backups(NS) == []
    assert plat.leftovers() == []
    assert plat.host.objects.list(ArtifactRecord) == []


def manifest(plat: LocalPlatform) -> dict[str, Any]:
    [path] = [p for p in plat.stored_files() if p.name == "manifest.json"]
    data: dict[str, Any] = json.loads(path.read_text())
    return data


CAT = {"command": ["sh", "-c", 'cat > "$DIR/restored"'], "env": {"DIR": "${connection.dir}"}}

# ------------------------------------------------------------------ substitution


def test_what_the_commands_receive_in_argv_and_env(tmp_path: Path) -> None:
    script = (
        'printf "%s|" "$1" "$2" "$TOKEN_ENV" "$HOST_ENV" "$COZY_SECRET_TOKEN" '
        '"$COZY_SECRET_USERNAME" "$COZY_CONN_HOST" "$COZY_CONN_PORT" "$COZY_APP_NAME" '
        '"$COZY_APP_NAMESPACE" "$COZY_APP_KIND" "$COZY_APP_API_GROUP" "$COZY_STREAM" "$SHARED"; '
        "tr '\\0' ' ' < /proc/$$/cmdline > \"$COZY_CONN_DIR/cmdline\""
    )
    params = {
        "env": {"SHARED": "shared-${app.name}", "TOKEN_ENV": "overridden"},
        "backup": {
            "command": [
                "sh",
                "-c",
                script,
                "sh",
                "${connection.host}:${connection.port}",
                "${app.name}/${app.namespace}/${app.kind}/${app.apiGroup}/$${lit}/$HOME",
            ],
            "env": {"TOKEN_ENV": "t=${credentials.token}", "HOST_ENV": "h=${connection.host}"},
        },
        "restore": {
            "command": [
                "sh",
                "-c",
                'cat > "$DIR/restored"; printf "%s %s %s %s" "$COZY_RESTORE_MODE" '
                '"$COZY_SOURCE_NAME" "$COZY_APP_NAME" "$COZY_STREAM" > "$DIR/mode"',
            ],
            "env": {"DIR": "${connection.dir}"},
        },
    }
    plat = platform(tmp_path, params)
    ref, d = thing(plat, tmp_path)
    copy_ref, copy_dir = thing(plat, tmp_path, "copy")
    job = plat.backup(NS, ref, "b1", "things")
    assert job.status.phase == "Succeeded", job.status.message
    assert TOKEN not in (d / "cmdline").read_text()  # credentials never on a command line
    assert "thing.db.internal:7000" in (d / "cmdline").read_text()

    restore = plat.restore(NS, "b1", "r1", target=copy_ref)
    assert restore.status.phase == "Succeeded", restore.status.message
    fields = (copy_dir / "restored").read_text().split("|")
    assert fields[:-1] == [
        "thing.db.internal:7000",
        "thing/tenant-a/Thing/apps.example.com/${lit}/$HOME",  # $${ escapes; $ alone is literal
        f"t={TOKEN}",  # a command's own env wins over the shared env
        "h=thing.db.internal",
        TOKEN,
        "svc",
        "thing.db.internal",
        "7000",
        "thing",
        NS,
        "Thing",
        GROUP,
        "data",
        "shared-thing",
    ]
    assert (copy_dir / "mode").read_text() == "ToCopy thing copy data"
    # The restore ran with the target's coordinates, not the source's.
    assert not (d / "restored").exists()
    assert plat.backups(NS)[0].spec.driver_metadata == {"tool": "sh"}
    # The manifest records the parameters as written: templates, never rendered secrets.
    assert TOKEN not in json.dumps(manifest(plat))
    assert TOKEN not in plat.tenant_view(NS)


def test_a_restore_in_place_sees_in_place(tmp_path: Path) -> None:
    params = {
        "backup": {"command": ["printf", "payload"]},
        "restore": {
            "command": [
                "sh",
                "-c",
                'cat > "$DIR/restored"; echo "$COZY_RESTORE_MODE" > "$DIR/mode"',
            ],
            "env": {"DIR": "${connection.dir}"},
        },
    }
    plat = platform(tmp_path, params)
    ref, d = thing(plat, tmp_path)
    assert plat.backup(NS, ref, "b1", "things").status.phase == "Succeeded"
    job = plat.restore(NS, "b1", "r1")
    assert job.status.phase == "Succeeded", job.status.message
    assert (d / "restored").read_text() == "payload"
    assert (d / "mode").read_text() == "InPlace\n"


# ------------------------------------------------------------------ failures


def test_command_not_found_fails_cleanly(tmp_path: Path) -> None:
    plat = platform(
        tmp_path, {"backup": {"command": ["/nonexistent/cozy-no-such-dump"]}, "restore": CAT}
    )
    ref, _ = thing(plat, tmp_path)
    job = plat.backup(NS, ref, "b1", "things")
    assert job.status.phase == "Failed"
    assert job.status.conditions[0].reason == "DriverFailed"
    assert job.status.message == "the backup command could not be started on the backup worker"
    assert_nothing_committed(plat)
    assert "/nonexistent" not in plat.tenant_view(NS)


def test_non_zero_exit_mid_stream_commits_nothing_and_leaks_no_stderr(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    script = (
        "head -c 3000000 /dev/urandom; "
        'echo "pg_dump: error: connection to $COZY_CONN_HOST failed: STDERR-MARKER-5521" >&2; '
        "exit 3"
    )
    plat = platform(tmp_path, {"backup": {"command": ["sh", "-c", script]}, "restore": CAT})
    ref, _ = thing(plat, tmp_path)
    with caplog.at_level(logging.WARNING):
        job = plat.backup(NS, ref, "b1", "things")
    assert job.status.phase == "Failed"
    assert job.status.conditions[0].reason == "DriverFailed"
    assert job.status.message == "the backup command failed with exit status 3"
    assert_nothing_committed(plat)
    view = plat.tenant_view(NS)
    assert "STDERR-MARKER-5521" not in view and "db.internal" not in view
    # ... but the operator finds the tool's stderr and the application in the log.
    assert "STDERR-MARKER-5521" in caplog.text
    assert "Thing" in caplog.text


def test_restore_command_failure_is_reported_without_stderr(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    fail = {"command": ["sh", "-c", "cat > /dev/null; echo RESTORE-MARKER-8812 >&2; exit 4"]}
    plat = platform(
        tmp_path, {"backup": {"command": ["head", "-c", "500000", "/dev/urandom"]}, "restore": fail}
    )
    ref, _ = thing(plat, tmp_path)
    assert plat.backup(NS, ref, "b1", "things").status.phase == "Succeeded"
    with caplog.at_level(logging.WARNING):
        job = plat.restore(NS, "b1", "r1")
    assert job.status.phase == "Failed"
    assert job.status.conditions[0].reason == "DriverFailed"
    assert job.status.message == "the restore command failed with exit status 4"
    assert "RESTORE-MARKER-8812" not in plat.tenant_view(NS)
    assert "RESTORE-MARKER-8812" in caplog.text


def test_a_restore_command_that_stops_reading_early_fails(tmp_path: Path) -> None:
    plat = platform(
        tmp_path,
        {
            "backup": {"command": ["head", "-c", "4000000", "/dev/urandom"]},
            "restore": {"command": ["true"]},
        },
    )
    ref, _ = thing(plat, tmp_path)
    assert plat.backup(NS, ref, "b1", "things").status.phase == "Succeeded"
    job = plat.restore(NS, "b1", "r1")
    assert job.status.phase == "Failed"
    assert "without reading the whole backup" in (job.status.message or "")


def _pids_gone(pidfile: Path) -> list[int]:
    pids = [int(p) for p in pidfile.read_text().split()]
    assert len(pids) == 2
    for _ in range(100):
        alive = []
        for pid in pids:
            try:
                stat = Path(f"/proc/{pid}/stat").read_text()
            except OSError:
                continue
            if stat.rsplit(")", 1)[-1].split()[0] != "Z":
                alive.append(pid)
        if not alive:
            return pids
        time.sleep(0.05)
    raise AssertionError(f"processes still running after the deadline: {alive}")


HANG: dict[str, Any] = {
    "command": [
        "sh",
        "-c",
        'echo $$ > "$DIR/pids"; sleep 60 & echo $! >> "$DIR/pids"; printf started; wait',
    ],
    "env": {"DIR": "${connection.dir}"},
}


def test_class_timeout_kills_the_whole_process_group(tmp_path: Path) -> None:
    plat = platform(tmp_path, {"timeoutSeconds": 1, "backup": HANG, "restore": CAT})
    ref, d = thing(plat, tmp_path)
    started = time.monotonic()
    job = plat.backup(NS, ref, "b1", "things")
    assert time.monotonic() - started < 15
    assert job.status.phase == "Failed"
    assert job.status.conditions[0].reason == "DeadlineExceeded"
    assert job.status.message == (
        "the backup command ran longer than the BackupClass allows (1s) and was stopped"
    )
    _pids_gone(d / "pids")  # the shell and its background child
    assert_nothing_committed(plat)


def test_job_deadline_kills_the_whole_process_group(tmp_path: Path) -> None:
    plat = platform(
        tmp_path, {"timeoutSeconds": 600, "backup": HANG, "restore": CAT}, backup_timeout=1.5
    )
    ref, d = thing(plat, tmp_path)
    job = plat.backup(NS, ref, "b1", "things")
    assert job.status.phase == "Failed"
    assert job.status.conditions[0].reason == "DeadlineExceeded"
    assert "ran past the job's deadline" in (job.status.message or "")
    _pids_gone(d / "pids")
    assert_nothing_committed(plat)


def test_restore_timeout_kills_the_restore_command(tmp_path: Path) -> None:
    hang = {"command": ["sh", "-c", HANG["command"][2] + "; cat > /dev/null"], "env": HANG["env"]}
    plat = platform(
        tmp_path, {"timeoutSeconds": 1, "backup": {"command": ["printf", "x"]}, "restore": hang}
    )
    ref, d = thing(plat, tmp_path)
    assert plat.backup(NS, ref, "b1", "things").status.phase == "Succeeded"
    job = plat.restore(NS, "b1", "r1")
    assert job.status.conditions[0].reason == "DeadlineExceeded"
    assert "restore command ran longer" in (job.status.message or "")
    _pids_gone(d / "pids")


def test_missing_connection_key_fails_before_running(tmp_path: Path) -> None:
    params = {
        "backup": {
            "command": [
                "sh",
                "-c",
                'touch "$0/ran"',
                "${connection.dir}",
                "--db=${connection.database}",
            ]
        },
        "restore": CAT,
    }
    plat = platform(tmp_path, params)
    ref, d = thing(plat, tmp_path)
    job = plat.backup(NS, ref, "b1", "things")
    assert job.status.phase == "Failed"
    assert job.status.message == (
        "the application is missing a setting the backup command needs "
        "(connection key 'database'); ask the platform operator"
    )
    assert not (d / "ran").exists()
    assert_nothing_committed(plat)


# ------------------------------------------------------------------ capabilities per class


def test_in_place_restore_can_be_switched_off(tmp_path: Path) -> None:
    restore = {
        "command": ["sh", "-c", 'touch "$DIR/ran"; cat > "$DIR/restored"'],
        "env": {"DIR": "${connection.dir}"},
    }
    plat = platform(
        tmp_path,
        {"inPlaceRestore": False, "backup": {"command": ["printf", "x"]}, "restore": restore},
    )
    ref, d = thing(plat, tmp_path)
    copy_ref, copy_dir = thing(plat, tmp_path, "copy")
    assert plat.backup(NS, ref, "b1", "things").status.phase == "Succeeded"
    job = plat.restore(NS, "b1", "r1")
    assert job.status.phase == "Failed"
    assert job.status.conditions[0].reason == "Unsupported"
    assert "cannot restore in place" in (job.status.message or "")
    assert not (d / "ran").exists()
    assert plat.restore(NS, "b1", "r2", target=copy_ref).status.phase == "Succeeded"
    assert (copy_dir / "restored").read_text() == "x"


def test_to_copy_restore_can_be_switched_off(tmp_path: Path) -> None:
    plat = platform(
        tmp_path, {"toCopyRestore": False, "backup": {"command": ["printf", "x"]}, "restore": CAT}
    )
    ref, d = thing(plat, tmp_path)
    copy_ref, copy_dir = thing(plat, tmp_path, "copy")
    assert plat.backup(NS, ref, "b1", "things").status.phase == "Succeeded"
    job = plat.restore(NS, "b1", "r1", target=copy_ref)
    assert job.status.conditions[0].reason == "Unsupported"
    assert not (copy_dir / "restored").exists()
    assert plat.restore(NS, "b1", "r2").status.phase == "Succeeded"
    assert (d / "restored").read_text() == "x"


# ------------------------------------------------------------------ versions, streams


def test_version_command_is_recorded_for_the_operator_only(tmp_path: Path) -> None:
    params = {
        "versionCommand": [
            "sh",
            "-c",
            "echo; echo 'dumper 4.2.1 (build 7)'; head -c 5000000 /dev/zero",
        ],
        "stream": "dump.bin",
        "backup": {"command": ["printf", "x"]},
        "restore": CAT,
    }
    plat = platform(tmp_path, params)
    ref, _ = thing(plat, tmp_path)
    assert plat.backup(NS, ref, "b1", "things").status.phase == "Succeeded"
    m = manifest(plat)
    assert m["toolVersions"] == {"sh": "dumper 4.2.1 (build 7)"}
    assert [s["name"] for s in m["streams"]] == ["dump.bin"]
    assert "dumper 4.2.1" not in plat.tenant_view(NS)


def test_a_failing_version_command_does_not_fail_the_backup(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    params = {
        "versionCommand": ["/nonexistent/tool", "--version"],
        "backup": {"command": ["printf", "x"]},
        "restore": CAT,
    }
    plat = platform(tmp_path, params)
    ref, _ = thing(plat, tmp_path)
    with caplog.at_level(logging.WARNING):
        assert plat.backup(NS, ref, "b1", "things").status.phase == "Succeeded"
    assert manifest(plat).get("toolVersions", {}) == {}
    assert "versionCommand failed" in caplog.text


def test_restore_after_the_class_renamed_its_stream(tmp_path: Path) -> None:
    params: dict[str, Any] = {
        "stream": "old",
        "backup": {"command": ["printf", "x"]},
        "restore": CAT,
    }
    plat = platform(tmp_path, params)
    ref, d = thing(plat, tmp_path)
    assert plat.backup(NS, ref, "b1", "things").status.phase == "Succeeded"
    plat.apply(job_class({**params, "stream": "new"}))
    job = plat.restore(NS, "b1", "r1")
    assert job.status.phase == "Succeeded", job.status.message
    assert (d / "restored").read_text() == "x"


# ------------------------------------------------------------------ apply-time validation

OK_BACKUP = {"command": ["dump"]}
OK_RESTORE = {"command": ["load"]}
P = "spec.strategies[0].parameters"


@pytest.mark.parametrize(
    ("params", "path", "fragment"),
    [
        ({"restore": OK_RESTORE}, f"{P}.backup", "required"),
        (
            {"backup": {"command": []}, "restore": OK_RESTORE},
            f"{P}.backup.command",
            "must name a program",
        ),
        (
            {"backup": {"command": "pg_dump -Fc"}, "restore": OK_RESTORE},
            f"{P}.backup.command",
            "expected a list",
        ),
        (
            {"backup": {"command": ["${connection.bin}"]}, "restore": OK_RESTORE},
            f"{P}.backup.command[0]",
            "without placeholders",
        ),
        (
            {
                "backup": {"command": ["dump", "--password=${credentials.password}"]},
                "restore": OK_RESTORE,
            },
            f"{P}.backup.command[1]",
            "credentials may only be passed in env",
        ),
        (
            {"backup": {"command": ["dump", "${connection.host"]}, "restore": OK_RESTORE},
            f"{P}.backup.command[1]",
            "unterminated placeholder",
        ),
        (
            {"backup": {"command": ["dump", "${conection.host}"]}, "restore": OK_RESTORE},
            f"{P}.backup.command[1]",
            "unknown placeholder ${conection.host}",
        ),
        (
            {"backup": {"command": ["dump", "${app.uid}"]}, "restore": OK_RESTORE},
            f"{P}.backup.command[1]",
            "the app fields are name, namespace, kind, apiGroup",
        ),
        (
            {"backup": {"command": ["dump", "${HOME}"]}, "restore": OK_RESTORE},
            f"{P}.backup.command[1]",
            "write $${ for a literal ${",
        ),
        (
            {"backup": OK_BACKUP, "restore": {"command": ["load", "${connection.a b}"]}},
            f"{P}.restore.command[1]",
            "does not name a valid connection key",
        ),
        (
            {"backup": OK_BACKUP, "restore": {"command": ["load", "a\x00b"]}},
            f"{P}.restore.command[1]",
            "NUL",
        ),
        (
            {"backup": OK_BACKUP, "restore": OK_RESTORE, "env": {"PGPASS": "${credentials}"}},
            f"{P}.env.PGPASS",
            "unknown placeholder",
        ),
        (
            {"backup": OK_BACKUP, "restore": OK_RESTORE, "env": {"COZY_APP_NAME": "x"}},
            f"{P}.env.COZY_APP_NAME",
            "set by the driver",
        ),
        (
            {"backup": {"command": ["dump"], "env": {"BAD-NAME": "x"}}, "restore": OK_RESTORE},
            f"{P}.backup.env",
            "not a valid environment variable name",
        ),
        (
            {"backup": OK_BACKUP, "restore": OK_RESTORE, "env": {"PGPORT": 5432}},
            f"{P}.env",
            "keys and values must be strings",
        ),
        (
            {"backup": OK_BACKUP, "restore": OK_RESTORE, "timeoutSeconds": 0},
            f"{P}.timeoutSeconds",
            "must be between 1 and 604800",
        ),
        (
            {"backup": OK_BACKUP, "restore": OK_RESTORE, "stream": "../x"},
            f"{P}.stream",
            "not a valid stream name",
        ),
        (
            {
                "backup": OK_BACKUP,
                "restore": OK_RESTORE,
                "inPlaceRestore": False,
                "toCopyRestore": False,
            },
            f"{P}.toCopyRestore",
            "cannot both be false",
        ),
        (
            {"backup": OK_BACKUP, "restore": OK_RESTORE, "image": "bad image"},
            f"{P}.image",
            "not a container image reference",
        ),
        (
            {"backup": OK_BACKUP, "restore": OK_RESTORE, "versionCommand": []},
            f"{P}.versionCommand",
            "must name a program",
        ),
    ],
)
def test_bad_parameters_are_refused_at_apply_with_the_field_path(
    params: dict[str, Any], path: str, fragment: str
) -> None:
    catalog = Catalog.build(PluginHost.load(entry_points=False, plugins=[_Plugin()]).registry)
    [bc] = load_yaml(job_class(params))
    with pytest.raises(DriverParametersError) as err:
        catalog.validate(bc)
    found = [(p, m) for p, m in err.value.problems if p == path and fragment in m]
    assert found, err.value.problems


def test_every_problem_is_reported_once() -> None:
    catalog = Catalog.build(PluginHost.load(entry_points=False, plugins=[_Plugin()]).registry)
    [bc] = load_yaml(
        job_class(
            {
                "env": {"COZY_X": "1"},
                "backup": {"command": []},
                "restore": {"command": ["x", "${app.x}"]},
            }
        )
    )
    with pytest.raises(DriverParametersError) as err:
        catalog.validate(bc)
    assert [p for p, _ in err.value.problems] == [
        f"{P}.backup.command",
        f"{P}.env.COZY_X",
        f"{P}.restore.command[1]",
    ]


class _Plugin:
    from cozybackup_core import hookimpl

    @hookimpl
    def cozybackup_register_drivers(self, registry: Any) -> None:
        registry.add(JobDriver)


# ------------------------------------------------------------------ any kind


def test_the_job_strategy_binds_to_any_kind() -> None:
    registry = PluginHost.load(entry_points=False, plugins=[_Plugin()]).registry
    catalog = Catalog.build(registry)
    params = {"backup": OK_BACKUP, "restore": OK_RESTORE}
    for group, kind in [
        ("apps.example.com", "Redis"),
        ("apps.cozystack.io", "Postgres"),
        ("db.acme.io", "Anything2"),
    ]:
        [bc] = load_yaml(job_class(params, name=kind.lower(), kind=kind).replace(GROUP, group))
        catalog.validate(bc)
        catalog.classes[bc.metadata.name] = bc
        resolved = catalog.resolve(
            kind.lower(), ApplicationRef(api_group=group, kind=kind, name="x")
        )
        assert resolved.driver.name == "job"
        assert isinstance(resolved.parameters, JobParameters)
    assert JobDriver.serves(GroupKind(api_group="x.io", kind="Y"))


# ------------------------------------------------------------------ the template language


def _app(**connection: Any) -> AppLocation:
    return AppLocation(
        ref=ApplicationRef(api_group=GROUP, kind="Thing", name="t1"),
        namespace=NS,
        connection=connection,
        credentials={"password": "pw"},
    )


def test_template_rendering() -> None:
    app = _app(host="h", port=5432, tls=True, nested={"a": 1})
    assert render(parse("${connection.host}:${connection.port}", ARGV), app) == "h:5432"
    assert render(parse("${ connection.tls }/$${x}/$y/${app.namespace}", ARGV), app) == (
        "true/${x}/$y/tenant-a"
    )
    assert render(parse("${credentials.password}", ENV), app) == "pw"
    assert parse("a${app.name}b", ARGV) == ("a", Ref("app", "name"), "b")
    for bad in ("${connection.nested}", "${connection.missing}"):
        with pytest.raises(LookupError):
            render(parse(bad, ARGV), app)
    with pytest.raises(TemplateError):
        parse("${credentials.password}", ARGV)


@given(st.text().filter(lambda s: "${" not in s and "\x00" not in s))
def test_text_without_placeholders_is_literal(text: str) -> None:
    assert render(parse(text, ARGV), _app()) == text


@given(st.text(alphabet=st.sampled_from("${}.ab \\"), max_size=30))
def test_the_parser_never_crashes(text: str) -> None:
    try:
        parts = parse(text, ENV)
    except TemplateError:
        return
    assert all(isinstance(p, (str, Ref)) for p in parts)


def test_drivers_environment_variables_cannot_carry_nul(tmp_path: Path) -> None:
    # A NUL in a connection value would make exec fail: such values are left out of the
    # COZY_CONN_* variables rather than breaking every command.
    plat = platform(
        tmp_path,
        {
            "backup": {"command": ["sh", "-c", 'printf "%s" "$${COZY_CONN_ODD-unset}"']},
            "restore": CAT,
        },
    )
    d = tmp_path / "apps" / "odd"
    d.mkdir(parents=True)
    ref = plat.declare_app(NS, "odd", "Thing", {"dir": str(d), "odd": "a\x00b"}, api_group=GROUP)
    job = plat.backup(NS, ref, "b1", "things")
    assert job.status.phase == "Succeeded", job.status.message
    assert plat.restore(NS, "b1", "r1").status.phase == "Succeeded"
    assert (d / "restored").read_text() == "unset"
    assert os.environ.get("COZY_CONN_ODD") is None


def test_the_readme_example_class_is_valid() -> None:
    text = (Path(__file__).parent.parent / "README.md").read_text()
    block = text.split("```yaml\n", 1)[1].split("```", 1)[0]
    [bc] = load_yaml(block)
    catalog = Catalog.build(PluginHost.load(entry_points=False, plugins=[_Plugin()]).registry)
    catalog.validate(bc)
    catalog.classes[bc.metadata.name] = bc
    for group, kind in [("apps.cozystack.io", "Postgres"), ("apps.example.com", "SQLiteFile")]:
        resolved = catalog.resolve("pg-job", ApplicationRef(api_group=group, kind=kind, name="a"))
        assert resolved.driver.name == "job"


def test_with_an_image_the_command_is_declared_for_a_container_beside_the_worker() -> None:
    """What a Kubernetes host runs in the class's image: the command rendered for the
    application, its environment (with the application's credentials, which the host
    passes through the job's Secret), never the worker's own environment."""
    params = JobParameters(
        image="registry.example.com/tools/pg:15",
        env={"PGPASSWORD": "${credentials.password}"},
        backup=Command(command=("pg_dump", "--host=${connection.host}")),
        restore=Command(command=("pg_restore", "--host=${connection.host}")),
    )
    app = AppLocation(
        ref=ApplicationRef(api_group=GROUP, kind="Thing", name="db"),
        namespace=NS,
        connection={"host": "db.internal"},
        credentials={"password": TOKEN},
    )
    driver = JobDriver()
    made = driver.tool_container(params, ToolRequest(io="out", application=app))
    assert made is not None and made.image == "registry.example.com/tools/pg:15"
    assert made.argv == ("pg_dump", "--host=db.internal")
    assert made.env["PGPASSWORD"] == TOKEN and made.env["COZY_STREAM"] == "data"
    assert "AWS_SECRET_ACCESS_KEY" not in made.env
    local = attrs.evolve(params, image=None)
    assert driver.tool_container(local, ToolRequest(io="out", application=app)) is None

    back = driver.tool_container(
        params,
        ToolRequest(
            io="in",
            application=app,
            in_place=False,
            source=ApplicationRef(api_group=GROUP, kind="Thing", name="orig"),
            taken_at=dt.datetime(2026, 12, 6, 2, 0, tzinfo=dt.timezone.utc),
        ),
    )
    assert back is not None and back.argv == ("pg_restore", "--host=db.internal")
    assert back.env["COZY_RESTORE_MODE"] == "ToCopy" and back.env["COZY_SOURCE_NAME"] == "orig"
