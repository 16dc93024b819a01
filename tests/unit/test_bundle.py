"""RefinedRewardModel: scoring against a plain loop, the TRL call, checks and persistence."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from skebrm import EnergyRewardCalibrator, RefinedRewardModel, RewardScores
from skebrm.bundle import BundleMismatchError
from skebrm.exceptions import ModelIntegrityError, NotFittedError


@pytest.fixture
def parts(tiny_bundle_parts):
    return tiny_bundle_parts


@pytest.fixture
def bundle(parts):
    return RefinedRewardModel(
        parts.model, parts.tokenizer, parts.calibrator, max_length=parts.max_length, penalty=0.5
    )


def _rows(parts, n=12):
    prompts = [p["prompt"] for p in parts.pairs[:n]]
    completions = [p["chosen"] for p in parts.pairs[:n]]
    return prompts, completions


def test_score_matches_a_plain_loop(parts, bundle):
    """Base reward: the model's own logit on each row alone; refined/std: the calibrator's."""
    prompts, completions = _rows(parts)
    got = bundle.score(prompts, completions)
    assert isinstance(got, RewardScores) and len(got) == len(prompts)
    tok, model = parts.tokenizer, parts.model
    for i, (p, c) in enumerate(zip(prompts, completions)):
        enc = tok(f"{p}\n\n{c}", return_tensors="pt")
        if enc["input_ids"].shape[1] > parts.max_length:
            continue  # truncated rows: covered by the extractor's own tests
        with torch.no_grad():
            logit = float(model(**enc).logits[0, 0])
        assert got.base_reward[i] == pytest.approx(logit, abs=1e-5)
    res = bundle.extractor.extract(list(zip(prompts, completions)))
    cal = parts.calibrator
    np.testing.assert_allclose(got.base_reward, res.rewards, rtol=0, atol=0)
    np.testing.assert_allclose(
        got.refined_reward, cal.predict(res.embeddings, base_reward=res.rewards), atol=1e-12
    )
    np.testing.assert_allclose(got.std, cal.score_uncertainty(res.embeddings), atol=1e-12)
    assert np.all(got.std > 0)
    assert np.ptp(got.base_reward) > 0.1  # the tiny model's rewards vary


def test_call_is_refined_minus_penalty_std(parts, bundle):
    prompts, completions = _rows(parts, 6)
    s = bundle.score(prompts, completions)
    out = bundle(prompts=prompts, completions=completions)
    assert isinstance(out, list) and all(type(r) is float for r in out)
    np.testing.assert_allclose(out, s.refined_reward - 0.5 * s.std, atol=1e-12)
    assert bundle.__name__ == "refined_reward"


def test_results_follow_input_order(parts, bundle):
    prompts, completions = _rows(parts)
    order = np.random.default_rng(0).permutation(len(prompts))
    a = bundle.score(prompts, completions)
    b = bundle.score([prompts[i] for i in order], [completions[i] for i in order])
    np.testing.assert_allclose(b.base_reward, a.base_reward[order], atol=1e-5)
    np.testing.assert_allclose(b.std, a.std[order], atol=1e-5)


def test_the_reward_model_runs_under_inference_mode(parts, bundle, monkeypatch):
    seen = []
    handle = parts.model.register_forward_hook(
        lambda *args: seen.append(torch.is_inference_mode_enabled())
    )
    try:
        bundle.score(*_rows(parts, 2))
    finally:
        handle.remove()
    assert seen and all(seen)


def test_scoring_inside_a_callers_inference_mode(parts):
    import copy

    prompts, completions = _rows(parts, 3)
    ref = RefinedRewardModel(
        parts.model, parts.tokenizer, parts.calibrator, max_length=parts.max_length
    ).score(prompts, completions)
    fresh = copy.deepcopy(parts.calibrator)  # its inference weights are built inside
    with torch.inference_mode():
        bundle = RefinedRewardModel(
            parts.model, parts.tokenizer, fresh, max_length=parts.max_length
        )
        got = bundle.score(prompts, completions)
    np.testing.assert_array_equal(got.refined_reward, ref.refined_reward)


def test_empty_input_gives_empty_scores(bundle):
    s = bundle.score([], [])
    assert len(s) == 0 and s.std.shape == (0,)


def test_settings_are_read_back_from_the_extractor(parts, bundle):
    s = bundle.extraction_settings
    assert s == parts.identity
    assert s["max_length"] == 64 and s["pooling"] == "model" and s["dtype"] == "float32"
    assert s["template"] == "format:{prompt}\n\n{response}"
    assert "max_length=64" in repr(bundle)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"penalty": -1.0}, ValueError, r"penalty must be a finite float >= 0, got -1\.0"),
        ({"penalty": float("nan")}, ValueError, "penalty must be a finite float >= 0"),
        ({"batch_size": 0}, ValueError, "batch_size must be a positive int, got 0"),
        ({"name": ""}, ValueError, "name must be a non-empty str"),
        ({"device": "gpu0"}, ValueError, "device must be a torch device"),
    ],
)
def test_bad_parameters_are_refused(parts, kwargs, error, match):
    with pytest.raises(error, match=match):
        RefinedRewardModel(parts.model, parts.tokenizer, parts.calibrator, **kwargs)


def test_calibrator_must_be_a_fitted_calibrator(parts):
    with pytest.raises(TypeError, match="calibrator must be a fitted EnergyRewardCalibrator"):
        RefinedRewardModel(parts.model, parts.tokenizer, object())
    with pytest.raises(NotFittedError):
        RefinedRewardModel(parts.model, parts.tokenizer, EnergyRewardCalibrator())


def test_embedding_width_mismatch_is_refused(parts):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(40, 8)).astype(np.float32)
    other = EnergyRewardCalibrator(
        hidden=(8,), reward_hidden=(4,), n_negatives=8, max_epochs=1, grid_size=16, device="cpu"
    ).fit(X, X[:, 0])
    with pytest.raises(BundleMismatchError, match="fitted on 8-dimensional embeddings.*takes 16"):
        RefinedRewardModel(parts.model, parts.tokenizer, other)


@pytest.mark.parametrize(
    ("key", "value"),
    [("weights_sha256", "0" * 64), ("max_length", 128), ("template", "chat:abc")],
)
def test_fitted_on_another_setting_is_refused(parts, key, value):
    fitted_on = dict(parts.identity, **{key: value})
    with pytest.raises(BundleMismatchError, match=f"{key}: calibrator fitted on {value!r}"):
        RefinedRewardModel(
            parts.model,
            parts.tokenizer,
            parts.calibrator,
            max_length=parts.max_length,
            fitted_on=fitted_on,
        )
    with pytest.raises(TypeError, match="fitted_on must be the dict"):
        RefinedRewardModel(parts.model, parts.tokenizer, parts.calibrator, fitted_on="x")


def test_score_input_errors(bundle):
    with pytest.raises(ValueError, match="same length, got 2 and 1"):
        bundle.score(["a", "b"], ["c"])
    with pytest.raises(TypeError, match=r"prompts must be a list of str, got str"):
        bundle.score("a", ["c"])
    with pytest.raises(TypeError, match=r"completions\[1\] must be a str, got int"):
        bundle.score(["a", "b"], ["c", 3])


def test_fit_guard_runs_the_calibrators_guard_on_the_pairs(parts, tmp_path):
    import copy

    pairs = parts.pairs[:20]
    prompts = [p["prompt"] for p in pairs]
    chosen, rejected = [p["chosen"] for p in pairs], [p["rejected"] for p in pairs]
    cal = copy.deepcopy(parts.calibrator)  # the session's calibrator must stay as it is
    cal.set_params(guard="off")
    bundle = RefinedRewardModel(parts.model, parts.tokenizer, cal, max_length=parts.max_length)
    assert bundle.fit_guard(prompts, chosen, rejected) is bundle
    # reference: the calibrator's own fit_guard on the RM's rows of these pairs
    rows = [row for p, c, r in zip(prompts, chosen, rejected) for row in ((p, c), (p, r))]
    res = bundle.extractor.extract(rows)
    ref = copy.deepcopy(parts.calibrator).set_params(guard="off")
    ref.fit_guard(
        res.embeddings,
        res.rewards,
        pair_id=np.repeat(np.arange(20), 2),
        chosen=np.tile([True, False], 20),
    )
    assert cal.guard_scores_ == ref.guard_scores_ and cal.guard_scores_["n_pairs"] == 20
    assert cal.refinement_helps_ is ref.refinement_helps_
    loaded = RefinedRewardModel.from_pretrained(bundle.save_pretrained(tmp_path / "b"))
    assert loaded.calibrator.guard_scores_ == cal.guard_scores_
    with pytest.raises(ValueError, match="same length, got 20, 20 and 19"):
        bundle.fit_guard(prompts, chosen, rejected[:-1])
    with pytest.raises(ValueError, match="needs at least one pair"):
        bundle.fit_guard([], [], [])
    with pytest.raises(TypeError, match=r"rejected\[0\] must be a str, got int"):
        bundle.fit_guard(["a"], ["b"], [1])


# ------------------------------------------------------------------ persistence
def _resign(folder, edit):
    """Edit the saved config and recompute its digest (a deliberate, consistent forgery)."""
    import json

    from skebrm._manifest import seal

    path = folder / "refined_reward_model.json"
    config = json.loads(path.read_text())
    edit(config)
    path.write_text(json.dumps(seal(config)))


@pytest.fixture
def saved(bundle, tmp_path):
    return bundle.save_pretrained(tmp_path / "bundle")


def test_round_trip_gives_the_same_numbers(parts, bundle, saved):
    prompts, completions = _rows(parts)
    loaded = RefinedRewardModel.from_pretrained(saved)
    a, b = bundle.score(prompts, completions), loaded.score(prompts, completions)
    np.testing.assert_array_equal(a.base_reward, b.base_reward)
    np.testing.assert_array_equal(a.refined_reward, b.refined_reward)
    np.testing.assert_array_equal(a.std, b.std)
    assert loaded.penalty == 0.5 and loaded.__name__ == "refined_reward"
    same = {k: v for k, v in bundle.extraction_settings.items() if k != "model"}
    assert {k: loaded.extraction_settings[k] for k in same} == same
    assert RefinedRewardModel.from_pretrained(saved, penalty=0.0, batch_size=3).penalty == 0.0
    names = sorted(p.relative_to(saved).as_posix() for p in saved.rglob("*") if p.is_file())
    assert "refined_reward_model.json" in names
    assert any(n.startswith("reward_model/") and n.endswith(".safetensors") for n in names)
    assert any(n.startswith("calibrator/") for n in names)
    assert not any(n.endswith((".bin", ".pkl", ".pt", ".joblib")) for n in names)


def test_loading_and_scoring_never_unpickle(parts, saved, monkeypatch):
    import pickle

    def refuse(*args, **kwargs):
        raise AssertionError("unpickling on the serving path")

    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(pickle, "Unpickler", refuse)
    monkeypatch.setattr(torch, "load", refuse)
    loaded = RefinedRewardModel.from_pretrained(saved)
    assert len(loaded.score(*_rows(parts, 3))) == 3


def _tree(folder):
    return {
        p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()
    }


def test_saving_writes_into_the_folder_and_never_deletes_foreign_files(parts, bundle, tmp_path):
    """As Hugging Face's save_pretrained: the folder's other files stay."""
    folder = tmp_path / "models"
    folder.mkdir()
    (folder / "other_model.bin").write_bytes(b"weights of another model")
    (folder / "notes.txt").write_text("my notes")
    with pytest.raises(FileExistsError, match="not empty and holds no saved RefinedRewardModel"):
        bundle.save_pretrained(folder)
    assert _tree(folder) == {
        "other_model.bin": b"weights of another model",
        "notes.txt": b"my notes",
    }
    assert bundle.save_pretrained(folder, overwrite=True) == folder
    assert (folder / "other_model.bin").read_bytes() == b"weights of another model"
    assert (folder / "notes.txt").read_text() == "my notes"
    assert not [p for p in folder.iterdir() if p.name.startswith(".")]  # no staging left
    prompts, completions = _rows(parts, 4)
    loaded = RefinedRewardModel.from_pretrained(folder)  # files beside the bundle: ignored
    np.testing.assert_array_equal(
        loaded.score(prompts, completions).refined_reward,
        bundle.score(prompts, completions).refined_reward,
    )
    bundle.save_pretrained(folder)  # a folder holding a bundle is written again as it is
    assert (folder / "notes.txt").read_text() == "my notes"


def test_saving_over_a_bundle_removes_its_stale_files_only(parts, bundle, saved, monkeypatch):
    from skebrm._io import sha256_file

    # a previous bundle wrote a file that this one does not (another shard layout)
    stale = saved / "reward_model" / "model-00002-of-00002.safetensors"
    stale.write_bytes(b"an old shard")
    rel = "reward_model/model-00002-of-00002.safetensors"
    _resign(saved, lambda c: c["files"].update({rel: sha256_file(stale)}))
    (saved / "README.md").write_text("about this bundle")
    outside = saved.parent / "outside.txt"  # a name leading out of the folder: never deleted
    outside.write_text("keep")
    _resign(saved, lambda c: c["files"].update({"reward_model/../../outside.txt": "0" * 64}))
    bundle.save_pretrained(saved)
    assert not stale.exists() and (saved / "README.md").exists() and outside.exists()
    RefinedRewardModel.from_pretrained(saved)
    # a file inside the bundle's folders that no bundle wrote is refused, never deleted
    (saved / "calibrator" / "mine.txt").write_text("mine")
    with pytest.raises(FileExistsError, match=r"calibrator/mine.txt.*never deleted"):
        bundle.save_pretrained(saved, overwrite=True)
    assert (saved / "calibrator" / "mine.txt").read_text() == "mine"
    (saved / "calibrator" / "mine.txt").unlink()
    # calibrator weights left unnamed by a save killed before its manifest are the bundle's
    orphan = saved / "calibrator" / "calibrator-0123456789abcdef.safetensors"
    orphan.write_bytes(b"weights of a killed save")
    bundle.save_pretrained(saved)
    assert not orphan.exists()
    # a save that fails half-way leaves the previous bundle as it was
    before = _tree(saved)

    def boom(directory):
        raise OSError("disk full")

    monkeypatch.setattr(parts.calibrator, "save_pretrained", boom)
    with pytest.raises(OSError, match="disk full"):
        bundle.save_pretrained(saved)
    assert _tree(saved) == before


def test_a_refused_bundle_leaves_the_callers_objects_as_they_were(parts):
    """The width and fitted_on checks run before the model is converted or moved."""
    import copy

    model = copy.deepcopy(parts.model).train()
    rng = np.random.default_rng(0)
    X = rng.normal(size=(40, 8)).astype(np.float32)
    other = EnergyRewardCalibrator(
        hidden=(8,), reward_hidden=(4,), n_negatives=8, max_epochs=1, grid_size=16, device="cpu"
    ).fit(X, X[:, 0])
    with pytest.raises(ModelIntegrityError, match="fitted on 8-dimensional embeddings"):
        RefinedRewardModel(model, parts.tokenizer, other, dtype="float64")
    assert next(model.parameters()).dtype == torch.float32 and model.training
    with pytest.raises(ModelIntegrityError, match="max_length: calibrator fitted on 128"):
        RefinedRewardModel(
            model,
            parts.tokenizer,
            parts.calibrator,
            max_length=parts.max_length,
            dtype="float64",
            fitted_on=dict(parts.identity, max_length=128),
        )
    assert next(model.parameters()).dtype == torch.float32 and model.training
    # fitted_on compares the fingerprint of the weights in the bundle's dtype
    bundle = RefinedRewardModel(
        model, parts.tokenizer, parts.calibrator, max_length=parts.max_length, dtype="float64"
    )
    assert bundle.reward_model is model and next(model.parameters()).dtype == torch.float64
    from skebrm.extraction.extractor import weights_fingerprint

    assert bundle.extraction_settings["weights_sha256"] == weights_fingerprint(model)


def test_an_extractor_that_fails_to_fit_leaves_the_model_as_it_was(parts):
    import copy

    from skebrm.extraction import EmbeddingExtractor

    model = copy.deepcopy(parts.model).train()
    with pytest.raises(ValueError, match="no_such_layer"):
        EmbeddingExtractor(model, parts.tokenizer, dtype="float64", head="no_such_layer").fit()
    assert next(model.parameters()).dtype == torch.float32 and model.training
    with pytest.raises(RuntimeError):
        EmbeddingExtractor(model, parts.tokenizer, dtype="float64", device="nowhere").fit()
    assert next(model.parameters()).dtype == torch.float32 and model.training


def test_the_callers_calibrator_is_not_changed(parts):
    import copy

    cal = copy.deepcopy(parts.calibrator).set_params(device="auto")
    bundle = RefinedRewardModel(parts.model, parts.tokenizer, cal, max_length=parts.max_length)
    assert cal.device == "auto"
    assert bundle.calibrator.device == "cpu" and bundle.calibrator is not cal
    same = RefinedRewardModel(
        parts.model, parts.tokenizer, parts.calibrator, max_length=parts.max_length
    )
    assert same.calibrator is parts.calibrator  # already on the bundle's device


def test_an_edited_file_is_refused(saved):
    weights = next((saved / "reward_model").glob("*.safetensors"))
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1
    weights.write_bytes(bytes(data))
    with pytest.raises(BundleMismatchError, match=r"reward_model/.*modified after saving"):
        RefinedRewardModel.from_pretrained(saved)


def test_an_edited_config_is_refused(saved):
    path = saved / "refined_reward_model.json"
    path.write_text(path.read_text().replace('"max_length": 64', '"max_length": 128'))
    with pytest.raises(BundleMismatchError, match="was edited after saving"):
        RefinedRewardModel.from_pretrained(saved)


def test_an_extra_file_is_refused(saved):
    (saved / "reward_model" / "pytorch_model.bin").write_bytes(b"not loaded")
    with pytest.raises(BundleMismatchError, match="pytorch_model.bin"):
        RefinedRewardModel.from_pretrained(saved)


def test_another_tokenizer_is_refused(saved):
    _resign(saved, lambda c: c["extraction"].update(tokenizer_sha256="0" * 64))
    with pytest.raises(BundleMismatchError, match=r"not the one the bundle was saved with"):
        RefinedRewardModel.from_pretrained(saved)


def test_a_tokenizer_with_truncation_settings_round_trips(parts, tmp_path):
    """A tokenizer.json may carry truncation and padding settings (many hub RMs' do), and
    every call of the tokenizer changes them; the fingerprint leaves them out."""
    import copy

    tokenizer = copy.deepcopy(parts.tokenizer)
    tokenizer.backend_tokenizer.enable_truncation(32)
    tokenizer.backend_tokenizer.enable_padding(length=32)
    bundle = RefinedRewardModel(
        parts.model, tokenizer, parts.calibrator, max_length=parts.max_length
    )
    prompts, completions = _rows(parts, n=4)
    want = bundle.score(prompts, completions).refined_reward
    tokenizer(["some text"] * 2, truncation=True, max_length=8, padding="max_length")
    saved = bundle.save_pretrained(tmp_path / "new")
    loaded = RefinedRewardModel.from_pretrained(saved)
    assert (
        loaded.extraction_settings["tokenizer_sha256"]
        == bundle.extraction_settings["tokenizer_sha256"]
    )
    # the reloaded RM runs its forward pass again: equal to float32 precision
    np.testing.assert_allclose(loaded.score(prompts, completions).refined_reward, want, atol=1e-5)


def test_a_bundle_saved_with_the_old_tokenizer_fingerprint_still_loads(saved, monkeypatch):
    """skebrm 0.2.0 fingerprinted the tokenizer with its truncation and padding state; a
    bundle whose recorded value is that of the loaded tokenizer loads."""
    import skebrm.extraction.extractor as extractor_module

    _resign(saved, lambda c: c["extraction"].update(tokenizer_sha256="1" * 64))
    with pytest.raises(BundleMismatchError, match="tokenizer_sha256"):
        RefinedRewardModel.from_pretrained(saved)
    monkeypatch.setattr(extractor_module, "_legacy_tokenizer_fingerprint", lambda tok: "1" * 64)
    RefinedRewardModel.from_pretrained(saved)


@pytest.mark.parametrize(
    "edit",
    [
        lambda c: c["extraction"].update(max_length="long"),  # ValueError
        lambda c: c["extraction"].update(dtype="complex_float"),  # AttributeError
        lambda c: c["extraction"].pop("head"),  # KeyError
        lambda c: c.update(penalty=-1.0),  # ValueError
        lambda c: c.update(template=["not", "a", "template"]),
    ],
)
def test_a_consistent_forgery_that_does_not_build_is_an_integrity_error(saved, edit):
    _resign(saved, edit)
    with pytest.raises(ModelIntegrityError, match="do not make a RefinedRewardModel"):
        RefinedRewardModel.from_pretrained(saved)


def test_the_callers_own_bad_arguments_are_not_integrity_errors(saved):
    with pytest.raises(ValueError, match="penalty must be a finite float") as info:
        RefinedRewardModel.from_pretrained(saved, penalty=-1.0)
    assert not isinstance(info.value, ModelIntegrityError)


def test_loading_hashes_each_file_once(saved, monkeypatch):
    """Start-up reads and hashes each file once; the RM's weights are not hashed again."""
    import hashlib

    sizes = [p.stat().st_size for p in saved.rglob("*") if p.is_file()]
    hashed = []
    real = hashlib.sha256

    class Counting:
        def __init__(self, data=b""):
            self._h = real(data)
            hashed.append(len(data))

        def update(self, data):
            hashed.append(memoryview(data).nbytes)
            self._h.update(data)

        def hexdigest(self):
            return self._h.hexdigest()

    monkeypatch.setattr(hashlib, "sha256", Counting)
    RefinedRewardModel.from_pretrained(saved)
    monkeypatch.undo()
    weights = sum(p.stat().st_size for p in (saved / "reward_model").glob("*.safetensors"))
    # every file once, plus the tokenizer's fingerprint and the calibrator's own check of
    # its (small) files: far less than the weights twice
    assert sum(hashed) < sum(sizes) + 0.5 * weights


def test_the_transformers_floor_has_the_dtype_keyword():
    """from_pretrained(dtype=...) selects the dtype from transformers 4.56 on."""
    tomllib = pytest.importorskip("tomllib")
    from pathlib import Path

    from packaging.requirements import Requirement
    from packaging.version import Version

    root = Path(__file__).resolve().parents[2]
    extras = tomllib.loads((root / "pyproject.toml").read_text())["project"]
    hf = extras["optional-dependencies"]["hf"]
    req = next(Requirement(d) for d in hf if Requirement(d).name == "transformers")
    floor = [Version(s.version) for s in req.specifier if s.operator in (">=", "==", "~=")]
    assert floor and min(floor) >= Version("4.56")


def test_a_calibrator_of_another_width_is_refused(saved, tmp_path):
    import shutil

    from skebrm._io import sha256_file

    rng = np.random.default_rng(0)
    X = rng.normal(size=(40, 8)).astype(np.float32)
    other = EnergyRewardCalibrator(
        hidden=(8,), reward_hidden=(4,), n_negatives=8, max_epochs=1, grid_size=16, device="cpu"
    ).fit(X, X[:, 0])
    shutil.rmtree(saved / "calibrator")
    other.save_pretrained(saved / "calibrator")

    def files(config):
        config["files"] = {
            p.relative_to(saved).as_posix(): sha256_file(p)
            for p in saved.rglob("*")
            if p.is_file() and p.name != "refined_reward_model.json"
        }

    _resign(saved, files)
    with pytest.raises(BundleMismatchError, match="fitted on 8-dimensional embeddings"):
        RefinedRewardModel.from_pretrained(saved)


def _to_first_format(folder):
    """Rewrite the config as the first bundle format did (config_sha256 of json.dumps)."""
    import hashlib
    import json

    path = folder / "refined_reward_model.json"
    config = json.loads(path.read_text())
    config.pop("content_sha256")
    config["format_version"] = 1
    text = json.dumps(config, sort_keys=True, allow_nan=False)
    config["config_sha256"] = hashlib.sha256(text.encode()).hexdigest()
    path.write_text(json.dumps(config))
    return path


def test_a_bundle_of_the_first_format_still_loads(parts, bundle, saved):
    path = _to_first_format(saved)
    prompts, completions = _rows(parts, 4)
    loaded = RefinedRewardModel.from_pretrained(saved)
    np.testing.assert_array_equal(
        loaded.score(prompts, completions).refined_reward,
        bundle.score(prompts, completions).refined_reward,
    )
    path.write_text(path.read_text().replace('"penalty": 0.5', '"penalty": 5.0'))
    with pytest.raises(ModelIntegrityError, match="was edited after saving"):
        RefinedRewardModel.from_pretrained(saved)
    bundle.save_pretrained(saved)  # written again in the current format
    assert RefinedRewardModel.from_pretrained(saved).penalty == 0.5


def test_not_a_bundle_and_other_versions_are_refused(saved, tmp_path):
    with pytest.raises(FileNotFoundError, match="is not a saved RefinedRewardModel"):
        RefinedRewardModel.from_pretrained(tmp_path / "nothing")
    _resign(saved, lambda c: c.update(format_version=99))
    with pytest.raises(BundleMismatchError, match="format_version 99"):
        RefinedRewardModel.from_pretrained(saved)
