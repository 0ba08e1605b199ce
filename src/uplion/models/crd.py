"""The ``AIModel`` CustomResourceDefinition, generated from the pydantic models in ``resource``.

Kubernetes wants a structural OpenAPI v3 schema: no ``$ref``, a type on every node, no
``additionalProperties: false`` (unknown fields are pruned or rejected by the API server instead),
boolean ``exclusiveMinimum``, no ``title`` or ``const``. ``structural`` rewrites pydantic's JSON
schema into that form; free-form maps (engine options) keep
``x-kubernetes-preserve-unknown-fields``.

``python -m uplion.models.crd > charts/uplion/crds/aimodels.uplion.ai.yaml`` writes the file.
"""

from __future__ import annotations

import copy
import sys
from typing import Any

import yaml
from pydantic import BaseModel

from uplion.models import resource

_DROPPED = frozenset({"title", "$defs", "examples", "propertyNames", "discriminator"})


def structural(schema: dict[str, Any]) -> dict[str, Any]:
    """A pydantic JSON schema (with its ``$defs``) as a Kubernetes structural schema."""
    definitions: dict[str, Any] = schema.get("$defs", {})

    def convert(node: dict[str, Any]) -> dict[str, Any]:
        ref = node.get("$ref")
        if ref is not None:
            siblings = {k: v for k, v in node.items() if k != "$ref"}
            return convert({**definitions[ref.removeprefix("#/$defs/")], **siblings})
        branches = node.get("anyOf")
        if branches is not None and not node.get("x-kubernetes-int-or-string"):
            kept = [b for b in branches if b != {"type": "null"}]
            if len(kept) != 1:
                raise ValueError(f"cannot express anyOf {branches} in a structural schema")
            siblings = {k: v for k, v in node.items() if k not in ("anyOf", "default")}
            if node.get("default") is not None:
                siblings["default"] = node["default"]
            return convert({**kept[0], **siblings})
        out: dict[str, Any] = {}
        for key, value in node.items():
            if key in _DROPPED or (key == "default" and value is None):
                continue
            if key == "const":
                out["enum"] = [value]
            elif key == "exclusiveMinimum" or key == "exclusiveMaximum":
                out[key.replace("exclusive", "").lower()] = value
                out[key] = True
            elif key == "additionalProperties":
                if value is True:
                    out["x-kubernetes-preserve-unknown-fields"] = True
                elif isinstance(value, dict):
                    out[key] = convert(value)
            elif key == "properties":
                out[key] = {name: convert(sub) for name, sub in value.items()}
            elif key == "items" or key == "not":
                out[key] = convert(value)
            elif key == "anyOf":
                out[key] = [convert(sub) for sub in value]
            else:
                out[key] = copy.deepcopy(value)  # shared lists would become YAML anchors
        return out

    return convert(schema)


def _schema(model: type[BaseModel]) -> dict[str, Any]:
    return structural(model.model_json_schema(by_alias=True, mode="validation"))


def build_crd() -> dict[str, Any]:
    """The ``apiextensions.k8s.io/v1`` CustomResourceDefinition of ``AIModel``."""
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{resource.PLURAL}.{resource.GROUP}"},
        "spec": {
            "group": resource.GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": resource.KIND,
                "listKind": f"{resource.KIND}List",
                "plural": resource.PLURAL,
                "singular": resource.KIND.lower(),
                "shortNames": ["aim"],
            },
            "versions": [{
                "name": resource.VERSION,
                "served": True,
                "storage": True,
                "subresources": {"status": {}},
                "additionalPrinterColumns": [
                    {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
                    {"name": "Replicas", "type": "integer", "jsonPath": ".status.replicas"},
                    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
                ],
                "schema": {"openAPIV3Schema": {
                    "type": "object",
                    "description": "A model served by uplion workers, scaled on its backlog.",
                    "properties": {
                        "apiVersion": {"type": "string"},
                        "kind": {"type": "string"},
                        "metadata": {"type": "object"},
                        "spec": _schema(resource.AIModelSpec),
                        "status": _schema(resource.AIModelStatus),
                    },
                    "required": ["spec"],
                }},
            }],
        },
    }


def render() -> str:
    """The CRD as the YAML document kept in ``charts/uplion/crds/``."""
    header = "# Generated by `python -m uplion.models.crd` from uplion.models.resource.\n"
    return header + yaml.safe_dump(build_crd(), sort_keys=False, width=100)


def main() -> None:
    sys.stdout.write(render())


if __name__ == "__main__":
    main()
