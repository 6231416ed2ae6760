"""Registers the quickstart deployment with Prefect's own Python API, as a user would."""

import sys
from pathlib import Path

from prefect import flow

pool = sys.argv[1] if len(sys.argv) > 1 else "quickstart"

hello = flow.from_source(
    source=str(Path(__file__).resolve().parent / "flows"),
    entrypoint="hello.py:hello",
)
# `to_deployment(...).apply()` registers it as `flow.deploy()` would, minus the image build.
deployment_id = hello.to_deployment(name="quickstart", work_pool_name=pool).apply()
print(f"deployment 'hello/quickstart' registered: {deployment_id}")
