"""Fixtures for the end-to-end tests: a real Prefect server per session and a factory of workers.

The worker under test is poolworker (`POOLWORKER_BIN`, default `<repo>/build/bin/poolworker`),
or Prefect's own `prefect worker start` when `POOLWORKER_E2E_WORKER=prefect`: the same tests
then check the tests themselves against the reference implementation.
"""

from __future__ import annotations

import ctypes
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Optional, Sequence

import pytest

E2E_DIR = Path(__file__).resolve().parent
REPO = E2E_DIR.parent.parent
# run.sh starts pytest with the virtualenv's python, so its bin folder holds `prefect` and the
# `python` that flow run children must find first on PATH. Not resolved: a venv python is a
# symlink to the base interpreter, whose folder has no prefect.
VENV_BIN = Path(sys.executable).parent

WORKER_KIND = os.environ.get("POOLWORKER_E2E_WORKER", "poolworker").strip().lower()
if WORKER_KIND not in ("poolworker", "prefect"):
    raise pytest.UsageError(
        f"POOLWORKER_E2E_WORKER={WORKER_KIND!r}: expected 'poolworker' or 'prefect'"
    )
POOLWORKER_BIN = Path(os.environ.get("POOLWORKER_BIN", REPO / "build" / "bin" / "poolworker"))

SERVER_START_TIMEOUT = 180.0
WORKER_STOP_TIMEOUT = 60.0
LOG_TAIL_LINES = 300


def _clean_environment() -> dict[str, str]:
    """This process's environment without any Prefect setting, so that nothing of the machine's
    own Prefect configuration leaks into the server, the workers or the flows."""
    return {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}


# The test process uses Prefect's client too: give it a Prefect home of its own before prefect
# is imported (by prefect_helpers), and drop inherited settings.
_CLIENT_HOME = tempfile.mkdtemp(prefix="poolworker-e2e-client-")
for _key in [k for k in os.environ if k.startswith("PREFECT_")]:
    del os.environ[_key]
os.environ["PREFECT_HOME"] = _CLIENT_HOME
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"

from prefect_helpers import PrefectApi  # noqa: E402  (needs the environment above)

# Flow processes that a worker leaves behind (a worker that dies, or one that by design leaves
# runs alone when it stops) are re-parented to this process instead of init, so that teardown
# can find, kill and reap them. Linux only; harmless if it fails.
_PR_SET_CHILD_SUBREAPER = 36
try:
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
except (OSError, AttributeError):
    pass


def pytest_report_header(config: pytest.Config) -> list[str]:
    worker = f"prefect worker start ({VENV_BIN / 'prefect'})"
    if WORKER_KIND == "poolworker":
        worker = f"poolworker ({POOLWORKER_BIN})"
    return [f"e2e worker under test: {worker}"]


def pytest_unconfigure(config: pytest.Config) -> None:
    shutil.rmtree(_CLIENT_HOME, ignore_errors=True)


@pytest.hookimpl(hookwrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Iterator[None]:
    # Fixtures look at these in teardown to decide whether to print the processes' output.
    outcome = yield
    report = outcome.get_result()
    setattr(item, f"rep_{report.when}", report)


def _test_failed(node: pytest.Item) -> bool:
    return any(
        getattr(getattr(node, f"rep_{when}", None), "failed", False) for when in ("setup", "call")
    )


def _tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()
    except FileNotFoundError:
        return f"({path} does not exist)"
    skipped = len(text) - lines
    head = f"... ({skipped} earlier lines in {path})\n" if skipped > 0 else ""
    return head + "\n".join(text[-lines:])


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# ---- processes ---------------------------------------------------------------------------------


def _children_of(pids: set[int]) -> set[int]:
    """All processes whose parent is in `pids`, from /proc."""
    found = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as stat:
                ppid = int(stat.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        if ppid in pids:
            found.add(int(entry))
    return found


def _descendants(pid: int) -> set[int]:
    found: set[int] = set()
    frontier = {pid}
    while frontier:
        frontier = _children_of(frontier) - found
        found |= frontier
    return found


def _kill_quietly(pid: int, sig: int = signal.SIGKILL) -> None:
    try:
        os.kill(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _killpg_quietly(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _reap_orphans(keep: set[int]) -> list[int]:
    """Kills and reaps children of this process (re-parented orphans, see the subreaper above)
    other than those in `keep`. Returns the pids it killed."""
    killed = []
    for pid in _children_of({os.getpid()}) - keep:
        _kill_quietly(pid)
        killed.append(pid)
    for pid in killed:
        try:
            os.waitpid(pid, 0)
        except ChildProcessError:
            pass
    return killed


# ---- the Prefect server ------------------------------------------------------------------------


@dataclass
class PrefectServer:
    """A `prefect server start` process owned by the test session."""

    url: str
    home: Path
    log_path: Path
    process: subprocess.Popen

    def log_tail(self, lines: int = 150) -> str:
        return _tail(self.log_path, lines)


def _server_environment(home: Path) -> dict[str, str]:
    env = _clean_environment()
    env.update(
        {
            "PREFECT_HOME": str(home),
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "PREFECT_SERVER_UI_ENABLED": "false",
            # No deployment here has a schedule, and no automation is used. The services that
            # workers rely on (late runs, cancellation cleanup, foreman, event persister) keep
            # their defaults.
            "PREFECT_SERVER_SERVICES_SCHEDULER_ENABLED": "false",
            "PREFECT_SERVER_SERVICES_TRIGGERS_ENABLED": "false",
            "PYTHONUNBUFFERED": "1",
        }
    )
    return env


def _health_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=5) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


def _stop_process_group(process: subprocess.Popen, timeout: float) -> None:
    if process.poll() is None:
        _killpg_quietly(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            pass
    _killpg_quietly(process.pid, signal.SIGKILL)
    process.wait()


def _start_server(workdir: Path, listen: str = "127.0.0.1") -> PrefectServer:
    """Starts a server on `listen` (its clients use 127.0.0.1 whatever it listens on)."""
    home = workdir / "home"
    home.mkdir(parents=True, exist_ok=True)
    last_error = ""
    for attempt in range(3):
        port = _free_port()
        url = f"http://127.0.0.1:{port}/api"
        log_path = workdir / f"server-{attempt}.log"
        with open(log_path, "wb") as log:
            process = subprocess.Popen(
                [str(VENV_BIN / "prefect"), "server", "start", "--host", listen,
                 "--port", str(port)],
                cwd=workdir,  # Prefect reads .env and prefect.toml from its cwd
                env=_server_environment(home),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        server = PrefectServer(url=url, home=home, log_path=log_path, process=process)
        deadline = time.monotonic() + SERVER_START_TIMEOUT
        while time.monotonic() < deadline and process.poll() is None:
            if _health_ok(url):
                return server
            time.sleep(0.5)
        if process.poll() is None:
            what = f"did not answer GET /api/health within {SERVER_START_TIMEOUT:.0f} s"
        else:
            what = f"exited with status {process.returncode}"
        _stop_process_group(process, timeout=10)
        output = server.log_tail()
        last_error = f"Prefect server on port {port} {what}; its output:\n{output}"
        if "address already in use" not in output.lower():
            break
    pytest.fail(last_error, pytrace=False)


def _server_listen_address(session: pytest.Session) -> str:
    """127.0.0.1, unless the session runs Docker tests on a machine with a Docker engine: a
    container on a bridge network reaches the host at the bridge's gateway address
    (`host.docker.internal`, mapped to `host-gateway`), never at the host's 127.0.0.1, so the
    server then listens on every address."""
    if not docker_socket_exists():
        return "127.0.0.1"
    if any(Path(str(item.fspath)).name == "test_docker_worker.py" for item in session.items):
        return "0.0.0.0"
    return "127.0.0.1"


@pytest.fixture(scope="session")
def prefect_server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[PrefectServer]:
    server = _start_server(
        tmp_path_factory.mktemp("prefect-server"), _server_listen_address(request.session)
    )
    try:
        yield server
    finally:
        _stop_process_group(server.process, timeout=20)


@pytest.fixture(scope="session")
def api(prefect_server: PrefectServer) -> PrefectApi:
    return PrefectApi(prefect_server.url)


@pytest.fixture(scope="session")
def worker_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """PREFECT_HOME of the workers and of the flow runs they start."""
    return tmp_path_factory.mktemp("worker-home")


# ---- workers -----------------------------------------------------------------------------------


@dataclass
class WorkerProcess:
    """A worker started by the `worker` fixture."""

    name: str
    kind: str
    argv: list[str]
    log_path: Path
    process: subprocess.Popen
    state_dir: Optional[Path] = None
    descendants_seen: set[int] = field(default_factory=set)

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait(self, timeout: float) -> int:
        """Waits for the worker to exit by itself; returns its exit code."""
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"worker {self.name!r} still running after {timeout:.0f} s; its output:\n"
                f"{_tail(self.log_path)}"
            ) from None

    def stop(self, timeout: float = WORKER_STOP_TIMEOUT) -> int:
        """SIGTERM, then wait; SIGKILL (to its process group) on timeout. Returns the exit code."""
        if self.alive():
            self.descendants_seen |= _descendants(self.pid)
            _kill_quietly(self.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                _killpg_quietly(self.pid, signal.SIGKILL)
                self.process.wait()
        return self.process.returncode

    def cleanup(self) -> None:
        """Stops the worker and kills whatever it started that still runs."""
        self.stop()
        _killpg_quietly(self.pid, signal.SIGKILL)
        for pid in self.descendants_seen:
            _kill_quietly(pid)


def _worker_environment(api_url: str, home: Path) -> dict[str, str]:
    env = _clean_environment()
    env.update(
        {
            "PATH": f"{VENV_BIN}{os.pathsep}{env.get('PATH', os.defpath)}",
            "PREFECT_API_URL": api_url,
            "PREFECT_HOME": str(home),
            "PREFECT_WORKER_QUERY_SECONDS": "1",
            "PREFECT_WORKER_HEARTBEAT_SECONDS": "2",
            "PREFECT_WORKER_CANCELLATION_POLL_SECONDS": "2",
            "PYTHONUNBUFFERED": "1",
        }
    )
    return env


class WorkerFactory:
    """Starts workers (poolworker or Prefect's) and always cleans them up."""

    def __init__(self, api_url: str, home: Path, workdir: Path, test_name: str) -> None:
        self.api_url = api_url
        self.home = home
        self.workdir = workdir
        self.test_name = test_name
        self.started: list[WorkerProcess] = []

    def __call__(
        self,
        pool: str,
        *,
        name: Optional[str] = None,
        work_queues: Sequence[str] = (),
        limit: Optional[int] = None,
        prefetch_seconds: Optional[int] = None,
        run_once: bool = False,
        worker_type: Optional[str] = None,
        base_job_template: Optional[Path] = None,
        extra_args: Sequence[str] = (),
        env: Optional[dict[str, str]] = None,
    ) -> WorkerProcess:
        index = len(self.started) + 1
        name = name or f"e2e-{self.test_name}-{index}"
        args = ["start", "--pool", pool, "--name", name]
        for queue in work_queues:
            args += ["--work-queue", queue]
        if limit is not None:
            args += ["--limit", str(limit)]
        if prefetch_seconds is not None:
            args += ["--prefetch-seconds", str(prefetch_seconds)]
        if run_once:
            args.append("--run-once")
        if worker_type is not None:
            args += ["--type", worker_type]
        if base_job_template is not None:
            args += ["--base-job-template", str(base_job_template)]
        args += list(extra_args)

        state_dir = None
        if WORKER_KIND == "prefect":
            argv = [str(VENV_BIN / "prefect"), "worker", *args]
        else:
            if not os.access(POOLWORKER_BIN, os.X_OK):
                pytest.fail(
                    f"poolworker binary {POOLWORKER_BIN} is missing or not executable: build it, "
                    "set POOLWORKER_BIN, or run against Prefect's worker with "
                    "POOLWORKER_E2E_WORKER=prefect",
                    pytrace=False,
                )
            state_dir = self.workdir / f"state-{index}"
            state_dir.mkdir()
            argv = [str(POOLWORKER_BIN), *args, "--state-dir", str(state_dir)]

        full_env = _worker_environment(self.api_url, self.home)
        full_env.update(env or {})
        cwd = self.workdir / f"cwd-{index}"
        cwd.mkdir()
        log_path = self.workdir / f"worker-{index}.log"
        with open(log_path, "wb") as log:
            log.write(f"$ {' '.join(argv)}\n".encode())
            log.flush()
            process = subprocess.Popen(
                argv,
                cwd=cwd,  # an empty folder: no .env or prefect.toml to pick up
                env=full_env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        started = WorkerProcess(
            name=name, kind=WORKER_KIND, argv=argv, log_path=log_path, process=process,
            state_dir=state_dir,
        )
        self.started.append(started)
        return started


@pytest.fixture
def worker(
    request: pytest.FixtureRequest,
    prefect_server: PrefectServer,
    worker_home: Path,
    tmp_path: Path,
) -> Iterator[WorkerFactory]:
    """`worker(pool, ...)` starts a worker on `pool` and returns a WorkerProcess."""
    workdir = tmp_path / "workers"
    workdir.mkdir()
    factory = WorkerFactory(prefect_server.url, worker_home, workdir, _slug(request.node.name))
    try:
        yield factory
    finally:
        for started in factory.started:
            started.cleanup()
        leftovers = _reap_orphans(keep={prefect_server.process.pid})
        if _test_failed(request.node):
            for started in factory.started:
                print(f"\n===== worker {started.name!r} (exit {started.process.returncode}): "
                      f"{started.log_path}\n{_tail(started.log_path)}")
            print(f"\n===== Prefect server log (tail): {prefect_server.log_path}\n"
                  f"{prefect_server.log_tail()}")
        if leftovers:
            print(f"\nkilled processes left behind by the workers: {leftovers}")


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:40]


@pytest.fixture
def pool_name(request: pytest.FixtureRequest) -> str:
    """A work pool name unique to this test."""
    return f"e2e-{_slug(request.node.name)}-{uuid.uuid4().hex[:8]}"


# ---- Docker ------------------------------------------------------------------------------------

DOCKER_SOCKET = Path("/var/run/docker.sock")
# Built by tests/docker/build-test-images.sh: Debian with Python 3 and prefect==3.8.8.
DOCKER_PREFECT_IMAGE = "poolworker-test/prefect:3.8.8"


def docker_socket_exists() -> bool:
    return DOCKER_SOCKET.is_socket()


def _docker_required() -> bool:
    return os.environ.get("POOLWORKER_REQUIRE_DOCKER", "") == "1"


def _docker_unavailable(reason: str) -> None:
    """Skips a Docker test, saying why; fails it instead where Docker is expected
    (POOLWORKER_REQUIRE_DOCKER=1, set by tests/run.sh when the Docker socket exists)."""
    if _docker_required():
        pytest.fail(f"POOLWORKER_REQUIRE_DOCKER=1 but {reason}", pytrace=False)
    pytest.skip(f"Docker tests skipped: {reason}")


@pytest.fixture(scope="session")
def docker_client():
    """docker-py's client of the machine's Docker engine, once the test image is known to be
    there. Skips (or fails, see `_docker_unavailable`) without an engine or image."""
    if not docker_socket_exists():
        _docker_unavailable(f"there is no Docker engine socket at {DOCKER_SOCKET}")
    import docker  # docker-py, a dependency of prefect-docker

    client = docker.DockerClient(base_url=f"unix://{DOCKER_SOCKET}", timeout=120)
    try:
        client.ping()
    except Exception as exc:  # noqa: BLE001 (any failure means: no usable engine)
        _docker_unavailable(f"the Docker engine at {DOCKER_SOCKET} does not answer: {exc}")
    try:
        client.images.get(DOCKER_PREFECT_IMAGE)
    except docker.errors.ImageNotFound:
        _docker_unavailable(
            f"the image {DOCKER_PREFECT_IMAGE} does not exist (tests/docker/build-test-images.sh "
            "builds it)"
        )
    try:
        yield client
    finally:
        client.close()
