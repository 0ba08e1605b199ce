"""Strict JSON schemas for offline validation: the AIModel CRD's own schema closed up (KEDA's
ScaledObject is checked against the models generated from KEDA's CRD, ``tests.bundle.crd_models``).

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

