"""How long a Docker worker takes from claiming a flow run to starting its container.

For poolworker and for Prefect's own Docker worker, on the same engine and the same Prefect
server: one run at a time (so that nothing else competes), the time from the run's PENDING state
(the claim, the server's timestamp) to the container's `State.StartedAt` (the engine's). Both
clocks are this machine's.

Uses the end-to-end harness (tests/e2e: its virtualenv, server and worker fixtures, and the image
built by tests/docker/build-test-images.sh). Run with the e2e venv's python:

    .cache/venv/bin/python bench/docker_claim_to_start.py [--runs 5] [--out bench/results]

Writes docker_claim_to_start.md (table) and docker_claim_to_start.json (raw figures) to --out.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import shutil
import statistics
import sys
import tempfile
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests" / "e2e"))

import conftest  # noqa: E402  (sets up the client's Prefect home before prefect is imported)
from prefect.client.schemas.objects import StateType  # noqa: E402
from prefect_helpers import FLOWS_DIR, PrefectApi  # noqa: E402


def parse_time(text: str) -> dt.datetime:
    """The engine's RFC 3339 time with nanoseconds, to a datetime."""
    text = text.replace("Z", "+00:00")
    if "." in text:
        head, rest = text.split(".", 1)
        digits = rest[: len(rest) - len(rest.lstrip("0123456789"))]
        zone = rest[len(digits):]
        text = f"{head}.{digits[:6]}{zone}"
    return dt.datetime.fromisoformat(text)


def measure(api: PrefectApi, docker_client, kind: str, runs: int, workdir: Path) -> list[float]:
    conftest.WORKER_KIND = kind
    pool = f"bench-{kind}-{uuid.uuid4().hex[:8]}"
    api.create_docker_pool(pool)
    deployment = api.create_deployment(
        pool,
        "hello",
        job_variables={
            "image": conftest.DOCKER_PREFECT_IMAGE,
            "volumes": [f"{FLOWS_DIR}:{FLOWS_DIR}:ro"],
        },
    )
    factory = conftest.WorkerFactory(api.url, workdir / "home", workdir / kind, f"bench-{kind}")
    (workdir / kind).mkdir()
    factory(pool, worker_type="docker")
    latencies = []
    try:
        for i in range(runs):
            run = api.create_run(deployment, parameters={"token": f"bench-{i}"})
            final = api.wait_for_final(run.id, timeout=300)
            if final.state.type != StateType.COMPLETED:
                raise SystemExit(f"{kind}: run {run.id} ended {final.state}")
            claimed = next(
                s.timestamp for s in api.state_history(run.id) if s.type == StateType.PENDING
            )
            (container,) = docker_client.containers.list(
                all=True, filters={"label": f"io.prefect.flow-run-id={run.id}"}
            )
            if claimed.tzinfo is None:
                claimed = claimed.replace(tzinfo=dt.timezone.utc)
            started = parse_time(container.attrs["State"]["StartedAt"])
            latencies.append((started - claimed).total_seconds())
            container.remove(force=True)
    finally:
        for started_worker in factory.started:
            started_worker.cleanup()
    return latencies


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--workers", default="poolworker,prefect")
    parser.add_argument("--out", default=str(REPO / "bench" / "results"))
    args = parser.parse_args()
    results: dict[str, list[float]] = {}

    import docker

    docker_client = docker.DockerClient(base_url="unix:///var/run/docker.sock")
    docker_client.images.get(conftest.DOCKER_PREFECT_IMAGE)
    workdir = Path(tempfile.mkdtemp(prefix="poolworker-bench-"))
    (workdir / "home").mkdir()
    server = conftest._start_server(workdir / "server")
    try:
        api = PrefectApi(server.url)
        for kind in args.workers.split(","):
            latencies = measure(api, docker_client, kind, args.runs, workdir)
            results[kind] = latencies
            print(
                f"{kind:10s} claim -> container start over {len(latencies)} runs: "
                f"median {statistics.median(latencies) * 1000:.0f} ms, "
                f"min {min(latencies) * 1000:.0f} ms, max {max(latencies) * 1000:.0f} ms",
                flush=True,
            )
    finally:
        conftest._stop_process_group(server.process, timeout=20)
        docker_client.close()
        shutil.rmtree(workdir, ignore_errors=True)
    write_results(Path(args.out), args.runs, results)


def write_results(out: Path, runs: int, results: dict[str, list[float]]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "docker_claim_to_start.json").write_text(json.dumps(
        {"date": dt.datetime.now(dt.timezone.utc).isoformat(), "runs": runs,
         "latencies_s": results}, indent=2) + "\n")
    if set(results) != {"poolworker", "prefect"}:
        return
    ours, theirs = (statistics.median(results[k]) for k in ("poolworker", "prefect"))
    lines = [f"Docker, measured {dt.date.today().isoformat()}: the time from a run's claim "
             "(its PENDING state, the server's timestamp) to its container's start (the engine's "
             f"`State.StartedAt`), one run at a time, {runs} runs each, same engine and server; "
             "Prefect's side is prefect-docker's worker. Command: "
             "`.cache/venv/bin/python bench/docker_claim_to_start.py`.", "",
             "| Figure | poolworker | prefect worker start (docker) | Ratio |", "|---|---|---|---|",
             f"| Claim to container start, median | {ours * 1000:.0f} ms | {theirs * 1000:.0f} ms "
             f"| {theirs / ours:.1f}x faster |",
             f"| Claim to container start, max | {max(results['poolworker']) * 1000:.0f} ms | "
             f"{max(results['prefect']) * 1000:.0f} ms | |"]
    (out / "docker_claim_to_start.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
