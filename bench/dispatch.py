"""Dispatch: 200 runs scheduled at once on a process pool, poolworker beside `prefect worker start`.

For each worker, alternating, and for `--limit` unset and `--limit 10`:
  * latency from each run's scheduled time to its process starting (median, 95th, max), and
    the time until all 200 had started. The trivial command appends the run id and a
    timestamp to a file; both workers run it the same way (split like a shell, no shell).
  * the worker's own resident memory (its process alone, not the flow processes) while 50
    runs are in flight (command: sleep).
Both workers poll every second (PREFECT_WORKER_QUERY_SECONDS=1) with --prefetch-seconds 0, so
that a run is started when it is due, not early.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from idle_startup import REPO, VENV_BIN, prefect_worker_command, rss_kib, start_server  # noqa: E402

CREATE_RUNS = r"""
import datetime as dt, json, sys, uuid
from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import DeploymentCreate
from prefect.states import Scheduled

pool, count, delay, command = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
with get_client(sync_client=True) as client:
    flow_id = client.create_flow_from_name("bench-flow")
    deployment_id = client.create_deployment(
        flow_id=flow_id, name=f"bench-{pool}", work_pool_name=pool,
        entrypoint="bench.py:bench", job_variables={"command": command})
    when = dt.datetime.now(dt.timezone.utc) + dt.timedelta(seconds=delay)
    ids = []
    for _ in range(count):
        run = client.create_flow_run_from_deployment(deployment_id, state=Scheduled(scheduled_time=when))
        ids.append(str(run.id))
print(json.dumps({"scheduled": when.timestamp(), "ids": ids,
                  "created_by": dt.datetime.now(dt.timezone.utc).timestamp()}))
"""


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(p / 100 * (len(ordered) - 1))))
    return ordered[index]


def start_worker(kind: str, argv_tail: list[str], env: dict, log: Path, poolworker: str,
                 state: Path) -> subprocess.Popen:
    if kind == "poolworker":
        argv = [poolworker, "start", *argv_tail, "--state-dir", str(state)]
    else:
        argv = [*prefect_worker_command(), *argv_tail]
    return subprocess.Popen(argv, env=env, stdout=open(log, "ab"), stderr=subprocess.STDOUT,
                            start_new_session=True)


def stop(proc: subprocess.Popen | None, timeout: float = 30) -> None:
    """Stops a process group started with start_new_session: SIGTERM, then SIGKILL."""
    if proc is None or proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=timeout)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()


class Lead:
    """How far ahead runs are scheduled, so that all exist before they are due. It starts at
    --lead-seconds and follows how long the server took to create the last batch: after a busy
    round the SQLite server can need minutes for 200 runs, when idle seconds."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def learn(self, took: float) -> None:
        self.seconds = max(30.0, 2 * took + 10)


def create_runs(env: dict, pool: str, count: int, lead: Lead, command: str) -> dict | None:
    """Creates the runs; None when creating them took longer than the lead (the caller retries
    in a fresh pool with the longer lead this learnt)."""
    asked = time.time()
    out = subprocess.run([str(VENV_BIN / "python"), "-c", CREATE_RUNS, pool, str(count),
                          str(lead.seconds), command], env=env, check=True, capture_output=True,
                         text=True)
    created = json.loads(out.stdout.strip().splitlines()[-1])
    lead.learn(created["created_by"] - asked)
    # A run created after its scheduled time would make the worker look slow for the server's
    # sake: the figures are only valid when every run existed before it was due.
    if created["created_by"] > created["scheduled"]:
        print(f"creating {count} runs took {created['created_by'] - asked:.0f} s, longer than "
              f"the lead; again with a lead of {lead.seconds:.0f} s", flush=True)
        return None
    return created


def dispatch_round(kind: str, limit: int | None, env: dict, work: Path, poolworker: str,
                   count: int, tag: str, lead: Lead) -> dict:
    for attempt in range(3):
        figures = dispatch_attempt(kind, limit, env, work, poolworker, count,
                                   f"{tag}-{attempt}", lead)
        if figures is not None:
            return figures
    raise SystemExit(f"could not create {count} runs ahead of their scheduled time")


def dispatch_attempt(kind: str, limit: int | None, env: dict, work: Path, poolworker: str,
                     count: int, tag: str, lead: Lead) -> dict | None:
    pool = f"dispatch-{kind}-{tag}"
    marks = work / f"{pool}.marks"
    subprocess.run([str(VENV_BIN / "prefect"), "work-pool", "create", pool, "--type", "process"],
                   env=env, check=True, stdout=subprocess.DEVNULL)
    command = f"sh -c 'echo \"$PREFECT__FLOW_RUN_ID $(date +%s.%N)\" >> {marks}'"
    tail = ["--pool", pool, "--prefetch-seconds", "0"]
    if limit is not None:
        tail += ["--limit", str(limit)]
    proc = start_worker(kind, tail, env, work / f"{pool}.log", poolworker, work / f"state-{pool}")
    try:
        created = create_runs(env, pool, count, lead, command)
        if created is None:
            return None
        deadline = time.time() + 600
        starts: dict[str, float] = {}
        while time.time() < deadline:
            if marks.exists():
                for line in marks.read_text().splitlines():
                    run_id, _, stamp = line.partition(" ")
                    starts.setdefault(run_id, float(stamp))
            if len(starts) >= count:
                break
            time.sleep(0.5)
    finally:
        stop(proc)
    # A run the worker never started (it gave up on it, e.g. after server errors) counts as
    # started at the deadline, so that losing runs never looks fast.
    latencies = [starts.get(i, deadline) - created["scheduled"] for i in created["ids"]]
    return {"median_s": statistics.median(latencies), "p95_s": percentile(latencies, 95),
            "max_s": max(latencies), "started": sum(1 for i in created["ids"] if i in starts),
            "runs": count, "twice": sum(1 for line in (marks.read_text().splitlines()
                                                        if marks.exists() else [])) - len(starts)}


def in_flight_round(kind: str, env: dict, work: Path, poolworker: str, count: int) -> dict:
    pool = f"inflight-{kind}-{int(time.time())}"
    subprocess.run([str(VENV_BIN / "prefect"), "work-pool", "create", pool, "--type", "process"],
                   env=env, check=True, stdout=subprocess.DEVNULL)
    proc = start_worker(kind, ["--pool", pool, "--prefetch-seconds", "0"], env,
                        work / f"{pool}.log", poolworker, work / f"state-{pool}")
    try:
        # Only the memory with the runs in flight counts here, not when they started: due now.
        subprocess.run([str(VENV_BIN / "python"), "-c", CREATE_RUNS, pool, str(count),
                        "0", "sleep 120"], env=env, check=True, capture_output=True)
        deadline = time.time() + 600
        while time.time() < deadline:
            running = subprocess.run(["pgrep", "-c", "-f", "^sleep 120$"], capture_output=True,
                                     text=True).stdout.strip()
            if int(running or 0) >= count:
                break
            time.sleep(0.5)
        time.sleep(3)
        rss = rss_kib([proc.pid])
    finally:
        stop(proc)
        subprocess.run(["pkill", "-f", "^sleep 120$"])
    return {"worker_rss_kib": rss}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--in-flight", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=1,
                        help="rounds of every case; the workers' order alternates by round")
    parser.add_argument("--lead-seconds", type=float, default=120,
                        help="runs are first scheduled this far ahead, so that all exist when "
                             "due; later rounds use twice what creating the last batch took")
    parser.add_argument("--poolworker", default=str(REPO / "build" / "bin" / "poolworker"))
    parser.add_argument("--out", default=str(REPO / "bench" / "results"))
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="poolworker-dispatch-"))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    server, port = start_server(work)
    kinds = ("poolworker", "prefect")
    cases = ("limit_none", "limit_10", "in_flight")
    raw: dict = {kind: {case: [] for case in cases} for kind in kinds}
    lead = Lead(args.lead_seconds)
    complete = False
    try:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
        env.update(PREFECT_API_URL=f"http://127.0.0.1:{port}/api",
                   PREFECT_HOME=str(work / "worker-home"), PREFECT_WORKER_QUERY_SECONDS="1",
                   PATH=f"{VENV_BIN}:{env.get('PATH', '')}")
        for r in range(args.rounds):
            order = kinds if r % 2 == 0 else tuple(reversed(kinds))
            for limit in (None, 10):
                key = f"limit_{limit or 'none'}"
                for kind in order:
                    figures = dispatch_round(kind, limit, env, work, args.poolworker, args.runs,
                                             f"{key}-{r}", lead)
                    raw[kind][key].append(figures)
                    print(f"round {r + 1} {kind} {key}: {figures}", flush=True)
            for kind in order:
                figures = in_flight_round(kind, env, work, args.poolworker, args.in_flight)
                raw[kind]["in_flight"].append(figures)
                print(f"round {r + 1} {kind} in flight: {figures}", flush=True)
        complete = True
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)
        if not complete:
            # What was measured before the failure stays, for a look, beside the last complete
            # results (which stay in dispatch.md and dispatch.json).
            (out / "dispatch.partial.json").write_text(json.dumps(
                {"date": dt.datetime.now(dt.timezone.utc).isoformat(), "raw": raw}, indent=2))

    def med(kind: str, case: str, field: str) -> float:
        return statistics.median(x[field] for x in raw[kind][case])

    def total(kind: str, case: str, field: str) -> int:
        return sum(x[field] for x in raw[kind][case])

    lines = [f"Dispatch on the real Prefect server, measured {dt.date.today().isoformat()}: "
             f"{args.runs} runs scheduled at once on a process pool, trivial command (`sh -c` "
             "appending the run id and time to a file), both workers polling every 1 s with no "
             f"prefetch; medians of {args.rounds} alternating round(s); Prefect's worker from a "
             "virtualenv with Prefect alone. Command: "
             "`bench/run.sh` (or `.cache/venv/bin/python bench/dispatch.py`).", "",
             "| Figure | poolworker | prefect worker start | Ratio |", "|---|---|---|---|"]
    summary: dict = {}
    for key, label in (("limit_none", "no limit"), ("limit_10", "--limit 10")):
        for field, name in (("median_s", "median"), ("p95_s", "95th percentile"),
                            ("max_s", "max (all started)")):
            ours, theirs = med("poolworker", key, field), med("prefect", key, field)
            ratio = theirs / ours if ours > 0 else float("inf")
            summary[f"{key}_{field}"] = {"poolworker": ours, "prefect": theirs, "ratio": ratio}
            lines.append(f"| Scheduled to started, {label}, {name} | {ours:.2f} s | "
                         f"{theirs:.2f} s | {ratio:.1f}x faster |")
        started = {kind: total(kind, key, "started") for kind in kinds}
        twice = {kind: total(kind, key, "twice") for kind in kinds}
        runs = args.runs * args.rounds
        lines.append(f"| Runs started (twice), {label} | {started['poolworker']}/{runs} "
                     f"({twice['poolworker']}) | {started['prefect']}/{runs} ({twice['prefect']}) | |")
        summary[f"{key}_started"] = {kind: started[kind] for kind in kinds}
    ours, theirs = (med(kind, "in_flight", "worker_rss_kib") for kind in kinds)
    summary["in_flight_rss_kib"] = {"poolworker": ours, "prefect": theirs, "ratio": theirs / ours}
    lines.append(f"| Worker RSS, {args.in_flight} runs in flight | {ours / 1024:.1f} MiB | "
                 f"{theirs / 1024:.1f} MiB | {theirs / ours:.1f}x less |")
    table = "\n".join(lines) + "\n"
    (out / "dispatch.md").write_text(table)
    (out / "dispatch.json").write_text(json.dumps(
        {"date": dt.datetime.now(dt.timezone.utc).isoformat(), "runs": args.runs,
         "in_flight": args.in_flight, "rounds": args.rounds, "summary": summary, "raw": raw},
        indent=2) + "\n")
    print()
    print(table)


if __name__ == "__main__":
    main()
