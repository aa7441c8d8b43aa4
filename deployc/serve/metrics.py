"""The server's Prometheus metrics, named in `deployc.conventions` so the SLO rules and dashboards match.

Each app gets its own registry (tests can run several servers in one process). With `--workers N` the CLI sets
`PROMETHEUS_MULTIPROC_DIR` before the workers start; each worker then writes its samples to that folder and
`/metrics` aggregates them across workers (gauges: in-flight summed over live workers, model info max).
"""
from __future__ import annotations

import contextlib
import glob
import os
from typing import Any

import numpy as np
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)

from deployc import conventions as C
from deployc.serve.config import ServingConfig
from deployc.serve.inputs import InputCounts

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
_HEADER_BYTES = 8  # a worker's metrics file starts with its used length and padding


class _WorkerFilesCollector(multiprocess.MultiProcessCollector):
    """prometheus_client's collector, minus files a worker has created but not yet sized: such a file is empty
    for a moment (`open` before `truncate`), holds no sample yet, and would make the whole scrape fail."""

    def collect(self) -> Any:
        files = []
        for f in glob.glob(os.path.join(self._path, "*.db")):
            with contextlib.suppress(FileNotFoundError):
                if os.stat(f).st_size >= _HEADER_BYTES:  # a file only grows, so it stays readable
                    files.append(f)
        return self.merge(files, accumulate=True)


class ServerMetrics:
    def __init__(self, cfg: ServingConfig):
        self.multiprocess = bool(os.environ.get(MULTIPROC_ENV))
        self.registry = CollectorRegistry(auto_describe=True)
        base = (C.LABEL_MODEL, C.LABEL_VERSION)
        self._base = (cfg.name, cfg.version)
        r = self.registry
        self.requests = Counter(C.METRIC_REQUESTS, "HTTP requests answered.", base + (C.LABEL_ROUTE, C.LABEL_CODE),
                                registry=r)
        self.duration = Histogram(C.METRIC_REQUEST_DURATION, "Time from request start to response, in seconds.",
                                  base + (C.LABEL_ROUTE,), buckets=cfg.latency_buckets, registry=r)
        self.batch = Histogram(C.METRIC_BATCH_SIZE, "Rows per model run (after dynamic batching).", base,
                               buckets=C.BATCH_SIZE_BUCKETS, registry=r)
        self.in_flight = Gauge(C.METRIC_IN_FLIGHT, "Inference requests being served.", base, registry=r,
                               multiprocess_mode="livesum")
        info = Gauge(C.METRIC_MODEL_INFO, "The served model (value 1).", base + ("sha256",), registry=r,
                     multiprocess_mode="max")
        info.labels(cfg.name, cfg.version, cfg.model_sha256).set(1)
        self._predictions: Counter | None = None
        self._prediction_children: dict[int, Any] = {}  # class index -> its labelled counter
        self._class_names: list[str] = []
        self._prediction_index = cfg.prediction_index
        self._binary = cfg.task == "binary"
        self._threshold = cfg.threshold
        if cfg.task in ("classification", "binary"):  # one class a row; regression and multilabel have none
            what = "thresholded" if self._binary else "argmax of"
            self._predictions = Counter(C.METRIC_PREDICTIONS, f"Predicted classes ({what} the prediction output).",
                                        base + (C.LABEL_CLASS,), registry=r)
            shape = cfg.outputs[self._prediction_index].shape
            n = 2 if self._binary else shape[-1] if shape and shape[-1] > 0 else 0
            self._class_names = list(cfg.labels or [])
            self._class_names += [str(i) for i in range(len(self._class_names), n)]
        self._children: dict[tuple[str, ...], Any] = {}
        self._inputs: InputCounts | None = None
        if cfg.input_monitor is not None:
            self._input_counters(cfg)
        if cfg.capture is not None:
            self._capture_counters()
        self.batch_child = self.batch.labels(*self._base)
        self.in_flight_child = self.in_flight.labels(*self._base)

    def observe_request(self, route: str, code: int, seconds: float) -> None:
        key = (route, str(code))
        child = self._children.get(key)
        if child is None:  # labels() is a dict lookup plus a lock: cache the children on the hot path
            child = self._children[key] = (self.requests.labels(*self._base, route, str(code)),
                                           self.duration.labels(*self._base, route))
        child[0].inc()
        child[1].observe(seconds)

    def _input_counters(self, cfg: ServingConfig) -> None:
        """The input-monitoring counters (serving.json's `input_monitor`), every series created at 0."""
        assert cfg.input_monitor is not None
        base, r = (C.LABEL_MODEL, C.LABEL_VERSION), self.registry
        per_input = base + (C.LABEL_INPUT,)
        values = Counter(C.METRIC_INPUT_VALUES, "Input values received on inference routes.", per_input, registry=r)
        nonfinite = Counter(C.METRIC_INPUT_NONFINITE, "Input values that were NaN or infinite.", per_input,
                            registry=r)
        outside = Counter(C.METRIC_INPUT_OUT_OF_RANGE, "Finite input values outside data.eval's range.", per_input,
                          registry=r)
        bins = Counter(C.METRIC_FEATURE_BINS, "Rows per bin of each watched input feature (data.eval's quantiles).",
                       base + (C.LABEL_FEATURE, C.LABEL_BIN), registry=r)
        self._inputs = InputCounts(cfg.input_monitor)
        self._input_children = {t.name: (values.labels(*self._base, t.name), nonfinite.labels(*self._base, t.name),
                                         outside.labels(*self._base, t.name)) for t in cfg.inputs}
        self._bin_children = {f.name: [bins.labels(*self._base, f.name, str(b)) for b in range(f.bins)]
                              for f in cfg.input_monitor.features}

    def _capture_counters(self) -> None:
        """The capture counters, every series created at 0; incremented by the request path (sampled) and the
        writer thread (written, bytes, dropped), which prometheus_client's locks make safe."""
        from deployc.serve.capture import DROP_REASONS

        base, r = (C.LABEL_MODEL, C.LABEL_VERSION), self.registry
        self.capture_sampled = Counter(C.METRIC_CAPTURE_SAMPLED, "Inference requests drawn for capture.", base,
                                       registry=r).labels(*self._base)
        self.capture_written = Counter(C.METRIC_CAPTURE_WRITTEN, "Masked capture records written.", base,
                                       registry=r).labels(*self._base)
        self.capture_bytes = Counter(C.METRIC_CAPTURE_BYTES, "Bytes of capture records written.", base,
                                     registry=r).labels(*self._base)
        dropped = Counter(C.METRIC_CAPTURE_DROPPED, "Sampled records not written (queue full, too large for a "
                          "file, write error).", base + (C.LABEL_REASON,), registry=r)
        self._capture_dropped = {reason: dropped.labels(*self._base, reason) for reason in DROP_REASONS}

    def observe_capture_written(self, size: int) -> None:
        self.capture_written.inc()
        self.capture_bytes.inc(size)

    def observe_capture_dropped(self, reason: str) -> None:
        self._capture_dropped[reason].inc()

    def observe_inputs(self, feed: dict[str, np.ndarray]) -> None:
        """Count one inference request's inputs (decoded and validated, before the model runs)."""
        if self._inputs is None:
            return
        per_input, bins = self._inputs.count(feed)
        for name, counts in per_input.items():
            children = self._input_children.get(name)
            if children is not None:
                for child, n in zip(children, counts, strict=True):
                    if n:
                        child.inc(n)
        for name, per_bin in bins.items():
            bin_children = self._bin_children[name]
            for b in np.flatnonzero(per_bin):
                bin_children[int(b)].inc(int(per_bin[b]))

    def observe_nonfinite(self, name: str, count: int, size: int) -> None:
        """An inference request refused for `count` NaN or infinite values among `size` of input `name`."""
        children = self._input_children.get(name) if self._inputs is not None else None
        if children is not None:
            children[0].inc(size)
            children[1].inc(count)

    def observe_batch(self, rows: int) -> None:
        self.batch_child.observe(rows)

    def observe_predictions(self, outputs: list[np.ndarray]) -> None:
        """Count the predicted class of each row of the prediction output (classification: argmax; binary: the
        probability against the threshold)."""
        if self._predictions is None:
            return
        out = outputs[self._prediction_index]
        if self._binary:
            self._observe_binary(out)
            return
        if out.ndim != 2 or out.shape[1] == 0:
            return
        if out.shape[0] == 1:  # the common case, without bincount's arrays
            self._prediction_child(int(out[0].argmax())).inc()
            return
        counts = np.bincount(out.argmax(axis=1), minlength=out.shape[1])
        for idx in np.flatnonzero(counts):
            self._prediction_child(int(idx)).inc(int(counts[idx]))

    def _observe_binary(self, out: np.ndarray) -> None:
        """[N] or [N, 1] probabilities of class 1; NaN counts as class 0 (it is not >= the threshold)."""
        if out.size == 1:  # one row
            self._prediction_child(int(out.item() >= self._threshold)).inc()
            return
        if out.ndim not in (1, 2) or (out.ndim == 2 and out.shape[1] != 1) or out.size == 0:
            return
        ones = int(np.count_nonzero(out >= self._threshold))
        if ones:
            self._prediction_child(1).inc(ones)
        if out.size - ones:
            self._prediction_child(0).inc(out.size - ones)

    def _prediction_child(self, idx: int) -> Any:
        child = self._prediction_children.get(idx)
        if child is None:
            assert self._predictions is not None
            name = self._class_names[idx] if idx < len(self._class_names) else str(idx)
            child = self._prediction_children[idx] = self._predictions.labels(*self._base, name)
        return child

    def render(self) -> tuple[bytes, str]:
        if self.multiprocess:
            registry = CollectorRegistry()
            _WorkerFilesCollector(registry)
            return generate_latest(registry), CONTENT_TYPE_LATEST
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
