"""`targets.local`: the ONNX model and the serving config `deployc serve` reads (docs/bundle.md)."""
from __future__ import annotations

from typing import Any

from deployc import conventions as c
from deployc.render import dump_json
from deployc.schema.local import LocalTarget as LocalConfig
from deployc.targets.base import EmitContext, Target


def serving_config(ctx: EmitContext, cfg: LocalConfig, *, host: str | None = None, port: int | None = None
                   ) -> dict[str, Any]:
    """The `serving.json` document for a bundle folder holding model.onnx (and labels.txt)."""
    return {
        "format_version": c.SERVING_CONFIG_VERSION,
        "name": ctx.spec.name,
        "version": ctx.spec.version,
        "task": ctx.spec.model.task,
        "model": {
            "path": "model.onnx",
            "sha256": ctx.onnx_sha256,
            "inputs": [t.to_json() for t in ctx.inputs],
            "outputs": [t.to_json() for t in ctx.outputs],
        },
        "labels": "labels.txt" if ctx.labels else None,
        "server": {
            "host": host or cfg.host,
            "port": port or cfg.port,
            "workers": cfg.workers,
            "max_body_bytes": cfg.max_body_bytes,
            "auth_token_env": cfg.auth.token_env if cfg.auth else None,
        },
        "runtime": {"intra_op_threads": cfg.threads.intra_op, "inter_op_threads": cfg.threads.inter_op},
        "batching": {
            "enabled": cfg.batching.enabled,
            "max_batch_size": cfg.batching.max_batch_size,
            "max_delay_ms": cfg.batching.max_delay_ms,
        },
        "metrics": {"latency_buckets": list(ctx.latency_buckets)},
    }


def serving_files(ctx: EmitContext, cfg: LocalConfig | None = None, *, host: str | None = None,
                  port: int | None = None) -> dict[str, bytes]:
    """model.onnx, serving.json and labels.txt, relative to the bundle folder (also packed by sagemaker)."""
    cfg = cfg or LocalConfig()
    files = {
        "model.onnx": ctx.onnx_model.read_bytes(),
        "serving.json": dump_json(serving_config(ctx, cfg, host=host, port=port)),
    }
    if ctx.labels:
        files["labels.txt"] = ("\n".join(ctx.labels) + "\n").encode()
    return files


class LocalTarget(Target):
    name = "local"
    config_model = LocalConfig

    def emit(self, ctx: EmitContext) -> dict[str, bytes]:
        files = serving_files(ctx, self.config(ctx.spec))
        return {f"{c.LOCAL_DIR}/{k}": v for k, v in files.items()}
