"""benchmarks/report.py renders a benchmark result and judges it against the targets."""

import copy
import json
from pathlib import Path

import pytest

RESULT = Path(__file__).resolve().parents[2] / "benchmarks/results/calibrator-20261125T173213Z.json"


def test_targets_are_judged_from_the_figures(load_script):
    m = load_script("benchmarks/report.py")
    result = json.loads(RESULT.read_text())
    text = m.render(result, RESULT.name)
    assert "5.27× (≥ 4.5×: met)" in text
    assert "3.81× faster (≥ 4×: **not met**)" in text  # this run's hybrid figure
    slower = copy.deepcopy(result)
    slower["train"][1]["speedup"] = 4.0
    assert "4.00× (≥ 4.5×: **not met**)" in m.render(slower, RESULT.name)


def test_readme_block_is_replaced_in_place(tmp_path, load_script):
    m = load_script("benchmarks/report.py")
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{m.START}\nold\n{m.END}\noutro\n")
    m.main([str(RESULT), "--readme", str(readme)])
    text = readme.read_text()
    assert text.startswith("intro\n") and text.endswith(f"{m.END}\noutro\n")
    assert "old" not in text and "Training step" in text
    readme.write_text("no markers")
    with pytest.raises(SystemExit, match="markers"):
        m.main([str(RESULT), "--readme", str(readme)])
