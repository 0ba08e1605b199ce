"""The AIModel spec: camelCase for Kubernetes, and the ModelSpec a worker is given."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from tests.operator import examples
from uplion.models import load_models_file, resource
from uplion.operator import manifests


def test_camel_case_aliases_and_snake_case_attributes() -> None:
    spec = resource.AIModelSpec.model_validate(examples.example("local")["spec"])
    assert spec.replicas.target_backlog == 4
    assert spec.replicas.idle_seconds == 120
    dumped = spec.model_dump(mode="json", exclude_none=True)
    assert dumped["replicas"]["targetBacklog"] == 4
    assert "requestTimeoutSeconds" in dumped
    by_name = resource.AIModelSpec.model_validate(
        {**examples.example("local")["spec"], "request_timeout_seconds": 5}
    )
    assert by_name.request_timeout_seconds == 5


def test_worker_spec_carries_the_model_and_secret_refs() -> None:
    spec = resource.AIModelSpec.model_validate(examples.example("upstream")["spec"])
    model = resource.worker_spec(spec)
    assert (model.name, model.version, model.request_timeout_s) == (
        "gpt-4o-mini", "2024-07-18", 60.0
    )
    assert model.engine.options["accounts"] == [
        {"name": "team-a", "max_concurrency": 8, "api_key_env": "UPLION_API_KEY_TEAM_A"},
        {"name": "team.b", "api_key_env": "UPLION_API_KEY_TEAM_B"},
    ]
    assert spec.engine.options["accounts"][0] == {"name": "team-a", "max_concurrency": 8}
    assert resource.worker_spec(spec, "canary-1").version == "canary-1"


def test_models_file_loads_as_the_worker_reads_it(tmp_path: Path) -> None:
    aimodel = examples.example("gpu-canary")
    path = tmp_path / "models.yaml"
    path.write_text(manifests.models_file(aimodel))
    loaded = load_models_file(path)
    assert [(m.name, m.version) for m in loaded] == [("llama-3-8b", "1"), ("llama-3-8b", "2")]
    assert loaded[0].replicas.max == 3


@pytest.mark.parametrize(("change", "message"), [
    ({"replicas": {"min": 3, "max": 2}}, "exceeds"),
    ({"canary": {"version": "2024-07-18", "weight": 5}}, "must differ"),
    ({"broker": {"kind": "pulsar", "url": "pulsar://p:6650"}}, "adminUrl"),
])
def test_inconsistent_specs_are_refused(change: dict[str, object], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        resource.AIModelSpec.model_validate({**examples.example("upstream")["spec"], **change})


@pytest.mark.parametrize(("accounts", "refs", "message"), [
    ([{"name": "a", "api_key_env": "KEY"}], {"a": {"name": "s", "key": "k"}}, "has a key"),
    ([], {"a-b": {"name": "s", "key": "k"}, "a.b": {"name": "s", "key": "k"}}, "collide"),
    ("a", {"a": {"name": "s", "key": "k"}}, "list of mappings"),
])
def test_conflicting_secret_refs_are_refused(
    accounts: object, refs: dict[str, object], message: str
) -> None:
    spec = examples.example("upstream")["spec"]
    spec["engine"]["options"]["accounts"] = accounts
    spec["engine"]["secretRefs"] = refs
    with pytest.raises(ValueError, match=message):
        resource.worker_spec(resource.AIModelSpec.model_validate(spec))
