"""scripts/finetune_minilm_rm.py: several datasets, the study's split, exact resume after SIGKILL."""

from __future__ import annotations

import gzip
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from skebrm.datasets import load_pairs
from skebrm.experiments.data import EmbeddedPairs, split_pairs

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "finetune_minilm_rm.py"


def _write_pairs(path: Path, n: int, tag: str) -> Path:
    with gzip.open(path, "wt", encoding="utf-8") as fh:
        for i in range(n):
            record = {
                "id": f"{tag}{i}",
                "prompt": f"{tag} question {i // 2} about " + "things " * (i % 4),
                "chosen": f"a helpful answer {i} " * (1 + i % 3),
                "rejected": f"no {i}",
                "subset": tag,
                "section": None,
            }
            fh.write(json.dumps(record) + "\n")
    return path


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A tiny random BERT RM saved as a folder, and two small pair files."""
    from skebrm.experiments.backbones import build_tiny_reward_model

    root = tmp_path_factory.mktemp("finetune")
    model, tokenizer = build_tiny_reward_model("bert", seed=0)
    model.save_pretrained(root / "tiny")
    tokenizer.save_pretrained(root / "tiny")
    a = _write_pairs(root / "a.jsonl.gz", 40, "alpha")
    b = _write_pairs(root / "b.jsonl.gz", 30, "beta")
    return root, [str(a), str(b)]


def _argv(root: Path, data: list[str], output: Path, *extra: str) -> list[str]:
    return [
        "--model",
        str(root / "tiny"),
        "--data",
        *data,
        "--n-pairs",
        "0",
        "--max-train-pairs",
        "0",
        "--max-test-pairs",
        "0",
        "--max-length",
        "48",
        "--batch-pairs",
        "4",
        "--epochs",
        "2",
        "--lr",
        "1e-3",
        "--checkpoint-every",
        "2",
        "--output",
        str(output),
        *extra,
    ]


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(folder / "model.safetensors"))


@pytest.fixture
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_split_is_the_studys_and_both_files_train(setup, load_script, tmp_path, one_thread):
    root, data = setup
    script = load_script("scripts/finetune_minilm_rm.py")
    args = script.parse_args(_argv(root, data, tmp_path / "out", "--seed", "3"))
    datasets, _ = script.load_datasets(args)
    assert [d["name"] for d in datasets] == ["a", "b"]
    for d, path in zip(datasets, data):
        pairs = load_pairs(path)
        embedded = EmbeddedPairs(
            embeddings=np.zeros((2 * len(pairs), 1)),
            rewards=None,
            prompt=np.array([p["prompt"] for p in pairs], dtype=object),
            subset=np.array([p["subset"] for p in pairs], dtype=object),
            section=np.array([None] * len(pairs), dtype=object),
        )
        head, _cal, test = split_pairs(embedded, [0.6, 0.2, 0.2], random_state=3)
        assert {p["prompt"] for p in d["train"]} == set(head.prompt)
        assert len(d["train"]) == head.n_pairs  # --max-train-pairs 0: all of them
        assert [p["prompt"] for p in d["test"]] == list(test.prompt)  # file order kept


def test_label_noise_flips_the_pairs_the_study_flips(setup, load_script, tmp_path):
    from skebrm.experiments.data import flip_labels

    root, data = setup
    script = load_script("scripts/finetune_minilm_rm.py")
    argv = _argv(root, data[:1], tmp_path / "out", "--seed", "3", "--label-noise", "0.3")
    datasets, _ = script.load_datasets(script.parse_args(argv))
    clean_argv = _argv(root, data[:1], tmp_path / "o", "--seed", "3")
    clean, _ = script.load_datasets(script.parse_args(clean_argv))
    pairs = load_pairs(data[0])
    by_id = {p["id"]: p for p in pairs}
    embedded = EmbeddedPairs(
        embeddings=np.arange(2 * len(pairs), dtype=float)[:, None],  # row index
        rewards=None,
        prompt=np.array([p["prompt"] for p in pairs], dtype=object),
        subset=np.array([p["subset"] for p in pairs], dtype=object),
        section=np.array([None] * len(pairs), dtype=object),
    )
    head = split_pairs(embedded, [0.6, 0.2, 0.2], random_state=3)[0]
    noisy = flip_labels(head, 0.3, random_state=3).embeddings[:, 0].astype(int)
    expected = {pairs[row // 2]["id"] for row in noisy[0::2] if row % 2 == 1}
    flipped = {p["id"] for p in datasets[0]["train"] if p["chosen"] == by_id[p["id"]]["rejected"]}
    assert flipped == expected and len(expected) == round(0.3 * head.n_pairs)
    for p in datasets[0]["train"]:  # a flip swaps the two texts, nothing else
        original = by_id[p["id"]]
        if p["id"] in flipped:
            assert (p["chosen"], p["rejected"]) == (original["rejected"], original["chosen"])
        else:
            assert p == original
    assert [p["chosen"] for p in datasets[0]["test"]] == [p["chosen"] for p in clean[0]["test"]]
    with pytest.raises(SystemExit):
        script.parse_args(_argv(root, data[:1], tmp_path / "o", "--label-noise", "1.5"))


def test_per_file_counts_are_checked(setup, load_script, tmp_path):
    root, data = setup
    script = load_script("scripts/finetune_minilm_rm.py")
    args = script.parse_args(_argv(root, data, tmp_path / "o", "--n-pairs", "10", "20", "30"))
    with pytest.raises(SystemExit, match=r"--n-pairs takes one value or one per --data file \(2\)"):
        script.load_datasets(args)
    args = script.parse_args(_argv(root, data, tmp_path / "o", "--max-train-pairs", "-1"))
    with pytest.raises(SystemExit, match="--max-train-pairs must be >= 0"):
        script.load_datasets(args)


def test_stale_checkpoint_is_refused(setup, load_script, tmp_path, one_thread, monkeypatch):
    root, data = setup
    script = load_script("scripts/finetune_minilm_rm.py")
    step = script.train_step
    calls = []

    def crash_after_three(*a):
        if len(calls) == 3:
            raise KeyboardInterrupt
        calls.append(1)
        return step(*a)

    monkeypatch.setattr(script, "train_step", crash_after_three)
    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        script.main(_argv(root, data, out))
    state = json.loads((tmp_path / "out.ckpt" / "state.json").read_text())
    assert state["step"] == 2 and len(state["losses"]) == 2
    with pytest.raises(script.CheckpointMismatchError, match=r"differs in \['settings'\]"):
        script.main(_argv(root, data, out, "--lr", "2e-3"))
    assert not out.exists()


_CHILD = textwrap.dedent(
    """
    import importlib.util, sys, time
    import torch
    torch.set_num_threads(1)
    spec = importlib.util.spec_from_file_location("finetune", {script!r})
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    step = script.train_step

    def slow_step(*args):
        time.sleep(0.3)
        return step(*args)

    script.train_step = slow_step
    script.main({argv!r})
    """
)


def test_sigkill_mid_run_then_resume_gives_the_same_model(setup, load_script, tmp_path, one_thread):
    root, data = setup
    script = load_script("scripts/finetune_minilm_rm.py")
    straight = script.main(_argv(root, data, tmp_path / "straight"))

    resumed_out = tmp_path / "resumed"
    argv = _argv(root, data, resumed_out)
    child = tmp_path / "child.py"
    child.write_text(_CHILD.format(script=str(SCRIPT), argv=argv))
    env = dict(os.environ, PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1")
    proc = subprocess.Popen(
        [sys.executable, str(child)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    state_path = tmp_path / "resumed.ckpt" / "state.json"
    deadline = time.monotonic() + 120
    try:
        while True:
            assert proc.poll() is None, "the child exited before it could be killed"
            assert time.monotonic() < deadline, "the child wrote no checkpoint in time"
            if state_path.exists() and json.loads(state_path.read_text())["step"] >= 4:
                break
            time.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    killed_at = json.loads(state_path.read_text())["step"]
    assert 4 <= killed_at < straight["steps"]
    assert not resumed_out.exists()

    resumed = script.main(argv)
    assert not (tmp_path / "resumed.ckpt").exists()  # deleted once the model is saved
    w1, w2 = _weights(tmp_path / "straight"), _weights(resumed_out)
    assert w1.keys() == w2.keys()
    for name in w1:
        assert torch.equal(w1[name], w2[name]), name
    assert resumed["final_loss_mean20"] == straight["final_loss_mean20"]
    assert [d["test_accuracy_after"] for d in resumed["datasets"]] == [
        d["test_accuracy_after"] for d in straight["datasets"]
    ]
    assert [d["train_pairs"] for d in straight["datasets"]] == [24, 18]
    report = json.loads((resumed_out / "finetune_report.json").read_text())
    assert report["steps"] == straight["steps"] == 2 * 11
    initial = _weights(root / "tiny")
    assert not torch.equal(
        initial["bert.encoder.layer.0.output.dense.weight"],
        w1["bert.encoder.layer.0.output.dense.weight"],
    )
