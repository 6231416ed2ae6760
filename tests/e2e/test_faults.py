"""Fault suite: poolworker loses no flow run and starts none twice.

Every test counts, over the runs it makes:
- lost: runs not final within the test's deadline, or final in another state than expected;
- started twice: runs whose flow body executed more than once (the fake engine appends a line
  per execution to a marker file of the run) or whose state history holds more than one
  accepted RUNNING state;
and asserts that both are 0. It also fails when the worker launched a run's engine more than
once. Each test adds a row (test, runs, lost, started twice, seconds) to the results table: the
file named by POOLWORKER_FAULT_RESULTS, else `fault-results.md` in pytest's base temp folder.

Flow runs are tests/fakes/fake_engine.py processes (the deployment's `command`): a Python
interpreter with the standard library only, that speaks the same REST calls as Prefect's engine.
"""

from __future__ import annotations

import datetime as dt
import os
import signal
import time
from pathlib import Path
from typing import Callable, Iterator, Optional
from uuid import UUID

import pytest
from conftest import DOCKER_PREFECT_IMAGE, WORKER_KIND, _free_port, _test_failed
from fault_helpers import (
    FAKE_ENGINE,
    Audit,
    FaultProxy,
    OwnServer,
    UnixSocketProxy,
    ResultsTable,
    assert_no_loss,
    audit_runs,
    create_runs,
    fake_engine_deployment,
    http_get,
    kill_worker,
    metric,
    metric_sum,
    pids_alive,
    read_marks,
    read_metrics,
    relaunch_worker,
    wait_for_output,
    wait_for_running,
)
from prefect.client.schemas.objects import StateType
from prefect_helpers import PrefectApi, parse_infrastructure_pid, wait_until

# poolworker's default grace between SIGTERM and SIGKILL when it cancels a run.
KILL_GRACE_SECONDS = 30
REATTACHED = r"re-attached to flow run"


def poolworker_only(reason: str) -> None:
    if WORKER_KIND != "poolworker":
        pytest.skip(f"poolworker only: {reason}")


# ---- the results table ------------------------------------------------------------------------


@pytest.fixture(scope="session")
def results_table(tmp_path_factory: pytest.TempPathFactory) -> ResultsTable:
    path = os.environ.get("POOLWORKER_FAULT_RESULTS")
    return ResultsTable(
        Path(path) if path else tmp_path_factory.getbasetemp() / "fault-results.md"
    )


@pytest.fixture
def report(
    request: pytest.FixtureRequest, results_table: ResultsTable, capsys: pytest.CaptureFixture
) -> Callable[[Audit, float], None]:
    """`report(audit, began)` writes the test's row of the results table and prints it."""

    def write(audit: Audit, began: float) -> None:
        line = results_table.record(request.node.name, audit, time.monotonic() - began)
        with capsys.disabled():
            print(f"\nfault results ({results_table.path}): {line}")
            if audit.lost or audit.started_twice or audit.launched_twice:
                print(f"  {audit.summary()}")

    return write


def health_env(port: int) -> dict[str, str]:
    return {
        "PREFECT_WORKER_WEBSERVER_HOST": "127.0.0.1",
        "PREFECT_WORKER_WEBSERVER_PORT": str(port),
    }


# 1 ---------------------------------------------------------------------------------------------


def test_sigkill_with_20_runs_in_flight_then_restart_on_same_state_dir(
    api: PrefectApi, worker, pool_name: str, tmp_path: Path, report
) -> None:
    poolworker_only("re-attaching runs after a restart needs poolworker's --state-dir journal")
    began = time.monotonic()
    total = 20
    marks = tmp_path / "marks"
    api.create_process_pool(pool_name)
    # Long enough that every run is still in its body when the second worker starts.
    deployment = fake_engine_deployment(api, pool_name, "sleep:30", marks)
    run_ids = create_runs(api, deployment, total)
    first = worker(pool_name)

    engine_pids = wait_for_running(api, run_ids, marks, timeout=120)
    kill_worker(first)
    assert first.process.returncode == -signal.SIGKILL
    assert sorted(pids_alive(engine_pids.values())) == sorted(engine_pids.values()), (
        "flow processes died with their worker"
    )
    finished = [str(r) for r in run_ids if read_marks(marks, r).final]
    assert not finished, f"test timing: runs finished before the restart: {finished}"

    port = _free_port()
    second = relaunch_worker(
        worker, first, extra_args=["--with-healthcheck"], env=health_env(port)
    )

    audit = audit_runs(api, run_ids, marks, timeout=120)
    report(audit, began)
    assert_no_loss(audit)

    lines = wait_for_output(second, REATTACHED, count=total, timeout=30)
    assert len(lines) == total, lines
    assert second.alive(), second.output()
    samples = read_metrics(f"http://127.0.0.1:{port}")
    assert metric(samples, "poolworker_recovery_total", outcome="reattached") == total, {
        k: v for k, v in samples.items() if k[0] == "poolworker_recovery_total"
    }
    assert metric_sum(samples, "poolworker_recovery_total") == total
    # The new worker, not the flows alone, saw them through: it recorded their completion.
    wait_until(
        lambda: metric(read_metrics(f"http://127.0.0.1:{port}"),
                       "poolworker_runs_finished_total", outcome="completed"),
        lambda value: value == total,
        timeout=30,
        what=f"the restarted worker to count {total} completed runs",
    )


# 1b --------------------------------------------------------------------------------------------


def docker_fake_engine_deployment(
    api: PrefectApi, pool: str, mode: str, marks: Path, shared: Path
) -> UUID:
    """A Docker deployment whose runs are fake engines in the test image: the fake engine's
    folder is mounted read-only, `marks` and `shared` (gate files) read-write."""
    marks.mkdir(parents=True, exist_ok=True)
    shared.mkdir(parents=True, exist_ok=True)
    fakes = FAKE_ENGINE.parent
    variables = {
        "image": DOCKER_PREFECT_IMAGE,
        "command": f"python3 {FAKE_ENGINE}",
        "volumes": [f"{fakes}:{fakes}:ro", f"{marks}:{marks}", f"{shared}:{shared}"],
        "env": {"FAKE_ENGINE_MODE": mode, "FAKE_ENGINE_MARK_DIR": str(marks)},
    }
    return api.create_deployment(pool, "hello", name=f"fake-docker-{pool}",
                                 job_variables=variables)


def running_containers(docker_client, pool: str) -> list:
    return docker_client.containers.list(
        filters={"label": f"io.prefect.work-pool-name={pool}", "status": "running"}
    )


def test_sigkill_with_5_docker_runs_in_flight_then_restart_on_same_state_dir(
    api: PrefectApi, worker, docker_client, pool_name: str, tmp_path: Path, report
) -> None:
    poolworker_only("re-attaching runs after a restart needs poolworker's --state-dir journal")
    began = time.monotonic()
    total = 5
    marks = tmp_path / "marks"
    gate = tmp_path / "shared" / "gate"
    api.create_docker_pool(pool_name)
    deployment = docker_fake_engine_deployment(api, pool_name, f"wait-file:{gate}", marks,
                                               gate.parent)
    run_ids = create_runs(api, deployment, total)
    try:
        first = worker(pool_name, worker_type="docker")
        wait_for_running(api, run_ids, marks, timeout=240)
        kill_worker(first)
        assert first.process.returncode == -signal.SIGKILL
        assert len(running_containers(docker_client, pool_name)) == total, (
            "flow containers died with their worker"
        )
        second = relaunch_worker(worker, first)
        lines = wait_for_output(second, REATTACHED, count=total, timeout=60)
        assert len(lines) == total, lines
        gate.touch()
        audit = audit_runs(api, run_ids, marks, timeout=180)
        report(audit, began)
        assert_no_loss(audit)
        assert second.alive(), second.output()
    finally:
        for container in docker_client.containers.list(
            all=True, filters={"label": f"io.prefect.work-pool-name={pool_name}"}
        ):
            container.remove(force=True)


def test_docker_engine_socket_closed_mid_run(
    api: PrefectApi, worker, docker_client, pool_name: str, tmp_path: Path, report
) -> None:
    """The worker reaches the engine through a socket of the test's, which is cut (every
    connection closed, nothing listening) for 20 s while 4 containers run, then restored."""
    began = time.monotonic()
    total = 4
    marks = tmp_path / "marks"
    gate = tmp_path / "shared" / "gate"
    api.create_docker_pool(pool_name)
    deployment = docker_fake_engine_deployment(api, pool_name, f"wait-file:{gate}", marks,
                                               gate.parent)
    proxy = UnixSocketProxy(tmp_path / "docker.sock")
    run_ids = create_runs(api, deployment, total)
    try:
        started = worker(pool_name, worker_type="docker",
                         env={"DOCKER_HOST": f"unix://{proxy.path}"})
        wait_for_running(api, run_ids, marks, timeout=240)
        cut = proxy.cut()
        assert cut >= total, f"only {cut} engine connections were open: no wait per run?"
        time.sleep(20)
        assert started.alive(), f"the worker died without its engine:\n{started.output()}"
        proxy.restore()
        gate.touch()
        audit = audit_runs(api, run_ids, marks, timeout=180)
        report(audit, began)
        assert_no_loss(audit)
        assert started.alive(), started.output()
        # The worker followed the containers to their end through the restored socket.
        wait_for_output(started, r"has status 'exited'", count=total, timeout=60)
    finally:
        for container in docker_client.containers.list(
            all=True, filters={"label": f"io.prefect.work-pool-name={pool_name}"}
        ):
            container.remove(force=True)


def test_5xx_bursts_and_a_server_that_answers_after_20_seconds(
    api: PrefectApi, worker, prefect_server, pool_name: str, tmp_path: Path, report
) -> None:
    """The worker talks to the real server through a proxy that answers half its requests with
    503 for 20 s, then holds its next claims and polls for 20 s before answering. The flow runs
    talk to the server through the same proxy untouched (only the worker's requests are hit)."""
    began = time.monotonic()
    marks = tmp_path / "marks"
    api.create_process_pool(pool_name)
    deployment = fake_engine_deployment(api, pool_name, "complete", marks)
    proxy = FaultProxy(prefect_server.url)
    worker.api_url = proxy.url
    try:
        started = worker(pool_name)
        proxy.burst(seconds=20, ratio=0.5)
        first = create_runs(api, deployment, 10)
        time.sleep(20)
        proxy.delay(20, count=4, path=r"/set_state$|/get_scheduled_flow_runs$")
        second = create_runs(api, deployment, 10)
        audit = audit_runs(api, first + second, marks, timeout=240)
        report(audit, began)
        print(f"proxy: {proxy.failed} answered 503, {proxy.delayed} held 20 s, "
              f"{proxy.passed} passed")
        assert_no_loss(audit)
        assert proxy.failed > 0 and proxy.delayed == 4, "the faults were never injected"
        assert started.alive(), started.output()
    finally:
        proxy.close()


# 2 ---------------------------------------------------------------------------------------------


@pytest.fixture
def own_server(
    request: pytest.FixtureRequest, worker, tmp_path: Path
) -> Iterator[Callable[..., OwnServer]]:
    """`own_server(extra_env=None)` starts a Prefect server for this test alone and points the
    `worker` factory at it. Set up after `worker`, so that the servers are stopped before the
    workers' cleanup (which kills every other child of the test process)."""
    started: list[OwnServer] = []

    def start(extra_env: Optional[dict[str, str]] = None) -> OwnServer:
        server = OwnServer(tmp_path / f"own-server-{len(started) + 1}", extra_env)
        started.append(server)
        worker.api_url = server.url
        return server

    try:
        yield start
    finally:
        for server in started:
            server.stop(timeout=20)
            if _test_failed(request.node):
                print("\n" + server.log_tails())


def test_server_down_60_seconds_mid_run(
    own_server, worker, pool_name: str, tmp_path: Path, report
) -> None:
    """Runs in flight and runs due during the outage. The in-flight flows wait for a gate file
    (fake engine mode wait-file) that the test creates only once the server answers again, so
    they never need the API while it is down: the fake engine, like Prefect's client, retries a
    call only 5 times, and a flow that could not report its end would legitimately crash."""
    began = time.monotonic()
    server = own_server()
    api = PrefectApi(server.url)
    marks = tmp_path / "marks"
    gate = tmp_path / "gate"
    api.create_process_pool(pool_name)
    deployment = fake_engine_deployment(api, pool_name, f"wait-file:{gate}", marks)
    in_flight = create_runs(api, deployment, 6)
    started = worker(pool_name)
    engine_pids = wait_for_running(api, in_flight, marks, timeout=120)
    for run_id in in_flight:
        # Past its last API call before the gate.
        api.wait_for_log(run_id, r"fake engine running", timeout=30)
    # Due 45 s from now: inside the outage, beyond the 10 s prefetch, so not claimed before it.
    due = dt.datetime.now(dt.timezone.utc) + dt.timedelta(seconds=45)
    later = create_runs(api, deployment, 6, scheduled_at=due)

    stop_seconds = server.stop()
    down_at = time.monotonic()
    while time.monotonic() - down_at < 60:
        assert started.alive(), f"the worker died while the server was down:\n{started.output()}"
        time.sleep(1)
    server.restart()

    assert started.alive(), started.output()
    assert sorted(pids_alive(engine_pids.values())) == sorted(engine_pids.values()), (
        "flow processes died during the outage"
    )
    gate.touch()

    audit = audit_runs(api, in_flight + later, marks, timeout=180)
    report(audit, began)
    print(f"server stopped in {stop_seconds:.1f} s; down 60 s")
    assert_no_loss(audit)
    assert started.alive(), started.output()


# 4 ---------------------------------------------------------------------------------------------


def test_sigterm_drains_and_the_next_worker_adopts_the_runs(
    api: PrefectApi, worker, pool_name: str, tmp_path: Path, report
) -> None:
    poolworker_only("leaving flows running on SIGTERM and adopting them is poolworker's design")
    began = time.monotonic()
    marks = tmp_path / "marks"
    gate = tmp_path / "gate"
    api.create_process_pool(pool_name)
    deployment = fake_engine_deployment(api, pool_name, f"wait-file:{gate}", marks)
    run_ids = create_runs(api, deployment, 3)
    first = worker(pool_name)
    engine_pids = wait_for_running(api, run_ids, marks, timeout=120)

    sent = time.monotonic()
    code = first.stop(timeout=15)
    took = time.monotonic() - sent
    assert code == 0, f"exit {code} {took:.1f} s after SIGTERM; output:\n{first.output()}"
    assert took < 15, took
    assert sorted(pids_alive(engine_pids.values())) == sorted(engine_pids.values()), (
        "flows did not survive the worker's SIGTERM"
    )
    with api.client() as client:
        states = {r: client.read_flow_run(r).state.type for r in run_ids}
    assert set(states.values()) == {StateType.RUNNING}, states

    second = relaunch_worker(worker, first)
    wait_for_output(second, REATTACHED, count=len(run_ids), timeout=60)
    gate.touch()

    audit = audit_runs(api, run_ids, marks, timeout=60)
    report(audit, began)
    print(f"first worker exited {took:.1f} s after SIGTERM")
    assert_no_loss(audit)
    wait_until(
        lambda: pids_alive(engine_pids.values()),
        lambda alive: not alive,
        timeout=30,
        what="the adopted flow processes to exit",
    )
    assert second.alive(), second.output()


def test_second_sigterm_cancels_the_running_flows(
    api: PrefectApi, worker, pool_name: str, tmp_path: Path, report
) -> None:
    poolworker_only("a second SIGTERM cancelling the runs is poolworker's design")
    began = time.monotonic()
    marks = tmp_path / "marks"
    api.create_process_pool(pool_name)
    deployment = fake_engine_deployment(api, pool_name, "sleep:600", marks)
    run_ids = create_runs(api, deployment, 3)
    # A drain period, so that the worker is still there, draining, when the second SIGTERM comes.
    started = worker(pool_name, env={"POOLWORKER_DRAIN_SECONDS": "300"})
    engine_pids = wait_for_running(api, run_ids, marks, timeout=120)
    with api.client() as client:
        infra_pids = {
            r: parse_infrastructure_pid(client.read_flow_run(r).infrastructure_pid) for r in run_ids
        }
    assert all(infra_pids.values()), infra_pids

    os.kill(started.pid, signal.SIGTERM)
    wait_for_output(started, r"Received SIGTERM", timeout=15)
    assert started.alive(), f"exited after one SIGTERM despite a drain period:\n{started.output()}"
    os.kill(started.pid, signal.SIGTERM)
    code = started.wait(timeout=KILL_GRACE_SECONDS + 45)

    audit = audit_runs(api, run_ids, marks, timeout=60, expected=StateType.CANCELLED)
    report(audit, began)
    assert code == 0, f"exit {code}; output:\n{started.output()}"
    assert_no_loss(audit)
    every_pid = list(engine_pids.values()) + [p for p in infra_pids.values() if p]
    wait_until(
        lambda: pids_alive(every_pid),
        lambda alive: not alive,
        timeout=10,
        what="the cancelled runs' processes to be gone",
    )


# 5 ---------------------------------------------------------------------------------------------


def test_health_and_metrics_over_http(
    api: PrefectApi, worker, pool_name: str, tmp_path: Path, report
) -> None:
    poolworker_only("/health/live, /health/ready and /metrics are poolworker's")
    began = time.monotonic()
    total = 3
    marks = tmp_path / "marks"
    api.create_process_pool(pool_name)
    deployment = fake_engine_deployment(api, pool_name, "complete", marks)
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    started = worker(pool_name, extra_args=["--with-healthcheck"], env=health_env(port))

    wait_until(
        lambda: http_get(f"{base}/health/ready"),
        lambda answer: answer[0] == 200,
        timeout=60,
        what=f"GET {base}/health/ready to answer 200",
    )
    assert http_get(f"{base}/health") == (200, '{"message":"OK"}')
    assert http_get(f"{base}/health/live")[0] == 200
    assert http_get(f"{base}/health/ready") == (200, '{"status":"ready"}')
    assert http_get(f"{base}/no-such-path")[0] == 404
    idle = read_metrics(base)
    assert metric(idle, "poolworker_runs_claimed_total") == 0
    assert metric(idle, "poolworker_ready") == 1
    assert metric(idle, "poolworker_runs_in_flight") == 0

    run_ids = create_runs(api, deployment, total)
    audit = audit_runs(api, run_ids, marks, timeout=120)
    report(audit, began)
    assert_no_loss(audit)

    samples = wait_until(
        lambda: read_metrics(base),
        lambda s: metric(s, "poolworker_runs_finished_total", outcome="completed") == total,
        timeout=30,
        what=f"runs_finished_total{{outcome=completed}} to reach {total}",
    )
    series = {k: v for k, v in samples.items() if not k[0].endswith(("_bucket", "_sum"))}
    assert metric(samples, "poolworker_runs_claimed_total") == total, series
    assert metric(samples, "poolworker_runs_started_total") == total, series
    assert metric_sum(samples, "poolworker_runs_finished_total") == total, series
    assert metric_sum(samples, "poolworker_claims_lost_total") == 0, series
    assert metric(samples, "poolworker_runs_in_flight") == 0, series

    def requests(s: dict, status_ok: bool = True, **labels: str) -> float:
        """Sum of api_requests_total over the series matching `labels`, 2xx only by default."""
        wanted = set(labels.items())
        return sum(
            v for (n, pairs), v in s.items()
            if n == "poolworker_api_requests_total" and wanted <= set(pairs)
            and (not status_ok or 200 <= int(dict(pairs)["status"]) < 300)
        )

    # The labels PATCH runs beside the submission; wait for its retries (if any) to end.
    samples = wait_until(
        lambda: read_metrics(base),
        lambda s: requests(s, method="PATCH", endpoint="/flow_runs/{id}/labels") >= total,
        timeout=30,
        what="the worker to label every run",
    )
    api_requests = {
        tuple(sorted(pairs)): v for (n, pairs), v in samples.items()
        if n == "poolworker_api_requests_total"
    }
    print(f"api_requests_total: {api_requests}")
    # Two accepted proposals per run, 201 each: the PENDING claim, then PENDING/Submitting.
    assert metric(samples, "poolworker_api_requests_total", method="POST",
                  endpoint="/flow_runs/{id}/set_state", status="201") == 2 * total, api_requests
    assert requests(samples, method="POST", endpoint="/flow_runs/{id}/set_state") == 2 * total
    # infrastructure_pid, once per run (204), and the worker's labels, once per run (204).
    assert metric(samples, "poolworker_api_requests_total", method="PATCH",
                  endpoint="/flow_runs/{id}", status="204") == total, api_requests
    assert requests(samples, method="PATCH", endpoint="/flow_runs/{id}") == total, api_requests
    assert metric(samples, "poolworker_api_requests_total", method="PATCH",
                  endpoint="/flow_runs/{id}/labels", status="204") == total, api_requests
    assert metric(samples, "poolworker_api_requests_total", method="POST",
                  endpoint="/work_pools/{name}/get_scheduled_flow_runs", status="200") >= 3
    assert metric(samples, "poolworker_api_requests_total", method="POST",
                  endpoint="/work_pools/{name}/workers/heartbeat", status="204") >= 1
    assert metric(samples, "poolworker_api_requests_total", method="GET",
                  endpoint="/deployments/{id}", status="200") >= 1
    # Every endpoint called is also timed.
    for labels in api_requests:
        endpoint = dict(labels)["endpoint"]
        assert metric(samples, "poolworker_api_request_duration_seconds_count",
                      endpoint=endpoint) > 0, endpoint
    assert started.alive(), started.output()

    # Requests that did not succeed. Allowed: the CSRF probe (422 from a server with CSRF
    # protection off) and 503, the server's own "retry this" answer (SQLite contention), when
    # retried to success as checked above. Anything else, status 0 (no HTTP answer) above all,
    # is unexpected against a healthy local server.
    failed = {
        labels: v for labels, v in api_requests.items()
        if not 200 <= int(dict(labels)["status"]) < 300
        and dict(labels)["status"] != "503"
        and not (dict(labels)["endpoint"] == "/csrf-token" and dict(labels)["status"] == "422")
    }
    assert not failed, (
        f"API requests without a successful answer from a healthy server: {failed}; "
        f"all requests: {api_requests}"
    )


# 3 ---------------------------------------------------------------------------------------------


def test_three_workers_300_runs_each_completed_exactly_once(
    own_server, worker, pool_name: str, tmp_path: Path, report
) -> None:
    """300 runs due at once, three workers racing for them. On a server of its own whose
    late-runs service is off: with the session server's, 300 runs past due keep that service
    retrying its SCHEDULED/Late inserts against SQLite's lock (thousands of "database is locked"
    in a few minutes) and every client gets 503s, which slows the whole test past 6 minutes."""
    began = time.monotonic()
    total = 300
    server = own_server({"PREFECT_SERVER_SERVICES_LATE_RUNS_ENABLED": "false"})
    server_up = time.monotonic()
    api = PrefectApi(server.url)
    marks = tmp_path / "marks"
    api.create_process_pool(pool_name)
    deployment = fake_engine_deployment(api, pool_name, "complete", marks)
    run_ids = create_runs(api, deployment, total)
    created = time.monotonic()
    # All three start on a full pool and race for the same runs from their first poll. Polls
    # every 2 s (each answers up to 200 runs, ~0.1 s of the server's time), heartbeats and
    # cancellation checks every 10 s, to leave the SQLite server's capacity to the runs.
    quiet = {"PREFECT_WORKER_QUERY_SECONDS": "2",
             "PREFECT_WORKER_HEARTBEAT_SECONDS": "10",
             "PREFECT_WORKER_CANCELLATION_POLL_SECONDS": "10"}
    workers = [worker(pool_name, limit=4, env=quiet) for _ in range(3)]

    audit = audit_runs(api, run_ids, marks, timeout=600)
    report(audit, began)
    submitted = [
        len([line for line in w.output().splitlines() if "submitted to infrastructure" in line])
        for w in workers
    ]
    print(f"server up in {server_up - began:.0f} s, {total} runs created in "
          f"{created - server_up:.0f} s, final and audited in {time.monotonic() - created:.0f} s; "
          f"submissions per worker {submitted}")
    assert_no_loss(audit)
    for started in workers:
        assert started.alive(), started.output()
