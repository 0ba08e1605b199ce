"""The catalog's traffic split: pinned versions stay pinned, the canary gets its weight's share of
the unpinned requests, and removing a version leaves a split that still routes."""

from __future__ import annotations

import random

import pytest

from uplion.gateway import Catalog
from uplion.models import EngineSpec, ModelSpec
from uplion.models.deployment import TrafficSplit


def spec(version: str, name: str = "chat") -> ModelSpec:
    return ModelSpec(name=name, version=version, engine=EngineSpec(kind="test-echo"))


def picked(catalog: Catalog, model: str, version: str | None = None) -> ModelSpec:
    route = catalog.resolve(model, version)
    assert route is not None
    return route.spec


def test_the_first_version_is_stable_until_the_split_says_otherwise() -> None:
    catalog = Catalog([spec("1"), spec("2"), spec("3")])
    assert catalog.split("chat") == TrafficSplit("1")
    assert picked(catalog, "chat").version == "1"
    catalog.set_split("chat", TrafficSplit("2", "3", 0))
    assert catalog.versions("chat") == ["2", "1", "3"]
    assert {picked(catalog, "chat").version for _ in range(200)} == {"2"}
    assert picked(catalog, "chat@1").version == "1"
    assert picked(catalog, "chat", "3").version == "3"
    assert catalog.resolve("chat@9") is None
    catalog.set_split("chat", TrafficSplit("2", "3", 100))
    assert picked(catalog, "chat").version == "3"
    assert catalog.stable("chat") == catalog.resolve("chat@2")  # never the canary
    assert catalog.stable("chat@3") == catalog.resolve("chat@3")
    assert catalog.stable("chat@9") is None
    assert catalog.stable("nope") is None


def test_the_canary_share_follows_the_weight() -> None:
    draws = random.Random(7)
    catalog = Catalog([spec("1"), spec("2")], draw=draws.random)
    for weight in (0, 10, 50, 100):
        catalog.set_split("chat", TrafficSplit("1", "2", weight))
        picks = [picked(catalog, "chat").version for _ in range(10_000)]
        share = picks.count("2") / len(picks)
        sigma = (weight / 100 * (1 - weight / 100) / len(picks)) ** 0.5
        assert abs(share - weight / 100) <= 4 * sigma
        assert picked(catalog, "chat@1").version == "1"


def test_a_split_names_served_versions_only() -> None:
    catalog = Catalog([spec("1"), spec("2")])
    with pytest.raises(LookupError):
        catalog.set_split("nope", TrafficSplit("1"))
    with pytest.raises(ValueError, match="no version `7`"):
        catalog.set_split("chat", TrafficSplit("1", "7", 5))
    with pytest.raises(ValueError, match=r"within 0\.\.100"):
        TrafficSplit("1", "2", 101)
    with pytest.raises(ValueError, match="must differ"):
        TrafficSplit("2", "2", 10)
    with pytest.raises(ValueError, match="needs a canary"):
        TrafficSplit("1", None, 10)
    assert catalog.split("chat") == TrafficSplit("1")


def test_removing_a_version_keeps_a_routable_split() -> None:
    catalog = Catalog([spec("1"), spec("2"), spec("3")])
    catalog.set_split("chat", TrafficSplit("1", "2", 30))
    catalog.remove("chat", "2")  # the canary goes: everything to the stable version
    assert catalog.split("chat") == TrafficSplit("1")

    catalog.set_split("chat", TrafficSplit("1", "3", 30))
    catalog.remove("chat", "1")  # the stable goes: the first other version takes over
    assert catalog.split("chat") == TrafficSplit("3")  # only the canary was left besides it

    catalog.add(spec("4"))
    catalog.set_split("chat", TrafficSplit("3", "4", 20))
    catalog.add(spec("5"))
    catalog.remove("chat", "3")
    assert catalog.split("chat") == TrafficSplit("5", "4", 20)
    catalog.remove("chat", "4")
    catalog.remove("chat", "5")
    assert catalog.split("chat") is None
    assert catalog.resolve("chat") is None


def test_replacing_a_version_keeps_the_split() -> None:
    catalog = Catalog([spec("1"), spec("2")], draw=lambda: 0.0)
    catalog.set_split("chat", TrafficSplit("1", "2", 1))
    catalog.replace(spec("2").model_copy(update={"concurrency": 9}))
    assert picked(catalog, "chat").concurrency == 9


def test_a_split_reads_back_from_json() -> None:
    for split in (TrafficSplit("1"), TrafficSplit("1", "2", 10)):
        assert TrafficSplit.from_json(split.as_json()) == split
    assert TrafficSplit("1", "2", 10).as_json() == {
        "stable": "1", "canary": {"version": "2", "weight": 10}}
