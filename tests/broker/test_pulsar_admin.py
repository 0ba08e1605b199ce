"""The Pulsar admin REST client: backlogs read from topic stats served over real HTTP."""

from __future__ import annotations

import time
from collections.abc import Iterator

import msgspec
import pytest

from tests.broker.pulsar_stats_server import StatsServer, topic_stats
from tests.ports import free_port
from uplion.broker import base, pulsar_admin, pulsar_names

TOPIC = "model.smollm2@1"
STATS = "/admin/v2/persistent/acme/models/model.smollm2_v1/stats"


@pytest.fixture
def server() -> Iterator[StatsServer]:
    with StatsServer() as running:
        yield running


def admin_for(url: str, timeout_s: float = 5.0) -> pulsar_admin.Admin:
    return pulsar_admin.Admin(pulsar_names.parse_url(
        f"pulsar://127.0.0.1:6650?admin={url}&tenant=acme&namespace=models"
        f"&operation_timeout_s={timeout_s}"
    ))


def test_backlog_parsing_of_a_stats_document() -> None:
    document = msgspec.json.encode(topic_stats({"workers": (7, 3), "audit": (100, 0)}))
    assert pulsar_admin.backlog_from_stats(document, "workers") == base.Backlog(4, 3)
    assert pulsar_admin.backlog_from_stats(document, "absent") == base.Backlog(0, 0)
    # unackedMessages can run ahead of msgBacklog for a moment (an ack counted first)
    racing = msgspec.json.encode(topic_stats({"workers": (1, 2)}))
    assert pulsar_admin.backlog_from_stats(racing, "workers") == base.Backlog(0, 2)
    with pytest.raises(pulsar_admin.AdminError, match="not topic stats"):
        pulsar_admin.backlog_from_stats(b'{"subscriptions": {"workers": {"msgBacklog": "x"}}}',
                                        "workers")
    with pytest.raises(pulsar_admin.AdminError, match="not topic stats"):
        pulsar_admin.backlog_from_stats(b"<html>proxy error</html>", "workers")


async def test_backlog_from_the_admin_api(server: StatsServer) -> None:
    server.serve(STATS, topic_stats({"workers": (12, 4), "other": (99, 99)}))
    admin = admin_for(server.url)
    assert await admin.backlog(TOPIC, "workers") == base.Backlog(waiting=8, in_flight=4)
    assert await admin.backlog(TOPIC, "nobody") == base.Backlog(waiting=0, in_flight=0)
    assert await admin.backlog("model.unknown@1", "workers") == base.Backlog(0, 0)
    assert server.requests == [
        STATS, STATS, "/admin/v2/persistent/acme/models/model.unknown_v1/stats"]
    await admin.close()


async def test_a_redirect_to_the_owning_broker_is_followed(server: StatsServer) -> None:
    with StatsServer() as owner:
        owner.serve(STATS, topic_stats({"workers": (2, 1)}))
        server.redirect_to = owner.url
        admin = admin_for(server.url)
        assert await admin.backlog(TOPIC, "workers") == base.Backlog(waiting=1, in_flight=1)
        await admin.close()
    assert server.requests == owner.requests == [STATS]


async def test_admin_errors_are_clear(server: StatsServer) -> None:
    server.serve(STATS, b"not json")
    admin = admin_for(server.url)
    with pytest.raises(pulsar_admin.AdminError, match="not topic stats"):
        await admin.backlog(TOPIC, "workers")
    server.fail_status = 500
    with pytest.raises(pulsar_admin.AdminError, match=r"answered 500: .*Internal server error"):
        await admin.backlog(TOPIC, "workers")
    await admin.close()

    closed = admin_for(f"http://127.0.0.1:{free_port()}")
    with pytest.raises(pulsar_admin.AdminError, match="cannot be reached"):
        await closed.backlog(TOPIC, "workers")
    await closed.close()


async def test_a_silent_admin_api_fails_within_the_operation_timeout(server: StatsServer) -> None:
    server.serve(STATS, topic_stats({"workers": (1, 0)}))
    server.delay_s = 3.0
    admin = admin_for(server.url, timeout_s=0.3)
    started = time.monotonic()
    with pytest.raises(pulsar_admin.AdminError, match="cannot be reached"):
        await admin.backlog(TOPIC, "workers")
    assert time.monotonic() - started < 2.5
    await admin.close()
