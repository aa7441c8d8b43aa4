"""`!ENV NAME`: a value deploy.yaml names but never holds, read from the environment of `deployc deploy`.

The loader turns a `!ENV NAME` scalar into the mapping `{"$env": "NAME"}` (a YAML mapping with a `$env` key is
refused, so only the tag produces it). The build never reads the variable: the reference travels into
deploy-plan.json as it is and becomes a NoEcho parameter of the CloudFormation template.
"""
from __future__ import annotations

import hashlib
import re
from collections import Counter
from collections.abc import Iterable
from typing import Any

from pydantic import ConfigDict, Field

from deployc.schema.base import SpecModel

ENV_TAG = "!ENV"
ENV_KEY = "$env"
MAX_NAME = 200  # the CloudFormation parameter named after it stays far below the 255-character limit
ENV_REF_NAME = rf"^[A-Z_][A-Z0-9_]{{0,{MAX_NAME - 1}}}$"
ALLOWED_AT = "targets.sagemaker.environment"
ALLOWED_HINT = (f"!ENV references are allowed only as values of {ALLOWED_AT} (resolved by deployc deploy, "
                "never written into the build)")
# The deployer's own AWS credentials must not travel into the container: it gets them from its role.
AWS_CREDENTIAL_VARS = frozenset({"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN",
                                 "AWS_SECURITY_TOKEN"})


class EnvRef(SpecModel):
    """A reference to an environment variable of the process that deploys; the value is not in the spec."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, validate_by_name=True,
                              validate_by_alias=True, title="EnvRef")
    name: str = Field(..., alias=ENV_KEY, pattern=ENV_REF_NAME, title="Environment variable",
                      description="Environment variable name; written `!ENV NAME` in deploy.yaml.")

    def to_plan(self) -> dict[str, str]:
        """The reference as plan data (deploy-plan.json): the name only, never a value."""
        return {ENV_KEY: self.name}


def is_env_ref(value: Any) -> bool:
    """Whether plain data (loaded spec, deploy plan) holds a reference at this place."""
    return isinstance(value, dict) and len(value) == 1 and isinstance(value.get(ENV_KEY), str)


def credential_ref_problem(name: str) -> str | None:
    """Why a container variable may not come from `!ENV name`, or None."""
    if name in AWS_CREDENTIAL_VARS:
        return (f"!ENV {name} would hand the deployer's AWS credentials to the container; it gets its own "
                "from role_arn")
    return None


def env_ref_name_problem(name: str) -> str | None:
    """Why `name` cannot follow !ENV, or None."""
    if re.match(ENV_REF_NAME, name):
        return None
    return (f"!ENV takes an environment variable name (upper-case letters, digits and _, not starting with a "
            f"digit, at most {MAX_NAME} characters), not {name!r}")


def parameter_names(names: Iterable[str], taken: Iterable[str] = ()) -> dict[str, str]:
    """CloudFormation parameter per referenced variable: `Env` + the name's letters and digits (DIGITS_API_KEY ->
    EnvDIGITSAPIKEY), from the names alone, never from a value. Names that would share an id (A_B and AB), or
    take one of `taken`, get a suffix from a hash of the name."""
    unique = sorted(set(names))
    base = {n: "Env" + re.sub(r"[^A-Za-z0-9]", "", n) for n in unique}
    counts = Counter(base.values())
    used = set(taken)
    return {n: (b if counts[b] == 1 and b not in used
                else f"{b}X{hashlib.sha256(n.encode()).hexdigest()[:8]}") for n, b in base.items()}
