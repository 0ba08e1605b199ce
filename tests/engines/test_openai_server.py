"""The ``openai-server`` engine and its ``vllm`` preset, with real servers as the child: ``uplion
run`` itself (relaying chat and completions, a crash mid-answer through a whole worker) and the
standard library's HTTP server over a static ``/v1/models`` (start, crash, stop, orphans)."""

from __future__ import annotations

import asyncio
import json
import os
import select
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import openai
import pytest
import pytest_asyncio

from tests import helpers
from tests.engines import static_server
from tests.ports import free_port
from uplion import protocol
from uplion.broker.memory import MemoryBroker
from uplion.models import EngineSpec, ModelSpec
from uplion.worker import Worker, engines
from uplion.worker.engines import base
from uplion.worker.engines.openai_server import OpenAIServerEngine

TOKEN_ENV = "UPLION_TEST_CHILD_TOKEN"
REPO = Path(__file__).parents[2]
CHILD_MODELS = """\
models:
  - name: echo
    engine: {kind: test-echo}
    concurrency: 8
  - name: echo-slow
    engine: {kind: test-echo, options: {token_delay_s: 0.2}}
    concurrency: 2
"""


@dataclass(frozen=True)
class Store:
    """A bootstrapped account store for ``uplion run`` children, and its admin's token."""

    data: Path
    token: str


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Store:
    tmp = tmp_path_factory.mktemp("store")
    data = tmp / "data"
    return Store(data, helpers.bootstrap_store(tmp, {"UPLION_DATA_DIR": str(data)}))


@pytest.fixture(scope="module")
def child_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("models") / "models.yaml"
    path.write_text(CHILD_MODELS)
    return path


def uplion_run(models: Path, data: Path, **options: Any) -> dict[str, Any]:
    """openai-server options running ``uplion run`` on ``models`` as the child."""
    return {
        "command": [sys.executable, "-m", "uplion", "run", "--models", str(models),
                    "--host", "{host}", "--port", "{port}"],
        "env": {"UPLION_DATA_DIR": str(data), "UPLION_LOG_LEVEL": "warning",
                "PYTHONPATH": str(REPO / "src")},
        "api_key_env": TOKEN_ENV, "ready_timeout_s": 60, **options,
    }


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def relay(store: Store, child_models: Path) -> AsyncIterator[OpenAIServerEngine]:
    """One engine over one ``uplion run`` child for the relay tests. It is loaded while the
    environment names a proxy that does not exist: the child, on loopback, is reached directly."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(TOKEN_ENV, store.token)
        patch.setenv("HTTP_PROXY", f"http://127.0.0.1:{free_port()}")
        engine = engines.create(EngineSpec(
            kind="openai-server", options=uplion_run(child_models, store.data)
        ))
        assert isinstance(engine, OpenAIServerEngine)
        await engine.load()
        patch.delenv("HTTP_PROXY")
        try:
            yield engine
        finally:
            await engine.close()


@pytest_asyncio.fixture(loop_scope="module")
async def direct(
    relay: OpenAIServerEngine, store: Store
) -> AsyncIterator[openai.AsyncOpenAI]:
    """The ``openai`` client, talking to the child directly."""
    async with openai.AsyncOpenAI(base_url=f"{relay.url}/v1", api_key=store.token) as client:
        yield client


async def collect(deltas: AsyncIterator[base.TextDelta]) -> list[base.TextDelta]:
    return [delta async for delta in deltas]


def text(deltas: list[base.TextDelta]) -> str:
    return "".join(delta.text for delta in deltas)


@pytest.mark.asyncio(loop_scope="module")
async def test_relays_chat_as_the_child_answers_it(
    relay: OpenAIServerEngine, direct: openai.AsyncOpenAI
) -> None:
    assert (relay.model, relay.info.serves, relay.info.device) == (
        "echo", "text-generation", "external"
    )
    messages = [{"role": "user", "content": "one two three four five"}]
    relayed = await collect(relay.chat(messages, base.GenerationParams(max_tokens=3)))

    answer = await direct.chat.completions.create(
        model="echo", messages=[{"role": "user", "content": "one two three four five"}],
        max_tokens=3,
    )
    stream = await direct.chat.completions.create(
        model="echo", messages=[{"role": "user", "content": "one two three four five"}],
        max_tokens=3, stream=True,
    )
    pieces = [chunk.choices[0].delta.content async for chunk in stream
              if chunk.choices and chunk.choices[0].delta.content]

    assert [delta.text for delta in relayed[:-1]] == pieces == ["one", " two", " three"]
    assert text(relayed) == answer.choices[0].message.content == "one two three"
    final = relayed[-1]
    assert final.finish_reason == answer.choices[0].finish_reason == "length"
    assert answer.usage is not None
    assert final.usage is not None
    assert (final.usage.prompt_tokens, final.usage.completion_tokens) == (
        answer.usage.prompt_tokens, answer.usage.completion_tokens
    )


@pytest.mark.asyncio(loop_scope="module")
async def test_relays_completions_as_the_child_answers_them(
    relay: OpenAIServerEngine, direct: openai.AsyncOpenAI
) -> None:
    relayed = await collect(relay.complete("alpha beta gamma", base.GenerationParams()))
    answer = await direct.completions.create(model="echo", prompt="alpha beta gamma")
    assert text(relayed) == answer.choices[0].text == "alpha beta gamma"
    assert relayed[-1].finish_reason == answer.choices[0].finish_reason == "stop"
    assert relayed[-1].usage is not None
    assert answer.usage is not None
    assert relayed[-1].usage.total_tokens == answer.usage.total_tokens


@pytest.mark.asyncio(loop_scope="module")
async def test_a_request_the_child_refuses_is_the_clients_error(
    relay: OpenAIServerEngine,
) -> None:
    with pytest.raises(base.EngineError) as refused:
        await collect(relay.chat([{"role": "wizard", "content": "hi"}], base.GenerationParams()))
    assert refused.value.error.status == 400
    assert "messages[0].role" in (refused.value.error.param or refused.value.error.message)
    assert relay.health() == base.EngineHealth()


# -- start, crash, stop, with the standard library's HTTP server as the child -----------------


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return static_server.write_root(tmp_path / "www", [
        {"id": "tiny-llm", "object": "model", "max_model_len": 2048},
        {"id": "other", "object": "model"},
    ])


@pytest.fixture
async def started() -> AsyncIterator[list[OpenAIServerEngine]]:
    """Engines a test loads; closed at its end."""
    made: list[OpenAIServerEngine] = []
    yield made
    for engine in made:
        await engine.close()


async def load(made: list[OpenAIServerEngine], options: dict[str, Any],
               path: Path | None = None) -> OpenAIServerEngine:
    engine = engines.create(EngineSpec(kind="openai-server", options=options), path)
    assert isinstance(engine, OpenAIServerEngine)
    made.append(engine)
    await engine.load()
    return engine


def gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def exits_within(pidfd: int, timeout: float) -> bool:
    """Whether the process behind ``pidfd`` exits within ``timeout`` (no need to be its parent)."""
    readable, _, _ = select.select([pidfd], [], [], timeout)
    return bool(readable)


async def test_model_and_context_length_come_from_the_server(
    root: Path, started: list[OpenAIServerEngine]
) -> None:
    engine = await load(started, {"command": static_server.command(root)})
    assert (engine.model, engine.info.context_length) == ("tiny-llm", 2048)
    other = await load(started, {"command": static_server.command(root), "model": "other",
                                 "serves": "embedding"})
    assert (other.model, other.info.context_length, other.info.serves) == (
        "other", None, "embedding"
    )


async def test_a_server_that_exits_at_once_fails_to_start_with_its_output(
    started: list[OpenAIServerEngine],
) -> None:
    command = [sys.executable, "-c", "import sys; print('boom'); sys.exit(3)"]
    with pytest.raises(base.Unrecoverable) as failed:
        await load(started, {"command": command})
    assert failed.value.reason == "ServerFailedToStart"
    assert "exited with status 3" in failed.value.message
    assert failed.value.message.endswith("boom")


async def test_a_server_never_ready_fails_in_time_and_is_stopped(
    started: list[OpenAIServerEngine],
) -> None:
    command = [sys.executable, "-c",
               "import time; print('loading weights', flush=True); time.sleep(600)"]
    with pytest.raises(base.Unrecoverable) as failed:
        await load(started, {"command": command, "ready_timeout_s": 0.5})
    assert failed.value.reason == "ServerFailedToStart"
    assert "did not become ready in 0.5 s" in failed.value.message
    assert "loading weights" in failed.value.message
    pid = started[0].pid
    assert pid is not None
    assert gone(pid)


async def test_a_server_refusing_the_key_fails_at_once(
    root: Path, started: list[OpenAIServerEngine]
) -> None:
    with pytest.raises(base.Unrecoverable) as failed:
        await load(started, {"command": static_server.command(root, status=401)})
    assert failed.value.reason == "ServerFailedToStart"
    assert "answered 401 at /v1/models" in failed.value.message
    assert "api_key_env" in failed.value.message


async def test_a_command_not_installed_is_named(started: list[OpenAIServerEngine]) -> None:
    with pytest.raises(base.Unrecoverable) as failed:
        await load(started, {"command": "no-such-server --port {port}"})
    assert failed.value.reason == "ServerFailedToStart"
    assert "no-such-server is not installed" in failed.value.message


async def test_a_server_killed_after_start_is_a_crash_with_its_last_lines(
    root: Path, started: list[OpenAIServerEngine]
) -> None:
    engine = await load(started, {"command": static_server.command(root)})
    assert engine.health() == base.EngineHealth()
    assert engine.process is not None
    assert engine.pid is not None
    os.kill(engine.pid, signal.SIGKILL)
    async with asyncio.timeout(10):
        await engine.process.exited.wait()
    with pytest.raises(base.Unrecoverable) as crashed:
        engine.health()
    assert crashed.value.reason == "ServerCrashed"
    assert "was killed by signal 9 (SIGKILL)" in crashed.value.message
    assert '"GET /v1/models HTTP/1.1" 200' in crashed.value.message
    with pytest.raises(base.Unrecoverable, match="SIGKILL"):
        await collect(engine.chat([{"role": "user", "content": "hi"}], base.GenerationParams()))


async def test_close_leaves_nothing_of_the_server(
    root: Path, started: list[OpenAIServerEngine]
) -> None:
    # The server starts a helper of its own first; closing must stop it too.
    server = " ".join(static_server.command(root))
    command = ["sh", "-c", f"sleep 600 & echo helper $!; exec {server}"]
    engine = await load(started, {"command": command})
    assert engine.process is not None
    assert engine.pid is not None
    helper = int(next(line.split()[1] for line in engine.process.tail()
                      if line.startswith("helper ")))
    helper_fd = os.pidfd_open(helper)
    try:
        await engine.close()
        assert gone(engine.pid)
        assert exits_within(helper_fd, 10)
    finally:
        os.close(helper_fd)


def test_a_server_outlives_no_killed_worker(root: Path) -> None:
    """The worker is SIGKILLed (no close runs): the kernel stops its server all the same."""
    parent = subprocess.Popen(
        [sys.executable, "-m", "tests.engines.server_parent", str(root)], cwd=REPO,
        stdout=subprocess.PIPE, env={**os.environ, "PYTHONPATH": str(REPO / "src")},
    )
    try:
        assert parent.stdout is not None
        line = parent.stdout.readline()
        assert line.strip().isdigit(), f"the stand-in worker failed: {line!r}"
        server_fd = os.pidfd_open(int(line))
        try:
            parent.kill()
            parent.wait(10)
            assert exits_within(server_fd, 10)
        finally:
            os.close(server_fd)
    finally:
        parent.kill()
        parent.wait()
        assert parent.stdout is not None
        parent.stdout.close()


def test_options_are_checked_when_the_engine_is_made(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="option 'command' is required"):
        engines.create(EngineSpec(kind="openai-server"))
    with pytest.raises(ValueError, match="option 'command' must be a list of words"):
        engines.create(EngineSpec(kind="openai-server", options={"command": {"vllm": 1}}))
    with pytest.raises(ValueError, match="option 'env' must be a mapping"):
        engines.create(EngineSpec(kind="openai-server", options={"command": "x", "env": ["A"]}))
    with pytest.raises(ValueError, match="option 'serves' must be one of"):
        engines.create(EngineSpec(kind="openai-server", options={"command": "x",
                                                                 "serves": "tensor"}))
    with pytest.raises(ValueError, match="has no option 'comand'"):
        engines.create(EngineSpec(kind="openai-server", options={"comand": "x"}))
    with pytest.raises(ValueError, match="give the model a source"):
        engines.create(EngineSpec(kind="vllm"))


async def test_path_in_a_command_needs_a_source(started: list[OpenAIServerEngine]) -> None:
    with pytest.raises(base.Unrecoverable) as failed:
        await load(started, {"command": "server --model {path} --port {port}"})
    assert failed.value.reason == "InvalidConfig"
    assert "uses {path} but the model has no source" in failed.value.message


# -- the vllm preset -----------------------------------------------------------------------------


async def test_vllm_not_installed_is_a_clear_failure(tmp_path: Path) -> None:
    engine = engines.create(
        EngineSpec(kind="vllm", options={"env": {"PATH": str(tmp_path)}}), tmp_path
    )
    with pytest.raises(base.Unrecoverable) as failed:
        await engine.load()
    assert failed.value.reason == "ServerFailedToStart"
    assert failed.value.message.startswith("vllm is not installed in this image")
    await engine.close()


FAKE_VLLM = """#!{python}
# Stands in for vLLM's command: records how it was called, then serves as vLLM would list it.
import json, os, sys
from pathlib import Path
sys.path.insert(0, {tests!r})
import static_server
args = sys.argv[1:]
served = args[args.index("--served-model-name") + 1]
with open({record!r}, "w") as out:
    json.dump({{"args": args, "key": os.environ.get("VLLM_API_KEY"),
               "gpus": os.environ.get("CUDA_VISIBLE_DEVICES")}}, out)
root = static_server.write_root(Path({www!r}), [{{"id": served, "max_model_len": 512}}])
static_server.main(["", args[args.index("--host") + 1], args[args.index("--port") + 1],
                    str(root), "200"])
"""


async def test_vllm_preset_command_line(tmp_path: Path, started: list[OpenAIServerEngine]) -> None:
    """A stand-in ``vllm`` on PATH records the command line and environment the preset gives."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    record = tmp_path / "called.json"
    fake = bin_dir / "vllm"
    fake.write_text(FAKE_VLLM.format(python=sys.executable, tests=str(Path(__file__).parent),
                                     record=str(record), www=str(tmp_path / "www")))
    fake.chmod(0o755)
    weights = tmp_path / "weights"
    weights.mkdir()
    engine = engines.create(EngineSpec(kind="vllm", device="cuda:1", options={
        "model": "tiny", "gpu_memory_utilization": 0.5, "max_model_len": 512,
        "tensor_parallel_size": 1, "dtype": "bfloat16", "args": ["--enforce-eager"],
        "env": {"PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"},
    }), weights)
    assert isinstance(engine, OpenAIServerEngine)
    started.append(engine)
    await engine.load()

    called = json.loads(record.read_text())
    port = engine.url.rsplit(":", 1)[1]
    assert called["args"] == [
        "serve", str(weights), "--host", "127.0.0.1", "--port", port,
        "--served-model-name", "tiny", "--gpu-memory-utilization", "0.5",
        "--max-model-len", "512", "--tensor-parallel-size", "1", "--dtype", "bfloat16",
        "--enforce-eager",
    ]
    assert called["key"]
    assert called["gpus"] == "1"
    assert (engine.model, engine.info.platform, engine.info.device,
            engine.info.context_length) == ("tiny", "vllm", "cuda:1", 512)


# -- through a whole worker ------------------------------------------------------------------------


async def test_a_worker_reports_its_model_failed_when_the_server_dies(
    store: Store, child_models: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A streamed answer is under way when the server is killed: the client gets a 503 that
    names the crash, and the worker announces the model Failed with the server's last lines."""
    data = shutil.copytree(store.data, tmp_path / "data")  # a child of its own
    monkeypatch.setenv(TOKEN_ENV, store.token)
    spec = ModelSpec(name="relayed", engine=EngineSpec(
        kind="openai-server", options=uplion_run(child_models, data, model="echo-slow"),
    ))
    engine = engines.create(spec.engine)
    assert isinstance(engine, OpenAIServerEngine)
    source = MemoryBroker()
    await source.start()
    chunks: list[protocol.Chunk] = []
    first, ended, failed = asyncio.Event(), asyncio.Event(), asyncio.Event()
    statuses: list[protocol.WorkerStatus] = []

    def on_chunk(chunk: protocol.Chunk) -> None:
        chunks.append(chunk)
        (ended if chunk.terminal else first).set()

    def on_status(status: protocol.WorkerStatus) -> None:
        if status.state == "failed":
            statuses.append(status)
            failed.set()

    try:
        await engine.load()
        await source.subscribe_replies("gw", on_chunk)
        await source.subscribe_status(on_status)
        worker = Worker(source, spec, engine)
        running = asyncio.create_task(worker.run())
        now = time.time()
        await source.publish(worker.topic, protocol.Task(
            id="t1", model="relayed", version="1", protocol=protocol.Protocol.OPENAI_CHAT,
            payload={"model": "relayed", "messages": [
                {"role": "user", "content": "a b c d e f g h i j k l"}]},
            stream=True, deadline=now + 60, reply_to="gw", created=now,
        ))
        async with asyncio.timeout(30):
            await first.wait()
            assert engine.pid is not None
            os.kill(engine.pid, signal.SIGKILL)
            await ended.wait()
            await failed.wait()
            await running
        error = chunks[-1].error
        assert error is not None
        assert (error.status, error.code) == (503, "model_failed")
        assert "(ServerCrashed)" in error.message
        assert "SIGKILL" in error.message
        assert statuses[0].reason == "ServerCrashed"
        assert worker.failure is not None
        assert worker.failure.reason == "ServerCrashed"
    finally:
        await engine.close()
        await source.close()
