"""The AIModel CRD: generated from the pydantic models, kept in the chart, and strict enough."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.operator import examples, schemas
from uplion.models import crd, resource

CRD_FILE = Path(__file__).parents[2] / "charts" / "uplion" / "crds" / "aimodels.uplion.ai.yaml"
REGENERATE = "python -m uplion.models.crd > charts/uplion/crds/aimodels.uplion.ai.yaml"


def _open_api_schema() -> dict[str, Any]:
    version = crd.build_crd()["spec"]["versions"][0]
    schema: dict[str, Any] = version["schema"]["openAPIV3Schema"]
    return schema


def _errors(aimodel: dict[str, Any]) -> list[str]:
    check = schemas.validator(schemas.strict(_open_api_schema()))
    return [f"{list(e.path)}: {e.message}" for e in check.iter_errors(aimodel)]


def test_crd_file_is_up_to_date() -> None:
    assert CRD_FILE.exists(), f"{CRD_FILE} is missing; write it with: {REGENERATE}"
    assert CRD_FILE.read_text() == crd.render(), (
        f"{CRD_FILE} is out of date with uplion.models.resource; regenerate it with: {REGENERATE}"
    )


def test_main_prints_the_crd(capsys: pytest.CaptureFixture[str]) -> None:
    crd.main()
    assert yaml.safe_load(capsys.readouterr().out) == crd.build_crd()


def test_crd_names_columns_and_status_subresource() -> None:
    spec = crd.build_crd()["spec"]
    assert spec["group"] == "uplion.ai"
    assert spec["scope"] == "Namespaced"
    assert spec["names"]["kind"] == "AIModel"
    assert spec["names"]["shortNames"] == ["aim"]
    (version,) = spec["versions"]
    assert version["name"] == "v1alpha1"
    assert version["subresources"] == {"status": {}}
    columns = {c["name"]: c["jsonPath"] for c in version["additionalPrinterColumns"]}
    assert columns == {
        "Phase": ".status.phase",
        "Replicas": ".status.replicas",
        "Age": ".metadata.creationTimestamp",
    }


def _nodes(node: dict[str, Any]) -> list[dict[str, Any]]:
    found = [node]
    for sub in node.get("properties", {}).values():
        found += _nodes(sub)
    for key in ("items", "additionalProperties"):
        if isinstance(node.get(key), dict):
            found += _nodes(node[key])
    for sub in node.get("anyOf", []):
        found += _nodes(sub)
    return found


def test_schema_is_structural() -> None:
    schema = _open_api_schema()
    text = json.dumps(schema)
    for forbidden in ('"$ref"', '"$defs"', '"title"', '"const"', '"additionalProperties": false',
                      '"additionalProperties": true', '"default": null'):
        assert forbidden not in text
    for node in _nodes(schema):
        in_int_or_string = node.get("x-kubernetes-int-or-string")
        # A node of any JSON value (fetch.sha256: a digest or a map of them) keeps unknown
        # fields and may have no type; every other node has one.
        any_value = node.get("x-kubernetes-preserve-unknown-fields") and "properties" not in node
        assert "type" in node or in_int_or_string or any_value, node
        if "anyOf" in node:
            assert in_int_or_string, node
        assert not isinstance(node.get("exclusiveMinimum"), int | float) or isinstance(
            node.get("exclusiveMinimum"), bool
        )
    preserved = [n for n in _nodes(schema) if n.get("x-kubernetes-preserve-unknown-fields")]
    spec = schema["properties"]["spec"]["properties"]
    assert preserved == [spec["fetch"]["properties"]["sha256"],
                         spec["engine"]["properties"]["options"]], (
        "only engine options and the digests are free-form")


@pytest.mark.parametrize("name", sorted(examples.ALL))
def test_examples_validate_against_the_crd(name: str) -> None:
    aimodel = examples.example(name)
    assert _errors(aimodel) == []
    resource.AIModelSpec.model_validate(aimodel["spec"])


def test_a_status_validates() -> None:
    aimodel = examples.example("local")
    status = resource.AIModelStatus(
        phase="Running", replicas=2, observed_generation=1,
        conditions=[resource.Condition(type="Ready", status="True", reason="WorkersReady")],
        endpoints={"openai": "https://api.example.com/v1"},
    )
    aimodel["status"] = status.model_dump(mode="json", exclude_none=True)
    assert aimodel["status"]["observedGeneration"] == 1
    assert _errors(aimodel) == []
    aimodel["status"]["phase"] = "Runing"
    assert _errors(aimodel)


@pytest.mark.parametrize(("path", "value"), [
    (["spec", "imagee"], "x"),
    (["spec", "replicas", "targetBacklogg"], 3),
    (["spec", "replicas", "target_backlog"], 3),
    (["spec", "resources", "gpu"], 1),
    (["spec", "engine", "secretRefs", "team-a", "nmae"], "keys"),
    (["spec", "broker", "kind"], "kafka"),
    (["spec", "canary"], {"version": "2", "weight": 101}),
    (["spec", "tolerations"], [{"key": "a", "operator": "In"}]),
    (["spec", "requestTimeoutSeconds"], 0),
    (["spec", "name"], "-bad"),
])
def test_a_typo_or_bad_value_fails(path: list[str], value: object) -> None:
    aimodel = examples.example("upstream")
    target = aimodel
    for key in path[:-1]:
        target = target.setdefault(key, {})
    target[path[-1]] = value
    assert _errors(aimodel), f"{path}={value!r} was accepted"


def test_engine_options_are_free_form() -> None:
    aimodel = examples.example("local")
    aimodel["spec"]["engine"]["options"] = {"anything": {"nested": [1, "two"]}}
    assert _errors(aimodel) == []


def test_missing_required_fields_fail() -> None:
    aimodel = examples.example("local")
    del aimodel["spec"]["broker"]
    assert _errors(aimodel)
