"""Example ``AIModel`` objects, as the API server hands them to the operator."""

from __future__ import annotations

import copy
from typing import Any

NAMESPACE = "models"


def _aimodel(name: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "uplion.ai/v1alpha1",
        "kind": "AIModel",
        "metadata": {"name": name, "namespace": NAMESPACE, "uid": f"uid-{name}", "generation": 1},
        "spec": spec,
    }


LOCAL = _aimodel("smollm2", {
    "name": "smollm2-135m-instruct",
    "engine": {"kind": "transformers", "options": {"default_max_tokens": 256}},
    "concurrency": 2,
    "image": "ghcr.io/uplion/uplion:0.1.0",
    "resources": {
        "requests": {"cpu": "500m", "memory": "1Gi"},
        "limits": {"memory": "2Gi", "cpu": 2},
    },
    "replicas": {"min": 0, "max": 4, "targetBacklog": 4, "idleSeconds": 120},
    "broker": {"kind": "redis", "url": "redis://redis.uplion:6379/2?visibility_timeout_s=30"},
})

UPSTREAM = _aimodel("gpt", {
    "name": "gpt-4o-mini",
    "version": "2024-07-18",
    "engine": {
        "kind": "openai-upstream",
        "options": {
            "base_url": "https://api.openai.com/v1",
            "model": "gpt-4o-mini",
            "accounts": [{"name": "team-a", "max_concurrency": 8}],
        },
        "secretRefs": {
            "team-a": {"name": "openai-keys", "key": "team-a"},
            "team.b": {"name": "openai-keys", "key": "team-b"},
        },
    },
    "requestTimeoutSeconds": 60,
    "image": "ghcr.io/uplion/uplion:0.1.0",
    "broker": {
        "kind": "pulsar",
        "url": "pulsar://pulsar-broker.pulsar:6650",
        "adminUrl": "http://pulsar-broker.pulsar:8080",
        "authenticationRef": "pulsar-auth",
    },
})

GPU_CANARY = _aimodel("llama", {
    "name": "llama-3-8b",
    "version": "1",
    "engine": {"kind": "transformers"},
    "image": "ghcr.io/uplion/uplion:0.1.0-cuda",
    "resources": {"limits": {"memory": "24Gi"}, "gpus": 2},
    "nodeSelector": {"nvidia.com/gpu.present": "true"},
    "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
    "replicas": {"min": 1, "max": 3},
    "broker": {"kind": "redis", "url": "rediss://:secret@redis.uplion:6380"},
    "canary": {"version": "2", "weight": 10, "image": "ghcr.io/uplion/uplion:0.2.0-cuda"},
})

S3_SOURCE = _aimodel("churn", {
    "name": "churn-classifier",
    "version": "3",
    "source": "s3://models/churn/v3",
    "fetch": {
        "sha256": {"model.onnx": "ab" * 32},
        "s3": {"endpointUrl": "http://minio.storage:9000", "pathStyle": True},
    },
    "sourceCredentials": "churn-model-s3",
    "modelCache": {"volume": "hostPath", "hostPath": "/var/cache/uplion"},
    "image": "ghcr.io/uplion/uplion:0.1.0",
    "broker": {"kind": "redis", "url": "redis://redis.uplion:6379/0"},
})

PVC_SOURCE = _aimodel("from-volume", {
    "name": "shared-bert",
    "source": "pvc://model-store/bert/v1",
    "engine": {"kind": "transformers", "device": "cuda"},
    "modelCache": {"volume": "emptyDir", "sizeLimit": "20Gi"},
    "image": "ghcr.io/uplion/uplion:0.1.0",
    "broker": {"kind": "redis", "url": "redis://redis.uplion:6379/0"},
})

ALL = {"local": LOCAL, "upstream": UPSTREAM, "gpu-canary": GPU_CANARY, "s3-source": S3_SOURCE,
       "pvc-source": PVC_SOURCE}


def example(name: str) -> dict[str, Any]:
    """A fresh copy of an example, safe to change."""
    return copy.deepcopy(ALL[name])
