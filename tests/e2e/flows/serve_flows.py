"""Flows that `poolworker serve` runs in test_serve.py. Each records what it ran with (its
parameters, working directory and one variable of the environment the deployment's job settings
give it) in $SERVE_OUT_DIR/<flow run id>.json, written atomically."""

import json
import os
import time

from prefect import flow, get_run_logger
from prefect.runtime import flow_run


def _record(**values) -> None:
    out_dir = os.environ.get("SERVE_OUT_DIR")
    if not out_dir:
        return
    path = os.path.join(out_dir, f"{flow_run.id}.json")
    values.update(cwd=os.getcwd(), greeting=os.environ.get("SERVE_GREETING"), pid=os.getpid())
    with open(f"{path}.tmp", "w") as out:
        json.dump(values, out)
    os.replace(f"{path}.tmp", path)


@flow(name="serve-tick")
def tick(label: str = "tick") -> str:
    _record(label=label)
    get_run_logger().info("tick %s", label)
    return label


@flow(name="serve-greet")
def greet(name: str = "world", count: int = 1, loud: bool = False) -> str:
    message = f"hello {name}" * count
    _record(name=name, count=count, loud=loud)
    get_run_logger().info("greet: %s", message.upper() if loud else message)
    return message


@flow(name="serve-nap")
def nap(seconds: float = 600.0) -> float:
    _record(seconds=seconds, started=time.time())
    get_run_logger().info("nap: pid %d sleeping %.1f s", os.getpid(), seconds)
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        time.sleep(min(0.5, max(0.0, deadline - time.monotonic())))
    return seconds
