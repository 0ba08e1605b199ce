"""``uplion admin``: users, tokens, limits, quotas and usage through a gateway's admin API.

The commands are clients of ``/admin`` on a running gateway (``--url``, ``UPLION_URL``) with an
admin token (``--token``, ``UPLION_TOKEN``), so every change reaches every gateway's cache at
once. ``migrate`` and ``bootstrap`` are the exceptions: they work on the store directly (its
database and, with ``UPLION_REDIS_URL``, the shared cache), for a cluster's first start.
"""

from __future__ import annotations

import json
from typing import Any

import httpx
import typer
import uvloop

from uplion import config, wiring
from uplion.accounts import default_url, migrate
from uplion.cli import token_secret
from uplion.operator import kube

app = typer.Typer(help="Administer users, tokens, limits, quotas and usage.", no_args_is_help=True)
users = typer.Typer(help="Users: create, list, update.", no_args_is_help=True)
tokens = typer.Typer(help="API tokens: create, list, revoke.", no_args_is_help=True)
cache = typer.Typer(help="The principal cache.", no_args_is_help=True)
app.add_typer(users, name="users")
app.add_typer(tokens, name="tokens")
app.add_typer(cache, name="cache")

UrlOption = typer.Option("http://127.0.0.1:8000", "--url", envvar="UPLION_URL",
                         help="The gateway's base URL.")
TokenOption = typer.Option(..., "--token", envvar="UPLION_TOKEN", help="An admin API token.",
                           show_default=False)
ModelsOption = typer.Option(None, "--models", help="Comma-separated model allow-list.")
RpmOption = typer.Option(None, "--rpm", help="Requests per minute.")
TpmOption = typer.Option(None, "--tpm", help="Tokens per minute.")
QuotaOption = typer.Option(None, "--quota", help="Token budget per period.")
PeriodOption = typer.Option("month", "--period", help="Quota period: hour, day or month.")


def _call(url: str, token: str, method: str, path: str, body: Any = None,
          params: dict[str, str] | None = None) -> Any:
    try:
        response = httpx.request(
            method, f"{url.rstrip('/')}{path}", json=body, params=params,
            headers={"Authorization": f"Bearer {token}"}, timeout=30,
        )
    except httpx.HTTPError as exc:
        raise typer.BadParameter(f"cannot reach {url}: {exc}", param_hint="--url") from None
    if response.status_code >= 400:
        try:
            message = response.json()["error"]["message"]
        except (ValueError, KeyError, TypeError):
            message = response.text
        typer.echo(f"error {response.status_code}: {message}", err=True)
        raise typer.Exit(1)
    return response.json()


def _show(value: Any) -> None:
    typer.echo(json.dumps(value, indent=2))


def _limits(rpm: int | None, tpm: int | None) -> dict[str, int | None]:
    return {"requests_per_minute": rpm, "tokens_per_minute": tpm}


def _quota(tokens_budget: int | None, period: str) -> dict[str, Any] | None:
    return None if tokens_budget is None else {"tokens": tokens_budget, "period": period}


def _models(models: str | None) -> list[str] | None:
    return None if models is None else [m.strip() for m in models.split(",") if m.strip()]


@app.command("migrate")
def migrate_command() -> None:
    """Upgrade the database schema (UPLION_DATABASE_URL) to the newest revision."""
    url = config.Settings().database_url or default_url()
    uvloop.run(migrate(url))
    typer.echo("database is up to date")


@app.command("bootstrap")
def bootstrap(
    secret: str | None = typer.Option(
        None, "--token-secret", metavar="NAME",
        help="Write the token to this Kubernetes Secret (key 'token') instead of printing it "
             "(in a pod: its service account; elsewhere: the kubeconfig)."),
    namespace: str | None = typer.Option(
        None, "--namespace", envvar="POD_NAMESPACE",
        help="The Secret's namespace. [default: the pod's namespace]"),
) -> None:
    """On an empty account store: migrate, create the user 'admin' and print its token once
    (or write it to a Secret)."""
    if secret is None:
        token = uvloop.run(_bootstrap(config.Settings()))
        if token is None:
            typer.echo("the account store has users already: nothing to do")
        else:
            typer.echo("created the user 'admin'; its API token, shown only this once:\n\n"
                       f"    {token}\n")
        return
    namespace = namespace or kube.pod_namespace()
    if not namespace:
        raise typer.BadParameter("no namespace for the Secret: not in a pod, and none given",
                                 param_hint="--namespace")
    try:
        outcome = uvloop.run(_bootstrap_to_secret(config.Settings(), namespace, secret))
    except kube.ApiError as error:
        typer.echo(f"error: cannot write the Secret {namespace}/{secret}: {error}", err=True)
        raise typer.Exit(1) from None
    typer.echo(outcome)


async def _bootstrap(settings: config.Settings) -> str | None:
    backends = wiring.backends(settings)
    async with backends.running(migrate_first=True):
        return await backends.accounts.bootstrap_admin()


async def _bootstrap_to_secret(settings: config.Settings, namespace: str, name: str) -> str:
    """Bootstrap, keeping the token in the Secret; what happened, without the token."""
    client = await kube.Kube.connect()
    try:
        had_token = await token_secret.reserve(client, namespace, name)
        token = await _bootstrap(settings)
        if token is None:
            kept = "it holds a token" if had_token else "it holds no token"
            return (f"the account store has users already: nothing to do (Secret "
                    f"{namespace}/{name}: {kept})")
        await token_secret.store(client, namespace, name, token)
    finally:
        await client.close()
    return (f"created the user 'admin'; its API token is in the Secret {namespace}/{name}, "
            f"key '{token_secret.KEY}'")


@users.command("create")
def create_user(
    name: str, role: str = typer.Option("member", "--role", help="admin or member"),
    models: str | None = ModelsOption, rpm: int | None = RpmOption, tpm: int | None = TpmOption,
    quota: int | None = QuotaOption, period: str = PeriodOption,
    url: str = UrlOption, token: str = TokenOption,
) -> None:
    """Create a user."""
    _show(_call(url, token, "POST", "/admin/users", {
        "name": name, "role": role, "allowed_models": _models(models),
        "limits": _limits(rpm, tpm), "quota": _quota(quota, period),
    }))


@users.command("list")
def list_users(url: str = UrlOption, token: str = TokenOption) -> None:
    """List users."""
    _show(_call(url, token, "GET", "/admin/users")["data"])


@users.command("update")
def update_user(
    user_id: str, role: str | None = typer.Option(None, "--role"),
    active: bool | None = typer.Option(None, "--active/--disabled"),
    models: str | None = ModelsOption, rpm: int | None = RpmOption, tpm: int | None = TpmOption,
    quota: int | None = QuotaOption, period: str = PeriodOption,
    url: str = UrlOption, token: str = TokenOption,
) -> None:
    """Change a user's role, state, allow-list, limits (both given together) or quota."""
    changes: dict[str, Any] = {}
    if role is not None:
        changes["role"] = role
    if active is not None:
        changes["active"] = active
    if models is not None:
        changes["allowed_models"] = _models(models) or None
    if rpm is not None or tpm is not None:
        changes["limits"] = _limits(rpm, tpm)
    if quota is not None:
        changes["quota"] = _quota(quota, period)
    _show(_call(url, token, "PATCH", f"/admin/users/{user_id}", changes))


@tokens.command("create")
def create_token(
    user_id: str, name: str = typer.Option("default", "--name"),
    expires_in_days: float | None = typer.Option(None, "--expires-in-days"),
    models: str | None = ModelsOption, rpm: int | None = RpmOption, tpm: int | None = TpmOption,
    quota: int | None = QuotaOption, period: str = PeriodOption,
    url: str = UrlOption, token: str = TokenOption,
) -> None:
    """Create an API token; the full token is printed once, never stored."""
    created = _call(url, token, "POST", "/admin/tokens", {
        "user_id": user_id, "name": name, "expires_in_days": expires_in_days,
        "allowed_models": _models(models), "limits": _limits(rpm, tpm),
        "quota": _quota(quota, period),
    })
    _show(created)
    typer.echo(f"\nThe token, shown only this once:\n\n    {created['token']}\n", err=True)


@tokens.command("list")
def list_tokens(
    user_id: str | None = typer.Option(None, "--user"),
    url: str = UrlOption, token: str = TokenOption,
) -> None:
    """List tokens (never their secrets)."""
    params = {"user_id": user_id} if user_id else None
    _show(_call(url, token, "GET", "/admin/tokens", params=params)["data"])


@tokens.command("revoke")
def revoke_token(token_id: str, url: str = UrlOption, token: str = TokenOption) -> None:
    """Revoke a token: every gateway refuses it within a second."""
    _show(_call(url, token, "POST", f"/admin/tokens/{token_id}/revoke"))


@app.command("usage")
def usage(
    since: str | None = typer.Option(None, "--since", help="ISO 8601, default 7 days ago"),
    until: str | None = typer.Option(None, "--until", help="ISO 8601, default now"),
    user_id: str | None = typer.Option(None, "--user"),
    model: str | None = typer.Option(None, "--model"),
    url: str = UrlOption, token: str = TokenOption,
) -> None:
    """Usage per hour, user, token and model."""
    params = {k: v for k, v in
              {"since": since, "until": until, "user_id": user_id, "model": model}.items() if v}
    _show(_call(url, token, "GET", "/admin/usage", params=params)["data"])


@cache.command("rebuild")
def rebuild_cache(url: str = UrlOption, token: str = TokenOption) -> None:
    """Reload every principal from the database into the cache."""
    _show(_call(url, token, "POST", "/admin/cache/rebuild"))


def status(url: str = UrlOption, token: str = TokenOption) -> None:
    """Each model's phase, replicas, backlog and reason."""
    models = _call(url, token, "GET", "/admin/models")["data"]
    header = f"{'MODEL':<32} {'PHASE':<9} {'REPLICAS':>8} {'WAITING':>8} {'IN FLIGHT':>9}"
    typer.echo(f"{header}  REASON")
    for model in models:
        state = model["status"]
        name = f"{model['name']}@{model['version']}"
        reason = " ".join(filter(None, [state["reason"], state["message"]]))
        typer.echo(f"{name:<32} {state['phase']:<9} {state['replicas']:>8} "
                   f"{model['backlog']['waiting']:>8} {model['backlog']['in_flight']:>9}  {reason}")
