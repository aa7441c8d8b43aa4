"""Keep the machine-learning libraries' own chatter out of build logs; their errors still surface as exceptions.

- TensorFlow's C++ runtime (absl, oneDNN, CUDA probing, Grappler) logs to file descriptor 2 below
  TF_CPP_MIN_LOG_LEVEL: `tensorflow_env` sets it (unless the environment already does, so
  `TF_CPP_MIN_LOG_LEVEL=0 deployc build ...` shows everything). The lines TensorFlow logs while it loads ignore
  a level set by the running process (only one in the environment it started with counts), so every
  TensorFlow or Keras import in a build goes through `quiet_tensorflow`, which silences fd 2 while it runs:
  the library code that imports them calls it, and so does the executor before each step that declares them.
- Python-level warnings (Keras and TensorFlow UserWarnings, deprecations) and the INFO and WARNING records of
  library loggers (tf2onnx; onnxruntime, whose quantization package configures the root logger at INFO when it
  is imported): `library_noise_silenced`, around each build step.
- LiteRT's converter and interpreter print straight to fd 2: `native_stderr_silenced`.
"""
from __future__ import annotations

import logging
import os
import sys
import warnings
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

TF_ENV = {
    "TF_CPP_MIN_LOG_LEVEL": "3",  # C++ logs: errors reach Python as exceptions
    "CUDA_VISIBLE_DEVICES": "",  # builds run on the CPU, where seeds give byte-identical models
}
TF_DISTRIBUTIONS = frozenset({"tensorflow", "tensorflow-cpu", "keras", "tf-keras"})
LIBRARY_LOGGERS = ("tensorflow", "tf2onnx", "onnxruntime", "onnx", "keras", "absl", "h5py", "nncf", "openvino")
LIBRARY_PACKAGES = ("keras", "tensorflow", "tf2onnx", "onnx", "onnxruntime", "absl", "google", "h5py", "ml_dtypes",
                    "ai_edge_litert", "nncf", "openvino")
LIBRARY_MODULES = rf"({'|'.join(LIBRARY_PACKAGES)})(\.|$)"  # the modules whose warnings are kept out
NOISY_WARNINGS = (UserWarning, DeprecationWarning, PendingDeprecationWarning, FutureWarning)


def uses_tensorflow(libs: Iterable[str]) -> bool:
    """Whether a step whose cache key holds these distributions' versions runs TensorFlow (or Keras on it)."""
    return bool(TF_DISTRIBUTIONS & set(libs))


def tensorflow_env() -> None:
    """What must be set before TensorFlow loads; values the environment sets win."""
    for key, value in TF_ENV.items():
        os.environ.setdefault(key, value)


def quiet_tensorflow() -> None:
    """Import TensorFlow (and so Keras, whose backend it is) with its start-up chatter kept out of build logs.
    Call it before any `import tensorflow` or `import keras`."""
    tensorflow_env()
    if "tensorflow" in sys.modules:
        return
    with native_stderr_silenced():
        import tensorflow  # noqa: F401


@contextmanager
def library_noise_silenced() -> Iterator[None]:
    """Library warnings and INFO/WARNING log records off while the block runs (errors still logged), restored
    after it, so a program that calls deployc's API keeps its own settings."""
    loggers = [logging.getLogger(name) for name in LIBRARY_LOGGERS]
    levels = [lg.level for lg in loggers]
    with warnings.catch_warnings():
        for category in NOISY_WARNINGS:
            warnings.filterwarnings("ignore", category=category, module=LIBRARY_MODULES)
        for lg in loggers:
            lg.setLevel(logging.ERROR)
        try:
            yield
        finally:
            for lg, level in zip(loggers, levels, strict=True):
                lg.setLevel(level)


@contextmanager
def native_stderr_silenced() -> Iterator[None]:
    sys.stderr.flush()
    try:
        saved = os.dup(2)
    except OSError:  # no usable fd 2 (embedded interpreters): nothing to silence
        yield
        return
    try:
        with open(os.devnull, "wb") as null:
            os.dup2(null.fileno(), 2)
            yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)
