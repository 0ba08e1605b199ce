"""The door to Pulsar's admin REST API: the backlog of a topic's subscription.

``GET {admin}/admin/v2/persistent/{tenant}/{namespace}/{topic}/stats`` answers the topic's stats
(``TopicStats``); under ``subscriptions`` each subscription has ``msgBacklog``, the messages it
has not acknowledged yet (waiting ones and those dispatched to a consumer), and
``unackedMessages``, those dispatched to consumers and not acknowledged yet. So a worker group's
tasks in flight are ``unackedMessages`` and its waiting ones the rest of ``msgBacklog``. KEDA's
``pulsar`` scaler reads the same ``msgBacklog``.

The broker that owns a topic answers; another one redirects there (307), which is followed. A
topic that does not exist (404) has no backlog; neither has a subscription that does not exist
(the Pulsar broker creates the workers' subscription before it publishes the first task).
"""

from __future__ import annotations

import httpx
import msgspec

from uplion.broker import base, pulsar_names

_BODY_EXCERPT = 200


class AdminError(base.BrokerUnavailable):
    """The admin REST API could not be reached, or answered with an error or garbage: the
    broker cannot tell the backlog now."""


class _SubscriptionStats(msgspec.Struct):
    msg_backlog: int = msgspec.field(name="msgBacklog", default=0)
    unacked_messages: int = msgspec.field(name="unackedMessages", default=0)


class _TopicStats(msgspec.Struct):
    subscriptions: dict[str, _SubscriptionStats] = msgspec.field(default_factory=dict)


def backlog_from_stats(document: bytes, subscription: str) -> base.Backlog:
    """The backlog of ``subscription`` in a topic stats document (``AdminError`` if malformed)."""
    try:
        stats = msgspec.json.decode(document, type=_TopicStats)
    except msgspec.DecodeError as error:
        raise AdminError(f"the admin API answered something that is not topic stats: {error}"
                         ) from None
    found = stats.subscriptions.get(subscription)
    if found is None:
        return base.Backlog(waiting=0, in_flight=0)
    in_flight = max(found.unacked_messages, 0)
    return base.Backlog(waiting=max(found.msg_backlog - in_flight, 0), in_flight=in_flight)


class Admin:
    """A client of one cluster's admin REST API (opened on first request, in that event loop)."""

    def __init__(self, settings: pulsar_names.Settings) -> None:
        self._settings = settings
        self._http: httpx.AsyncClient | None = None

    def stats_url(self, topic: str) -> str:
        """Where the stats of uplion's topic ``topic`` are."""
        settings = self._settings
        return (f"{settings.admin_url}/admin/v2/persistent/{settings.tenant}/"
                f"{settings.namespace}/{pulsar_names.local_name(topic)}/stats")

    async def backlog(self, topic: str, subscription: str) -> base.Backlog:
        url = self.stats_url(topic)
        if self._http is None:
            self._http = httpx.AsyncClient(
                timeout=self._settings.operation_timeout_s, follow_redirects=True
            )
        try:
            response = await self._http.get(url)
        except httpx.HTTPError as error:
            raise AdminError(f"the Pulsar admin API at {self._settings.admin_url} cannot be "
                             f"reached: {error!r}") from error
        if response.status_code == httpx.codes.NOT_FOUND:
            return base.Backlog(waiting=0, in_flight=0)
        if response.status_code != httpx.codes.OK:
            raise AdminError(f"GET {url} answered {response.status_code}: "
                             f"{response.text[:_BODY_EXCERPT]}")
        return backlog_from_stats(response.content, subscription)

    async def close(self) -> None:
        http, self._http = self._http, None
        if http is not None:
            await http.aclose()
