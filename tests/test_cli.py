"""End to end through the command line, as a user types it."""

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time

import pytest

from neuroplastic.cli import main
from neuroplastic.store import Store

TINY = ["--set", "dataset=mnist-mini", "--set", "hidden=16", "--set", "batch_size=200"]


def cli(capsys, *argv):
    """Run the CLI in-process; return (exit status, stdout, stderr)."""
    with pytest.raises(SystemExit) as done:
        main(list(argv))
    captured = capsys.readouterr()
    return done.value.code, captured.out, captured.err


def test_run_quick_then_report_then_show(tmp_path, capsys):
    store, summary = tmp_path / "results.db", tmp_path / "summary.json"
    code, out, err = cli(
        capsys, "run", "mnist-backprop", "--quick", "--seeds", "2", *TINY,
        "--store", str(store), "--json", str(summary), "--quiet",
    )  # fmt: skip
    assert code == 0, err
    assert "test_error" in out and "recorded runs 1, 2" in out
    with Store(store) as results:
        records = results.runs("mnist-backprop")
    assert [(r.seed, r.status, r.quick, r.dataset) for r in records] == [
        (0, "finished", True, "mnist-mini"),
        (1, "finished", True, "mnist-mini"),
    ]
    payload = json.loads(summary.read_text())
    test_error = ("backprop", "test_error")  # metrics are records: {"method", "metric", "value"}
    row = next(r for r in payload["summary"] if r["metric"] == "test_error")
    assert row["method"] == "backprop" and row["n"] == 2
    assert row["mean"] == pytest.approx(
        sum(
            next(m["value"] for m in r["metrics"] if (m["method"], m["metric"]) == test_error)
            for r in payload["records"]
        )
        / 2
    )

    code, out, err = cli(capsys, "report", "mnist-backprop", "--store", str(store),
                         "--out", str(tmp_path / "report"))  # fmt: skip
    assert code == 0, err
    markdown = (tmp_path / "report" / "mnist-backprop.md").read_text()
    assert "quick, dataset=mnist-mini" in markdown and "| backprop | test_error |" in markdown
    plots = list((tmp_path / "report").glob("*.png"))
    assert len(plots) == 1 and plots[0].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    code, _, err = cli(capsys, "report", "mnist-backprop", "--store", str(store),
                       "--out", str(tmp_path / "html"), "--format", "html")  # fmt: skip
    assert code == 0, err
    assert "<table>" in (tmp_path / "html" / "mnist-backprop.html").read_text()

    code, out, _ = cli(capsys, "show", str(records[0].id), "--store", str(store), "--json")
    assert code == 0
    assert json.loads(out)["seed"] == 0


def test_unknown_set_key_exits_non_zero_lists_keys_and_writes_nothing(tmp_path, capsys):
    store = tmp_path / "results.db"
    code, _, err = cli(capsys, "run", "mnist-backprop", "--set", "hiden=100", "--store", str(store))
    assert code == 2
    assert "unknown key 'hiden'" in err
    assert "hidden (int,...)" in err and "lr (float)" in err
    assert not store.exists()


def test_bad_set_value_exits_non_zero(tmp_path, capsys):
    code, _, err = cli(capsys, "run", "mnist-backprop", "--set", "lr=fast",
                       "--store", str(tmp_path / "r.db"))  # fmt: skip
    assert code == 2 and "bad value for 'lr'" in err


def test_truncated_mnist_file_gives_a_clear_error(tmp_path, capsys):
    source = os.environ.get("NEUROPLASTIC_DATA")
    if not source:
        pytest.skip("NEUROPLASTIC_DATA is not set (CI sets it to ../shared/data)")
    mnist = tmp_path / "data" / "mnist"
    mnist.mkdir(parents=True)
    for name in os.listdir(os.path.join(source, "mnist")):
        if name.endswith(".gz"):
            os.symlink(os.path.join(source, "mnist", name), mnist / name)
    broken = mnist / "t10k-labels-idx1-ubyte.gz"
    data = broken.read_bytes()
    broken.unlink()
    broken.write_bytes(data[: len(data) // 2])
    code, _, err = cli(capsys, "run", "mnist-backprop", "--quick", "--data-dir",
                       str(tmp_path / "data"), "--store", str(tmp_path / "r.db"))  # fmt: skip
    assert code == 2
    assert "t10k-labels-idx1-ubyte" in err
    assert "Traceback" not in err


def test_unknown_experiment_and_missing_run(tmp_path, capsys):
    code, _, err = cli(capsys, "run", "no-such-thing")
    assert code == 2 and "mnist-backprop" in err
    cli(capsys, "run", "mnist-backprop", "--quick", *TINY, "--store", str(tmp_path / "r.db"), "-q")
    code, _, err = cli(capsys, "show", "999", "--store", str(tmp_path / "r.db"))
    assert code == 2 and "999" in err


def test_list_shows_experiments_and_their_keys(capsys):
    code, out, _ = cli(capsys, "list")
    assert code == 0 and "mnist-backprop" in out
    code, out, _ = cli(capsys, "list", "mnist-backprop")
    assert code == 0 and "lr (float) = 0.05" in out


def test_kill_9_mid_run_then_resume(tmp_path):
    """SIGKILL after the first seed finished: the store survives, --resume does only the rest."""
    store = tmp_path / "results.db"
    argv = [sys.executable, "-m", "neuroplastic.cli", "run", "mnist-backprop", "--seeds", "3",
            *TINY, "--set", "epochs=40", "--store", str(store), "--quiet"]  # fmt: skip
    process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and process.poll() is None:
            if store.exists():
                with sqlite3.connect(store) as db:
                    try:
                        done = db.execute("select count(*) from runs where status='finished'")
                        if done.fetchone()[0] >= 1:
                            break
                    except sqlite3.OperationalError:  # schema not created yet
                        pass
            time.sleep(0.2)
        assert process.poll() is None, "the run ended before it could be killed"
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()

    with sqlite3.connect(store) as db:
        assert db.execute("pragma integrity_check").fetchone()[0] == "ok"
    with Store(store) as results:  # opening marks the killed run
        statuses = sorted((r.seed, r.status) for r in results.runs())
    assert statuses[0] == (0, "finished")
    assert (1, "interrupted") in statuses

    resumed = subprocess.run(argv + ["--resume"], capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert "seeds [0] were already finished" in resumed.stdout
    with Store(store) as results:
        finished = sorted(r.seed for r in results.runs(status="finished"))
    assert finished == [0, 1, 2]


def test_sigterm_marks_the_run_in_flight_interrupted_at_once(tmp_path):
    store = tmp_path / "results.db"
    argv = [sys.executable, "-m", "neuroplastic.cli", "run", "mnist-backprop", *TINY,
            "--set", "epochs=200", "--store", str(store), "--quiet"]  # fmt: skip
    process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and process.poll() is None:
            if store.exists():
                with sqlite3.connect(store) as db:
                    try:
                        if db.execute("select count(*) from runs").fetchone()[0]:
                            break
                    except sqlite3.OperationalError:  # schema not created yet
                        pass
            time.sleep(0.2)
        process.send_signal(signal.SIGTERM)
        _, err = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 130, f"exit {process.returncode}; stderr:\n{err}"
    assert "--resume" in err
    with sqlite3.connect(store) as db:  # read without opening a Store: no stale-run marking
        status, error = db.execute("select status, error from runs").fetchone()
    assert (status, error) == ("interrupted", "interrupted (Ctrl-C or SIGTERM)")
