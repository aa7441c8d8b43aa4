"""Parse TensorFlow Serving's text-protobuf configs back, so a rendered file is known to load in the server.

The messages are the subset of tensorflow_serving's protos these files use (same names, numbers and types as
model_server_config.proto, file_system_storage_path_source.proto and session_bundle_config.proto), built at run
time: the build needs only protobuf, not the tensorflow-serving-api package (which lacks BatchingParameters).
"""
from __future__ import annotations

from functools import lru_cache
from typing import Any

from deployc.errors import DeploycError

PACKAGE = "tensorflow.serving"


class ConfigError(DeploycError):
    """A rendered TensorFlow Serving config does not parse or says something else than intended (a bug)."""


@lru_cache(maxsize=1)
def _classes() -> dict[str, Any]:
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, wrappers_pb2

    F = descriptor_pb2.FieldDescriptorProto
    fdp = descriptor_pb2.FileDescriptorProto(name="deployc/tfserving_subset.proto", package=PACKAGE,
                                             syntax="proto3", dependency=["google/protobuf/wrappers.proto"])

    def message(name: str, *fields: tuple[str, int, int, str, bool], oneof: str | None = None) -> None:
        m = fdp.message_type.add(name=name)
        if oneof:
            m.oneof_decl.add(name=oneof)
        for fname, number, ftype, type_name, repeated in fields:
            f = m.field.add(name=fname, number=number, type=ftype,
                            label=F.LABEL_REPEATED if repeated else F.LABEL_OPTIONAL)
            if type_name:
                f.type_name = type_name
            if oneof:
                f.oneof_index = 0

    msg, i64, u32, s = F.TYPE_MESSAGE, F.TYPE_INT64, F.TYPE_UINT32, F.TYPE_STRING
    message("Latest", ("num_versions", 1, u32, "", False))
    message("Specific", ("versions", 1, i64, "", True))
    message("All")
    message("ServableVersionPolicy", ("latest", 100, msg, f".{PACKAGE}.Latest", False),
            ("all", 101, msg, f".{PACKAGE}.All", False), ("specific", 102, msg, f".{PACKAGE}.Specific", False),
            oneof="policy_choice")
    message("ModelConfig", ("name", 1, s, "", False), ("base_path", 2, s, "", False),
            ("model_platform", 4, s, "", False),
            ("model_version_policy", 7, msg, f".{PACKAGE}.ServableVersionPolicy", False))
    message("ModelConfigList", ("config", 1, msg, f".{PACKAGE}.ModelConfig", True))
    message("ModelServerConfig", ("model_config_list", 1, msg, f".{PACKAGE}.ModelConfigList", False))
    wrapper = ".google.protobuf.Int64Value"
    message("BatchingParameters", ("max_batch_size", 1, msg, wrapper, False),
            ("batch_timeout_micros", 2, msg, wrapper, False), ("max_enqueued_batches", 3, msg, wrapper, False),
            ("num_batch_threads", 4, msg, wrapper, False), ("allowed_batch_sizes", 6, i64, "", True))
    pool = descriptor_pool.DescriptorPool()
    wrappers = descriptor_pb2.FileDescriptorProto()
    wrappers_pb2.DESCRIPTOR.CopyToProto(wrappers)
    pool.Add(wrappers)
    pool.Add(fdp)
    return {n: message_factory.GetMessageClass(pool.FindMessageTypeByName(f"{PACKAGE}.{n}"))
            for n in ("ModelServerConfig", "BatchingParameters")}


def parse(text: str, message: str, where: str) -> Any:
    from google.protobuf import text_format

    msg = _classes()[message]()
    try:
        text_format.Parse(text, msg)
    except text_format.ParseError as exc:
        raise ConfigError(f"{where}: does not parse as {PACKAGE}.{message}: {exc}") from None
    return msg


def check_models_config(text: str, *, name: str, base_path: str, policy: str, version: int) -> None:
    cfg = parse(text, "ModelServerConfig", "tfserving/models.config")
    (model,) = cfg.model_config_list.config
    got = {"name": model.name, "base_path": model.base_path, "platform": model.model_platform,
           "policy": model.model_version_policy.WhichOneof("policy_choice"),
           "versions": list(model.model_version_policy.specific.versions)}
    want = {"name": name, "base_path": base_path, "platform": "tensorflow", "policy": policy,
            "versions": [version] if policy == "specific" else []}
    if got != want:
        raise ConfigError(f"tfserving/models.config: parsed back as {got}, expected {want}")


def check_batching_parameters(text: str, values: dict[str, Any]) -> None:
    params = parse(text, "BatchingParameters", "tfserving/batching_parameters.txt")
    got = {k: getattr(params, k).value for k in ("max_batch_size", "batch_timeout_micros", "max_enqueued_batches",
                                                 "num_batch_threads")}
    got["allowed_batch_sizes"] = list(params.allowed_batch_sizes)
    if got != values:
        raise ConfigError(f"tfserving/batching_parameters.txt: parsed back as {got}, expected {values}")
