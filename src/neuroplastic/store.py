"""The results store: every experiment run, recorded in one embedded SQLite file.

Tables and plots are generated from the store alone, so a run is only worth something once it is
here, complete and unambiguous. That drives the design:

* One row per run (one experiment, one config, one seed). A row is inserted as ``"running"`` and
  committed *before* training starts, so a run that dies leaves a trace instead of vanishing.
* Metrics, curves and the ``"finished"`` status are written by a single ``UPDATE`` in a single
  transaction, so a crash can never leave a run that looks finished but lacks its numbers.
* SQLite in WAL mode with ``synchronous=FULL``: a committed transaction survives ``kill -9`` and
  power loss, and readers (report generation) never block the writer.
* Each row records the writer's pid and hostname. A row still ``"running"`` whose process no
  longer exists is marked ``"interrupted"`` the next time the store is opened on that host.
* JSON columns hold config, metrics and curves. Non-finite floats (a diverged run's ``NaN`` loss)
  are valid results, but JSON has no spelling for them, so they are stored as tagged objects and
  restored on read.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import socket
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from neuroplastic.errors import NeuroplasticError

__all__ = ["RUN_STATUSES", "SCHEMA_VERSION", "RunRecord", "Store", "config_hash"]

RUN_STATUSES = ("running", "finished", "failed", "interrupted")

SCHEMA_VERSION = 1
"""Bumped whenever the table layout changes, so an older library refuses a newer file instead of
misreading it."""

BUSY_TIMEOUT_SECONDS = 30.0
"""How long a write waits for another process's transaction (e.g. two runners sharing a store)
before giving up; transactions here are milliseconds long, so this only trips on a real hang."""

STALE_RUN_ERROR = "process ended without finishing (killed?)"

_NON_FINITE_TAG = "$float"
"""Key of the one-entry object that stands in for NaN/inf inside stored JSON."""

_SCHEMA_STATEMENTS = (
    """
CREATE TABLE meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
)""",
    f"""
CREATE TABLE runs (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    experiment    TEXT    NOT NULL,
    config        TEXT    NOT NULL,
    config_hash   TEXT    NOT NULL,
    seed          INTEGER NOT NULL,
    quick         INTEGER NOT NULL CHECK (quick IN (0, 1)),
    dataset       TEXT    NOT NULL,
    device        TEXT    NOT NULL,
    version       TEXT    NOT NULL,
    git_rev       TEXT,
    status        TEXT    NOT NULL CHECK (status IN {RUN_STATUSES!r}),
    started_at    TEXT    NOT NULL,
    ended_at      TEXT,
    metrics       TEXT    NOT NULL DEFAULT '{{}}',
    curves        TEXT    NOT NULL DEFAULT '{{}}',
    curve_x_label TEXT,
    error         TEXT,
    pid           INTEGER NOT NULL,
    hostname      TEXT    NOT NULL,
    CHECK (status != 'finished' OR ended_at IS NOT NULL)
)""",
    "CREATE INDEX runs_by_config ON runs (experiment, config_hash, seed, status)",
)
"""Run one by one, not with ``executescript``, which would first commit the open transaction.
AUTOINCREMENT because run ids are quoted in reports: an id must never be reused for another run."""


@dataclass(frozen=True)
class RunRecord:
    """One run as stored: everything needed to rebuild its table row or plot without re-running."""

    id: int
    experiment: str
    config: dict
    config_hash: str
    seed: int
    quick: bool
    dataset: str
    device: str
    version: str
    git_rev: str | None
    status: str
    started_at: str
    ended_at: str | None
    metrics: dict[str, float]
    curves: dict[str, dict[str, list]]
    curve_x_label: str | None
    error: str | None

    def to_dict(self) -> dict:
        """A plain copy for ``json.dumps`` (e.g. a CLI's ``--json`` output).

        Non-finite metrics stay Python floats, which ``json.dumps`` writes as ``NaN``/``Infinity``.
        """
        return asdict(self)


def config_hash(config: dict) -> str:
    """Identify a config by content, so a resumed run can find the seeds it already finished.

    Canonical JSON (sorted keys, no whitespace) makes the hash independent of key order; 16 hex
    characters (64 bits) are plenty to tell apart the configs of one experiment.
    """
    canonical = _to_json(config, sort_keys=True)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:16]


class Store:
    """An open results store. Use as a context manager, or call :meth:`close`."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._connection = _connect(self.path)
        try:
            self._configure_connection()
            self._ensure_schema()
            self._mark_stale_runs()
        except sqlite3.DatabaseError as error:
            self._connection.close()
            if getattr(error, "sqlite_errorname", None) == "SQLITE_NOTADB":
                raise _not_a_store_error(self.path, "it is not an SQLite database") from error
            raise
        except BaseException:
            self._connection.close()
            raise

    def close(self) -> None:
        """Close the connection; SQLite folds the write-ahead log back into the main file."""
        self._connection.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- writing -----------------------------------------------------------------------------

    def start_run(
        self,
        *,
        experiment: str,
        config: dict,
        seed: int,
        quick: bool,
        dataset: str,
        device: str,
        version: str,
        git_rev: str | None,
    ) -> int:
        """Record a run as ``"running"`` and commit at once, so even a run killed in its first
        second leaves a row that is later marked ``"interrupted"``. Returns the run id."""
        with self._transaction() as connection:
            cursor = connection.execute(
                """INSERT INTO runs (experiment, config, config_hash, seed, quick, dataset,
                                     device, version, git_rev, status, started_at, pid, hostname)
                   VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 'running', ?, ?, ?)""",
                (
                    experiment,
                    _to_json(config),
                    config_hash(config),
                    int(seed),
                    int(bool(quick)),
                    dataset,
                    device,
                    version,
                    git_rev,
                    _now(),
                    os.getpid(),
                    socket.gethostname(),
                ),
            )
            return int(cursor.lastrowid)

    def finish_run(
        self,
        run_id: int,
        metrics: dict[str, float],
        curves: dict,
        curve_x_label: str | None = None,
    ) -> None:
        """Store the results and mark the run ``"finished"`` in one statement, so no reader or
        crash can ever see a finished run without its metrics.

        Only a ``"running"`` run can finish: a finished result is never silently overwritten.
        """
        metrics_json = _to_json(_normalise_metrics(metrics))
        curves_json = _to_json(_normalise_curves(curves))
        with self._transaction() as connection:
            status = self._status_of(connection, run_id)
            if status != "running":
                raise NeuroplasticError(
                    f"run {run_id} in {self.path} is {status!r}, so it cannot be finished",
                    "start a new run with start_run(); a run finishes exactly once",
                )
            connection.execute(
                """UPDATE runs SET status = 'finished', ended_at = ?, metrics = ?, curves = ?,
                                   curve_x_label = ?
                   WHERE id = ?""",
                (_now(), metrics_json, curves_json, curve_x_label, run_id),
            )

    def mark_run(self, run_id: int, status: str, error: str | None = None) -> None:
        """Mark a run ``"failed"`` or ``"interrupted"``, with an optional error message.

        A run that already finished is left as it is: this is called from exception handlers
        (Ctrl-C may land just after :meth:`finish_run` committed), and a finished seed must never
        be downgraded, nor should raising here hide the exception being handled.
        """
        if status not in ("failed", "interrupted"):
            raise ValueError(f"mark_run status must be 'failed' or 'interrupted', not {status!r}")
        with self._transaction() as connection:
            if self._status_of(connection, run_id) == "finished":
                return
            connection.execute(
                "UPDATE runs SET status = ?, error = ?, ended_at = ? WHERE id = ?",
                (status, error, _now(), run_id),
            )

    # -- reading -----------------------------------------------------------------------------

    def finished_seeds(self, experiment: str, config_hash: str) -> dict[int, int]:
        """Seeds already finished for this experiment and config, mapped to their run id, so a
        resume can skip them. If a seed finished more than once, the latest run wins."""
        rows = self._connection.execute(
            """SELECT seed, MAX(id) FROM runs
               WHERE experiment = ? AND config_hash = ? AND status = 'finished'
               GROUP BY seed""",
            (experiment, config_hash),
        )
        return {int(seed): int(run_id) for seed, run_id in rows}

    def runs(self, experiment: str | None = None, status: str | None = None) -> list[RunRecord]:
        """All runs, optionally of one experiment and/or one status, oldest first."""
        if status is not None and status not in RUN_STATUSES:
            raise NeuroplasticError(
                f"unknown run status {status!r}", f"use one of: {', '.join(RUN_STATUSES)}"
            )
        rows = self._connection.execute(
            """SELECT * FROM runs
               WHERE (:experiment IS NULL OR experiment = :experiment)
                 AND (:status IS NULL OR status = :status)
               ORDER BY id""",
            {"experiment": experiment, "status": status},
        )
        return [_record_from_row(row) for row in rows]

    def get(self, run_id: int) -> RunRecord:
        """One run by id."""
        row = self._connection.execute("SELECT * FROM runs WHERE id = ?", (run_id,)).fetchone()
        if row is None:
            raise self._missing_run_error(run_id)
        return _record_from_row(row)

    def experiments(self) -> list[str]:
        """Names of the experiments with at least one run, sorted."""
        rows = self._connection.execute("SELECT DISTINCT experiment FROM runs ORDER BY experiment")
        return [name for (name,) in rows]

    # -- internals ---------------------------------------------------------------------------

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """A write transaction that commits on success and rolls back on any exception,
        KeyboardInterrupt included. ``BEGIN IMMEDIATE`` takes the write lock up front, so two
        writers queue on the busy timeout instead of failing halfway through."""
        self._connection.execute("BEGIN IMMEDIATE")
        try:
            yield self._connection
            self._connection.execute("COMMIT")
        except BaseException:
            if self._connection.in_transaction:  # a failed COMMIT can leave it open
                self._connection.execute("ROLLBACK")
            raise

    def _configure_connection(self) -> None:
        """WAL so readers never block the writer; FULL sync so a committed seed survives power
        loss, not just a killed process (a few commits per run make the cost negligible)."""
        self._connection.execute("PRAGMA journal_mode = WAL")
        self._connection.execute("PRAGMA synchronous = FULL")
        self._connection.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_SECONDS * 1000)}")

    def _ensure_schema(self) -> None:
        """Create the schema in an empty file, or check that an existing file is ours and no newer
        than this library understands. Creation re-checks under the write lock, so two processes
        opening a new store at once cannot both create it."""
        if self._table_names():
            self._check_schema()
            return
        with self._transaction() as connection:
            if self._table_names():
                self._check_schema()
                return
            for statement in _SCHEMA_STATEMENTS:
                connection.execute(statement)
            connection.execute(
                "INSERT INTO meta (key, value) VALUES ('schema_version', ?)",
                (str(SCHEMA_VERSION),),
            )

    def _table_names(self) -> set[str]:
        rows = self._connection.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"
        )
        return {name for (name,) in rows}

    def _check_schema(self) -> None:
        if not {"meta", "runs"} <= self._table_names():
            raise _not_a_store_error(self.path, "it is an SQLite database with other tables")
        row = self._connection.execute(
            "SELECT value FROM meta WHERE key = 'schema_version'"
        ).fetchone()
        if row is None:
            raise _not_a_store_error(self.path, "it has no schema version")
        found_version = int(row[0])
        if found_version > SCHEMA_VERSION:
            raise NeuroplasticError(
                f"{self.path} was written by a newer neuroplastic (store schema version "
                f"{found_version}; this version reads up to {SCHEMA_VERSION})",
                "upgrade neuroplastic (pip install -U neuroplastic), or use another store path",
            )
        if found_version < SCHEMA_VERSION:
            raise NeuroplasticError(
                f"{self.path} has store schema version {found_version}, which this version of "
                f"neuroplastic cannot read (it expects {SCHEMA_VERSION})",
                "use the neuroplastic version that wrote it, or start a new store at another path",
            )

    def _mark_stale_runs(self) -> None:
        """Mark ``"interrupted"`` the runs of this host whose process is gone (kill -9, power
        loss, OOM killer): nothing else will ever finish them. Runs of other hosts sharing the
        file are left alone, because their pids mean nothing here."""
        rows = self._connection.execute(
            "SELECT id, pid FROM runs WHERE status = 'running' AND hostname = ?",
            (socket.gethostname(),),
        ).fetchall()
        stale_ids = [run_id for run_id, pid in rows if not _process_exists(pid)]
        if not stale_ids:
            return
        with self._transaction() as connection:
            connection.executemany(
                "UPDATE runs SET status = 'interrupted', error = ? "
                "WHERE id = ? AND status = 'running'",
                [(STALE_RUN_ERROR, run_id) for run_id in stale_ids],
            )

    def _status_of(self, connection: sqlite3.Connection, run_id: int) -> str:
        row = connection.execute("SELECT status FROM runs WHERE id = ?", (run_id,)).fetchone()
        if row is None:
            raise self._missing_run_error(run_id)
        return str(row[0])

    def _missing_run_error(self, run_id: int) -> NeuroplasticError:
        return NeuroplasticError(
            f"no run with id {run_id} in {self.path}",
            "list the runs in this store to find the right id, or check the store path",
        )


# -- connection helpers ---------------------------------------------------------------------


def _connect(path: Path) -> sqlite3.Connection:
    """Open ``path``, creating its parent directories. ``isolation_level=None`` turns off the
    sqlite3 module's implicit transactions, so :meth:`Store._transaction` alone decides them."""
    if path.is_dir():
        raise NeuroplasticError(
            f"{path} is a directory, not a results store file",
            f"pass a file path, e.g. {path / 'neuroplastic-results.db'}",
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    connection = sqlite3.connect(path, timeout=BUSY_TIMEOUT_SECONDS, isolation_level=None)
    connection.row_factory = sqlite3.Row
    return connection


def _not_a_store_error(path: Path, reason: str) -> NeuroplasticError:
    return NeuroplasticError(
        f"{path} is not a neuroplastic results store: {reason}",
        "point to a results store file, or to a path that does not exist yet to create a new one",
    )


def _process_exists(pid: int) -> bool:
    """Whether ``pid`` is a live process on this host. Signal 0 checks without sending anything.

    On Windows ``os.kill`` terminates the process whatever the signal, so there we cannot check
    and assume it is alive: a stale row stays ``"running"`` rather than risk killing anything.
    """
    if os.name == "nt":
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # PermissionError: alive, but another user's
        return True
    return True


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


# -- JSON encoding ---------------------------------------------------------------------------


def _to_json(value: Any, *, sort_keys: bool = False) -> str:
    """Strict JSON with non-finite floats tagged and no whitespace. Keys keep the caller's order
    (reports list metrics as the experiment did) unless sorted for hashing."""
    return json.dumps(
        _tag_non_finite(value), sort_keys=sort_keys, separators=(",", ":"), allow_nan=False
    )


def _from_json(text: str) -> Any:
    return json.loads(text, object_hook=_untag_non_finite)


def _tag_non_finite(value: Any) -> Any:
    """Replace NaN/inf (anywhere in nested dicts and lists) by ``{"$float": "NaN"}`` etc."""
    if isinstance(value, float) and not math.isfinite(value):
        return {_NON_FINITE_TAG: _non_finite_name(value)}
    if isinstance(value, dict):
        return {key: _tag_non_finite(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_tag_non_finite(item) for item in value]
    return value


def _non_finite_name(value: float) -> str:
    """The spelling ``float()`` reads back (and JavaScript's, for anyone reading the raw file)."""
    if math.isnan(value):
        return "NaN"
    return "Infinity" if value > 0 else "-Infinity"


def _untag_non_finite(obj: dict) -> Any:
    if len(obj) == 1 and _NON_FINITE_TAG in obj:
        return float(obj[_NON_FINITE_TAG])
    return obj


def _normalise_metrics(metrics: dict[str, float]) -> dict[str, float]:
    """Plain floats (a 0-d tensor or numpy scalar would not serialise), string names."""
    return {str(name): float(value) for name, value in metrics.items()}


def _normalise_curves(curves: dict) -> dict[str, dict[str, list]]:
    """Plain lists of plain numbers; x and y must pair up or the curve cannot be plotted."""
    normalised = {}
    for name, curve in curves.items():
        points = {axis: [_plain_number(v) for v in values] for axis, values in curve.items()}
        if len(points.get("x", [])) != len(points.get("y", [])):
            raise ValueError(
                f"curve {name!r} has {len(points.get('x', []))} x values "
                f"but {len(points.get('y', []))} y values"
            )
        normalised[str(name)] = points
    return normalised


def _plain_number(value: Any) -> int | float:
    """Integers (epochs, steps) stay ints, everything else becomes a float; numpy and torch
    scalars are unwrapped with ``.item()`` first, since JSON cannot encode them."""
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    return float(value)


def _record_from_row(row: sqlite3.Row) -> RunRecord:
    return RunRecord(
        id=row["id"],
        experiment=row["experiment"],
        config=_from_json(row["config"]),
        config_hash=row["config_hash"],
        seed=row["seed"],
        quick=bool(row["quick"]),
        dataset=row["dataset"],
        device=row["device"],
        version=row["version"],
        git_rev=row["git_rev"],
        status=row["status"],
        started_at=row["started_at"],
        ended_at=row["ended_at"],
        metrics=_from_json(row["metrics"]),
        curves=_from_json(row["curves"]),
        curve_x_label=row["curve_x_label"],
        error=row["error"],
    )
