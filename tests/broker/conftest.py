"""Pulsar for the broker contract tests: the cluster at ``PULSAR_URL``, a new namespace per test;
and a redis-server of a test's own (``own_redis``), to stop and restart.

Without ``PULSAR_URL`` those tests are skipped, and the run's summary says so in one line (the
skip reason shows only with ``-rs`` otherwise).
"""

from __future__ import annotations

import logging
import os
import uuid
from collections.abc import Iterator

import httpx
import pytest

from tests.redisio.server import own_redis
from uplion.broker import pulsar_names

__all__ = ["own_redis"]

PULSAR_URL_ENV = "PULSAR_URL"
SKIP_REASON = (f"{PULSAR_URL_ENV} is not set: they need a running Pulsar, e.g. "
               f"{PULSAR_URL_ENV}='pulsar://localhost:6650?admin=http://localhost:8080'")

logger = logging.getLogger(__name__)


@pytest.fixture
def pulsar_url() -> Iterator[str]:
    """The Pulsar URL with a namespace of the test's own (created, then deleted with its topics)."""
    url = os.environ.get(PULSAR_URL_ENV)
    if not url:
        pytest.skip(SKIP_REASON)
    settings = pulsar_names.parse_url(url)
    namespace = f"uplion-test-{uuid.uuid4().hex[:12]}"
    path = f"/admin/v2/namespaces/{settings.tenant}/{namespace}"
    with httpx.Client(base_url=settings.admin_url, timeout=30, follow_redirects=True) as admin:
        admin.put(path).raise_for_status()
        yield pulsar_names.with_options(url, namespace=namespace)
        _delete_namespace(admin, path)


def _delete_namespace(admin: httpx.Client, path: str) -> None:
    """Delete the test's namespace and its topics; a leftover is logged, not a test failure."""
    try:
        topics = admin.get(f"{path}/topics")
        topics.raise_for_status()
        for topic in topics.json():
            admin.delete(f"/admin/v2/{topic.replace('://', '/')}",
                         params={"force": "true"}).raise_for_status()
        admin.delete(path).raise_for_status()
    except httpx.HTTPError as error:
        logger.warning("the test namespace %s was not deleted: %s", path, error)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    skipped = [report for report in terminalreporter.stats.get("skipped", [])
               if report.nodeid.endswith("[pulsar]")]
    if skipped:
        terminalreporter.write_line(
            f"{len(skipped)} broker contract tests on Pulsar skipped: {SKIP_REASON}"
        )
