"""Hand-written fakes for the trainer's ports: the training locks and where fits run."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from shared.events import DataIngested
from trainer.service import Outcome, Plan


@dataclass
class FakeLocks:
    """Locks in a dict, key -> owner; nothing expires."""

    owners: dict[str, str] = field(default_factory=dict)
    renewals: list[str] = field(default_factory=list)
    released: list[str] = field(default_factory=list)

    async def acquire(self, key: str, owner: str, ttl_ms: int) -> bool:
        if key in self.owners:
            return False
        self.owners[key] = owner
        return True

    async def renew(self, key: str, ttl_ms: int) -> None:
        self.renewals.append(key)

    async def release(self, key: str) -> None:
        self.owners.pop(key, None)
        self.released.append(key)


@dataclass
class FakeFits:
    """Answers every fit with `answer`: an outcome, None (nothing to train), or an exception to
    raise. `while_fitting`, when given, is awaited inside the fit, as a long fit would be."""

    answer: Outcome | BaseException | None
    while_fitting: Callable[[], Awaitable[object]] | None = None
    plans: list[Plan] = field(default_factory=list)
    started: int = 0
    replaced: int = 0
    closed: bool = False

    async def fit(self, event: DataIngested, plan: Plan) -> Outcome | None:
        self.plans.append(plan)
        if self.while_fitting is not None:
            await self.while_fitting()
        if isinstance(self.answer, BaseException):
            raise self.answer
        return self.answer

    def start(self) -> None:
        self.started += 1

    def replace(self) -> None:
        self.replaced += 1

    def close(self) -> None:
        self.closed = True
