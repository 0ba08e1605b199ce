"""``openai-upstream``: serve a model from an OpenAI-compatible provider, over a pool of accounts.

Options: ``base_url`` (the provider's API root, e.g. ``https://api.openai.com/v1``), ``model``
(the upstream model name), ``accounts`` (a list of ``{name, api_key_env | api_key_file,
max_concurrency, requests_per_minute, tokens_per_minute}``; without ``api_key_env`` or
``api_key_file`` the key is the file ``<keys folder>/<name>``: ``keys_dir``, by default
``$UPLION_DATA_DIR/keys``), ``timeout_s`` (the longest wait for
each upstream read, and for a request to find an account across its tries), ``max_attempts`` and
``retest_interval_s`` (how often a refused key is tried again). Which account serves a request is
the pool's choice (``account_pool``).

Chat and completions always stream upstream, so deltas pass through chunk by chunk; usage comes
from the upstream's usage chunk. A request that fails before any text reached the caller is tried
again on another account: a 429 cools that account down, a 5xx or a connection error backs off
with jitter. A 401/403 is checked with a probe of that key (``GET {base_url}/models``): only if
the probe is refused too is the account taken out (until its key works again) and the request
tried on another; if the key is accepted, the refusal was about the request, which ends with a
502 and takes nothing out. One request takes out one account at most (a second refused key ends
it with a 502; the next request takes that one out), so a provider whose authentication falters
for a moment cannot fail the model on one request. Tries are bounded by ``max_attempts`` (the
one retired account aside) and ``timeout_s``. Once text has been passed on, a failure ends the
answer with a 502. An upstream 400 is the client's fault: passed on as is, never retried. When
every account's key is refused, or the configuration is invalid, the engine raises
``Unrecoverable``: the worker reports the model Failed.

HTTP goes through one ``aiohttp`` session (its C parser keeps the per-request cost a fraction of
httpx's), with at most the accounts' total concurrency in connections, kept alive between
requests. A proxy named by ``HTTPS_PROXY``/``HTTP_PROXY`` (and not bypassed by ``NO_PROXY``) is
used, looked up once at load.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import ipaddress
import logging
import random
import re
import time
import urllib.parse
import urllib.request
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import aiohttp
import msgspec

from uplion import config, protocol
from uplion.worker.engines import account_pool, base

log = logging.getLogger(__name__)

_PROBE_TIMEOUT_S = 10.0
_PROBE_TIMEOUT = aiohttp.ClientTimeout(
    connect=_PROBE_TIMEOUT_S, sock_connect=_PROBE_TIMEOUT_S, sock_read=_PROBE_TIMEOUT_S
)
_DRAIN_TIMEOUT_S = 1.0
_BACKOFF_BASE_S = 0.1
_BACKOFF_CAP_S = 2.0
_ACCOUNT_FIELDS = frozenset({
    "name", "api_key_env", "api_key_file", "max_concurrency", "requests_per_minute",
    "tokens_per_minute",
})
_CLIENT_FAULTS = frozenset({400, 413, 422})
_RETRYABLE = frozenset({408, 409})

_encode = msgspec.json.Encoder().encode

TextOf = Callable[[dict[str, Any]], str]
"""The text of one streamed choice (chat: ``delta.content``; completions: ``text``)."""


class OpenAIUpstreamEngine(base.Engine):
    def __init__(
        self,
        base_url: str,
        model: str,
        accounts: Sequence[Mapping[str, Any]],
        timeout_s: float = 60.0,
        max_attempts: int = 4,
        retest_interval_s: float = 30.0,
        keys_dir: Path | None = None,
    ) -> None:
        self.base_url = base_url
        self.keys_dir = keys_dir if keys_dir is not None else config.keys_dir()
        self.model = model
        self.accounts = accounts
        self.timeout_s = timeout_s
        self.max_attempts = max_attempts
        self.retest_interval_s = retest_interval_s
        self.info = base.EngineInfo(platform="openai-upstream", extra={"upstream_model": model})
        self._session: aiohttp.ClientSession | None = None
        self._url = ""
        self._proxy: str | None = None
        self._pool: account_pool.AccountPool | None = None

    async def load(self) -> None:
        """Check the options and read every key (``InvalidConfig``), then probe every account:
        the ones refused start dead, and if all are, the model cannot serve."""
        url = _check_url(self.base_url)
        if not self.model:
            raise base.Unrecoverable("InvalidConfig", "option 'model' (the upstream model name) "
                                     "is required")
        configs = _parse_accounts(self.accounts, self.keys_dir)
        total = sum(config.max_concurrency for config in configs)
        self._url = url
        self._proxy = _env_proxy(url)
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=total, limit_per_host=0),
            # ``connect`` bounds the wait for a free connection too; each read waits timeout_s.
            timeout=aiohttp.ClientTimeout(
                connect=self.timeout_s, sock_connect=min(self.timeout_s, _PROBE_TIMEOUT_S),
                sock_read=self.timeout_s,
            ),
        )
        self._pool = account_pool.AccountPool(configs, self._probe, self.retest_interval_s)
        try:
            self._pool.read_keys()
            await self._pool.check()
            if self._pool.all_dead:
                raise _all_refused(self.base_url, self._pool)
        except account_pool.KeyUnavailable as error:
            await self.close()
            raise base.Unrecoverable("InvalidConfig", str(error)) from None
        except base.Unrecoverable:
            await self.close()
            raise
        log.info("upstream %s (%s) with %d accounts", url, self.model, len(configs))

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.close()
            self._pool = None
        if self._session is not None:
            await self._session.close()
            self._session = None

    def health(self) -> base.EngineHealth:
        pool = self._pool
        if pool is None:
            return base.EngineHealth()
        if pool.all_dead:
            raise _all_refused(self.base_url, pool)
        down = pool.down()
        if not down:
            return base.EngineHealth()
        return base.EngineHealth("degraded", (
            f"{len(down)} of {len(pool.accounts)} upstream accounts down: {', '.join(down)}"
        ))

    def chat(
        self, messages: list[dict[str, Any]], params: base.GenerationParams
    ) -> AsyncIterator[base.TextDelta]:
        body = {"model": self.model, "messages": messages, **_sampling(params)}
        prompt_chars = sum(len(str(message.get("content") or "")) for message in messages)
        return self._generate("chat/completions", body, _chat_text, prompt_chars)

    def complete(self, prompt: str, params: base.GenerationParams) -> AsyncIterator[base.TextDelta]:
        body = {"model": self.model, "prompt": prompt, **_sampling(params)}
        return self._generate("completions", body, _completion_text, len(prompt))

    async def embed(self, texts: list[str]) -> base.Embeddings:
        session, pool = self._loaded()
        content = _encode({"model": self.model, "input": texts})
        tries = _Tries(self, pool)
        while True:
            lease = await tries.lease()
            try:
                async with session.post(
                    f"{self._url}/embeddings", data=content, headers=_headers(lease),
                    proxy=self._proxy,
                ) as response:
                    await _check(response)
                    result = _embeddings(await response.read(), texts)
                lease.release(result.prompt_tokens)
                pool.succeeded(lease.account)
                return result
            except (_Failure, aiohttp.ClientError) as error:
                lease.release()
                await tries.failed(lease, _Failure.of(error))
            finally:
                lease.release()

    async def _generate(
        self, path: str, body: dict[str, Any], text_of: TextOf, prompt_chars: int
    ) -> AsyncIterator[base.TextDelta]:
        session, pool = self._loaded()
        content = _encode({**body, "stream": True, "stream_options": {"include_usage": True}})
        tries = _Tries(self, pool)
        while True:
            lease = await tries.lease()
            reading = _Reading()
            try:
                async with session.post(
                    f"{self._url}/{path}", data=content, headers=_headers(lease),
                    proxy=self._proxy,
                ) as response:
                    await _check(response)
                    async for text in _texts(response, text_of, reading):
                        reading.deltas += 1
                        yield base.TextDelta(text)
                usage = reading.usage or protocol.Usage(
                    # No usage chunk from this upstream: estimate, about four characters a
                    # prompt token, and one token per streamed delta.
                    prompt_tokens=-(-prompt_chars // 4), completion_tokens=reading.deltas
                )
                lease.release(usage.total_tokens)
                pool.succeeded(lease.account)
                break
            except (_Failure, aiohttp.ClientError) as error:
                lease.release()
                failure = _Failure.of(error)
                if reading.deltas:
                    log.warning("upstream account %s failed mid-answer (%s)",
                                lease.account.name, failure.detail)
                    raise base.EngineError(protocol.ErrorInfo(
                        f"The upstream provider failed after the answer began ({failure.detail});"
                        " the answer is incomplete.", code="upstream_error", status=502,
                    )) from None
                await tries.failed(lease, failure)
            finally:
                lease.release()
        yield base.TextDelta("", finish_reason=reading.finish_reason or "stop", usage=usage)

    async def _probe(self, key: str) -> int:
        session, _ = self._loaded()
        async with session.get(
            f"{self._url}/models", headers={"Authorization": f"Bearer {key}"},
            timeout=_PROBE_TIMEOUT, proxy=self._proxy,
        ) as response:
            await response.read()
            return response.status

    def _loaded(self) -> tuple[aiohttp.ClientSession, account_pool.AccountPool]:
        if self._session is None or self._pool is None:
            raise RuntimeError("the openai-upstream engine is not loaded")
        return self._session, self._pool


def _all_refused(base_url: str, pool: account_pool.AccountPool) -> base.Unrecoverable:
    return base.Unrecoverable("AllAccountsUnauthorized", (
        f"every upstream account of {base_url} had its key refused ({', '.join(pool.down())}); "
        "fix the keys in their files or environment variables"
    ))


def _refused(status: str, why: str) -> base.EngineError:
    return base.EngineError(protocol.ErrorInfo(
        f"The upstream provider refused this request ({status}) {why}.",
        code="upstream_refused", status=502,
    ))


class _Failure(Exception):
    """A try that failed in a way another try may not: what to do with the account, and why."""

    def __init__(
        self, kind: Literal["rate_limited", "refused", "unavailable"], detail: str,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(detail)
        self.kind = kind
        self.detail = detail
        self.retry_after = retry_after

    @classmethod
    def of(cls, error: _Failure | aiohttp.ClientError) -> _Failure:
        if isinstance(error, _Failure):
            return error
        return cls("unavailable", type(error).__name__)


class _Tries:
    """One request's tries: which accounts failed it, how many tries and how much time are left."""

    def __init__(self, engine: OpenAIUpstreamEngine, pool: account_pool.AccountPool) -> None:
        self.engine = engine
        self.pool = pool
        self.deadline = time.monotonic() + engine.timeout_s
        self.left = engine.max_attempts
        self.failed_on: set[str] = set()
        self.kinds: set[str] = set()
        self.backoffs = 0
        self.retired: str | None = None

    async def lease(self) -> account_pool.Lease:
        try:
            return await self.pool.acquire(self.deadline - time.monotonic(), self.failed_on)
        except account_pool.AllAccountsDead:
            raise _all_refused(self.engine.base_url, self.pool) from None
        except TimeoutError:
            raise self._exhausted() from None

    async def failed(self, lease: account_pool.Lease, failure: _Failure) -> None:
        """Apply ``failure`` to the leased account; back off, or raise when no try is left."""
        account = lease.account
        log.info("upstream account %s failed a try (%s)", account.name, failure.detail)
        self.failed_on.add(account.name)
        if failure.kind == "refused":
            verdict = await self.pool.verify(account, lease.key)
            if verdict == "accepted":
                raise _refused(failure.detail, f"although the key of account {account.name} "
                               "is accepted: the refusal is about the request")
            if verdict == "refused":
                if account.dead_reason is not None:
                    return  # another request took it out meanwhile: try another account
                if self.retired is None:
                    # Not counted: one account at most is taken out per request.
                    self.retired = account.name
                    self.pool.mark_dead(account, failure.detail)
                    return
                raise _refused(failure.detail, f"with the key of account {account.name}, "
                               f"after account {self.retired} was taken out of service for a "
                               "refused key: one account at most is taken out per request")
            failure = _Failure("unavailable", f"{failure.detail}, and its probe failed")
        if failure.kind == "rate_limited":
            self.pool.cool_down(account, failure.retry_after)
        self.kinds.add(failure.kind)
        self.left -= 1
        if self.left <= 0:
            raise self._exhausted()
        if failure.kind == "unavailable":
            ceiling = min(_BACKOFF_CAP_S, _BACKOFF_BASE_S * 2**self.backoffs)
            self.backoffs += 1
            delay = random.uniform(ceiling / 2, ceiling)
            await asyncio.sleep(max(0.0, min(delay, self.deadline - time.monotonic())))

    def _exhausted(self) -> base.EngineError:
        if self.kinds == {"rate_limited"} or (not self.kinds and self.pool.throttled()):
            return base.EngineError(protocol.ErrorInfo(
                "Every upstream account is rate limited; try again later.",
                type="rate_limit_error", code="upstream_rate_limited", status=429,
            ))
        return base.EngineError(protocol.ErrorInfo(
            "The upstream provider is unavailable; try again later.",
            code="upstream_unavailable", status=503,
        ))


@dataclass(slots=True)
class _Reading:
    """What one streamed answer told so far, besides its text."""

    deltas: int = 0
    finish_reason: str | None = None
    usage: protocol.Usage | None = None


async def _texts(
    response: aiohttp.ClientResponse, text_of: TextOf, reading: _Reading
) -> AsyncIterator[str]:
    """The texts of an OpenAI server-sent event stream, recording finish reason and usage."""
    lines = _lines(response.content)
    async for line in lines:
        if not line.startswith(b"data:"):
            continue  # blank separators, comments, event names
        data = line[5:].strip()
        if data == b"[DONE]":
            await _drain(lines)
            return
        try:
            chunk = msgspec.json.decode(data)
        except msgspec.DecodeError:
            raise _Failure("unavailable", "malformed stream") from None
        if not isinstance(chunk, dict):
            raise _Failure("unavailable", "malformed stream")
        if "error" in chunk:
            raise _Failure("unavailable", f"stream error: {_message(chunk)}")
        usage = chunk.get("usage")
        if isinstance(usage, dict):
            reading.usage = protocol.Usage(
                prompt_tokens=int(usage.get("prompt_tokens") or 0),
                completion_tokens=int(usage.get("completion_tokens") or 0),
            )
        for choice in chunk.get("choices") or ():
            if not isinstance(choice, dict) or choice.get("index", 0) != 0:
                continue
            text = text_of(choice)
            if text:
                yield text
            if choice.get("finish_reason"):
                reading.finish_reason = str(choice["finish_reason"])
    if reading.finish_reason is None:
        raise _Failure("unavailable", "stream ended early")


async def _lines(stream: aiohttp.StreamReader) -> AsyncIterator[bytes]:
    """The lines of a body as they arrive, ended by ``\\n``, ``\\r\\n`` or ``\\r`` (a ``\\r\\n``
    split between two reads gives an extra blank line, which server-sent events ignore)."""
    pending = b""
    async for data in stream.iter_any():
        lines = (pending + data).splitlines(keepends=True)
        pending = b"" if lines[-1].endswith((b"\n", b"\r")) else lines.pop()
        for line in lines:
            yield line.rstrip(b"\r\n")
    if pending:
        yield pending


async def _drain(lines: AsyncIterator[bytes]) -> None:
    """Read what follows ``[DONE]`` (the body's end, at once): a response left unread closes its
    connection, and the next request would have to open another. An upstream slow to end its
    body, or failing to, costs the connection, never the answer."""
    with contextlib.suppress(TimeoutError, aiohttp.ClientError):
        async with asyncio.timeout(_DRAIN_TIMEOUT_S):
            async for _ in lines:
                pass


def _chat_text(choice: dict[str, Any]) -> str:
    return str((choice.get("delta") or {}).get("content") or "")


def _completion_text(choice: dict[str, Any]) -> str:
    return str(choice.get("text") or "")


async def _check(response: aiohttp.ClientResponse) -> None:
    """Raise for an answer that is not a 200: ``_Failure`` if another try may help, else
    ``EngineError`` in OpenAI's shape."""
    status = response.status
    if status == 200:
        return
    content = await response.read()
    if status == 429:
        raise _Failure("rate_limited", "429", _retry_after(response.headers))
    if status in (401, 403):
        raise _Failure("refused", f"{status}")
    if status >= 500 or status in _RETRYABLE:
        raise _Failure("unavailable", f"{status}")
    body = _json(content)
    error = _object(body.get("error"))
    if status in _CLIENT_FAULTS:
        raise base.EngineError(protocol.ErrorInfo(
            _message(body), type="invalid_request_error", code=_str_or_none(error.get("code")),
            param=_str_or_none(error.get("param")), status=400,
        ))
    raise base.EngineError(protocol.ErrorInfo(
        f"The upstream provider answered {status}: {_message(body)}",
        code="upstream_error", status=502,
    ))


def _retry_after(headers: Mapping[str, str]) -> float | None:
    """Seconds from ``retry-after-ms``, or ``Retry-After`` in seconds or as an HTTP date."""
    millis = headers.get("retry-after-ms")
    if millis is not None:
        try:
            return float(millis) / 1000
        except ValueError:
            pass
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        return float(value)
    except ValueError:
        pass
    try:
        return email.utils.parsedate_to_datetime(value).timestamp() - time.time()
    except (TypeError, ValueError):
        return None


def _embeddings(content: bytes, texts: list[str]) -> base.Embeddings:
    body = _json(content)
    items = body.get("data")
    if not isinstance(items, list) or len(items) != len(texts):
        raise _Failure("unavailable", "malformed embeddings")
    usage = _object(body.get("usage"))
    # Without usage from the upstream, estimate about four characters a token.
    estimate = sum(-(-len(text) // 4) for text in texts)
    try:
        ordered = sorted(items, key=lambda item: int(item.get("index", 0)))
        vectors = [[float(value) for value in item["embedding"]] for item in ordered]
    except (AttributeError, KeyError, TypeError, ValueError):
        raise _Failure("unavailable", "malformed embeddings") from None
    return base.Embeddings(vectors, prompt_tokens=int(usage.get("prompt_tokens") or estimate))


def _json(content: bytes) -> dict[str, Any]:
    try:
        body = msgspec.json.decode(content)
    except msgspec.DecodeError:
        return {}
    return _object(body)


def _object(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _message(body: dict[str, Any]) -> str:
    error = body.get("error")
    if isinstance(error, dict) and error.get("message"):
        return str(error["message"])
    return "no error message"


def _str_or_none(value: Any) -> str | None:
    return None if value is None else str(value)


def _headers(lease: account_pool.Lease) -> dict[str, str]:
    return {"Authorization": f"Bearer {lease.key}", "Content-Type": "application/json"}


def _sampling(params: base.GenerationParams) -> dict[str, Any]:
    body: dict[str, Any] = {"temperature": params.temperature, "top_p": params.top_p}
    if params.max_tokens is not None:
        body["max_tokens"] = params.max_tokens
    if params.stop:
        body["stop"] = list(params.stop)
    if params.seed is not None:
        body["seed"] = params.seed
    return body


def _check_url(value: str) -> str:
    try:
        url = urllib.parse.urlsplit(value.strip())
        valid = url.scheme in ("http", "https") and bool(url.hostname) and url.port != 0
    except ValueError:  # a bad port or IPv6 address
        valid = False
    if not valid:
        raise base.Unrecoverable("InvalidConfig", (
            f"option 'base_url' must be the provider's http(s) API root, such as "
            f"https://api.openai.com/v1, not {value!r}"
        ))
    return urllib.parse.urlunsplit(url).rstrip("/")


def _env_proxy(url: str) -> str | None:
    """The proxy the environment names for ``url`` (``HTTPS_PROXY``, ``HTTP_PROXY``), unless
    ``NO_PROXY`` bypasses its host or the host is this machine (a server the worker runs)."""
    parts = urllib.parse.urlsplit(url)
    if _loopback(parts.hostname) or urllib.request.proxy_bypass(parts.netloc):
        return None
    return urllib.request.getproxies().get(parts.scheme)


def _loopback(host: str | None) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host or "").is_loopback
    except ValueError:
        return False


_ACCOUNT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
"""An account's name: also the name of its key's file in the keys folder."""


def _parse_accounts(
    entries: Sequence[Mapping[str, Any]], keys_dir: Path
) -> list[account_pool.AccountConfig]:
    if not entries:
        raise base.Unrecoverable("InvalidConfig", (
            "option 'accounts' must list at least one account: "
            "{name, max_concurrency, ...} (its key in the keys folder), or with api_key_env "
            "or api_key_file"
        ))
    configs: list[account_pool.AccountConfig] = []
    for index, entry in enumerate(entries):
        where = f"accounts[{index}]"
        if "api_key" in entry:
            raise _invalid(f"{where}: keys are never written in the models file; name an "
                           "environment variable (api_key_env) or a file (api_key_file)")
        unknown = sorted(set(entry) - _ACCOUNT_FIELDS)
        if unknown:
            raise _invalid(f"{where}: unknown field {unknown[0]!r}; "
                           f"fields are: {', '.join(sorted(_ACCOUNT_FIELDS))}")
        name = entry.get("name")
        if not isinstance(name, str) or not name:
            raise _invalid(f"{where}: 'name' is required")
        if not _ACCOUNT_NAME.match(name):
            raise _invalid(f"{where}: the account name {name!r} names a file of the keys folder: "
                           "letters, digits, '.', '_' and '-', not starting with '.'")
        if any(config.name == name for config in configs):
            raise _invalid(f"{where}: another account is named {name!r}")
        env, file = entry.get("api_key_env"), entry.get("api_key_file")
        if env is not None and file is not None:
            raise _invalid(f"{where} ({name}): give at most one of api_key_env, api_key_file")
        source = env if env is not None else file
        if source is not None and (not isinstance(source, str) or not source):
            raise _invalid(f"{where} ({name}): the key's variable or file must be a name")
        if env is not None:
            key = account_pool.KeySource(env=env)
        elif file is not None:
            key = account_pool.KeySource(file=Path(file).expanduser())
        else:
            key = account_pool.KeySource(file=keys_dir / name, in_keys_folder=True)
        configs.append(account_pool.AccountConfig(
            name=name,
            key=key,
            max_concurrency=_positive(entry, "max_concurrency", where) or 4,
            requests_per_minute=_positive(entry, "requests_per_minute", where),
            tokens_per_minute=_positive(entry, "tokens_per_minute", where),
        ))
    return configs


def _positive(entry: Mapping[str, Any], field: str, where: str) -> int | None:
    value = entry.get(field)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise _invalid(f"{where}: {field!r} must be an integer >= 1, not {value!r}")
    return value


def _invalid(message: str) -> base.Unrecoverable:
    return base.Unrecoverable("InvalidConfig", message)
