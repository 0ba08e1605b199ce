"""Strict JSON schemas for offline validation: the CRD's own schema closed up, and KEDA's
ScaledObject written from its CRD (``keda.sh/v1alpha1``).

Kubernetes structural schemas leave objects open (the API server prunes unknown fields); a strict
copy adds ``additionalProperties: false`` to every object that lists its properties and does not
preserve unknown fields, so a typo fails here as it would under ``kubectl --validate=strict``.
The schemas follow OpenAPI v3.0 (boolean ``exclusiveMinimum``): check them with Draft 4.
"""

from __future__ import annotations

import copy
from typing import Any

import jsonschema


def strict(schema: dict[str, Any]) -> dict[str, Any]:
    """A copy of a structural schema where closed objects reject unknown fields."""
    node = copy.deepcopy(schema)
    _close(node)
    return node


def _close(node: dict[str, Any]) -> None:
    if (
        "properties" in node
        and "additionalProperties" not in node
        and not node.get("x-kubernetes-preserve-unknown-fields")
    ):
        node["additionalProperties"] = False
    for sub in node.get("properties", {}).values():
        _close(sub)
    for key in ("items", "additionalProperties"):
        if isinstance(node.get(key), dict):
            _close(node[key])
    for sub in node.get("anyOf", []):
        _close(sub)


def validator(schema: dict[str, Any]) -> jsonschema.Draft4Validator:
    jsonschema.Draft4Validator.check_schema(schema)
    return jsonschema.Draft4Validator(schema)


def _obj(properties: dict[str, Any], required: list[str] | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"type": "object", "properties": properties}
    if required:
        out["required"] = required
    return out


_INT32 = {"type": "integer", "format": "int32"}
_STR = {"type": "string"}
_OPEN = {"type": "object", "x-kubernetes-preserve-unknown-fields": True}

_OBJECT_META = _obj({
    "name": _STR,
    "namespace": _STR,
    "labels": {"type": "object", "additionalProperties": _STR},
    "annotations": {"type": "object", "additionalProperties": _STR},
    "ownerReferences": {"type": "array", "items": _obj({
        "apiVersion": _STR, "kind": _STR, "name": _STR, "uid": _STR,
        "controller": {"type": "boolean"}, "blockOwnerDeletion": {"type": "boolean"},
    }, ["apiVersion", "kind", "name", "uid"])},
}, ["name"])

SCALED_OBJECT = strict(_obj({
    "apiVersion": {"enum": ["keda.sh/v1alpha1"]},
    "kind": {"enum": ["ScaledObject"]},
    "metadata": _OBJECT_META,
    "spec": _obj({
        "scaleTargetRef": _obj(
            {"apiVersion": _STR, "kind": _STR, "name": _STR, "envSourceContainerName": _STR},
            ["name"],
        ),
        "pollingInterval": _INT32,
        "cooldownPeriod": _INT32,
        "initialCooldownPeriod": _INT32,
        "idleReplicaCount": _INT32,
        "minReplicaCount": _INT32,
        "maxReplicaCount": _INT32,
        "fallback": _obj({"failureThreshold": _INT32, "replicas": _INT32, "behavior": _STR},
                         ["failureThreshold", "replicas"]),
        "advanced": _obj({
            "horizontalPodAutoscalerConfig": _obj({"name": _STR, "behavior": _OPEN}),
            "restoreToOriginalReplicaCount": {"type": "boolean"},
            "scalingModifiers": _obj({
                "activationTarget": _STR, "formula": _STR, "metricType": _STR, "target": _STR,
            }),
        }),
        "triggers": {"type": "array", "minItems": 1, "items": _obj({
            "type": _STR,
            "name": _STR,
            "metadata": {"type": "object", "additionalProperties": _STR},
            "authenticationRef": _obj({"name": _STR, "kind": _STR}, ["name"]),
            "useCachedMetrics": {"type": "boolean"},
            "metricType": {"enum": ["AverageValue", "Value", "Utilization"]},
        }, ["type", "metadata"])},
    }, ["scaleTargetRef", "triggers"]),
}, ["apiVersion", "kind", "metadata", "spec"]))
"""KEDA's ScaledObject (v2.x CRD), closed: unknown fields fail."""
