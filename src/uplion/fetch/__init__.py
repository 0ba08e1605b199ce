"""Model fetching: the one door to S3, the Hugging Face Hub and HTTP downloads of artifacts.

``fetch(source, options)`` turns a source URI into the local path of the complete artifact,
through a cache shared by the processes of a node; ``uplion fetch-model`` is its command.
Blocking: async callers run it in a thread.
"""

from uplion.fetch.cache import default_cache_root
from uplion.fetch.core import fetch
from uplion.fetch.errors import FetchError
from uplion.fetch.sources import redact

__all__ = ["FetchError", "default_cache_root", "fetch", "redact"]
