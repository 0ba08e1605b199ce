"""The AIModels a cluster gateway creates name its own broker, Pulsar options included."""

from __future__ import annotations

import pytest

from uplion.cli import serve


def test_redis_gateway_gives_its_workers_redis() -> None:
    broker = serve.workers_broker("redis://redis:6379/0")
    assert (broker.kind, broker.url, broker.admin_url) == ("redis", "redis://redis:6379/0", None)


def test_pulsar_gateway_gives_its_workers_pulsar_with_admin_tenant_and_namespace() -> None:
    broker = serve.workers_broker(
        "pulsar://pulsar:6650?admin=http://pulsar-admin:8080&tenant=ai&namespace=prod"
    )
    assert (broker.kind, broker.url, broker.admin_url, broker.tenant, broker.namespace) == (
        "pulsar", "pulsar://pulsar:6650", "http://pulsar-admin:8080", "ai", "prod"
    )


def test_pulsar_defaults_follow_the_url() -> None:
    broker = serve.workers_broker("pulsar://pulsar:6650")
    assert (broker.admin_url, broker.tenant, broker.namespace) == (
        "http://pulsar:8080", "public", "default"
    )


def test_a_bad_pulsar_url_is_refused_with_its_reason() -> None:
    with pytest.raises(ValueError, match="unknown"):
        serve.workers_broker("pulsar://pulsar:6650?colour=blue")

