"""Settings from the environment (``UPLION_*``) with defaults for one machine."""

from __future__ import annotations

import os
import urllib.parse
from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_MODELS_FILE = Path(__file__).parent / "defaults" / "models.yaml"


def data_dir() -> Path:
    """Where one machine keeps its state: ``UPLION_DATA_DIR`` or ``~/.local/share/uplion``."""
    return Path(os.environ.get("UPLION_DATA_DIR") or "~/.local/share/uplion").expanduser()


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
    deployments: Literal["none", "kubernetes"] = Field(
        default="none", description="What `uplion gateway`'s /v1/modelDeployment manages: "
        "nothing, or AIModel objects in its namespace (the gateway then routes them too).",
    )
    namespace: str | None = Field(
        default=None, description="The cluster namespace of AIModels (default: the pod's)."
    )
    image: str = Field(
        default="ghcr.io/uplion/uplion:0.1.0", description="Image of the workers of deployments."
    )
    billing_flush_events: int = Field(default=500, ge=1)
    billing_flush_seconds: float = Field(default=1.0, gt=0)
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)
    log_level: str = "info"

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


def split_redis_url(url: str) -> tuple[str, dict[str, float]]:
    """The URL for redis-py, and uplion's options from its query (``ValueError`` if not numbers)."""
    base, _, query_text = url.partition("?")
    query = urllib.parse.parse_qsl(query_text, keep_blank_values=True)
    options: dict[str, float] = {}
    for name, value in query:
        if name in REDIS_URL_OPTIONS:
            try:
                options[name] = float(value)
            except ValueError:
                raise ValueError(f"URL option {name}={value!r} is not a number") from None
    rest = urllib.parse.urlencode([(n, v) for n, v in query if n not in REDIS_URL_OPTIONS])
    return (f"{base}?{rest}" if rest else base), options
