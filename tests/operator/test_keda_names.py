"""KEDA reads backlogs from its own namespace: a short service name in a scaler would resolve
there, not in the AIModel's namespace. The operator qualifies every host it gives KEDA."""

from __future__ import annotations

from typing import Any

import pytest

from tests.operator import examples
from uplion.operator import manifests

NS = examples.NAMESPACE


def trigger_metadata(aimodel: dict[str, Any]) -> list[dict[str, str]]:
    scaled = manifests.scaled_object(aimodel, NS)
    return [trigger["metadata"] for trigger in scaled["spec"]["triggers"]]


@pytest.mark.parametrize(
    ("address", "expected"),
    [
        ("redis-master:6379", f"redis-master.{NS}.svc:6379"),
        ("redis.other:6379", "redis.other:6379"),
        ("redis.other.svc.cluster.local:6380", "redis.other.svc.cluster.local:6380"),
        ("10.0.0.5:6379", "10.0.0.5:6379"),
        ("[fd00::5]:6379", "[fd00::5]:6379"),
    ],
)
def test_redis_scaler_addresses_are_qualified(address: str, expected: str) -> None:
    aimodel = examples.example("s3-source")
    aimodel["spec"]["broker"] = {"kind": "redis", "address": address,
                                 "urlSecretRef": {"name": "s", "key": "k"}}
    assert {m["address"] for m in trigger_metadata(aimodel)} == {expected}


def test_a_plain_redis_url_is_qualified_too() -> None:
    aimodel = examples.example("local")
    aimodel["spec"]["broker"]["url"] = "redis://redis:6379/2"
    assert {m["address"] for m in trigger_metadata(aimodel)} == {f"redis.{NS}.svc:6379"}


@pytest.mark.parametrize(
    ("admin_url", "expected"),
    [
        ("http://pulsar-broker:8080", f"http://pulsar-broker.{NS}.svc:8080"),
        ("http://pulsar-broker.pulsar:8080", "http://pulsar-broker.pulsar:8080"),
        ("https://pulsar.example.com", "https://pulsar.example.com"),
    ],
)
def test_pulsar_admin_urls_are_qualified(admin_url: str, expected: str) -> None:
    aimodel = examples.example("upstream")
    aimodel["spec"]["broker"]["adminUrl"] = admin_url
    assert [m["adminURL"] for m in trigger_metadata(aimodel)] == [expected]
