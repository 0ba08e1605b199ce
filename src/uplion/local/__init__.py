"""The one-machine runtime that ``uplion run`` starts."""

from uplion.local.runtime import LocalPlatform

__all__ = ["LocalPlatform"]
