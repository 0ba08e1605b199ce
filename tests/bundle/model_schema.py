"""uplion-model's values.schema.json, made from the AIModel CRD (its spec, strict, no defaults).

``python -m tests.bundle.model_schema`` rewrites charts/uplion-model/values.schema.json; the tests
check that it matches the CRD.
"""

from __future__ import annotations

import json
from typing import Any

from tests.bundle import conftest


def _without_defaults(node: Any) -> Any:
    if isinstance(node, dict):
        return {k: _without_defaults(v) for k, v in node.items() if k != "default"}
    if isinstance(node, list):
        return [_without_defaults(v) for v in node]
    return node


def spec_schema() -> dict[str, Any]:
    return dict(_without_defaults(conftest.aimodel_schema()["properties"]["spec"]))


def values_schema() -> dict[str, Any]:
    labels = {"type": "object", "additionalProperties": {"type": "string"}}
    return {
        "$schema": "http://json-schema.org/draft-07/schema#",
        "title": "uplion-model chart values",
        "type": "object",
        "additionalProperties": False,
        "required": ["spec"],
        "properties": {
            "global": {"type": "object"},
            "nameOverride": {"type": "string", "maxLength": 63,
                             "pattern": "^$|^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"},
            "labels": labels,
            "annotations": labels,
            "spec": spec_schema(),
        },
    }


if __name__ == "__main__":
    path = conftest.CHARTS / "uplion-model" / "values.schema.json"
    path.write_text(json.dumps(values_schema(), indent=2) + "\n")
