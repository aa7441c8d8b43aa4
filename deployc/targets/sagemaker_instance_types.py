"""SageMaker real-time inference instance types deployc accepts (cfn-lint does not check them).

The list, from the `ProductionVariantInstanceType` enum of botocore 1.44.8's SageMaker model, is the data file
next to this module, so validating a spec never imports boto3. Regenerate it when AWS adds types (see
docs/sagemaker.md).
"""
from __future__ import annotations

from importlib import resources


def _read() -> frozenset[str]:
    text = resources.files("deployc.targets").joinpath("sagemaker_instance_types.txt").read_text(encoding="utf-8")
    return frozenset(line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#"))


INSTANCE_TYPES: frozenset[str] = _read()
