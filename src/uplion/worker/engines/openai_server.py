"""``openai-server`` and ``vllm``: start an OpenAI-compatible server as the worker's child, and
relay to it through the ``openai-upstream`` engine.

Options of ``openai-server``: ``command`` (a list of words, or one string split like a shell's),
in which ``{path}`` is the fetched artifact, ``{port}`` the port, ``{host}`` the loopback address
and ``{api_key}`` the key uplion sends; ``port`` (default: a free loopback port, picked at load);
``ready_path`` (default ``/v1/models``), polled until it answers 200; ``ready_timeout_s`` (default
600); ``model`` (the name sent to the server; default: the first one it lists at ``/v1/models``);
``env`` (more environment for the child, with the same placeholders); ``serves``
(``text-generation``, the default, or ``embedding``); ``api_key_env`` (a variable of the worker
holding the key the server expects; by default uplion makes a random key, for the command to pass
on as ``{api_key}``) and ``timeout_s`` (the longest wait for each read from the server).

``vllm`` is a preset: ``vllm serve {path} --host {host} --port {port} --served-model-name
<model>``, the key in ``VLLM_API_KEY``, plus ``gpu_memory_utilization``, ``max_model_len``,
``tensor_parallel_size``, ``dtype`` and ``args`` (more words for the command line).

A server that exits, refuses the key or is not ready in time fails the load with
``ServerFailedToStart``; one that dies later makes ``health`` raise ``ServerCrashed``, and the
request it was answering fails with that reason too. Either way the reason ends with the server's
last output lines. The server's API is reached at ``http://127.0.0.1:<port>/v1``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import shutil
import socket
import tempfile
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import httpx
import msgspec

from uplion.models.spec import Serves
from uplion.worker.engines import base
from uplion.worker.engines.openai_upstream import OpenAIUpstreamEngine
from uplion.worker.engines.server_process import ServerProcess

log = logging.getLogger(__name__)

HOST = "127.0.0.1"
PLACEHOLDERS = ("{path}", "{port}", "{host}", "{api_key}")

_SERVES: dict[str, Serves] = {"text-generation": "text-generation", "embedding": "embedding"}
_STOP_TIMEOUT_S = 30.0
_POLL_FIRST_S = 0.05
_POLL_MAX_S = 1.0
_POLL_TRY_S = 5.0
_CRASH_GRACE_S = 1.0
"""How long a failed request waits to learn whether the server died under it."""
_REASON_CHARS = 6000
_MAX_CONCURRENCY = 1024
"""The relay's own bound on requests at once: none in practice (the worker's slots bound them)."""


class OpenAIServerEngine(base.Engine):
    def __init__(
        self,
        command: Sequence[str],
        artifact: base.Artifact | None = None,
        *,
        port: int | None = None,
        ready_path: str = "/v1/models",
        ready_timeout_s: float = 600.0,
        model: str = "",
        env: Mapping[str, str] | None = None,
        serves: str = "",
        api_key_env: str = "",
        timeout_s: float = 120.0,
        platform: str = "openai-server",
        device: str = "external",
        not_installed: str = "",
    ) -> None:
        """``ValueError`` for options that cannot work. ``platform`` and ``device`` are what
        ``info`` reports; ``not_installed`` is the error when ``command[0]`` is not on PATH."""
        if not command:
            raise ValueError(f"engine {platform!r}: option 'command' is required (the server's "
                             "command line, with {port} where its port goes)")
        if port is not None and not 1 <= port <= 65535:
            raise ValueError(f"engine {platform!r}: option 'port' must be 1 to 65535, not {port}")
        if not ready_path.startswith("/"):
            raise ValueError(f"engine {platform!r}: option 'ready_path' must be a path starting "
                             f"with '/', not {ready_path!r}")
        if (serves or "text-generation") not in _SERVES:
            raise ValueError(f"engine {platform!r}: option 'serves' must be one of "
                             f"{', '.join(_SERVES)}, not {serves!r}")
        self.command = list(command)
        self.artifact = artifact or base.Artifact()
        self.port = port
        self.ready_path = ready_path
        self.ready_timeout_s = ready_timeout_s
        self.model = model
        self.env = dict(env or {})
        self.api_key_env = api_key_env
        self.timeout_s = timeout_s
        self.not_installed = not_installed
        self.info = base.EngineInfo(
            platform=platform, serves=_SERVES[serves or "text-generation"], device=device,
            extra={"server": os.path.basename(self.command[0])},
        )
        self.url = ""
        """The server's root, ``http://127.0.0.1:<port>``, once loaded."""
        self.process: ServerProcess | None = None
        self._upstream: OpenAIUpstreamEngine | None = None
        self._key_dir: tempfile.TemporaryDirectory[str] | None = None
        self._serving = False

    @property
    def pid(self) -> int | None:
        return None if self.process is None else self.process.pid

    async def load(self) -> None:
        """Start the server, wait until it answers, learn its model, then relay to it."""
        try:
            key, account = self._key()
            process = await self._start(key)
            async with httpx.AsyncClient(timeout=_POLL_TRY_S, trust_env=False) as session:
                headers = {"Authorization": f"Bearer {key}"}
                await self._wait_ready(session, headers)
                listed = await self._models(session, headers)
            self._learn(listed)
            self._upstream = OpenAIUpstreamEngine(
                base_url=f"{self.url}/v1", model=self.model, accounts=[account],
                timeout_s=self.timeout_s, max_attempts=2,
            )
            await self._upstream.load()
        except BaseException:
            await self.close()
            raise
        process.quiet()
        self._serving = True
        log.info("%s serves %s at %s", process.name, self.model, self.url)

    async def _start(self, key: str) -> ServerProcess:
        port = self.port or _free_port()
        values = {"{port}": str(port), "{host}": HOST, "{api_key}": key}
        if self.artifact.path is not None:
            values["{path}"] = str(self.artifact.path)
        argv = [_fill(word, values, "'command'") for word in self.command]
        env = {**os.environ, **{name: _fill(value, values, f"'env.{name}'")
                                for name, value in self.env.items()}}
        if shutil.which(argv[0], path=env.get("PATH")) is None:
            raise base.Unrecoverable("ServerFailedToStart", self.not_installed or (
                f"{argv[0]} is not installed in this image (not found on PATH); "
                "check the first word of option 'command'"
            ))
        self.url = f"http://{HOST}:{port}"
        self.process = ServerProcess(argv, env)
        try:
            await self.process.start()
        except OSError as error:
            raise base.Unrecoverable(
                "ServerFailedToStart", f"cannot start {argv[0]}: {error.strerror or error}"
            ) from None
        return self.process

    async def close(self) -> None:
        self._serving = False
        if self._upstream is not None:
            await self._upstream.close()
            self._upstream = None
        if self.process is not None:
            await self.process.stop(_STOP_TIMEOUT_S)
        if self._key_dir is not None:
            self._key_dir.cleanup()
            self._key_dir = None

    def health(self) -> base.EngineHealth:
        if self._serving and self.process is not None and self.process.exited.is_set():
            raise self._crashed()
        return base.EngineHealth() if self._upstream is None else self._upstream.health()

    def chat(
        self, messages: list[dict[str, Any]], params: base.GenerationParams
    ) -> AsyncIterator[base.TextDelta]:
        return self._relay(lambda upstream: upstream.chat(messages, params))

    def complete(self, prompt: str, params: base.GenerationParams) -> AsyncIterator[base.TextDelta]:
        return self._relay(lambda upstream: upstream.complete(prompt, params))

    async def embed(self, texts: list[str]) -> base.Embeddings:
        upstream = self._live()
        try:
            return await upstream.embed(texts)
        except base.EngineError as error:
            await self._raise_if_died(error)
            raise

    async def _relay(
        self, start: Callable[[OpenAIUpstreamEngine], AsyncIterator[base.TextDelta]]
    ) -> AsyncIterator[base.TextDelta]:
        upstream = self._live()
        try:
            async for delta in start(upstream):
                yield delta
        except base.EngineError as error:
            await self._raise_if_died(error)
            raise

    def _live(self) -> OpenAIUpstreamEngine:
        """The relay, when the server still runs; ``ServerCrashed`` when it died."""
        if self.process is not None and self.process.exited.is_set() and self._serving:
            raise self._crashed()
        if self._upstream is None:
            raise RuntimeError(f"the {self.info.platform} engine is not loaded")
        return self._upstream

    async def _raise_if_died(self, error: base.EngineError) -> None:
        """A request failed on the server's side: if the server died, say so instead."""
        process = self.process
        if process is None or error.error.status < 500:
            return
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(_CRASH_GRACE_S):
                await process.exited.wait()
        if process.exited.is_set() and self._serving:
            raise self._crashed() from None

    def _crashed(self) -> base.Unrecoverable:
        assert self.process is not None
        return base.Unrecoverable("ServerCrashed", self._reason(self.process.describe_exit()))

    def _reason(self, what: str) -> str:
        """``what`` and the server's last output lines, cut to a readable size."""
        tail = "\n".join(self.process.tail()) if self.process is not None else ""
        if not tail:
            return f"{what} (it printed nothing)"
        if len(tail) > _REASON_CHARS:
            tail = "…" + tail[-_REASON_CHARS:]
        return f"{what}; its last output:\n{tail}"

    def _key(self) -> tuple[str, dict[str, Any]]:
        """The key uplion sends the server, and the relay's one account that reads it."""
        account: dict[str, Any] = {"name": "server", "max_concurrency": _MAX_CONCURRENCY}
        if self.api_key_env:
            key = os.environ.get(self.api_key_env, "").strip()
            if not key:
                raise base.Unrecoverable("InvalidConfig", (
                    f"option 'api_key_env' names {self.api_key_env}, which is not set or empty"
                ))
            return key, {**account, "api_key_env": self.api_key_env}
        key = secrets.token_urlsafe(32)
        self._key_dir = tempfile.TemporaryDirectory(prefix="uplion-server-")
        path = Path(self._key_dir.name) / "api-key"  # the folder is the worker's alone (0700)
        path.write_text(key)
        return key, {**account, "api_key_file": str(path)}

    async def _wait_ready(self, session: httpx.AsyncClient, headers: Mapping[str, str]) -> None:
        """Poll the readiness URL with backoff until 200; fail when the server exits, refuses
        the key or takes longer than ``ready_timeout_s``."""
        process = self.process
        assert process is not None
        url = f"{self.url}{self.ready_path}"
        loop_time = asyncio.get_running_loop().time
        deadline = loop_time() + self.ready_timeout_s
        delay = _POLL_FIRST_S
        last = "no answer"
        while True:
            if process.exited.is_set():
                raise self._failed_start(process.describe_exit())
            try:
                response = await session.get(url, headers=headers)
            except httpx.HTTPError as error:
                last = type(error).__name__
            else:
                if response.status_code == 200:
                    return
                if response.status_code in (401, 403):
                    raise self._failed_start(self._refused(response.status_code))
                last = f"HTTP {response.status_code}"
            left = deadline - loop_time()
            if left <= 0:
                raise self._failed_start(
                    f"{process.name} did not become ready in {self.ready_timeout_s:g} s "
                    f"(GET {self.ready_path}: {last})"
                )
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(min(delay, left)):
                    await process.exited.wait()
            delay = min(delay * 1.5, _POLL_MAX_S)

    async def _models(
        self, session: httpx.AsyncClient, headers: Mapping[str, str]
    ) -> list[dict[str, Any]]:
        """The models the server lists at ``/v1/models`` (empty when it answers otherwise)."""
        try:
            response = await session.get(f"{self.url}/v1/models", headers=headers)
        except httpx.HTTPError:
            return []
        if response.status_code != 200:
            return []
        try:
            body = msgspec.json.decode(response.content)
        except msgspec.DecodeError:
            return []
        data = body.get("data") if isinstance(body, dict) else None
        return [item for item in data or () if isinstance(item, dict)]

    def _learn(self, listed: list[dict[str, Any]]) -> None:
        """The model to ask for, and its context length when the server tells it."""
        if not self.model:
            ids = [str(item["id"]) for item in listed if item.get("id")]
            if not ids:
                raise self._failed_start(
                    f"{self.command[0]} lists no model at /v1/models; set option 'model'"
                )
            self.model = ids[0]
        for item in listed:
            length = item.get("max_model_len")
            if item.get("id") == self.model and isinstance(length, int) and length > 0:
                self.info.context_length = length
        self.info.extra["model"] = self.model

    def _refused(self, status: int) -> str:
        where = (f"the key in {self.api_key_env}" if self.api_key_env else
                 "uplion's key: pass {api_key} to the server in its command or env, or name "
                 "the key it expects with option 'api_key_env'")
        return f"{self.command[0]} answered {status} at {self.ready_path}: it refuses {where}"

    def _failed_start(self, what: str) -> base.Unrecoverable:
        return base.Unrecoverable("ServerFailedToStart", self._reason(what))


def vllm_engine(
    artifact: base.Artifact,
    *,
    model: str = "",
    args: Sequence[str] = (),
    gpu_memory_utilization: float | None = None,
    max_model_len: int | None = None,
    tensor_parallel_size: int | None = None,
    dtype: str = "",
    port: int | None = None,
    ready_timeout_s: float = 600.0,
    env: Mapping[str, str] | None = None,
    serves: str = "",
    timeout_s: float = 120.0,
) -> OpenAIServerEngine:
    """The ``vllm`` preset: ``vllm serve`` on the fetched weights, on the device asked for."""
    if artifact.path is None:
        raise ValueError("engine 'vllm' serves the model's own weights: give the model a source")
    if gpu_memory_utilization is not None and not 0 < gpu_memory_utilization <= 1:
        raise ValueError("engine 'vllm': option 'gpu_memory_utilization' must be a fraction in "
                         f"(0, 1], not {gpu_memory_utilization}")
    command = ["vllm", "serve", "{path}", "--host", "{host}", "--port", "{port}",
               "--served-model-name", model or artifact.path.name]
    flags = {"--gpu-memory-utilization": gpu_memory_utilization,
             "--max-model-len": max_model_len, "--tensor-parallel-size": tensor_parallel_size,
             "--dtype": dtype or None}
    for flag, value in flags.items():
        if value is not None:
            command += [flag, str(value)]
    command += args
    environment = {"VLLM_API_KEY": "{api_key}"}
    device = "cuda" if artifact.device == "auto" else artifact.device
    if device.startswith("cuda:"):
        environment["CUDA_VISIBLE_DEVICES"] = device.partition(":")[2]
    elif device == "cpu":
        environment["CUDA_VISIBLE_DEVICES"] = ""  # vLLM's CPU build; a CUDA build says so
    return OpenAIServerEngine(
        command, artifact, port=port, ready_timeout_s=ready_timeout_s,
        model=model or artifact.path.name, env={**environment, **(env or {})}, serves=serves,
        timeout_s=timeout_s, platform="vllm", device=device,
        not_installed=(
            "vllm is not installed in this image (no `vllm` command on PATH): run this model "
            "on an image with vLLM (pip install vllm), or serve it with the transformers engine"
        ),
    )


def _fill(word: str, values: Mapping[str, str], where: str) -> str:
    for placeholder in PLACEHOLDERS:
        if placeholder in word:
            value = values.get(placeholder)
            if value is None:
                raise base.Unrecoverable("InvalidConfig", (
                    f"option {where} uses {placeholder} but the model has no source: give it one"
                ))
            word = word.replace(placeholder, value)
    return word


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])

