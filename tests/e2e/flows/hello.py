"""A flow that logs one line and returns a value."""

from prefect import flow, get_run_logger


@flow(name="hello")
def hello(token: str = "none") -> str:
    get_run_logger().info("hello from the e2e flow, token=%s", token)
    return f"hello {token}"
