"""The privacy-budget ledger of one node: exact, charged before a job runs, never refunded.

Each dataset has a total (epsilon, delta) in ``policy.toml``. A job's cost is charged in one
SQLite transaction (``BEGIN IMMEDIATE``, so concurrent charges from any thread or process are
serialised) that refuses an overspend. A charge is recorded once per (job, dataset, part), where
``part`` names a round of a job that pays as it goes, so a resumed job is never charged twice,
and a crashed one is never refunded (fail closed). Every charge is in the audit log.
"""

from __future__ import annotations

import datetime as dt
import sqlite3
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

from bund.compute.dp.budget import Budget, format_rational
from bund.compute.errors import BundError
from bund.parties.jobs import AuditSink
from bund.parties.lifecycle.events import Event


class BudgetExhaustedError(BundError):
    """A job would spend more privacy budget than a dataset has left; nothing was charged."""


@dataclass(frozen=True)
class BudgetLine:
    """One dataset's budget: total, spent and what is left."""

    dataset: str
    total: Budget
    spent: Budget

    @property
    def remaining(self) -> Budget:
        """What is left to spend."""
        return self.total - self.spent


class BudgetLedger:
    """Charges against per-dataset budgets, durable in SQLite, audited."""

    def __init__(self, path: Path, totals: Mapping[str, Budget], audit: AuditSink) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._path = path
        self._totals = dict(totals)
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

    def _spent(self, dataset: str) -> Budget:
        rows = self._db.execute(
            "SELECT epsilon, delta FROM charges WHERE dataset = ?", (dataset,)
        ).fetchall()
        return Budget(
            sum((Fraction(e) for e, _ in rows), Fraction(0)),
            sum((Fraction(d) for _, d in rows), Fraction(0)),
        )

    def line(self, dataset: str) -> BudgetLine:
        """One dataset's total, spent and remaining budget."""
        with self._lock:
            return BudgetLine(dataset, self._totals.get(dataset, Budget()), self._spent(dataset))

    def lines(self) -> list[BudgetLine]:
        """Every dataset with a budget or a charge."""
        with self._lock:
            names = {r[0] for r in self._db.execute("SELECT DISTINCT dataset FROM charges")}
            names |= set(self._totals)
            return [
                BudgetLine(n, self._totals.get(n, Budget()), self._spent(n)) for n in sorted(names)
            ]

    def charge(self, job_id: str, dataset: str, cost: Budget, part: str = "") -> BudgetLine:
        """Charge ``cost`` to ``dataset`` for ``job_id`` (or one ``part`` of it) before it runs.

        A second charge for the same (job, dataset, part) is a no-op returning the current line,
        so a resumed job pays once. Raises ``BudgetExhaustedError`` (with what is left) and charges
        nothing when the cost does not fit.
        """
        if cost.is_zero:
            return self.line(dataset)
        total = self._totals.get(dataset, Budget())
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                done = self._db.execute(
                    "SELECT 1 FROM charges WHERE job_id = ? AND dataset = ? AND part = ?",
                    (job_id, dataset, part),
                ).fetchone()
                spent = self._spent(dataset)
                if done is None:
                    if not (spent + cost).fits_within(total):
                        left = total - spent
                        raise BudgetExhaustedError(
                            f"dataset {dataset!r} has {left} of its privacy budget left; this job "
                            f"needs {cost}. Its operator can raise budget_epsilon/budget_delta in "
                            "policy.toml only with the data owner's approval"
                        )
                    now = dt.datetime.now(dt.UTC).isoformat(timespec="microseconds")
                    self._db.execute(
                        "INSERT INTO charges (job_id, dataset, part, epsilon, delta, at) "
                        "VALUES (?, ?, ?, ?, ?, ?)",
                        (
                            job_id,
                            dataset,
                            part,
                            format_rational(cost.epsilon),
                            format_rational(cost.delta),
                            now,
                        ),
                    )
                    spent = spent + cost
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        if done is None:
            self._audit.append(
                Event.BUDGET_CHARGED,
                job_id,
                {
                    "dataset": dataset,
                    **({"part": part} if part else {}),
                    "epsilon": format_rational(cost.epsilon),
                    "delta": format_rational(cost.delta),
                    "spent": format_rational(spent.epsilon),
                    "spent_delta": format_rational(spent.delta),
                    "total": format_rational(total.epsilon),
                    "total_delta": format_rational(total.delta),
                },
            )
        return BudgetLine(dataset, total, spent)

    def close(self) -> None:
        """Close the database."""
        with self._lock:
            self._db.close()
