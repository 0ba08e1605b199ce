"""What of the Pulsar broker runs without a Pulsar server: choosing it, failing fast and clearly,
its backlog over the admin API, and agreeing with the operator's KEDA trigger on every name.

The real Pulsar client runs here (against servers that are not Pulsar); the broker contract
tests in ``test_contract.py`` run it against a real Pulsar when ``PULSAR_URL`` is set.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator

import pytest

from tests.broker.pulsar_stats_server import StatsServer, topic_stats
from tests.operator import examples
from tests.ports import free_port
from uplion import broker, protocol
from uplion.broker import base, pulsar, pulsar_names
from uplion.operator import manifests


@pytest.fixture
async def silent_port() -> AsyncIterator[int]:
    """A port that accepts connections and never says a word (not a Pulsar broker)."""
    async def hold(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()
        writer.close()

    server = await asyncio.start_server(hold, "127.0.0.1", 0)
    yield int(server.sockets[0].getsockname()[1])
    server.close()
    await server.wait_closed()


@pytest.fixture
def stats() -> Iterator[StatsServer]:
    with StatsServer() as server:
        yield server


def test_connect_picks_pulsar_for_its_schemes() -> None:
    plain = broker.connect("pulsar://broker:6650?namespace=models")
    assert isinstance(plain, pulsar.PulsarBroker)
    assert plain.settings.namespace == "models"
    secure = broker.connect("pulsar+ssl://broker")
    assert isinstance(secure, pulsar.PulsarBroker)
    assert secure.settings.hosts == (("broker", 6651),)
    with pytest.raises(ValueError, match="unknown Pulsar URL option 'visibility_timeout_s'"):
        broker.connect("pulsar://broker:6650?visibility_timeout_s=5")
    with pytest.raises(ValueError, match="pulsar://host:6650"):
        broker.connect("kafka://broker:9092")


async def test_a_closed_port_fails_at_once_and_says_where() -> None:
    port = free_port()
    instance = broker.connect(f"pulsar://127.0.0.1:{port}?operation_timeout_s=5")
    started = time.monotonic()
    with pytest.raises(ConnectionError, match=rf"cannot connect to Pulsar: 127\.0\.0\.1:{port} "):
        await instance.start()
    assert time.monotonic() - started < 2
    await instance.close()


async def test_a_server_that_is_not_pulsar_fails_within_the_operation_timeout(
    silent_port: int,
) -> None:
    instance = broker.connect(f"pulsar://127.0.0.1:{silent_port}?operation_timeout_s=1")
    started = time.monotonic()
    with pytest.raises(ConnectionError, match=r"did not serve a lookup in public/default "
                                              r"within 1 s \(\d+ \w+\): is it a Pulsar"):
        await instance.start()
    assert time.monotonic() - started < 10
    await instance.close()


async def test_using_it_before_start_or_after_close_is_refused() -> None:
    instance = pulsar.PulsarBroker("pulsar://127.0.0.1:6650")
    with pytest.raises(RuntimeError, match="not started"):
        await instance.publish("model.x@1", _task())
    with pytest.raises(RuntimeError, match="not started"):
        await instance.consumer("model.x@1", protocol.WORKER_GROUP, "w1").take(1, timeout=0.1)
    await instance.close()
    with pytest.raises(RuntimeError, match="closed"):
        await instance.backlog("model.x@1", protocol.WORKER_GROUP)
    with pytest.raises(RuntimeError, match="closed"):
        await instance.start()


async def test_backlog_comes_from_the_admin_api(stats: StatsServer) -> None:
    stats.serve("/admin/v2/persistent/acme/models/model.smollm2_v1/stats",
                topic_stats({protocol.WORKER_GROUP: (10, 3)}))
    instance = broker.connect(f"pulsar://127.0.0.1:6650?admin={stats.url}&tenant=acme"
                              "&namespace=models")
    topic = protocol.topic_for("smollm2", "1")
    assert await instance.backlog(topic, protocol.WORKER_GROUP) == base.Backlog(7, 3)
    assert await instance.backlog("model.other@1", protocol.WORKER_GROUP) == base.Backlog(0, 0)
    await instance.close()


async def test_an_unreachable_admin_api_is_a_broker_outage() -> None:
    instance = broker.connect(f"pulsar://127.0.0.1:6650?admin=http://127.0.0.1:{free_port()}"
                              "&operation_timeout_s=2")
    with pytest.raises(broker.BrokerUnavailable, match=r"admin API .* cannot be reached"):
        await instance.backlog("model.x@1", protocol.WORKER_GROUP)
    await instance.close()


def test_the_keda_trigger_and_the_workers_agree_with_the_broker() -> None:
    aimodel = examples.example("upstream")
    trigger = manifests.scaled_object(aimodel, "models")["spec"]["triggers"][0]
    container = manifests.worker_deployment(aimodel, "models")["spec"]["template"]["spec"][
        "containers"][0]
    env = {e["name"]: e.get("value") for e in container["env"]}
    workers = pulsar.PulsarBroker(env["UPLION_BROKER_URL"])
    spec = aimodel["spec"]
    topic = protocol.topic_for(spec["name"], spec["version"])
    metadata = trigger["metadata"]
    assert metadata["topic"] == workers.settings.topic(topic)
    assert metadata["subscription"] == protocol.WORKER_GROUP
    assert metadata["adminURL"] == workers.settings.admin_url
    # KEDA's pulsar scaler asks adminURL + "/admin/v2/persistent/" + topic + "/stats" as is.
    keda_stats_url = (metadata["adminURL"] + "/admin/v2/persistent/"
                      + metadata["topic"].removeprefix("persistent://") + "/stats")
    assert keda_stats_url == workers._admin.stats_url(topic)
    assert pulsar_names.parse_url(env["UPLION_BROKER_URL"]).tenant == spec["broker"].get(
        "tenant", "public")


def _task() -> protocol.Task:
    return protocol.Task(
        id="t1", model="x", version="1", protocol=protocol.Protocol.OPENAI_CHAT,
        payload={"messages": []}, stream=False, deadline=time.time() + 30, reply_to="gw",
        created=time.time(),
    )
