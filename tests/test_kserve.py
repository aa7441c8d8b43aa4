"""The kserve target: golden manifests, schema checks of every manifest, rules wrapped as a PrometheusRule."""
from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
from golden_support import assert_golden
from pydantic import ValidationError
from ruamel.yaml import YAML

from deployc.monitoring import RULES_PATH, build_monitoring, compile_monitoring
from deployc.schema import DeploySpec
from deployc.targets import EmitContext, TensorInfo, get_target
from deployc.targets.kserve import ManifestError, validate_manifest

GOLDEN = Path(__file__).parent / "golden" / "kserve"
CASES = sorted(p.name for p in GOLDEN.iterdir() if (p / "deploy.yaml").is_file())
MODEL_BYTES = b"stand-in for model.onnx"  # the emitter copies bytes; it never parses the model
LABELS = tuple(f"digit-{i}" for i in range(10))


def load_yaml(data: bytes | str) -> Any:
    return YAML(typ="safe", pure=True).load(data)


def spec_of(doc: dict[str, Any]) -> DeploySpec:
    return DeploySpec.model_validate(doc)


def context(spec: DeploySpec, tmp: Path) -> EmitContext:
    """What emit_all hands the target: the monitoring model and the model facts."""
    model = tmp / "model.onnx"
    model.write_bytes(MODEL_BYTES)
    monitoring = build_monitoring(spec, spec_file="deploy.yaml", reference_distribution=None, class_names=None)
    return EmitContext(spec=spec, spec_file="deploy.yaml", onnx_model=model,
                       onnx_sha256=hashlib.sha256(MODEL_BYTES).hexdigest(),
                       inputs=(TensorInfo("pixels", "FP32", (-1, 64)),),
                       outputs=(TensorInfo("output", "FP32", (-1, 10)),),
                       labels=LABELS, reference_distribution=None, latency_buckets=(0.005, 0.05, 0.5),
                       monitoring=monitoring)


def emit_case(case: str, tmp: Path) -> tuple[DeploySpec, EmitContext, dict[str, bytes]]:
    spec = spec_of(load_yaml((GOLDEN / case / "deploy.yaml").read_text()))
    ctx = context(spec, tmp)
    return spec, ctx, get_target("kserve").emit(ctx)


@pytest.mark.parametrize("case", CASES)
def test_golden(case: str, tmp_path: Path) -> None:
    _, _, files = emit_case(case, tmp_path)
    assert files["kserve/model/model.onnx"] == MODEL_BYTES
    assert_golden({k: v for k, v in files.items() if not k.endswith(".onnx")}, GOLDEN / case / "expected")


def test_custom_container_runs_deployc_serve_on_the_downloaded_model(tmp_path: Path) -> None:
    _, ctx, files = emit_case("serverless-slos", tmp_path)
    isvc = load_yaml(files["kserve/inferenceservice.yaml"])
    pred = isvc["spec"]["predictor"]
    (container,) = pred["containers"]
    assert container["args"] == ["serve", "/mnt/models", "--host", "0.0.0.0", "--port", "8080"]
    assert {"name": "STORAGE_URI", "value": "s3://ml-models/digits/1.2.3"} in container["env"]
    assert container["name"] == "kserve-container" and container["ports"][0]["containerPort"] == 8080
    assert container["resources"] == {"requests": {"cpu": "250m", "memory": "256Mi"},
                                      "limits": {"cpu": "2", "memory": "1Gi"}}
    assert (pred["minReplicas"], pred["maxReplicas"], pred["scaleMetric"], pred["scaleTarget"]) == (
        2, 8, "concurrency", 16)
    assert pred["canaryTrafficPercent"] == 10 and pred["timeout"] == 30 and pred["serviceAccountName"] == "model-reader"
    assert pred["annotations"]["prometheus.io/scrape"] == "true" and pred["annotations"]["prometheus.io/port"] == "8080"
    assert pred["annotations"]["deployc.dev/model-sha256"] == ctx.onnx_sha256
    assert isvc["metadata"]["namespace"] == "ml-prod"
    # the folder storage_uri must hold: a bundle `deployc serve` reads, bound to 0.0.0.0:8080 in the pod
    serving = json.loads(files["kserve/model/serving.json"])
    assert serving["server"]["host"] == "0.0.0.0" and serving["server"]["port"] == 8080
    assert serving["batching"]["max_batch_size"] == 16  # the local target's settings carry over
    assert serving["model"]["sha256"] == ctx.onnx_sha256 and serving["model"]["path"] == "model.onnx"
    assert files["kserve/model/labels.txt"].decode().split() == list(LABELS)
    pm = load_yaml(files["kserve/podmonitor.yaml"])
    assert pm["spec"]["selector"]["matchLabels"] == {"serving.kserve.io/inferenceservice": "digits"}
    assert pm["spec"]["podMetricsEndpoints"] == [{"port": "user-port", "path": "/metrics", "interval": "15s"}]
    assert pm["metadata"]["labels"]["release"] == "kube-prometheus-stack"


def test_prometheus_rule_wraps_exactly_the_monitoring_rules(tmp_path: Path) -> None:
    spec, _, files = emit_case("serverless-slos", tmp_path)
    rule = load_yaml(files["kserve/prometheusrule.yaml"])
    rules = compile_monitoring(spec, spec_file="deploy.yaml", reference_distribution=None, class_names=None)
    assert rule["spec"]["groups"] == load_yaml(rules[RULES_PATH])["groups"]  # the same groups as the rules file
    assert rule["metadata"]["name"] == "digits-slos"
    names = {r.get("alert") or r.get("record") for g in rule["spec"]["groups"] for r in g["rules"]}
    assert {"DeploycSLOFastBurn", "DeploycSLOSlowBurn", "deployc:sli_error:ratio_rate5m"} <= names
    kust = load_yaml(files["kserve/kustomization.yaml"])
    assert kust["resources"] == ["inferenceservice.yaml", "podmonitor.yaml", "prometheusrule.yaml"]
    assert kust["namespace"] == "ml-prod"


def test_onnx_runtime_uses_kserves_model_format(tmp_path: Path) -> None:
    _, _, files = emit_case("onnx-runtime", tmp_path)
    assert sorted(files) == ["kserve/inferenceservice.yaml", "kserve/kustomization.yaml", "kserve/model/model.onnx",
                             "kserve/request.json"]
    pred = load_yaml(files["kserve/inferenceservice.yaml"])["spec"]["predictor"]
    assert pred["model"]["modelFormat"] == {"name": "onnx"} and pred["model"]["protocolVersion"] == "v2"
    assert pred["model"]["storageUri"] == "gs://ml-models/digits-onnx/7" and "containers" not in pred


def test_raw_mode_names_the_port_it_declares_and_reads_the_token_from_a_secret(tmp_path: Path) -> None:
    _, _, files = emit_case("raw-cpu", tmp_path)
    isvc = load_yaml(files["kserve/inferenceservice.yaml"])
    assert isvc["metadata"]["annotations"]["serving.kserve.io/deploymentMode"] == "RawDeployment"
    assert isvc["metadata"]["annotations"]["deployc.dev/version"] == "2.0.0+build.5"
    assert "app.kubernetes.io/version" not in isvc["metadata"]["labels"]  # '+' is not allowed in label values
    env = isvc["spec"]["predictor"]["containers"][0]["env"]
    assert {"name": "DIGITS_TOKEN", "valueFrom": {"secretKeyRef": {"name": "digits-raw-auth", "key": "token"}}} in env
    pm = load_yaml(files["kserve/podmonitor.yaml"])
    assert pm["spec"]["podMetricsEndpoints"][0]["port"] == "http1"
    assert "kserve/prometheusrule.yaml" not in files  # no SLOs, no rules


def good_manifests(tmp_path: Path) -> dict[str, dict[str, Any]]:
    _, _, files = emit_case("serverless-slos", tmp_path)
    return {k.split("/")[-1]: load_yaml(v) for k, v in files.items() if k.endswith(".yaml")}


@pytest.mark.parametrize("fname, mutate, where, needle", [
    ("inferenceservice.yaml", lambda d: d["spec"]["predictor"].update(minReplicas=-1),
     "spec.predictor.minReplicas", "less than the minimum of 0"),
    ("inferenceservice.yaml", lambda d: d["spec"]["predictor"].update(scaleMetric="gpu"),
     "spec.predictor.scaleMetric", "'gpu' is not one of"),
    ("inferenceservice.yaml", lambda d: d["spec"]["predictor"]["containers"][0].update(imagePullPolicy=3),
     "spec.predictor.containers.0.imagePullPolicy", "is not of type"),
    ("inferenceservice.yaml", lambda d: d["spec"]["predictor"]["containers"][0].update(imageName="x"),
     "spec.predictor.containers.0", "'imageName' was unexpected"),
    ("inferenceservice.yaml", lambda d: d["metadata"].update(name="Digits_1"), "metadata.name", "does not match"),
    ("podmonitor.yaml", lambda d: d["spec"]["podMetricsEndpoints"][0].update(interval="30 seconds"),
     "spec.podMetricsEndpoints.0.interval", "does not match"),
    ("podmonitor.yaml", lambda d: d["spec"].pop("selector"), "(top level)", "'selector' is a required property"),
    ("prometheusrule.yaml", lambda d: d["spec"]["groups"][0]["rules"][0].update(alert="X"),
     "spec.groups.0.rules.0", "is not valid under any of the given schemas"),
    ("prometheusrule.yaml", lambda d: d["spec"]["groups"][0]["rules"][0].update(expr=""),
     "spec.groups.0.rules.0.expr", ""),
    ("kustomization.yaml", lambda d: d["resources"].append("../../etc/passwd"), "resources.3", "does not match"),
])
def test_a_broken_manifest_is_refused_with_its_path(tmp_path: Path, fname: str, mutate: Any, where: str,
                                                   needle: str) -> None:
    doc = copy.deepcopy(good_manifests(tmp_path)[fname])
    validate_manifest(doc, "1.30", f"kserve/{fname}")  # the real one passes
    mutate(doc)
    with pytest.raises(ManifestError) as err:
        validate_manifest(doc, "1.30", f"kserve/{fname}")
    msg = str(err.value)
    assert msg.startswith(f"kserve/{fname}: ") and needle in msg
    if where != "(top level)":
        assert f"at {where}" in msg or f"at {where.rsplit('.', 1)[0]}" in msg


def test_unknown_kubernetes_version_is_an_input_error(tmp_path: Path) -> None:
    from deployc.errors import InputError

    doc = good_manifests(tmp_path)["inferenceservice.yaml"]
    with pytest.raises(InputError, match=r"no Kubernetes 1\.99 schemas .*1\.30"):
        validate_manifest(doc, "1.99", "kserve/inferenceservice.yaml")


BASE = {"apiVersion": "deployc/v1", "name": "m", "model": {"path": "model.keras"}}


@pytest.mark.parametrize("kserve, message", [
    ({"storage_uri": "s3://b/m"}, "runtime deployc needs image"),
    ({"storage_uri": "s3://b/m", "runtime": "onnx", "image": "ghcr.io/a/b:1"}, "image only applies to runtime deployc"),
    ({"storage_uri": "ftp://b/m", "runtime": "onnx"}, "String should match pattern"),
    ({"storage_uri": "s3://b/m", "runtime": "onnx", "deployment_mode": "raw"}, "scale_metric concurrency needs "
     "deployment_mode serverless"),
    ({"storage_uri": "s3://b/m", "runtime": "onnx", "deployment_mode": "raw", "scale_metric": "cpu",
      "canary_traffic_percent": 5}, "canary_traffic_percent needs deployment_mode serverless"),
    ({"storage_uri": "s3://b/m", "runtime": "onnx", "min_replicas": 5, "max_replicas": 2}, "max_replicas must be"),
    ({"storage_uri": "s3://b/m", "runtime": "onnx",
      "resources": {"requests": {"cpu": "2"}, "limits": {"cpu": "1500m"}}},
     "requests.cpu 2 is more than limits.cpu 1500m"),
    ({"storage_uri": "s3://b/m", "runtime": "onnx", "resources": {"requests": {"memory": "1 GB"}}},
     "'1 GB' is not a Kubernetes quantity"),
    ({"storage_uri": "s3://b/m", "runtime": "onnx", "monitoring": {"labels": {"team": "ml ops"}}},
     "is not a Kubernetes label value"),
    ({"storage_uri": "s3://b/m", "runtime": "onnx", "replicas": 3}, "Extra inputs are not permitted"),
])
def test_schema_refuses_inconsistent_configs(kserve: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message.replace("(", r"\(").replace(".", r"\.")):
        spec_of({**BASE, "targets": {"kserve": kserve}})


def test_latency_slo_counts_kserve_with_deployc_runtime_as_serving_target() -> None:
    slo = [{"kind": "latency", "objective": 99, "threshold_ms": 50, "window": "30d"}]
    ok = {"storage_uri": "s3://b/m", "image": "ghcr.io/a/b:1"}
    assert spec_of({**BASE, "targets": {"kserve": ok}, "slos": slo}).targets.kserve is not None
    with pytest.raises(ValidationError, match="needs a target that runs `deployc serve`"):
        spec_of({**BASE, "targets": {"kserve": {"storage_uri": "s3://b/m", "runtime": "onnx"}}, "slos": slo})


def test_quantities_accept_plain_numbers() -> None:
    s = spec_of({**BASE, "targets": {"kserve": {"storage_uri": "s3://b/m", "runtime": "onnx",
                                                "resources": {"requests": {"cpu": 1}, "limits": {"cpu": 2.5}}}}})
    assert (s.targets.kserve.resources.requests.cpu, s.targets.kserve.resources.limits.cpu) == ("1", "2.5")


def _emit_isvc(kserve: dict[str, Any], tmp: Path, **spec: Any) -> dict[str, Any]:
    doc = {**BASE, **spec, "targets": {"kserve": {"storage_uri": "s3://b/m", **kserve}}}
    files = get_target("kserve").emit(context(spec_of(doc), tmp))
    return load_yaml(files["kserve/inferenceservice.yaml"])


def test_predictor_runs_unprivileged_by_default(tmp_path: Path) -> None:
    pred = _emit_isvc({"image": "ghcr.io/a/b:1"}, tmp_path)["spec"]["predictor"]
    (container,) = pred["containers"]
    assert container["securityContext"] == {
        "allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}, "readOnlyRootFilesystem": True,
        "runAsGroup": 10001, "runAsNonRoot": True, "runAsUser": 10001, "seccompProfile": {"type": "RuntimeDefault"}}
    assert pred["securityContext"] == {"seccompProfile": {"type": "RuntimeDefault"}}  # what Knative admits
    assert pred["automountServiceAccountToken"] is False
    assert pred["volumes"] == [{"name": "tmp", "emptyDir": {}}]
    assert container["volumeMounts"] == [{"name": "tmp", "mountPath": "/tmp"}]
    assert container["livenessProbe"]["httpGet"] == {"path": "/v2/health/live", "port": 8080}
    assert container["readinessProbe"]["httpGet"] == {"path": "/v2/health/ready", "port": 8080}
    assert container["imagePullPolicy"] == "Always"  # a tag can move


def test_security_opt_outs_are_explicit_fields(tmp_path: Path) -> None:
    digest = "ghcr.io/a/b:1@sha256:" + "a" * 64
    security = {"run_as_user": 65532, "read_only_root_filesystem": False, "automount_service_account_token": True}
    pred = _emit_isvc({"image": digest, "security": security}, tmp_path)["spec"]["predictor"]
    (container,) = pred["containers"]
    sc = container["securityContext"]
    assert (sc["runAsUser"], sc["runAsGroup"], sc["readOnlyRootFilesystem"]) == (65532, 65532, False)
    assert sc["allowPrivilegeEscalation"] is False and sc["capabilities"] == {"drop": ["ALL"]}  # always
    assert "automountServiceAccountToken" not in pred  # Knative admits only false: true leaves the default
    assert "volumes" not in pred and "volumeMounts" not in container
    assert container["image"] == digest and "imagePullPolicy" not in container  # a digest cannot move


def test_onnx_runtime_gets_the_image_independent_settings(tmp_path: Path) -> None:
    pred = _emit_isvc({"runtime": "onnx"}, tmp_path)["spec"]["predictor"]
    assert pred["model"]["securityContext"] == {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]},
                                                "seccompProfile": {"type": "RuntimeDefault"}}
    assert pred["automountServiceAccountToken"] is False


@pytest.mark.parametrize(("mode", "namespace", "longest_ok"), [
    ("serverless", None, 39), ("raw", None, 48), ("serverless", "ml", 39), ("raw", "a" * 30, 22)])
def test_name_limits_follow_the_names_kserve_derives(mode: str, namespace: str | None, longest_ok: int) -> None:
    extra: dict[str, Any] = {"deployment_mode": mode, "runtime": "onnx"}
    if mode == "raw":
        extra.update(scale_metric="cpu", scale_target=50)
    if namespace:
        extra["namespace"] = namespace
    cfg = spec_of({**BASE, "targets": {"kserve": {"storage_uri": "s3://b/m", **extra}}}).targets.kserve
    assert cfg is not None
    assert cfg.spec_name_problems("a" * longest_ok) == []
    ((loc, message),) = cfg.spec_name_problems("a" * (longest_ok + 1))
    assert loc == ("name",) and f"use a name of at most {longest_ok} characters" in message
    assert "starts with a letter" in cfg.spec_name_problems("7seg")[0][1]


def test_monitoring_labels_are_refused_each_at_its_key() -> None:
    from deployc.schema.spec import CrossFieldErrors

    labels = {"release": "ok", "bad key": "x", "team": "-x", "a" * 254 + "/n": "v", "example.com/" + "n" * 64: "v"}
    with pytest.raises(ValidationError) as info:
        spec_of({**BASE, "targets": {"kserve": {"storage_uri": "s3://b/m", "runtime": "onnx",
                                                "monitoring": {"labels": labels}}}})
    (err,) = info.value.errors()
    cross = err["ctx"]["error"]
    assert isinstance(cross, CrossFieldErrors)
    assert [loc for loc, _ in cross.problems] == [(k,) for k in list(labels)[1:]]
