"""A flow that kills its own interpreter with exit code 3, so that the engine cannot report
a final state and the worker has to (CRASHED)."""

import os
import sys

from prefect import flow


@flow(name="crash_exit3")
def crash_exit3() -> None:
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(3)
