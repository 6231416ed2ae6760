"""The quickstart's flow: a task, a log line and a return value."""

from prefect import flow, get_run_logger, task


@task
def greeting(name: str) -> str:
    return f"Hello, {name}, from a flow run started by poolworker!"


@flow(log_prints=True)
def hello(name: str = "Prefect user") -> str:
    message = greeting(name)
    get_run_logger().info(message)
    return message
