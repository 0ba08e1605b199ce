"""Settings from the environment (``UPLION_*``) with defaults for one machine."""

from __future__ import annotations

import os
import urllib.parse
from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_MODELS_FILE = Path(__file__).parent / "defaults" / "models.yaml"
AUTH_FAILURES_PER_MINUTE = 20


def data_dir() -> Path:
    """Where one machine keeps its state: ``UPLION_DATA_DIR`` or ``~/.local/share/uplion``."""
    return Path(os.environ.get("UPLION_DATA_DIR") or "~/.local/share/uplion").expanduser()


def keys_dir() -> Path:
    """Where one machine keeps upstream API keys: a file per account, named after it."""
    return data_dir() / "keys"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="UPLION_", extra="ignore")

    broker_url: str = Field(
        default="memory://",
        description="memory:// (embedded), redis://host:port/db or pulsar://host:6650",
    )
    models_file: Path = Field(default=DEFAULT_MODELS_FILE, description="YAML list of models.")
    database_url: str | None = Field(
        default=None,
        description="Accounts and billing store: sqlite+aiosqlite:///path (default, under "
        "UPLION_DATA_DIR) or postgresql+asyncpg://user:pass@host/db",
    )
    redis_url: str | None = Field(
        default=None,
        description="Redis for the principal cache, rate limits and the usage stream; defaults "
        "to the broker's URL when the broker is Redis, else everything stays in-process.",
    )
    health_port: int | None = Field(
        default=None, ge=1, le=65535, description="Where a worker answers /livez and /readyz."
    )
    model_path: Path | None = Field(
        default=None, description="A worker's model artifact, fetched already (in a cluster, by "
        "its init container); the worker then fetches nothing.",
    )
    single_replica: bool = Field(
        default=False, description="`uplion gateway` runs alone: it may keep the principal "
        "cache, rate limits, quotas and usage in its process when no Redis is configured.",
    )
    deployments: Literal["none", "kubernetes"] = Field(
        default="none", description="What `uplion gateway`'s /v1/modelDeployment manages: "
        "nothing, or AIModel objects in its namespace (the gateway then routes them too).",
    )
    namespace: str | None = Field(
        default=None, description="The cluster namespace of AIModels (default: the pod's)."
    )
    image: str = Field(
        default="ghcr.io/uplion/uplion:0.1.0", description="The CPU image of workers: of the "
        "deployment API's CPU deployments, and of AIModels naming no image and no GPUs.",
    )
    gpu_worker_image: str | None = Field(
        default=None, description="The CUDA image of workers (the image's `<version>-cuda` "
        "tag): of `type: gpu` deployments, and of AIModels naming no image that ask for GPUs. "
        "Unset: those are refused; the CPU image never runs a GPU model.",
    )
    workers_broker_secret: str | None = Field(
        default=None, description="With deployments=kubernetes: `<secret>/<key>`, the Secret key "
        "(in the namespace) holding the workers' broker URL, which the AIModels name.",
    )
    workers_broker_auth: str | None = Field(
        default=None, description="With deployments=kubernetes: the KEDA TriggerAuthentication "
        "with the broker's credentials, which the AIModels name.",
    )
    auth_failures_per_minute: int = Field(
        default=AUTH_FAILURES_PER_MINUTE, ge=1, description="Failed authentications a client "
        "address may have in any minute; its further attempts get 429 until they age out.",
    )
    trusted_proxies: str = Field(
        default="", description="Proxies whose X-Forwarded-For names the client: addresses or "
        "networks (10.0.0.0/8), comma-separated, or * for any peer. Empty: the peer is the client.",
    )
    max_body_bytes: int = Field(
        default=16 * 1024 * 1024, ge=1024,
        description="The largest request body the gateway reads (413 beyond), except on /v2.",
    )
    max_v2_body_bytes: int = Field(
        default=64 * 1024 * 1024, ge=1024,
        description="The largest request body under /v2 (tensors, binary ones included).",
    )
    streams_per_token: int = Field(
        default=64, ge=1, description="Streamed answers one API token may have open at once, "
        "across every gateway sharing the Redis (429 beyond).",
    )
    metrics_port: int | None = Field(
        default=None, ge=1, le=65535, description="Serve /metrics on this port alone (no "
        "token asked; keep it off the public network); the public port then has no /metrics.",
    )
    metrics_refresh_s: float = Field(
        default=2.0, gt=0, description="How often the gateway reads each topic's backlog from "
        "the broker for /metrics (a scrape only reads the figures kept).",
    )
    billing_flush_events: int = Field(default=500, ge=1)
    billing_flush_seconds: float = Field(default=1.0, gt=0)
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)
    log_level: str = "info"
    log_format: Literal["auto", "json", "text"] = Field(
        default="auto", description="Logs as text or as a JSON object a line; auto: text on a "
        "terminal, JSON elsewhere (a file, a pipe, a container's log).",
    )

    def shared_redis_url(self) -> str | None:
        """The Redis that gateways share state through, if any."""
        if self.redis_url:
            return self.redis_url
        if self.broker_url.split(":", 1)[0] in ("redis", "rediss", "unix"):
            return self.broker_url
        return None


# uplion's own options carried in a Redis URL's query (redis://host:6379/0?visibility_timeout_s=5):
# the broker's and the usage stream's tuning. Every component strips all of them before handing
# the URL to redis-py, which rejects options it does not know, and reads its own.
REDIS_URL_OPTIONS = frozenset({"visibility_timeout_s", "task_ttl_s", "reply_ttl_s", "retention_s"})


def split_redis_url(
    url: str, names: frozenset[str] = REDIS_URL_OPTIONS
) -> tuple[str, dict[str, float]]:
    """The URL without the query options ``names`` (uplion's own by default), and those options
    as numbers (``ValueError`` if not numbers)."""
    base, _, query_text = url.partition("?")
    query = urllib.parse.parse_qsl(query_text, keep_blank_values=True)
    options: dict[str, float] = {}
    for name, value in query:
        if name in names:
            try:
                options[name] = float(value)
            except ValueError:
                raise ValueError(f"URL option {name}={value!r} is not a number") from None
    rest = urllib.parse.urlencode([(n, v) for n, v in query if n not in names])
    return (f"{base}?{rest}" if rest else base), options
