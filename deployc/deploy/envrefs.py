"""!ENV references in a deploy plan: resolved from the deploying process's environment, at deploy time only.

The bundle holds `{"$env": NAME}` where a value comes from the environment; the value exists only in the memory
of `deployc deploy` and in the create_model call. Messages name the variable, never its value, and anything
AWS echoes back is scrubbed of the values before it is printed.
"""
from __future__ import annotations

import copy
import re
from collections.abc import Mapping
from typing import Any

from deployc.errors import InputError
from deployc.schema.envref import ENV_KEY, ENV_REF_NAME, is_env_ref

MAX_VALUE = 1024  # SageMaker: an Environment value has at most 1024 characters
MIN_REDACTED = 4  # shorter values are no secret, and scrubbing them would garble the message


def model_environment(plan: dict[str, Any]) -> dict[str, Any]:
    """create_model's PrimaryContainer.Environment as the plan has it (references unresolved)."""
    for call in plan["calls"]:
        if call["operation"] == "create_model":
            return dict(call["parameters"].get("PrimaryContainer", {}).get("Environment") or {})
    return {}


def references(plan: dict[str, Any]) -> dict[str, str]:
    """{container variable: environment variable it comes from}; InputError for a malformed reference."""
    out = {}
    for key, value in model_environment(plan).items():
        if isinstance(value, dict):
            if not is_env_ref(value) or not re.match(ENV_REF_NAME, value[ENV_KEY]):
                raise InputError(f"deploy-plan.json: environment {key!r} holds {value!r}, not a reference "
                                 f"{{{ENV_KEY!r}: NAME}}; rebuild the bundle")
            out[key] = value[ENV_KEY]
    return out


def resolve(plan: dict[str, Any], environ: Mapping[str, str]) -> tuple[dict[str, Any], list[str]]:
    """(the plan with each reference replaced by its variable's value, the values to keep out of messages).

    Every unset, empty or oversized variable is reported at once (InputError, before any AWS call).
    """
    refs = references(plan)
    problems = []
    for key, var in sorted(refs.items()):
        value = environ.get(var)
        if value is None:
            problems.append(f"environment variable {var} is not set (targets.sagemaker.environment.{key} is "
                            f"!ENV {var}); set it in the environment of deployc deploy")
        elif not value:
            problems.append(f"environment variable {var} is empty (targets.sagemaker.environment.{key})")
        elif len(value) > MAX_VALUE:
            problems.append(f"environment variable {var} has {len(value)} characters; SageMaker allows "
                            f"{MAX_VALUE} per environment value (targets.sagemaker.environment.{key})")
    if problems:
        raise InputError("; ".join(problems))
    if not refs:
        return plan, []
    resolved = copy.deepcopy(plan)
    for call in resolved["calls"]:
        if call["operation"] == "create_model":
            env = call["parameters"]["PrimaryContainer"]["Environment"]
            for key, var in refs.items():
                env[key] = environ[var]
    secret = {environ[var] for var in refs.values() if len(environ[var]) >= MIN_REDACTED}
    return resolved, sorted(secret, key=len, reverse=True)


def redact(text: str, values: list[str]) -> str:
    """`text` with every resolved value replaced by `***` (AWS validation errors may quote parameters)."""
    for value in values:
        text = text.replace(value, "***")
    return text
