"""The README's experiments table is what the committed results store says, not typed by hand."""

import re
import shutil
from pathlib import Path

import pytest

from neuroplastic.experiments import EXPERIMENTS
from neuroplastic.report import overview_markdown, replace_readme_table
from neuroplastic.store import Store

ROOT = Path(__file__).resolve().parents[1]


def test_readme_table_is_generated_from_the_committed_store(tmp_path):
    copy = tmp_path / "results.db"
    shutil.copyfile(ROOT / "results" / "neuroplastic.db", copy)  # never touch the committed file
    with Store(copy) as store:
        records = {name: store.runs(name) for name in EXPERIMENTS}
        trials = {name: store.trials(name) for name in EXPERIMENTS}
    table = overview_markdown(list(EXPERIMENTS.values()), records, trials)
    readme = (ROOT / "README.md").read_text()
    assert replace_readme_table(readme, table) == readme, (
        "README.md is out of date: run "
        "`neuroplastic report --store results/neuroplastic.db --readme README.md`"
    )


def test_replace_readme_table_needs_the_markers():
    with pytest.raises(ValueError, match="markers"):
        replace_readme_table("# no table here\n", "| a |")


def test_readme_python_examples_run():
    """Every ```python block of the README runs as written."""
    readme = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", readme, flags=re.S)
    assert blocks, "the README shows no Python example"
    for block in blocks:
        exec(compile(block, "README.md", "exec"), {})
