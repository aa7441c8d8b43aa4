"""`deployc serve BUNDLE`: check the bundle, load and warm the model, bind, serve, drain on SIGTERM, exit 0.

Everything that can go wrong before serving (bundle, signature, model hash, auth token, port) is checked before
the port opens and reported as one line on stderr with exit code 1. The signature (deployc.signing) is checked
before anything of the bundle is loaded, when a key is given (--key, $DEPLOYC_VERIFY_KEY) or a signature is
required (--require-signature, $DEPLOYC_REQUIRE_SIGNATURE=1, serving.json's `signature.required`).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import shutil
import signal
import socket
import sys
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any

from deployc.errors import EXIT_OK, DeploycError, InputError
from deployc.serve.config import ServingConfig, find_serving_json, load_config

log = logging.getLogger("deployc.serve")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="deployc serve", description="Serve a deployc build's local bundle over "
                                "HTTP (Open Inference Protocol v2, SageMaker /invocations, Prometheus /metrics).")
    p.add_argument("bundle", metavar="BUNDLE", help="build/<name>/ (reads local/serving.json) or its local/ folder")
    p.add_argument("--host", help="bind address (default: serving.json's server.host, 127.0.0.1)")
    p.add_argument("--port", type=int, help="port (default: serving.json's server.port; 0 picks a free one)")
    p.add_argument("--workers", type=int, help="server processes (default: serving.json's server.workers)")
    p.add_argument("--grpc-port", type=int, help="also serve the Open Inference Protocol over gRPC on this port "
                   "(default: serving.json's server.grpc_port, off when null; 0 picks a free one)")
    p.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"],
                   help="log level; 'debug' also writes an access log line per request")
    p.add_argument("--key", metavar="PUB", help="verify the bundle's signature (model.sig) with this PEM public "
                   "key before loading anything (default: $DEPLOYC_VERIFY_KEY, a path or the PEM text)")
    p.add_argument("--require-signature", action="store_true", help="refuse to start unless the signature "
                   "verifies (also: DEPLOYC_REQUIRE_SIGNATURE=1, or serving.json's signature.required)")
    return p


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as e:  # argparse already printed the usage error
        return int(e.code or 0)
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        provenance = check_bundle(args.bundle, args.key, args.require_signature)
        cfg = load_config(args.bundle)
        overrides = {k: v for k, v in (("host", args.host), ("port", args.port), ("workers", args.workers),
                                       ("grpc_port", args.grpc_port)) if v is not None}
        cfg = replace(cfg, **overrides)
        if not 0 <= cfg.port <= 65535 or cfg.workers < 1:
            raise InputError("--port must be 0..65535 and --workers >= 1")
        if cfg.grpc_port is not None and (not 0 <= cfg.grpc_port <= 65535 or cfg.grpc_port == cfg.port != 0):
            raise InputError(f"--grpc-port must be 0..65535 and differ from the HTTP port {cfg.port}")
        log_startup(cfg, provenance)
        if cfg.workers == 1:
            return _serve_one(cfg, args.log_level)
        return _serve_many(cfg, args.log_level)
    except DeploycError as e:
        for line in e.lines():
            print(f"deployc serve: error: {line}", file=sys.stderr)
        return e.exit_code


def check_bundle(bundle: str, key: str | None, require: bool) -> dict[str, Any]:
    """The signature check that runs before the bundle is loaded; returns what the startup line logs."""
    from deployc import signing

    serving_json = find_serving_json(bundle)
    try:
        raw = json.loads(serving_json.read_bytes())
    except (OSError, ValueError):
        raw = {}  # load_config reports it, with the reason
    asked = isinstance(raw, dict) and isinstance(raw.get("signature"), dict) and raw["signature"].get("required")
    required = require or signing.required_by_env() or asked is True
    folder = Path(bundle).parent if Path(bundle).is_file() else Path(bundle)
    try:
        status = signing.check_provenance(folder, signing.verify_key(key), required)
    except ModuleNotFoundError as exc:  # `python -m deployc.serve` too: one line naming the extra
        from deployc.extras import missing_extra

        if (err := missing_extra(exc, "deployc serve --key")) is None:
            raise
        raise err from None
    served = serving_json.parent
    digests = signing.folder_digests(served)
    status["bundle_sha256"] = hashlib.sha256("".join(f"{k}\0{v}\n" for k, v in sorted(digests.items()))
                                             .encode()).hexdigest()
    return status


def log_startup(cfg: ServingConfig, status: dict[str, Any]) -> None:
    """One log line that says what is served: the bundle's content hash, the model's, and the signature."""
    if status.get("verified"):
        sig = f"signature verified (key sha256 {status['key_sha256']}, digest {status['digest']})"
    elif status.get("signed"):
        sig = "signed, not verified (no --key or DEPLOYC_VERIFY_KEY)"
    else:
        sig = "unsigned"
    log.info("serving %s %s from %s: bundle sha256 %s, model sha256 %s; %s", cfg.name, cfg.version, cfg.root,
             status["bundle_sha256"], cfg.model_sha256, sig)


def _bound(host: str, port: int, option: int, what: str = "") -> socket.socket:
    """A TCP socket bound to host:port with one SO_* option set, or an InputError naming the address."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, option, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise InputError(f"cannot listen on {host}:{port}{what}: {e.strerror}") from None
    return sock


def _bind(cfg: ServingConfig) -> socket.socket:
    sock = _bound(cfg.host, cfg.port, socket.SO_REUSEADDR)
    sock.set_inheritable(True)
    return sock


def _uvicorn_config(app: Any, cfg: ServingConfig, log_level: str, **extra: Any) -> Any:
    import uvicorn

    from deployc.serve.protocol import uvicorn_http_options

    # loop "auto" picks uvloop, and http httptools (bounded heads, timeouts, connection and in-flight body
    # limits: protocol.py), when installed: see bench/serve.py and bench/serve_slow.py.
    return uvicorn.Config(app, log_level=log_level, access_log=log_level == "debug", lifespan="on",
                          timeout_graceful_shutdown=30, server_header=False, **uvicorn_http_options(cfg.limits),
                          **extra)


def _serve_one(cfg: ServingConfig, log_level: str) -> int:
    import uvicorn

    from deployc.serve.app import create_app

    app = create_app(cfg)  # loads + warms up the model; errors here happen before the port opens
    state = app.state.serving
    sock = _bind(cfg)
    _grpc_socket(cfg, share=False)  # checks the gRPC port is free; the app's lifespan binds it

    class DrainingServer(uvicorn.Server):
        """Turns readiness off the moment a stop signal arrives, then lets uvicorn drain in-flight requests."""

        def handle_exit(self, sig: int, frame: Any) -> None:
            state.draining = True
            super().handle_exit(sig, frame)

    server = DrainingServer(_uvicorn_config(app, cfg, log_level))
    print(f"deployc serve: {cfg.name} {cfg.version} on http://{_addr(sock)}", file=sys.stderr, flush=True)
    with _quiet_signals():  # uvicorn re-raises the stop signal after draining; we exit 0 instead
        server.run(sockets=[sock])
    sock.close()
    if not server.started:
        raise InputError("the server failed to start (see the log above)")
    return EXIT_OK


def _serve_many(cfg: ServingConfig, log_level: str) -> int:
    """N worker processes share one socket; Prometheus samples are aggregated through a shared folder."""
    from uvicorn.supervisors import Multiprocess

    from deployc.serve.metrics import MULTIPROC_ENV
    from deployc.serve.runtime import ModelRunner
    from deployc.serve.state import auth_token
    from deployc.serve.worker import BUNDLE_ENV, GRPC_PORT_ENV, OVERRIDES_ENV

    auth_token(cfg)  # fail before spawning anything: a worker that cannot start would be restarted forever
    ModelRunner(cfg).warm_up()
    own_dir = None
    if not os.environ.get(MULTIPROC_ENV):
        own_dir = tempfile.mkdtemp(prefix="deployc-metrics-")
        os.environ[MULTIPROC_ENV] = own_dir
    os.environ[BUNDLE_ENV] = str(cfg.config_path)
    os.environ[OVERRIDES_ENV] = f"{cfg.host},{cfg.port},{cfg.workers}"
    sock = _bind(cfg)
    grpc_sock, grpc_port = _grpc_socket(cfg, share=True)
    os.environ[GRPC_PORT_ENV] = "" if grpc_sock is None else str(grpc_port)
    try:
        config = _uvicorn_config("deployc.serve.worker:create_worker_app", cfg, log_level, factory=True,
                                 workers=cfg.workers)
        print(f"deployc serve: {cfg.name} {cfg.version} on http://{_addr(sock)} ({cfg.workers} workers)",
              file=sys.stderr, flush=True)
        if grpc_sock is not None:
            print(f"deployc serve: {cfg.name} {cfg.version} gRPC on {_addr(grpc_sock)} ({cfg.workers} workers)",
                  file=sys.stderr, flush=True)
        Multiprocess(config, sockets=[sock]).run()
    finally:
        sock.close()
        if grpc_sock is not None:
            grpc_sock.close()
        if own_dir:
            shutil.rmtree(own_dir, ignore_errors=True)
    return EXIT_OK


def _grpc_socket(cfg: ServingConfig, share: bool) -> tuple[socket.socket | None, int]:
    """Fail early (exit 1, one line) when the gRPC port is taken. With `share` (several workers), hold the port
    with SO_REUSEPORT so that every worker binds the same one (a free one is chosen here for port 0); the held
    socket never listens, so it never takes a connection."""
    if cfg.grpc_port is None:
        return None, 0
    if cfg.grpc_port:  # probed without SO_REUSEPORT: refused even when a reuseport group holds the port
        _bound(cfg.host, cfg.grpc_port, socket.SO_REUSEADDR, " for gRPC").close()
    if not share:
        return None, cfg.grpc_port
    held = _bound(cfg.host, cfg.grpc_port, socket.SO_REUSEPORT, " for gRPC")
    return held, held.getsockname()[1]


def _addr(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class _quiet_signals:
    """Replace SIGINT/SIGTERM's default actions with no-ops while serving, restore them after."""

    def __enter__(self) -> None:
        self._saved = {s: signal.signal(s, lambda *_: None) for s in (signal.SIGINT, signal.SIGTERM)}

    def __exit__(self, *exc: object) -> None:
        for s, h in self._saved.items():
            signal.signal(s, h)
