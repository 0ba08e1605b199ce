"""``/openapi.json``: an OpenAPI 3.1 document of everything the gateway serves, built from the
types that validate the requests; schemathesis fuzzes every operation in it against `uplion run`
and finds no server error and no answer outside the document (error shapes included)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import hypothesis
import jsonschema
import pytest
import schemathesis
from schemathesis.core.result import Ok
from schemathesis.generation.modes import GenerationMode
from schemathesis.specs.openapi import checks as openapi_checks
from starlette.responses import Response
from starlette.routing import Route

from tests import helpers
from uplion import schemas
from uplion.gateway import openapi

DOCUMENTED_SERVER_ERRORS = {503, 504}
"""A model that is down (503) or does not answer in time (504); any other 5xx is a defect."""


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[helpers.Served]:
    with helpers.platform(tmp_path_factory.mktemp("openapi")) as running:
        yield running


@pytest.fixture(scope="module")
def document(served: helpers.Served) -> dict[str, Any]:
    response = httpx.get(f"{served.url}/openapi.json")
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    body: dict[str, Any] = response.json()
    return body


def operations(document: dict[str, Any]) -> set[tuple[str, str]]:
    return {(method.upper(), path) for path, item in document["paths"].items()
            for method in item if method != "parameters"}


def test_the_document_is_openapi_3_1_with_valid_schemas(document: dict[str, Any]) -> None:
    assert document["openapi"] == "3.1.0"
    assert document["info"]["title"] == "uplion"
    for component in document["components"]["schemas"].values():
        jsonschema.Draft202012Validator.check_schema(component)
    assert {
        ("GET", "/v1/models"), ("POST", "/v1/chat/completions"), ("POST", "/v1/completions"),
        ("POST", "/v1/embeddings"), ("GET", "/v2/health/ready"),
        ("POST", "/v2/models/{name}/versions/{version}/infer"),
        ("POST", "/v1/modelDeployment"), ("PATCH", "/v1/modelDeployment/{deployment_id}"),
        ("POST", "/admin/users"), ("PUT", "/admin/models/{name}/traffic"),
        ("GET", "/admin/stats"), ("POST", "/authz/check"), ("GET", "/metrics"),
        ("GET", "/openapi.json"),
    } <= operations(document)
    assert not any(path.startswith("/ui") for _, path in operations(document))


def test_bodies_are_described_by_the_types_that_validate_them(document: dict[str, Any]) -> None:
    components = document["components"]["schemas"]
    chat = document["paths"]["/v1/chat/completions"]["post"]["requestBody"]
    assert chat["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/ChatRequest"}
    assert components["ChatRequest"]["properties"]["messages"]["maxItems"] == (
        schemas.MAX_MESSAGES)
    deploy = document["paths"]["/v1/modelDeployment"]["post"]["requestBody"]
    assert deploy["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/DeploymentRequest"}
    assert "ModelSpec" in components
    assert "raw" not in components["V2Tensor"]["properties"]  # the gateway's, not a client's


def test_errors_are_documented_in_each_api_shape(document: dict[str, Any]) -> None:
    chat = document["paths"]["/v1/chat/completions"]["post"]["responses"]["default"]
    infer = document["paths"]["/v2/models/{name}/infer"]["post"]["responses"]["default"]
    assert chat["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/OpenAIError"}
    assert infer["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/V2Error"}


def test_a_route_without_a_description_is_refused() -> None:
    async def undocumented(request: object) -> Response:
        return Response()

    with pytest.raises(ValueError, match="/nowhere"):
        openapi.document([Route("/nowhere", undocumented)])


def no_undocumented_server_error(ctx: Any, response: Any, case: Any) -> bool:
    status = response.status_code
    if status >= 500 and status not in DOCUMENTED_SERVER_ERRORS:
        raise AssertionError(f"server error {status}: {response.text[:500]}")
    return True


CHECKS = [no_undocumented_server_error, openapi_checks.status_code_conformance,
          openapi_checks.content_type_conformance, openapi_checks.response_schema_conformance]


def tame(case: Any) -> None:
    """Deploy what the fuzzer invents on the in-process test engine, one replica at most: model
    artifacts cannot be fetched here, and a thousand replicas would test the machine instead."""
    if (case.method, case.path) != ("POST", "/v1/modelDeployment"):
        return
    if isinstance(case.body, dict) and isinstance(case.body.get("model"), dict):
        model = case.body["model"]
        model.update(engine={"kind": "test-echo"}, replicas={"min": 0, "max": 1})
        model.pop("source", None)
        model.pop("bucket", None)
        case.body["replicas"] = 0


def fuzz(operation: Any, mode: GenerationMode, headers: dict[str, str]) -> str | None:
    """Up to ``EXAMPLES`` cases of ``operation``; the first failure as a curl command and why."""

    @hypothesis.given(case=operation.as_strategy(generation_mode=mode))
    @hypothesis.settings(
        max_examples=EXAMPLES, deadline=None, database=None, derandomize=True,
        phases=[hypothesis.Phase.explicit, hypothesis.Phase.generate],
        suppress_health_check=list(hypothesis.HealthCheck),
    )
    def run(case: Any) -> None:
        tame(case)
        response = case.call(headers=headers, timeout=30)
        try:
            case.validate_response(response, checks=CHECKS)
        except Exception as exc:
            raise AssertionError(f"{case.as_curl_command(headers)}\n  {exc}") from None

    try:
        run()
    except AssertionError as exc:
        return f"{operation.label} ({mode.value}): {exc}"
    except hypothesis.errors.Unsatisfiable:
        if mode is GenerationMode.POSITIVE:
            raise
        # nothing in this operation can be made invalid (no body, no typed parameter)
    return None


EXAMPLES = 15


def test_fuzz_every_operation(served: helpers.Served, document: dict[str, Any]) -> None:
    api = schemathesis.openapi.from_url(f"{served.url}/openapi.json")
    found = [result.ok() for result in api.get_all_operations() if isinstance(result, Ok)]
    itself = {("GET", "/openapi.json")}  # schemathesis leaves out the document's own URL
    assert {(op.method.upper(), op.path) for op in found} == operations(document) - itself
    failures = [failure for operation in found for mode in GenerationMode
                if (failure := fuzz(operation, mode, served.headers)) is not None]
    assert not failures, "\n".join(failures)
