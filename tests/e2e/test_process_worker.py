"""End-to-end tests of a process worker against a real Prefect server.

One test per requirement. Every test creates its own work pool, starts its own worker(s) through
the `worker` fixture, and reads the outcome back from the server with Prefect's client.
"""

from __future__ import annotations

import re
import uuid
from collections import Counter
from pathlib import Path

import pytest
from conftest import WORKER_KIND
from prefect.client.schemas.objects import StateType
from prefect_helpers import (
    PrefectApi,
    WaitTimeout,
    parse_infrastructure_pid,
    process_alive,
    wait_until,
)

# Prefect's process worker waits this long after SIGTERM before it sends SIGKILL.
KILL_GRACE_SECONDS = 30
# Time a worker may take to notice a CANCELLING run (Prefect's worker falls back to polling
# every 10 s when its event stream is not up).
CANCEL_DETECTION_SECONDS = 20


def skip_if_prefect_worker(reason: str) -> None:
    """Skips the rest of a test, with `reason`, only when it runs against Prefect's worker: for
    behaviour where poolworker deliberately differs from the reference. Never skips poolworker."""
    if WORKER_KIND == "prefect":
        pytest.skip(f"Prefect's worker: {reason}")


def state_types(api: PrefectApi, run_id: uuid.UUID) -> list[StateType]:
    return [state.type for state in api.state_history(run_id)]


# 1 ------------------------------------------------------------------------------------------


def test_completed_run_and_its_log_line(api: PrefectApi, worker, pool_name: str) -> None:
    api.create_process_pool(pool_name)
    deployment = api.create_deployment(pool_name, "hello")
    token = uuid.uuid4().hex
    run = api.create_run(deployment, parameters={"token": token})
    worker(pool_name)

    final = api.wait_for_final(run.id)

    assert final.state.type == StateType.COMPLETED, final.state
    api.wait_for_log(run.id, rf"hello from the e2e flow, token={token}")
    history = state_types(api, run.id)
    assert StateType.PENDING in history and StateType.RUNNING in history, history


# 2 ------------------------------------------------------------------------------------------


def test_raising_flow_ends_failed(api: PrefectApi, worker, pool_name: str) -> None:
    api.create_process_pool(pool_name)
    run = api.create_run(api.create_deployment(pool_name, "fails"))
    worker(pool_name)

    final = api.wait_for_final(run.id)

    assert final.state.type == StateType.FAILED, final.state
    api.wait_for_log(run.id, r"the e2e flow failed on purpose")


# 3 ------------------------------------------------------------------------------------------


def test_exit_code_3_ends_crashed_with_the_code(api: PrefectApi, worker, pool_name: str) -> None:
    api.create_process_pool(pool_name)
    run = api.create_run(api.create_deployment(pool_name, "crash_exit3"))
    worker(pool_name)

    final = api.wait_for_final(run.id)

    assert final.state.type == StateType.CRASHED, final.state
    # "3" as a number of its own: not part of "3.8.8", "30" or a uuid.
    assert re.search(r"(?<![\w.-])3(?![\w-]|\.\d)", final.state.message or ""), (
        f"exit code 3 not named in the state message {final.state.message!r}"
    )


# 4 ------------------------------------------------------------------------------------------


def test_cancelled_running_flow_ends_cancelled_and_its_process_is_gone(
    api: PrefectApi, worker, pool_name: str, tmp_path: Path
) -> None:
    api.create_process_pool(pool_name)
    pid_file = tmp_path / "sleeper.pid"
    run = api.create_run(
        api.create_deployment(pool_name, "sleeper"),
        parameters={"seconds": 900, "pid_file": str(pid_file)},
    )
    worker(pool_name)

    pid = wait_until(
        lambda: int(pid_file.read_text()) if pid_file.exists() else None,
        lambda value: value is not None,
        timeout=180,
        what="the sleeper flow to write its pid",
    )
    assert process_alive(pid)
    api.wait_for_run(
        run.id, lambda r: r.state.type == StateType.RUNNING, timeout=60, what="to be RUNNING"
    )

    result = api.cancel(run.id)
    assert result.status.value == "ACCEPT", result
    assert result.state.type == StateType.CANCELLING, result.state

    wait_until(
        lambda: process_alive(pid),
        lambda alive: not alive,
        timeout=KILL_GRACE_SECONDS + CANCEL_DETECTION_SECONDS,
        what=f"the flow process {pid} to be gone after cancellation",
    )
    final = api.wait_for_final(run.id, timeout=60)
    assert final.state.type == StateType.CANCELLED, final.state
    history = state_types(api, run.id)
    assert StateType.CANCELLING in history, history


# 5 ------------------------------------------------------------------------------------------


def test_env_job_variables_reach_the_flow_and_merge(
    api: PrefectApi, worker, pool_name: str
) -> None:
    api.create_process_pool(pool_name)
    deployment = api.create_deployment(
        pool_name,
        "echo_env",
        job_variables={
            "env": {
                "E2E_FROM_DEPLOYMENT": "dep value with spaces $HOME 'quoted'",
                "E2E_OVERRIDDEN": "deployment",
            }
        },
    )
    names = ["E2E_FROM_DEPLOYMENT", "E2E_FROM_RUN", "E2E_OVERRIDDEN", "E2E_NOT_SET"]
    run = api.create_run(
        deployment,
        parameters={"name": names},
        job_variables={"env": {"E2E_FROM_RUN": "run-value", "E2E_OVERRIDDEN": "flow run"}},
    )
    worker(pool_name)

    final = api.wait_for_final(run.id)
    assert final.state.type == StateType.COMPLETED, final.state

    api.wait_for_log(run.id, r"echo_env: E2E_NOT_SET=")
    seen = dict(re.findall(r"echo_env: (E2E_\w+)=(.*)", api.log_text(run.id)))
    assert seen == {
        "E2E_FROM_DEPLOYMENT": repr("dep value with spaces $HOME 'quoted'"),
        "E2E_FROM_RUN": repr("run-value"),
        "E2E_OVERRIDDEN": repr("flow run"),
        "E2E_NOT_SET": "None",
    }


# 6 ------------------------------------------------------------------------------------------


def test_two_workers_start_every_run_exactly_once(
    api: PrefectApi, worker, pool_name: str, tmp_path: Path
) -> None:
    total = 50
    marks = tmp_path / "marks.txt"
    api.create_process_pool(pool_name)
    deployment = api.create_deployment(pool_name, "mark", parameters={"path": str(marks)})
    run_ids = [api.create_run(deployment).id for _ in range(total)]

    # Both start on a full pool, so that they race for the same runs from the first poll. The
    # limit keeps a 2-core machine from starting 50 Python interpreters at once.
    first = worker(pool_name, limit=4)
    second = worker(pool_name, limit=4)

    finals = api.wait_for_all_final(run_ids, timeout=900)

    not_completed = {
        str(run_id): f"{run.state.type.value} {run.state.message!r}"
        for run_id, run in finals.items()
        if run.state.type != StateType.COMPLETED
    }
    assert not not_completed, not_completed
    counts = Counter(marks.read_text().split())
    duplicates = {run_id: n for run_id, n in counts.items() if n > 1}
    assert not duplicates, f"runs started more than once: {duplicates}"
    assert set(counts) == {str(run_id) for run_id in run_ids}
    assert first.alive() and second.alive()


# 7 ------------------------------------------------------------------------------------------


def test_run_once_exits_after_its_runs_finish(api: PrefectApi, worker, pool_name: str) -> None:
    api.create_process_pool(pool_name)
    deployment = api.create_deployment(pool_name, "hello")
    run_ids = [api.create_run(deployment, parameters={"token": f"once-{i}"}).id for i in range(2)]

    started = worker(pool_name, run_once=True)
    exit_code = started.wait(timeout=300)

    assert exit_code == 0, started.output()
    # It took both runs in its one poll, and exited only after they had finished.
    for run_id in run_ids:
        run = api.read_run(run_id)
        assert run.state.type == StateType.COMPLETED, (run_id, run.state)


# 8 ------------------------------------------------------------------------------------------


def test_pending_run_cancelled_before_it_starts_never_starts(
    api: PrefectApi, worker, pool_name: str, tmp_path: Path
) -> None:
    api.create_process_pool(pool_name)
    marks = tmp_path / "marks.txt"
    deployment = api.create_deployment(pool_name, "mark")
    # Due in 10 minutes, but within the worker's prefetch window: the worker claims it (PENDING)
    # now, and the flow may not start before its scheduled time.
    run = api.create_run(deployment, parameters={"path": str(marks)}, scheduled_in=600)
    worker(pool_name, prefetch_seconds=1200)

    pending = api.wait_for_run(
        run.id, lambda r: r.state.type == StateType.PENDING, timeout=120, what="to be PENDING"
    )
    # Give the worker time to get as far as it goes before the flow's start (starting its
    # infrastructure, which both Prefect's worker and poolworker do at once), so that the
    # cancellation meets a claimed and prepared run. A worker that starts nothing early is
    # cancelled after the wait.
    try:
        pending = api.wait_for_run(
            run.id,
            lambda r: r.state.type != StateType.PENDING or bool(r.infrastructure_pid),
            timeout=60,
            what="to have its infrastructure started",
        )
    except WaitTimeout:
        pending = api.read_run(run.id)
    assert pending.state.type == StateType.PENDING, pending.state
    infrastructure_pid = parse_infrastructure_pid(pending.infrastructure_pid)

    result = api.cancel(run.id)
    assert result.status.value == "ACCEPT", result

    final = api.wait_for_final(run.id, timeout=KILL_GRACE_SECONDS + CANCEL_DETECTION_SECONDS + 30)
    assert final.state.type == StateType.CANCELLED, final.state
    history = state_types(api, run.id)
    assert StateType.RUNNING not in history, history
    if infrastructure_pid is not None:
        wait_until(
            lambda: process_alive(infrastructure_pid),
            lambda alive: not alive,
            timeout=KILL_GRACE_SECONDS + CANCEL_DETECTION_SECONDS,
            what=f"the run's process {infrastructure_pid} to be gone",
        )
    assert not marks.exists(), f"the flow ran: {marks.read_text()!r}"


# 9 ------------------------------------------------------------------------------------------


def test_worker_creates_a_missing_pool_with_the_process_template(
    api: PrefectApi, worker, pool_name: str
) -> None:
    assert api.read_pool(pool_name) is None
    worker(pool_name)

    pool = wait_until(
        lambda: api.read_pool(pool_name),
        lambda p: p is not None and bool(p.base_job_template),
        timeout=120,
        what=f"the worker to create pool {pool_name!r} with a base job template",
    )

    assert pool.type == "process"
    expected = api.default_process_template()
    template = pool.base_job_template
    assert template["job_configuration"] == expected["job_configuration"]
    properties = template["variables"]["properties"]
    expected_properties = expected["variables"]["properties"]
    assert sorted(properties) == sorted(expected_properties)
    for key, schema in expected_properties.items():
        for aspect in ("type", "anyOf", "default", "additionalProperties"):
            assert schema.get(aspect) == properties[key].get(aspect), (key, aspect)

    # And the pool it made runs flows.
    run = api.create_run(api.create_deployment(pool_name, "hello"))
    final = api.wait_for_final(run.id)
    assert final.state.type == StateType.COMPLETED, final.state


# 10 -----------------------------------------------------------------------------------------


def test_bad_working_dir_crashes_that_run_only(api: PrefectApi, worker, pool_name: str) -> None:
    api.create_process_pool(pool_name)
    deployment = api.create_deployment(pool_name, "hello")
    missing = f"/nonexistent-e2e-{uuid.uuid4().hex[:8]}/flows"
    bad = api.create_run(deployment, job_variables={"working_dir": missing})
    started = worker(pool_name)

    final = api.wait_for_final(bad.id)
    assert final.state.type == StateType.CRASHED, final.state
    assert StateType.RUNNING not in state_types(api, bad.id)

    good = api.create_run(deployment, parameters={"token": "after-the-bad-one"})
    final = api.wait_for_final(good.id)
    assert final.state.type == StateType.COMPLETED, final.state
    assert started.alive()

    skip_if_prefect_worker(
        "the crashed run's state message and API logs say only 'Flow run could not start: "
        "unhandled errors in a TaskGroup (1 sub-exception)' and 'Failed to submit flow run ... "
        "to infrastructure.'; the missing directory is named only in the worker's local output"
    )
    api.wait_for_log(bad.id, re.escape(missing))
