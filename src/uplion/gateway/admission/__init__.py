"""Admission: admit or refuse a request for a principal (rate limits, quotas), settle what it
used, and limit failed authentications per client address.

The rules are stated once, in ``rules`` (read its docstring); ``MemoryAdmission`` runs them in
this process (one machine), ``RedisAdmission`` in Redis for any number of gateways, with the
atomic part in Lua (``*.lua`` next to this file). Both answer alike: one conformance suite runs
against both.

``admit`` returns a ``Decision``; an admitted one holds a ``Reservation``, which the request's
end hands to ``settle`` with what it used. A refusal is ``insufficient_quota`` when a quota
refuses, else ``rate_limit_exceeded``, with OpenAI's rate-limit headers and ``Retry-After``
(none when no wait would help: a request larger than a whole limit).
"""

from uplion.gateway.admission.base import (
    Admission,
    AdmissionUnavailable,
    Clock,
    Decision,
    Reservation,
)
from uplion.gateway.admission.memory import MemoryAdmission
from uplion.gateway.admission.redis_store import RedisAdmission

__all__ = [
    "Admission", "AdmissionUnavailable", "Clock", "Decision", "MemoryAdmission",
    "RedisAdmission", "Reservation",
]
