"""Logical mode keeps the corpus exactly, or says at backup time what it cannot keep."""

from __future__ import annotations

from pathlib import Path

import pytest
from corpus import (
    CHARSET_TABLE,
    CONFLICTS,
    CORPUS,
    EMOJI_MEMBER_TABLE,
    FLOAT_TABLE,
    NOT_EXACT,
    describe,
)
from test_mariadb import NS, assert_no_secrets, declare, make_platform

from cozybackup_core.testing import LocalPlatform

from conftest import ServerFactory, connection, credentials


def _warnings(plat: LocalPlatform) -> list[str]:
    described = plat.backups(NS)[0].status.underlying_resources or {}
    return [w["message"] for w in described.get("warnings", [])]


@pytest.mark.parametrize("where", ["in_place", "to_copy"])
def test_the_corpus_round_trips_exactly(
    mariadb: ServerFactory, tmp_path: Path, where: str, caplog: pytest.LogCaptureFixture
) -> None:
    plat = make_platform(tmp_path)
    src = mariadb()
    src.sql(CORPUS)
    before = describe(src)
    job = plat.backup(NS, declare(plat, "corpus", src), "b1", "maria-logical")
    assert job.status.phase == "Succeeded", job.status.message

    # Said when the backup is made: what logical mode cannot keep, and the way out.
    warnings = _warnings(plat)
    [floats] = [w for w in warnings if "FLOAT" in w]
    assert "`corpus`.`floats`.`f`" in floats and "`corpus`.`floats`.`fu`" in floats
    assert "physical mode" in floats
    [members] = [w for w in warnings if "4-byte UTF-8" in w]
    assert "`corpus`.`emoji_members`" in members and "physical mode" in members
    assert "`corpus`.`texts`" not in members
    [charsets] = [w for w in warnings if "character sets" in w]
    for column in ("sj", "b5", "cz", "cp"):
        assert f"`corpus`.`legacy_charsets`.`{column}`" in charsets
    assert "`texts`" not in charsets  # latin1 and latin2 come back byte for byte
    assert len(warnings) == 3, warnings  # history is kept: no warning about it
    assert not [w for w in warnings if "v_legacy" in w]  # a view holds no data

    if where == "in_place":
        src.sql(
            "DROP DATABASE corpus; ALTER USER 'app'@'%' IDENTIFIED BY 'changed';"
            "DROP USER 'tls'@'%'; DROP ROLE writer; REVOKE ALL ON `données ü`.`tàble` "
            "FROM 'locked'@'10.%'; CREATE USER 'later'@'%';"
        )
        target, job = src, plat.restore(NS, "b1", "r1")
    else:
        target = mariadb()
        target.sql(CONFLICTS)
        job = plat.restore(NS, "b1", "r1", target=declare(plat, "copy", target))
    assert job.status.phase == "Succeeded", job.status.message
    after = describe(target)

    exact = {k: v for k, v in before.items() if k not in NOT_EXACT}
    # Accounts made after the backup (in place) or only on the copy stay as they are.
    after["accounts"] = [a for a in after["accounts"] if a[0] not in ("later", "bystander")]
    differing = {k: (v, after.get(k)) for k, v in exact.items() if after.get(k) != v}
    assert differing == {}, "\n".join(f"{k}:\n  {b}\n  {a}" for k, (b, a) in differing.items())
    # What the warnings named did change, so they were needed.
    assert after[FLOAT_TABLE] != before[FLOAT_TABLE]
    assert after[EMOJI_MEMBER_TABLE] != before[EMOJI_MEMBER_TABLE]
    assert after[CHARSET_TABLE] != before[CHARSET_TABLE]
    # The values the server changed on the way in are counted for the platform's admin.
    assert "values other than the backup held" in caplog.text
    assert "Data truncated for column 'e'" in caplog.text
    # ... and for the tenant, on the RestoreJob.
    assert (job.status.message or "").endswith("warning: see the events)")
    [told] = [e for e in plat.host.events(NS, name="r1") if e["reason"] == "RestoreNotExact"]
    assert "values other than the backup held" in told["message"]
    # Accounts that are not in the backup are left alone, roles they hold included.
    if where == "to_copy":
        assert "GRANT `reader` TO `bystander`@`%`" in after["account bystander@%"][1]
    else:
        assert "account later@%" in after
    # The objects work for the accounts that own them.
    assert target.rows("SELECT corpus.ansi_fn(), corpus.invoker_fn(21)") == [["ab", "42"]]
    assert target.rows("SELECT COUNT(*) FROM corpus.v_invoker") == [["2"]]
    assert_no_secrets(plat, src, target)


def test_transaction_precise_history_is_said_to_be_missing(
    mariadb: ServerFactory, tmp_path: Path
) -> None:
    plat = make_platform(tmp_path)
    src = mariadb()
    src.sql(
        "CREATE DATABASE h;"
        "CREATE TABLE h.by_time (x INT) WITH SYSTEM VERSIONING;"
        "CREATE TABLE h.by_trx (x INT, s BIGINT UNSIGNED GENERATED ALWAYS AS ROW START,"
        " e BIGINT UNSIGNED GENERATED ALWAYS AS ROW END, PERIOD FOR SYSTEM_TIME (s, e))"
        " ENGINE = InnoDB WITH SYSTEM VERSIONING;"
        "INSERT INTO h.by_time VALUES (1); UPDATE h.by_time SET x = 2;"
        "INSERT INTO h.by_trx (x) VALUES (1); UPDATE h.by_trx SET x = 2;"
    )
    job = plat.backup(NS, declare(plat, "h", src), "b1", "maria-logical")
    assert job.status.phase == "Succeeded", job.status.message
    [warning] = _warnings(plat)
    assert "history of system-versioned tables is not in this backup" in warning
    assert "`h`.`by_trx` use transaction-precise versioning" in warning
    assert "`h`.`by_time`" in warning and "physical mode" in warning
    dst = mariadb()
    job = plat.restore(NS, "b1", "r1", target=declare(plat, "copy", dst))
    assert job.status.phase == "Succeeded", job.status.message
    assert dst.rows("SELECT x FROM h.by_time") == [["2"]]
    assert dst.rows("SELECT COUNT(*) FROM h.by_time FOR SYSTEM_TIME ALL") == [["1"]]


def test_physical_mode_keeps_even_what_logical_mode_cannot(
    mariadb: ServerFactory, tmp_path: Path
) -> None:
    """The warnings point to physical mode: it brings the whole corpus back exactly."""
    plat = make_platform(tmp_path)
    src = mariadb()
    src.sql(CORPUS)
    before = describe(src)
    ref = declare(plat, "corpus", src, datadir=str(src.datadir))
    job = plat.backup(NS, ref, "b1", "maria-physical")
    assert job.status.phase == "Succeeded", job.status.message
    assert _warnings(plat) == []
    fresh = mariadb(started=False, empty=True)
    target = plat.declare_app(
        NS, "fresh", "MariaDB", connection(fresh, datadir=str(fresh.datadir)), credentials()
    )
    job = plat.restore(NS, "b1", "r1", target=target)
    assert job.status.phase == "Succeeded", job.status.message
    fresh.start()
    after = describe(fresh)
    assert {k for k in before if before[k] != after.get(k)} == set()
    assert all(table in after for table in NOT_EXACT)
