"""End-to-end tests of backend plugins against a real Prefect server.

Both example plugins run real flows: the shared library `simple-process`
(examples/plugins/simple-process, built by CMake) and the executable `script-process`
(examples/plugins/script-process, a Python script). Each goes through COMPLETED, FAILED,
CRASHED and CANCELLED and through a worker restart. Faulty plugins (a wrong ABI, one that
throws, an executable that crashes, one that hangs) each get their clear message, and the worker
runs the next flow.

Plugins are poolworker's own: against Prefect's worker (POOLWORKER_E2E_WORKER=prefect) this
module does not apply.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import uuid
from pathlib import Path

import pytest
from conftest import POOLWORKER_BIN, REPO, WORKER_KIND
from fault_helpers import relaunch_worker
from prefect.client.schemas.actions import WorkPoolCreate
from prefect.client.schemas.objects import StateType
from prefect_helpers import PrefectApi, process_alive, wait_until

pytestmark = pytest.mark.skipif(
    WORKER_KIND == "prefect", reason="backend plugins are poolworker's; Prefect's worker has none"
)

BUILD_DIR = POOLWORKER_BIN.parent.parent
PLUGIN_FILES = {
    "simple-process": BUILD_DIR / "plugins" / "simple-process.so",
    "script-process": REPO / "examples" / "plugins" / "script-process" / "script-process",
    "throwing-process": BUILD_DIR / "test-plugins" / "throwing-process" / "throwing-process.so",
    "faulty-script": REPO / "tests" / "backends" / "plugins" / "fixtures" / "faulty-script",
    "abi-v2-symbol": BUILD_DIR / "test-plugins" / "abi-v2-symbol" / "abi-v2-symbol.so",
}
KINDS = ["simple-process", "script-process"]
KILL_GRACE_SECONDS = 30
CANCEL_DETECTION_SECONDS = 20


def make_plugin_dir(path: Path, *names: str) -> Path:
    """A plugin directory poolworker accepts (ours, not writable by others) with copies of the
    named plugins."""
    path.mkdir(mode=0o755)
    os.chmod(path, 0o755)
    for name in names:
        source = PLUGIN_FILES[name]
        if not source.exists():
            pytest.fail(f"plugin {name} is missing at {source}: build the tree first "
                        "(.ci/build release builds the examples and test plugins)",
                        pytrace=False)
        target = path / source.name
        shutil.copyfile(source, target)
        os.chmod(target, 0o755)
    return path


def poolworker(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(POOLWORKER_BIN), *args], capture_output=True, text=True,
                          timeout=120)


def plugin_template(kind: str, plugin_dir: Path) -> dict:
    result = poolworker("template", "--type", kind, "--plugin-dir", str(plugin_dir))
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def create_pool(api: PrefectApi, name: str, kind: str, plugin_dir: Path) -> None:
    template = plugin_template(kind, plugin_dir)
    with api.client() as client:
        client.create_work_pool(WorkPoolCreate(name=name, type=kind, base_job_template=template))


@pytest.fixture
def plugins(tmp_path: Path) -> Path:
    return make_plugin_dir(tmp_path / "plugins", *PLUGIN_FILES)


def start(worker, pool: str, kind: str, plugin_dir: Path, **kwargs):
    extra = ["--type", kind, "--plugin-dir", str(plugin_dir)]
    return worker(pool, extra_args=extra, **kwargs)


# ---- both example plugins ---------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_completed_failed_and_crashed_runs(
    api: PrefectApi, worker, pool_name: str, plugins: Path, kind: str
) -> None:
    create_pool(api, pool_name, kind, plugins)
    token = uuid.uuid4().hex
    completed = api.create_run(api.create_deployment(pool_name, "hello"),
                               parameters={"token": token})
    failed = api.create_run(api.create_deployment(pool_name, "fails"))
    crashed = api.create_run(api.create_deployment(pool_name, "crash_exit3"))
    running = start(worker, pool_name, kind, plugins)

    final = api.wait_for_final(completed.id)
    assert final.state.type == StateType.COMPLETED, final.state
    api.wait_for_log(completed.id, rf"hello from the e2e flow, token={token}")
    assert final.infrastructure_pid and ":" in final.infrastructure_pid, final.infrastructure_pid

    final = api.wait_for_final(failed.id)
    assert final.state.type == StateType.FAILED, final.state
    api.wait_for_log(failed.id, r"the e2e flow failed on purpose")

    final = api.wait_for_final(crashed.id)
    assert final.state.type == StateType.CRASHED, final.state
    assert re.search(r"(?<![\w.-])3(?![\w-]|\.\d)", final.state.message or ""), final.state
    assert running.alive(), running.output()
    assert f"loaded backend plugin '{kind}' 1.0.0" in running.output()


@pytest.mark.parametrize("kind", KINDS)
def test_cancelled_run_ends_cancelled_and_its_process_is_gone(
    api: PrefectApi, worker, pool_name: str, plugins: Path, kind: str, tmp_path: Path
) -> None:
    create_pool(api, pool_name, kind, plugins)
    pid_file = tmp_path / "sleeper.pid"
    run = api.create_run(api.create_deployment(pool_name, "sleeper"),
                         parameters={"seconds": 900, "pid_file": str(pid_file)})
    start(worker, pool_name, kind, plugins)

    pid = wait_until(lambda: int(pid_file.read_text()) if pid_file.exists() else None,
                     lambda value: value is not None, timeout=180,
                     what="the sleeper flow to write its pid")
    api.wait_for_run(run.id, lambda r: r.state.type == StateType.RUNNING, timeout=60,
                     what="to be RUNNING")
    result = api.cancel(run.id)
    assert result.state.type == StateType.CANCELLING, result.state

    wait_until(lambda: process_alive(pid), lambda alive: not alive,
               timeout=KILL_GRACE_SECONDS + CANCEL_DETECTION_SECONDS,
               what=f"the flow process {pid} to be gone after cancellation")
    # The engine, hit by the SIGTERM, forces CRASHED on its way out; the worker, once the
    # plugin reports the infrastructure gone, marks the run CANCELLED (as Prefect's worker does).
    final = api.wait_for_run(run.id, lambda r: r.state.type == StateType.CANCELLED, timeout=60,
                             what="to be CANCELLED")
    assert final.state.type == StateType.CANCELLED, final.state


@pytest.mark.parametrize("kind", KINDS)
def test_restarted_worker_reattaches_to_a_running_flow(
    api: PrefectApi, worker, pool_name: str, plugins: Path, kind: str, tmp_path: Path
) -> None:
    create_pool(api, pool_name, kind, plugins)
    pid_file = tmp_path / "sleeper.pid"
    run = api.create_run(api.create_deployment(pool_name, "sleeper"),
                         parameters={"seconds": 25, "pid_file": str(pid_file)})
    first = start(worker, pool_name, kind, plugins)
    api.wait_for_run(run.id, lambda r: r.state.type == StateType.RUNNING, timeout=180,
                     what="to be RUNNING")
    # RUNNING is proposed by the engine before the flow's body writes its pid.
    pid = wait_until(lambda: pid_file.read_text() if pid_file.exists() else "",
                     lambda text: text.strip().isdigit(), timeout=60,
                     what=f"the flow to write {pid_file}")
    pid = int(pid)

    # SIGTERM: the worker leaves (its flows go on) and the next one takes over from its journal.
    assert first.stop() == 0, first.output()
    assert process_alive(pid), "the flow died with its worker"
    assert api.read_run(run.id).state.type == StateType.RUNNING

    second = relaunch_worker(worker, first)
    api.wait_for_log(run.id, r"re-attached to flow run", timeout=60)
    final = api.wait_for_final(run.id, timeout=120)
    assert final.state.type == StateType.COMPLETED, final.state
    assert second.alive(), second.output()


@pytest.mark.parametrize("kind", KINDS)
def test_worker_creates_a_missing_pool_with_the_plugins_template(
    api: PrefectApi, worker, pool_name: str, plugins: Path, kind: str
) -> None:
    listing = poolworker("backends", "--plugin-dir", str(plugins))
    assert listing.returncode == 0, listing.stderr
    line = next((l for l in listing.stdout.splitlines() if l.split()[:1] == [kind]), "")
    origin = plugins / PLUGIN_FILES[kind].name
    assert line.split()[1:3] == ["1.0.0", str(origin)], listing.stdout
    # The wrong-ABI plugin in the folder is named on stderr, and does not stop the listing.
    assert "abi-v2-symbol.so: built for plugin ABI major 2" in listing.stderr, listing.stderr

    started = start(worker, pool_name, kind, plugins)
    pool = wait_until(lambda: api.read_pool(pool_name), lambda p: p is not None, timeout=60,
                      what=f"work pool {pool_name} to be created")
    assert pool.type == kind
    assert pool.base_job_template == plugin_template(kind, plugins)
    run = api.create_run(api.create_deployment(pool_name, "hello"), parameters={"token": "new"})
    assert api.wait_for_final(run.id).state.type == StateType.COMPLETED
    assert started.alive()


# ---- faulty plugins ----------------------------------------------------------------------------


def test_wrong_abi_plugin_is_refused_with_a_message_and_the_others_run(
    api: PrefectApi, worker, pool_name: str, tmp_path: Path
) -> None:
    plugin_dir = make_plugin_dir(tmp_path / "plugins", "abi-v2-symbol", "simple-process")
    create_pool(api, pool_name, "simple-process", plugin_dir)
    run = api.create_run(api.create_deployment(pool_name, "hello"), parameters={"token": "abi"})
    # The plugin directory from the environment this time.
    started = worker(pool_name, env={"POOLWORKER_PLUGIN_DIR": str(plugin_dir)})

    assert api.wait_for_final(run.id).state.type == StateType.COMPLETED
    output = started.output()
    assert ("abi-v2-symbol.so: built for plugin ABI major 2 (it exports poolworker_plugin_v2); "
            "this poolworker loads ABI major 1") in output, output
    assert started.alive()


def test_throwing_plugin_crashes_one_run_with_its_message_and_runs_the_next(
    api: PrefectApi, worker, pool_name: str, plugins: Path
) -> None:
    create_pool(api, pool_name, "throwing-process", plugins)
    deployment = api.create_deployment(pool_name, "hello")
    thrown = api.create_run(deployment,
                            job_variables={"env": {"POOLWORKER_TEST_FAULT": "throw"}})
    started = start(worker, pool_name, "throwing-process", plugins)

    final = api.wait_for_final(thrown.id)
    assert final.state.type == StateType.CRASHED, final.state
    api.wait_for_log(thrown.id, r"backend plugin 'throwing-process' threw in start: "
                                r"deliberate failure of the throwing test plugin")
    following = api.create_run(deployment, parameters={"token": "after-throw"})
    assert api.wait_for_final(following.id).state.type == StateType.COMPLETED
    assert started.alive()


def test_crashing_executable_plugin_crashes_one_run_and_the_worker_goes_on(
    api: PrefectApi, worker, pool_name: str, plugins: Path
) -> None:
    create_pool(api, pool_name, "faulty-script", plugins)
    deployment = api.create_deployment(pool_name, "hello")
    crashed = api.create_run(deployment,
                             job_variables={"env": {"POOLWORKER_TEST_FAULT": "crash"}})
    started = start(worker, pool_name, "faulty-script", plugins)

    final = api.wait_for_final(crashed.id)
    assert final.state.type == StateType.CRASHED, final.state
    api.wait_for_log(crashed.id, r"backend plugin 'faulty-script' crashed in `start`: "
                                 r"killed by signal 11")
    following = api.create_run(deployment, parameters={"token": "after-crash"})
    assert api.wait_for_final(following.id).state.type == StateType.COMPLETED
    assert started.alive()


def test_hanging_executable_plugin_is_killed_at_its_deadline_and_the_worker_goes_on(
    api: PrefectApi, worker, pool_name: str, plugins: Path, tmp_path: Path
) -> None:
    create_pool(api, pool_name, "faulty-script", plugins)
    # The plugin directory and the plugin's deadline from the config file this time.
    config = tmp_path / "poolworker.yaml"
    config.write_text(f"plugin_dir: {plugins}\n"
                      "backends:\n  faulty-script:\n    call_timeout_seconds: 3\n")
    deployment = api.create_deployment(pool_name, "hello")
    hung = api.create_run(deployment, job_variables={"env": {"POOLWORKER_TEST_FAULT": "hang"}})
    started = worker(pool_name, extra_args=["--config", str(config)])

    final = api.wait_for_final(hung.id, timeout=120)
    assert final.state.type == StateType.CRASHED, final.state
    api.wait_for_log(hung.id, r"backend plugin 'faulty-script' did not answer `start` within "
                              r"3 s; poolworker killed it")
    following = api.create_run(deployment, parameters={"token": "after-hang"})
    assert api.wait_for_final(following.id).state.type == StateType.COMPLETED
    assert started.alive()
