"""EfficientNet-Lite0 behind every command: both engines, ``compare``, ``evaluate`` (and its
pointing game), ``explain`` (summary, maps, a depthwise and a pointwise cell by hand,
Grad-CAM on act2), model-file checks, ``train`` (resume, ``--init``) and torchrun's swap.

A tiny config keeps it fast; one test runs the real ImageNet file."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from conftest import run_cli
from test_train import make_toy_dataset

from tinytriage.errors import ModelFileError, TrainingError
from tinytriage.models import ARCHS
from tinytriage.models.efficientnet import EfficientNet, EfficientNetConfig
from tinytriage.models.file import ModelFile, read_model, save_model

torch = pytest.importorskip("torch")

REPO = Path(__file__).resolve().parent.parent
SAMPLES = REPO / "samples"  # 10 generated photos per class, damage boxes beside the screen_damage ones
IMAGENET = REPO / "models" / "efficientnet_lite0_imagenet.safetensors"
PHOTO = SAMPLES / "parcel" / "parcel_00000.jpg"
TINY = EfficientNetConfig(
    num_classes=5, input_size=32, stem_chs=8, head_chs=16, stages=("ds_r1_k3_s1_e1_c8", "ir_r1_k5_s2_e2_c16")
)


@pytest.fixture(scope="module")
def eff_file() -> ModelFile:
    """A tiny EfficientNet with random weights and random BatchNorm statistics (so eval-mode
    BatchNorm is no identity), the default classes, letterboxed 32-px photos."""
    from tinytriage.data.routes import DEFAULT_ROUTES

    tensors = EfficientNet(TINY, rng=np.random.default_rng(0)).state_dict()
    rng = np.random.default_rng(1)
    for k, v in tensors.items():
        if k.endswith(("running_mean", "bias")) and v.ndim == 1:
            tensors[k] = rng.normal(0, 0.2, v.shape).astype(v.dtype)
        elif k.endswith(("running_var", "weight")) and v.ndim == 1:  # BatchNorm's variance and gamma
            tensors[k] = rng.uniform(0.5, 2.0, v.shape).astype(v.dtype)
    return ModelFile(
        arch="efficientnet_lite0",
        config=TINY.to_dict(),
        classes=list(DEFAULT_ROUTES),
        routes=dict(DEFAULT_ROUTES),
        preprocess={"input_size": 32, "mean": [0.5] * 3, "std": [0.25] * 3, "resize_mode": "letterbox"},
        tensors=tensors,
        threshold=0.3,
    )


@pytest.fixture(scope="module")
def eff_path(eff_file, tmp_path_factory) -> Path:
    return save_model(eff_file, tmp_path_factory.mktemp("eff") / "eff.safetensors")


def _predictor(path, backend="numpy"):
    from tinytriage.inference.predict import Predictor

    return Predictor.load(path, backend=backend)


def _photos(n=8) -> np.ndarray:
    from tinytriage.data.preprocess import Preprocess, preprocess

    cfg = Preprocess.from_dict({"input_size": 32, "mean": [0.5] * 3, "std": [0.25] * 3, "resize_mode": "letterbox"})
    paths = sorted(SAMPLES.rglob("*.jpg"))[::6][:n]
    return np.concatenate([preprocess(p, cfg) for p in paths])


# -- 1. predict in both engines ---------------------------------------------------------------
def test_both_engines_load_an_efficientnet_file_and_agree(eff_path):
    x = _photos()
    a, b = (_predictor(eff_path, backend).engine.logits(x) for backend in ("numpy", "torch"))
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5 * np.abs(b).max())
    outs = [
        run_cli("predict", str(PHOTO), "--model", str(eff_path), "--backend", b, "--json") for b in ("numpy", "torch")
    ]
    assert all(p.returncode == 0 for p in outs), [p.stderr for p in outs]
    (n, t) = (json.loads(p.stdout) for p in outs)
    assert n["label"] == t["label"] and (n["backend"], t["backend"]) == ("numpy", "torch")
    np.testing.assert_allclose(list(n["probabilities"].values()), list(t["probabilities"].values()), atol=1e-5)


# -- 2. compare -------------------------------------------------------------------------------
def test_compare_runs_an_efficientnet_through_both_engines(eff_path):
    from tinytriage.explain.compare import compare

    res = compare(["numpy", "torch"], str(eff_path), str(SAMPLES), batch=8, steps=3, repeats=1, cold_start=False)
    assert res.ok, res.flags  # dropout off (drop_rate), and the structurally zero BatchNorm-bias gradients pass
    assert set(res.backward["grads"]) == set(EfficientNet(TINY).params)  # every parameter, by name
    assert res.backward["loss_rel"] < 1e-5 and res.forward["labels_agree"] == 8
    assert res.accuracy is not None and set(res.accuracy) == {"numpy", "torch"}


# -- 3. evaluate and its pointing game --------------------------------------------------------
def test_evaluate_and_its_pointing_game_take_an_efficientnet(eff_path):
    p = run_cli("evaluate", str(SAMPLES), "--model", str(eff_path), "--explain", "--json")
    assert p.returncode == 0, p.stderr
    result = json.loads(p.stdout)
    assert result["n"] == 50 and len(result["confusion"]) == 5
    pointing = result["pointing_game"]  # Grad-CAM on act2 for screen_damage, peak against the damage box
    assert pointing["method"] == "grad-cam" and pointing["total"] == 10 and not pointing["skipped"]


def test_evaluate_an_imagenet_model_on_ticket_folders_refuses_in_one_line():
    p = run_cli("evaluate", str(SAMPLES), "--model", str(IMAGENET), "--explain")
    assert p.returncode == 1 and "Traceback" not in p.stderr
    assert "not classes of this model" in p.stderr and "(1000 in all)" in p.stderr and len(p.stderr) < 800


def test_the_pointing_game_refuses_a_model_without_screen_damage(tmp_path):
    from tinytriage.explain.pointing import pointing_game

    folder = tmp_path / "n03223299_doormat"
    folder.mkdir()
    (folder / "a.jpg").write_bytes(PHOTO.read_bytes())
    with pytest.raises(Exception, match=r"no screen_damage class \(n01440764_tench, .*\(1000 in all\)\)"):
        pointing_game(tmp_path, _predictor(IMAGENET))


# -- 4. explain -------------------------------------------------------------------------------
def test_the_summary_has_a_row_per_block_and_receptive_fields_through_them():
    from tinytriage.explain.photo import model_summary

    s = model_summary("efficientnet_lite0", EfficientNetConfig().to_dict())
    rows = {r.name: r for r in s.rows}
    assert s.total_params == EfficientNet(EfficientNetConfig()).num_parameters() == 4_652_008
    assert [r.name for r in s.rows[:5]] == ["conv_stem", "bn1", "act1", "blocks.0.0", "blocks.1.0"]
    assert rows["conv_stem"].output_shape == (32, 112, 112) and rows["act2"].output_shape == (1280, 7, 7)
    assert rows["blocks.2.0"].output_shape == (40, 28, 28) and rows["blocks.2.0"].tensors == "blocks.2.0"
    # r grows by (k - 1) * jump of each block's depthwise conv; a stride multiplies the jump
    assert (rows["conv_stem"].receptive_field, rows["conv_stem"].jump) == (3, 2)
    assert (rows["blocks.0.0"].receptive_field, rows["blocks.0.0"].jump) == (3 + 2 * 2, 2)  # 3x3, stride 1
    assert (rows["blocks.1.0"].receptive_field, rows["blocks.1.0"].jump) == (7 + 2 * 2, 4)  # 3x3, stride 2
    assert (rows["blocks.1.1"].receptive_field, rows["blocks.1.1"].jump) == (11 + 2 * 4, 4)  # 3x3, stride 1
    assert (rows["blocks.2.0"].receptive_field, rows["blocks.2.0"].jump) == (19 + 4 * 4, 8)  # 5x5, stride 2
    assert rows["act2"].jump == 32 and rows["classifier"].params == 1280 * 1000 + 1000
    # params of one inverted residual: expand 1x1 + BN, depthwise 3x3 + BN, project 1x1 + BN
    assert rows["blocks.1.0"].params == 16 * 96 + 2 * 96 + 96 * 9 + 2 * 96 + 96 * 24 + 2 * 24


def test_the_tensors_named_in_the_summary_are_the_model_files():
    from tinytriage.explain.photo import model_summary

    keys = set(EfficientNet(TINY).state_dict())
    for row in model_summary("efficientnet_lite0", TINY.to_dict()).rows:
        if row.params:
            assert any(k.startswith(row.tensors + ".") for k in keys), row.name


def test_cell_windows_follow_the_asymmetric_same_padding():
    """A stride-2 "same" convolution on an even size pads 0 before and 1 after (3x3) or 1 and 2 (5x5)."""
    from tinytriage.explain.photo import cell_input_window, layer_geometry

    geometry = layer_geometry(ARCHS["efficientnet_lite0"], EfficientNetConfig())
    names = [g[0] for g in geometry]
    assert geometry[0][2:] == (3, 2, 0)  # conv_stem: 224 is even, stride 2: nothing before
    assert geometry[names.index("blocks.2.0")][2:] == (5, 2, 1)
    assert cell_input_window(geometry, 0, 0, 0) == ((0, 2), (0, 2))
    assert cell_input_window(geometry, names.index("blocks.0.0"), 0, 0) == ((-2, 4), (-2, 4))


@pytest.mark.parametrize("backend", ["numpy", "torch"])
def test_explain_computes_a_depthwise_and_a_pointwise_cell_by_hand(eff_path, backend):
    from tinytriage.explain.photo import explain_photo

    r = explain_photo(PHOTO, model=eff_path, backend=backend)
    assert r.cell is None and r.pool is None and r.features.layer == "act1"  # its default layer
    d, p = r.depthwise, r.pointwise
    assert d.block == "blocks.0.0" and d.source == "act1" and d.window.shape == d.kernel.shape == (3, 3)
    assert d.agrees and d.max_abs_diff < 1e-5 and p.agrees and p.max_abs_diff < 1e-5
    assert d.conv_sum == pytest.approx(float((d.window * d.kernel).sum()))  # ONE channel's window times its kernel
    assert d.act_out == min(max(d.bn_out, 0.0), 6.0)  # ReLU6
    # the pointwise cell reads the depthwise cell: its input there is the ReLU6 just computed
    assert p.inputs[d.channel] == pytest.approx(d.act_out, abs=1e-5) and (p.row, p.col) == (d.row, d.col)
    assert p.conv_sum == pytest.approx(float(p.inputs @ p.weights))
    assert (p.residual is not None) == (d.block_kind == "ds")  # 8 -> 8 channels, stride 1: a residual
    assert r.heatmap.layer == "act2" and r.heatmap.cam.shape == (8, 8) and r.heatmap.alpha.shape == (16,)


def test_explain_an_inverted_residual_with_stride_two_at_a_chosen_cell(eff_path):
    from tinytriage.explain.photo import explain_photo

    r = explain_photo(PHOTO, model=eff_path, layer="blocks.1.0", channel=5, at=(7, 7))
    d, p = r.depthwise, r.pointwise
    assert (d.block, d.block_kind, d.channel, d.row, d.col, d.stride) == ("blocks.1.0", "ir", 5, 7, 7, 2)
    assert d.source == "blocks.1.0.act1" and d.conv == "blocks.1.0.conv_dw" and d.window.shape == (5, 5)
    assert d.pads == ((1, 2), (1, 2))  # 16 -> 8 with a 5x5 kernel: the odd padding row goes after
    assert np.all(d.window[-2:] == 0) and np.all(d.window[:, -2:] == 0)  # the last cell reads the padding after
    assert d.agrees and p.agrees and p.conv == "blocks.1.0.conv_pwl" and p.residual is None
    assert len(p.inputs) == 16 and r.features.channels == [5]


def test_explain_cli_shows_the_hand_computation_and_json_holds_it(eff_path):
    p = run_cli("explain", str(PHOTO), "--model", str(eff_path), "--layer", "blocks.1.0")
    assert p.returncode == 0, p.stderr
    for text in ("blocks.1.0 (inverted residual)", "depthwise 5x5, stride 2", "ReLU6 = min(max(", "pointwise 1x1",
                 "<- the depthwise cell above", "Grad-CAM", "on act2", "5. Decision"):  # fmt: skip
        assert text in p.stdout, text
    assert p.stdout.count(": agree") == 2 and "DISAGREE" not in p.stdout
    j = json.loads(run_cli("explain", str(PHOTO), "--model", str(eff_path), "--json").stdout)
    assert j["cell"] is None and j["depthwise"]["agrees"] and j["pointwise"]["agrees"]
    assert len(j["depthwise"]["window"]) == 3 and j["heatmap"]["layer"] == "act2"
    assert [r["name"] for r in j["summary"]["layers"]][3] == "blocks.0.0"


def test_explain_refuses_unknown_layers_and_channels_clearly(eff_path):
    p = run_cli("explain", str(PHOTO), "--model", str(eff_path), "--layer", "relu1")
    assert p.returncode == 2 and "no such layer" in p.stderr and "blocks.1.0" in p.stderr  # a usage error
    p = run_cli("explain", str(PHOTO), "--model", str(eff_path), "--layer", "blocks.1.0", "--channel", "40")
    assert p.returncode == 2 and "channels 0..15" in p.stderr and "Traceback" not in p.stderr


def test_explain_the_real_imagenet_model():
    """The converted ImageNet file: both cells agree at 224 px, Grad-CAM on the 7x7 act2
    map, the decision names ImageNet classes and lists the top ten of its 1000."""
    from tinytriage.explain.photo import explain_photo

    r = explain_photo(PHOTO, model=IMAGENET, layer="blocks.5.0")
    assert r.depthwise.agrees and r.pointwise.agrees and r.depthwise.window.shape == (5, 5)
    assert r.heatmap.cam.shape == (7, 7) and r.heatmap.class_name == r.decision.label
    assert r.decision.label.startswith("n0") and r.summary.total_params == 4_652_008
    p = run_cli("explain", str(PHOTO), "--model", str(IMAGENET))
    assert p.returncode == 0 and "... and 990 more classes" in p.stdout and p.stdout.count(": agree") == 2


# -- 5. model-file checks ---------------------------------------------------------------------
def _broken(eff_file, tmp_path, **tensors_changed) -> Path:
    import json as _json

    from safetensors.numpy import save

    from tinytriage.models.file import METADATA_KEY

    tensors = {k: v for k, v in {**eff_file.tensors, **tensors_changed}.items() if v is not None}
    path = tmp_path / "broken.safetensors"
    path.write_bytes(save(tensors, metadata={METADATA_KEY: _json.dumps(eff_file.metadata())}))
    return path


@pytest.mark.parametrize(
    "change, message",
    [
        ({"blocks.1.0.conv_dw.weight": None}, "missing tensor blocks.1.0.conv_dw.weight"),
        ({"blocks.1.0.conv_pwl.weight": np.zeros((16, 32, 1, 1), np.float32)},
         r"blocks.1.0.conv_pwl.weight has shape \(16, 32, 1, 1\), expected \(16, 16, 1, 1\)"),
        ({"blocks.0.0.conv_pwl.weight": np.zeros((8, 8, 1, 1), np.float32)},
         "unexpected tensor blocks.0.0.conv_pwl.weight"),  # the first stage has no projection
        ({"blocks.0.0.bn1.running_var": np.full(8, np.nan, np.float32)},
         "blocks.0.0.bn1.running_var contains NaN or Inf"),
    ],
)  # fmt: skip
def test_a_file_that_does_not_fit_efficientnet_is_refused_by_name(eff_file, tmp_path, change, message):
    with pytest.raises(ModelFileError, match=message):
        read_model(_broken(eff_file, tmp_path, **change))


def test_an_efficientnet_config_that_does_not_fit_its_tensors_is_refused(eff_file, tmp_path):
    other = replace(eff_file, config={**eff_file.config, "stages": ["ds_r1_k3_s1_e1_c8", "ir_r2_k5_s2_e2_c16"]})
    with pytest.raises(ModelFileError, match="missing tensor blocks.1.1"):
        read_model(save_model(other, tmp_path / "two.safetensors"))
    bad = replace(eff_file, config={**eff_file.config, "stages": ["xx_r1"]})
    with pytest.raises(ModelFileError, match="cannot build architecture 'efficientnet_lite0'.*kind_rR_kK"):
        read_model(save_model(bad, tmp_path / "bad.safetensors"))


# -- 6. train, resume, --init, torchrun -------------------------------------------------------
@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    return make_toy_dataset(tmp_path_factory.mktemp("toy_eff"), per_class=8)


def test_train_an_efficientnet_end_to_end_and_resume(toy, tmp_path):
    from tinytriage.training.loop import TrainConfig, train

    common = [
        "--arch",
        "efficientnet_lite0",
        "--from-scratch",
        "--input-size",
        "32",
        "--batch-size",
        "8",
        "-q",
        "--json",
    ]
    p = run_cli("train", str(toy), "-o", str(tmp_path / "run"), "--epochs", "2", *common)
    assert p.returncode == 0, p.stderr
    mf = read_model(tmp_path / "run" / "model.safetensors")
    assert mf.arch == "efficientnet_lite0" and mf.config["input_size"] == 32 and len(mf.classes) == 3
    assert (mf.training["args"]["optimizer"], mf.training["args"]["lr"]) == ("adamw", 1e-3)  # its ARCHS defaults
    p = run_cli("train", str(toy), "-o", str(tmp_path / "run"), "--epochs", "3", "--resume", *common)
    assert p.returncode == 0, p.stderr
    history = json.loads((tmp_path / "run" / "metrics.json").read_text())["history"]
    assert [h["epoch"] for h in history] == [1, 2, 3]
    # the torch engine trains the same architecture, and its file runs in NumPy
    by_torch = train(TrainConfig(data_dir=str(toy), out=str(tmp_path / "t"), arch="efficientnet_lite0", pretrained=None,
                                 backend="torch", epochs=1, batch_size=8, input_size=32))  # fmt: skip
    assert _predictor(by_torch.model_path).model_file.arch == "efficientnet_lite0"


def test_damage_maps_train_on_the_efficientnet_features(tmp_path):
    from tinytriage.training.loop import TrainConfig, train

    r = train(TrainConfig(data_dir=str(SAMPLES), out=str(tmp_path / "d"), arch="efficientnet_lite0", pretrained=None, epochs=1,
                          batch_size=16, input_size=32, damage_weight=1.0))  # fmt: skip
    assert r.model_path.is_file() and "damage_head" not in " ".join(read_model(r.model_path).tensors)


def test_init_from_the_imagenet_model_with_other_classes_says_so(toy, tmp_path):
    from tinytriage.training.loop import TrainConfig, train

    with pytest.raises(TrainingError, match=r"the model's 1000 classes \(n01440764_tench.*are not this dataset's 3"):
        train(TrainConfig(data_dir=str(toy), out=str(tmp_path / "i"), arch="efficientnet_lite0", init=str(IMAGENET)))
    p = run_cli("train", str(toy), "-o", str(tmp_path / "j"), "--arch", "efficientnet_lite0", "--init", str(IMAGENET))
    assert p.returncode == 1 and "new head" in p.stderr and "Traceback" not in p.stderr and len(p.stderr) < 800


def test_torchrun_swaps_every_batchnorm_and_dropout_inside_the_mobile_blocks():
    from torch import nn

    from tinytriage.engines.torch_engine import AllReduceBatchNorm2d, ShardedDropout, _swap_for_data_parallel

    model = ARCHS["efficientnet_lite0"].torch_model(TINY.to_dict())
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-1, 1)
                m.running_var.uniform_(0.5, 2)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    n_bn = sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    x = torch.randn(2, 3, 32, 32)
    y = model.eval()(x)
    _swap_for_data_parallel(model)
    bns = [n for n, m in model.named_modules() if isinstance(m, nn.BatchNorm2d)]
    assert len(bns) == n_bn == 7 and "blocks.1.0.bn3" in bns  # in the blocks too, none missed
    assert all(isinstance(m, AllReduceBatchNorm2d) for m in model.modules() if isinstance(m, nn.BatchNorm2d))
    assert isinstance(model.dropout, ShardedDropout) and isinstance(model.features[3].bn1, AllReduceBatchNorm2d)
    after = model.state_dict()
    assert after.keys() == before.keys() and all(torch.equal(after[k], before[k]) for k in before)
    torch.testing.assert_close(model.eval()(x), y)  # eval mode: the same network
