import pytest


@pytest.fixture
def m(load_script):
    return load_script("scripts/make_results_tables.py")


def test_splice_replaces_only_the_results_block(m):
    doc = "intro\n<!-- results:start -->\nold table\n<!-- results:end -->\noutro\n"
    out = m.splice(doc, "| new |\n")
    assert out == "intro\n<!-- results:start -->\n| new |\n<!-- results:end -->\noutro\n"
    assert m.splice(out, "| new |\n") == out


def test_splice_requires_the_markers(m):
    with pytest.raises(SystemExit, match="needs the lines"):
        m.splice("no markers here", "x")


def test_main_splices_into_a_page_and_links_figures_from_it(m, tmp_path):
    from skebrm.experiments.report import write_json

    run = tmp_path / "runs" / "one"
    write_json({**_results(0.62), "plots": ["p.png"]}, run / "results.json")
    (run / "p.png").write_bytes(b"png")
    page = tmp_path / "docs" / "results" / "demo.md"
    page.parent.mkdir(parents=True)
    page.write_text("# Demo\n\nSummary.\n\n<!-- results:start -->\nold\n<!-- results:end -->\n")
    figures = tmp_path / "docs" / "figures"
    assert m.main([str(run), "--page", str(page), "--figures", str(figures)]) == 0
    text = page.read_text()
    assert text.startswith("# Demo\n\nSummary.\n") and "old" not in text
    assert "![p.png](../figures/demo-one-p.png)" in text
    assert (figures / "demo-one-p.png").read_bytes() == b"png"
    assert "issue" not in text.lower()


def test_a_page_puts_its_figures_in_the_sphinx_folder_it_lies_in(m, tmp_path):
    from skebrm.experiments.report import write_json

    run = tmp_path / "runs" / "one"
    write_json({**_results(0.62), "plots": ["p.png"]}, run / "results.json")
    (run / "p.png").write_bytes(b"png")
    (tmp_path / "site" / "results").mkdir(parents=True)
    (tmp_path / "site" / "conf.py").write_text("")
    page = tmp_path / "site" / "results" / "demo.md"
    page.write_text("<!-- results:start -->\n<!-- results:end -->\n")
    assert m.main([str(run), "--page", str(page)]) == 0
    assert (tmp_path / "site" / "figures" / "demo-one-p.png").is_file()
    assert "](../figures/demo-one-p.png)" in page.read_text()
    # --output keeps its figures next to the file it writes
    out = tmp_path / "elsewhere" / "tables.md"
    assert m.main([str(run), "--output", str(out)]) == 0
    assert (tmp_path / "elsewhere" / "figures" / "demo-one-p.png").is_file()


def test_main_needs_a_page_or_an_output(m, tmp_path, capsys):
    with pytest.raises(SystemExit):
        m.main([str(tmp_path)])
    assert "--page" in capsys.readouterr().err


def _results(acc, noise=0.0):
    sec = {"sections": {"all": {"accuracy": acc}}}

    def method(a, **extra):
        return {"accuracy": a, "rewardbench": sec, **extra}

    methods = {
        "base": method(0.6, ece=0.1, best_of_k={"accuracy": 0.4, "n_groups": 5, "mean_k": 3.2}),
        "base_margin": method(0.6, misorder_auroc_base=0.58, disagreement_auroc=0.6, ece=0.1),
        "ebrm": method(
            acc,
            misorder_auroc_base=0.51,
            disagreement_auroc=0.5,
            ece=0.2,
            vs_base={"difference": acc - 0.6, "ci_low": -0.1, "ci_high": 0.1},
        ),
        "laplace_bt": method(0.6, misorder_auroc_base=0.56, disagreement_auroc=0.57, ece=0.05),
    }
    return {
        "experiment": "demo",
        "backbone": "minilm",
        "data": "rmb",
        "calibrator": "basis",
        "label_noise": noise,
        "calibrator_fit_on": "calibrator",
        "n_pairs": {"head": 60, "calibrator": 20, "test": 20},
        "test": {"n_pairs": 20, "n_pairs_with_votes": 20, "n_pairs_disagreement": 3,
                 "methods": methods},
        "ood": {},
    }  # fmt: skip


def test_tables_carry_the_uncertainty_baselines(m, tmp_path):
    from skebrm.experiments.report import write_json

    single = tmp_path / "run"
    write_json(_results(0.62), single / "results.json")
    sweep = tmp_path / "sweep"
    for i, noise in enumerate((0.0, 0.3)):
        write_json(_results(0.6 + i / 100, noise), sweep / str(i) / "results.json")
    text = m.build_markdown([single, sweep], tmp_path / "docs" / "figures", tmp_path / "docs")
    run_part, sweep_part = text.split("### demo (sweep)")
    # the per-run table: one row per method, base margin and Laplace among them
    assert "| base_margin | 0.600 |" in run_part and "| laplace_bt | 0.600 |" in run_part
    assert "AUROC disagreement" in run_part and "best-of-k (5 groups, mean k 3.2)" in run_part
    # the sweep table: one row per run, the new columns by method
    header = next(line for line in sweep_part.splitlines() if line.startswith("| label_noise"))
    for column in (
        "AUROC base errors: base_margin",
        "AUROC base errors: laplace_bt",
        "AUROC disagreement: base_margin",
        "ECE: laplace_bt",
        "best-of-k: base",
    ):
        assert column in header, column
    assert "| 0.3 | 0.600 | 0.610 | 0.600 | +0.010 [-0.100, +0.100] | 0.580 |" in sweep_part


def test_sweeps_that_vary_the_label_noise_get_a_table_and_a_plot(m, tmp_path):
    from skebrm.experiments.report import write_json

    sweep = tmp_path / "sweep"
    for i, (backbone, noise) in enumerate([("minilm", 0.0), ("minilm", 0.3), ("smollm2", 0.0)]):
        r = _results(0.6 + i / 100, noise)
        r["backbone"] = backbone
        write_json(r, sweep / str(i) / "results.json")
    docs = tmp_path / "docs"
    text = m.build_markdown([sweep], docs / "figures", docs)
    assert "| backbone | calibrator | filtered | 0 % | 30 % |" in text
    # only minilm varies the noise: one row, its base loses nothing (0.600 at both levels)
    assert "| minilm | basis | yes | 0.600 / 0.600 (+0.0) | 0.600 / 0.610 (+1.0) |" in text
    assert "| smollm2 | basis |" not in text.split("Label noise:")[1]
    assert (docs / "figures" / "demo-sweep-label_noise.png").stat().st_size > 0


def test_a_folder_of_rl_runs_gets_the_table_the_answer_and_the_plot(m, tmp_path):
    import json

    from skebrm.experiments.rl.tracking import append_jsonl

    sweep = tmp_path / "rl" / "smollm2"
    for proxy, gold in (("base", [0.0, 0.6, 0.1]), ("ebrm_minus_1std", [0.0, 0.3, 0.7])):
        folder = sweep / f"{proxy}-beta0.0-seed0"
        folder.mkdir(parents=True)
        (folder / "run.json").write_text(json.dumps({"proxy": proxy, "beta": 0.0}))
        for step, (g, kl) in enumerate(zip(gold, (0.0, 2.0, 6.0))):
            record = {"step": 10 * step, "gold": g, "proxy": g + 0.1 * step, "kl": kl}
            record.update(length=20.0 + step, distinct_2=0.8 - 0.1 * step)
            append_jsonl(folder / "tracking.jsonl", record)
    # a dry run (run.json alone) gives the length preferences of the gold RM and the proxies
    pref = {"longer": 0.75, "n_pairs_longer": 1200, "cut_off": 0.625, "n_pairs_cut_off": 400}
    agreement = {"accuracy": 0.7, "length_preference": {**pref, "longer": 0.5}}
    meta = {"proxy": "base", "beta": 0.0, "gold_length_preference": pref}
    (sweep / "dry-run").mkdir()
    (sweep / "dry-run" / "run.json").write_text(
        json.dumps({**meta, "agreement": {"base": agreement}})
    )
    page = tmp_path / "docs" / "results" / "rl.md"
    page.parent.mkdir(parents=True)
    page.write_text("# RL\n\n<!-- results:start -->\n<!-- results:end -->\n")
    figures = tmp_path / "docs" / "figures"
    assert m.main([str(sweep), "--page", str(page), "--figures", str(figures)]) == 0
    text = page.read_text()
    assert "### rl_overoptimization (smollm2)" in text
    assert "| base, β=0 |" in text and "| ebrm_minus_1std, β=0 |" in text
    assert "At β = 0: base peaks at gold 0.600 at KL 2.00 (step 10)" in text
    assert "](../figures/rl_overoptimization-smollm2.png)" in text
    assert (figures / "rl_overoptimization-smollm2.png").read_bytes()[:4] == b"\x89PNG"
    assert "#### Length preference of each reward" in text
    assert "| gold RM | – | 0.750 | 0.625 |" in text and "| base | 0.700 | 0.500 | 0.625 |" in text
    assert "(1,200 pairs of unequal length, 400 of one cut-off and one finished sample)" in text
