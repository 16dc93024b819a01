"""Results tables: sweep parameters that vary, and the uncertainty / calibration columns."""

from pathlib import Path

from skebrm.experiments.report import format_table, summary_table


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


def test_pairs_column_only_where_the_number_of_pairs_differs(tmp_path):
    same, half = _result(0.61), _result(0.62)
    same["test"]["n_pairs"], half["test"]["n_pairs"] = 894, 894
    assert "pairs" not in summary_table([(tmp_path, same), (tmp_path, half)]).splitlines()[0]
    half["test"]["n_pairs"] = 457  # e.g. guard_target scores half of its set
    table = summary_table([(tmp_path, same), (tmp_path, half)]).splitlines()
    assert table[0].startswith("| backbone | data | pairs | base | ebrm |")
    assert table[2].startswith("| minilm | rmb | 894 |") and table[3].startswith(
        "| minilm | rmb | 457 |"
    )


def _with_uncertainty(acc, margin_auroc, ebrm_auroc, votes=False, groups=False):
    r = _result(acc)
    ms = r["test"]["methods"]
    ms["base"]["ece"] = 0.10
    ms["ebrm"].update(misorder_auroc_base=ebrm_auroc, ece=0.08)
    ms["base_margin"] = {
        "accuracy": 0.6,
        "rewardbench": ms["base"]["rewardbench"],
        "misorder_auroc_base": margin_auroc,
        "ece": 0.10,
    }
    ms["laplace_bt"] = {
        "accuracy": 0.6,
        "rewardbench": ms["base"]["rewardbench"],
        "misorder_auroc_base": 0.57,
        "ece": 0.05,
    }
    if votes:
        for name, value in (("base_margin", 0.61), ("ebrm", 0.52), ("laplace_bt", 0.58)):
            ms[name]["disagreement_auroc"] = value
    if groups:
        for name, value in (("base", 0.41), ("ebrm", 0.43)):
            ms[name]["best_of_k"] = {"accuracy": value, "n_groups": 12, "mean_k": 3.5}
    return r


def test_summary_has_uncertainty_calibration_and_best_of_k_columns():
    runs = [(Path("/nonexistent/0"), _with_uncertainty(0.61, 0.586, 0.52, True, True))]
    table = summary_table(runs)
    header = [c.strip() for c in table.splitlines()[0].strip("|").split("|")]
    row = [c.strip() for c in table.splitlines()[2].strip("|").split("|")]
    cells = dict(zip(header, row, strict=True))
    assert "base_margin" not in header  # its accuracy is the base's
    assert cells["AUROC base errors: base_margin"] == "0.586"
    assert cells["AUROC base errors: ebrm"] == "0.520"
    assert cells["AUROC base errors: laplace_bt"] == "0.570"
    assert cells["AUROC disagreement: base_margin"] == "0.610"
    assert cells["ECE: base"] == "0.100" and cells["ECE: laplace_bt"] == "0.050"
    assert cells["best-of-k: base"] == "0.410" and cells["best-of-k: ebrm"] == "0.430"
    assert "bt_ensemble_mean" not in table.splitlines()[0]  # absent from every run


def test_summary_of_old_runs_has_no_empty_new_columns(tmp_path):
    table = summary_table([(tmp_path, _result(0.61)), (tmp_path, _result(0.62))])
    header = table.splitlines()[0]
    assert "AUROC" not in header and "ECE" not in header and "best-of-k" not in header
    # one old run next to a new one: the new columns, with – for the old run
    mixed = summary_table(
        [(tmp_path, _result(0.61)), (tmp_path, _with_uncertainty(0.62, 0.58, 0.5))]
    )
    assert "AUROC base errors: base_margin" in mixed.splitlines()[0]
    assert mixed.splitlines()[2].rstrip().endswith("| – | – | – | – | – | – |")


def test_per_run_table_shows_disagreement_and_best_of_k():
    r = _with_uncertainty(0.61, 0.586, 0.52, votes=True, groups=True)
    r.update(experiment="x", calibrator="basis", calibrator_fit_on="calibrator")
    r["n_pairs"] = {"test": 80}
    r["test"].update(n_pairs=80, n_pairs_with_votes=80, n_pairs_disagreement=9)
    text = format_table(r)
    assert "annotators disagree on 9 of the 80 with votes" in text
    header = next(line for line in text.splitlines() if line.startswith("| method"))
    assert "AUROC disagreement" in header and "best-of-k (12 groups, mean k 3.5)" in header
    margin = next(line for line in text.splitlines() if line.startswith("| base_margin |"))
    assert "| 0.586 |" in margin and margin.rstrip().endswith("| 0.610 | – |")


def _target_run(backbone, calibrator, seed, acc, ci, auroc, ece, noise=0.0, base=0.6):
    r = _with_uncertainty(acc, 0.58, auroc)
    r.update(backbone=backbone, calibrator=calibrator, label_noise=noise, seed=seed)
    ms = r["test"]["methods"]
    ms["base"]["accuracy"] = base
    ms["ebrm"]["vs_base"] = {"difference": acc - base, "ci_low": ci[0], "ci_high": ci[1]}
    ms["ebrm"]["ece"] = ece
    r["ood"] = {"autoj": {"methods": ms}}
    r["calibrator_fit"] = {"random_state": seed}
    return Path(f"/nonexistent/{backbone}-{calibrator}-{seed}-{noise}"), r


def test_targets_table_reports_each_target_plainly():
    from skebrm.experiments.report import study_targets, targets_table

    runs = [
        # family a: +2 points, CI excluding 0, AUROC +0.07 over the margin, ECE below base
        _target_run("a", "preference", 0, 0.62, (0.005, 0.035), 0.65, 0.05),
        _target_run("a", "preference", 1, 0.61, (0.001, 0.03), 0.64, 0.07),
        # family b: one seed significantly below base; AUROC at the margin's; ECE above
        _target_run("b", "preference", 0, 0.57, (-0.05, -0.01), 0.58, 0.2),
        # label noise: base loses 0.10, EBRM recovers 0.06 of it (60 %)
        _target_run("a", "preference", 0, 0.56, (0.01, 0.1), 0.6, 0.05, noise=0.3, base=0.5),
    ]
    rows = study_targets(runs)
    a = rows[("a", "preference", "test")]
    assert a["n_seeds"] == 2
    assert abs(a["auroc_gain"] - (0.645 - 0.58)) < 1e-9 and a["a"] is True
    assert a["b"] is True and a["c_plus_one"] is True and a["c_never_below"] is True
    assert abs(a["d_recovered"] - 0.6) < 1e-9 and a["d"] is True
    b = rows[("b", "preference", "test")]
    assert b["a"] is False and b["b"] is False and b["c_never_below"] is False
    assert b["d"] is None  # no label-noise run for this family
    table = targets_table(runs)
    assert table.count("\n") >= 5 and "| a | preference | test | 2 |" in table
    assert "met" in table and "not met" in table and "autoj" in table


def test_label_noise_table_averages_each_level_and_the_recovered_share():
    from skebrm.experiments.report import label_noise_study, label_noise_table

    runs = [
        # two clean seeds (base 0.6), one run at 20 % and one at 40 % noise
        _target_run("a", "basis", 0, 0.61, (-0.01, 0.03), 0.6, 0.05),
        _target_run("a", "basis", 1, 0.63, (0.0, 0.05), 0.6, 0.05),
        _target_run("a", "basis", 0, 0.55, (0.0, 0.1), 0.6, 0.05, noise=0.2, base=0.52),
        _target_run("a", "basis", 0, 0.45, (-0.1, 0.0), 0.6, 0.05, noise=0.4, base=0.50),
        # a family with one level only: not a sweep, left out
        _target_run("b", "basis", 0, 0.6, (-0.01, 0.01), 0.6, 0.05),
    ]
    study = label_noise_study(runs)
    assert set(study) == {("a", "basis", True)}
    levels = study[("a", "basis", True)]
    assert sorted(levels) == [0.0, 0.2, 0.4]
    assert levels[0.0]["n_runs"] == 2
    assert abs(levels[0.0]["ebrm"] - 0.62) < 1e-12 and levels[0.0]["recovered"] is None
    # base loses 0.08 at 20 %; EBRM wins back 0.03 of it
    assert abs(levels[0.2]["recovered"] - 0.03 / 0.08) < 1e-12
    assert abs(levels[0.4]["recovered"] - (-0.05 / 0.10)) < 1e-12
    table = label_noise_table(runs)
    header, _, row = table.splitlines()
    assert header.startswith("| backbone | calibrator | filtered |")
    assert "| 0 % |" in header and "| 40 % |" in header
    assert "0.520 / 0.550 (+3.0; 38 %)" in row and "0.500 / 0.450 (−5.0; −50 %)" in row
    assert "0.600 / 0.620 (+2.0)" in row
    assert label_noise_table(runs[-1:]) == "(no label-noise sweep)"


def test_load_runs_reads_max_length_from_an_older_runs_config(tmp_path):
    from skebrm.experiments.report import load_runs, summary_table, write_json

    old, new = tmp_path / "0", tmp_path / "1"
    write_json(_result(0.61), old / "results.json")
    (old / ".hydra").mkdir()
    (old / ".hydra" / "config.yaml").write_text("backbone:\n  name: minilm\n  max_length: 128\n")
    write_json({**_result(0.62), "max_length": 64}, new / "results.json")
    runs = load_runs(tmp_path)
    assert [r["max_length"] for _, r in runs] == [128, 64]
    header, _, first, second = summary_table(runs).splitlines()[:4]
    assert header.startswith("| max_length |")
    assert first.startswith("| 128 |") and second.startswith("| 64 |")
