"""Settings that decide how far a build trusts the files it loads, read by the ML layer and set by the executor.

`KERAS_SAFE_MODE` is Keras's safe mode for every model a build loads: on (Lambda layers and other Python code
stored in a file are refused) except while the executor runs the steps of a spec that sets
`model.allow_python_code: true`. It lives here, below both the compiler and the ML layer, so neither imports
the other for it.
"""
from __future__ import annotations

from contextvars import ContextVar

KERAS_SAFE_MODE: ContextVar[bool] = ContextVar("keras_safe_mode", default=True)
