"""A flow that raises, so that its run ends FAILED."""

from prefect import flow


class E2EFlowError(Exception):
    pass


@flow(name="fails")
def fails() -> None:
    raise E2EFlowError("the e2e flow failed on purpose")
