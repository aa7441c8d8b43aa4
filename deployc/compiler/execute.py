"""Stage 4: run the plan's steps in order, each looked up in the cache by its key first (the local cache, then
the remote one when the build has it: deployc.compiler.remote)."""
from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

from deployc.compiler.cache import Cache
from deployc.compiler.plan import Plan
from deployc.compiler.steps import StepContext, StepOutput
from deployc.compiler.write import crash_point
from deployc.errors import DeploycError, input_error
from deployc.ml.quiet import library_noise_silenced, quiet_tensorflow, tensorflow_env, uses_tensorflow
from deployc.progress import as_progress, reporting
from deployc.trust import KERAS_SAFE_MODE


class StepError(DeploycError):
    """A step failed on an unexpected error (a model deployc cannot handle, a library fault)."""


def execute(plan: Plan, cache: Cache, log: Callable[[str], None]) -> tuple[dict[str, StepOutput], dict[str, bool]]:
    """`log` may be a `deployc.progress.Progress`: steps then report their long parts through it (bars on a
    terminal); a plain callable gets them as a few lines."""
    progress = as_progress(log)
    log = progress.log
    tensorflow_env()  # before any step (a plugin's too) imports TensorFlow
    outputs: dict[str, StepOutput] = {}
    cached: dict[str, bool] = {}
    n = len(plan.steps)
    for i, step in enumerate(plan.steps, 1):
        key = plan.keys[step.id]
        hit = cache.get(key)
        if hit is not None:
            outputs[step.id] = StepOutput(hit[0], hit[1])
            cached[step.id] = True
            where = "from the remote cache" if key in cache.from_remote else "cached"
            log(f"[{i}/{n}] {step.id}: {where} ({key[:12]})")
            _check(plan, step.id, hit[1])
            continue
        log(f"[{i}/{n}] {step.id}: {step.description}")
        t0 = time.perf_counter()
        staged = cache.staging()

        step_progress = progress.prefixed(f"      {step.id}: ")
        ctx = StepContext(out_dir=staged, deps={d: outputs[d] for d in step.deps}, resolved=plan.resolved,
                          log=step_progress)
        safe = KERAS_SAFE_MODE.set(not plan.spec.model.allow_python_code)
        try:
            with progress.task(step.id, announce=False), reporting(step_progress), library_noise_silenced():
                if uses_tensorflow(step.libs):  # a plugin's step too: TensorFlow's import-time logs kept out
                    quiet_tensorflow()
                result = _normalized(step.run(ctx))
        except DeploycError:
            cache.discard(staged)
            raise
        except OSError as exc:  # a full disk, a file that vanished: name the path, no traceback
            cache.discard(staged)
            raise input_error(exc, f"step {step.id}") from exc
        except Exception as exc:
            cache.discard(staged)
            raise StepError(f"step {step.id} failed: {type(exc).__name__}: {exc}") from exc
        finally:
            KERAS_SAFE_MODE.reset(safe)
        final, result = cache.put(key, staged, result)
        crash_point(f"after-step:{step.id}")
        outputs[step.id] = StepOutput(final, result)
        cached[step.id] = False
        log(f"      {step.id}: done in {time.perf_counter() - t0:.1f}s")
        _check(plan, step.id, result)
    return outputs, cached


def _check(plan: Plan, step_id: str, result: dict[str, Any]) -> None:
    for check in plan.checks:
        check(step_id, result)


def _normalized(result: Any) -> dict[str, Any]:
    """What a cache hit would return: the JSON round trip (tuples -> lists, numpy scalars refused)."""
    normalized: dict[str, Any] = json.loads(json.dumps(result, sort_keys=True, allow_nan=False))
    return normalized
