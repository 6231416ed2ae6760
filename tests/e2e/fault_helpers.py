"""Helpers of the fault suite (test_faults.py): cheap flow runs of tests/fakes/fake_engine.py, the
audit that counts lost runs and runs started twice, the results table, worker restarts on the
same state directory, a Prefect server of a test's own that can be stopped and started again,
and the worker's health and metrics endpoint.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Optional, Sequence
from uuid import UUID

from conftest import (
    SERVER_START_TIMEOUT,
    VENV_BIN,
    PrefectServer,
    WorkerFactory,
    WorkerProcess,
    _free_port,
    _health_ok,
    _server_environment,
    _stop_process_group,
    _tail,
    _worker_environment,
)
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
from prefect.client.schemas.objects import StateType
from prefect.client.schemas.sorting import FlowRunSort
from prefect_helpers import FINAL_TYPES, PrefectApi, WaitTimeout, process_alive, wait_until

REPO = Path(__file__).resolve().parent.parent.parent
FAKE_ENGINE = REPO / "tests" / "fakes" / "fake_engine.py"
# The flow the deployments are made for. Its code never runs: the `command` job variable starts
# the fake engine instead, which only talks to the API.
PLACEHOLDER_FLOW = "hello"


# ---- deployments of the fake engine -----------------------------------------------------------


def fake_engine_deployment(
    api: PrefectApi,
    pool: str,
    mode: str,
    mark_dir: Path,
    *,
    name: Optional[str] = None,
    env: Optional[dict[str, str]] = None,
) -> UUID:
    """A deployment whose runs are fake engines in `mode`, appending their marks to `mark_dir`."""
    mark_dir.mkdir(parents=True, exist_ok=True)
    variables = {
        "command": f"{sys.executable} {FAKE_ENGINE}",
        "env": {"FAKE_ENGINE_MODE": mode, "FAKE_ENGINE_MARK_DIR": str(mark_dir), **(env or {})},
    }
    return api.create_deployment(
        pool, PLACEHOLDER_FLOW, name=name or f"fake-{pool}", job_variables=variables
    )


def create_runs(
    api: PrefectApi, deployment: UUID, count: int, scheduled_at: Optional[dt.datetime] = None
) -> list[UUID]:
    """Creates `count` SCHEDULED runs of a deployment, due now or at `scheduled_at`; returns
    their ids. Plain REST calls (`POST /deployments/{id}/create_flow_run`, what the client's
    create_flow_run_from_deployment sends): half the time of Prefect's client per run, which
    matters for hundreds of runs. A 503 (the server's "retry", e.g. SQLite busy) is retried."""
    body: dict[str, Any] = {}
    if scheduled_at is not None:
        body["state"] = {
            "type": "SCHEDULED",
            "name": "Scheduled",
            "state_details": {"scheduled_time": scheduled_at.isoformat()},
        }
    data = json.dumps(body).encode()
    ids = []
    for _ in range(count):
        for attempt in range(10):
            request = urllib.request.Request(
                f"{api.url}/deployments/{deployment}/create_flow_run",
                data=data,
                method="POST",
                headers={"Content-Type": "application/json"},
            )
            try:
                with urllib.request.urlopen(request, timeout=60) as response:
                    ids.append(UUID(json.loads(response.read())["id"]))
                    break
            except urllib.error.HTTPError as error:
                if error.code != 503 or attempt == 9:
                    raise AssertionError(
                        f"POST /deployments/{deployment}/create_flow_run answered {error.code}: "
                        f"{error.read()[:300]!r}"
                    ) from None
                time.sleep(0.2 * (attempt + 1))
    return ids


@dataclass
class Marks:
    """What the fake engines of one run wrote to its marker file."""

    launched: list[int] = field(default_factory=list)  # engine pids
    running: list[int] = field(default_factory=list)   # pids whose flow body executed
    final: list[str] = field(default_factory=list)


def read_marks(mark_dir: Path, run_id: UUID) -> Marks:
    marks = Marks()
    try:
        lines = (mark_dir / str(run_id)).read_text().splitlines()
    except FileNotFoundError:
        return marks
    for line in lines:
        event, _, rest = line.partition(" ")
        pid, _, detail = rest.partition(" ")
        if event == "launched":
            marks.launched.append(int(pid))
        elif event == "running":
            marks.running.append(int(pid))
        elif event == "final":
            marks.final.append(detail)
    return marks


def wait_for_running(
    api: PrefectApi, run_ids: Sequence[UUID], mark_dir: Path, timeout: float
) -> dict[UUID, int]:
    """Waits until every run is RUNNING on the server and its flow body has started; returns the
    fake engine's pid of each run."""

    def probe() -> tuple[list[str], dict[UUID, int]]:
        pids: dict[UUID, int] = {}
        missing: list[str] = []
        with api.client() as client:
            for run_id in run_ids:
                run = client.read_flow_run(run_id)
                marks = read_marks(mark_dir, run_id)
                if run.state is None or run.state.type != StateType.RUNNING or not marks.running:
                    missing.append(f"{run_id}: {run.state.type.value if run.state else None}")
                else:
                    pids[run_id] = marks.running[-1]
        return missing, pids

    missing, pids = wait_until(
        probe,
        lambda value: not value[0],
        timeout,
        f"{len(run_ids)} runs to be RUNNING with their flow body started",
        interval=1.0,
    )
    return pids


# ---- the audit: lost runs and runs started twice ----------------------------------------------


@dataclass
class Audit:
    runs: int
    lost: dict[str, str]          # run id -> why it counts as lost
    started_twice: dict[str, str]  # run id -> evidence
    launched_twice: dict[str, str]  # run id -> evidence (the engine was started more than once)

    def summary(self) -> str:
        parts = [
            f"{self.runs} runs, {len(self.lost)} lost, {len(self.started_twice)} started twice"
        ]
        if self.lost:
            parts.append(f"lost: {_first(self.lost)}")
        if self.started_twice:
            parts.append(f"started twice: {_first(self.started_twice)}")
        if self.launched_twice:
            parts.append(f"engine launched more than once: {_first(self.launched_twice)}")
        return "; ".join(parts)


def _first(items: dict[str, str], n: int = 10) -> str:
    shown = dict(list(items.items())[:n])
    more = f" (and {len(items) - n} more)" if len(items) > n else ""
    return f"{shown}{more}"


def read_runs(api: PrefectApi, run_ids: Sequence[UUID]) -> dict[UUID, Any]:
    """The flow runs with these ids, by id, through `POST /flow_runs/filter`."""
    found: dict[UUID, Any] = {}
    ids = list(run_ids)
    with api.client() as client:
        for start in range(0, len(ids), 200):
            chunk = ids[start:start + 200]
            for run in client.read_flow_runs(
                flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=chunk)),
                sort=FlowRunSort.ID_DESC,  # the server refuses the client's default, null
                limit=len(chunk),
            ):
                found[run.id] = run
    return found


def audit_runs(
    api: PrefectApi,
    run_ids: Sequence[UUID],
    mark_dir: Path,
    timeout: float,
    expected: StateType = StateType.COMPLETED,
) -> Audit:
    """Waits up to `timeout` seconds for every run to be final, then counts:
    - lost: not final by then, or final in another state than `expected`;
    - started twice: the flow body ran more than once (marker file), or the state history has
      more than one accepted RUNNING state;
    - launched twice: more than one engine process was started for the run."""
    deadline = time.monotonic() + timeout
    finals: dict[UUID, Any] = {}
    pending = list(run_ids)
    last_seen: dict[UUID, Any] = {}
    while pending:
        # One filter call per 200 runs: polling hundreds of runs one by one would load the
        # server that the workers need.
        seen = read_runs(api, pending)
        still = []
        for run_id in pending:
            run = seen.get(run_id)
            if run is not None and run.state is not None and run.state.type in FINAL_TYPES:
                finals[run_id] = run
            else:
                last_seen[run_id] = run
                still.append(run_id)
        pending = still
        if not pending or time.monotonic() >= deadline:
            break
        time.sleep(2.0)

    lost: dict[str, str] = {}
    for run_id in pending:
        run = last_seen[run_id]
        state = run.state.type.value if run is not None and run.state else "no state"
        lost[str(run_id)] = f"still {state} after {timeout:.0f} s"
    for run_id, run in finals.items():
        if run.state.type != expected:
            lost[str(run_id)] = f"{run.state.type.value}: {run.state.message!r}"

    started_twice: dict[str, str] = {}
    launched_twice: dict[str, str] = {}
    with api.client() as client:
        for run_id in run_ids:
            history = client.read_flow_run_states(run_id)
            running_states = sum(1 for s in history if s.type == StateType.RUNNING)
            marks = read_marks(mark_dir, run_id)
            if len(marks.running) > 1 or running_states > 1:
                sequence = " > ".join(
                    s.type.value if s.name.upper() == s.type.value else f"{s.type.value}/{s.name}"
                    for s in sorted(history, key=lambda s: s.timestamp)
                )
                started_twice[str(run_id)] = (
                    f"flow body ran in engines {marks.running}; "
                    f"{running_states} RUNNING states in its history: {sequence}"
                )
            if len(marks.launched) > 1:
                launched_twice[str(run_id)] = f"engine pids {marks.launched}"
    return Audit(len(run_ids), lost, started_twice, launched_twice)


def assert_no_loss(audit: Audit) -> None:
    assert not audit.lost and not audit.started_twice, audit.summary()
    assert not audit.launched_twice, (
        f"the worker started the infrastructure of some runs more than once: {audit.summary()}"
    )


# ---- the results table ------------------------------------------------------------------------


class ResultsTable:
    """Appends one markdown row per test to the results file, and prints it."""

    HEADER = "| test | runs | lost | started twice | seconds |\n|---|---|---|---|---|\n"

    def __init__(self, path: Path) -> None:
        self.path = path

    def record(self, test: str, audit: Audit, seconds: float) -> str:
        line = (
            f"| {test} | {audit.runs} | {len(audit.lost)} | {len(audit.started_twice)} | "
            f"{seconds:.0f} |"
        )
        new = not self.path.exists() or self.path.stat().st_size == 0
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as out:
            if new:
                out.write(self.HEADER)
            out.write(line + "\n")
        return line


# ---- workers -----------------------------------------------------------------------------------


def relaunch_worker(
    factory: WorkerFactory,
    previous: WorkerProcess,
    *,
    extra_args: Sequence[str] = (),
    env: Optional[dict[str, str]] = None,
) -> WorkerProcess:
    """Starts a worker again with the argv of `previous` (same name, pool and --state-dir), as a
    supervisor restarts one. It is registered with the `worker` fixture, which cleans it up."""
    index = len(factory.started) + 1
    argv = list(previous.argv) + list(extra_args)
    full_env = _worker_environment(factory.api_url, factory.home)
    full_env.update(env or {})
    cwd = factory.workdir / f"cwd-{index}"
    cwd.mkdir()
    log_path = factory.workdir / f"worker-{index}.log"
    with open(log_path, "wb") as log:
        log.write(f"$ {' '.join(argv)}\n".encode())
        log.flush()
        process = subprocess.Popen(
            argv,
            cwd=cwd,
            env=full_env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    started = WorkerProcess(
        name=previous.name, kind=previous.kind, argv=argv, log_path=log_path, process=process,
        state_dir=previous.state_dir,
    )
    factory.started.append(started)
    return started


def wait_for_output(
    worker: WorkerProcess, pattern: str, count: int = 1, timeout: float = 60
) -> list[str]:
    """Waits until `count` lines of the worker's output match `pattern`; returns them."""
    regex = re.compile(pattern)

    def probe() -> list[str]:
        return [line for line in worker.output().splitlines() if regex.search(line)]

    try:
        return wait_until(probe, lambda lines: len(lines) >= count, timeout, "", interval=0.5)
    except WaitTimeout:
        found = probe()
        raise WaitTimeout(
            f"worker {worker.name!r}: {len(found)} of {count} output lines matching {pattern!r} "
            f"after {timeout:.0f} s (alive: {worker.alive()}); its output:\n"
            f"{_tail(worker.log_path, 80)}"
        ) from None


def pids_alive(pids: Iterable[int]) -> list[int]:
    return [pid for pid in pids if process_alive(pid)]


# ---- a Prefect server of the test's own ---------------------------------------------------------


def _launch_server(
    home: Path, port: int, log_path: Path, extra_env: dict[str, str]
) -> tuple[PrefectServer, str]:
    """`prefect server start` on `port` with PREFECT_HOME `home`, as conftest starts the session's
    server; waits for GET /api/health. Returns the server and, if it did not come up, why."""
    url = f"http://127.0.0.1:{port}/api"
    env = _server_environment(home)
    env.update(extra_env)
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [str(VENV_BIN / "prefect"), "server", "start", "--host", "127.0.0.1",
             "--port", str(port)],
            cwd=home.parent,  # Prefect reads .env and prefect.toml from its cwd
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    server = PrefectServer(url=url, home=home, log_path=log_path, process=process)
    deadline = time.monotonic() + SERVER_START_TIMEOUT
    while time.monotonic() < deadline and process.poll() is None:
        if _health_ok(url):
            return server, ""
        time.sleep(0.5)
    what = (f"exited with status {process.returncode}" if process.poll() is not None
            else f"did not answer GET /api/health within {SERVER_START_TIMEOUT:.0f} s")
    _stop_process_group(process, timeout=10)
    return server, f"Prefect server on port {port} {what}; its output:\n{_tail(log_path, 80)}"


class OwnServer:
    """A Prefect server of one test (SQLite in its own PREFECT_HOME), that the test can stop
    (SIGTERM) and start again on the same port with the same database."""

    def __init__(self, workdir: Path, extra_env: Optional[dict[str, str]] = None) -> None:
        self.workdir = workdir
        self.home = workdir / "home"
        self.home.mkdir(parents=True, exist_ok=True)
        self.extra_env = dict(extra_env or {})
        self.logs: list[Path] = []
        problem = ""
        for attempt in range(3):
            log_path = workdir / f"server-{attempt}.log"
            self.logs.append(log_path)
            self.server, problem = _launch_server(
                self.home, _free_port(), log_path, self.extra_env
            )
            if not problem or "address already in use" not in problem.lower():
                break
        if problem:
            raise AssertionError(problem)
        self.url = self.server.url
        self.port = int(self.url.rsplit(":", 1)[1].split("/")[0])

    def stop(self, timeout: float = 30) -> float:
        """SIGTERM to the server's process group (SIGKILL after `timeout`); returns the seconds
        it took to exit."""
        began = time.monotonic()
        _stop_process_group(self.server.process, timeout=timeout)
        return time.monotonic() - began

    def restart(self) -> None:
        log_path = self.workdir / f"server-restart-{len(self.logs)}.log"
        self.logs.append(log_path)
        self.server, problem = _launch_server(self.home, self.port, log_path, self.extra_env)
        if problem:
            raise AssertionError(f"restart on the same port failed: {problem}")

    def log_tails(self, chars: int = 6000) -> str:
        return "\n".join(
            f"===== own Prefect server log: {path}\n{path.read_text(errors='replace')[-chars:]}"
            for path in self.logs if path.exists()
        )


# ---- health and metrics over HTTP ---------------------------------------------------------------


def http_get(url: str, timeout: float = 5) -> tuple[int, str]:
    """GET `url`; returns (status, body). Connection errors give status 0 and the error text."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()
    except (urllib.error.URLError, OSError) as error:
        return 0, str(error)


_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)$")
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def parse_metrics(text: str) -> dict[tuple[str, frozenset], float]:
    """Prometheus text format -> {(name, frozenset of (label, value)): value}."""
    samples: dict[tuple[str, frozenset], float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        match = _SAMPLE.match(line)
        assert match, f"not a Prometheus sample line: {line!r}"
        name, labels, value = match.groups()
        pairs = frozenset(_LABEL.findall(labels or ""))
        samples[(name, pairs)] = float(value)
    return samples


def metric(samples: dict[tuple[str, frozenset], float], name: str, **labels: str) -> float:
    """The value of one series (0 when absent)."""
    return samples.get((name, frozenset(labels.items())), 0.0)


def metric_sum(samples: dict[tuple[str, frozenset], float], name: str, **labels: str) -> float:
    """The sum of every series of `name` whose labels include `labels`."""
    wanted = set(labels.items())
    return sum(v for (n, pairs), v in samples.items() if n == name and wanted <= set(pairs))


def read_metrics(base_url: str) -> dict[tuple[str, frozenset], float]:
    status, body = http_get(f"{base_url}/metrics")
    assert status == 200, f"GET {base_url}/metrics answered {status}: {body[:300]}"
    return parse_metrics(body)


def kill_worker(worker: WorkerProcess) -> None:
    """SIGKILL to the worker process alone (its flows run in sessions of their own)."""
    os.kill(worker.pid, signal.SIGKILL)
    worker.process.wait(timeout=10)


# ---- a faulty network in front of the Prefect server and the Docker engine -------------------


class FaultProxy:
    """An HTTP reverse proxy in front of a Prefect server that injects faults into the requests
    of one client, recognised by its User-Agent (poolworker's by default), and passes every
    other request (the flow runs' own) through untouched.

    `burst(seconds, ratio)` answers that share of the client's requests with 503 for a while;
    `delay(seconds, count, path)` holds the next `count` matching requests for `seconds` before
    forwarding them (a server that answers late). `url` is the proxy's API URL."""

    def __init__(self, upstream_url: str, target_agent: str = "poolworker/") -> None:
        import http.client
        import http.server
        import random
        import socketserver
        import threading
        import urllib.parse

        upstream = urllib.parse.urlsplit(upstream_url)
        self._lock = threading.Lock()
        self._burst_until = 0.0
        self._burst_ratio = 0.0
        self._delays: list[list[Any]] = []  # [seconds, remaining, compiled path regex]
        self.failed = 0
        self.delayed = 0
        self.passed = 0
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:  # quiet
                pass

            def _fault(self) -> tuple[str, float]:
                if not self.headers.get("User-Agent", "").startswith(target_agent):
                    return "pass", 0.0
                with proxy._lock:
                    now = time.monotonic()
                    if now < proxy._burst_until and random.random() < proxy._burst_ratio:
                        proxy.failed += 1
                        return "fail", 0.0
                    for rule in proxy._delays:
                        if rule[1] > 0 and rule[2].search(self.path):
                            rule[1] -= 1
                            proxy.delayed += 1
                            return "delay", rule[0]
                    return "pass", 0.0

            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                action, seconds = self._fault()
                if action == "fail":
                    payload = b'{"exception_message":"Service Unavailable"}'
                    self.send_response(503)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                    return
                if action == "delay":
                    time.sleep(seconds)
                with proxy._lock:
                    proxy.passed += 1
                connection = http.client.HTTPConnection(upstream.hostname, upstream.port,
                                                        timeout=120)
                try:
                    headers = {k: v for k, v in self.headers.items()
                               if k.lower() not in ("host", "connection", "keep-alive")}
                    connection.request(self.command, self.path, body=body, headers=headers)
                    answer = connection.getresponse()
                    payload = answer.read()
                    self.send_response(answer.status)
                    for key, value in answer.getheaders():
                        if key.lower() not in ("transfer-encoding", "connection", "keep-alive",
                                               "content-length"):
                            self.send_header(key, value)
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                finally:
                    connection.close()

            do_GET = do_POST = do_PATCH = do_PUT = do_DELETE = _handle

        class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
            daemon_threads = True

        self._server = Server(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}{upstream.path}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def burst(self, seconds: float, ratio: float = 1.0) -> None:
        with self._lock:
            self._burst_until = time.monotonic() + seconds
            self._burst_ratio = ratio

    def delay(self, seconds: float, count: int, path: str = ".*") -> None:
        with self._lock:
            self._delays.append([seconds, count, re.compile(path)])

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


class UnixSocketProxy:
    """Forwards a unix socket of the test's to the Docker engine's, byte for byte, and can cut
    every connection and stop listening for a while (`cut()`, `restore()`): to the worker this
    is the engine's socket closing mid-run and coming back."""

    def __init__(self, path: Path, target: str = "/var/run/docker.sock") -> None:
        import threading

        self.path = path
        self.target = target
        self._lock = threading.Lock()
        self._connections: list[Any] = []
        self._listener: Any = None
        self.cuts = 0
        self.restore()

    def _serve(self, listener: Any) -> None:
        import socket
        import threading

        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            upstream = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                upstream.connect(self.target)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._connections += [client, upstream]
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(source, sink), daemon=True).start()

    @staticmethod
    def _pipe(source: Any, sink: Any) -> None:
        import socket

        try:
            while True:
                data = source.recv(65536)
                if not data:
                    break
                sink.sendall(data)
        except OSError:
            pass
        for end in (source, sink):
            try:
                end.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def restore(self) -> None:
        import socket
        import threading

        if self.path.exists():
            self.path.unlink()
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(str(self.path))
        listener.listen(64)
        self._listener = listener
        threading.Thread(target=self._serve, args=(listener,), daemon=True).start()

    def cut(self) -> int:
        """Closes the listening socket and every open connection; returns how many were open."""
        import socket

        self.cuts += 1
        try:
            self._listener.shutdown(socket.SHUT_RDWR)  # wakes the accept() of _serve
        except OSError:
            pass
        self._listener.close()
        with self._lock:
            connections, self._connections = self._connections, []
        for connection in connections:
            try:
                connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            connection.close()
        if self.path.exists():
            self.path.unlink()
        return len(connections) // 2
