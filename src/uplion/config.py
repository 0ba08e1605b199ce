"""Settings from the environment (``UPLION_*``) with defaults for one machine."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_MODELS_FILE = Path(__file__).parent / "defaults" / "models.yaml"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="UPLION_", extra="ignore")

    broker_url: str = Field(
        default="memory://", description="memory:// (embedded) or redis://host:port/db"
    )
    models_file: Path = Field(default=DEFAULT_MODELS_FILE, description="YAML list of models.")
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)
    log_level: str = "info"
