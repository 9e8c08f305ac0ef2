"""The bundled model's pieces: the PriorClassifier (ImageNet's grouped probabilities plus a
new head), the out-of-distribution gate (a residual outside the training features'
principal subspace), both through the model file and ``predict``, and
``training.bundled`` building such a model from generated photos."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tinytriage.data.routes import DEFAULT_ROUTES, HUMAN_REVIEW
from tinytriage.errors import ModelFileError, TrainingError
from tinytriage.models import ARCHS
from tinytriage.models.efficientnet import EfficientNet, EfficientNetConfig, count_macs, layer_table
from tinytriage.models.file import ModelFile, read_model, save_model
from tinytriage.nn import GroupLogSoftmax
from tinytriage.training.ood import REASON, ResidualGate, fit_residual_gate
from tinytriage.training.prior import group_members

REPO = Path(__file__).resolve().parent.parent
IMAGENET = REPO / "models" / "efficientnet_lite0_imagenet.safetensors"
SAMPLES = REPO / "samples"
CLASSES = list(DEFAULT_ROUTES)
PRE = {"input_size": 32, "mean": [0.5] * 3, "std": [0.25] * 3, "resize_mode": "letterbox"}
TINY = EfficientNetConfig(
    num_classes=5,
    input_size=32,
    stem_chs=8,
    head_chs=16,
    stages=("ds_r1_k3_s1_e1_c8", "ir_r1_k5_s2_e2_c16"),
    drop_rate=0.0,
    prior_classes=7,
)
MEMBERS = np.array(  # 7 pretrained classes in 5 groups; class 3 in two, class 6 in none
    [[1, 0, 0, 0, 0, 0, 0], [0, 1, 1, 0, 0, 0, 0], [0, 0, 0, 1, 1, 0, 0], [0, 0, 0, 1, 0, 1, 0], [0, 1, 1, 0, 0, 0, 0]],
    np.float32,
)


# -- the grouped log-softmax and the classifier -------------------------------------------


def test_group_log_softmax_is_the_log_of_summed_probabilities():
    x = np.random.default_rng(0).standard_normal((4, 7)) * 5
    layer = GroupLogSoftmax(7, 5, dtype=np.float64)
    layer.load_state_dict({"members": MEMBERS.astype(np.float64)})
    p = np.exp(x - x.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    np.testing.assert_allclose(np.exp(layer(x)), p @ MEMBERS.T, rtol=1e-12)
    # far-apart logits: a group of unlikely classes still gets a finite log-probability
    far = np.array([[0.0, -800, -800, -900, -900, -900, 0.0]])
    out = layer(far)
    assert np.isfinite(out).all() and out[0, 0] == pytest.approx(np.log(0.5)) and out[0, 1] < -700


def test_prior_classifier_is_a_linear_head_plus_the_grouped_prior():
    model = EfficientNet(TINY, rng=np.random.default_rng(0)).astype(np.float64)
    state = model.state_dict()
    model.load_state_dict({**state, "classifier.groups.members": MEMBERS.astype(np.float64)})
    head = model._modules["classifier"]
    f = np.random.default_rng(1).standard_normal((3, 16))
    z = f @ state["classifier.pretrained.weight"].T + state["classifier.pretrained.bias"]
    p = np.exp(z - z.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    want = f @ state["classifier.fc.weight"].T + state["classifier.fc.bias"] + np.log(p @ MEMBERS.T)
    np.testing.assert_allclose(head(f), want, rtol=1e-10)
    assert sorted(k for k in state if k.startswith("classifier.")) == [
        "classifier.fc.bias",
        "classifier.fc.weight",
        "classifier.groups.members",
        "classifier.pretrained.bias",
        "classifier.pretrained.weight",
    ]


def test_prior_classifier_counts_in_the_layer_table_and_macs():
    plain = EfficientNetConfig(**{**TINY.to_dict(), "prior_classes": 0})
    rows, plain_rows = layer_table(TINY), layer_table(plain)
    assert rows[-1].kind == "prior" and plain_rows[-1].kind == "linear"
    assert rows[-1].params - plain_rows[-1].params == 16 * 7 + 7  # the pretrained classifier
    assert count_macs(TINY) - count_macs(plain) == 16 * 7
    model = EfficientNet(TINY)
    assert sum(r.params for r in rows) == model.num_parameters()  # members are a buffer, not trained


@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
def test_network_with_a_prior_matches_its_torch_twin(train):
    pytest.importorskip("torch")
    from parity import assert_matches_torch

    model = ARCHS["efficientnet_lite0"].numpy_model(TINY.to_dict(), seed=3)
    model[0].needs_input_grad = True
    twin = ARCHS["efficientnet_lite0"].torch_model(TINY.to_dict())
    assert_matches_torch(
        model,
        twin,
        [(2, 3, 32, 32)],
        dtype=np.float64,
        rtol=1e-9,
        atol=1e-10,
        train=train,
        params={"classifier.groups.members": MEMBERS},
    )


def test_ticket_groups_from_imagenet_classes():
    names = ["n1_cellular_telephone", "n2_laptop", "n3_carton", "n4_envelope", "n5_menu", "n6_tabby", "n7_pizza"]
    full = {"intact_device": ("cellular_telephone", "laptop"), "parcel": ("carton", "envelope"), "document": ("menu",)}
    import tinytriage.training.prior as prior

    saved = dict(prior.TICKET_SYNSETS)
    try:
        prior.TICKET_SYNSETS.update(full)
        M = group_members(CLASSES, names)
    finally:
        prior.TICKET_SYNSETS.clear()
        prior.TICKET_SYNSETS.update(saved)
    rows = {c: [names[j].split("_", 1)[1] for j in np.nonzero(M[k])[0]] for k, c in enumerate(CLASSES)}
    assert rows["screen_damage"] == rows["intact_device"] == ["cellular_telephone", "laptop"]  # one group
    assert rows["other"] == ["tabby", "pizza"]  # the rest
    with pytest.raises(TrainingError, match="no ImageNet group for class"):
        group_members(["intact_device", "bicycle"], names)


def test_the_real_groups_name_imagenet_classes():
    mf = read_model(IMAGENET)
    M = group_members(CLASSES, mf.classes)
    assert M.shape == (5, 1000) and set(np.unique(M)) == {0.0, 1.0}
    phone = mf.classes.index("n02992529_cellular_telephone")
    assert M[CLASSES.index("intact_device"), phone] == M[CLASSES.index("screen_damage"), phone] == 1
    tickets = [CLASSES.index(c) for c in CLASSES if c != "other"]
    assert (M[tickets].max(0) + M[CLASSES.index("other")] == 1).all()  # every class in one group or in other


# -- the out-of-distribution gate ---------------------------------------------------------


def test_residual_gate_scores_what_the_training_subspace_leaves_out():
    rng = np.random.default_rng(0)
    basis = np.linalg.qr(rng.standard_normal((20, 3)))[0]  # training photos vary along 3 directions
    train = 5 + rng.standard_normal((400, 3)) @ basis.T * 4 + rng.standard_normal((400, 20)) * 0.1
    held_out = 5 + rng.standard_normal((100, 3)) @ basis.T * 4 + rng.standard_normal((100, 20)) * 0.1
    gate = fit_residual_gate(train, held_out, dims=3)
    assert gate.threshold == pytest.approx(gate.score(held_out).max())
    inside = 5 + np.array([[30.0, -20.0, 10.0]]) @ basis.T  # far along the training directions: still like them
    outside = 5 + 3 * np.linalg.svd(np.eye(20) - basis @ basis.T)[0][:, :1].T  # off the subspace
    assert not gate.unlike(inside)[0] and gate.unlike(outside)[0]
    np.testing.assert_allclose(gate.score(outside), 3.0, rtol=0.01)  # the fitted mean and basis are estimates


@pytest.fixture(scope="module")
def gated_file() -> ModelFile:
    """A tiny EfficientNet with a prior classifier and an ood gate fitted on random features."""
    state = EfficientNet(TINY, rng=np.random.default_rng(0)).state_dict()
    state["classifier.groups.members"] = MEMBERS
    state["classifier.fc.bias"][CLASSES.index("parcel")] += 20.0  # a ticket class, routed to a team
    rng = np.random.default_rng(1)
    gate = fit_residual_gate(rng.standard_normal((50, 16)), rng.standard_normal((10, 16)), dims=4)
    return ModelFile(
        arch="efficientnet_lite0",
        config=TINY.to_dict(),
        classes=CLASSES,
        routes=dict(DEFAULT_ROUTES),
        preprocess=PRE,
        tensors=state,
        threshold=0.0,
        ood=gate.to_ood(fitted_on="random features"),
    )


def test_ood_arrays_ride_in_the_file_as_tensors(gated_file, tmp_path):
    path = save_model(gated_file, tmp_path / "m.safetensors")
    from safetensors.numpy import load_file

    assert {"ood.mean", "ood.basis"} <= set(load_file(path))
    mf = read_model(path)
    assert not any(k.startswith("ood.") for k in mf.tensors)  # the network's tensors alone
    assert mf.ood["score"] == "residual" and mf.ood["dims"] == 4 and mf.ood["fitted_on"] == "random features"
    np.testing.assert_array_equal(mf.ood["basis"], gated_file.ood["basis"])
    gate = ResidualGate.from_ood(mf.ood)
    assert gate.threshold == pytest.approx(gated_file.ood["threshold"])
    assert ResidualGate.from_ood({}) is None


def test_a_malformed_ood_gate_is_refused(gated_file, tmp_path):
    bad = ModelFile(**{**gated_file.__dict__, "ood": {**gated_file.ood, "dims": 5}})
    with pytest.raises(ModelFileError, match="ood tensors"):
        read_model(save_model(bad, tmp_path / "dims.safetensors"))
    bad = ModelFile(**{**gated_file.__dict__, "ood": {k: v for k, v in gated_file.ood.items() if k != "threshold"}})
    with pytest.raises(ModelFileError, match="malformed ood"):
        read_model(save_model(bad, tmp_path / "threshold.safetensors"))


def test_predict_sends_photos_beyond_the_gate_to_a_person(gated_file, tmp_path):
    from tinytriage.inference.predict import Predictor

    photos = [str(p) for p in sorted(SAMPLES.rglob("*.jpg"))[:6]]
    path = save_model(gated_file, tmp_path / "m.safetensors")
    pred = Predictor.load(path)
    assert pred.ood is not None
    pred.ood.threshold = -1.0  # every photo lies beyond it
    beyond = list(pred.predict_paths(photos, workers=1))
    assert all(r.route == HUMAN_REVIEW and r.needs_review for r in beyond)
    assert {r.review_reason for r in beyond} == {REASON}
    pred.ood.threshold = np.inf  # none does: the gate changes nothing else
    within = list(pred.predict_paths(photos, workers=1))
    assert all(r.route == DEFAULT_ROUTES["parcel"] and not r.needs_review for r in within)
    for a, b in zip(beyond, within, strict=True):
        assert a.label == b.label and a.probabilities == pytest.approx(b.probabilities)
    plain = ModelFile(**{**gated_file.__dict__, "ood": {}})
    no_gate = Predictor.load(save_model(plain, tmp_path / "plain.safetensors"))
    assert no_gate.ood is None
    assert [r.route for r in no_gate.predict_paths(photos, workers=1)] == [r.route for r in within]


# -- the bundled model's recipe -----------------------------------------------------------


def test_build_prior_model_from_generated_photos(tmp_path):
    """The recipe end to end on a few generated photos at 64 px: a model file that loads,
    calibrated and gated on its held-out photos, which train can fine-tune again."""
    from tinytriage.data.synth import generate_dataset
    from tinytriage.inference.predict import Predictor
    from tinytriage.training.bundled import PriorRecipe, build_prior_model
    from tinytriage.training.finetune import train_head

    generate_dataset(tmp_path / "gen", 10, seed=5, size_range=(96, 160))
    recipe = PriorRecipe(input_size=64, steps=50, ood_dims=8)
    mf, report = build_prior_model(tmp_path / "gen", IMAGENET, recipe, log=lambda s: None)
    assert mf.config["prior_classes"] == 1000 and mf.config["input_size"] == 64 and mf.classes == sorted(CLASSES)
    assert report.n_train == 40 and report.n_val == 10 and 0 <= report.val_accuracy <= 1
    assert mf.ood["dims"] == 8 and mf.ood["basis"].shape == (1280, 8)
    assert mf.training["data"] == str(tmp_path / "gen")
    path = save_model(mf, tmp_path / "m.safetensors")
    pred = Predictor.load(path)
    results = list(pred.predict_paths([str(p) for p in sorted((tmp_path / "gen").rglob("*.jpg"))], workers=1))
    assert len(results) == 50 and all(r.label in CLASSES for r in results)
    # the held-out photos set the gate's threshold: none of them lies beyond it
    assert sum(r.review_reason == REASON for r in results) <= 40

    # train's fine-tuning starts from it as from any pretrained file: a plain Linear head
    from tinytriage.data.datasets import scan_folder, stratified_split
    from tinytriage.training.run import TrainConfig

    train_set, val_set = stratified_split(scan_folder(str(tmp_path / "gen")), 0.2, 0)
    cfg = TrainConfig(data_dir=str(tmp_path / "gen"), pretrained=str(path), augment=False, input_size=64)
    run = train_head(cfg, mf.classes, dict(DEFAULT_ROUTES), train_set, val_set, lambda e: None)
    assert run.model_file.config["prior_classes"] == 0
    assert {"classifier.weight", "classifier.bias"} <= set(run.model_file.tensors)
    assert not any(k.startswith("classifier.fc") for k in run.model_file.tensors)


def test_build_prior_model_refuses_a_pretrained_file_with_a_prior(gated_file, tmp_path):
    from tinytriage.training.bundled import build_prior_model

    path = save_model(gated_file, tmp_path / "m.safetensors")
    with pytest.raises(TrainingError, match="plain pretrained classifier"):
        build_prior_model(SAMPLES, path, log=lambda s: None)
