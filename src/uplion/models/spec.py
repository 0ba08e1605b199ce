"""The model spec: one pydantic model shared by the models file, the REST API and the CRD.

A model is served under ``name`` (and ``version``); ``source`` says where its artifact lives
(``s3://``, ``hf://``, ``pvc://``, ``https://``, ``file://`` or a path, ``package://`` for files
shipped inside an installed Python package) and ``fetch`` how to get it; its engine says what runs
it (``auto``: the artifact says); ``concurrency`` is how many tasks one worker replica holds at
once (with ``max_batch_size`` and ``max_batch_delay_ms``, how requests to a model whose engine
batches share engine calls); ``replicas`` bounds how many workers serve it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

NAME_PATTERN = r"^[a-zA-Z0-9][a-zA-Z0-9._-]{0,62}$"
DEVICE_PATTERN = r"^(auto|cpu|cuda(:[0-9]{1,2})?)$"
SHA256_PATTERN = r"^[0-9a-fA-F]{64}$"

Serves = Literal["text-generation", "embedding", "classification", "tensor"]
"""What a model answers: text (chat, completions), embeddings, labels for texts, or tensors."""

SOURCE_SCHEMES = ("s3", "hf", "pvc", "https", "http", "file", "package")

DEFAULT_MAX_BATCH_SIZE = 32
DEFAULT_MAX_BATCH_DELAY_MS = 2.0
MAX_BATCH_SIZE_HELP = (
    "Requests one engine call may carry (embedding, classification and tensor models whose "
    "engine batches); each slot then holds a batch. 1 turns batching off."
)
MAX_BATCH_DELAY_HELP = (
    "How long a batch that is not full may wait for more requests, in milliseconds, counted "
    "from the arrival of its first request; 0: run what has arrived."
)


class EngineSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    kind: str = Field(
        default="auto",
        description="Engine kind: auto (the artifact says), transformers, onnx, sklearn, "
        "xgboost, lightgbm, openai-server, vllm, openai-upstream, sentence-transformers, "
        "onnx-embedding, test-echo.",
    )
    device: str = Field(
        default="auto", pattern=DEVICE_PATTERN,
        description="auto (CUDA when a GPU is visible), cpu, cuda or cuda:N.",
    )
    trust_pickle: bool = Field(
        default=False,
        description="Allow scikit-learn pickle/joblib artifacts, which run code when loaded.",
    )
    options: dict[str, Any] = Field(default_factory=dict, description="Engine-specific options.")


class S3Options(BaseModel):
    model_config = ConfigDict(extra="forbid")

    endpoint_url: str | None = Field(
        default=None, description="S3 endpoint (MinIO, other clouds); AWS_ENDPOINT_URL otherwise."
    )
    region: str | None = Field(default=None, description="Region; AWS_REGION otherwise.")
    path_style: bool = Field(default=False, description="Path-style addressing (MinIO).")
    ca_bundle: str | None = Field(
        default=None, description="CA bundle file to trust; AWS_CA_BUNDLE otherwise."
    )


class FetchSpec(BaseModel):
    """How ``source`` is fetched: which files, which digests, and S3 endpoint settings.
    Credentials never live here: they come from the environment (``AWS_*``, ``HF_TOKEN``), a
    Secret in the cluster, or the pod's role."""

    model_config = ConfigDict(extra="forbid")

    sha256: str | dict[str, str] | None = Field(
        default=None,
        description="SHA-256 of the file or archive the source names, or of each file by its "
        "path relative to the source; checked before the model loads.",
    )
    include: list[str] = Field(
        default_factory=list, description="Glob patterns of the files to fetch (default: all)."
    )
    exclude: list[str] = Field(
        default_factory=list, description="Glob patterns of files not to fetch."
    )
    s3: S3Options = Field(default_factory=S3Options)

    @model_validator(mode="after")
    def _digests(self) -> FetchSpec:
        import re

        digests = [self.sha256] if isinstance(self.sha256, str) else list(
            (self.sha256 or {}).values()
        )
        for digest in digests:
            if not re.fullmatch(SHA256_PATTERN, digest):
                raise ValueError(f"sha256 must be 64 hexadecimal digits, not {digest!r}")
        return self


class ReplicaSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    min: int = Field(default=1, ge=0)
    max: int = Field(default=1, ge=1)
    target_backlog: int = Field(
        default=8, ge=1, description="Queued tasks per replica before another one is added."
    )
    idle_seconds: int = Field(default=300, ge=0, description="Idle time before scaling to min.")


class ModelSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=NAME_PATTERN)
    version: str = Field(default="1", pattern=NAME_PATTERN)
    source: str | None = Field(
        default=None,
        description="Where the model's artifact lives: s3://bucket/prefix, hf://org/repo[@rev]"
        "[/file], pvc://claim/path, https://host/file-or-archive, file:///path or a path.",
    )
    fetch: FetchSpec = Field(default_factory=FetchSpec)
    engine: EngineSpec = Field(default_factory=EngineSpec)
    serves: Serves | None = Field(
        default=None,
        description="What the model answers; by default what its engine reports from the "
        "artifact (text-generation, embedding, classification or tensor).",
    )
    concurrency: int = Field(default=4, ge=1, le=1024, description="Task slots per worker.")
    max_batch_size: int = Field(
        default=DEFAULT_MAX_BATCH_SIZE, ge=1, le=1024, description=MAX_BATCH_SIZE_HELP
    )
    max_batch_delay_ms: float = Field(
        default=DEFAULT_MAX_BATCH_DELAY_MS, ge=0, le=10_000, description=MAX_BATCH_DELAY_HELP
    )
    replicas: ReplicaSpec = Field(default_factory=ReplicaSpec)
    request_timeout_s: float = Field(
        default=120.0, gt=0, description="Deadline of a request, from its arrival at the gateway."
    )
    owned_by: str = Field(default="uplion")

    @model_validator(mode="after")
    def _source(self) -> ModelSpec:
        if self.source is not None:
            scheme, sep, rest = self.source.partition("://")
            if sep and scheme not in SOURCE_SCHEMES:
                raise ValueError(
                    f"source scheme {scheme!r} is not supported; use one of "
                    f"{', '.join(s + '://' for s in SOURCE_SCHEMES)} or a path"
                )
            if not (rest if sep else self.source).strip("/"):
                raise ValueError(f"source {self.source!r} names nothing")
        elif self.engine.kind == "auto":
            raise ValueError("engine.kind auto needs a source to look at")
        return self


class ModelsFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    models: list[ModelSpec]


def load_models_file(path: Path) -> list[ModelSpec]:
    """The models listed in a YAML file; ``ValueError`` with the file name and field on error."""
    try:
        raw = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ValueError(f"cannot read models file {path}: {exc}") from exc
    try:
        return ModelsFile.model_validate(raw).models
    except ValidationError as exc:
        raise ValueError(f"invalid models file {path}: {exc}") from exc
