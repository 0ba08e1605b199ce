"""Canary routing on a running platform: the canary's share of unpinned requests follows its
weight, rollback and promote move every request, pinned requests stay pinned, the traffic API
refuses what cannot be routed, and a split survives a restart."""

from __future__ import annotations

import asyncio
import collections
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests import helpers

CHAT = {"messages": [{"role": "user", "content": "which version are you"}]}


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[helpers.Served]:
    with helpers.platform(tmp_path_factory.mktemp("canary")) as platform:
        yield platform


@pytest.fixture
def admin(served: helpers.Served) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=served.url, headers=served.headers, timeout=30) as client:
        yield client


def answered_by(served: helpers.Served, model: str, count: int) -> collections.Counter[str]:
    """Send ``count`` chat requests for ``model``, 32 at a time; how many each version answered."""

    async def run() -> collections.Counter[str]:
        gate = asyncio.Semaphore(32)
        async with httpx.AsyncClient(base_url=served.url, headers=served.headers,
                                     timeout=30) as client:
            async def one() -> str:
                async with gate:
                    answer = await client.post("/v1/chat/completions",
                                               json={"model": model, **CHAT})
                assert answer.status_code == 200, answer.text
                return answer.headers["x-uplion-model-version"]

            return collections.Counter(await asyncio.gather(*(one() for _ in range(count))))

    return asyncio.run(run())


def set_traffic(admin: httpx.Client, body: dict[str, Any], model: str = "echo") -> Any:
    response = admin.put(f"/admin/models/{model}/traffic", json=body)
    assert response.status_code == 200, response.text
    return response.json()


def assert_binomial(count: int, total: int, weight: int) -> None:
    """``count`` of ``total`` draws within 4 sigma of a ``weight`` percent share."""
    p = weight / 100
    sigma = math.sqrt(total * p * (1 - p))
    assert abs(count - total * p) <= 4 * sigma, (count, total, weight)


def test_the_canary_share_follows_its_weight(
    served: helpers.Served, admin: httpx.Client
) -> None:
    assert admin.get("/admin/models/echo/traffic").json() == {
        "model": "echo", "stable": "1", "canary": None}
    assert set_traffic(admin, {"canary": {"version": "2", "weight": 10}}) == {
        "model": "echo", "stable": "1", "canary": {"version": "2", "weight": 10}}
    split = answered_by(served, "echo", 2000)
    assert set(split) == {"1", "2"}
    assert_binomial(split["2"], 2000, 10)
    assert answered_by(served, "echo@1", 50) == {"1": 50}  # pinned stays pinned

    set_traffic(admin, {"stable": "1", "canary": {"version": "2", "weight": 50}})
    split = answered_by(served, "echo", 1000)
    assert_binomial(split["2"], 1000, 50)

    listed = {(m["name"], m["version"]): m for m in admin.get("/admin/models").json()["data"]}
    assert listed[("echo", "2")]["traffic"] == {
        "model": "echo", "stable": "1", "canary": {"version": "2", "weight": 50}}
    assert listed[("echo-slow", "1")]["traffic"]["canary"] is None


def test_rollback_then_promote(served: helpers.Served, admin: httpx.Client) -> None:
    set_traffic(admin, {"canary": {"version": "2", "weight": 30}})
    assert set_traffic(admin, {"canary": None})["canary"] is None
    assert answered_by(served, "echo", 200) == {"1": 200}

    set_traffic(admin, {"canary": {"version": "2", "weight": 30}})
    assert set_traffic(admin, {"stable": "2", "canary": None}) == {
        "model": "echo", "stable": "2", "canary": None}
    assert answered_by(served, "echo", 200) == {"2": 200}
    assert answered_by(served, "echo@1", 20) == {"1": 20}
    listed = httpx.get(f"{served.url}/v1/models", headers=served.headers).json()["data"]
    assert [m["id"] for m in listed].count("echo") == 1

    # Promoting the canary by naming it stable alone drops it as a canary.
    set_traffic(admin, {"stable": "1", "canary": {"version": "2", "weight": 5}})
    assert set_traffic(admin, {"stable": "2"})["canary"] is None
    set_traffic(admin, {"stable": "1"})


def test_v2_readiness_and_metadata_describe_the_stable_version(
    served: helpers.Served, admin: httpx.Client
) -> None:
    """A canary at 100 % that is not ready yet (scaled to zero) does not make the model look
    unready: only inference is drawn, descriptions are of the stable version."""
    created = admin.post("/v1/modelDeployment", json={
        "model": {"name": "echo", "version": "3", "engine": {"kind": "test-echo"}},
        "replicas": 0})
    assert created.status_code == 201, created.text
    try:
        set_traffic(admin, {"stable": "1", "canary": {"version": "3", "weight": 100}})
        for _ in range(20):
            assert admin.get("/v2/models/echo/ready").status_code == 200
        assert admin.get("/v2/models/echo/versions/3/ready").json()["phase"] == "Pending"
        assert admin.get("/v2/models/echo").json()["versions"] == ["1", "2", "3"]
    finally:
        set_traffic(admin, {"stable": "1", "canary": None})
        assert admin.delete(f"/v1/modelDeployment/{created.json()['id']}").status_code == 200


@pytest.mark.parametrize(("model", "body", "status", "code", "param"), [
    ("nope", {"canary": None}, 404, "model_not_found", "model"),
    ("echo", {"canary": {"version": "9", "weight": 10}}, 400, "version_not_found",
     "canary.version"),
    ("echo", {"stable": "9"}, 400, "version_not_found", "stable"),
    ("echo", {"canary": {"version": "2", "weight": 101}}, 400, None, "canary.weight"),
    ("echo", {"canary": {"version": "2", "weight": -1}}, 400, None, "canary.weight"),
    ("echo", {"canary": {"version": "1", "weight": 10}}, 400, "invalid_traffic", "canary"),
    ("echo", {"canary": {"version": "2"}}, 400, None, "canary"),
    ("echo", {"canary": {"version": "2", "weight": 5}, "weigth": 1}, 400, None, None),
])
def test_the_traffic_api_refuses_what_cannot_be_routed(
    admin: httpx.Client, model: str, body: dict[str, Any], status: int, code: str | None,
    param: str | None,
) -> None:
    before = admin.get("/admin/models/echo/traffic").json()
    refused = admin.put(f"/admin/models/{model}/traffic", json=body)
    assert refused.status_code == status, refused.text
    error = refused.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert error["message"]
    if code is not None:
        assert error["code"] == code
    if param is not None:
        assert error["param"] == param
    assert admin.get("/admin/models/echo/traffic").json() == before


def test_the_traffic_api_needs_an_admin(served: helpers.Served, admin: httpx.Client) -> None:
    assert httpx.get(f"{served.url}/admin/models/echo/traffic").status_code == 401
    unknown = admin.get("/admin/models/nope/traffic")
    assert unknown.status_code == 404
    assert unknown.json()["error"]["code"] == "model_not_found"
    broken = admin.put("/admin/models/echo/traffic", content=b"{not json")
    assert broken.status_code == 400


def test_a_split_survives_a_restart(tmp_path: Path) -> None:
    models = tmp_path / "models.yaml"  # no replicas, so that both stops are quick
    models.write_text("models:\n"
                      "  - {name: echo, engine: {kind: test-echo}, replicas: {min: 0}}\n"
                      "  - {name: echo, version: '2', engine: {kind: test-echo}, "
                      "replicas: {min: 0}}\n")
    data = {"UPLION_DATA_DIR": str(tmp_path / "data")}
    deployed = {"name": "dep", "engine": {"kind": "test-echo"}}
    with helpers.platform(tmp_path, models, env=data) as first, \
            httpx.Client(base_url=first.url, headers=first.headers, timeout=30) as admin:
        ids = {}
        for version in ("1", "2", "3"):
            created = admin.post("/v1/modelDeployment", json={
                "model": {**deployed, "version": version}, "replicas": 0})
            assert created.status_code == 201, created.text
            ids[version] = created.json()["id"]
        set_traffic(admin, {"stable": "2", "canary": {"version": "1", "weight": 5}})
        set_traffic(admin, {"canary": {"version": "2", "weight": 25}}, model="dep")
        assert admin.delete(f"/v1/modelDeployment/{ids['1']}").status_code == 200
        assert admin.get("/admin/models/dep/traffic").json() == {  # the stable went
            "model": "dep", "stable": "3", "canary": {"version": "2", "weight": 25}}
    with helpers.platform(tmp_path, models, env=data) as second, \
            httpx.Client(base_url=second.url, headers=first.headers, timeout=30) as admin:
        assert admin.get("/admin/models/echo/traffic").json() == {
            "model": "echo", "stable": "2", "canary": {"version": "1", "weight": 5}}
        assert admin.get("/admin/models/dep/traffic").json() == {
            "model": "dep", "stable": "3", "canary": {"version": "2", "weight": 25}}
    assert "not restored" not in second.log.read_text()
