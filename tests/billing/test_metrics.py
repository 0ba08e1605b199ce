"""The billing metrics count what a flush applied: per tenant and model, tenants beyond the
bound summed under ``other``."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from uplion.billing.events import UsageEvent
from uplion.billing.metrics import BillingMetrics


def event(number: int, user: str, model: str, prompt: int, completion: int) -> UsageEvent:
    return UsageEvent(event_id=f"e{number}", token_id="t1", user_id=user, model=model,
                      version="v1", prompt_tokens=prompt, completion_tokens=completion,
                      latency_ms=5, status=200, at=1_800_000_000.0 + number)


def samples(metrics: BillingMetrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(metrics.exposition().decode())
        for sample in family.samples
        if sample.name.startswith("uplion_billing_tenant") and sample.name.endswith("_total")
    }


def test_a_flush_is_counted_by_tenant_and_model_and_the_rest_as_other() -> None:
    metrics = BillingMetrics(max_tenants=2)
    applied = [event(1, "ann", "chat", 10, 3), event(2, "ann", "chat", 5, 1),
               event(3, "bob", "embed", 7, 0), event(4, "cyd", "chat", 2, 2),
               event(5, "ann", "embed", 1, 0)]

    metrics.observe(applied, at=1_800_000_010.0)
    metrics.observe([event(6, "ann", "chat", 4, 4)], at=1_800_000_011.0)

    requests, tokens = "uplion_billing_tenant_requests_total", "uplion_billing_tenant_tokens_total"
    assert samples(metrics) == {
        (requests, (("model", "chat"), ("tenant", "ann"))): 3,
        (requests, (("model", "embed"), ("tenant", "bob"))): 1,
        (requests, (("model", "chat"), ("tenant", "other"))): 1,
        (requests, (("model", "embed"), ("tenant", "ann"))): 1,
        (tokens, (("direction", "prompt"), ("model", "chat"), ("tenant", "ann"))): 19,
        (tokens, (("direction", "completion"), ("model", "chat"), ("tenant", "ann"))): 8,
        (tokens, (("direction", "prompt"), ("model", "embed"), ("tenant", "bob"))): 7,
        (tokens, (("direction", "completion"), ("model", "embed"), ("tenant", "bob"))): 0,
        (tokens, (("direction", "prompt"), ("model", "chat"), ("tenant", "other"))): 2,
        (tokens, (("direction", "completion"), ("model", "chat"), ("tenant", "other"))): 2,
        (tokens, (("direction", "prompt"), ("model", "embed"), ("tenant", "ann"))): 1,
        (tokens, (("direction", "completion"), ("model", "embed"), ("tenant", "ann"))): 0,
    }
