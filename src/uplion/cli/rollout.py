"""``uplion rollout``: the steps of a model rollout, as Argo Workflow steps run them.

Every option also comes from the environment: the gateway's URL (``UPLION_GATEWAY_URL``, or
``UPLION_URL`` as ``uplion admin`` reads it), an API token (``UPLION_API_TOKEN``) and an admin
token (``UPLION_ADMIN_TOKEN``, or ``UPLION_TOKEN``). Each command prints a summary line, then one
JSON line with its figures and verdict. Exit status: 0 passed, 1 a gate failed or the gateway
refused, 2 a usage error or no gateway to talk to.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import typer
import uvloop

from uplion import rollout

T = TypeVar("T")

app = typer.Typer(help="Model rollout steps: smoke test, evaluate, set weight, promote, roll back.",
                  no_args_is_help=True)

GatewayOption = typer.Option(
    "http://127.0.0.1:8000", "--gateway", "--url", envvar=["UPLION_GATEWAY_URL", "UPLION_URL"],
    help="The gateway's base URL.")
TokenOption = typer.Option(None, "--token", envvar="UPLION_API_TOKEN", show_default=False,
                           help="API token for the requests (default: the admin token).")
AdminTokenOption = typer.Option(
    None, "--admin-token", envvar=["UPLION_ADMIN_TOKEN", "UPLION_TOKEN"], show_default=False,
    help="Admin token for the traffic split and the stats.")
ModelOption = typer.Option(..., "--model", "-m", help="The model's name.", show_default=False)
VersionOption = typer.Option(..., "--version", "-v", help="The model version.",
                             show_default=False)


def _run(
    url: str, token: str | None, admin_token: str | None,
    step: Callable[[rollout.Gateway], Awaitable[T]],
) -> T:
    async def main() -> T:
        async with rollout.Gateway(url, api_token=token, admin_token=admin_token) as gateway:
            return await step(gateway)

    try:
        return uvloop.run(main())
    except rollout.RolloutError as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(error.exit_code) from None


def _report(summary: str, data: dict[str, Any], passed: bool) -> None:
    typer.echo(summary)
    typer.echo(json.dumps(data))
    if not passed:
        raise typer.Exit(1)


@app.command("smoke")
def smoke(
    model: str = ModelOption,
    version: str | None = typer.Option(
        None, "--version", "-v", show_default=False,
        help="The model version (default: the stable one, read with the admin token)."),
    requests: int = typer.Option(5, "--requests", "-n", min=1, max=1000,
                                 help="Requests to send, one after the other."),
    url: str = GatewayOption, token: str | None = TokenOption,
    admin_token: str | None = AdminTokenOption,
) -> None:
    """Send real requests pinned to MODEL@VERSION; each must succeed with a non-empty answer."""
    report = _run(url, token, admin_token,
                  lambda gateway: rollout.smoke(gateway, model, version, requests))
    for failure in report.failures():
        typer.echo(f"  {failure}", err=True)
    _report(report.summary(), report.as_json(), report.passed)


@app.command("evaluate")
def evaluate(
    model: str = ModelOption, version: str = VersionOption,
    window: int = typer.Option(60, "--window", min=1, max=600,
                               help="Seconds of live stats to judge."),
    max_error_rate: float = typer.Option(0.01, "--max-error-rate", min=0, max=1,
                                         help="Highest share of 5xx answers and timeouts."),
    max_p95_ms: float = typer.Option(2000, "--max-p95-ms", min=0,
                                     help="Highest 95th percentile latency."),
    min_requests: int = typer.Option(20, "--min-requests", min=0,
                                     help="Fewest requests to judge on."),
    drive: int = typer.Option(0, "--drive", min=0, max=100_000,
                              help="Send this many pinned requests first."),
    prometheus: str | None = typer.Option(
        None, "--prometheus", envvar="UPLION_PROMETHEUS_URL", show_default=False,
        help="Judge on every gateway's figures from this Prometheus, not one gateway's stats "
        "(empty: the gateway's)."),
    prometheus_match: str = typer.Option(
        "", "--prometheus-match", show_default=False,
        help='With --prometheus: only the series these label matchers select, e.g. '
        'namespace="uplion-staging" (one Prometheus scrapes every environment).'),
    baseline: str | None = typer.Option(
        None, "--baseline", show_default=False,
        help="Another version (the stable one) whose p95 this one's may not pass by more than "
        "--max-p95-ratio."),
    max_p95_ratio: float = typer.Option(1.5, "--max-p95-ratio", min=1,
                                        help="With --baseline: the highest p95 ratio."),
    url: str = GatewayOption, token: str | None = TokenOption,
    admin_token: str | None = AdminTokenOption,
) -> None:
    """Judge MODEL@VERSION on live figures: error rate, p95 latency, request count."""
    try:
        rollout.prometheus.matchers(prometheus_match)
    except ValueError as error:
        raise typer.BadParameter(str(error), param_hint="--prometheus-match") from None
    gates = rollout.Gates(max_error_rate, max_p95_ms, min_requests, max_p95_ratio)

    async def step(gateway: rollout.Gateway) -> rollout.Verdict:
        if not prometheus:  # unset, or empty: a workflow without a monitoring stack
            return await rollout.evaluate(gateway, model, version, window, gates, drive,
                                          baseline=baseline)
        async with rollout.Prometheus(prometheus, match=prometheus_match) as source:
            return await rollout.evaluate(gateway, model, version, window, gates, drive,
                                          source, baseline)

    verdict = _run(url, token, admin_token, step)
    _report(verdict.summary(), verdict.as_json(), verdict.passed)


def _traffic(step: str, change: tuple[dict[str, Any], dict[str, Any]]) -> None:
    before, after = change
    _report(f"{step} {rollout.describe(before)} -> {rollout.describe(after)}",
            {"step": step, "before": before, "after": after}, True)


@app.command("set-weight")
def set_weight(
    model: str = ModelOption, version: str = VersionOption,
    weight: int = typer.Option(..., "--weight", "-w", min=0, max=100, show_default=False,
                               help="Percent of unpinned requests for the canary."),
    url: str = GatewayOption, admin_token: str | None = AdminTokenOption,
) -> None:
    """Make VERSION the canary of MODEL with WEIGHT percent of its unpinned requests."""
    _traffic("set-weight", _run(url, None, admin_token, lambda gateway: rollout.set_weight(
        gateway, model, version, weight)))


@app.command("promote")
def promote(
    model: str = ModelOption, version: str = VersionOption,
    url: str = GatewayOption, admin_token: str | None = AdminTokenOption,
) -> None:
    """Make VERSION the stable version of MODEL, with no canary."""
    _traffic("promote", _run(url, None, admin_token,
                             lambda gateway: rollout.promote(gateway, model, version)))


@app.command("rollback")
def rollback(
    model: str = ModelOption, url: str = GatewayOption,
    admin_token: str | None = AdminTokenOption,
) -> None:
    """Drop MODEL's canary: all its unpinned requests go to the stable version."""
    _traffic("rollback", _run(url, None, admin_token,
                              lambda gateway: rollout.rollback(gateway, model)))
