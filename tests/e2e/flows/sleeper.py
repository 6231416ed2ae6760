"""A long flow for cancellation tests. It writes the pid of the process that runs it to
pid_file (atomically, so a reader never sees half a number) and then sleeps."""

import os
import time

from prefect import flow, get_run_logger


@flow(name="sleeper")
def sleeper(seconds: float = 600.0, pid_file: str = "") -> float:
    if pid_file:
        tmp = f"{pid_file}.tmp"
        with open(tmp, "w") as out:
            out.write(str(os.getpid()))
        os.replace(tmp, pid_file)
    get_run_logger().info("sleeper: pid %d sleeping %.1f s", os.getpid(), seconds)
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        time.sleep(min(1.0, max(0.0, deadline - time.monotonic())))
    return seconds
