"""Helpers for the end-to-end tests, built on Prefect's own Python client.

Everything here talks to the test server through `prefect.client.orchestration.get_client`,
with the server's URL put in place by `temporary_settings` for each call, so that the test
process never reads or writes a Prefect profile of this machine.
"""

from __future__ import annotations

import datetime as dt
import os
import re
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, TypeVar
from uuid import UUID

from prefect.client.orchestration import SyncPrefectClient, get_client
from prefect.client.schemas.actions import WorkPoolCreate
from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
from prefect.client.schemas.objects import FlowRun, Log, State, StateType, WorkPool
from prefect.exceptions import ObjectNotFound
from prefect.settings import PREFECT_API_URL, temporary_settings
from prefect.states import Cancelling, Scheduled

FLOWS_DIR = Path(__file__).resolve().parent / "flows"

# Flow name -> entrypoint relative to FLOWS_DIR (the working directory the pull step sets).
FLOWS = {
    "hello": "hello.py:hello",
    "fails": "fails.py:fails",
    "crash_exit3": "crash_exit3.py:crash_exit3",
    "sleeper": "sleeper.py:sleeper",
    "echo_env": "echo_env.py:echo_env",
    "mark": "mark.py:mark",
    "probe": "probe.py:probe",
}

FINAL_TYPES = {
    StateType.COMPLETED,
    StateType.FAILED,
    StateType.CRASHED,
    StateType.CANCELLED,
}

T = TypeVar("T")


class WaitTimeout(AssertionError):
    """A condition that a test waited for did not come true in time."""


def wait_until(
    probe: Callable[[], T],
    done: Callable[[T], bool],
    timeout: float,
    what: str,
    interval: float = 0.5,
) -> T:
    """Calls `probe` until `done(value)` holds and returns that value.

    Raises WaitTimeout naming `what` and the last value seen after `timeout` seconds.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if done(value):
            return value
        if time.monotonic() >= deadline:
            raise WaitTimeout(f"timed out after {timeout:.0f} s waiting for {what}; last: {value!r}")
        time.sleep(interval)


def parse_infrastructure_pid(value: Optional[str]) -> Optional[int]:
    """Reads `infrastructure_pid` as written by either worker: a bare pid or `host:pid`."""
    if not value:
        return None
    match = re.search(r"(\d+)$", value.strip())
    return int(match.group(1)) if match else None


def process_alive(pid: int) -> bool:
    """True while `pid` exists and is not a zombie (an exited, unreaped process counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False
    return fields[0] != "Z"


class PrefectApi:
    """The Prefect server under test, seen through Prefect's client."""

    def __init__(self, url: str) -> None:
        self.url = url

    @contextmanager
    def client(self) -> Iterator[SyncPrefectClient]:
        with temporary_settings(updates={PREFECT_API_URL: self.url}):
            with get_client(sync_client=True) as client:
                yield client

    # ---- work pools ----------------------------------------------------------------------

    @staticmethod
    def default_process_template() -> dict[str, Any]:
        """The base job template that `prefect work-pool create --type process` uses."""
        from prefect.workers.process import ProcessWorker

        return ProcessWorker.get_default_base_job_template()

    def create_process_pool(
        self, name: str, base_job_template: Optional[dict[str, Any]] = None
    ) -> WorkPool:
        template = base_job_template or self.default_process_template()
        with self.client() as client:
            return client.create_work_pool(
                WorkPoolCreate(name=name, type="process", base_job_template=template)
            )

    @staticmethod
    def default_docker_template() -> dict[str, Any]:
        """The base job template that `prefect work-pool create --type docker` uses."""
        from prefect_docker.worker import DockerWorker

        return DockerWorker.get_default_base_job_template()

    def create_docker_pool(
        self, name: str, base_job_template: Optional[dict[str, Any]] = None
    ) -> WorkPool:
        template = base_job_template or self.default_docker_template()
        with self.client() as client:
            return client.create_work_pool(
                WorkPoolCreate(name=name, type="docker", base_job_template=template)
            )

    @staticmethod
    def default_kubernetes_template() -> dict[str, Any]:
        """The base job template that `prefect work-pool create --type kubernetes` uses."""
        from prefect_kubernetes.worker import KubernetesWorker

        return KubernetesWorker.get_default_base_job_template()

    def create_kubernetes_pool(
        self, name: str, base_job_template: Optional[dict[str, Any]] = None
    ) -> WorkPool:
        template = base_job_template or self.default_kubernetes_template()
        with self.client() as client:
            return client.create_work_pool(
                WorkPoolCreate(name=name, type="kubernetes", base_job_template=template)
            )

    def read_pool(self, name: str) -> Optional[WorkPool]:
        with self.client() as client:
            try:
                return client.read_work_pool(name)
            except ObjectNotFound:
                return None

    # ---- deployments and flow runs -------------------------------------------------------

    def create_deployment(
        self,
        pool: str,
        flow_name: str,
        *,
        name: Optional[str] = None,
        job_variables: Optional[dict[str, Any]] = None,
        parameters: Optional[dict[str, Any]] = None,
        work_queue_name: Optional[str] = None,
    ) -> UUID:
        """Creates a deployment of a flow in FLOWS_DIR the way `prefect deploy` does for local
        code: `path` and a `set_working_directory` pull step point at the folder, and the
        entrypoint is relative to it."""
        entrypoint = FLOWS[flow_name]
        with self.client() as client:
            flow_id = client.create_flow_from_name(flow_name)
            return client.create_deployment(
                flow_id=flow_id,
                name=name or f"{flow_name}-{pool}",
                work_pool_name=pool,
                work_queue_name=work_queue_name,
                path=str(FLOWS_DIR),
                entrypoint=entrypoint,
                pull_steps=[
                    {
                        "prefect.deployments.steps.set_working_directory": {
                            "directory": str(FLOWS_DIR)
                        }
                    }
                ],
                parameters=parameters or {},
                parameter_openapi_schema=_parameter_schema(entrypoint),
                enforce_parameter_schema=False,
                job_variables=job_variables or {},
            )

    def create_run(
        self,
        deployment_id: UUID,
        *,
        parameters: Optional[dict[str, Any]] = None,
        job_variables: Optional[dict[str, Any]] = None,
        scheduled_in: Optional[float] = None,
        name: Optional[str] = None,
    ) -> FlowRun:
        """Creates a SCHEDULED flow run, due now or `scheduled_in` seconds from now."""
        state = None
        if scheduled_in is not None:
            when = dt.datetime.now(dt.timezone.utc) + dt.timedelta(seconds=scheduled_in)
            state = Scheduled(scheduled_time=when)
        with self.client() as client:
            return client.create_flow_run_from_deployment(
                deployment_id,
                parameters=parameters or {},
                job_variables=job_variables,
                state=state,
                name=name,
            )

    def read_run(self, run_id: UUID) -> FlowRun:
        with self.client() as client:
            return client.read_flow_run(run_id)

    def wait_for_run(
        self, run_id: UUID, done: Callable[[FlowRun], bool], timeout: float, what: str
    ) -> FlowRun:
        return wait_until(
            lambda: self.read_run(run_id),
            done,
            timeout,
            f"flow run {run_id} {what}",
        )

    def wait_for_final(self, run_id: UUID, timeout: float = 180) -> FlowRun:
        """Polls a run until its state is final (COMPLETED, FAILED, CRASHED, CANCELLED)."""
        return self.wait_for_run(
            run_id,
            lambda run: run.state is not None and run.state.type in FINAL_TYPES,
            timeout,
            "to reach a final state",
        )

    def wait_for_all_final(self, run_ids: list[UUID], timeout: float) -> dict[UUID, FlowRun]:
        """Waits until every run is final; returns them by id."""
        deadline = time.monotonic() + timeout
        result: dict[UUID, FlowRun] = {}
        pending = list(run_ids)
        while pending:
            with self.client() as client:
                still = []
                for run_id in pending:
                    run = client.read_flow_run(run_id)
                    if run.state is not None and run.state.type in FINAL_TYPES:
                        result[run_id] = run
                    else:
                        still.append(run_id)
            pending = still
            if pending:
                if time.monotonic() >= deadline:
                    raise WaitTimeout(
                        f"timed out after {timeout:.0f} s: {len(pending)} of {len(run_ids)} "
                        f"runs not final, e.g. {pending[:3]}"
                    )
                time.sleep(1.0)
        return result

    def state_history(self, run_id: UUID) -> list[State]:
        """Every state the run went through, oldest first."""
        with self.client() as client:
            states = client.read_flow_run_states(run_id)
        return sorted(states, key=lambda state: state.timestamp)

    def cancel(self, run_id: UUID) -> Any:
        """Asks for cancellation the way the UI and `prefect flow-run cancel` do: propose
        CANCELLING and let the worker that holds the run finish the job."""
        with self.client() as client:
            return client.set_flow_run_state(
                run_id, Cancelling(message="Cancelled by the e2e test")
            )

    # ---- logs ----------------------------------------------------------------------------

    def logs(self, run_id: UUID) -> list[Log]:
        """All logs of a flow run (`POST /logs/filter`), oldest first."""
        found: list[Log] = []
        page = 200
        with self.client() as client:
            while True:
                batch = client.read_logs(
                    LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run_id])),
                    limit=page,
                    offset=len(found),
                )
                found.extend(batch)
                if len(batch) < page:
                    return found

    def log_text(self, run_id: UUID) -> str:
        return "\n".join(log.message for log in self.logs(run_id))

    def wait_for_log(self, run_id: UUID, pattern: str, timeout: float = 60) -> str:
        """Waits until a log line of the run matches the regular expression `pattern` (logs
        are shipped in batches, possibly after the final state is set); returns that line."""
        regex = re.compile(pattern)

        def probe() -> Optional[str]:
            for log in self.logs(run_id):
                if regex.search(log.message):
                    return log.message
            return None

        return wait_until(
            probe, lambda line: line is not None, timeout, f"a log of {run_id} matching {pattern!r}"
        )


_schemas: dict[str, dict[str, Any]] = {}


def _parameter_schema(entrypoint: str) -> dict[str, Any]:
    """The flow's parameter schema, as `prefect deploy` stores it (shown by the UI)."""
    if entrypoint not in _schemas:
        from prefect.flows import load_flow_from_entrypoint
        from prefect.utilities.callables import parameter_schema

        flow = load_flow_from_entrypoint(os.path.join(FLOWS_DIR, entrypoint))
        _schemas[entrypoint] = parameter_schema(flow.fn).model_dump_for_openapi()
    return _schemas[entrypoint]
