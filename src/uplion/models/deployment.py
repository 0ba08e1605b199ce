"""The deployment API's records: what ``POST /v1/modelDeployment`` takes and what it answers.

The payload shape is the one model-serving platforms already use —
``{"type": "cpu"|"gpu", "model": {...}, "replicas": n, "request_res": {...}, "limit_res": {...}}``
— where ``model`` is uplion's model spec, plus uplion's own ``gpus``. Resources are what a
cluster schedules by; the local runtime records them and runs the model in-process.

That shape's own model fields are understood too: ``{"type": "single", "bucket": "s3://b/",
"prefix": "models", "version": "v1"}`` means ``source: s3://b/models``, and a model sent without
a name is served as ``md-<deployment id>``.

Keys are not the API's to name: ``check_key_sources`` refuses engine options that read a
worker's environment variables or files (``api_key_env``, ``api_key_file``), which an admin token
could otherwise send as a bearer token to a URL of its choosing. Deployed upstream models read
their keys from the keys folder (one machine) or from Secrets named in their AIModel (cluster);
models files written by the machine's operator may still name variables and files.

A backend also keeps each model's traffic split (``TrafficSplit``: the stable version, and a canary
with its share of the requests that pin no version), so that a change survives a restart.
"""

from __future__ import annotations

import abc
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, model_validator

from uplion.models.spec import ModelSpec, ReplicaSpec


def new_deployment_id() -> str:
    return uuid.uuid4().hex[:12]


def _model_fields(model: Any) -> tuple[Any, str | None]:
    """The model spec with the payload's ``type``/``bucket``/``prefix`` turned into uplion's
    fields, and the deployment id its generated name uses (when it had none)."""
    if not isinstance(model, dict):
        return model, None
    fields = dict(model)
    kind = fields.pop("type", "single")
    if kind != "single":
        raise ValueError(f"model.type {kind!r} is not supported: only single models are")
    bucket, prefix = fields.pop("bucket", None), fields.pop("prefix", None)
    if bucket is not None or prefix is not None:
        if "source" in fields:
            raise ValueError("give model.source, or model.bucket and model.prefix, not both")
        if not isinstance(bucket, str) or not bucket.removeprefix("s3://").strip("/"):
            raise ValueError("model.bucket must name a bucket (e.g. s3://models/)")
        if prefix is not None and not isinstance(prefix, str):
            raise ValueError("model.prefix must be a string")
        name = bucket.removeprefix("s3://").strip("/")
        path = (prefix or "").strip("/")
        fields["source"] = f"s3://{name}/{path}" if path else f"s3://{name}"
    if "name" in fields:
        return fields, None
    deployment_id = new_deployment_id()
    fields["name"] = f"md-{deployment_id}"
    return fields, deployment_id


KEY_SOURCE_OPTIONS = ("api_key_env", "api_key_file")
"""Engine options that name a variable or a file of the worker to read a key from."""

PROCESS_OPTIONS = ("command", "env")
"""``openai-server`` options that choose the program a worker runs and its environment."""


class KeySourceRefused(ValueError):
    """An engine option given through the deployment API that would let the caller reach into
    the worker: a variable or file to read a key from, a program to run or its environment.
    ``param`` is its path in the request (``model.engine.options.accounts[0].api_key_env``)."""

    def __init__(self, param: str, option: str) -> None:
        if option in KEY_SOURCE_OPTIONS:
            why = (
                "it would read any environment variable or file of the worker and send it to "
                "the model's base_url. Leave it out: on one machine an account's key is read "
                "from the keys folder ($UPLION_DATA_DIR/keys/<account>); in a cluster, deploy "
                "an AIModel whose engine.secretRefs names the Secret key of each account."
            )
        else:
            why = (
                "it would run any program in the worker, or set its environment. Name the "
                "server in a models file (uplion run --models) or an AIModel, or deploy the "
                "vllm preset, whose command is fixed."
            )
        super().__init__(f"The engine option '{option}' cannot be set through the deployment "
                         f"API: {why}")
        self.param = param


def check_key_sources(model: ModelSpec) -> None:
    """``KeySourceRefused`` for the first option the deployment API may not set: a key source
    (at the top of the options, as ``openai-server`` takes them, or in an account of
    ``accounts``), then a program or environment of ``openai-server`` or ``vllm``."""
    options = model.engine.options
    where = "model.engine.options"
    for option in KEY_SOURCE_OPTIONS:
        if option in options:
            raise KeySourceRefused(f"{where}.{option}", option)
    accounts = options.get("accounts")
    for index, account in enumerate(accounts if isinstance(accounts, list) else []):
        for option in KEY_SOURCE_OPTIONS:
            if isinstance(account, dict) and option in account:
                raise KeySourceRefused(f"{where}.accounts[{index}].{option}", option)
    if model.engine.kind in ("openai-server", "vllm"):
        for option in PROCESS_OPTIONS:
            if option in options:
                raise KeySourceRefused(f"{where}.{option}", option)


class ResourceAmounts(BaseModel):
    model_config = ConfigDict(extra="forbid")

    cpu: str | None = Field(default=None, examples=["500m", "2"])
    memory: str | None = Field(default=None, examples=["1Gi"])


class DeploymentRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: Literal["cpu", "gpu"] = "cpu"
    model: ModelSpec
    replicas: int | None = Field(
        default=None, ge=0, le=1000,
        description="Replicas to keep running (sets min; max grows to it if lower).",
    )
    request_res: ResourceAmounts = Field(default_factory=ResourceAmounts)
    limit_res: ResourceAmounts = Field(default_factory=ResourceAmounts)
    gpus: int = Field(default=0, ge=0, le=16, description="GPUs per replica (type gpu).")
    _assigned_id: str | None = PrivateAttr(default=None)

    @model_validator(mode="wrap")
    @classmethod
    def _payload_model(cls, data: Any, handler: Any) -> Any:
        assigned = None
        if isinstance(data, dict) and "model" in data:
            model, assigned = _model_fields(data["model"])
            data = {**data, "model": model}
        request = handler(data)
        if assigned is not None:
            request._assigned_id = assigned
        return request

    @property
    def assigned_id(self) -> str | None:
        """The deployment id this request's generated model name (``md-<id>``) uses."""
        return self._assigned_id

    def spec(self) -> ModelSpec:
        """The model spec to serve, with ``replicas`` applied."""
        if self.replicas is None:
            return self.model
        replicas = self.model.replicas
        updated = ReplicaSpec(
            min=self.replicas, max=max(replicas.max, self.replicas, 1),
            target_backlog=replicas.target_backlog, idle_seconds=replicas.idle_seconds,
        )
        return self.model.model_copy(update={"replicas": updated})


class DeploymentPatch(BaseModel):
    model_config = ConfigDict(extra="forbid")

    replicas: int | None = Field(default=None, ge=0, le=1000)
    max_replicas: int | None = Field(default=None, ge=1, le=1000)
    concurrency: int | None = Field(default=None, ge=1, le=1024)


class Deployment(BaseModel):
    """A deployed model: the request as accepted, and when."""

    id: str
    request: DeploymentRequest
    created_at: datetime
    updated_at: datetime

    @classmethod
    def new(cls, request: DeploymentRequest) -> Deployment:
        now = datetime.now(UTC)
        deployment_id = request.assigned_id or new_deployment_id()
        return cls(id=deployment_id, request=request, created_at=now, updated_at=now)

    def patched(self, patch: DeploymentPatch) -> Deployment:
        request = self.request
        model = request.model
        if patch.concurrency is not None:
            model = model.model_copy(update={"concurrency": patch.concurrency})
        if patch.max_replicas is not None:
            replicas = model.replicas.model_copy(update={"max": patch.max_replicas})
            model = model.model_copy(update={"replicas": replicas})
        changes: dict[str, object] = {"model": model}
        if patch.replicas is not None:
            changes["replicas"] = patch.replicas
        updated = request.model_copy(update=changes)
        DeploymentRequest.model_validate(updated.model_dump())  # the patch keeps it valid
        return self.model_copy(update={"request": updated, "updated_at": datetime.now(UTC)})


@dataclass(frozen=True, slots=True)
class TrafficSplit:
    """Which version answers a request that pins none: ``stable``, or ``canary`` for ``weight``
    percent of them. ``ValueError`` when the weight is outside 0..100, a weight has no canary, or
    the canary is the stable version."""

    stable: str
    canary: str | None = None
    weight: int = 0

    def __post_init__(self) -> None:
        if not 0 <= self.weight <= 100:
            raise ValueError(f"the canary weight must be within 0..100, not {self.weight}")
        if self.canary is None and self.weight:
            raise ValueError("a canary weight needs a canary version")
        if self.canary == self.stable:
            raise ValueError(f"the canary version must differ from the stable one ({self.stable})")

    def as_json(self) -> dict[str, Any]:
        canary = None if self.canary is None else {"version": self.canary, "weight": self.weight}
        return {"stable": self.stable, "canary": canary}

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> TrafficSplit:
        """The inverse of ``as_json``; ``ValueError`` (or ``KeyError``, ``TypeError``) if bad."""
        canary = raw.get("canary")
        if canary is None:
            return cls(str(raw["stable"]))
        return cls(str(raw["stable"]), str(canary["version"]), int(canary["weight"]))


class DeploymentNotFound(LookupError):
    pass


class DeploymentConflict(ValueError):
    pass


class DeploymentBackend(abc.ABC):
    """Where deployments live (the local runtime, or AIModel objects in a cluster).

    Raises ``DeploymentNotFound`` and ``DeploymentConflict``; an invalid model ``ValueError``."""

    @abc.abstractmethod
    async def create(self, request: DeploymentRequest) -> Deployment: ...

    @abc.abstractmethod
    async def list(self) -> list[Deployment]: ...

    @abc.abstractmethod
    async def get(self, deployment_id: str) -> Deployment: ...

    @abc.abstractmethod
    async def update(self, deployment_id: str, patch: DeploymentPatch) -> Deployment: ...

    @abc.abstractmethod
    async def delete(self, deployment_id: str) -> None: ...

    @abc.abstractmethod
    async def set_traffic(self, name: str, split: TrafficSplit) -> None:
        """Keep the split of the model ``name`` (whose versions the caller has checked are
        routable); ``DeploymentConflict`` when this backend cannot hold it."""
