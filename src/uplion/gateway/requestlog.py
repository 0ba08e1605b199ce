"""One request's record: its span in the trace and its line in the request log.

The exchange opens the record before admitting the request (its span starts then, continuing
the client's ``traceparent``) and hands it to the request's ``Call``, whose ``finish`` ends the
span with the answer's status. The line is written once the request's usage is final: at
``finish``, or for a client that left while its worker generated, when the worker reported what
it produced (or the grace for that ran out). A request that ends before it becomes a call (its
model Failed, refused by the limits, its client gone during admission) ends both at once.

The line (logger ``uplion.requests``, level INFO) names the request, the model version, the
status, the durations (total at the gateway, the task's wait on the queue, the worker's time on
it), the tokens billed and the trace id: never the prompt or the text of the answer.
"""

from __future__ import annotations

import asyncio
import logging
import time

from uplion import protocol, tracing
from uplion.gateway import errors
from uplion.gateway.admission import AdmissionUnavailable

log = logging.getLogger("uplion.requests")


class Record:
    __slots__ = ("_logged", "_started", "engine_s", "model", "outcome", "protocol",
                 "queue_s", "request_id", "status", "stream", "task_id", "token_id",
                 "total_s", "trace", "version")

    def __init__(
        self, request_id: str, task_id: str, model: str, version: str, kind: protocol.Protocol,
        stream: bool, token_id: str, traceparent: str | None,
    ) -> None:
        self.request_id = request_id
        self.task_id = task_id
        self.model = model
        self.version = version
        self.protocol = kind.value
        self.stream = stream
        self.token_id = token_id
        self.trace = tracing.start_request(traceparent, {
            "uplion.request_id": request_id, "uplion.task_id": task_id, "uplion.model": model,
            "uplion.model_version": version, "uplion.protocol": kind.value,
            "uplion.stream": stream,
        })
        self.status: int | None = None
        self.outcome = ""
        self.total_s = 0.0
        self.queue_s: float | None = None
        self.engine_s: float | None = None
        self._started = time.perf_counter()
        self._logged = False

    def saw(self, chunk: protocol.Chunk) -> None:
        """A chunk of the answer: the first says how long the task waited on the queue, the
        terminal one how long its worker took."""
        if chunk.queue_wait_s is not None:
            self.queue_s = chunk.queue_wait_s
        if chunk.engine_s is not None:
            self.engine_s = chunk.engine_s

    def finished(self, status: int, outcome: str) -> None:
        """The request is answered with ``status``: end its span. Once."""
        if self.status is not None:
            return
        self.status, self.outcome = status, outcome
        self.total_s = time.perf_counter() - self._started
        self.trace.end(status, {"uplion.outcome": outcome})

    def billed(self, usage: protocol.Usage) -> None:
        """The request's usage is final: write its line. Once."""
        if self._logged:
            return
        self._logged = True
        if log.isEnabledFor(logging.INFO):
            log.info("%s", self._text(usage), extra={"fields": self._fields(usage)})

    def refused(self, error: BaseException) -> None:
        """The request ended with ``error`` before its call could end it (nothing when its
        call ended it already)."""
        if self.status is not None:
            return
        if isinstance(error, errors.ApiError):
            status, outcome = error.error.status, error.error.code or "refused"
        elif isinstance(error, asyncio.CancelledError):
            status, outcome = 499, "client gone"
        elif isinstance(error, AdmissionUnavailable):
            status, outcome = 503, "admission unavailable"
        else:
            status, outcome = 500, "failed"
        self.finished(status, outcome)
        self.billed(protocol.Usage())

    def _fields(self, usage: protocol.Usage) -> dict[str, object]:
        return {
            "request_id": self.request_id, "task_id": self.task_id, "model": self.model,
            "version": self.version, "protocol": self.protocol, "stream": self.stream,
            "status": self.status, "outcome": self.outcome, "total_s": round(self.total_s, 6),
            "queue_s": _rounded(self.queue_s), "engine_s": _rounded(self.engine_s),
            "prompt_tokens": usage.prompt_tokens, "completion_tokens": usage.completion_tokens,
            "token_id": self.token_id, "trace_id": self.trace.trace_id,
        }

    def _text(self, usage: protocol.Usage) -> str:
        waits = ", ".join(f"{name} {seconds:.3f} s" for name, seconds in
                          (("queue", self.queue_s), ("engine", self.engine_s))
                          if seconds is not None)
        return (f"request {self.request_id} {self.model}@{self.version}: {self.status} "
                f"{self.outcome} in {self.total_s:.3f} s{f' ({waits})' if waits else ''}, "
                f"tokens {usage.prompt_tokens}+{usage.completion_tokens}"
                f"{f', trace {self.trace.trace_id}' if self.trace.trace_id else ''}")


def _rounded(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds, 6)
