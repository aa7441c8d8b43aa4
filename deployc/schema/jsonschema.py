"""The JSON Schema of deploy.yaml, shipped as deploy.schema.json for editors (yaml-language-server)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from deployc.schema.spec import DeploySpec

SCHEMA_FILE = Path(__file__).with_name("deploy.schema.json")
SCHEMA_ID = "https://deployc.dev/schema/deploy.schema.json"


def schema() -> dict[str, Any]:
    doc = DeploySpec.model_json_schema(by_alias=True, mode="validation")
    doc = {"$schema": "https://json-schema.org/draft/2020-12/schema", "$id": SCHEMA_ID, **doc}
    doc["title"] = "deploy.yaml"
    return doc


def schema_text() -> str:
    return json.dumps(schema(), indent=2, sort_keys=True) + "\n"


if __name__ == "__main__":  # python -m deployc.schema.jsonschema regenerates the shipped file
    SCHEMA_FILE.write_text(schema_text())
