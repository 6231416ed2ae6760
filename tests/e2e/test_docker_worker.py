"""End-to-end tests of a Docker worker against a real Prefect server and the machine's real
Docker engine.

Flows run in `poolworker-test/prefect:3.8.8` (built locally by tests/docker/build-test-images.sh:
no registry is involved). Their code reaches the container through the `volumes` job variable:
tests/e2e/flows is mounted read-only at the same path, so the deployments' `path` and
`set_working_directory` pull step work unchanged. The containers reach the server on the host:
with the default network mode, which Prefect's rules make `host` on Linux for a 127.0.0.1 API
URL, through the host's loopback; in the `bridge` test through `host.docker.internal`, for which
conftest.py makes the server listen on every address.

Without a Docker engine every test here skips, saying why (fails where POOLWORKER_REQUIRE_DOCKER=1).
"""

from __future__ import annotations

import re
import uuid
from pathlib import Path
from typing import Any, Iterator, Optional

import pytest
from conftest import DOCKER_PREFECT_IMAGE, WORKER_KIND
from prefect.client.schemas.objects import StateType
from prefect_helpers import FLOWS_DIR, PrefectApi, wait_until

# The worker's stop grace (poolworker's --kill-grace default and Prefect's), plus the time a
# worker may take to notice a CANCELLING run.
KILL_GRACE_SECONDS = 30
CANCEL_DETECTION_SECONDS = 20
# A container imports Prefect before it reports anything: allow for a slow, busy machine.
RUN_TIMEOUT = 300

INFRASTRUCTURE_PID = re.compile(r"^http\+docker://localhost:[0-9a-f]{64}$")
FLOWS_VOLUME = f"{FLOWS_DIR}:{FLOWS_DIR}:ro"


@pytest.fixture(autouse=True)
def _docker(docker_client, pool_containers) -> None:
    """Every test here needs the engine and the image (skips or fails without them), and
    leaves no container behind."""


@pytest.fixture
def pool_containers(docker_client, pool_name: str) -> Iterator[Any]:
    """Lists the containers of this test's pool; removes them after the test."""

    def listing(flow_run_id: Optional[uuid.UUID] = None) -> list:
        label = (
            f"io.prefect.flow-run-id={flow_run_id}"
            if flow_run_id
            else f"io.prefect.work-pool-name={pool_name}"
        )
        return docker_client.containers.list(all=True, filters={"label": label})

    yield listing
    for container in listing():
        try:
            container.remove(force=True)
        except Exception:  # noqa: BLE001 (already gone)
            pass


def job_variables(**extra: Any) -> dict[str, Any]:
    """The job variables every test deployment has: the test image and the flows' folder."""
    variables: dict[str, Any] = {"image": DOCKER_PREFECT_IMAGE, "volumes": [FLOWS_VOLUME]}
    variables.update(extra)
    return variables


def only_container(pool_containers, run_id: uuid.UUID):
    found = pool_containers(run_id)
    assert len(found) == 1, f"expected one container of run {run_id}, found {found}"
    return found[0]


def wait_for_exit(container, timeout: float = 120):
    """Reloads `container` until it has exited; returns it."""

    def probe():
        container.reload()
        return container

    return wait_until(
        probe,
        lambda found: found.attrs["State"]["Status"] == "exited",
        timeout,
        f"container {container.name} to exit",
    )


# 1 ------------------------------------------------------------------------------------------


def test_flow_runs_in_a_container_and_completes_with_its_logs(
    api: PrefectApi, worker, pool_name: str, pool_containers
) -> None:
    api.create_docker_pool(pool_name)
    deployment = api.create_deployment(pool_name, "hello", job_variables=job_variables())
    token = uuid.uuid4().hex
    run = api.create_run(deployment, parameters={"token": token})
    worker(pool_name, worker_type="docker")

    final = api.wait_for_final(run.id, timeout=RUN_TIMEOUT)

    assert final.state.type == StateType.COMPLETED, final.state
    api.wait_for_log(run.id, rf"hello from the e2e flow, token={token}")
    assert INFRASTRUCTURE_PID.match(final.infrastructure_pid or ""), final.infrastructure_pid
    container = only_container(pool_containers, run.id)
    assert final.infrastructure_pid.endswith(":" + container.id)
    # The engine in the container still ships its last logs after the final state.
    container = wait_for_exit(container)
    assert container.attrs["State"]["ExitCode"] == 0
    assert container.attrs["Config"]["Image"] == DOCKER_PREFECT_IMAGE
    assert container.attrs["Config"]["Cmd"] == ["prefect", "flow-run", "execute"]


# 2 ------------------------------------------------------------------------------------------


def test_raising_flow_ends_failed(api: PrefectApi, worker, pool_name: str) -> None:
    api.create_docker_pool(pool_name)
    run = api.create_run(api.create_deployment(pool_name, "fails", job_variables=job_variables()))
    worker(pool_name, worker_type="docker")

    final = api.wait_for_final(run.id, timeout=RUN_TIMEOUT)

    assert final.state.type == StateType.FAILED, final.state
    api.wait_for_log(run.id, r"the e2e flow failed on purpose")


# 3 ------------------------------------------------------------------------------------------


def test_container_exiting_3_ends_crashed_with_the_code(
    api: PrefectApi, worker, pool_name: str
) -> None:
    # The container's own process exits 3 before any flow code runs, so only the worker can
    # report it. (A flow that exits 3 under `prefect flow-run execute` is reported CRASHED by
    # the engine itself, whose container then exits 0.)
    api.create_docker_pool(pool_name)
    run = api.create_run(
        api.create_deployment(
            pool_name, "hello", job_variables=job_variables(command="sh -c 'exit 3'")
        )
    )
    worker(pool_name, worker_type="docker")

    final = api.wait_for_final(run.id, timeout=RUN_TIMEOUT)

    assert final.state.type == StateType.CRASHED, final.state
    assert_names_exit_code_3(final.state.message)


def test_exit_code_without_stream_output_and_with_auto_remove(
    api: PrefectApi, worker, pool_name: str
) -> None:
    if WORKER_KIND == "prefect":
        pytest.skip(
            "Prefect's worker: without stream_output it reads the exit code from an inspect made "
            "before the exit (0), so the run is never reported"
        )
    api.create_docker_pool(pool_name)
    run = api.create_run(
        api.create_deployment(
            pool_name,
            "hello",
            job_variables=job_variables(
                command="sh -c 'sleep 2; exit 3'", stream_output=False, auto_remove=True
            ),
        )
    )
    worker(pool_name, worker_type="docker")

    final = api.wait_for_final(run.id, timeout=RUN_TIMEOUT)

    assert final.state.type == StateType.CRASHED, final.state
    assert_names_exit_code_3(final.state.message)


def assert_names_exit_code_3(message: Optional[str]) -> None:
    # "3" as a number of its own: not part of "3.8.8", "30" or a uuid.
    assert re.search(r"(?<![\w.-])3(?![\w-]|\.\d)", message or ""), (
        f"exit code 3 not named in the state message {message!r}"
    )


# 4 ------------------------------------------------------------------------------------------


def test_cancelled_flow_ends_cancelled_and_its_container_is_gone(
    api: PrefectApi, worker, pool_name: str, pool_containers
) -> None:
    api.create_docker_pool(pool_name)
    deployment = api.create_deployment(
        pool_name, "sleeper", job_variables=job_variables(auto_remove=True)
    )
    run = api.create_run(deployment, parameters={"seconds": 900})
    worker(pool_name, worker_type="docker")

    api.wait_for_run(
        run.id,
        lambda r: r.state.type == StateType.RUNNING,
        timeout=RUN_TIMEOUT,
        what="to be RUNNING",
    )
    api.wait_for_log(run.id, r"sleeper: pid \d+ sleeping")
    container = only_container(pool_containers, run.id)
    assert container.status == "running", container.status

    result = api.cancel(run.id)
    assert result.status.value == "ACCEPT", result

    final = api.wait_for_final(
        run.id, timeout=KILL_GRACE_SECONDS + CANCEL_DETECTION_SECONDS + 60
    )
    assert final.state.type == StateType.CANCELLED, final.state
    assert StateType.CANCELLING in [s.type for s in api.state_history(run.id)]
    # auto_remove: once stopped, the engine removes it.
    wait_until(
        lambda: pool_containers(run.id),
        lambda found: not found,
        timeout=KILL_GRACE_SECONDS + 30,
        what=f"the container of run {run.id} to be gone",
    )


# 5 ------------------------------------------------------------------------------------------


def test_job_variables_reach_the_container(
    api: PrefectApi, worker, pool_name: str, pool_containers, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "input.txt").write_text("mounted from the host\n")
    api.create_docker_pool(pool_name)
    label = f"label-{uuid.uuid4().hex[:8]}"
    deployment = api.create_deployment(
        pool_name,
        "probe",
        job_variables=job_variables(
            env={"E2E_FROM_DEPLOYMENT": "dep value with spaces $HOME 'quoted'",
                 "E2E_OVERRIDDEN": "deployment"},
            volumes=[FLOWS_VOLUME, f"{data}:/e2e-data:ro"],
            labels={"e2e.test-label": label},
            # Not the `host` mode the worker would choose: the container reaches the server
            # through host.docker.internal.
            network_mode="bridge",
        ),
    )
    names = ["E2E_FROM_DEPLOYMENT", "E2E_FROM_RUN", "E2E_OVERRIDDEN", "E2E_NOT_SET",
             "PREFECT_API_URL"]
    run = api.create_run(
        deployment,
        parameters={"env": names, "files": ["/e2e-data/input.txt"]},
        job_variables={"env": {"E2E_FROM_RUN": "run-value", "E2E_OVERRIDDEN": "flow run"}},
    )
    worker(pool_name, worker_type="docker")

    final = api.wait_for_final(run.id, timeout=RUN_TIMEOUT)

    assert final.state.type == StateType.COMPLETED, final.state
    api.wait_for_log(run.id, r"probe: file /e2e-data/input.txt=")
    text = api.log_text(run.id)
    seen = dict(re.findall(r"probe: env (\w+)=(.*)", text))
    api_url = seen.pop("PREFECT_API_URL")
    assert seen == {
        "E2E_FROM_DEPLOYMENT": repr("dep value with spaces $HOME 'quoted'"),
        "E2E_FROM_RUN": repr("run-value"),
        "E2E_OVERRIDDEN": repr("flow run"),
        "E2E_NOT_SET": "None",
    }
    # The worker's 127.0.0.1 API URL, made reachable from the bridge network.
    assert "host.docker.internal" in api_url, api_url
    assert f"probe: file /e2e-data/input.txt={'mounted from the host' + chr(10)!r}" in text

    container = only_container(pool_containers, run.id)
    labels = container.attrs["Config"]["Labels"]
    assert labels["e2e.test-label"] == label
    assert labels["io.prefect.flow-run-id"] == str(run.id)
    assert labels["io.prefect.work-pool-name"] == pool_name
    assert labels["io.prefect.version"] == "3.8.8"
    host_config = container.attrs["HostConfig"]
    assert host_config["NetworkMode"] == "bridge"
    assert f"{data}:/e2e-data:ro" in host_config["Binds"], host_config["Binds"]
    assert "host.docker.internal:host-gateway" in (host_config["ExtraHosts"] or [])


# 6 ------------------------------------------------------------------------------------------


def test_missing_image_with_pull_policy_never_crashes_that_run_only(
    api: PrefectApi, worker, pool_name: str, pool_containers
) -> None:
    api.create_docker_pool(pool_name)
    image = f"poolworker-test/no-such-image:{uuid.uuid4().hex[:8]}"
    missing = api.create_deployment(
        pool_name,
        "hello",
        name=f"missing-image-{pool_name}",
        job_variables=job_variables(image=image, image_pull_policy="Never"),
    )
    good = api.create_deployment(pool_name, "hello", job_variables=job_variables())
    bad_run = api.create_run(missing)
    worker(pool_name, worker_type="docker")

    final = api.wait_for_final(bad_run.id, timeout=RUN_TIMEOUT)

    assert final.state.type == StateType.CRASHED, final.state
    # The image is named where the user looks: the state message or the run's logs.
    assert image in (final.state.message or "") + "\n" + api.log_text(bad_run.id), (
        final.state.message
    )
    assert not pool_containers(bad_run.id)

    # The worker goes on.
    next_run = api.create_run(good, parameters={"token": "after-the-crash"})
    assert api.wait_for_final(next_run.id, timeout=RUN_TIMEOUT).state.type == StateType.COMPLETED


# 7 ------------------------------------------------------------------------------------------


def test_worker_creates_a_missing_pool_with_prefects_docker_template(
    api: PrefectApi, worker, pool_name: str
) -> None:
    worker(pool_name, worker_type="docker")

    pool = wait_until(
        lambda: api.read_pool(pool_name),
        lambda found: found is not None,
        timeout=120,
        what=f"work pool {pool_name} to be created",
    )

    assert pool.type == "docker"
    assert pool.base_job_template == api.default_docker_template()
