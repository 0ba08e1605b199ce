"""From the figures of a check to the caller's answer: headers, messages, the retry delay.

Both implementations end here, with what they read before this request (the windows' tallies,
the quotas' counters) and whether it was admitted, so their answers agree to the header.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from uplion.accounts.principal import Principal
from uplion.gateway.admission import rules
from uplion.gateway.admission.base import Decision, Reservation


def decision(
    principal: Principal, request_id: str, estimate: int, now_ms: int, checked: rules.Rules,
    tallies: Sequence[rules.Tally], used: Sequence[int], admitted: bool, held: bool = False,
) -> Decision:
    """The answer to a check at ``now_ms`` that read ``tallies`` and ``used`` (before this
    request) and admitted it or not; ``held``: its reservation is recorded."""
    bucket = rules.bucket_of(now_ms)
    headers: dict[str, str] = {}
    counted: list[tuple[int, int, int]] = []  # (limit, current, reset ms)
    weighed: list[tuple[int, int, int]] = []
    for window, tally in zip(checked.windows, tallies, strict=True):
        after = tally
        if admitted:
            after = tally.plus(bucket, 1 if window.requests is not None else 0,
                               estimate if window.tokens is not None else 0)
        if window.requests is not None:
            counted.append((window.requests, after.requests, after.reset_ms(now_ms)))
        if window.tokens is not None:
            weighed.append((window.tokens, after.tokens, after.reset_ms(now_ms, tokens=True)))
    for kind, figures in (("requests", counted), ("tokens", weighed)):
        if figures:
            limit, current, reset_ms = min(figures, key=lambda each: (each[0] - each[1], each[0]))
            headers[f"x-ratelimit-limit-{kind}"] = str(limit)
            headers[f"x-ratelimit-remaining-{kind}"] = str(max(0, limit - current))
            headers[f"x-ratelimit-reset-{kind}"] = duration(reset_ms)
    if admitted:
        return Decision(True, None, "", None, headers,
                        Reservation(principal, request_id, estimate, now_ms, held))

    refusals: list[tuple[int, str, str]] = []  # (wait ms, code, message), in order of precedence
    for quota, spent in zip(checked.quotas, used, strict=True):
        wait = rules.quota_wait(quota, spent, estimate, now_ms)
        if wait == rules.NEVER:
            refusals.append((wait, "insufficient_quota",
                             f"Request too large for the quota of {quota.subject}: it may use up "
                             f"to {estimate} tokens, the quota is {quota.tokens} per "
                             f"{quota.period}."))
        elif wait:
            refusals.append((wait, "insufficient_quota",
                             f"Quota exhausted for this {quota.period} on {quota.subject}: "
                             f"{spent} of {quota.tokens} tokens used, this request may use "
                             f"up to {estimate}."))
    for window, tally in zip(checked.windows, tallies, strict=True):
        requests_wait, tokens_wait = rules.window_waits(window, tally, estimate, now_ms)
        if requests_wait:
            refusals.append((requests_wait, "rate_limit_exceeded",
                             f"Rate limit reached for requests per minute on {window.subject} "
                             f"(limit {window.requests})."))
        if tokens_wait == rules.NEVER:
            refusals.append((tokens_wait, "rate_limit_exceeded",
                             f"Request too large for tokens per minute on {window.subject}: it "
                             f"may use up to {estimate} tokens, the limit is {window.tokens}."))
        elif tokens_wait:
            refusals.append((tokens_wait, "rate_limit_exceeded",
                             f"Rate limit reached for tokens per minute on {window.subject} "
                             f"(limit {window.tokens}, used {tally.tokens}, requested "
                             f"{estimate})."))
    waits = [wait for wait, _code, _message in refusals]
    if rules.NEVER in waits:
        _wait, code, message = next(refusal for refusal in refusals if refusal[0] == rules.NEVER)
        return Decision(False, code, message, None, headers)
    wait_ms = max(waits)
    _wait, code, message = refusals[0]
    headers["Retry-After"] = retry_after(wait_ms)
    return Decision(False, code, f"{message} Retry in {in_words(wait_ms)}.", wait_ms / 1000,
                    headers)


def retry_after(wait_ms: int) -> str:
    """``Retry-After``: whole seconds, at least 1."""
    return str(max(1, math.ceil(wait_ms / 1000)))


def duration(ms: int) -> str:
    """OpenAI's (Go's) format: ``12ms``, ``1.5s``, ``6m0s``, ``1h2m3s``."""
    if ms < 1000:
        return f"{ms}ms" if ms > 0 else "0s"
    hours, rest = divmod(ms, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    seconds = f"{rest / 1000:.3f}".rstrip("0").rstrip(".") + "s"
    if hours:
        return f"{hours}h{minutes}m{seconds}"
    return f"{minutes}m{seconds}" if minutes else seconds


def in_words(ms: int) -> str:
    """A wait in words for messages: ``12 s``, ``5 min``, ``3 h``, ``2 d`` (rounded up)."""
    seconds = math.ceil(ms / 1000)
    for unit, size in (("d", 86_400), ("h", 3_600), ("min", 60)):
        if seconds >= 2 * size:
            return f"{math.ceil(seconds / size)} {unit}"
    return f"{seconds} s"
