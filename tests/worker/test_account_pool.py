"""The account pool's refusal rule: a key is retired only once a probe with it is refused, and
refusals seen at once by several requests share one probe."""

from __future__ import annotations

import asyncio

from uplion.worker.engines import account_pool


def config(name: str) -> account_pool.AccountConfig:
    return account_pool.AccountConfig(name=name, key=account_pool.KeySource(env="UNUSED"))


async def test_concurrent_refusals_share_one_probe() -> None:
    answer = asyncio.Event()
    asked: list[str] = []

    async def probe(key: str) -> int:
        asked.append(key)
        await answer.wait()
        return 401

    pool = account_pool.AccountPool([config("a")], probe)
    account = pool.accounts[0]
    account.key = "sk-a"
    checks = [asyncio.create_task(pool.verify(account, "sk-a")) for _ in range(5)]
    await asyncio.sleep(0)  # every check is waiting on the one probe
    answer.set()
    assert await asyncio.gather(*checks) == ["refused"] * 5
    assert asked == ["sk-a"]
    assert account.dead_reason is None  # verify only tells; the caller retires
    await pool.close()


async def test_verdicts() -> None:
    statuses = {"sk-ok": 200, "sk-bad": 403, "sk-down": 503}

    async def probe(key: str) -> int:
        if key == "sk-unreachable":
            raise ConnectionError
        return statuses[key]

    pool = account_pool.AccountPool([config("a")], probe)
    account = pool.accounts[0]
    verdicts = {key: await pool.verify(account, key) for key in [*statuses, "sk-unreachable"]}
    assert verdicts == {"sk-ok": "accepted", "sk-bad": "refused", "sk-down": "unknown",
                        "sk-unreachable": "unknown"}
    await pool.close()
