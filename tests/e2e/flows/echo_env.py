"""A flow that logs (and returns) environment variables. `name` is one variable name or a list
of them. Each is logged as `echo_env: NAME=<repr of value>`, the value being None when unset."""

import os
from typing import Optional, Union

from prefect import flow, get_run_logger


@flow(name="echo_env")
def echo_env(name: Union[str, list[str]]) -> Union[Optional[str], dict[str, Optional[str]]]:
    logger = get_run_logger()
    names = [name] if isinstance(name, str) else list(name)
    values = {n: os.environ.get(n) for n in names}
    for n, value in values.items():
        logger.info("echo_env: %s=%r", n, value)
    return values[name] if isinstance(name, str) else values
