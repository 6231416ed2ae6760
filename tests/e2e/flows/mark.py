"""A flow that appends its flow run id to a file, one id a line, for exactly-once counting.
One short O_APPEND write per run, so that lines from concurrent runs never interleave."""

import os

from prefect import flow
from prefect.runtime import flow_run


@flow(name="mark")
def mark(path: str) -> str:
    run_id = str(flow_run.id)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, f"{run_id}\n".encode())
    finally:
        os.close(fd)
    return run_id
