"""Pulsar names and URLs: the escaping of topic names and the options of a ``pulsar://`` URL."""

from __future__ import annotations

import random
import re

import pytest

from uplion import protocol
from uplion.broker import pulsar_names

PULSAR_NAME = re.compile(r"[A-Za-z0-9._-]+")


def unescape(name: str) -> str:
    """The inverse of ``local_name``, written from the rule in ``pulsar_names``' docstring."""
    out = bytearray()
    index = 0
    while index < len(name):
        char = name[index]
        if char != "_":
            out += char.encode()
            index += 1
        elif name[index + 1] == "_":
            out += b"_"
            index += 2
        elif name[index + 1] == "v":
            out += b"@"
            index += 2
        else:
            out.append(int(name[index + 1:index + 3], 16))
            index += 3
    return out.decode()


@pytest.mark.parametrize(("topic", "local"), [
    ("model.llama-3.1@2", "model.llama-3.1_v2"),
    ("model.gpt-4o-mini@2024-07-18", "model.gpt-4o-mini_v2024-07-18"),
    ("model.a_b@v_1", "model.a__b_vv__1"),
    ("model.x@v-partition-3", "model.x_vv_2dpartition-3"),
    ("uplion.reply.gw-0123abcd", "uplion.reply.gw-0123abcd"),
    ("model.é@1", "model._c3_a9_v1"),
    ("a/b c%", "a_2fb_20c_25"),
])
def test_topics_map_to_plain_pulsar_names(topic: str, local: str) -> None:
    assert pulsar_names.local_name(topic) == local
    assert unescape(local) == topic


def test_distinct_topics_never_share_a_pulsar_topic() -> None:
    tricky = ["a@b", "a_vb", "a_b", "a__b", "a.b@1", "a@b.1", "a-partition-1", "a_2dpartition-1",
              "x/y", "x_2fy", "x_y", "model.a.b@1", "model.a@b.1"]
    rng = random.Random(7)
    alphabet = "ab.-_@/%é-partition"
    generated = {"".join(rng.choices(alphabet, k=rng.randint(1, 12))) for _ in range(3000)}
    topics = set(tricky) | generated
    names = {pulsar_names.local_name(topic) for topic in topics}
    assert len(names) == len(topics)
    for topic in topics:
        local = pulsar_names.local_name(topic)
        assert PULSAR_NAME.fullmatch(local), local
        assert unescape(local) == topic
        assert not re.search(r"-partition-\d+$", local)  # Pulsar would read a partition index


def test_topic_names_are_persistent_in_the_tenant_and_namespace() -> None:
    topic = protocol.topic_for("smollm2", "1")
    assert pulsar_names.topic_name("acme", "models", topic) == (
        "persistent://acme/models/model.smollm2_v1")
    settings = pulsar_names.parse_url("pulsar://b:6650?tenant=acme&namespace=models")
    assert settings.topic(topic) == "persistent://acme/models/model.smollm2_v1"
    with pytest.raises(ValueError, match="empty"):
        pulsar_names.topic_name("acme", "models", "")


def test_url_defaults() -> None:
    settings = pulsar_names.parse_url("pulsar://broker.pulsar:6650")
    assert settings == pulsar_names.Settings(
        service_url="pulsar://broker.pulsar:6650", hosts=(("broker.pulsar", 6650),),
        admin_url="http://broker.pulsar:8080", tenant="public", namespace="default",
        operation_timeout_s=30.0,
    )
    tls = pulsar_names.parse_url("pulsar+ssl://a,b:7000,[::1]")
    assert tls.hosts == (("a", 6651), ("b", 7000), ("::1", 6651))
    assert tls.admin_url == "https://a:8443"
    assert pulsar_names.parse_url("pulsar://[::1]").admin_url == "http://[::1]:8080"


def test_url_options() -> None:
    settings = pulsar_names.parse_url(
        "pulsar://b:6650/?admin=https://admin.example:8443/&tenant=acme&namespace=m-1"
        "&operation_timeout_s=2.5"
    )
    assert settings.service_url == "pulsar://b:6650"
    assert settings.admin_url == "https://admin.example:8443"
    assert (settings.tenant, settings.namespace) == ("acme", "m-1")
    assert settings.operation_timeout_s == 2.5


@pytest.mark.parametrize(("url", "message"), [
    ("kafka://b:9092", "not a Pulsar URL"),
    ("pulsar:/b:6650", "not a Pulsar URL"),
    ("pulsar://", "needs a host"),
    ("pulsar://b:66a0", "bad port"),
    ("pulsar://b:0", "bad port"),
    ("pulsar://[::1:6650", "bad IPv6 host"),
    ("pulsar://user:secret@b:6650", "names brokers only"),
    ("pulsar://b:6650/public/default", "names brokers only"),
    ("pulsar://b:6650?topic=x", "unknown Pulsar URL option 'topic'"),
    ("pulsar://b:6650?tenant=a&tenant=b", "given twice"),
    ("pulsar://b:6650?tenant", "malformed query"),
    ("pulsar://b:6650?tenant=a/b", "bad Pulsar tenant"),
    ("pulsar://b:6650?namespace=", "bad Pulsar namespace"),
    ("pulsar://b:6650?admin=b:8080", "admin must be an http"),
    ("pulsar://b:6650?admin=http://b:8080?x=1", "without query"),
    ("pulsar://b:6650?operation_timeout_s=soon", "not a number"),
    ("pulsar://b:6650?operation_timeout_s=0", "positive"),
    ("pulsar://b:6650?operation_timeout_s=inf", "positive"),
])
def test_bad_urls_say_what_is_wrong(url: str, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        pulsar_names.parse_url(url)


def test_with_options_sets_and_replaces_options() -> None:
    url = pulsar_names.with_options(
        "pulsar://b:6650?tenant=old&operation_timeout_s=5", tenant="acme", namespace="m",
        admin="http://b:8080",
    )
    assert url == ("pulsar://b:6650?operation_timeout_s=5&admin=http://b:8080&namespace=m"
                   "&tenant=acme")
    settings = pulsar_names.parse_url(url)
    assert (settings.tenant, settings.namespace, settings.operation_timeout_s) == ("acme", "m", 5)
    with pytest.raises(ValueError, match="unknown Pulsar URL options"):
        pulsar_names.with_options("pulsar://b:6650", cluster="x")
    with pytest.raises(ValueError, match="bad Pulsar tenant"):
        pulsar_names.with_options("pulsar://b:6650", tenant="a b")
