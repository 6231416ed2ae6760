"""`poolworker serve` against a real Prefect server.

The file's deployments are registered without a work pool, their scheduled and ad-hoc runs run
here in local processes, cancellation stops a run, the schedules are paused on shutdown and
resumed on start, a bad file registers nothing, and what the server shows for a deployment
matches what Prefect's own `flow.serve` registers for the same flow and settings.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import os
import subprocess
import textwrap
import time
from pathlib import Path
from typing import Iterator, Optional
from uuid import UUID

import pytest
from conftest import (
    POOLWORKER_BIN,
    VENV_BIN,
    PrefectServer,
    WorkerProcess,
    _reap_orphans,
    _tail,
    _worker_environment,
)
from prefect.client.schemas.objects import StateType
from prefect.states import Scheduled
from prefect.exceptions import ObjectNotFound
from prefect_helpers import FLOWS_DIR, PrefectApi, wait_until

SERVE_FLOWS = "serve_flows.py"


@pytest.fixture
def sapi(api: PrefectApi) -> PrefectApi:
    return api


class Servers:
    """Starts `poolworker serve` (and `flow.serve`) processes; always cleans them up."""

    def __init__(self, server: PrefectServer, workdir: Path) -> None:
        self.server = server
        self.workdir = workdir
        self.home = workdir / "home"
        self.home.mkdir()
        self.started: list[WorkerProcess] = []

    def env(self, extra: Optional[dict[str, str]] = None) -> dict[str, str]:
        env = _worker_environment(self.server.url, self.home)
        env.update({"PREFECT_RUNNER_POLL_FREQUENCY": "1"})
        env.update(extra or {})
        return env

    def _spawn(self, name: str, argv: list[str], cwd: Path, env: dict[str, str]) -> WorkerProcess:
        log_path = self.workdir / f"{name}-{len(self.started) + 1}.log"
        with open(log_path, "wb") as log:
            log.write(f"$ {' '.join(argv)}\n".encode())
            log.flush()
            process = subprocess.Popen(
                argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=log,
                stderr=subprocess.STDOUT, start_new_session=True,
            )
        started = WorkerProcess(name=name, kind="serve", argv=argv, log_path=log_path,
                                process=process)
        self.started.append(started)
        return started

    def serve(self, yaml_file: Path, *args: str, state_dir: Optional[Path] = None) -> WorkerProcess:
        if not os.access(POOLWORKER_BIN, os.X_OK):
            pytest.fail(f"poolworker binary {POOLWORKER_BIN} is missing: build it or set "
                        "POOLWORKER_BIN", pytrace=False)
        state_dir = state_dir or self.workdir / "state"
        state_dir.mkdir(exist_ok=True)
        argv = [str(POOLWORKER_BIN), "serve", str(yaml_file), "--state-dir", str(state_dir),
                "--query-seconds", "1", *args]
        return self._spawn("serve", argv, self.workdir, self.env())

    def flow_serve(self, script: str, cwd: Path) -> WorkerProcess:
        path = self.workdir / "flow_serve_script.py"
        path.write_text(textwrap.dedent(script))
        return self._spawn("flow-serve", [str(VENV_BIN / "python"), str(path)], cwd, self.env())

    def cleanup(self, failed: bool) -> None:
        for started in self.started:
            started.cleanup()
        _reap_orphans(keep={self.server.process.pid})
        if failed:
            for started in self.started:
                print(f"\n===== {started.name} (exit {started.process.returncode}): "
                      f"{started.log_path}\n{_tail(started.log_path)}")
            print(f"\n===== Prefect server log (tail)\n{self.server.log_tail()}")


@pytest.fixture
def servers(request: pytest.FixtureRequest, prefect_server: PrefectServer,
            tmp_path: Path) -> Iterator[Servers]:
    factory = Servers(prefect_server, tmp_path)
    try:
        yield factory
    finally:
        failed = any(getattr(getattr(request.node, f"rep_{when}", None), "failed", False)
                     for when in ("setup", "call"))
        factory.cleanup(failed)


def write_yaml(path: Path, text: str) -> Path:
    path.write_text(textwrap.dedent(text))
    return path


def read_deployment(api: PrefectApi, full_name: str):
    with api.client() as client:
        try:
            return client.read_deployment_by_name(full_name)
        except ObjectNotFound:
            return None


def wait_registered(api: PrefectApi, full_name: str, paused: bool = False, timeout: float = 60):
    return wait_until(
        lambda: read_deployment(api, full_name),
        lambda d: d is not None and d.paused == paused,
        timeout,
        f"deployment {full_name} registered with paused={paused}",
    )


def make_scheduled_runs(api: PrefectApi, deployment, count: int) -> list[UUID]:
    """Makes the next `count` runs of the deployment's interval schedule as Prefect's scheduler
    service does: SCHEDULED at anchor + k * interval, tagged auto-scheduled, with the schedule's
    parameters. The service itself cannot do it with the SQLAlchemy that constraints.txt pins
    (2.1.9: inserting the runs fails with "Can't evaluate bulk DML statement"), so the session's
    server runs without it and the test stands in for it, from the schedule read back from the
    server (what serve registered)."""
    schedule = deployment.schedules[0]
    interval = schedule.schedule.interval.total_seconds()
    anchor = schedule.schedule.anchor_date
    now = dt.datetime.now(dt.timezone.utc)
    first = max(0, math.ceil((now - anchor).total_seconds() / interval))
    ids = []
    with api.client() as client:
        for k in range(first, first + count):
            when = anchor + dt.timedelta(seconds=k * interval)
            run = client.create_flow_run_from_deployment(
                deployment.id,
                parameters=dict(schedule.parameters),
                state=Scheduled(scheduled_time=when),
                tags=["auto-scheduled"],
            )
            ids.append(run.id)
    return ids


def _running(pid: int) -> bool:
    try:
        return "\nState:\tZ" not in Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False


def record(out_dir: Path, run_id: UUID) -> dict:
    return json.loads((out_dir / f"{run_id}.json").read_text())


# ---- the whole life of a served file ---------------------------------------------------------


def test_scheduled_adhoc_cancelled_and_paused_on_shutdown(
    servers: Servers, sapi: PrefectApi, tmp_path: Path
) -> None:
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    yaml_file = write_yaml(tmp_path / "serve.yaml", f"""\
        name: e2e-serve
        deployments:
          - name: every-3s
            entrypoint: {SERVE_FLOWS}:tick
            working_dir: {FLOWS_DIR}
            tags: [e2e, scheduled]
            schedules:
              - interval: 3
                parameters: {{label: from-schedule}}
            job:
              env: {{SERVE_OUT_DIR: "{out_dir}", SERVE_GREETING: scheduled}}
          - name: adhoc
            entrypoint: {SERVE_FLOWS}:greet
            working_dir: {FLOWS_DIR}
            parameters: {{name: default-name}}
            job:
              env: {{SERVE_OUT_DIR: "{out_dir}", SERVE_GREETING: adhoc}}
          - name: nap
            entrypoint: {SERVE_FLOWS}:nap
            working_dir: {FLOWS_DIR}
            job:
              env: {{SERVE_OUT_DIR: "{out_dir}"}}
        """)
    serve = servers.serve(yaml_file)
    tick = wait_registered(sapi, "serve-tick/every-3s")
    adhoc = wait_registered(sapi, "serve-greet/adhoc")
    nap = wait_registered(sapi, "serve-nap/nap")
    assert tick.work_pool_name is None and adhoc.work_pool_name is None
    assert [s.active for s in tick.schedules] == [True]

    # Scheduled runs of the interval schedule, due over the next seconds: serve finds them when
    # they are due and runs them to COMPLETED with the schedule's parameters and the
    # deployment's environment.
    scheduled = make_scheduled_runs(sapi, tick, 2)
    finals = sapi.wait_for_all_final(scheduled, timeout=180)
    for run in finals.values():
        assert run.state.type == StateType.COMPLETED, run.state
        assert run.work_pool_name is None
        got = record(out_dir, run.id)
        assert got["label"] == "from-schedule"
        assert got["greeting"] == "scheduled"
        assert Path(got["cwd"]) == FLOWS_DIR

    # An ad-hoc run with other parameters, as `prefect deployment run -p` or the UI makes it.
    run = sapi.create_run(adhoc.id, parameters={"name": "Ada", "count": 2, "loud": True})
    final = sapi.wait_for_final(run.id, timeout=120)
    assert final.state.type == StateType.COMPLETED, final.state
    got = record(out_dir, run.id)
    assert (got["name"], got["count"], got["loud"], got["greeting"]) == ("Ada", 2, True, "adhoc")
    assert "greet: HELLO ADAHELLO ADA" in sapi.wait_for_log(run.id, r"greet: ")
    # And one with the deployment's default parameters.
    default_run = sapi.create_run(adhoc.id)
    assert sapi.wait_for_final(default_run.id, timeout=120).state.type == StateType.COMPLETED
    assert record(out_dir, default_run.id)["name"] == "default-name"

    # Cancellation from the API (as the UI does it) stops the process; the run ends CANCELLED.
    long_run = sapi.create_run(nap.id, parameters={"seconds": 600})
    sapi.wait_for_run(long_run.id, lambda r: r.state and r.state.is_running(), 120, "running")
    wait_until(lambda: (out_dir / f"{long_run.id}.json").exists(), bool, 60,
               "the nap flow to record its pid")
    pid = record(out_dir, long_run.id)["pid"]
    sapi.cancel(long_run.id)
    # Without Prefect's runner control channel the engine reports the SIGTERM as a crash
    # first; serve (as `poolworker start`) then records the cancellation over it.
    final = sapi.wait_for_run(long_run.id, lambda r: r.state.type == StateType.CANCELLED, 90,
                              "to end CANCELLED")
    assert StateType.CANCELLING in [s.type for s in sapi.state_history(long_run.id)]
    wait_until(lambda: _running(pid), lambda alive: not alive, 30,
               f"the cancelled flow's process {pid} to end")

    # Shutdown pauses the schedules of every deployment of the file.
    assert serve.stop() == 0
    for name in ("serve-tick/every-3s", "serve-greet/adhoc", "serve-nap/nap"):
        assert read_deployment(sapi, name).paused is True, name
    assert "Paused deployment 'serve-tick/every-3s'" in serve.output()

    # A restart resumes them; with --no-pause-on-shutdown they stay active after the stop.
    again = servers.serve(yaml_file, "--no-pause-on-shutdown")
    wait_registered(sapi, "serve-tick/every-3s", paused=False)
    wait_registered(sapi, "serve-nap/nap", paused=False)
    assert again.stop() == 0
    assert read_deployment(sapi, "serve-tick/every-3s").paused is False
    assert "Paused deployment" not in again.output()


def test_deployment_concurrency_limit(servers: Servers, sapi: PrefectApi, tmp_path: Path) -> None:
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    yaml_file = write_yaml(tmp_path / "limited.yaml", f"""\
        deployments:
          - name: one-at-a-time
            entrypoint: {SERVE_FLOWS}:nap
            working_dir: {FLOWS_DIR}
            concurrency_limit: 1
            job:
              env: {{SERVE_OUT_DIR: "{out_dir}"}}
        """)
    serve = servers.serve(yaml_file)
    dep = wait_registered(sapi, "serve-nap/one-at-a-time")
    runs = [sapi.create_run(dep.id, parameters={"seconds": 2}) for _ in range(3)]
    finals = sapi.wait_for_all_final([r.id for r in runs], timeout=180)
    assert all(f.state.type == StateType.COMPLETED for f in finals.values()), finals
    # No two runs were RUNNING at the same time.
    spans = []
    for run in runs:
        history = sapi.state_history(run.id)
        start = next(s.timestamp for s in history if s.type == StateType.RUNNING)
        end = next(s.timestamp for s in history if s.type == StateType.COMPLETED)
        spans.append((start, end))
    spans.sort()
    for (_, end), (next_start, _) in zip(spans, spans[1:]):
        assert end <= next_start, spans
    assert serve.stop() == 0


def test_bad_file_registers_nothing(servers: Servers, sapi: PrefectApi, tmp_path: Path) -> None:
    cases = {
        "timezone": ("schedules: [{cron: '0 9 * * *', timezone: Mars/Olympus}]",
                     "'timezone': unknown time zone 'Mars/Olympus'"),
        "cron": ("schedules: [{cron: '0 25 * * *'}]", "'cron': invalid cron string '0 25 * * *'"),
        "interval": ("schedules: [{interval: -1}]", "'interval': must be a positive number"),
        "function": (None, "no top-level 'def missing_function('"),
    }
    for key, (extra, expected) in cases.items():
        entry = f"{SERVE_FLOWS}:missing_function" if extra is None else f"{SERVE_FLOWS}:greet"
        yaml_file = write_yaml(tmp_path / f"bad-{key}.yaml", f"""\
            deployments:
              - name: good-{key}
                entrypoint: {SERVE_FLOWS}:tick
                working_dir: {FLOWS_DIR}
              - name: bad-{key}
                entrypoint: {entry}
                working_dir: {FLOWS_DIR}
                {extra or ''}
            """)
        process = servers.serve(yaml_file)
        assert process.wait(timeout=30) == 2, key
        output = process.output()
        assert f"bad-{key}.yaml:" in output and expected in output, output
        # Checked before anything was registered: not even the good deployment exists.
        assert read_deployment(sapi, f"serve-tick/good-{key}") is None, key


# ---- the same registration as flow.serve -----------------------------------------------------

# Fields that differ by nature between two registrations, or that are compared on their own.
_IGNORED = {
    "id", "name", "created", "updated", "created_by", "updated_by", "last_polled", "status",
    "version_id", "version_info", "schedules", "global_concurrency_limit",
    # flow.serve stores "." (its own working directory); serve stores the absolute working
    # directory of the deployment, since the serve process may run from anywhere.
    "path",
}


def _schedules(deployment) -> list[dict]:
    out = []
    for s in deployment.schedules:
        schedule = s.schedule.model_dump(mode="json")
        schedule.pop("anchor_date", None)  # "now" at registration when not given
        out.append({"schedule": schedule, "active": s.active, "parameters": s.parameters,
                    "slug": s.slug, "max_scheduled_runs": s.max_scheduled_runs})
    return sorted(out, key=json.dumps)


def test_registers_what_flow_serve_registers(
    servers: Servers, sapi: PrefectApi, tmp_path: Path
) -> None:
    settings = dict(tags=["cmp", "e2e"], parameters={"name": "Ada", "count": 2},
                    version="1.2.3", description="Greets someone")
    py = servers.flow_serve(f"""\
        import sys
        sys.path.insert(0, {str(FLOWS_DIR)!r})
        from prefect.schedules import Cron, Interval
        from serve_flows import greet

        greet.serve(
            name="cmp-flow-serve",
            schedules=[Interval(45, timezone="UTC"),
                       Cron("0 9 * * 1-5", timezone="Europe/Paris", day_or=False, active=False)],
            tags={settings['tags']!r},
            parameters={settings['parameters']!r},
            version={settings['version']!r},
            description={settings['description']!r},
            global_limit=2,
        )
        """, cwd=FLOWS_DIR)
    wait_registered(sapi, "serve-greet/cmp-flow-serve", timeout=120)
    # READY once its runner polls, which is after the runner set up its SIGTERM handling (a
    # SIGTERM before that ends the process before it pauses anything).
    wait_until(lambda: read_deployment(sapi, "serve-greet/cmp-flow-serve"),
               lambda d: d.status is not None and d.status.value == "READY", 120,
               "flow.serve's runner to poll")
    py.stop()
    theirs = read_deployment(sapi, "serve-greet/cmp-flow-serve")

    yaml_file = write_yaml(tmp_path / "cmp.yaml", f"""\
        deployments:
          - name: cmp-poolworker
            entrypoint: {SERVE_FLOWS}:greet
            working_dir: {FLOWS_DIR}
            tags: [cmp, e2e]
            parameters: {{name: Ada, count: 2}}
            version: "1.2.3"
            description: Greets someone
            concurrency_limit: 2
            schedules:
              - interval: 45
                timezone: UTC
              - cron: "0 9 * * 1-5"
                timezone: Europe/Paris
                day_or: false
                active: false
        """)
    ours_process = servers.serve(yaml_file)
    ours = wait_registered(sapi, "serve-greet/cmp-poolworker")
    assert ours_process.stop() == 0
    ours = read_deployment(sapi, "serve-greet/cmp-poolworker")
    # Both stopped with pause-on-shutdown: both paused.
    assert ours.paused is True and theirs.paused is True

    a = ours.model_dump(mode="json")
    b = theirs.model_dump(mode="json")
    for key in sorted(set(a) | set(b)):
        if key in _IGNORED:
            continue
        assert a.get(key) == b.get(key), f"field {key!r}: poolworker {a.get(key)!r} vs " \
                                         f"flow.serve {b.get(key)!r}"
    assert _schedules(ours) == _schedules(theirs)
    assert (ours.global_concurrency_limit.limit == theirs.global_concurrency_limit.limit == 2)
    assert ours.work_pool_name is None and ours.entrypoint == f"{SERVE_FLOWS}:greet"
    assert ours.path == str(FLOWS_DIR) and theirs.path == "."
