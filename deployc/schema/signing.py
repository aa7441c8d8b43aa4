"""`signing:`: the build is signed in the OpenSSF model-signing format, and its servers may be told to verify it.

The private key never appears in deploy.yaml: the spec names the environment variable that holds it (the path of
a PEM file, or the PEM text itself); `deployc build --sign KEY` gives it on the command line instead.
"""
from __future__ import annotations

from pydantic import Field

from deployc.schema.base import SpecModel

ENV_NAME = r"^[A-Z_][A-Z0-9_]{0,199}$"
DEFAULT_KEY_ENV = "DEPLOYC_SIGNING_KEY"


class Signing(SpecModel):
    """How `deployc build` signs the build folder (docs/provenance.md)."""

    key_env: str = Field(DEFAULT_KEY_ENV, pattern=ENV_NAME, description="The environment variable holding the EC "
                         "private key (P-256, P-384 or P-521) that signs the build: the path of a PEM file, or the "
                         "PEM text. `deployc build --sign KEY` overrides it.")
    required: bool = Field(True, description="Fail the build (exit 1, before any step runs) when no key is given, "
                           "instead of writing an unsigned build; `deployc build --check` then also reports a "
                           "missing signature file as out of date.")
    verify_on_serve: bool = Field(False, description="Write `signature: {required: true}` into every serving.json: "
                                  "`deployc serve` then refuses to start unless the served folder's model.sig "
                                  "verifies with the key of --key or DEPLOYC_VERIFY_KEY (a container sets the "
                                  "variable in its environment).")
