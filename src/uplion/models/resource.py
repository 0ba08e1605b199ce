"""The ``AIModel`` custom resource (``uplion.ai/v1alpha1``): its spec and status as pydantic models.

The spec embeds the fields of ``ModelSpec`` (what the worker serves) and adds what a cluster needs:
the image, resources and GPUs, scheduling, the broker the model's topic lives on, a canary version,
and, for upstream engines, the Secret keys that hold each account's API key. Kubernetes names are
camelCase (``targetBacklog``); the Python attributes stay snake_case. The CRD's OpenAPI schema is
generated from these models (``uplion.models.crd``), so they are the one source of truth.

``worker_spec`` turns a resource spec into the ``ModelSpec`` a worker loads from its models file;
account keys reach the worker as environment variables named by ``api_key_env``.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, WithJsonSchema, model_validator
from pydantic.alias_generators import to_camel

from uplion.models.spec import (
    DEFAULT_MAX_BATCH_DELAY_MS,
    DEFAULT_MAX_BATCH_SIZE,
    MAX_BATCH_DELAY_HELP,
    MAX_BATCH_SIZE_HELP,
    NAME_PATTERN,
    EngineSpec,
    FetchSpec,
    ModelSpec,
    ReplicaSpec,
    S3Options,
    Serves,
)

GROUP = "uplion.ai"
VERSION = "v1alpha1"
KIND = "AIModel"
PLURAL = "aimodels"

_CAMEL = ConfigDict(
    extra="forbid",
    alias_generator=to_camel,
    validate_by_name=True,
    validate_by_alias=True,
    serialize_by_alias=True,
)

Quantity = Annotated[
    int | str,
    WithJsonSchema({
        "anyOf": [{"type": "integer"}, {"type": "string"}],
        "x-kubernetes-int-or-string": True,
    }),
]
"""A Kubernetes resource quantity: ``2``, ``"500m"``, ``"4Gi"``."""


class SecretKeyRef(BaseModel):
    model_config = _CAMEL

    name: str = Field(min_length=1, description="Name of the Secret, in the AIModel's namespace.")
    key: str = Field(min_length=1, description="Key in the Secret holding the value.")


class AIModelEngine(EngineSpec):
    model_config = _CAMEL

    secret_refs: dict[str, SecretKeyRef] = Field(
        default_factory=dict,
        description="Upstream engines: account name -> Secret key holding its API key. Accounts "
        "not listed in options.accounts are added with the engine's defaults.",
    )


class AIModelS3(S3Options):
    model_config = _CAMEL


class AIModelFetch(FetchSpec):
    model_config = _CAMEL

    sha256: Annotated[
        str | dict[str, str] | None,
        WithJsonSchema({
            "x-kubernetes-preserve-unknown-fields": True,
            "description": "SHA-256 of the file or archive the source names (a string), or of "
            "each file by its path relative to the source (a map).",
        }),
    ] = None
    s3: AIModelS3 = Field(default_factory=AIModelS3)


class ModelCache(BaseModel):
    """Where a worker pod keeps fetched artifacts: emptyDir (each pod fetches its own copy),
    hostPath (the replicas on a node share one copy; a lock lets one of them fetch it) or
    persistentVolumeClaim (every replica mounting the claim shares one copy)."""

    model_config = _CAMEL

    volume: Literal["emptyDir", "hostPath", "persistentVolumeClaim"] = "emptyDir"
    host_path: str = Field(default="/var/cache/uplion", description="hostPath only.")
    claim_name: str | None = Field(default=None, description="persistentVolumeClaim only.")
    size_limit: Quantity | None = Field(default=None, description="emptyDir only, e.g. 20Gi.")

    @model_validator(mode="after")
    def _claim(self) -> ModelCache:
        if self.volume == "persistentVolumeClaim" and not self.claim_name:
            raise ValueError("modelCache.claimName is required for a persistentVolumeClaim")
        return self


class AIModelReplicas(ReplicaSpec):
    model_config = _CAMEL

    @model_validator(mode="after")
    def _bounds(self) -> AIModelReplicas:
        if self.min > self.max:
            raise ValueError(f"replicas.min ({self.min}) exceeds replicas.max ({self.max})")
        return self


class Resources(BaseModel):
    model_config = _CAMEL

    requests: dict[str, Quantity] = Field(default_factory=dict, description="e.g. cpu, memory.")
    limits: dict[str, Quantity] = Field(default_factory=dict, description="e.g. cpu, memory.")
    gpus: int = Field(default=0, ge=0, le=64, description="NVIDIA GPUs per worker.")


class Toleration(BaseModel):
    model_config = _CAMEL

    key: str | None = None
    operator: Literal["Exists", "Equal"] = "Equal"
    value: str | None = None
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = None
    toleration_seconds: int | None = Field(default=None, ge=0)


_HOST_PORT = re.compile(r"^[A-Za-z0-9.-]+:[0-9]{1,5}$|^\[[0-9A-Fa-f:.]+\]:[0-9]{1,5}$")


class Broker(BaseModel):
    # Where the model's topic lives. The workers' URL (credentials and all) is read from a Secret
    # (urlSecretRef); KEDA's Redis scaler needs the address, database and TLS, which are not
    # secret, and takes its credentials from authenticationRef.
    model_config = _CAMEL

    kind: Literal["redis", "pulsar"] = Field(description="Redis Streams or Apache Pulsar.")
    url_secret_ref: SecretKeyRef | None = Field(
        default=None, description="The Secret key holding the workers' broker URL "
        "(redis://user:password@host:6379/0, or pulsar://host:6650?admin=...&tenant=..."
        "&namespace=...); it reaches the workers as a secret reference.",
    )
    url: str | None = Field(
        default=None, min_length=1, description="Discouraged (anyone who can read AIModels reads "
        "it): the workers' broker URL as a plain value, kept for AIModels written before "
        "urlSecretRef. Give urlSecretRef instead.",
    )
    address: str | None = Field(
        default=None, description="Redis with urlSecretRef: host:port of the Redis, where KEDA "
        "reads the topic's backlog.",
    )
    database: int = Field(
        default=0, ge=0, description="Redis with urlSecretRef: the database index of the URL.",
    )
    tls: bool = Field(
        default=False, description="Redis with urlSecretRef: the URL is rediss:// (TLS).",
    )
    admin_url: str | None = Field(
        default=None, description="Pulsar only: the admin REST API, e.g. http://host:8080."
    )
    tenant: str = Field(default="public", description="Pulsar only: the topics' tenant.")
    namespace: str = Field(default="default", description="Pulsar only: the topics' namespace.")
    authentication_ref: str | None = Field(
        default=None, description="Name of a KEDA TriggerAuthentication for the broker, if any "
        "(Redis: the username and password of an account that may read the topics).",
    )

    @model_validator(mode="after")
    def _consistent(self) -> Broker:
        if self.kind == "pulsar" and not self.admin_url:
            raise ValueError("broker.adminUrl is required for pulsar")
        if self.url is not None and self.url_secret_ref is not None:
            raise ValueError("give broker.urlSecretRef or broker.url (discouraged), not both")
        if self.url is None and self.url_secret_ref is None:
            raise ValueError("broker.urlSecretRef is required: the Secret key holding the "
                             "workers' broker URL")
        if self.url is not None and self.address is not None:
            raise ValueError("broker.address is used only with urlSecretRef (a plain url names "
                             "its own address)")
        if self.kind == "redis" and self.url_secret_ref is not None:
            if self.address is None:
                raise ValueError("broker.address (host:port) is required with a Redis "
                                 "urlSecretRef: KEDA reads the topic's backlog there")
            if not _HOST_PORT.match(self.address):
                raise ValueError(f"broker.address must be host:port, not {self.address!r}")
        return self


class Canary(BaseModel):
    model_config = _CAMEL

    version: str = Field(pattern=NAME_PATTERN, description="The version under test.")
    weight: int = Field(ge=0, le=100, description="Percent of requests sent to the canary.")
    image: str | None = Field(default=None, description="Image of the canary (default: image).")


class AIModelSpec(BaseModel):
    model_config = _CAMEL

    name: str = Field(pattern=NAME_PATTERN, description="Model name clients ask for.")
    version: str = Field(default="1", pattern=NAME_PATTERN)
    source: str | None = Field(
        default=None,
        description="Where the model's artifact lives: s3://bucket/prefix, hf://org/repo[@rev]"
        "[/file], pvc://claim/path, https://host/file-or-archive; fetched by the worker pod's "
        "init container (uplion fetch-model).",
    )
    fetch: AIModelFetch = Field(default_factory=AIModelFetch)
    source_credentials: str | None = Field(
        default=None,
        description="A Secret whose keys become the environment of the fetch and the worker "
        "(AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, HF_TOKEN, ...).",
    )
    model_cache: ModelCache = Field(default_factory=ModelCache)
    engine: AIModelEngine = Field(default_factory=AIModelEngine)
    serves: Serves | None = Field(
        default=None, description="What the model answers; default: what the artifact says."
    )
    concurrency: int = Field(default=4, ge=1, le=1024, description="Task slots per worker.")
    max_batch_size: int = Field(
        default=DEFAULT_MAX_BATCH_SIZE, ge=1, le=1024, description=MAX_BATCH_SIZE_HELP
    )
    max_batch_delay_ms: float = Field(
        default=DEFAULT_MAX_BATCH_DELAY_MS, ge=0, le=10_000, description=MAX_BATCH_DELAY_HELP
    )
    replicas: AIModelReplicas = Field(default_factory=AIModelReplicas)
    request_timeout_seconds: float = Field(
        default=120.0, gt=0, description="Deadline of a request, from its arrival at the gateway."
    )
    owned_by: str = "uplion"
    image: str | None = Field(
        default=None, min_length=1, description="Worker image; left out: the operator's, the "
        "CUDA variant (UPLION_GPU_WORKER_IMAGE) when resources.gpus asks for GPUs, else the CPU "
        "one (UPLION_IMAGE).",
    )
    resources: Resources = Field(default_factory=Resources)
    node_selector: dict[str, str] = Field(default_factory=dict)
    tolerations: list[Toleration] = Field(default_factory=list)
    broker: Broker
    canary: Canary | None = None

    @model_validator(mode="after")
    def _canary_differs(self) -> AIModelSpec:
        if self.canary is not None and self.canary.version == self.version:
            raise ValueError(f"canary.version must differ from version ({self.version})")
        worker_spec(self)  # the worker's own checks (source scheme, auto needs a source)
        return self


Phase = Literal["Pending", "Running", "Degraded", "Failed"]


class Condition(BaseModel):
    model_config = _CAMEL

    type: str
    status: Literal["True", "False", "Unknown"]
    reason: str | None = None
    message: str | None = None
    last_transition_time: str | None = Field(default=None, description="RFC 3339 time.")
    observed_generation: int | None = None


class AIModelStatus(BaseModel):
    model_config = _CAMEL

    phase: Phase = "Pending"
    reason: str | None = None
    message: str | None = None
    conditions: list[Condition] = Field(default_factory=list)
    replicas: int = Field(default=0, ge=0, description="Worker replicas now running.")
    observed_generation: int | None = None
    endpoints: dict[str, str] = Field(
        default_factory=dict, description="URLs serving the model, by API (openai, kserveV2)."
    )


def api_key_env(account: str) -> str:
    """The environment variable that carries an account's API key into the worker."""
    return "UPLION_API_KEY_" + re.sub(r"[^A-Za-z0-9]", "_", account).upper()


def worker_spec(spec: AIModelSpec, version: str | None = None) -> ModelSpec:
    """The ``ModelSpec`` a worker serves (``version`` overrides, e.g. for the canary).

    Accounts with a Secret reference read their key from ``api_key_env(name)``; ``ValueError``
    when such an account already names a key, or two accounts map to the same variable."""
    options: dict[str, Any] = dict(spec.engine.options)
    refs = spec.engine.secret_refs
    if refs:
        listed_accounts = options.get("accounts", [])
        if not isinstance(listed_accounts, list) or not all(
            isinstance(a, dict) for a in listed_accounts
        ):
            raise ValueError("engine.options.accounts must be a list of mappings")
        accounts = [dict(a) for a in listed_accounts]
        listed = {a.get("name") for a in accounts}
        accounts += [{"name": name} for name in refs if name not in listed]
        envs = [api_key_env(name) for name in refs]
        if len(set(envs)) != len(envs):
            raise ValueError(f"account names collide as variables: {sorted(refs)}")
        for account in accounts:
            if account.get("name") in refs:
                if "api_key_env" in account or "api_key_file" in account:
                    raise ValueError(f"account {account['name']!r} has a key and a secretRef")
                account["api_key_env"] = api_key_env(account["name"])
        options["accounts"] = accounts
    return ModelSpec(
        name=spec.name,
        version=version or spec.version,
        source=spec.source,
        fetch=FetchSpec.model_validate(spec.fetch.model_dump(by_alias=False)),
        engine=EngineSpec(kind=spec.engine.kind, device=spec.engine.device,
                          trust_pickle=spec.engine.trust_pickle, options=options),
        serves=spec.serves,
        concurrency=spec.concurrency,
        max_batch_size=spec.max_batch_size,
        max_batch_delay_ms=spec.max_batch_delay_ms,
        replicas=ReplicaSpec.model_validate(spec.replicas.model_dump(by_alias=False)),
        request_timeout_s=spec.request_timeout_seconds,
        owned_by=spec.owned_by,
    )
