"""End-to-end test of the sidecar image (packaging/container/build.sh): the image is built from
the binaries under test, started on the machine's Docker engine as a Docker worker, and runs a
real flow (in the test image `poolworker-test/prefect:3.8.8`) against the real Prefect server.

The worker container shares the host's network namespace (it reaches the server on 127.0.0.1)
and the engine's socket, with the socket's group added so that its non-root user may use it.
Without a Docker engine the test skips, saying why (fails where POOLWORKER_REQUIRE_DOCKER=1).
"""

from __future__ import annotations

import os
import subprocess
import uuid
from pathlib import Path
from typing import Iterator

import pytest
from conftest import DOCKER_PREFECT_IMAGE, DOCKER_SOCKET, POOLWORKER_BIN, REPO, WORKER_KIND
from prefect.client.schemas.objects import StateType
from prefect_helpers import FLOWS_DIR, PrefectApi

IMAGE_TAG = "poolworker-e2e/sidecar:test"
RUN_TIMEOUT = 300
NON_ROOT_USER = "65532:65532"


@pytest.fixture(scope="module")
def sidecar_image(docker_client) -> Iterator[str]:
    """Builds the image from the binaries under test; removes it afterwards."""
    if WORKER_KIND != "poolworker":
        pytest.skip("the sidecar image is poolworker's")
    built = subprocess.run(
        [str(REPO / "packaging" / "container" / "build.sh"), "--bin", str(POOLWORKER_BIN.parent),
         "--tag", IMAGE_TAG],
        capture_output=True, text=True, timeout=600, check=False,
    )
    assert built.returncode == 0, f"build.sh failed:\n{built.stdout}\n{built.stderr}"
    print(built.stdout.strip())
    yield IMAGE_TAG
    docker_client.images.remove(IMAGE_TAG, force=True)


def test_the_sidecar_image_is_small_non_root_and_has_no_shell(docker_client, sidecar_image):
    image = docker_client.images.get(sidecar_image)
    assert image.attrs["Config"]["User"] == NON_ROOT_USER
    assert image.attrs["Config"]["Entrypoint"] == ["/usr/bin/poolworker"]
    size_mib = image.attrs["Size"] / (1024 * 1024)
    print(f"sidecar image size: {size_mib:.1f} MiB")
    assert size_mib < 64, f"the image is {size_mib:.1f} MiB: something unexpected went into it"
    version = docker_client.containers.run(sidecar_image, ["--version"], remove=True)
    assert version.decode().startswith("poolworker "), version
    shell = subprocess.run(
        ["docker", "run", "--rm", "--entrypoint", "/bin/sh", sidecar_image, "-c", "true"],
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert shell.returncode != 0, "the image has a shell"


def test_a_flow_runs_through_the_sidecar_image(
    api: PrefectApi, docker_client, sidecar_image: str, pool_name: str
) -> None:
    api.create_docker_pool(pool_name)
    deployment = api.create_deployment(
        pool_name, "hello",
        job_variables={"image": DOCKER_PREFECT_IMAGE, "volumes": [f"{FLOWS_DIR}:{FLOWS_DIR}:ro"]},
    )
    token = uuid.uuid4().hex
    run = api.create_run(deployment, parameters={"token": token})
    socket_group = str(os.stat(DOCKER_SOCKET).st_gid)
    worker = docker_client.containers.run(
        sidecar_image,
        ["start", "--pool", pool_name, "--type", "docker", "--name", f"sidecar-{pool_name}"],
        detach=True,
        network_mode="host",
        group_add=[socket_group],
        volumes={str(DOCKER_SOCKET): {"bind": "/var/run/docker.sock", "mode": "rw"}},
        environment={"PREFECT_API_URL": api.url, "POOLWORKER_LOG_LEVEL": "DEBUG"},
        labels={"poolworker-e2e": pool_name},
    )
    try:
        try:
            final = api.wait_for_final(run.id, timeout=RUN_TIMEOUT)
        finally:
            logs = worker.logs().decode(errors="replace")
            print(f"===== the sidecar worker's log:\n{logs}")
        assert final.state.type == StateType.COMPLETED, f"{final.state}\nworker log:\n{logs}"
        api.wait_for_log(run.id, rf"hello from the e2e flow, token={token}")
        worker.reload()
        assert worker.attrs["State"]["Running"], logs
        assert worker.attrs["Config"]["User"] == NON_ROOT_USER
    finally:
        worker.remove(force=True)
        for container in docker_client.containers.list(
            all=True, filters={"label": f"io.prefect.work-pool-name={pool_name}"}
        ):
            container.remove(force=True)


def test_the_image_script_refuses_missing_binaries(tmp_path: Path) -> None:
    result = subprocess.run(
        [str(REPO / "packaging" / "container" / "build.sh"), "--bin", str(tmp_path)],
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert result.returncode == 1
    assert f"{tmp_path}/poolworker is missing" in result.stderr
