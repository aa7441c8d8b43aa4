"""boto3 plumbing for the deploy: clients, "does it exist" checks, comparisons and error messages.

boto3/botocore are imported inside functions: `deployc validate`, `plan` and `--help` never load them.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

from deployc import __version__

ClientFactory = Callable[[str], Any]


def client_factory(region: str, endpoint_url: str | None = None) -> ClientFactory:
    """Clients from the standard credential chain; `endpoint_url` (or AWS_ENDPOINT_URL) points them elsewhere."""
    import boto3
    from botocore.config import Config

    session = boto3.session.Session(region_name=region)
    # max_attempts comes from AWS_MAX_ATTEMPTS / the profile when set (botocore's default otherwise)
    config = Config(retries={"mode": "standard"}, connect_timeout=10, read_timeout=60,
                    user_agent_extra=f"deployc/{__version__}")
    cache: dict[str, Any] = {}

    def make(service: str) -> Any:
        if service not in cache:
            kwargs: dict[str, Any] = {"config": config}
            if endpoint_url:
                kwargs["endpoint_url"] = endpoint_url
            cache[service] = session.client(service, **kwargs)
        return cache[service]

    return make


def error_code(exc: Exception) -> str:
    response = getattr(exc, "response", None) or {}
    return str(response.get("Error", {}).get("Code", ""))


def is_not_found(exc: Exception) -> bool:
    """SageMaker answers describe_* of a missing resource with ValidationException 'Could not find ...'."""
    code = error_code(exc)
    if code in ("404", "NoSuchKey", "NotFound", "ResourceNotFound", "ResourceNotFoundException"):
        return True
    return code == "ValidationException" and "could not find" in str(exc).lower()


def describe_message(exc: Exception) -> str:
    """A one-line account of a boto3 failure with a hint where the cause is usual."""
    from botocore.exceptions import (
        ClientError,
        EndpointConnectionError,
        NoCredentialsError,
        NoRegionError,
        ReadTimeoutError,
    )

    if isinstance(exc, NoCredentialsError):
        return ("no AWS credentials found: deployc uses the standard chain (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, "
                "AWS_PROFILE, SSO, an instance or task role)")
    if isinstance(exc, EndpointConnectionError):
        return f"cannot reach {exc.kwargs.get('endpoint_url', 'the AWS endpoint')}: check the network, --endpoint-url"
    if isinstance(exc, ReadTimeoutError):
        return f"AWS did not answer in time ({exc})"
    if isinstance(exc, NoRegionError):
        return "no region: the deploy plan names one; was it edited?"
    if isinstance(exc, ClientError):
        err = exc.response.get("Error", {})
        code, message = err.get("Code", "?"), err.get("Message", str(exc))
        hint = ""
        if code in ("AccessDenied", "AccessDeniedException", "UnauthorizedOperation", "403"):
            hint = " (the caller lacks an IAM permission; see docs/sagemaker.md)"
        elif code in ("ResourceLimitExceeded", "ThrottlingException", "LimitExceededException"):
            hint = " (an account quota or rate limit; ask AWS for more, or retry later)"
        return f"{code}: {message}{hint}"
    return f"{type(exc).__name__}: {exc}"


def aws_errors() -> tuple[type[Exception], ...]:
    from botocore.exceptions import BotoCoreError, ClientError

    return (ClientError, BotoCoreError)


def same(desired: Any, actual: Any) -> bool:
    """Whether what AWS describes already matches what the plan wants.

    Only keys the plan sets are compared (AWS adds its own: ARNs, timestamps, state); numbers compare by value
    (AWS returns 5 for 5.0); an empty list or dict in the plan matches a key AWS leaves out.
    """
    if isinstance(desired, dict):
        if not isinstance(actual, dict):
            return not desired and actual is None
        return all(same(v, actual.get(k)) for k, v in desired.items())
    if isinstance(desired, list):
        if actual is None:
            return not desired
        if not isinstance(actual, list) or len(desired) != len(actual):
            return False
        return all(same(d, a) for d, a in zip(desired, actual, strict=True))
    if isinstance(desired, bool) or isinstance(actual, bool):
        return desired is actual or (desired is False and actual is None)
    if isinstance(desired, (int, float)) and isinstance(actual, (int, float)):
        return float(desired) == float(actual)
    return bool(desired == actual)
