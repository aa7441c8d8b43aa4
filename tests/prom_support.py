"""Run the real Prometheus server in tests: start it on a free loopback port with given rules and scrape
targets, query its HTTP API, stop it. Also a controlled exporter speaking deployc's metric names."""
from __future__ import annotations

import json
import shutil
import socket
import subprocess
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from deployc import conventions as C


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def prometheus_binary() -> str | None:
    return shutil.which("prometheus")


def wait_for(check: Callable[[], Any], timeout_s: float, what: str, interval_s: float = 0.25) -> Any:
    """Poll `check` until it returns something truthy; raise AssertionError naming `what` on timeout."""
    deadline = time.monotonic() + timeout_s
    last_exc: Exception | None = None
    while time.monotonic() < deadline:
        try:
            result = check()
            if result:
                return result
        except Exception as exc:  # the server may not be up yet
            last_exc = exc
        time.sleep(interval_s)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what} (last error: {last_exc})")


class Prometheus:
    """A real `prometheus` process with its own config, data folder and port. Use as a context manager."""

    def __init__(self, workdir: Path, rule_files: Sequence[Path], targets: Sequence[str],
                 interval: str = "1s", binary: str | None = None):
        self.workdir = Path(workdir)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.binary = binary or prometheus_binary() or "prometheus"
        config = {
            "global": {"scrape_interval": interval, "evaluation_interval": interval, "scrape_timeout": interval},
            "rule_files": [str(Path(f).resolve()) for f in rule_files],
            "scrape_configs": [{"job_name": "deployc", "static_configs": [{"targets": list(targets)}]}],
        }
        self.config_file = self.workdir / "prometheus.yml"
        self.config_file.write_text(json.dumps(config, indent=2))  # JSON is valid YAML
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = self.workdir / "prometheus.log"

    def start(self, timeout_s: float = 20) -> Prometheus:
        data = self.workdir / "data"
        data.mkdir(exist_ok=True)
        self._log_fh = open(self.log, "wb")  # noqa: SIM115 - prometheus writes to it until stop() closes it
        self.proc = subprocess.Popen(
            [self.binary, f"--config.file={self.config_file}", f"--storage.tsdb.path={data}",
             "--storage.tsdb.retention.time=1h", f"--web.listen-address=127.0.0.1:{self.port}"],
            stdout=self._log_fh, stderr=subprocess.STDOUT)

        def ready() -> bool:
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"prometheus exited with {self.proc.returncode}:\n{self.log.read_text()[-3000:]}")
            with urllib.request.urlopen(f"{self.url}/-/ready", timeout=1) as r:
                return r.status == 200

        wait_for(ready, timeout_s, "prometheus to be ready")
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        self.proc = None
        if hasattr(self, "_log_fh"):
            self._log_fh.close()

    def __enter__(self) -> Prometheus:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def api(self, path: str, **params: str) -> Any:
        query = ("?" + urllib.parse.urlencode(params)) if params else ""
        with urllib.request.urlopen(f"{self.url}/api/v1/{path}{query}", timeout=5) as r:
            body = json.loads(r.read())
        if body.get("status") != "success":
            raise AssertionError(f"{path}: {body}")
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        """Instant query: the result vector as [{"metric": {...}, "value": [ts, "text"]}, ...]."""
        return list(self.api("query", query=expr)["result"])

    def value(self, expr: str) -> float | None:
        """The single value of an instant query, or None when it has no result yet."""
        result = self.query(expr)
        if not result:
            return None
        assert len(result) == 1, f"{expr} has {len(result)} series: {result}"
        return float(result[0]["value"][1])

    def rule_groups(self) -> list[dict[str, Any]]:
        return list(self.api("rules")["groups"])

    def alerts(self) -> list[dict[str, Any]]:
        return list(self.api("alerts")["alerts"])


class DeploycMetrics:
    """An exporter with deployc serve's metric names whose values the test sets, exposed as consistent
    snapshots (every series read under one lock), so ratios Prometheus computes are exact."""

    def __init__(self, model: str, buckets: Sequence[float], version: str = "1.0.0"):
        self.model, self.version, self.buckets = model, version, tuple(sorted(buckets))
        self.lock = threading.Lock()
        self.requests: dict[tuple[str, str], float] = {}  # (route, code) -> count
        self.hist: dict[str, tuple[list[int], float, int]] = {}  # route -> (bucket counts, sum, count)
        self.predictions: dict[str, float] = {}

    def add(self, route: str = C.INFER_ROUTES[0], code: str = "200", n: int = 1,
            seconds: float | None = None, predicted: str | None = None) -> None:
        with self.lock:
            self.requests[(route, code)] = self.requests.get((route, code), 0) + n
            if seconds is not None:
                counts, total, count = self.hist.get(route, ([0] * len(self.buckets), 0.0, 0))
                counts = [c + (n if seconds <= b else 0) for c, b in zip(counts, self.buckets, strict=True)]
                self.hist[route] = (counts, total + n * seconds, count + n)
            if predicted is not None:
                self.predictions[predicted] = self.predictions.get(predicted, 0) + n

    def collect(self) -> Any:
        from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily
        from prometheus_client.utils import floatToGoString

        with self.lock:
            req = CounterMetricFamily(C.METRIC_REQUESTS.removesuffix("_total"), "Requests.",
                                      labels=[C.LABEL_MODEL, C.LABEL_VERSION, C.LABEL_ROUTE, C.LABEL_CODE])
            for (route, code), n in sorted(self.requests.items()):
                req.add_metric([self.model, self.version, route, code], n)
            hist = HistogramMetricFamily(C.METRIC_REQUEST_DURATION, "Request duration.",
                                         labels=[C.LABEL_MODEL, C.LABEL_VERSION, C.LABEL_ROUTE])
            for route, (counts, total, count) in sorted(self.hist.items()):
                buckets = [(floatToGoString(b), c) for b, c in zip(self.buckets, counts, strict=True)]
                buckets.append(("+Inf", count))
                hist.add_metric([self.model, self.version, route], buckets, total)
            pred = CounterMetricFamily(C.METRIC_PREDICTIONS.removesuffix("_total"), "Predicted classes.",
                                       labels=[C.LABEL_MODEL, C.LABEL_VERSION, C.LABEL_CLASS])
            for cls, n in sorted(self.predictions.items()):
                pred.add_metric([self.model, self.version, cls], n)
        yield from (req, hist, pred)

    def serve(self) -> tuple[str, Callable[[], None]]:
        """Expose on a free loopback port; returns ("127.0.0.1:port", stop)."""
        from prometheus_client import CollectorRegistry, start_http_server

        registry = CollectorRegistry(auto_describe=False)
        registry.register(self)  # type: ignore[arg-type]
        port = free_port()
        server, thread = start_http_server(port, addr="127.0.0.1", registry=registry)

        def stop() -> None:
            server.shutdown()
            server.server_close()
            thread.join(timeout=5)

        return f"127.0.0.1:{port}", stop
