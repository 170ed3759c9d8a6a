"""The driver kit: standard errors, connection-key readers, tighter deadlines."""

from __future__ import annotations

import time

import attrs
import pytest

from cozybackup_core import (
    APPS_GROUP,
    ApplicationMisconfigured,
    ApplicationRef,
    BackupContext,
    CredentialsRejected,
    DatabaseUnavailable,
    Deadline,
    Driver,
    GroupKind,
    MissingPrivilege,
    NoParameters,
    PermanentError,
    RestoreContext,
    TransientError,
    connection_argv,
    connection_str,
    distribution_version,
    misconfigured,
)

REF = ApplicationRef(kind="Postgres", name="db1")


def test_standard_errors_say_whether_to_retry() -> None:
    assert issubclass(DatabaseUnavailable, TransientError)
    for cls in (ApplicationMisconfigured, CredentialsRejected, MissingPrivilege):
        assert issubclass(cls, PermanentError)
    reasons = {c.reason for c in (ApplicationMisconfigured, CredentialsRejected, MissingPrivilege)}
    assert reasons == {"ApplicationMisconfigured", "CredentialsRejected", "MissingPrivilege"}


def test_misconfigured_keeps_the_detail_for_the_operator() -> None:
    exc = misconfigured(REF, "connection key 'host' is missing (/etc/secret)", "this etcd cluster")
    assert exc.message.startswith("this etcd cluster's connection settings")
    assert "/etc/secret" not in exc.message and "host" not in exc.message
    assert exc.admin_detail == "Postgres db1: connection key 'host' is missing (/etc/secret)"


@pytest.mark.parametrize("bad", ["", "two\nlines", "nul\x00", 5, ["a"]])
def test_connection_str_refuses_what_is_not_one_line(bad: object) -> None:
    with pytest.raises(ApplicationMisconfigured) as err:
        connection_str(REF, {"host": bad}, "host")
    assert err.value.admin_detail is not None and "'host'" in err.value.admin_detail


def test_connection_readers_pass_good_values_and_absent_keys() -> None:
    assert connection_str(REF, {"host": "db.svc"}, "host") == "db.svc"
    assert connection_str(REF, {}, "host") is None
    assert connection_argv(REF, {"stop": ["systemctl", "stop", ""]}, "stop") == (
        "systemctl",
        "stop",
        "",
    )
    assert connection_argv(REF, {}, "stop") is None
    for bad in ([], "systemctl stop", ["a", 1], ["a\x00"]):
        with pytest.raises(ApplicationMisconfigured):
            connection_argv(REF, {"stop": bad}, "stop")


def test_tighter_takes_the_earlier_deadline() -> None:
    outer = Deadline.after(3600)
    assert outer.tighter(None) is outer
    assert outer.tighter(7200) is outer
    inner = outer.tighter(10)
    assert inner.at < outer.at
    assert 9 < inner.at - time.monotonic() <= 10


def test_a_driver_says_its_parameters_and_kinds_once() -> None:
    @attrs.frozen
    class Params:
        jobs: int = 1

    class Once(Driver[Params]):
        name = "once"
        strategy_kind = "Once"
        default_kinds = ("Once", "Twice")

        def backup(self, ctx: BackupContext[Params]) -> None: ...
        def restore(self, ctx: RestoreContext[Params]) -> None: ...

    class Explicit(Once):
        kinds = (GroupKind(api_group="example.org", kind="Other"),)
        parameters_type = NoParameters

    assert Once.parameters_type is Params
    assert Once.kinds == (GroupKind(kind="Once"), GroupKind(kind="Twice"))
    assert Once.serves(GroupKind(api_group=APPS_GROUP, kind="Twice"))
    assert Explicit.parameters_type is NoParameters
    assert Explicit.kinds == (GroupKind(api_group="example.org", kind="Other"),)


def test_distribution_version_of_an_installed_and_a_missing_package() -> None:
    assert distribution_version("attrs") == attrs.__version__
    assert distribution_version("no-such-cozybackup-driver") == "0.0.0+unknown"
