"""Fine-tune MiniLM end-to-end as a Bradley–Terry reward model, resumably, on one or more datasets.

A frozen backbone with a linear head is a weak RM; the paper calibrates fine-tuned RMs.
This script trains ``BertForSequenceClassification`` (MiniLM-L6, one label; or any local
one-label Hugging Face model with ``--model``) with the pairwise loss
``−log σ(r_chosen − r_rejected)``.

Data. Every ``--data`` file is loaded as the studies load it (``data.loader.n`` pairs drawn
with the seed, in file order; ``--n-pairs 0`` keeps all) and split by prompt 60 / 20 / 20
with ``split_by_prompt(random_state=seed)``, the split of the RMB study
(``skebrm.experiments.data.split_pairs``), so the study's test prompts are never trained
on. The training pool is the head split of every file (``--train-splits head calibrator``
adds the calibrator split), capped per file by ``--max-train-pairs``; the pairwise accuracy
is reported per file on its test split (``--max-test-pairs`` per file), before and after.

Resuming. Every ``--checkpoint-every`` steps the model, the optimizer, the scheduler, the
torch RNG (dropout), the data order and the losses so far are written atomically to
``--checkpoint-dir`` (default ``<output>.ckpt``). Rerunning the same command after a kill
continues from the last checkpoint and ends with the same weights as an uninterrupted run
(same thread count). A checkpoint written for other data or settings is refused. The
checkpoint is deleted once the model is saved.

The model is saved with ``save_pretrained`` outside the repository (atomically: a staged
folder swapped in whole) with ``finetune_report.json``; it loads like any Hugging Face RM,
so the RMB study runs on it with ``backbone=minilm_rmb_finetuned``.

    nice -n 19 python scripts/finetune_minilm_rm.py --max-train-pairs 2000 \
        --output ~/.cache/skebrm/minilm-rmb-finetuned

It takes about an hour on a 2-core CPU for 2,000 pairs at 256 tokens. ``--label-noise 0.3``
swaps chosen and rejected in the head and calibrator pairs that the study's
``label_noise=0.3`` flips (same seed), so an RM fine-tuned on noisy labels can be studied
with ``backbone=minilm_rmb_finetuned label_noise=0.3`` (``$SKEBRM_FINETUNED_RM`` pointing at
it). Several datasets::

    python scripts/finetune_minilm_rm.py --data $SKEBRM_DATA_DIR/rmb_pairwise.jsonl.gz \
        $SKEBRM_DATA_DIR/ultrafeedback_train_clean.jsonl.gz --n-pairs 0 --max-train-pairs 0
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from skebrm._io import sha256_file, staged_directory, write_json_atomic
from skebrm.datasets import dataset_fingerprint, split_by_prompt
from skebrm.experiments import data_dir
from skebrm.experiments.data import (
    flipped_pairs,
    label_noise_seed,
    load_pairs_coercing_texts,
)
from skebrm.extraction import EmbeddingExtractor, load_minilm
from skebrm.extraction._formatting import encode_rows

__all__ = ["main"]

RMB = Path(data_dir()) / "rmb_pairwise.jsonl.gz"
SPLITS = ("head", "calibrator", "test")
_STATE = "training_state.pt"
_FORMAT = 1


class CheckpointMismatchError(ValueError):
    """The checkpoint was written for other data or settings."""


def encode(extractor, texts):
    """Token tensors for (prompt, response) rows, formatted and cut as the extractor does."""
    enc = encode_rows(
        extractor.tokenizer_,
        [p for p, _ in texts],
        [r for _, r in texts],
        template=extractor.template_,
        max_length=extractor.max_length,
    )
    return extractor._batch_tensors(enc.input_ids)


def pairwise_accuracy(model, tokenizer, pairs, max_length, batch_size):
    extractor = EmbeddingExtractor(model, tokenizer, max_length=max_length, batch_size=batch_size)
    res = extractor.fit().extract(pairs)
    r = res.rewards
    d = r[res.chosen] - r[~res.chosen]
    return float(np.mean((d > 0) + 0.5 * (d == 0)))


def _per_file(name: str, values: list[int], n_files: int) -> list[int | None]:
    """One value for every file, or one per file; 0 means "no limit" (None)."""
    if len(values) not in (1, n_files):
        raise SystemExit(
            f"finetune_minilm_rm: {name} takes one value or one per --data file "
            f"({n_files}), got {len(values)}: {values}."
        )
    if any(v < 0 for v in values):
        raise SystemExit(f"finetune_minilm_rm: {name} must be >= 0 (0: all), got {values}.")
    values = values * n_files if len(values) == 1 else values
    return [None if v == 0 else int(v) for v in values]


def _nonempty(pairs):
    return [p for p in pairs if p["chosen"].strip() and p["rejected"].strip()]


def load_datasets(args) -> tuple[list[dict], np.random.Generator]:
    """Per file: its name, training and test pairs; and the generator, for the epoch orders."""
    n_files = len(args.data)
    n_pairs = _per_file("--n-pairs", args.n_pairs, n_files)
    max_train = _per_file("--max-train-pairs", args.max_train_pairs, n_files)
    max_test = _per_file("--max-test-pairs", args.max_test_pairs, n_files)
    split_seed = args.seed if args.split_seed is None else args.split_seed
    # One generator for every subset and the epoch orders: with one file, the draws are
    # those of the single-dataset script (train subset, test subset, then one order per
    # epoch), so its models are reproduced.
    rng = np.random.default_rng(args.seed)
    out = []
    for j, path in enumerate(args.data):
        pairs = load_pairs_coercing_texts(path, n=n_pairs[j], random_state=split_seed)
        parts = dict(zip(SPLITS, split_by_prompt(pairs, [0.6, 0.2, 0.2], random_state=split_seed)))
        if args.label_noise:  # the study's flips, split by split
            for name in ("head", "calibrator"):
                seed = label_noise_seed(name, split_seed)
                parts[name] = flip_pairs(parts[name], args.label_noise, seed)
        pool = _nonempty([p for s in args.train_splits for p in parts[s]])
        test = _nonempty(parts["test"])
        train = [pool[i] for i in rng.permutation(len(pool))[: max_train[j]]]
        test = [test[i] for i in np.sort(rng.permutation(len(test))[: max_test[j]])]
        name = Path(path).name.removesuffix(".gz").removesuffix(".jsonl")
        out.append({"name": name, "path": str(path), "train": train, "test": test})
    return out, rng


def flip_pairs(pairs: list[dict], fraction: float, seed: int) -> list[dict]:
    """Swap chosen and rejected in the pairs that
    :func:`skebrm.experiments.data.flip_labels` flips for the same pairs, fraction and seed."""
    flip = set(flipped_pairs(len(pairs), fraction, random_state=seed).tolist())
    return [
        {**p, "chosen": p["rejected"], "rejected": p["chosen"]} if i in flip else p
        for i, p in enumerate(pairs)
    ]


def load_model(args):
    """MiniLM (seeded head) or a local one-label ``*ForSequenceClassification`` folder."""
    if args.model == "minilm":
        return load_minilm()
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model = AutoModelForSequenceClassification.from_pretrained(args.model, num_labels=1)
    return model.eval(), AutoTokenizer.from_pretrained(args.model)


def run_key(args, datasets, extractor) -> dict:
    """What a checkpoint must match to be resumed: the data, the model and the settings."""
    return {
        "format": _FORMAT,
        "model": {k: v for k, v in extractor.identity().items() if k != "skebrm_version"},
        "datasets": [
            {
                "name": d["name"],
                "train_sha256": dataset_fingerprint(d["train"]),
                "test_sha256": dataset_fingerprint(d["test"]),
            }
            for d in datasets
        ],
        "settings": {
            k: getattr(args, k)
            for k in ("epochs", "lr", "batch_pairs", "max_length", "seed", "train_splits")
        }
        | ({"label_noise": args.label_noise} if args.label_noise else {}),
    }


def save_checkpoint(path: Path, *, model, opt, sched, state: dict) -> None:
    """Write the training state to ``path`` whole (a staged folder swapped in)."""
    with staged_directory(path) as tmp:
        torch.save(
            {
                "model": model.state_dict(),
                "optimizer": opt.state_dict(),
                "scheduler": sched.state_dict(),
                "torch_rng": torch.get_rng_state(),
            },
            tmp / _STATE,
        )
        write_json_atomic(tmp / "state.json", {**state, "sha256": sha256_file(tmp / _STATE)})


def load_checkpoint(path: Path, key: dict) -> tuple[dict, dict] | None:
    """The checkpoint's JSON state and tensors, or None where there is none."""
    if not (path / "state.json").exists():
        return None
    with open(path / "state.json", encoding="utf-8") as fh:
        state = json.load(fh)
    if state.get("key") != key:
        old = state.get("key", {})
        diff = sorted(k for k in set(old) | set(key) if old.get(k) != key.get(k))
        raise CheckpointMismatchError(
            f"finetune_minilm_rm: the checkpoint in {str(path)!r} was written for other "
            f"data or settings (differs in {diff}); delete it or pass another "
            "--checkpoint-dir."
        )
    if sha256_file(path / _STATE) != state["sha256"]:
        raise OSError(
            f"finetune_minilm_rm: {str(path / _STATE)!r} does not match its recorded "
            "SHA-256; delete the checkpoint folder to start again."
        )
    tensors = torch.load(path / _STATE, map_location="cpu", weights_only=True)
    return state, tensors


def train_step(model, opt, sched, extractor, batch) -> float:
    """One optimizer step of the pairwise loss on ``batch`` (a list of pairs)."""
    texts = [(p["prompt"], p["chosen"]) for p in batch] + [
        (p["prompt"], p["rejected"]) for p in batch
    ]
    enc = encode(extractor, texts)
    out = model(**enc).logits[:, 0]
    n = len(batch)
    loss = -torch.nn.functional.logsigmoid(out[:n] - out[n:]).mean()
    opt.zero_grad()
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    sched.step()
    return float(loss.item())


def _accuracies(model, tokenizer, datasets, max_length) -> dict[str, float]:
    acc = {
        d["name"]: pairwise_accuracy(model, tokenizer, d["test"], max_length, 32) for d in datasets
    }
    sizes = [len(d["test"]) for d in datasets]
    acc["all"] = float(np.average([acc[d["name"]] for d in datasets], weights=sizes))
    return acc


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--data",
        nargs="+",
        default=[str(RMB)],
        help="one or more pair files (JSON lines in the shared schema)",
    )
    parser.add_argument("--output", default=str(Path.home() / ".cache/skebrm/minilm-rmb-finetuned"))
    parser.add_argument(
        "--model", default="minilm", help="'minilm' or a local one-label HF model folder"
    )
    parser.add_argument(
        "--n-pairs",
        type=int,
        nargs="+",
        default=[2000],
        help="as data.loader.n of the study, one value or one per file; 0: all pairs",
    )
    parser.add_argument(
        "--max-train-pairs", type=int, nargs="+", default=[2000], help="per file; 0: all"
    )
    parser.add_argument(
        "--max-test-pairs", type=int, nargs="+", default=[600], help="per file; 0: all"
    )
    parser.add_argument(
        "--train-splits",
        nargs="+",
        choices=SPLITS[:2],
        default=["head"],
        help="which parts of the 60/20/20 split to train on (the test part never)",
    )
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--lr", type=float, default=3e-5)
    parser.add_argument("--batch-pairs", type=int, default=8)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--split-seed",
        type=int,
        default=None,
        help="seed of the subset and the split (default: --seed, as the studies' seed)",
    )
    parser.add_argument(
        "--label-noise",
        type=float,
        default=0.0,
        help="share of the head and calibrator pairs whose labels are swapped, the pairs the "
        "study's label_noise flips (with the split seed); the test part is never flipped",
    )
    parser.add_argument("--checkpoint-every", type=int, default=50, help="steps; 0: never")
    parser.add_argument("--checkpoint-dir", default=None, help="default: <output>.ckpt")
    args = parser.parse_args(argv)
    if not 0.0 <= args.label_noise <= 1.0:
        parser.error(f"--label-noise must be in [0, 1], got {args.label_noise!r}")
    return args


def main(argv=None):
    args = parse_args(argv)
    out = Path(os.path.expanduser(args.output))
    ckpt_dir = Path(os.path.expanduser(args.checkpoint_dir or f"{out}.ckpt"))

    torch.manual_seed(args.seed)
    datasets, rng = load_datasets(args)
    train = [p for d in datasets for p in d["train"]]
    if not train:
        raise SystemExit("finetune_minilm_rm: no training pairs; check --data and --n-pairs.")
    steps_per_epoch = int(np.ceil(len(train) / args.batch_pairs))
    steps = args.epochs * steps_per_epoch
    orders = [rng.permutation(len(train)) for _ in range(args.epochs)]

    model, tokenizer = load_model(args)
    extractor = EmbeddingExtractor(model, tokenizer, max_length=args.max_length).fit()
    key = run_key(args, datasets, extractor)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / 50) * (1 - s / steps)
    )
    t0 = time.time()
    loaded = load_checkpoint(ckpt_dir, key)
    if loaded is None:
        base_acc = _accuracies(model, tokenizer, datasets, args.max_length)
        print(f"MiniLM test accuracy before fine-tuning: {base_acc} ({time.time() - t0:.0f}s)")
        state = {"key": key, "step": 0, "losses": [], "base_accuracy": base_acc, "seconds": 0.0}
    else:
        state, tensors = loaded
        model.load_state_dict(tensors["model"])
        opt.load_state_dict(tensors["optimizer"])
        sched.load_state_dict(tensors["scheduler"])
        torch.set_rng_state(tensors["torch_rng"])
        print(f"resuming from step {state['step']} of {steps} ({ckpt_dir})")
    base_acc = state["base_accuracy"]
    losses = state["losses"]

    model.train()
    bar = tqdm(total=steps, initial=state["step"], desc="fine-tune", unit="step")
    for step in range(state["step"], steps):
        epoch, k = divmod(step, steps_per_epoch)
        idx = orders[epoch][k * args.batch_pairs : (k + 1) * args.batch_pairs]
        losses.append(train_step(model, opt, sched, extractor, [train[i] for i in idx]))
        bar.update(1)
        bar.set_postfix(loss=np.mean(losses[-20:]))
        done = step + 1
        if args.checkpoint_every and done % args.checkpoint_every == 0 and done < steps:
            state.update(step=done, seconds=state["seconds"] + time.time() - t0)
            t0 = time.time()
            save_checkpoint(ckpt_dir, model=model, opt=opt, sched=sched, state=state)
    bar.close()
    model.eval()

    acc = _accuracies(model, tokenizer, datasets, args.max_length)
    print(f"fine-tuned test accuracy: {acc}")
    report = {
        "model": args.model,
        "datasets": [
            {
                "name": d["name"],
                "path": d["path"],
                "train_pairs": len(d["train"]),
                "test_pairs": len(d["test"]),
                "test_accuracy_before": base_acc[d["name"]],
                "test_accuracy_after": acc[d["name"]],
            }
            for d in datasets
        ],
        "train_pairs": len(train),
        "test_pairs": sum(len(d["test"]) for d in datasets),
        "train_splits": args.train_splits,
        "epochs": args.epochs,
        "steps": steps,
        "lr": args.lr,
        "batch_pairs": args.batch_pairs,
        "max_length": args.max_length,
        "seed": args.seed,
        "label_noise": args.label_noise,
        "test_accuracy_before": base_acc["all"],
        "test_accuracy_after": acc["all"],
        "final_loss_mean20": float(np.mean(losses[-20:])),
        "seconds": state["seconds"] + time.time() - t0,
    }
    with staged_directory(out) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        write_json_atomic(tmp / "finetune_report.json", report)
    shutil.rmtree(ckpt_dir, ignore_errors=True)
    print(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
