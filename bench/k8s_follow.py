"""Kubernetes follow: memory and CPU of poolworker following 1,000 Jobs at once.

A real Prefect server holds a Kubernetes pool and N flow runs due at once; poolworker (type
kubernetes) talks to the standalone fake API server (`fake_kube`, tests/fakes) through a
kubeconfig. The deployment's job variables annotate each Job with `fake-kube/script: hold`, so
the fake's pods go Pending -> Running and stay there: poolworker creates N Jobs and then follows
all of them through its shared watch (one list+watch of Jobs and one of Pods per namespace).

Reported, once all N Jobs exist and poolworker has followed them for a settling period:
  * poolworker's resident memory (its process alone);
  * its CPU use (user+system) per second over a measuring window while the Jobs run;
  * its open file descriptors: the shared watches (2) plus, with stream_output, one followed
    log per running pod;
  * the time from the runs' scheduled time to the N-th Job's creation.

  POOLWORKER_BIN=build/bin/poolworker <venv>/bin/python bench/k8s_follow.py [--runs 1000]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from dispatch import create_runs, start_worker, stop  # noqa: E402
from idle_startup import CLOCK_TICKS, REPO, VENV_BIN, rss_kib, start_server  # noqa: E402

CREATE_POOL = r"""
import sys
from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import WorkPoolCreate
from prefect_kubernetes.worker import KubernetesWorker
template = KubernetesWorker.get_default_base_job_template()
# Every Job of the bench is held Running by the fake's kubelet.
template["variables"]["properties"]["annotations"]["default"] = {"fake-kube/script": "hold"}
# With stream_output each running pod's log is followed: one connection per pod.
template["variables"]["properties"]["stream_output"]["default"] = sys.argv[2] == "1"
with get_client(sync_client=True) as client:
    client.create_work_pool(WorkPoolCreate(name=sys.argv[1], type="kubernetes",
                                           base_job_template=template))
"""


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def count_jobs(port: int) -> int:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/apis/batch/v1/namespaces/default/jobs",
        headers={"Authorization": "Bearer fake-kube-token"})
    with urllib.request.urlopen(request, timeout=30) as answer:
        return len(json.load(answer)["items"])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=1000)
    parser.add_argument("--settle-seconds", type=float, default=10)
    parser.add_argument("--measure-seconds", type=float, default=30)
    parser.add_argument("--no-stream-output", action="store_true",
                        help="pool default stream_output=false: no per-pod log connections")
    args = parser.parse_args()
    poolworker = os.environ.get("POOLWORKER_BIN", str(REPO / "build" / "bin" / "poolworker"))
    fake_bin = os.environ.get("POOLWORKER_FAKE_KUBE", str(Path(poolworker).parent / "fake_kube"))
    work = Path(tempfile.mkdtemp(prefix="k8s-follow-"))
    server, port = start_server(work)
    fake = None
    worker = None
    try:
        kubeconfig = work / "kubeconfig"
        fake = subprocess.Popen([fake_bin, "--kubeconfig", str(kubeconfig)],
                                stdout=subprocess.PIPE, stderr=open(work / "fake.log", "wb"),
                                start_new_session=True)
        fake_port = int(fake.stdout.readline().split()[1])
        env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
        env.update(PREFECT_API_URL=f"http://127.0.0.1:{port}/api",
                   PREFECT_HOME=str(work / "client-home"), PREFECT_WORKER_QUERY_SECONDS="1",
                   KUBECONFIG=str(kubeconfig))
        pool = "k8s-follow"
        subprocess.run([str(VENV_BIN / "python"), "-c", CREATE_POOL, pool,
                        "0" if args.no_stream_output else "1"], env=env, check=True)
        worker = start_worker("poolworker", ["--pool", pool, "--type", "kubernetes",
                                             "--prefetch-seconds", "0"],
                              env, work / "worker.log", poolworker, work / "state")
        created = create_runs(env, pool, args.runs, 15.0, "prefect flow-run execute")
        deadline = time.time() + 900
        while time.time() < deadline and count_jobs(fake_port) < args.runs:
            time.sleep(1)
        all_created = time.time()
        jobs = count_jobs(fake_port)
        time.sleep(args.settle_seconds)
        cpu_before = cpu_seconds(worker.pid)
        time.sleep(args.measure_seconds)
        cpu_after = cpu_seconds(worker.pid)
        rss = rss_kib([worker.pid])
        open_fds = len(os.listdir(f"/proc/{worker.pid}/fd"))
        result = {
            "runs": args.runs,
            "jobs_created": jobs,
            "seconds_scheduled_to_last_job": round(all_created - created["scheduled"], 1),
            "worker_rss_kib": rss,
            "worker_cpu_percent_while_following": round(
                100 * (cpu_after - cpu_before) / args.measure_seconds, 2),
            "worker_open_fds": open_fds,
            "stream_output": not args.no_stream_output,
        }
        print(json.dumps(result, indent=2))
    finally:
        if worker is not None:
            stop(worker)
        if fake is not None:
            fake.terminate()
            fake.wait(timeout=30)
        stop(server)


if __name__ == "__main__":
    main()
