"""The model spec: one pydantic model shared by the models file, the REST API and (later) the CRD.

A model is served under ``name`` (and ``version``); its engine says what runs it; ``concurrency``
is how many tasks one worker replica holds at once; ``replicas`` bounds how many workers serve it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

NAME_PATTERN = r"^[a-zA-Z0-9][a-zA-Z0-9._-]{0,62}$"


class EngineSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    kind: str = Field(description="Engine kind, e.g. smollm2, sentence-transformers, test-echo.")
    options: dict[str, Any] = Field(default_factory=dict, description="Engine-specific options.")


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
    engine: EngineSpec
    serves: Literal["text-generation", "embedding"] = Field(
        default="text-generation", description="What the model answers: text or embeddings."
    )
    concurrency: int = Field(default=4, ge=1, le=1024, description="Task slots per worker.")
    replicas: ReplicaSpec = Field(default_factory=ReplicaSpec)
    request_timeout_s: float = Field(
        default=120.0, gt=0, description="Deadline of a request, from its arrival at the gateway."
    )
    owned_by: str = Field(default="uplion")


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
