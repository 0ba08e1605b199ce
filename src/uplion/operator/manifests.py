"""The objects an ``AIModel`` owns, built as plain dicts by pure functions.

For each track (``stable``, and ``canary`` when the spec has one): a Deployment of workers and a
KEDA ScaledObject on the track's topic. One ConfigMap holds the models file both tracks read.
Every object carries an owner reference to the AIModel, so deleting it removes them all.

Workers run ``uplion worker --model NAME@VERSION --models /etc/uplion/models.yaml``; the broker
URL and the upstream API keys come from the environment, read from the Secrets the AIModel names
(``broker.urlSecretRef``, ``engine.secretRefs``): never a plain value in a manifest (except the
discouraged ``broker.url`` of older AIModels). A model with a ``source`` gets an init
container, ``uplion fetch-model``, with the same image, environment and credentials, which fetches
the artifact into the model cache volume (an ``emptyDir`` by default; a ``hostPath`` or a claim
shared by replicas when ``modelCache`` says so) and links it at ``MODEL_LINK``; the worker reads
that link (``UPLION_MODEL_PATH``) and fetches nothing. ``pvc://claim/path`` sources mount the
claim read-only under ``PVC_ROOT``. Their probes expect the worker to answer
HTTP on ``HEALTH_PORT`` (``UPLION_HEALTH_PORT``): ``/livez`` while its loop runs, ``/readyz``
once its engine is loaded.

Scaling follows ``uplion.models.scaling``: the target is ``replicas.targetBacklog`` tasks per
replica and scaling down waits ``replicas.idleSeconds`` (KEDA's ``cooldownPeriod``). On Redis two
``redis-streams`` triggers count the worker group's pending entries (taken, not yet answered) and
its lag (waiting; the only count that can wake a model scaled to zero); on Pulsar the ``pulsar``
trigger counts the subscription's backlog. KEDA resolves names from its own namespace: a short
Service name in a scaler's address or admin URL is qualified with the AIModel's namespace
(``redis-master:6379`` → ``redis-master.<namespace>.svc:6379``).

Workers run the image the spec names, else the operator's: the CUDA variant for a model with
``resources.gpus`` (with its ``nvidia.com/gpu`` limit), the CPU one otherwise; a GPU model is
refused rather than given the CPU image (``uplion.operator.images``).

Workers trace as the operator does: the operator's own OpenTelemetry settings (``OTEL_*``, from
the chart's ``tracing`` values) go to the worker container, but for its service name (a worker's
is ``uplion-worker``) and the collector's headers and client keys (secrets, never a plain value).
"""

from __future__ import annotations

import hashlib
import urllib.parse
from collections.abc import Mapping
from typing import Any, Literal

import yaml

from uplion import protocol
from uplion.broker import pulsar_names
from uplion.models import resource
from uplion.operator import images as images_

Track = Literal["stable", "canary"]

HEALTH_PORT = 8081
MODELS_DIR = "/etc/uplion"
CACHE_DIR = "/var/cache/uplion"
MODEL_CACHE_DIR = f"{CACHE_DIR}/models"
PVC_ROOT = "/mnt/uplion/pvc"
RUN_AS = 10001
WORKER_SERVICE_ACCOUNT = "uplion-worker"
REDIS_STREAM_PREFIX = "uplion:topic:"
"""The Redis key of a topic's stream (``uplion.broker.redis_streams``' layout)."""
DEFAULT_POLLING_INTERVAL_S = 15
TRACING_ENV = ("OTEL_SDK_DISABLED", "OTEL_TRACES_EXPORTER", "OTEL_EXPORTER_OTLP_ENDPOINT",
               "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_PROTOCOL",
               "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_COMPRESSION",
               "OTEL_EXPORTER_OTLP_TIMEOUT", "OTEL_TRACES_SAMPLER", "OTEL_TRACES_SAMPLER_ARG",
               "OTEL_RESOURCE_ATTRIBUTES", "OTEL_PROPAGATORS")
"""The operator's ``OTEL_*`` variables its workers inherit (``OTEL_BSP_*`` too)."""
_MAX_NAME = 63


def _name(*parts: str) -> str:
    """A DNS label from parts; cut, with a hash of the whole, when longer than 63 characters."""
    name = "-".join(parts)
    if len(name) <= _MAX_NAME:
        return name
    digest = hashlib.sha256(name.encode()).hexdigest()[:8]
    return f"{name[: _MAX_NAME - 9].rstrip('-')}-{digest}"


def _spec(aimodel: Mapping[str, Any]) -> resource.AIModelSpec:
    return resource.AIModelSpec.model_validate(aimodel["spec"])


def _version(spec: resource.AIModelSpec, track: Track) -> str:
    if track == "stable":
        return spec.version
    if spec.canary is None:
        raise ValueError(f"model {spec.name} has no canary")
    return spec.canary.version


def workload_name(aimodel: Mapping[str, Any], track: Track = "stable") -> str:
    """The name of a track's Deployment and ScaledObject."""
    base = aimodel["metadata"]["name"]
    return _name(base, "worker") if track == "stable" else _name(base, "canary", "worker")


def config_map_name(aimodel: Mapping[str, Any]) -> str:
    return _name(aimodel["metadata"]["name"], "models")


def _selector(aimodel: Mapping[str, Any], track: Track) -> dict[str, str]:
    return {
        "app.kubernetes.io/name": "uplion-worker",
        "app.kubernetes.io/instance": _name(aimodel["metadata"]["name"]),
        "uplion.ai/track": track,
    }


def _labels(aimodel: Mapping[str, Any], track: Track) -> dict[str, str]:
    spec = _spec(aimodel)
    return {
        **_selector(aimodel, track),
        "app.kubernetes.io/component": "worker",
        "app.kubernetes.io/managed-by": "uplion-operator",
        "uplion.ai/model": spec.name,
        "uplion.ai/version": _version(spec, track),
    }


def owner_reference(aimodel: Mapping[str, Any]) -> dict[str, Any]:
    """The reference that makes an object garbage-collected with its AIModel."""
    return {
        "apiVersion": f"{resource.GROUP}/{resource.VERSION}",
        "kind": resource.KIND,
        "name": aimodel["metadata"]["name"],
        "uid": aimodel["metadata"]["uid"],
        "controller": True,
        "blockOwnerDeletion": True,
    }


def _metadata(
    aimodel: Mapping[str, Any], name: str, namespace: str, labels: dict[str, str]
) -> dict[str, Any]:
    return {
        "name": name,
        "namespace": namespace,
        "labels": labels,
        "ownerReferences": [owner_reference(aimodel)],
    }


def models_file(aimodel: Mapping[str, Any]) -> str:
    """The models file of both tracks, as the workers read it."""
    spec = _spec(aimodel)
    versions = [spec.version] + ([spec.canary.version] if spec.canary else [])
    models = [resource.worker_spec(spec, v).model_dump(mode="json") for v in versions]
    return yaml.safe_dump({"models": models}, sort_keys=False)


def worker_config_map(aimodel: Mapping[str, Any], namespace: str) -> dict[str, Any]:
    """The ConfigMap holding ``models.yaml``."""
    labels = {
        "app.kubernetes.io/name": "uplion-worker",
        "app.kubernetes.io/instance": _name(aimodel["metadata"]["name"]),
        "app.kubernetes.io/managed-by": "uplion-operator",
    }
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": _metadata(aimodel, config_map_name(aimodel), namespace, labels),
        "data": {"models.yaml": models_file(aimodel)},
    }


def _broker_url(broker: resource.Broker) -> dict[str, Any]:
    """The workers' ``UPLION_BROKER_URL``: a reference to its Secret key, or (discouraged) the
    plain URL, which on Pulsar carries the AIModel's admin URL, tenant and namespace."""
    name = "UPLION_BROKER_URL"
    ref = broker.url_secret_ref
    if ref is not None:
        return {"name": name, "valueFrom": {"secretKeyRef": {"name": ref.name, "key": ref.key}}}
    url = broker.url or ""
    if broker.kind == "pulsar" and broker.admin_url is not None:
        url = pulsar_names.with_options(
            url, admin=broker.admin_url, tenant=broker.tenant, namespace=broker.namespace
        )
    return {"name": name, "value": url}


def model_link(name: str, version: str) -> str:
    """Where the init container links the fetched artifact of a model version."""
    return f"{MODEL_CACHE_DIR}/.links/{name}@{version}"


def _env(spec: resource.AIModelSpec) -> list[dict[str, Any]]:
    env: list[dict[str, Any]] = [
        {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        {"name": "POD_NAMESPACE",
         "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
        _broker_url(spec.broker),
        {"name": "UPLION_HEALTH_PORT", "value": str(HEALTH_PORT)},
        {"name": "HOME", "value": "/tmp"},
        {"name": "XDG_CACHE_HOME", "value": CACHE_DIR},
        {"name": "HF_HOME", "value": f"{CACHE_DIR}/huggingface"},
        {"name": "UPLION_MODEL_CACHE", "value": MODEL_CACHE_DIR},
        {"name": "UPLION_PVC_ROOT", "value": PVC_ROOT},
    ]
    for account, ref in spec.engine.secret_refs.items():
        env.append({
            "name": resource.api_key_env(account),
            "valueFrom": {"secretKeyRef": {"name": ref.name, "key": ref.key}},
        })
    return env


def tracing_env(environ: Mapping[str, str], namespace: str) -> list[dict[str, Any]]:
    """The workers' OpenTelemetry settings: the operator's (``environ``) of ``TRACING_ENV`` and
    ``OTEL_BSP_*``, with ``k8s.namespace.name`` in the resource attributes set to the workers'
    ``namespace``."""
    env: list[dict[str, Any]] = []
    for name in sorted(environ):
        if name not in TRACING_ENV and not name.startswith("OTEL_BSP_"):
            continue
        value = environ[name]
        if name == "OTEL_RESOURCE_ATTRIBUTES":
            pairs = [pair for pair in value.split(",")
                     if pair.strip() and pair.split("=", 1)[0].strip() != "k8s.namespace.name"]
            value = ",".join([f"k8s.namespace.name={namespace}", *pairs])
        env.append({"name": name, "value": value})
    return env


def _resources(spec: resource.AIModelSpec) -> dict[str, Any]:
    limits: dict[str, int | str] = dict(spec.resources.limits)
    if spec.resources.gpus:
        limits["nvidia.com/gpu"] = spec.resources.gpus
    out: dict[str, Any] = {}
    if spec.resources.requests:
        out["requests"] = dict(spec.resources.requests)
    if limits:
        out["limits"] = limits
    return out


def _probe(path: str, period_s: int, failures: int) -> dict[str, Any]:
    return {
        "httpGet": {"path": path, "port": "health"},
        "periodSeconds": period_s,
        "timeoutSeconds": 2,
        "failureThreshold": failures,
    }


def _container_security() -> dict[str, Any]:
    return {
        "runAsNonRoot": True,
        "readOnlyRootFilesystem": True,
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def _cache_volume(cache: resource.ModelCache) -> dict[str, Any]:
    if cache.volume == "hostPath":
        return {"name": "cache", "hostPath": {"path": cache.host_path, "type": "DirectoryOrCreate"}}
    if cache.volume == "persistentVolumeClaim":
        return {"name": "cache", "persistentVolumeClaim": {"claimName": cache.claim_name}}
    empty: dict[str, Any] = {}
    if cache.size_limit is not None:
        empty["sizeLimit"] = cache.size_limit
    return {"name": "cache", "emptyDir": empty}


def _source_claim(source: str | None) -> str | None:
    """The claim a ``pvc://claim/path`` source reads from."""
    if source is None or not source.startswith("pvc://"):
        return None
    return source.removeprefix("pvc://").split("/", 1)[0]


def worker_deployment(
    aimodel: Mapping[str, Any], namespace: str, track: Track = "stable",
    environ: Mapping[str, str] | None = None, images: images_.WorkerImages | None = None,
) -> dict[str, Any]:
    """The Deployment of a track's workers; ``replicas`` starts at ``replicas.min``, then KEDA
    owns it (an update should leave the live count alone). ``environ``: the operator's own
    environment, whose OpenTelemetry settings the workers inherit (``tracing_env``);
    ``images``: the operator's worker images, for a spec that names none (``images_``)."""
    spec = _spec(aimodel)
    version = _version(spec, track)
    image = images_.worker_image(spec, track, images or images_.WorkerImages())
    labels = _labels(aimodel, track)
    checksum = hashlib.sha256(models_file(aimodel).encode()).hexdigest()
    env = _env(spec)
    env_from = ([{"secretRef": {"name": spec.source_credentials}}]
                if spec.source_credentials else [])
    mounts = [
        {"name": "models", "mountPath": MODELS_DIR, "readOnly": True},
        {"name": "tmp", "mountPath": "/tmp"},
        {"name": "cache", "mountPath": CACHE_DIR},
    ]
    volumes: list[dict[str, Any]] = [
        {"name": "models", "configMap": {"name": config_map_name(aimodel)}},
        {"name": "tmp", "emptyDir": {}},
        _cache_volume(spec.model_cache),
    ]
    claim = _source_claim(spec.source)
    if claim is not None:
        mounts.append({"name": "source", "mountPath": f"{PVC_ROOT}/{claim}", "readOnly": True})
        volumes.append({"name": "source",
                        "persistentVolumeClaim": {"claimName": claim, "readOnly": True}})
    init_containers = []
    if spec.source is not None:
        link = model_link(spec.name, version)
        init_containers.append({
            "name": "fetch-model",
            "image": image,
            "command": ["uplion"],
            "args": [
                "fetch-model", "--models-file", f"{MODELS_DIR}/models.yaml",
                "--model", f"{spec.name}@{version}", "--link", link,
            ],
            "env": env,
            **({"envFrom": env_from} if env_from else {}),
            "securityContext": _container_security(),
            "volumeMounts": mounts,
        })
        env = [*env, {"name": "UPLION_MODEL_PATH", "value": link}]
    env = [*env, *tracing_env(environ or {}, namespace)]
    container = {
        "name": "worker",
        "image": image,
        "command": ["uplion"],
        "args": [
            "worker", "--model", f"{spec.name}@{version}",
            "--models", f"{MODELS_DIR}/models.yaml", "--name", "$(POD_NAME)",
        ],
        "env": env,
        **({"envFrom": env_from} if env_from else {}),
        "ports": [{"name": "health", "containerPort": HEALTH_PORT, "protocol": "TCP"}],
        "startupProbe": _probe("/livez", 10, 60),
        "livenessProbe": _probe("/livez", 10, 3),
        "readinessProbe": _probe("/readyz", 5, 2),
        "resources": _resources(spec),
        "securityContext": _container_security(),
        "volumeMounts": mounts,
    }
    pod_spec: dict[str, Any] = {
        # The token lets a failing worker post its UplionUnrecoverable Event (RBAC: events
        # create only, the chart's `uplion-worker` account).
        "serviceAccountName": WORKER_SERVICE_ACCOUNT,
        "automountServiceAccountToken": True,
        "terminationGracePeriodSeconds": int(spec.request_timeout_seconds) + 30,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": RUN_AS,
            "runAsGroup": RUN_AS,
            "fsGroup": RUN_AS,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        **({"initContainers": init_containers} if init_containers else {}),
        "containers": [container],
        "volumes": volumes,
    }
    if spec.node_selector:
        pod_spec["nodeSelector"] = dict(spec.node_selector)
    if spec.tolerations:
        pod_spec["tolerations"] = [t.model_dump(exclude_none=True) for t in spec.tolerations]
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _metadata(aimodel, workload_name(aimodel, track), namespace, labels),
        "spec": {
            "replicas": spec.replicas.min,
            "selector": {"matchLabels": _selector(aimodel, track)},
            "template": {
                "metadata": {
                    "labels": labels,
                    "annotations": {"uplion.ai/models-checksum": checksum},
                },
                "spec": pod_spec,
            },
        },
    }


def _redis_location(broker: resource.Broker) -> tuple[str, str, bool]:
    """Where KEDA finds the Redis: address, database index and TLS; from the spec, or from the
    plain URL of an older AIModel (its credentials left out)."""
    if broker.url is None:
        return broker.address or "", str(broker.database), broker.tls
    url = urllib.parse.urlsplit(broker.url)
    if url.scheme not in ("redis", "rediss") or not url.hostname:
        raise ValueError("KEDA needs a redis:// or rediss:// URL with a host, not "
                         f"{url.scheme}://{url.hostname or ''}")
    return f"{url.hostname}:{url.port or 6379}", url.path.strip("/") or "0", url.scheme == "rediss"


def _qualified(host: str, namespace: str) -> str:
    """``host`` as KEDA must see it: KEDA resolves names from its own namespace, so a short
    Service name (no dot, not an address) becomes ``<name>.<namespace>.svc``."""
    if "." in host or ":" in host or host.startswith("["):
        return host
    return f"{host}.{namespace}.svc"


def _qualified_address(address: str, namespace: str) -> str:
    """``host:port`` with its host qualified (IPv6 ``[...]:port`` left as it is)."""
    if address.startswith("["):
        return address
    host, colon, port = address.rpartition(":")
    if not colon:
        return _qualified(address, namespace)
    return f"{_qualified(host, namespace)}:{port}"


def _qualified_url(url: str, namespace: str) -> str:
    parts = urllib.parse.urlsplit(url)
    if not parts.hostname or parts.username or parts.password:
        return url
    netloc = _qualified_address(parts.netloc, namespace)
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc))


def _redis_triggers(
    spec: resource.AIModelSpec, topic: str, namespace: str
) -> list[dict[str, Any]]:
    address, database, tls = _redis_location(spec.broker)
    metadata = {
        "address": _qualified_address(address, namespace),
        "stream": REDIS_STREAM_PREFIX + topic,
        "consumerGroup": protocol.WORKER_GROUP,
        "databaseIndex": database,
    }
    if tls:
        metadata["enableTLS"] = "true"
    target = str(spec.replicas.target_backlog)
    return [
        {"type": "redis-streams", "name": "pending",
         "metadata": {**metadata, "pendingEntriesCount": target}},
        {"type": "redis-streams", "name": "lag",
         "metadata": {**metadata, "lagCount": target, "activationLagCount": "0"}},
    ]


def _pulsar_triggers(
    spec: resource.AIModelSpec, topic: str, namespace: str
) -> list[dict[str, Any]]:
    broker = spec.broker
    return [{
        "type": "pulsar",
        "name": "backlog",
        "metadata": {
            "adminURL": _qualified_url(broker.admin_url or "", namespace),
            "topic": pulsar_names.topic_name(broker.tenant, broker.namespace, topic),
            "subscription": protocol.WORKER_GROUP,
            "msgBacklogThreshold": str(spec.replicas.target_backlog),
            "activationMsgBacklogThreshold": "0",
        },
    }]


def scaled_object(
    aimodel: Mapping[str, Any],
    namespace: str,
    track: Track = "stable",
    polling_interval_s: int = DEFAULT_POLLING_INTERVAL_S,
) -> dict[str, Any]:
    """The KEDA ScaledObject that scales a track's Deployment on its topic's backlog."""
    spec = _spec(aimodel)
    topic = protocol.topic_for(spec.name, _version(spec, track))
    triggers = (_redis_triggers(spec, topic, namespace) if spec.broker.kind == "redis"
                else _pulsar_triggers(spec, topic, namespace))
    if spec.broker.authentication_ref:
        for trigger in triggers:
            trigger["authenticationRef"] = {"name": spec.broker.authentication_ref}
    name = workload_name(aimodel, track)
    return {
        "apiVersion": "keda.sh/v1alpha1",
        "kind": "ScaledObject",
        "metadata": _metadata(aimodel, name, namespace, _labels(aimodel, track)),
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": name},
            "pollingInterval": polling_interval_s,
            "cooldownPeriod": spec.replicas.idle_seconds,
            "minReplicaCount": spec.replicas.min,
            "maxReplicaCount": spec.replicas.max,
            "triggers": triggers,
        },
    }


def all_objects(
    aimodel: Mapping[str, Any], namespace: str, environ: Mapping[str, str] | None = None,
    images: images_.WorkerImages | None = None,
) -> list[dict[str, Any]]:
    """Every object an AIModel owns, in the order to apply them (``environ`` and ``images``:
    the operator's environment and worker images, see ``worker_deployment``)."""
    tracks: tuple[Track, ...] = ("stable", "canary") if _spec(aimodel).canary else ("stable",)
    objects = [worker_config_map(aimodel, namespace)]
    for track in tracks:
        objects += [worker_deployment(aimodel, namespace, track, environ, images),
                    scaled_object(aimodel, namespace, track)]
    return objects
