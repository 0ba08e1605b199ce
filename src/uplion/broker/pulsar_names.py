"""Where uplion's things live on Apache Pulsar: the broker URL's options and the topic names.

Pure (no client, no I/O), so that the operator builds KEDA's ``pulsar`` trigger and the workers'
broker URL from the very names the broker uses.

The URL: ``pulsar://host:6650`` or ``pulsar+ssl://host:6651`` (several brokers:
``pulsar://a:6650,b:6650``), with uplion's options in its query, e.g.
``pulsar://broker:6650?admin=http://broker:8080&tenant=public&namespace=default``:

- ``admin``: the admin REST API, for backlogs (default ``http://<first host>:8080``, or
  ``https://<first host>:8443`` for ``pulsar+ssl``)
- ``tenant``, ``namespace``: where the topics live (default ``public`` / ``default``)
- ``operation_timeout_s``: how long one client operation (lookup, subscribe, send, an admin
  request) may take before it fails (default 30)

Topics, all persistent, at ``persistent://<tenant>/<namespace>/<local name>``:

- a model version's topic ``model.<name>@<version>`` (``protocol.topic_for``), e.g.
  ``model.llama-3.1@2`` → ``model.llama-3.1_v2``;
- ``uplion.reply.<address>`` per gateway, ``uplion.cancel``, ``uplion.status``.

The local name escapes the topic so that it is a plain Pulsar name that needs no URL encoding
(KEDA pastes it into the admin URL as it is): letters, digits, ``.`` and ``-`` stay; ``_`` becomes
``__`` and ``@`` becomes ``_v``; every other character becomes ``_`` and two lowercase hex digits
per byte of its UTF-8 form; and the ``-`` that begins ``-partition-`` (which Pulsar would read as
a partition suffix) becomes ``_2d``. Every escape starts with ``_`` and reads unambiguously, so
two topics never share a Pulsar topic.
"""

from __future__ import annotations

import math
import re
import string
import urllib.parse
from dataclasses import dataclass

SCHEMES = {"pulsar": 6650, "pulsar+ssl": 6651}
"""URL schemes and their default port."""

REPLY_PREFIX = "uplion.reply."
CANCEL_TOPIC = "uplion.cancel"
STATUS_TOPIC = "uplion.status"
OPTIONS = frozenset({"admin", "tenant", "namespace", "operation_timeout_s"})

_PLAIN = frozenset(string.ascii_letters + string.digits + ".-")
_PARTITION = "-partition-"
# Pulsar's own rule for tenant and namespace names (NamedEntity), ASCII as Java reads \w.
_ENTITY = re.compile(r"[-=:.A-Za-z0-9_]+")


@dataclass(frozen=True, slots=True)
class Settings:
    """A parsed Pulsar URL: what the client connects to, and where uplion's topics live."""

    service_url: str
    hosts: tuple[tuple[str, int], ...]
    admin_url: str
    tenant: str = "public"
    namespace: str = "default"
    operation_timeout_s: float = 30.0

    def topic(self, name: str) -> str:
        """The full Pulsar name of uplion's topic ``name``."""
        return topic_name(self.tenant, self.namespace, name)


def local_name(topic: str) -> str:
    """The Pulsar local name of ``topic`` (the escaping in the module docstring)."""
    parts: list[str] = []
    for index, char in enumerate(topic):
        if char == "-" and topic.startswith(_PARTITION, index):
            parts.append("_2d")
        elif char in _PLAIN:
            parts.append(char)
        elif char == "_":
            parts.append("__")
        elif char == "@":
            parts.append("_v")
        else:
            parts.extend(f"_{byte:02x}" for byte in char.encode())
    return "".join(parts)


def topic_name(tenant: str, namespace: str, topic: str) -> str:
    """``persistent://<tenant>/<namespace>/<local name of topic>``."""
    if not topic:
        raise ValueError("a topic name cannot be empty")
    return f"persistent://{tenant}/{namespace}/{local_name(topic)}"


def parse_url(url: str) -> Settings:
    """The settings in a ``pulsar://`` URL; ``ValueError`` saying what is wrong with it."""
    scheme, separator, rest = url.partition("://")
    if not separator or scheme not in SCHEMES:
        raise ValueError(f"not a Pulsar URL: {url!r} (use pulsar://host:6650 or "
                         "pulsar+ssl://host:6651)")
    location, _, query_text = rest.partition("?")
    location = location.rstrip("/")
    if "/" in location or "@" in location:
        raise ValueError(f"a Pulsar URL names brokers only, as host:port[,host:port]: {url!r}")
    hosts = tuple(_host(part, SCHEMES[scheme], url) for part in location.split(","))
    options = _options(query_text, url)
    first_host = f"[{hosts[0][0]}]" if ":" in hosts[0][0] else hosts[0][0]
    default_admin = (f"https://{first_host}:8443" if scheme == "pulsar+ssl"
                     else f"http://{first_host}:8080")
    admin_url = _admin_url(options.get("admin", default_admin))
    tenant = _entity("tenant", options.get("tenant", "public"))
    namespace = _entity("namespace", options.get("namespace", "default"))
    timeout = _positive("operation_timeout_s", options.get("operation_timeout_s", "30"))
    return Settings(
        service_url=f"{scheme}://{location}", hosts=hosts, admin_url=admin_url, tenant=tenant,
        namespace=namespace, operation_timeout_s=timeout,
    )


def with_options(url: str, **options: str) -> str:
    """``url`` with these uplion options set in its query (replacing any given there)."""
    unknown = set(options) - OPTIONS
    if unknown:
        raise ValueError(f"unknown Pulsar URL options {sorted(unknown)}: use {sorted(OPTIONS)}")
    base, _, query_text = url.partition("?")
    kept = [(name, value) for name, value in urllib.parse.parse_qsl(query_text)
            if name not in options]
    query = urllib.parse.urlencode([*kept, *sorted(options.items())], safe=":/")
    result = f"{base}?{query}" if query else base
    parse_url(result)
    return result


def _host(part: str, default_port: int, url: str) -> tuple[str, int]:
    """``(host, port)`` of ``host``, ``host:port``, ``[v6 address]`` or ``[v6 address]:port``."""
    if part.startswith("["):
        host, bracket, after = part[1:].partition("]")
        if not bracket or (after and not after.startswith(":")):
            raise ValueError(f"bad IPv6 host {part!r} in Pulsar URL {url!r}")
        colon, port_text = after[:1], after[1:]
    else:
        host, colon, port_text = part.partition(":")
    if not host:
        raise ValueError(f"a Pulsar URL needs a host: {url!r}")
    if not colon:
        return host, default_port
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ValueError(f"bad port {port_text!r} in Pulsar URL {url!r}")
    return host, int(port_text)


def _options(query_text: str, url: str) -> dict[str, str]:
    try:
        pairs = urllib.parse.parse_qsl(query_text, keep_blank_values=True, strict_parsing=True)
    except ValueError:
        if query_text:
            raise ValueError(f"malformed query in Pulsar URL {url!r}") from None
        pairs = []
    options: dict[str, str] = {}
    for name, value in pairs:
        if name not in OPTIONS:
            raise ValueError(f"unknown Pulsar URL option {name!r}: use {sorted(OPTIONS)}")
        if name in options:
            raise ValueError(f"Pulsar URL option {name!r} is given twice")
        options[name] = value
    return options


def _admin_url(value: str) -> str:
    parts = urllib.parse.urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"admin must be an http:// or https:// URL with a host: {value!r}")
    if parts.query or parts.fragment:
        raise ValueError(f"admin must be a plain URL without query or fragment: {value!r}")
    return value.rstrip("/")


def _entity(kind: str, value: str) -> str:
    if not _ENTITY.fullmatch(value):
        raise ValueError(f"bad Pulsar {kind} {value!r}: letters, digits and -=:._ only")
    return value


def _positive(name: str, value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        raise ValueError(f"URL option {name}={value!r} is not a number") from None
    if not math.isfinite(number) or number <= 0:
        raise ValueError(f"URL option {name} must be a positive number of seconds: {value!r}")
    return number
