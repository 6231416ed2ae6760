"""End-to-end tests of the Kubernetes backend against a real Prefect server.

No cluster runs on this machine, so the API server is the standalone fake (`fake_kube`, built
beside poolworker from tests/fakes/fake_kube.cpp) started with `--kubelet`: its fake kubelet runs
each pod's container args (`prefect flow-run execute`) as a local process with the pod's env, so a
real flow runs, talks to the real server and reports its own final state. poolworker reaches the
fake through a kubeconfig (`KUBECONFIG`), exactly as it would reach a cluster from outside.

The compatibility tests compare the Job manifest poolworker would create (`poolworker render
--infrastructure`) with the one prefect-kubernetes prepares for the same pool template, deployment,
flow run and job variables (`KubernetesWorkerJobConfiguration.from_template_and_values` and
`prepare_for_flow_run`).

Where the tests are given `KUBECONFIG` (or `POOLWORKER_E2E_KUBECONFIG`, which wins): a real
cluster whose `default` namespace can pull `prefecthq/prefect:3.8.8-python3.12` and whose pods
reach the test server at its 127.0.0.1 URL (a local cluster on host networking), one run goes
through that cluster too; otherwise that single test skips, saying why.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import uuid
from pathlib import Path
from typing import Any, Iterator

import pytest
from conftest import POOLWORKER_BIN, VENV_BIN, WORKER_KIND, _worker_environment
from prefect.client.schemas.objects import StateType
from prefect_helpers import PrefectApi, wait_until

RUN_TIMEOUT = 240
FAKE_KUBE_BIN = Path(os.environ.get("POOLWORKER_FAKE_KUBE", POOLWORKER_BIN.parent / "fake_kube"))
INFRASTRUCTURE_PID = re.compile(r"^default:[a-z0-9-]+$")

pytestmark = pytest.mark.skipif(
    WORKER_KIND != "poolworker", reason="poolworker's Kubernetes backend and its fake cluster"
)


class FakeCluster:
    def __init__(self, process: subprocess.Popen, kubeconfig: Path, port: int) -> None:
        self.process = process
        self.kubeconfig = kubeconfig
        self.port = port


@pytest.fixture
def fake_cluster(tmp_path: Path, prefect_server) -> Iterator[FakeCluster]:
    if not os.access(FAKE_KUBE_BIN, os.X_OK):
        pytest.fail(f"{FAKE_KUBE_BIN} is missing: build the fake_kube target", pytrace=False)
    kubeconfig = tmp_path / "kubeconfig"
    env = _worker_environment(prefect_server.url, tmp_path / "pod-home")
    (tmp_path / "pod-home").mkdir()
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"
    log = open(tmp_path / "fake_kube.log", "wb")
    process = subprocess.Popen(
        [str(FAKE_KUBE_BIN), "--kubelet", "--kubeconfig", str(kubeconfig)],
        stdout=subprocess.PIPE,
        stderr=log,
        env=env,
        start_new_session=True,
    )
    line = process.stdout.readline().decode()
    assert line.startswith("ready "), f"fake_kube did not start: {line!r}"
    try:
        yield FakeCluster(process, kubeconfig, int(line.split()[1]))
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
        log.close()


def test_flow_runs_as_a_job_and_completes(
    api: PrefectApi, worker, pool_name: str, fake_cluster: FakeCluster
) -> None:
    api.create_kubernetes_pool(pool_name)
    deployment = api.create_deployment(pool_name, "hello")
    token = uuid.uuid4().hex
    run = api.create_run(deployment, parameters={"token": token})
    worker(pool_name, worker_type="kubernetes", env={"KUBECONFIG": str(fake_cluster.kubeconfig)})

    final = api.wait_for_final(run.id, timeout=RUN_TIMEOUT)

    assert final.state.type == StateType.COMPLETED, final.state
    assert INFRASTRUCTURE_PID.match(final.infrastructure_pid or ""), final.infrastructure_pid
    api.wait_for_log(run.id, rf"hello from the e2e flow, token={token}")


def test_container_exit_3_crashes_the_run(
    api: PrefectApi, worker, pool_name: str, fake_cluster: FakeCluster
) -> None:
    # The container's own process exits 3 before any flow code runs, so only the worker can
    # report it (a flow that exits 3 under `prefect flow-run execute` is reported CRASHED by the
    # engine itself, whose process then exits 0).
    api.create_kubernetes_pool(pool_name)
    deployment = api.create_deployment(
        pool_name, "hello", job_variables={"command": "sh -c 'exit 3'"}
    )
    run = api.create_run(deployment)
    worker(pool_name, worker_type="kubernetes", env={"KUBECONFIG": str(fake_cluster.kubeconfig)})

    final = api.wait_for_final(run.id, timeout=RUN_TIMEOUT)

    assert final.state.type == StateType.CRASHED, final.state
    assert "non-zero status code 3" in (final.state.message or ""), final.state.message


def test_cancelling_a_run_deletes_its_job(
    api: PrefectApi, worker, pool_name: str, fake_cluster: FakeCluster
) -> None:
    api.create_kubernetes_pool(pool_name)
    deployment = api.create_deployment(pool_name, "sleeper", parameters={"seconds": 600})
    run = api.create_run(deployment)
    worker(pool_name, worker_type="kubernetes", env={"KUBECONFIG": str(fake_cluster.kubeconfig)})
    api.wait_for_run(
        run.id, lambda r: r.state is not None and r.state.type == StateType.RUNNING,
        RUN_TIMEOUT, "the run to be RUNNING",
    )

    api.cancel(run.id)
    final = api.wait_for_final(run.id, timeout=RUN_TIMEOUT)

    assert final.state.type == StateType.CANCELLED, final.state


def test_real_cluster_run_completes(api: PrefectApi, worker, pool_name: str) -> None:
    kubeconfig = os.environ.get("POOLWORKER_E2E_KUBECONFIG") or os.environ.get("KUBECONFIG", "")
    if not kubeconfig:
        pytest.skip("no real cluster: give the tests KUBECONFIG (or POOLWORKER_E2E_KUBECONFIG)")
    api.create_kubernetes_pool(pool_name)
    deployment = api.create_deployment(
        pool_name, "hello", job_variables={"image": "prefecthq/prefect:3.8.8-python3.12"}
    )
    run = api.create_run(deployment)
    worker(pool_name, worker_type="kubernetes", env={"KUBECONFIG": kubeconfig})
    final = api.wait_for_final(run.id, timeout=600)
    assert final.state.type == StateType.COMPLETED, final.state


# ---- compatibility of the Job manifest with prefect-kubernetes ----------------------------------


def test_default_template_is_prefect_kubernetes_own(tmp_path: Path) -> None:
    from prefect_kubernetes.worker import KubernetesWorker

    result = subprocess.run(
        [str(POOLWORKER_BIN), "template", "--type", "kubernetes"],
        capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == KubernetesWorker.get_default_base_job_template()


def _custom_template() -> dict[str, Any]:
    """A pool whose job_manifest was customised: hard-coded env (one from a Secret), a sidecar,
    pod annotations, a node selector, and no {{ env }} placeholder."""
    from prefect_kubernetes.worker import KubernetesWorker

    template = KubernetesWorker.get_default_base_job_template()
    manifest = template["job_configuration"]["job_manifest"]
    pod = manifest["spec"]["template"]
    pod["metadata"] = {"annotations": {"sidecar.istio.io/inject": "false"}, "labels": {"tier": "batch"}}
    pod["spec"]["nodeSelector"] = {"pool": "flows"}
    pod["spec"]["containers"][0]["env"] = [
        {"name": "FROM_TEMPLATE", "value": "yes"},
        {"name": "DB_PASSWORD", "valueFrom": {"secretKeyRef": {"name": "db", "key": "password"}}},
    ]
    pod["spec"]["containers"].append({"name": "sidecar", "image": "busybox:1"})
    return template


CASES = {
    "defaults": (None, {}),
    "variables": (
        None,
        {
            "image": "repo/flows:7",
            "namespace": "flows",
            "service_account_name": "runner",
            "image_pull_policy": "Always",
            "backoff_limit": 3,
            "finished_job_ttl": 120,
            "command": "python -m 'my flow' --fast",
            "labels": {"team": "data eng", "cost/center": "42!"},
            "annotations": {"owner key": "me"},
            "env": {"EXTRA": "1", "PREFECT_FLOW_RUN_EXECUTE_SIGTERM_BEHAVIOR": "reschedule"},
            "name": "My Nightly Job",
            "cpu_request": "500m",
            "memory_limit": "1Gi",
        },
    ),
    "customised_manifest": (_custom_template, {"env": {"FROM_TEMPLATE": "overridden"}}),
}


def _render(api: PrefectApi, pool: str, run_id: uuid.UUID, tmp_path: Path) -> dict[str, Any]:
    env = _worker_environment(api.url, tmp_path)
    result = subprocess.run(
        [str(POOLWORKER_BIN), "render", "--pool", pool, "--flow-run", str(run_id),
         "--infrastructure"],
        env=env, capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def _prefect_manifest(api: PrefectApi, run_id: uuid.UUID) -> dict[str, Any]:
    from prefect_kubernetes.worker import KubernetesWorkerJobConfiguration

    with api.client() as client:
        run = client.read_flow_run(run_id)
        deployment = client.read_deployment(run.deployment_id)
        flow = client.read_flow(run.flow_id)
        pool = client.read_work_pool(deployment.work_pool_name)

    async def build() -> Any:
        from prefect.client.orchestration import get_client
        from prefect.settings import PREFECT_API_URL, temporary_settings

        with temporary_settings(updates={PREFECT_API_URL: api.url}):
            async with get_client() as client:
                values = {**(deployment.job_variables or {}), **(run.job_variables or {})}
                config = await KubernetesWorkerJobConfiguration.from_template_and_values(
                    pool.base_job_template, values, client=client
                )
                config.prepare_for_flow_run(
                    run, deployment=deployment, flow=flow, work_pool=pool,
                    worker_name="poolworker-render",
                )
                return config.job_manifest

    return asyncio.run(build())


def _normalised(manifest: dict[str, Any]) -> dict[str, Any]:
    """Both manifests with what differs by design made comparable: the Prefect settings in env
    depend on each process's own settings (compared for PREFECT_API_URL only), and the default
    image names the worker's Python version."""
    manifest = json.loads(json.dumps(manifest))
    for container in manifest["spec"]["template"]["spec"]["containers"]:
        if "env" in container:
            kept = []
            for entry in container["env"]:
                name = entry.get("name", "")
                settings = name.startswith("PREFECT_") and name not in (
                    "PREFECT_API_URL", "PREFECT_FLOW_RUN_EXECUTE_SIGTERM_BEHAVIOR")
                if not settings:
                    kept.append(entry)
            container["env"] = kept
        image = container.get("image", "")
        if re.fullmatch(r"prefecthq/prefect:3\.8\.8-python3\.\d+", image):
            container["image"] = "prefecthq/prefect:3.8.8-python3.X"
    return manifest


@pytest.mark.parametrize("case", sorted(CASES))
def test_job_manifest_matches_prefect_kubernetes(
    api: PrefectApi, pool_name: str, case: str, tmp_path: Path
) -> None:
    template_factory, variables = CASES[case]
    api.create_kubernetes_pool(pool_name, template_factory() if template_factory else None)
    deployment = api.create_deployment(pool_name, "hello", job_variables={"labels": {"from": "deployment"}})
    run = api.create_run(deployment, job_variables=variables)

    ours = _normalised(_render(api, pool_name, run.id, tmp_path))
    theirs = _normalised(_prefect_manifest(api, run.id))

    assert ours["kind"] == "Job" and ours["metadata"]["labels"]["prefect.io/flow-run-id"] == str(run.id)
    assert any(e["name"] == "PREFECT_API_URL" for e in ours["spec"]["template"]["spec"]["containers"][0]["env"])
    assert ours == theirs
