"""The ``openai-upstream`` engine against a fake provider: pooling, retries, dead keys, failure."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.worker.fake_provider import FakeProvider
from uplion import protocol
from uplion.broker.memory import MemoryBroker
from uplion.models import EngineSpec, ModelSpec
from uplion.worker import Worker, engines
from uplion.worker.engines import base
from uplion.worker.engines.openai_upstream import OpenAIUpstreamEngine

KEYS = {name: f"sk-test-secret-{name}-93f1c07e" for name in "abcd"}
"""Each account's key; distinctive, so that a key leaking into a log is found."""

A_DOWN = base.EngineHealth("degraded", "1 of 2 upstream accounts down: a (401)")

Make = Callable[..., Awaitable[OpenAIUpstreamEngine]]


@pytest.fixture(scope="module")
def served() -> Iterator[FakeProvider]:
    with FakeProvider() as provider:
        yield provider


@pytest.fixture
def provider(served: FakeProvider) -> FakeProvider:
    served.reset()
    return served


@pytest.fixture
async def make(
    provider: FakeProvider, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Make]:
    """Build and load an engine over the named accounts (keys from environment variables, all
    known to the provider unless ``unknown`` names some); closed at the end of the test."""
    made: list[OpenAIUpstreamEngine] = []

    async def build(
        names: str = "ab", concurrency: int = 2, unknown: str = "",
        accounts: list[dict[str, Any]] | None = None, **options: Any,
    ) -> OpenAIUpstreamEngine:
        for name in names:
            monkeypatch.setenv(f"UPLION_TEST_KEY_{name.upper()}", KEYS[name])
            if name not in unknown:
                provider.script(KEYS[name], max_concurrency=concurrency)
        entries = accounts if accounts is not None else [
            {"name": name, "api_key_env": f"UPLION_TEST_KEY_{name.upper()}",
             "max_concurrency": concurrency}
            for name in names
        ]
        engine = engines.create(EngineSpec(kind="openai-upstream", options={
            "base_url": provider.base_url, "model": "fake-model", "accounts": entries,
            "retest_interval_s": 0.3, "timeout_s": 10, **options,
        }))
        assert isinstance(engine, OpenAIUpstreamEngine)
        made.append(engine)
        await engine.load()
        return engine

    yield build
    for engine in made:
        await engine.close()


def user(text: str) -> list[dict[str, Any]]:
    return [{"role": "user", "content": text}]


async def chat(
    engine: base.Engine, text: str = "hello there", **params: Any
) -> list[base.TextDelta]:
    return [delta async for delta in engine.chat(user(text), base.GenerationParams(**params))]


async def eventually(check: Callable[[], bool], timeout: float = 3.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "the condition did not come true in time"
        await asyncio.sleep(0.05)


async def test_streams_delta_by_delta_and_maps_usage(provider: FakeProvider, make: Make) -> None:
    engine = await make("a")
    provider.script(KEYS["a"], chunk_delay_s=0.1)
    started = time.monotonic()
    arrivals: list[float] = []
    deltas: list[base.TextDelta] = []
    async for delta in engine.chat(user("one two three four five"), base.GenerationParams()):
        arrivals.append(time.monotonic() - started)
        deltas.append(delta)
    assert [d.text for d in deltas] == ["one", " two", " three", " four", " five", ""]
    assert deltas[-1].finish_reason == "stop"
    assert deltas[-1].usage == protocol.Usage(prompt_tokens=5, completion_tokens=5)
    # Passed through as they come, not buffered: the first arrived long before the last.
    assert arrivals[-1] - arrivals[0] > 0.3


async def test_connections_are_kept_alive(provider: FakeProvider, make: Make) -> None:
    engine = await make("a")
    for _ in range(5):
        assert (await chat(engine))[-1].finish_reason == "stop"
    assert len(provider.ports) == 1


async def test_completion_cut_by_max_tokens(make: Make) -> None:
    engine = await make("a")
    deltas = [d async for d in engine.complete("w x y z", base.GenerationParams(max_tokens=2))]
    assert "".join(d.text for d in deltas) == "w x"
    assert (deltas[-1].finish_reason, deltas[-1].usage) == ("length", protocol.Usage(4, 2))


async def test_usage_estimated_without_a_usage_chunk(provider: FakeProvider, make: Make) -> None:
    engine = await make("a")
    provider.script(KEYS["a"], usage=False)
    deltas = await chat(engine, "one two three")
    assert deltas[-1].usage is not None
    assert deltas[-1].usage.completion_tokens == 3


async def test_embeddings(make: Make) -> None:
    engine = await make("a")
    result = await engine.embed(["a b", "c"])
    assert result.vectors == [[3.0, 2.0, 0.5, -0.5], [1.0, 1.0, 0.5, -0.5]]
    assert result.prompt_tokens == 3


async def test_throughput_grows_with_accounts(provider: FakeProvider, make: Make) -> None:
    async def run(names: str) -> float:
        engine = await make(names, concurrency=2)
        for name in names:
            provider.script(KEYS[name], latency_s=0.1)
        started = time.monotonic()
        answers = await asyncio.gather(*(chat(engine, f"request {n}") for n in range(32)))
        elapsed = time.monotonic() - started
        assert all(deltas[-1].finish_reason == "stop" for deltas in answers)
        return elapsed

    one = await run("a")
    four = await run("abcd")
    print(f"32 requests, 100 ms each, 2 at a time per key: 1 key {one:.2f} s, "
          f"4 keys {four:.2f} s ({one / four:.1f}x)")
    assert one / four >= 2.5
    # The pool kept each key within its concurrency: the provider never had to refuse one.
    assert all(provider.peak[key] <= 2 for key in KEYS.values())
    assert sum(provider.calls.values()) == 64
    assert all(provider.calls[KEYS[name]] >= 4 for name in "bcd")


async def test_a_429_storm_on_one_key_fails_nothing(provider: FakeProvider, make: Make) -> None:
    engine = await make("ab", concurrency=4)
    provider.script(KEYS["a"], status=429, retry_after="1", latency_s=0.02)
    provider.script(KEYS["b"], latency_s=0.05)
    answers = await asyncio.gather(*(chat(engine) for _ in range(16)))
    assert all(deltas[-1].finish_reason == "stop" for deltas in answers)
    assert provider.calls[KEYS["a"]] >= 1
    health = engine.health()
    assert health.state == "degraded"
    assert health.message is not None
    assert health.message.startswith("1 of 2 upstream accounts down: a (cooling ")
    # The storm ends; once the cool-down is over, the account is back.
    provider.script(KEYS["a"], status=None)
    await eventually(lambda: engine.health() == base.EngineHealth())
    before = provider.calls[KEYS["a"]]
    await asyncio.gather(*(chat(engine) for _ in range(8)))
    assert provider.calls[KEYS["a"]] > before


async def test_429_on_every_key_is_a_429(provider: FakeProvider, make: Make) -> None:
    engine = await make("ab", max_attempts=3)
    for name in "ab":
        provider.script(KEYS[name], status=429, retry_after="0.1")
    with pytest.raises(base.EngineError) as raised:
        await chat(engine)
    assert (raised.value.error.status, raised.value.error.code) == (429, "upstream_rate_limited")
    assert sum(provider.calls.values()) == 3


async def test_5xx_is_retried_on_another_account(provider: FakeProvider, make: Make) -> None:
    engine = await make("ab", concurrency=4)
    provider.script(KEYS["a"], status=500)
    answers = await asyncio.gather(*(chat(engine) for _ in range(8)))
    assert all(deltas[-1].finish_reason == "stop" for deltas in answers)
    assert provider.calls[KEYS["a"]] >= 1
    provider.script(KEYS["b"], status=502)
    with pytest.raises(base.EngineError) as raised:
        await chat(engine)
    assert (raised.value.error.status, raised.value.error.code) == (503, "upstream_unavailable")


async def test_connection_errors_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("UPLION_TEST_KEY_A", KEYS["a"])
    unreachable = engines.create(EngineSpec(kind="openai-upstream", options={
        "base_url": "http://127.0.0.1:9/v1", "model": "m", "max_attempts": 3,
        "accounts": [{"name": "a", "api_key_env": "UPLION_TEST_KEY_A"}],
    }))
    await unreachable.load()  # an unreachable provider is not a configuration error
    try:
        started = time.monotonic()
        with pytest.raises(base.EngineError) as raised:
            await chat(unreachable)
        assert raised.value.error.status == 503
        assert time.monotonic() - started < 3
    finally:
        await unreachable.close()


async def test_client_error_is_passed_on_not_retried(provider: FakeProvider, make: Make) -> None:
    engine = await make("ab")
    with pytest.raises(base.EngineError) as raised:
        await chat(engine, temperature=3.0)
    error = raised.value.error
    assert (error.status, error.type, error.param) == (400, "invalid_request_error", "temperature")
    assert error.message == "temperature must be at most 2"
    assert sum(provider.calls.values()) == 1
    assert engine.health() == base.EngineHealth()


async def test_failure_after_output_is_a_502(provider: FakeProvider, make: Make) -> None:
    engine = await make("ab")
    for name in "ab":
        provider.script(KEYS[name], break_after_chunks=2)
    received: list[str] = []

    async def read() -> None:
        async for delta in engine.chat(user("one two three four"), base.GenerationParams()):
            received.append(delta.text)

    with pytest.raises(base.EngineError) as raised:
        await read()
    assert received == ["one", " two"]
    assert (raised.value.error.status, raised.value.error.code) == (502, "upstream_error")
    assert sum(provider.calls.values()) == 1


async def test_invalid_key_is_skipped_and_retested(
    provider: FakeProvider, make: Make, tmp_path: Path
) -> None:
    key_file = tmp_path / "a.key"
    key_file.write_text("sk-wrong-key\n")
    provider.script(KEYS["a"])
    engine = await make("b", accounts=[
        {"name": "a", "api_key_file": str(key_file)},
        {"name": "b", "api_key_env": "UPLION_TEST_KEY_B", "max_concurrency": 2},
    ])
    assert engine.health() == A_DOWN
    await asyncio.gather(*(chat(engine) for _ in range(6)))
    assert provider.calls[KEYS["b"]] == 6
    assert provider.calls["sk-wrong-key"] == 0
    await asyncio.sleep(0.7)
    assert provider.probes["sk-wrong-key"] >= 2  # re-tested in the background
    key_file.write_text(KEYS["a"])
    await eventually(lambda: engine.health() == base.EngineHealth())
    await asyncio.gather(*(chat(engine) for _ in range(6)))
    assert provider.calls[KEYS["a"]] >= 1


async def test_key_refused_while_serving(provider: FakeProvider, make: Make) -> None:
    engine = await make("ab", concurrency=4)
    provider.forget(KEYS["a"])
    probes = provider.probes[KEYS["a"]]
    await chat(engine)  # both idle: "a" comes first, is refused, and "b" answers
    # The refusal was confirmed by a probe with that key before the account was taken out.
    assert provider.probes[KEYS["a"]] == probes + 1
    answers = await asyncio.gather(*(chat(engine) for _ in range(8)))
    assert all(deltas[-1].finish_reason == "stop" for deltas in answers)
    assert provider.calls[KEYS["a"]] == 1  # once refused, the account takes no more requests
    assert engine.health() == A_DOWN
    provider.script(KEYS["a"])
    await eventually(lambda: engine.health() == base.EngineHealth())


async def test_a_refused_request_takes_no_account_down(provider: FakeProvider, make: Make) -> None:
    """An upstream that refuses one request (403) while the key is accepted on ``/models``:
    the request fails, and every account stays in service."""
    engine = await make("ab")
    for name in "ab":
        provider.script(KEYS[name], request_status=403)
    with pytest.raises(base.EngineError) as raised:
        await chat(engine)
    error = raised.value.error
    assert (error.status, error.code) == (502, "upstream_refused")
    assert "(403) although the key of account a is accepted" in error.message
    assert sum(provider.calls.values()) == 1  # not tried again: the refusal is the request's
    assert engine.health() == base.EngineHealth()
    for name in "ab":
        provider.script(KEYS[name], request_status=None)
    assert (await chat(engine))[-1].finish_reason == "stop"


async def test_one_account_model_survives_a_refused_request(
    provider: FakeProvider, make: Make
) -> None:
    engine = await make("a")
    provider.script(KEYS["a"], request_status=401)
    for _ in range(3):
        with pytest.raises(base.EngineError) as raised:
            await chat(engine)
        assert raised.value.error.status == 502
    assert engine.health() == base.EngineHealth()  # never Unrecoverable: the key works
    provider.script(KEYS["a"], request_status=None)
    assert (await chat(engine))[-1].finish_reason == "stop"


async def test_at_most_one_account_is_retired_per_request(
    provider: FakeProvider, make: Make
) -> None:
    engine = await make("abc")
    for name in "abc":
        provider.forget(KEYS[name])
    for expected in (1, 2):
        with pytest.raises(base.EngineError) as raised:
            await chat(engine)
        assert (raised.value.error.status, raised.value.error.code) == (502, "upstream_refused")
        message = engine.health().message
        assert message is not None
        assert message.startswith(f"{expected} of 3 upstream accounts down")
    # The third request retires the last account: now the model cannot serve.
    with pytest.raises(base.Unrecoverable) as unrecoverable:
        await chat(engine)
    assert unrecoverable.value.reason == "AllAccountsUnauthorized"


async def test_all_keys_refused_at_load_is_unrecoverable(make: Make) -> None:
    started = time.monotonic()
    with pytest.raises(base.Unrecoverable) as raised:
        await make("ab", unknown="ab")
    assert raised.value.reason == "AllAccountsUnauthorized"
    assert "a (401), b (401)" in raised.value.message
    assert time.monotonic() - started < 2


async def test_all_keys_refused_while_serving_is_unrecoverable(
    provider: FakeProvider, make: Make
) -> None:
    engine = await make("ab")
    await chat(engine)
    for name in "ab":
        provider.forget(KEYS[name])
    started = time.monotonic()
    with pytest.raises(base.EngineError):  # retires "a"; "b" is confirmed refused too
        await chat(engine)
    with pytest.raises(base.Unrecoverable) as raised:  # retires "b", the last one
        await chat(engine)
    assert raised.value.reason == "AllAccountsUnauthorized"
    assert time.monotonic() - started < 2
    with pytest.raises(base.Unrecoverable):
        engine.health()


async def test_worker_fails_within_seconds_when_every_key_is_refused(
    provider: FakeProvider, make: Make
) -> None:
    engine = await make("ab")
    for name in "ab":
        provider.forget(KEYS[name])
    broker = MemoryBroker()
    chunks: list[protocol.Chunk] = []
    statuses: list[protocol.WorkerStatus] = []
    await broker.subscribe_replies("gw", chunks.append)
    await broker.subscribe_status(statuses.append)
    # One slot: the tasks run in turn, and each retires at most one account.
    spec = ModelSpec(name="m", engine=EngineSpec(kind="openai-upstream"), concurrency=1)
    worker = Worker(broker, spec, engine)
    now = time.time()
    for task_id in ("t1", "t2"):
        await broker.publish(worker.topic, protocol.Task(
            id=task_id, model="m", version="1", protocol=protocol.Protocol.OPENAI_CHAT,
            payload={"model": "m", "messages": user("hi")}, stream=False, deadline=now + 30,
            reply_to="gw", created=now,
        ))
    started = time.monotonic()
    await asyncio.wait_for(worker.run(), 5)
    assert time.monotonic() - started < 3
    assert [(c.kind, c.error.status if c.error else None) for c in chunks] == [
        ("error", 502), ("error", 503)]
    assert statuses[-1].state == "failed"
    assert statuses[-1].reason == "AllAccountsUnauthorized"
    await broker.close()


@pytest.mark.parametrize(("options", "expected"), [
    ({"accounts": []}, "at least one account"),
    ({"base_url": "not a url"}, "'base_url' must be"),
    ({"model": ""}, "'model'"),
    ({"accounts": [{"name": "a", "api_key_env": "UPLION_TEST_UNSET"}]},
     "UPLION_TEST_UNSET is not set"),
    ({"accounts": [{"name": "a", "api_key_file": "/nonexistent/a.key"}]},
     "/nonexistent/a.key cannot be read"),
    ({"accounts": [{"name": "a", "api_key": "sk-inline"}]}, "never written in the models file"),
    ({"accounts": [{"name": "a", "api_key_env": "X", "max_concurency": 2}]},
     "unknown field 'max_concurency'"),
    ({"accounts": [{"name": "a", "api_key_env": "X", "api_key_file": "/k"}]}, "at most one"),
    ({"accounts": [{"name": "a", "api_key_env": "X", "max_concurrency": 0}]},
     "'max_concurrency' must be an integer >= 1"),
    ({"accounts": [{"name": "nokey"}]}, "keys/nokey (one machine)"),
    ({"accounts": [{"name": "nokey"}]}, "engine.secretRefs (cluster)"),
    ({"accounts": [{"name": "../../etc/passwd"}]}, "names a file of the keys folder"),
    ({"accounts": [{"name": ".hidden", "api_key_env": "X"}]}, "names a file of the keys folder"),
])
async def test_invalid_config_is_unrecoverable(
    options: dict[str, Any], expected: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("UPLION_TEST_UNSET", raising=False)
    monkeypatch.setenv("UPLION_DATA_DIR", str(tmp_path))
    engine = engines.create(EngineSpec(kind="openai-upstream", options={
        "base_url": "http://127.0.0.1:9/v1", "model": "m",
        "accounts": [{"name": "a", "api_key_env": "HOME"}], **options,
    }))
    with pytest.raises(base.Unrecoverable) as raised:
        await engine.load()
    assert raised.value.reason == "InvalidConfig"
    assert expected in raised.value.message
    await engine.close()


async def test_an_account_without_a_key_source_reads_the_keys_folder(
    provider: FakeProvider, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("UPLION_DATA_DIR", str(tmp_path))
    (tmp_path / "keys").mkdir()
    (tmp_path / "keys" / "team-a").write_text(KEYS["a"] + "\n")
    provider.script(KEYS["a"])
    engine = engines.create(EngineSpec(kind="openai-upstream", options={
        "base_url": provider.base_url, "model": "fake-model", "accounts": [{"name": "team-a"}],
    }))
    await engine.load()
    try:
        assert (await chat(engine))[-1].finish_reason == "stop"
        assert provider.calls[KEYS["a"]] == 1
    finally:
        await engine.close()


@pytest.mark.parametrize(("options", "expected"), [
    ({"api_key": "x"}, "has no option 'api_key'"),
    ({"base_url": 3}, "'base_url' must be a string"),
    ({"accounts": {"name": "a"}}, "'accounts' must be a list of mappings"),
    ({"max_attempts": 0}, "'max_attempts' must be an integer >= 1"),
])
def test_option_typos_fail_at_create(options: dict[str, Any], expected: str) -> None:
    with pytest.raises(ValueError, match=expected):
        engines.create(EngineSpec(kind="openai-upstream", options=options))


async def test_keys_never_logged(
    provider: FakeProvider, make: Make, caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    caplog.set_level(logging.DEBUG)
    key_file = tmp_path / "c.key"
    key_file.write_text(KEYS["c"])
    engine = await make("ab", unknown="c", accounts=[
        {"name": "a", "api_key_env": "UPLION_TEST_KEY_A"},
        {"name": "b", "api_key_env": "UPLION_TEST_KEY_B"},
        {"name": "c", "api_key_file": str(key_file)},
    ])
    provider.script(KEYS["a"], status=429)
    await asyncio.gather(*(chat(engine) for _ in range(4)))
    provider.script(KEYS["c"])
    await eventually(lambda: "c (401)" not in str(engine.health().message))
    provider.forget(KEYS["b"])
    for name in "ac":
        provider.script(KEYS[name], status=500)
    with pytest.raises(base.EngineError):
        await chat(engine)
    assert any("account c" in record.getMessage() for record in caplog.records)
    assert engine._pool is not None
    shown = caplog.text + repr(engine.__dict__) + repr(engine._pool.accounts)
    assert not [key for key in KEYS.values() if key in shown]
