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
* JSON columns hold config, hyper-parameters, metrics and curves. Non-finite floats (a diverged
  run's ``NaN`` loss) are valid results, but JSON has no spelling for them, so they are stored as
  tagged objects and restored on read.
* Tuning trials are recorded work too, in their own table with the same lifecycle (``"running"``
  committed first, results and ``"finished"`` in one statement, stale rows ``"interrupted"`` on
  open), so a study killed by Ctrl-C or ``kill -9`` resumes without repeating finished trials. A
  study is one (experiment, config hash, method); each final run records the hyper-parameters it
  used.
* The file carries a schema version. An older file is migrated in place, in one transaction under
  the write lock, when it is opened; a newer one is refused rather than misread.
"""

from __future__ import annotations

import hashlib
import json
import math
import operator
import os
import re
import socket
import sqlite3
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from neuroplastic.errors import NeuroplasticError
from neuroplastic.results import (
    Key,
    curves_from_records,
    curves_to_records,
    metrics_from_records,
    metrics_to_records,
)

__all__ = ["RUN_STATUSES", "SCHEMA_VERSION", "RunRecord", "Store", "TrialRecord", "config_hash"]

RUN_STATUSES = ("running", "finished", "failed", "interrupted")

SCHEMA_VERSION = 3
"""Bumped whenever the table layout or the meaning of a column changes, so an older library
refuses a newer file instead of misreading it. Version 2 added the ``trials`` table and
``runs.hyperparameters``; version 3 stores a run's metrics and curves as lists of records with
named coordinates (see :mod:`neuroplastic.results`) instead of objects keyed by strings."""

BUSY_TIMEOUT_SECONDS = 30.0
"""How long a write waits for another process's transaction (e.g. two runners sharing a store)
before giving up; transactions here are milliseconds long, so this only trips on a real hang."""

STALE_RUN_ERROR = "process ended without finishing (killed?)"
"""The error recorded on a run or trial found ``"running"`` after its process died."""

_NON_FINITE_TAG = "$float"
"""Key of the one-entry object that stands in for NaN/inf inside stored JSON."""

_RUNS_HYPERPARAMETERS_COLUMN = "hyperparameters TEXT NOT NULL DEFAULT '{}'"
"""Shared by the current ``runs`` table and the version 1 -> 2 migration, so both agree."""

_TRIALS_TABLE = f"""
CREATE TABLE trials (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    experiment  TEXT    NOT NULL,
    config      TEXT    NOT NULL,
    config_hash TEXT    NOT NULL,
    method      TEXT    NOT NULL,
    number      INTEGER NOT NULL CHECK (number >= 0),
    params      TEXT    NOT NULL,
    seed        INTEGER NOT NULL,
    quick       INTEGER NOT NULL CHECK (quick IN (0, 1)),
    dataset     TEXT    NOT NULL,
    device      TEXT    NOT NULL,
    version     TEXT    NOT NULL,
    git_rev     TEXT,
    status      TEXT    NOT NULL CHECK (status IN {RUN_STATUSES!r}),
    started_at  TEXT    NOT NULL,
    ended_at    TEXT,
    value       TEXT,
    curves      TEXT    NOT NULL DEFAULT '{{}}',
    error       TEXT,
    pid         INTEGER NOT NULL,
    hostname    TEXT    NOT NULL,
    CHECK ((status = 'finished') = (value IS NOT NULL)),
    CHECK (status != 'finished' OR ended_at IS NOT NULL)
)"""
"""One row per tuning trial. ``number`` counts trials within the study (experiment, config_hash,
method) from 0; a trial that was interrupted may be tried again under the same number. ``value``
(the validation score) is JSON text, not REAL, because SQLite turns a REAL NaN into NULL and a
diverged trial's NaN score is a result worth keeping; it is set exactly when the trial finished."""

_TRIALS_INDEX = "CREATE INDEX trials_by_study ON trials (experiment, config_hash, method, status)"

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
    {_RUNS_HYPERPARAMETERS_COLUMN},
    CHECK (status != 'finished' OR ended_at IS NOT NULL)
)""",
    "CREATE INDEX runs_by_config ON runs (experiment, config_hash, seed, status)",
    _TRIALS_TABLE,
    _TRIALS_INDEX,
)
"""The current schema, for a new file. Run one by one, not with ``executescript``, which would
first commit the open transaction. AUTOINCREMENT because run ids are quoted in reports: an id must
never be reused for another run. ``hyperparameters`` is the last column of ``runs`` because that is
where ``ALTER TABLE ... ADD COLUMN`` puts it in a migrated file: both layouts are the same."""


def _add_trials(connection: sqlite3.Connection) -> None:
    """1 -> 2: the ``trials`` table and ``runs.hyperparameters`` (``{}`` for old rows: no
    recorded hyper-parameters)."""
    for statement in (
        f"ALTER TABLE runs ADD COLUMN {_RUNS_HYPERPARAMETERS_COLUMN}",
        _TRIALS_TABLE,
        _TRIALS_INDEX,
    ):
        connection.execute(statement)


def _structure_metrics(connection: sqlite3.Connection) -> None:
    """2 -> 3: metrics and curves keyed ``"<method>/<metric>"`` become records with named
    coordinates, read from the key shapes earlier releases wrote (:func:`_legacy_key`)."""
    rows = connection.execute("SELECT id, experiment, metrics, curves FROM runs").fetchall()
    for run_id, experiment, metrics_text, curves_text in rows:
        metrics = {
            _legacy_key(experiment, name): value for name, value in _from_json(metrics_text).items()
        }
        curves = {
            _legacy_key(experiment, name): curve for name, curve in _from_json(curves_text).items()
        }
        connection.execute(
            "UPDATE runs SET metrics = ?, curves = ? WHERE id = ?",
            (_to_json(metrics_to_records(metrics)), _to_json(curves_to_records(curves)), run_id),
        )


_MIGRATIONS: dict[int, Callable[[sqlite3.Connection], None]] = {
    1: _add_trials,
    2: _structure_metrics,
}
"""What takes a file from schema version ``v`` to ``v + 1``, keyed by ``v``; all steps run in one
transaction. Old rows keep their ids and everything they recorded."""

_LEGACY_METHOD_COORDINATES: dict[str, str] = {
    # experiment: the pattern of the part before "/"
    "kanter2020-mnist": r"(?P<method>\S+) n=(?P<size>\d+) (?P<cost>\S+)",
    "kanter2020-perceptron": r"(?P<method>[^-]+)-(?P<setting>.+)",
}
_LEGACY_METRIC_COORDINATES: tuple[str, ...] = (
    r"(?P<metric>relative_variance)_in(?P<inputs>\d+)_w(?P<width>\d+)",
    r"(?P<metric>relative_variance|lr|train_loss)_w(?P<width>\d+)",
    r"(?P<metric>angle|feedback_angle)_(?P<layer>.+)",
)


def _legacy_key(experiment: str, name: str) -> Key:
    """The key of a metric that a release before schema version 3 stored as ``name``.

    Earlier releases wrote ``"<method>/<metric>"`` and folded coordinates into either part:
    kanter2020-mnist ``"momentum n=300 ce/test_accuracy"``, kanter2020-perceptron
    ``"fixed-synaptic/eps_g_final"``, perturbation-scaling ``"relative_variance_in49_w64"`` and
    ``"lr_w128"`` (full images had no ``_in``: 784 inputs), credit-mnist ``"angle_layer0.weight"``.
    Anything else keeps its method and metric as written.
    """
    method, _, metric = name.rpartition("/")
    fields: dict[str, Any] = {"method": method, "metric": metric}
    pattern = _LEGACY_METHOD_COORDINATES.get(experiment)
    if pattern is not None and (found := re.fullmatch(pattern, method)):
        fields.update(found.groupdict())
    for pattern_text in _LEGACY_METRIC_COORDINATES:
        if found := re.fullmatch(pattern_text, metric):
            fields.update(found.groupdict())
            if fields["metric"] == "relative_variance" and "inputs" not in fields:
                fields["inputs"] = _MNIST_PIXELS
            break
    if fields.get("cost") == "ce":
        fields["cost"] = "cross_entropy"
    for coordinate in ("size", "inputs", "width"):
        if coordinate in fields:
            fields[coordinate] = int(fields[coordinate])
    return Key(**fields)


_MNIST_PIXELS = 784


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
    metrics: dict[Key, float]
    curves: dict[Key, dict[str, list]]
    curve_x_label: str | None
    error: str | None
    hyperparameters: dict = field(default_factory=dict)
    """The tuned hyper-parameters this run used (method -> {name: value}, or any plain JSON
    object); ``{}`` when none were recorded, as for every run written before schema version 2."""

    def to_dict(self) -> dict:
        """A plain copy for ``json.dumps`` (e.g. a CLI's ``--json`` output), with metrics and
        curves as lists of records (``{"method", "metric", coordinates..., "value"}``).

        Non-finite metrics stay Python floats, which ``json.dumps`` writes as ``NaN``/``Infinity``.
        """
        plain = asdict(self)
        plain["metrics"] = metrics_to_records(self.metrics)
        plain["curves"] = curves_to_records(self.curves)
        return plain


@dataclass(frozen=True)
class TrialRecord:
    """One tuning trial as stored: which hyper-parameters were tried, in which study, and the
    validation score they reached. A study is one (experiment, config_hash, method)."""

    id: int
    experiment: str
    config: dict
    config_hash: str
    method: str
    number: int
    """The trial's 0-based number within its study."""
    params: dict
    """The hyper-parameters tried, {name: value}."""
    seed: int
    """The seed the trial trained with."""
    quick: bool
    dataset: str
    device: str
    version: str
    git_rev: str | None
    status: str
    started_at: str
    ended_at: str | None
    value: float | None
    """The validation score; ``None`` unless the trial finished. May be NaN or +-inf."""
    curves: dict[str, dict[str, list]]
    error: str | None

    def to_dict(self) -> dict:
        """A plain copy for ``json.dumps``; a non-finite value stays a Python float."""
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
            self._mark_stale_rows()
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
        hyperparameters: dict | None = None,
    ) -> int:
        """Record a run as ``"running"`` and commit at once, so even a run killed in its first
        second leaves a row that is later marked ``"interrupted"``. Returns the run id.

        ``hyperparameters`` are the tuned values the run uses, e.g. ``{"backprop": {"lr": 0.1}}``:
        a dict with string keys whose values are plain JSON (numbers, strings, booleans, None,
        lists and dicts of them; numpy/torch scalars are unwrapped). ``None`` records ``{}``.
        """
        hyperparameters_json = _to_json(
            _plain_json_object(
                {} if hyperparameters is None else hyperparameters, "hyperparameters"
            )
        )
        with self._transaction() as connection:
            cursor = connection.execute(
                """INSERT INTO runs (experiment, config, config_hash, seed, quick, dataset,
                                     device, version, git_rev, status, started_at, pid, hostname,
                                     hyperparameters)
                   VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 'running', ?, ?, ?, ?)""",
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
                    hyperparameters_json,
                ),
            )
            return int(cursor.lastrowid)

    def finish_run(
        self,
        run_id: int,
        metrics: dict[str, float],
        curves: dict,
        curve_x_label: str | None = None,
        hyperparameters: dict | None = None,
    ) -> None:
        """Store the results and mark the run ``"finished"`` in one statement, so no reader or
        crash can ever see a finished run without its metrics.

        ``hyperparameters`` (as in :meth:`start_run`), when given, replace those recorded at the
        start: a run that tunes as it goes knows them only at the end.
        Only a ``"running"`` run can finish: a finished result is never silently overwritten.
        """
        metrics_json = _to_json(_normalise_metrics(metrics))
        curves_json = _to_json(_normalise_curves(curves))
        hyperparameters_json = (
            None
            if hyperparameters is None
            else _to_json(_plain_json_object(hyperparameters, "hyperparameters"))
        )
        with self._transaction() as connection:
            status = self._status_of(connection, "runs", run_id)
            if status != "running":
                raise NeuroplasticError(
                    f"run {run_id} in {self.path} is {status!r}, so it cannot be finished",
                    "start a new run with start_run(); a run finishes exactly once",
                )
            connection.execute(
                """UPDATE runs SET status = 'finished', ended_at = ?, metrics = ?, curves = ?,
                                   curve_x_label = ?,
                                   hyperparameters = COALESCE(?, hyperparameters)
                   WHERE id = ?""",
                (_now(), metrics_json, curves_json, curve_x_label, hyperparameters_json, run_id),
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
            if self._status_of(connection, "runs", run_id) == "finished":
                return
            connection.execute(
                "UPDATE runs SET status = ?, error = ?, ended_at = ? WHERE id = ?",
                (status, error, _now(), run_id),
            )

    def start_trial(
        self,
        *,
        experiment: str,
        config: dict,
        method: str,
        number: int,
        params: dict,
        seed: int,
        quick: bool,
        dataset: str,
        device: str,
        version: str,
        git_rev: str | None,
    ) -> int:
        """Record a tuning trial as ``"running"`` and commit at once (as :meth:`start_run`), so a
        study killed mid-trial leaves a row that is later marked ``"interrupted"``. Returns the
        trial id.

        ``number`` is the trial's 0-based number within the study (experiment, config, method);
        ``params`` the hyper-parameters tried, a dict of plain JSON values as for
        :meth:`start_run`'s ``hyperparameters``.
        """
        number = operator.index(number)
        if number < 0:
            raise ValueError(f"a trial number counts from 0, so it cannot be {number}")
        params_json = _to_json(_plain_json_object(params, "params"))
        with self._transaction() as connection:
            cursor = connection.execute(
                """INSERT INTO trials (experiment, config, config_hash, method, number, params,
                                       seed, quick, dataset, device, version, git_rev, status,
                                       started_at, pid, hostname)
                   VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 'running', ?, ?, ?)""",
                (
                    experiment,
                    _to_json(config),
                    config_hash(config),
                    method,
                    number,
                    params_json,
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

    def finish_trial(self, trial_id: int, value: float, curves: dict | None = None) -> None:
        """Store the trial's validation score (NaN and +-inf included) and curves and mark it
        ``"finished"`` in one statement, as :meth:`finish_run` does for a run.

        Only a ``"running"`` trial can finish: a finished score is never silently overwritten.
        """
        value_json = _to_json(_plain_float(value))
        curves_json = _to_json(_normalise_trial_curves({} if curves is None else curves))
        with self._transaction() as connection:
            status = self._status_of(connection, "trials", trial_id)
            if status != "running":
                raise NeuroplasticError(
                    f"trial {trial_id} in {self.path} is {status!r}, so it cannot be finished",
                    "start a new trial with start_trial(); a trial finishes exactly once",
                )
            connection.execute(
                """UPDATE trials SET status = 'finished', ended_at = ?, value = ?, curves = ?
                   WHERE id = ?""",
                (_now(), value_json, curves_json, trial_id),
            )

    def mark_trial(self, trial_id: int, status: str, error: str | None = None) -> None:
        """Mark a trial ``"failed"`` (e.g. it diverged and was pruned) or ``"interrupted"``.

        As with :meth:`mark_run`, a trial that already finished is left as it is.
        """
        if status not in ("failed", "interrupted"):
            raise ValueError(f"mark_trial status must be 'failed' or 'interrupted', not {status!r}")
        with self._transaction() as connection:
            if self._status_of(connection, "trials", trial_id) == "finished":
                return
            connection.execute(
                "UPDATE trials SET status = ?, error = ?, ended_at = ? WHERE id = ?",
                (status, error, _now(), trial_id),
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
        _check_status(status)
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
            raise self._missing_error("runs", run_id)
        return _record_from_row(row)

    def experiments(self) -> list[str]:
        """Names of the experiments with at least one run, sorted."""
        rows = self._connection.execute("SELECT DISTINCT experiment FROM runs ORDER BY experiment")
        return [name for (name,) in rows]

    def trials(
        self,
        experiment: str | None = None,
        config_hash: str | None = None,
        method: str | None = None,
        status: str | None = None,
    ) -> list[TrialRecord]:
        """All tuning trials, optionally of one experiment, config hash, method and/or status,
        oldest first. The first three together name one study: what a resumed study reads."""
        _check_status(status)
        rows = self._connection.execute(
            """SELECT * FROM trials
               WHERE (:experiment IS NULL OR experiment = :experiment)
                 AND (:config_hash IS NULL OR config_hash = :config_hash)
                 AND (:method IS NULL OR method = :method)
                 AND (:status IS NULL OR status = :status)
               ORDER BY id""",
            {
                "experiment": experiment,
                "config_hash": config_hash,
                "method": method,
                "status": status,
            },
        )
        return [_trial_from_row(row) for row in rows]

    def get_trial(self, trial_id: int) -> TrialRecord:
        """One trial by id."""
        row = self._connection.execute("SELECT * FROM trials WHERE id = ?", (trial_id,)).fetchone()
        if row is None:
            raise self._missing_error("trials", trial_id)
        return _trial_from_row(row)

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
        than this library understands, migrating it if it is older. Creation and migration each
        re-check under the write lock, so two processes opening a store at once cannot both create
        or both migrate it."""
        if not self._table_names():
            with self._transaction() as connection:
                created = not self._table_names()
                if created:
                    for statement in _SCHEMA_STATEMENTS:
                        connection.execute(statement)
                    connection.execute(
                        "INSERT INTO meta (key, value) VALUES ('schema_version', ?)",
                        (str(SCHEMA_VERSION),),
                    )
            if created:
                return
        found_version = self._schema_version()
        if found_version < SCHEMA_VERSION:
            self._migrate(found_version)

    def _table_names(self) -> set[str]:
        rows = self._connection.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"
        )
        return {name for (name,) in rows}

    def _schema_version(self) -> int:
        """The file's schema version, once it is known to be a store this library can read or
        migrate; anything else is refused with the reason."""
        if not {"meta", "runs"} <= self._table_names():
            raise _not_a_store_error(self.path, "it is an SQLite database with other tables")
        row = self._connection.execute(
            "SELECT value FROM meta WHERE key = 'schema_version'"
        ).fetchone()
        if row is None:
            raise _not_a_store_error(self.path, "it has no schema version")
        try:
            found_version = int(row[0])
        except ValueError:
            raise _not_a_store_error(
                self.path, f"its schema version {row[0]!r} is not a number"
            ) from None
        if found_version > SCHEMA_VERSION:
            raise NeuroplasticError(
                f"{self.path} was written by a newer neuroplastic (store schema version "
                f"{found_version}; this version reads up to {SCHEMA_VERSION})",
                "upgrade neuroplastic (pip install -U neuroplastic), or use another store path",
            )
        if found_version < min(_MIGRATIONS, default=SCHEMA_VERSION):
            raise NeuroplasticError(
                f"{self.path} has store schema version {found_version}, which this version of "
                f"neuroplastic cannot read (it expects {SCHEMA_VERSION})",
                "use the neuroplastic version that wrote it, or start a new store at another path",
            )
        return found_version

    def _migrate(self, found_version: int) -> None:
        """Bring an older file up to :data:`SCHEMA_VERSION` in one transaction: every step and the
        new version number commit together, or nothing changes. The version is read again under
        the write lock, because another process may have migrated the file since we looked."""
        try:
            with self._transaction() as connection:
                version = self._schema_version()
                if version >= SCHEMA_VERSION:
                    return
                for step in range(version, SCHEMA_VERSION):
                    _MIGRATIONS[step](connection)
                connection.execute(
                    "UPDATE meta SET value = ? WHERE key = 'schema_version'",
                    (str(SCHEMA_VERSION),),
                )
        except sqlite3.DatabaseError as error:
            raise NeuroplasticError(
                f"could not migrate {self.path} from store schema version {found_version} to "
                f"{SCHEMA_VERSION}: {error}",
                "the file was left as it was; check that it is a neuroplastic store and that no "
                "other program holds it open for writing, or use the neuroplastic version that "
                "wrote it",
            ) from error

    def _mark_stale_rows(self) -> None:
        """Mark ``"interrupted"`` the runs and trials of this host whose process is gone (kill -9,
        power loss, OOM killer): nothing else will ever finish them. Rows of other hosts sharing
        the file are left alone, because their pids mean nothing here."""
        stale: dict[str, list[int]] = {}
        for table in ("runs", "trials"):
            rows = self._connection.execute(
                f"SELECT id, pid FROM {table} WHERE status = 'running' AND hostname = ?",
                (socket.gethostname(),),
            ).fetchall()
            stale[table] = [row_id for row_id, pid in rows if not _process_exists(pid)]
        if not any(stale.values()):
            return
        with self._transaction() as connection:
            for table, stale_ids in stale.items():
                connection.executemany(
                    f"UPDATE {table} SET status = 'interrupted', error = ? "
                    "WHERE id = ? AND status = 'running'",
                    [(STALE_RUN_ERROR, row_id) for row_id in stale_ids],
                )

    def _status_of(self, connection: sqlite3.Connection, table: str, row_id: int) -> str:
        row = connection.execute(f"SELECT status FROM {table} WHERE id = ?", (row_id,)).fetchone()
        if row is None:
            raise self._missing_error(table, row_id)
        return str(row[0])

    def _missing_error(self, table: str, row_id: int) -> NeuroplasticError:
        noun = table.removesuffix("s")  # "runs" -> "run", "trials" -> "trial"
        return NeuroplasticError(
            f"no {noun} with id {row_id} in {self.path}",
            f"list the {table} in this store to find the right id, or check the store path",
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


def _check_status(status: str | None) -> None:
    if status is not None and status not in RUN_STATUSES:
        raise NeuroplasticError(
            f"unknown status {status!r}", f"use one of: {', '.join(RUN_STATUSES)}"
        )


def _plain_float(value: Any) -> float:
    """A score as a plain float (numpy and 0-d torch scalars unwrapped); NaN and inf allowed."""
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"expected a number, got {type(value).__name__}")
    return float(value)


_JSON_SCALARS = (str, int, float, bool, type(None))


def _plain_json_object(value: Any, name: str) -> dict:
    """Check that ``value`` is a dict that survives a JSON round trip unchanged (string keys,
    plain values), and return it with numpy/torch scalars unwrapped and tuples made lists.

    Checked before anything is written, so a bad value never leaves a half-recorded row.
    """
    if not isinstance(value, dict):
        raise NeuroplasticError(
            f"{name} must be a dict of names to values, not a {type(value).__name__}",
            'pass e.g. {"lr": 0.1}, or {"backprop": {"lr": 0.1}} for several methods',
        )
    return _plain_json(value, name)


def _plain_json(value: Any, where: str) -> Any:
    if isinstance(value, _JSON_SCALARS):
        return value
    if isinstance(value, dict):
        plain = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise NeuroplasticError(
                    f"{where} has the key {key!r} ({type(key).__name__}); JSON keys are strings",
                    f"use str(key) as the key, e.g. {str(key)!r}",
                )
            plain[key] = _plain_json(item, f"{where}[{key!r}]")
        return plain
    if isinstance(value, list | tuple):
        return [_plain_json(item, f"{where}[{index}]") for index, item in enumerate(value)]
    if hasattr(value, "item"):  # a numpy or 0-d torch scalar
        try:
            item = value.item()
        except (TypeError, ValueError, RuntimeError):  # e.g. a tensor of several elements
            pass
        else:
            if isinstance(item, _JSON_SCALARS):
                return item
    raise NeuroplasticError(
        f"{where} is of type {type(value).__name__}, which cannot be stored as JSON",
        "store plain numbers, strings, booleans and None, or lists and dicts of them "
        "(e.g. float(x) or x.tolist())",
    )


def _normalise_metrics(metrics: Mapping[Key, float]) -> list[dict[str, Any]]:
    """Records with plain floats (a 0-d tensor or numpy scalar would not serialise)."""
    return metrics_to_records({key: _plain_float(value) for key, value in metrics.items()})


def _normalise_curves(curves: Mapping[Key, Mapping[str, Any]]) -> list[dict[str, Any]]:
    """A run's curves as records of plain numbers."""
    return curves_to_records({key: _plain_curve(key, curve) for key, curve in curves.items()})


def _normalise_trial_curves(curves: Mapping[str, Mapping[str, Any]]) -> dict[str, dict]:
    """A trial's curves (one method's, so named by metric alone) as plain numbers."""
    return {str(name): _plain_curve(name, curve) for name, curve in curves.items()}


def _plain_curve(name: object, curve: Mapping[str, Any]) -> dict[str, list]:
    """Plain lists of plain numbers; x and y must pair up or the curve cannot be plotted."""
    points = {axis: [_plain_number(v) for v in curve.get(axis, [])] for axis in ("x", "y")}
    if len(points["x"]) != len(points["y"]):
        raise ValueError(
            f"curve {name} has {len(points['x'])} x values but {len(points['y'])} y values"
        )
    return points


def _records(text: str) -> list:
    """A metrics or curves column as a list of records. A run that never finished holds the
    column's default, ``{}`` (kept from version 1 so that migrated and new files have one layout):
    no values."""
    value = _from_json(text)
    return [] if value == {} else value


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
        metrics=metrics_from_records(_records(row["metrics"])),
        curves=curves_from_records(_records(row["curves"])),
        curve_x_label=row["curve_x_label"],
        error=row["error"],
        hyperparameters=_from_json(row["hyperparameters"]),
    )


def _trial_from_row(row: sqlite3.Row) -> TrialRecord:
    return TrialRecord(
        id=row["id"],
        experiment=row["experiment"],
        config=_from_json(row["config"]),
        config_hash=row["config_hash"],
        method=row["method"],
        number=row["number"],
        params=_from_json(row["params"]),
        seed=row["seed"],
        quick=bool(row["quick"]),
        dataset=row["dataset"],
        device=row["device"],
        version=row["version"],
        git_rev=row["git_rev"],
        status=row["status"],
        started_at=row["started_at"],
        ended_at=row["ended_at"],
        value=None if row["value"] is None else float(_from_json(row["value"])),
        curves=_from_json(row["curves"]),
        error=row["error"],
    )
