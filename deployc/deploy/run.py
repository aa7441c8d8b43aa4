"""What one `deployc deploy` carries from call to call: the resolved plan, the AWS clients and what was done.

`sagemaker.py` runs the plan's calls and `endpoint.py` the endpoint's create-or-update; both take a `DeployRun`,
so it sits below them and imports neither.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from deployc.deploy.aws import ClientFactory, aws_errors, describe_message, is_not_found
from deployc.errors import DeployError

SETTLED = {"InService", "Failed", "OutOfService"}


class DeployRun:
    """The plan being applied, the clients it is applied with, and the record of each call's outcome."""

    def __init__(self, plan: dict[str, Any], build_dir: Path, clients: ClientFactory, log: Callable[[str], Any],
                 wait_timeout_s: float, poll_s: float, env_refs: dict[str, str] | None = None):
        self.plan, self.build_dir, self.client, self.log = plan, build_dir, clients, log
        self.wait_timeout_s, self.poll_s = wait_timeout_s, poll_s
        self.actions: list[dict[str, str]] = []
        self.current = "deploy"
        self.calls = {call["operation"]: call["parameters"] for call in plan["calls"]}
        self.env_refs = env_refs or {}  # container variable -> the environment variable its value came from

    def done(self, status: str, detail: str) -> None:
        """Record the outcome of the current call (`applied` or `unchanged`) and log it."""
        self.actions.append({"call": self.current, "status": status, "detail": detail})
        self.log(f"{'applied ' if status == 'applied' else 'unchanged'} {self.current}: {detail}")

    def endpoint_state(self) -> str:
        """Where the endpoint stands after a failure, for the error message."""
        name = self.plan["endpoint_name"]
        try:
            d = self.client("sagemaker").describe_endpoint(EndpointName=name)
        except aws_errors() as exc:
            if is_not_found(exc):
                return f"Endpoint {name} does not exist yet; nothing was deleted."
            return f"The state of endpoint {name} is unknown ({describe_message(exc)}); nothing was deleted."
        return (f"Endpoint {name} is {d['EndpointStatus']} on config {d['EndpointConfigName']}; "
                "no config or model was deleted.")

    def wait_settled(self, name: str) -> dict[str, Any]:
        """describe_endpoint until the endpoint leaves Creating/Updating/RollingBack, or DeployError on timeout."""
        deadline = time.monotonic() + self.wait_timeout_s
        sm = self.client("sagemaker")
        while True:
            d = sm.describe_endpoint(EndpointName=name)
            if d["EndpointStatus"] in SETTLED:
                return dict(d)
            if time.monotonic() >= deadline:
                raise DeployError(
                    f"endpoint {name} is still {d['EndpointStatus']} after {self.wait_timeout_s:g}s "
                    f"(--wait-timeout). SageMaker goes on in the background; until the update completes the "
                    f"endpoint serves its previous config {d.get('EndpointConfigName')}. Run deployc deploy again "
                    "to resume (it waits, then finishes autoscaling).")
            time.sleep(min(self.poll_s, max(0.0, deadline - time.monotonic())))
