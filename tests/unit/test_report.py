"""Multirun summary tables name the sweep parameters that vary between jobs."""

from skebrm.experiments.report import summary_table


def _result(acc, noise=0.0):
    sec = {"sections": {"all": {"accuracy": acc}}}
    return {
        "backbone": "minilm",
        "data": "rmb",
        "label_noise": noise,
        "test": {
            "methods": {
                "base": {"accuracy": 0.6, "rewardbench": sec},
                "ebrm": {
                    "accuracy": acc,
                    "rewardbench": sec,
                    "vs_base": {"difference": acc - 0.6, "ci_low": -0.1, "ci_high": 0.1},
                },
            }
        },
    }


def _job(tmp_path, num, overrides, result):
    folder = tmp_path / str(num)
    (folder / ".hydra").mkdir(parents=True)
    (folder / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides))
    return folder, result


def test_varying_overrides_become_columns_without_duplicating_result_keys(tmp_path):
    runs = [
        _job(tmp_path, i, [f"+label_noise={n}", "calibrator=basis", f"calibrator.seed={i}"], r)
        for i, (n, r) in enumerate([(0.0, _result(0.61)), (0.2, _result(0.58, 0.2))])
    ]
    table = summary_table(runs)
    header = table.splitlines()[0]
    assert "calibrator.seed" in header  # varies, not a result key
    assert header.count("label_noise") == 1  # a result key already: no second column
    assert "calibrator=" not in header and "| calibrator |" not in header  # constant
    assert "| 0.0 | 0 | 0.600 | 0.610 |" in table and "| 0.2 | 1 | 0.600 | 0.580 |" in table


def test_runs_without_hydra_folders_still_tabulate(tmp_path):
    table = summary_table([(tmp_path, _result(0.61)), (tmp_path, _result(0.62))])
    assert table.splitlines()[0].startswith("| backbone | data | base | ebrm |")
