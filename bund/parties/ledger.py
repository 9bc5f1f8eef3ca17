"""The privacy-budget ledger of one node: exact, reserved before a job runs, never overspent.

Each dataset has a total (epsilon, delta) in ``policy.toml``, and may cap what one job and one
requester can take (``max_epsilon_per_job``, ``max_epsilon_per_requester``): the requester cap
is the real control against differencing, since every query of the same cohort costs its ε.

A job's life at one node, in the ledger:

1. **Reserve** at acceptance: the most the job's plan can cost (for a job that pays as it goes,
   every charge its plan allows). Refused if the total, the job cap or the requester cap would
   be exceeded by what is spent plus what other jobs hold reserved.
2. **Charge** when the job starts (its up-front cost), or as it goes (once per part, a training
   round), out of its reservation; a charge beyond the reservation is refused (the job's plan
   did not allow it).
3. **Release** what is left when the job ends, whatever the outcome, and all of it when it is
   refused, denied, cancelled or expires before it starts. What was charged stays charged.

Each step runs in one SQLite transaction (``BEGIN IMMEDIATE``), so concurrent jobs, from any
thread or process, can never overspend, and is audited (``budget_reserved``,
``budget_charged``, ``budget_released``). A charge is recorded once per (job, dataset, part),
so a resumed job is never charged twice.
"""

from __future__ import annotations

import datetime as dt
import sqlite3
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

from bund.compute.dp.budget import Budget, format_rational
from bund.compute.errors import BundError
from bund.parties.jobs import AuditSink, JsonScalar
from bund.parties.lifecycle.events import Event, Key


class BudgetExhaustedError(BundError):
    """A job would spend more privacy budget than it may; nothing was reserved or charged."""


@dataclass(frozen=True)
class BudgetLimits:
    """One dataset's budget: its total, and the most one job and one requester may take."""

    total: Budget = Budget()
    max_epsilon_per_job: Fraction | None = None
    max_epsilon_per_requester: Fraction | None = None


@dataclass(frozen=True)
class BudgetLine:
    """One dataset's budget: total, spent, held by running jobs, and what is left."""

    dataset: str
    total: Budget
    spent: Budget
    reserved: Budget = Budget()

    @property
    def remaining(self) -> Budget:
        """What a new job could still reserve (before the per-job and per-requester caps)."""
        return self.total - self.spent - self.reserved


def _sum(rows: list[tuple[str, str]]) -> Budget:
    return Budget(
        sum((Fraction(e) for e, _ in rows), Fraction(0)),
        sum((Fraction(d) for _, d in rows), Fraction(0)),
    )


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="microseconds")


class BudgetLedger:
    """Reservations and charges against per-dataset budgets, durable in SQLite, audited.

    Args:
        path: The ledger's SQLite file.
        limits: Each dataset's budget (a plain ``Budget`` is a total with no caps).
        audit: Where each reservation, charge and release is recorded.
    """

    def __init__(
        self, path: Path, limits: Mapping[str, Budget | BudgetLimits], audit: AuditSink
    ) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._path = path
        self.set_limits(limits)
        self._audit = audit
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=30)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS charges (job_id TEXT NOT NULL, dataset TEXT NOT NULL, "
            "part TEXT NOT NULL DEFAULT '', "
            "epsilon TEXT NOT NULL, delta TEXT NOT NULL, at TEXT NOT NULL, "
            "PRIMARY KEY (job_id, dataset, part))"
        )
        columns = {row[1] for row in self._db.execute("PRAGMA table_info(charges)")}
        if "requester" not in columns:  # a ledger written before requesters were recorded
            self._db.execute("ALTER TABLE charges ADD COLUMN requester TEXT NOT NULL DEFAULT ''")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS reservations (job_id TEXT NOT NULL, "
            "dataset TEXT NOT NULL, requester TEXT NOT NULL, epsilon TEXT NOT NULL, "
            "delta TEXT NOT NULL, at TEXT NOT NULL, PRIMARY KEY (job_id, dataset))"
        )

    def set_limits(self, limits: Mapping[str, Budget | BudgetLimits]) -> None:
        """Replace the datasets' budgets (a reloaded policy); checked by the next reservation."""
        self._limits = {
            name: value if isinstance(value, BudgetLimits) else BudgetLimits(value)
            for name, value in limits.items()
        }

    def limits(self, dataset: str) -> BudgetLimits:
        """One dataset's budget and caps."""
        return self._limits.get(dataset, BudgetLimits())

    @contextmanager
    def _transaction(self) -> Iterator[None]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def _spent(self, dataset: str, requester: str | None = None) -> Budget:
        where, args = "dataset = ?", [dataset]
        if requester is not None:
            where, args = where + " AND requester = ?", [*args, requester]
        return _sum(
            self._db.execute(
                f"SELECT epsilon, delta FROM charges WHERE {where}",  # noqa: S608 - fixed text
                args,
            ).fetchall()
        )

    def _reserved(self, dataset: str, requester: str | None = None) -> Budget:
        where, args = "dataset = ?", [dataset]
        if requester is not None:
            where, args = where + " AND requester = ?", [*args, requester]
        return _sum(
            self._db.execute(
                f"SELECT epsilon, delta FROM reservations WHERE {where}",  # noqa: S608
                args,
            ).fetchall()
        )

    def _reservation(self, job_id: str, dataset: str) -> tuple[str, Budget] | None:
        row = self._db.execute(
            "SELECT requester, epsilon, delta FROM reservations WHERE job_id = ? AND dataset = ?",
            (job_id, dataset),
        ).fetchone()
        return None if row is None else (row[0], Budget.parse(row[1], row[2]))

    def _line(self, dataset: str) -> BudgetLine:
        total = self.limits(dataset).total
        return BudgetLine(dataset, total, self._spent(dataset), self._reserved(dataset))

    def line(self, dataset: str) -> BudgetLine:
        """One dataset's total, spent, reserved and remaining budget."""
        with self._lock:
            return self._line(dataset)

    def lines(self) -> list[BudgetLine]:
        """Every dataset with a budget, a charge or a reservation."""
        with self._lock:
            names = {r[0] for r in self._db.execute("SELECT DISTINCT dataset FROM charges")}
            names |= {r[0] for r in self._db.execute("SELECT DISTINCT dataset FROM reservations")}
            names |= set(self._limits)
            return [self._line(n) for n in sorted(names)]

    def reserved_jobs(self) -> list[str]:
        """The jobs that hold a reservation here (a restarted node releases those that ended)."""
        with self._lock:
            rows = self._db.execute("SELECT DISTINCT job_id FROM reservations").fetchall()
        return sorted(r[0] for r in rows)

    def _record(self, event: Event, job_id: str, fields: Mapping[str, JsonScalar]) -> None:
        self._audit.append(event, job_id, dict(fields))

    def _fields(self, dataset: str, amount: Budget, line: BudgetLine) -> dict[str, JsonScalar]:
        return {
            Key.DATASET: dataset,
            Key.EPSILON: format_rational(amount.epsilon),
            Key.DELTA: format_rational(amount.delta),
            Key.SPENT: format_rational(line.spent.epsilon),
            Key.SPENT_DELTA: format_rational(line.spent.delta),
            "reserved": format_rational(line.reserved.epsilon),
            Key.TOTAL: format_rational(line.total.epsilon),
            Key.TOTAL_DELTA: format_rational(line.total.delta),
        }

    def check_caps(self, dataset: str, requester: str, amount: Budget) -> None:
        """Refuse ``amount`` for one job of ``requester`` if a cap or the total forbids it now.

        Raises:
            BudgetExhaustedError: Naming the cap and what is left under it.
        """
        with self._lock:
            self._check(dataset, requester, amount)

    def _check(self, dataset: str, requester: str, amount: Budget) -> None:
        limits = self.limits(dataset)
        line = self._line(dataset)
        if not (line.spent + line.reserved + amount).fits_within(limits.total):
            raise BudgetExhaustedError(
                f"dataset {dataset!r} has {line.remaining} of its privacy budget left "
                f"({line.reserved} of it held by running jobs); this job needs {amount}. Its "
                "operator can raise budget_epsilon/budget_delta in policy.toml only with the "
                "data owner's approval"
            )
        cap = limits.max_epsilon_per_job
        if cap is not None and amount.epsilon > cap:
            raise BudgetExhaustedError(
                f"this job would cost epsilon={format_rational(amount.epsilon)} on dataset "
                f"{dataset!r}, over its owner's cap of {format_rational(cap)} per job "
                "(max_epsilon_per_job)"
            )
        cap = limits.max_epsilon_per_requester
        if cap is not None:
            used = self._spent(dataset, requester) + self._reserved(dataset, requester)
            if used.epsilon + amount.epsilon > cap:
                left = max(cap - used.epsilon, Fraction(0))
                raise BudgetExhaustedError(
                    f"{requester} has epsilon={format_rational(left)} left of its cap of "
                    f"{format_rational(cap)} on dataset {dataset!r} (max_epsilon_per_requester); "
                    f"this job needs {amount}"
                )

    def reserve(self, job_id: str, dataset: str, requester: str, amount: Budget) -> BudgetLine:
        """Hold ``amount`` of ``dataset``'s budget for ``job_id`` until it is charged or released.

        A second reservation for the same (job, dataset) is a no-op. A zero amount reserves
        nothing.

        Raises:
            BudgetExhaustedError: The total, the job cap or the requester cap does not allow it;
                nothing is reserved.
        """
        if amount.is_zero:
            return self.line(dataset)
        with self._transaction():
            held = self._reservation(job_id, dataset)
            if held is None:
                self._check(dataset, requester, amount)
                self._db.execute(
                    "INSERT INTO reservations (job_id, dataset, requester, epsilon, delta, at) "
                    "VALUES (?, ?, ?, ?, ?, ?)",
                    (
                        job_id,
                        dataset,
                        requester,
                        format_rational(amount.epsilon),
                        format_rational(amount.delta),
                        _now(),
                    ),
                )
            line = self._line(dataset)
            if held is None:
                fields = {**self._fields(dataset, amount, line), Key.REQUESTER: requester}
                self._record(Event.BUDGET_RESERVED, job_id, fields)
        return line

    def charge(self, job_id: str, dataset: str, cost: Budget, part: str = "") -> BudgetLine:
        """Charge ``cost`` to ``dataset`` for ``job_id`` (or one ``part`` of it) before it runs.

        Out of the job's reservation when it holds one (a charge beyond it is refused: the job's
        plan did not allow it); otherwise against the total. A second charge for the same
        (job, dataset, part) is a no-op, so a resumed job pays once.

        Raises:
            BudgetExhaustedError: The cost does not fit; nothing is charged.
        """
        if cost.is_zero:
            return self.line(dataset)
        with self._transaction():
            done = self._db.execute(
                "SELECT 1 FROM charges WHERE job_id = ? AND dataset = ? AND part = ?",
                (job_id, dataset, part),
            ).fetchone()
            if done is None:
                held = self._reservation(job_id, dataset)
                requester = "" if held is None else held[0]
                if held is None:
                    self._check(dataset, requester, cost)
                elif not cost.fits_within(held[1]):
                    raise BudgetExhaustedError(
                        f"job {job_id} reserved {held[1]} of dataset {dataset!r} for what its "
                        f"plan allows, and this charge of {cost} ({part or 'its start'}) does "
                        "not fit in what is left: the job went beyond its approved plan"
                    )
                else:
                    left = held[1] - cost
                    self._db.execute(
                        "UPDATE reservations SET epsilon = ?, delta = ? "
                        "WHERE job_id = ? AND dataset = ?",
                        (
                            format_rational(left.epsilon),
                            format_rational(left.delta),
                            job_id,
                            dataset,
                        ),
                    )
                self._db.execute(
                    "INSERT INTO charges (job_id, dataset, part, epsilon, delta, at, requester) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (
                        job_id,
                        dataset,
                        part,
                        format_rational(cost.epsilon),
                        format_rational(cost.delta),
                        _now(),
                        requester,
                    ),
                )
            line = self._line(dataset)
            if done is None:
                fields = self._fields(dataset, cost, line)
                if part:
                    fields[Key.PART] = part
                self._record(Event.BUDGET_CHARGED, job_id, fields)
        return line

    def release(self, job_id: str, reason: str) -> None:
        """Release whatever ``job_id`` still holds reserved, on every dataset (audited)."""
        with self._transaction():
            rows = self._db.execute(
                "SELECT dataset, epsilon, delta FROM reservations WHERE job_id = ?", (job_id,)
            ).fetchall()
            self._db.execute("DELETE FROM reservations WHERE job_id = ?", (job_id,))
            for dataset, epsilon, delta in rows:
                amount = Budget.parse(epsilon, delta)
                if amount.is_zero:
                    continue
                fields = {**self._fields(dataset, amount, self._line(dataset)), Key.REASON: reason}
                self._record(Event.BUDGET_RELEASED, job_id, fields)

    def close(self) -> None:
        """Close the database."""
        with self._lock:
            self._db.close()
