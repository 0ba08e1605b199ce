"""From a model spec to a loaded engine: fetch the artifact, pick the engine, load it.

Every failure on the way is an ``Unrecoverable`` whose reason names the step (``SourceNotFound``,
``ChecksumMismatch``, ``UnrecognizedArtifact``, ``PickleNotTrusted``, ``InvalidConfig``,
``LoadFailed``…): the worker announces the model Failed with it instead of retrying a model that
cannot load. An engine that fails while loading is closed, so nothing stays half-loaded.

In a cluster the worker's init container has fetched the artifact already (``uplion fetch-model
--link``) and the worker is given that path (``UPLION_MODEL_PATH``); on one machine the artifact
is fetched here, into the shared cache, before loading.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from pathlib import Path

from uplion import fetch
from uplion.models import ModelSpec
from uplion.worker import engines
from uplion.worker.engines import base
from uplion.worker.metrics import WorkerMetrics

log = logging.getLogger(__name__)


async def load_engine(
    spec: ModelSpec, fetched: Path | None = None, metrics: WorkerMetrics | None = None
) -> base.Engine:
    """The loaded engine of ``spec``; ``fetched`` is the artifact's path when fetched already.
    How long the fetch and the load took goes to ``metrics``."""
    path = fetched
    timer = time.monotonic()
    if path is None and spec.source is not None:
        log.info("fetching %s@%s from %s", spec.name, spec.version, fetch.redact(spec.source))
        try:
            path = await asyncio.to_thread(fetch.fetch, spec.source, spec.fetch)
        except fetch.FetchError as error:
            raise base.Unrecoverable(error.reason, error.message) from error
    fetched_at = time.monotonic()
    try:
        engine = engines.create(spec.engine, path)
    except ValueError as error:
        raise base.Unrecoverable("InvalidConfig", str(error)) from error
    try:
        await engine.load()
    except base.Unrecoverable:
        await engine.close()
        raise
    except Exception as error:
        await engine.close()
        log.exception("loading %s@%s failed", spec.name, spec.version)
        shown = f" from {path}" if path is not None else ""
        raise base.Unrecoverable(
            "LoadFailed", f"the {spec.engine.kind} engine could not load the model{shown}: {error}"
        ) from error
    if metrics is not None:
        model = metrics.of(spec.name, spec.version)
        model.fetch.set(fetched_at - timer)
        model.load.set(time.monotonic() - fetched_at)
    log.info("loaded %s@%s on %s (%s, serves %s)", spec.name, spec.version, engine.info.device,
             engine.info.platform, engine.info.serves or spec.serves)
    # The model's objects (and the libraries it imported) live as long as the worker: take them
    # out of the collector's walks, which otherwise stall the event loop for tens of ms.
    gc.freeze()
    return engine
