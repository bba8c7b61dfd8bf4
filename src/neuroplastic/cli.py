"""The ``neuroplastic`` command: list, run, report and show experiments.

Errors a user can fix (bad --set key, missing or corrupt data, unknown run id) are printed as one
clear message with its fix and exit with status 2; a run that fails (e.g. diverges) is recorded as
failed and the command exits with status 1 after the other seeds; Ctrl-C exits with 130.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table
from rich.text import Text

from neuroplastic.config import apply_overrides, describe_keys, diff_from_default
from neuroplastic.errors import NeuroplasticError

DEFAULT_STORE = "neuroplastic-results.db"

app = typer.Typer(
    help="Brain-inspired learning rules, reproduced and compared with backprop.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console()
errors = Console(stderr=True, soft_wrap=True)  # paths in messages stay whole


def default_store() -> Path:
    return Path(os.environ.get("NEUROPLASTIC_STORE", DEFAULT_STORE))


StoreOption = Annotated[
    Path | None,
    typer.Option(
        "--store",
        help=f"SQLite results file [default: $NEUROPLASTIC_STORE or ./{DEFAULT_STORE}]",
        show_default=False,
    ),
]


class RichProgress:
    """A progress bar with ETA for the run in flight; the previous run's bar is cleared."""

    def __init__(self, progress: Progress):
        self._progress = progress
        self._task: TaskID | None = None

    def start(self, total: int, description: str) -> None:
        if self._task is not None:
            self._progress.remove_task(self._task)
        self._task = self._progress.add_task(description, total=total, status="")

    def advance(self, steps: int = 1, **status: float) -> None:
        if self._task is None:
            return
        text = "  ".join(f"{key} {value:.4g}" for key, value in status.items())
        self._progress.update(self._task, advance=steps, status=text)


def make_progress(quiet: bool) -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
        TextColumn("{task.fields[status]}"),
        console=errors,
        disable=quiet,
        transient=True,
    )


@contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Treat SIGTERM (``kill``, a batch scheduler's stop) like Ctrl-C, so the run in flight is
    marked interrupted at once; SIGKILL cannot be caught and is handled when the store reopens."""

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def write_json(path: Path, payload: dict[str, Any]) -> None:
    """Write atomically so a reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=path.parent, delete=False, suffix=".tmp") as handle:
        json.dump(payload, handle, indent=2, allow_nan=True)
    os.replace(handle.name, path)


def summary_table(title: str, rows: list) -> Table:
    from neuroplastic.report import format_row

    table = Table(title=title)
    for column in ("method", "metric", "mean ± 95 % CI", "n"):
        table.add_column(column)
    for row in rows:
        table.add_row(row.method, row.key.describe(), format_row(row), str(row.summary.n))
    return table


def hyperparameter_table(records: list, edges: dict[str, dict[str, str]]) -> Table | None:
    """The hyper-parameters the seeds trained with, one row per study (tuned on validation
    data, the same for every seed of a config), with the values that sit on the edge of their
    range (``edges``: study -> {name: side}); None when nothing was tuned."""
    if not records or not records[0].hyperparameters:
        return None
    table = Table(title="chosen hyper-parameters (tuned on validation data)")
    table.add_column("study")
    table.add_column("values")
    table.add_column("on the edge of its range")
    for study, values in records[0].hyperparameters.items():
        shown = values
        if isinstance(values, dict):
            shown = ", ".join(
                f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in values.items()
            )
        flagged = ", ".join(f"{k}: {side}" for k, side in edges.get(study, {}).items())
        table.add_row(study, str(shown), Text(flagged, style="yellow") if flagged else "")
    return table


def edge_flags(experiment, records: list, trials: list) -> dict[str, dict[str, str]]:
    """Study -> {hyper-parameter: "low" | "high"} for the best values of the runs' config that
    sit on the edge of their declared range (from the experiment's tuning ``trials``)."""
    from neuroplastic.report import study_summaries

    if not records or experiment.studies is None:
        return {}
    digest = records[0].config_hash
    summaries = study_summaries(
        experiment, records[0].config, [t for t in trials if t.config_hash == digest]
    )
    return {summary.name: summary.edges() for summary in summaries if summary.edges()}


def verdict_sentence(experiment, records: list, trials: list, store_path: Path) -> str:
    """The claim's status in one plain sentence, from every run and tuning trial of the
    experiment in the store, and what the verdict reads."""
    from neuroplastic.report import verdict_with_edges

    verdict = verdict_with_edges(experiment, records, trials)
    sentences = {
        "holds": "the claim holds",
        "does not hold": "the claim does not hold",
        "partly holds": "the claim partly holds",
        "not run": "not decided at this budget",
    }
    status = sentences.get(verdict.status, verdict.status)
    return (
        f"Verdict ({experiment.command}, from {store_path}): {status}: {verdict.headline}.\n"
        f"Next: neuroplastic report {experiment.name} --store {store_path}"
    )


@app.command("list")
def list_experiments(
    name: Annotated[
        str | None, typer.Argument(help="Show this experiment's config keys.", show_default=False)
    ] = None,
) -> None:
    """List the experiments, or one experiment's config keys with types and defaults."""
    from neuroplastic.experiments import EXPERIMENTS, get_experiment

    if name is not None:
        experiment = get_experiment(name)
        console.print(f"[bold]{experiment.name}[/]: {experiment.claim}\n")
        console.print(describe_keys(experiment.config_cls), markup=False, highlight=False)
        return
    table = Table()
    for column in ("name", "paper", "claim"):
        table.add_column(column)
    for experiment in EXPERIMENTS.values():
        table.add_row(experiment.name, experiment.paper, experiment.claim)
    console.print(table)


@app.command()
def run(
    name: Annotated[str, typer.Argument(help="Experiment name (see `neuroplastic list`).")],
    seeds: Annotated[int, typer.Option(min=1, help="Number of seeds: 0, 1, ..., N-1.")] = 1,
    first_seed: Annotated[int, typer.Option(help="Seed to count from.")] = 0,
    quick: Annotated[
        bool, typer.Option("--quick", help="Shorter training (same dataset): a smoke test.")
    ] = False,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto",
    data_dir: Annotated[
        Path | None,
        typer.Option(
            help="Directory holding mnist/ [default: $NEUROPLASTIC_DATA or the user cache dir]",
            show_default=False,
        ),
    ] = None,
    store: StoreOption = None,
    json_path: Annotated[
        Path | None,
        typer.Option("--json", help="Also write the seeds' records and a summary here."),
    ] = None,
    set_: Annotated[
        list[str] | None,
        typer.Option("--set", help="Override a config key: --set key=value (repeatable)."),
    ] = None,
    resume: Annotated[
        bool, typer.Option("--resume", help="Skip seeds already finished for this config.")
    ] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
    workers: Annotated[
        int, typer.Option(min=1, help="Worker processes (> 1: a local process pool).")
    ] = 1,
    executor_name: Annotated[
        str | None,
        typer.Option(
            "--executor",
            help="inprocess, pool or ray [default: inprocess, or pool if --workers > 1]",
            show_default=False,
        ),
    ] = None,
    ray_address: Annotated[
        str | None,
        typer.Option(help="Ray cluster to join: auto or HOST:PORT [default: a local instance]"),
    ] = None,
    retries: Annotated[
        int, typer.Option(min=0, help="Times a run whose worker died is run again.")
    ] = 2,
) -> None:
    """Run an experiment over seeds, record every run, and print mean ± 95 % CI."""
    from neuroplastic.executors import make_executor
    from neuroplastic.experiments import get_experiment
    from neuroplastic.runner import run_experiment
    from neuroplastic.stats import summarise
    from neuroplastic.store import Store

    experiment = get_experiment(name)
    config = apply_overrides(experiment.config_cls(), set_ or [])  # before anything is written
    seed_list = list(range(first_seed, first_seed + seeds))
    store_path = store or default_store()
    executor = make_executor(executor_name, workers, retries=retries, ray_address=ray_address)

    try:
        with (
            sigterm_as_interrupt(),
            Store(store_path) as results,
            make_progress(quiet) as progress,
        ):
            outcome = run_experiment(
                experiment,
                config,
                seed_list,
                results,
                device=device,
                data_dir=data_dir,
                quick=quick,
                resume=resume,
                progress=RichProgress(progress),
                executor=executor,
            )
    except KeyboardInterrupt:
        errors.print("interrupted: finished seeds are recorded; rerun with --resume to go on")
        raise typer.Exit(130) from None

    changed = diff_from_default(outcome.config)
    label = ", ".join(f"{k}={v}" for k, v in changed.items()) or "defaults"
    rows = summarise([record.metrics for record in outcome.records])
    if outcome.skipped_seeds:
        console.print(f"resumed: seeds {outcome.skipped_seeds} were already finished")
    with Store(store_path) as results:  # one read for the edges and the verdict
        all_runs, trials = results.runs(name), results.trials(name)
    if rows:
        console.print(summary_table(f"{name} ({label}): results over seeds", rows))
        edges = edge_flags(experiment, outcome.records, trials)
        chosen = hyperparameter_table(outcome.records, edges)
        if chosen is not None:
            console.print(chosen)
        if edges:
            errors.print(
                Text(
                    f"{len(edges)} stud{'y' if len(edges) == 1 else 'ies'} chose a value on the "
                    "edge of its range: the range was too narrow there, and a comparison resting "
                    "on it is not settled",
                    style="yellow",
                )
            )
        ids = ", ".join(str(record.id) for record in outcome.records)
        console.print(f"recorded runs {ids} in {store_path}")
    for seed, message in outcome.failures:
        errors.print(Text.assemble((f"seed {seed} failed: ", "red"), message))
    console.print(verdict_sentence(experiment, all_runs, trials, store_path), markup=False)

    if json_path is not None:
        write_json(
            json_path,
            {
                "experiment": name,
                "config": changed | {"quick": quick},
                "records": [record.to_dict() for record in outcome.records],
                "failures": [{"seed": s, "error": m} for s, m in outcome.failures],
                "summary": [row.to_dict() for row in rows],
            },
        )
    if outcome.failures:
        raise typer.Exit(1)


@app.command()
def report(
    name: Annotated[
        str | None,
        typer.Argument(help="Experiment to report; omit for the table of all experiments."),
    ] = None,
    store: StoreOption = None,
    out: Annotated[Path, typer.Option(help="Directory for the report and plots.")] = Path(
        "reports"
    ),
    fmt: Annotated[str, typer.Option("--format", help="md or html.")] = "md",
    readme: Annotated[
        Path | None,
        typer.Option(help="Rewrite the experiments table in this README (all experiments)."),
    ] = None,
) -> None:
    """Tables (mean ± 95 % CI over seeds) and learning-curve plots, from the store only."""
    from neuroplastic.experiments import EXPERIMENTS, get_experiment
    from neuroplastic.report import experiment_report, overview_markdown, replace_readme_table
    from neuroplastic.store import Store

    if fmt not in ("md", "html"):
        raise NeuroplasticError(f"unknown format '{fmt}'", hint="use --format md or --format html")
    store_path = store or default_store()
    if not store_path.exists():
        raise NeuroplasticError(
            f"no results store at {store_path}",
            hint="run an experiment first (`neuroplastic run NAME`) or pass --store FILE",
        )
    with Store(store_path) as results:
        if name is not None:
            experiment = get_experiment(name)
            path = experiment_report(experiment, results.runs(name), out, fmt, results.trials(name))
            if fmt == "md":
                console.print(path.read_text(), markup=False, highlight=False)
            console.print(f"wrote {path}")
            return
        records = {n: results.runs(n) for n in EXPERIMENTS}
        trials = {n: results.trials(n) for n in EXPERIMENTS}
    table = overview_markdown(list(EXPERIMENTS.values()), records, trials)
    if readme is not None:
        try:
            readme.write_text(replace_readme_table(readme.read_text(), table))
        except ValueError as error:
            raise NeuroplasticError(str(error)) from None
        console.print(f"updated the experiments table in {readme}")
    else:
        console.print(table, markup=False, highlight=False)


@app.command()
def show(
    run_id: Annotated[int, typer.Argument(help="Run id, as `run` and `report` print them.")],
    store: StoreOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the record as JSON.")] = False,
) -> None:
    """Print one recorded run: config, hyper-parameters, provenance, status and final metrics."""
    from neuroplastic.store import Store

    store_path = store or default_store()
    if not store_path.exists():
        raise NeuroplasticError(f"no results store at {store_path}", hint="pass --store FILE")
    with Store(store_path) as results:
        record = results.get(run_id)
    if as_json:
        console.print_json(json.dumps(record.to_dict()))
        return
    table = Table(
        title=f"run {record.id}: {record.experiment} seed {record.seed}", show_header=False
    )
    table.add_column(style="bold")
    table.add_column()
    for key in (
        "status",
        "dataset",
        "device",
        "quick",
        "version",
        "git_rev",
        "started_at",
        "ended_at",
        "config_hash",
    ):
        table.add_row(key, str(getattr(record, key)))
    table.add_row("config", json.dumps(record.config))
    for key, value in record.hyperparameters.items():  # method -> {name: value}, if tuned
        table.add_row(Text(f"hyperparameters {key}"), Text(json.dumps(value)))
    for key, value in record.metrics.items():
        table.add_row(Text(str(key)), f"{value:.6g}")
    if record.error:
        table.add_row("error", record.error)
    console.print(table)


def main(argv: list[str] | None = None) -> None:
    """Entry point: user-fixable errors become one clear message and exit status 2."""
    try:
        app(args=argv, prog_name="neuroplastic")
    except NeuroplasticError as error:
        errors.print(Text.assemble(("error: ", "bold red"), str(error)))
        sys.exit(2)


if __name__ == "__main__":
    main()
