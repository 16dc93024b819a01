"""Saving a fitted EnergyRewardCalibrator without pickle; pickle and joblib on the same state."""

import json
import pickle

import joblib
import numpy as np
import pytest
import torch

from skebrm import EnergyRewardCalibrator
from skebrm._persistence import CONFIG_NAME, FORMAT_VERSION
from skebrm.exceptions import ModelIntegrityError

FAST = dict(
    hidden=(16, 8),
    reward_hidden=(4, 8),
    n_negatives=16,
    max_epochs=2,
    batch_size=64,
    grid_size=64,
    random_state=0,
)


def _data(n_pairs=60, d=5, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(2 * n_pairs, d)).astype(np.float32)
    y = X[:, 0] + 0.3 * rng.normal(size=2 * n_pairs)
    pid = np.repeat(np.arange(n_pairs), 2)
    ch = np.tile([True, False], n_pairs)
    return X, y, pid, ch


@pytest.fixture(scope="module")
def data():
    return _data()


@pytest.fixture(scope="module", params=["mlp", "basis"])
def fitted(request, data):
    X, y, pid, ch = data
    params = dict(FAST, energy=request.param, validation_fraction=0.3, guard="off")
    if request.param == "basis":
        params.pop("reward_hidden")
    return EnergyRewardCalibrator(**params).fit(X, y, pair_id=pid, chosen=ch)


def _outputs(est, X, y):
    d = est.predict_distribution(X)
    return [
        est.predict(X, base_reward=y),
        est.predict(X),
        est.score_uncertainty(X),
        d.log_density_grid(),
        d.quantiles([0.1, 0.9]),
        est.predict_energy(X, y),
    ]


def _assert_same_model(a, b, X, y):
    assert a.get_params() == b.get_params()
    for name in (
        "n_features_in_",
        "n_pairs_",
        "n_pairs_dropped_",
        "best_epoch_",
        "refinement_helps_",
        "guard_scores_",
        "reward_mean_",
        "reward_scale_",
        "trusted_range_",
        "history_",
        "dropout_",
    ):
        assert getattr(a, name) == getattr(b, name), name
    np.testing.assert_array_equal(a.grid_, b.grid_)
    for va, vb in zip(_outputs(a, X, y), _outputs(b, X, y), strict=True):
        np.testing.assert_array_equal(va, vb)


def test_round_trip_is_bit_identical(fitted, data, tmp_path):
    X, y, _, _ = data
    path = fitted.save_pretrained(tmp_path / "cal")
    files = sorted(p.name for p in path.iterdir())
    assert len(files) == 2 and CONFIG_NAME in files
    assert any(f.startswith("calibrator-") and f.endswith(".safetensors") for f in files)
    doc = json.loads((path / CONFIG_NAME).read_text())
    assert doc["format_version"] == FORMAT_VERSION and doc["skebrm_version"]
    assert doc["params"]["hidden"] == [16, 8]
    loaded = EnergyRewardCalibrator.from_pretrained(path)
    _assert_same_model(fitted, loaded, X, y)
    assert next(loaded.module_.parameters()).device.type == "cpu"


def test_loading_never_unpickles(fitted, data, tmp_path, monkeypatch):
    X, y, _, _ = data
    path = fitted.save_pretrained(tmp_path / "cal")

    def refuse(*args, **kwargs):
        raise AssertionError("a loader unpickled")

    for mod, name in ((pickle, "load"), (pickle, "loads"), (torch, "load"), (joblib, "load")):
        monkeypatch.setattr(mod, name, refuse)
    loaded = EnergyRewardCalibrator.from_pretrained(path)
    np.testing.assert_array_equal(
        loaded.predict(X, base_reward=y), fitted.predict(X, base_reward=y)
    )


def test_an_edited_json_is_refused(fitted, tmp_path):
    path = fitted.save_pretrained(tmp_path / "cal")
    doc = json.loads((path / CONFIG_NAME).read_text())
    doc["fitted"]["reward_scale_"] = doc["fitted"].get("reward_scale_", 1.0)
    doc["fitted"]["posterior"]["scaler"]["scale"] *= 2
    (path / CONFIG_NAME).write_text(json.dumps(doc))
    with pytest.raises(ModelIntegrityError, match="was edited after saving"):
        EnergyRewardCalibrator.from_pretrained(path)
    (path / CONFIG_NAME).write_text("{not json")
    with pytest.raises(ModelIntegrityError, match="is not valid JSON"):
        EnergyRewardCalibrator.from_pretrained(path)


def test_edited_or_missing_weights_are_refused(fitted, tmp_path):
    path = fitted.save_pretrained(tmp_path / "cal")
    weights = next(path.glob("*.safetensors"))
    blob = bytearray(weights.read_bytes())
    blob[-1] ^= 0xFF
    weights.write_bytes(bytes(blob))
    with pytest.raises(ModelIntegrityError, match="was modified after saving"):
        EnergyRewardCalibrator.from_pretrained(path)
    weights.unlink()
    with pytest.raises(ModelIntegrityError, match="is missing"):
        EnergyRewardCalibrator.from_pretrained(path)
    with pytest.raises(FileNotFoundError, match="no calibrator.json"):
        EnergyRewardCalibrator.from_pretrained(tmp_path / "nowhere")


def _rewrite(path, edit):
    """Edit calibrator.json and re-seal its checksum (a deliberate, consistent edit)."""
    from skebrm._io import sha256_bytes
    from skebrm._persistence import _canonical

    doc = json.loads((path / CONFIG_NAME).read_text())
    edit(doc)
    body = {k: v for k, v in doc.items() if k != "content_sha256"}
    doc["content_sha256"] = sha256_bytes(_canonical(body))
    (path / CONFIG_NAME).write_text(json.dumps(doc))


def test_newer_formats_foreign_files_and_odd_weight_names_are_refused(fitted, tmp_path):
    path = fitted.save_pretrained(tmp_path / "cal")
    _rewrite(path, lambda d: d.update(format_version=FORMAT_VERSION + 1))
    with pytest.raises(ModelIntegrityError, match="Upgrade skebrm"):
        EnergyRewardCalibrator.from_pretrained(path)
    path = fitted.save_pretrained(tmp_path / "cal2")
    _rewrite(path, lambda d: d.update(files={"../../etc/passwd": "0" * 64}))
    with pytest.raises(ModelIntegrityError, match="invalid file path"):
        EnergyRewardCalibrator.from_pretrained(path)
    path = fitted.save_pretrained(tmp_path / "cal3")
    _rewrite(path, lambda d: d.update(files={"model.bin": "0" * 64}))
    with pytest.raises(ModelIntegrityError, match="invalid weights file"):
        EnergyRewardCalibrator.from_pretrained(path)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / CONFIG_NAME).write_text(json.dumps({"format": "something else"}))
    with pytest.raises(ModelIntegrityError, match="is not a saved EnergyRewardCalibrator"):
        EnergyRewardCalibrator.from_pretrained(tmp_path / "other")


def _count_opens(monkeypatch, path):
    """Count the times ``path`` is opened (by ``open``, ``io.open`` or ``Path.open``)."""
    import builtins
    import io

    real = builtins.open
    seen = []

    def counting(file, *args, **kwargs):
        if str(file) == str(path):
            seen.append(file)
        return real(file, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", counting)
    monkeypatch.setattr(io, "open", counting)
    return seen


def test_each_file_is_read_once_and_the_bytes_checked_are_the_bytes_loaded(
    fitted, data, tmp_path, monkeypatch
):
    X, y, _, _ = data
    path = fitted.save_pretrained(tmp_path / "cal")
    weights = next(path.glob("*.safetensors"))
    opened = _count_opens(monkeypatch, weights)
    loaded = EnergyRewardCalibrator.from_pretrained(path)
    monkeypatch.undo()
    assert len(opened) == 1
    np.testing.assert_array_equal(loaded.predict(X), fitted.predict(X))


@pytest.mark.parametrize(
    ("edit", "what"),
    [
        # another width: load_state_dict raised RuntimeError
        (lambda d: d["fitted"]["posterior"]["module"]["config"].update(n_features=7), "fit"),
        # a constructor argument the network does not take: TypeError
        (lambda d: d["fitted"]["posterior"]["module"]["config"].update(colour="red"), "build"),
        (lambda d: d["fitted"]["posterior"].update(module={"class": "Evil"}), "unknown"),
        (lambda d: d["fitted"]["posterior"]["scaler"].pop("scale"), "make a model"),
        (lambda d: d.pop("params"), "no 'params' table"),
        # parameters the estimator refuses: TypeError, InvalidParameterError
        (lambda d: d["params"].update(colour="red"), "saved parameters do not make"),
        (lambda d: d["params"].update(max_epochs="many"), "saved parameters do not make"),
    ],
)
def test_a_consistent_forgery_that_does_not_build_is_an_integrity_error(
    fitted, tmp_path, edit, what
):
    path = fitted.save_pretrained(tmp_path / "cal")
    _rewrite(path, edit)
    with pytest.raises(ModelIntegrityError, match=what):
        EnergyRewardCalibrator.from_pretrained(path)


def test_format_1_still_loads(fitted, data, tmp_path):
    """A calibrator saved before the shared manifest (weights under "weights") loads."""
    X, y, _, _ = data
    path = fitted.save_pretrained(tmp_path / "cal")

    def to_v1(doc):
        ((name, digest),) = doc.pop("files").items()
        doc.update(format_version=1, weights={"file": name, "sha256": digest})

    _rewrite(path, to_v1)
    _assert_same_model(fitted, EnergyRewardCalibrator.from_pretrained(path), X, y)


def test_saving_again_replaces_the_model_whole(data, tmp_path, monkeypatch):
    X, y, pid, ch = data
    a = EnergyRewardCalibrator(**FAST).fit(X, y, pair_id=pid, chosen=ch)
    b = EnergyRewardCalibrator(**{**FAST, "random_state": 1}).fit(X, y, pair_id=pid, chosen=ch)
    path = a.save_pretrained(tmp_path / "cal")
    # a save that dies after writing the new weights leaves the old model loadable
    import skebrm._persistence as persistence

    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(persistence, "write_manifest", crash)
    with pytest.raises(OSError, match="disk full"):
        b.save_pretrained(path)
    monkeypatch.undo()
    np.testing.assert_array_equal(
        EnergyRewardCalibrator.from_pretrained(path).predict(X), a.predict(X)
    )
    b.save_pretrained(path)
    assert len(list(path.glob("*.safetensors"))) == 1  # the old weights are gone
    np.testing.assert_array_equal(
        EnergyRewardCalibrator.from_pretrained(path).predict(X), b.predict(X)
    )


def test_unfitted_estimators_cannot_be_saved(tmp_path):
    from sklearn.exceptions import NotFittedError

    with pytest.raises(NotFittedError):
        EnergyRewardCalibrator().save_pretrained(tmp_path / "cal")


def test_pickle_and_joblib_go_through_the_state_dict(fitted, data, tmp_path):
    X, y, _, _ = data
    state = fitted.__getstate__()
    assert set(state) == {"_sklearn_version", "params", "document", "weights"}
    assert all(isinstance(v, np.ndarray) for v in state["weights"].values())
    blob = pickle.dumps(fitted)
    assert b"EnergyNet\n" not in blob and b"skebrm.energy" not in blob  # no module class
    _assert_same_model(fitted, pickle.loads(blob), X, y)
    joblib.dump(fitted, tmp_path / "cal.joblib")
    _assert_same_model(fitted, joblib.load(tmp_path / "cal.joblib"), X, y)
    unfitted = pickle.loads(pickle.dumps(EnergyRewardCalibrator(hidden=(3,))))
    assert unfitted.hidden == (3,) and not hasattr(unfitted, "module_")


def test_a_device_that_is_not_here_falls_back_to_cpu(fitted, data, tmp_path):
    if torch.cuda.is_available():
        pytest.skip("CUDA is available: nothing to fall back from")
    X, y, _, _ = data
    path = fitted.save_pretrained(tmp_path / "cal")
    _rewrite(path, lambda d: d["params"].update(device="cuda:0"))
    with pytest.warns(UserWarning, match="using device='cpu'"):
        loaded = EnergyRewardCalibrator.from_pretrained(path)
    assert loaded.device == "cpu"
    np.testing.assert_array_equal(loaded.predict(X), fitted.predict(X))
    assert EnergyRewardCalibrator.from_pretrained(path, device="cpu").device == "cpu"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_a_model_fitted_on_cuda_loads_on_cpu_bit_identically(data, tmp_path):
    X, y, pid, ch = data
    gpu = EnergyRewardCalibrator(**FAST, device="cuda").fit(X, y, pair_id=pid, chosen=ch)
    path = gpu.save_pretrained(tmp_path / "cal")
    cpu = EnergyRewardCalibrator.from_pretrained(path, device="cpu")
    again = EnergyRewardCalibrator.from_pretrained(path, device="cpu")
    np.testing.assert_array_equal(cpu.predict(X, base_reward=y), again.predict(X, base_reward=y))
    gpu.set_params(device="cpu")
    np.testing.assert_array_equal(cpu.predict(X, base_reward=y), gpu.predict(X, base_reward=y))
