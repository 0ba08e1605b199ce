"""The gateway: OpenAI and KServe v2 APIs in front of the broker; holds the client's connection."""

from uplion.gateway.app import create_app, metrics_app
from uplion.gateway.catalog import Catalog

__all__ = ["Catalog", "create_app", "metrics_app"]
