"""A flow that reports what its infrastructure gave it: environment variables and the contents
of files. Each is logged as `probe: env NAME=<repr>` or `probe: file PATH=<repr>`, the value
being None when unset or missing."""

import os
from pathlib import Path
from typing import Optional

from prefect import flow, get_run_logger


@flow(name="probe")
def probe(env: Optional[list[str]] = None, files: Optional[list[str]] = None) -> dict:
    logger = get_run_logger()
    seen: dict = {}
    for name in env or []:
        value = os.environ.get(name)
        seen[f"env {name}"] = value
        logger.info("probe: env %s=%r", name, value)
    for path in files or []:
        try:
            value = Path(path).read_text()
        except OSError:
            value = None
        seen[f"file {path}"] = value
        logger.info("probe: file %s=%r", path, value)
    return seen
