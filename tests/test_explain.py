"""`tinytriage explain PHOTO` and the pointing game, on tiny models made here."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from conftest import run_cli
from PIL import Image
from test_gradcam import CLASSES, model_file, photo_with_spot, random_cnn

from tinytriage.data.routes import DEFAULT_ROUTES
from tinytriage.errors import ConfigError, TinyTriageError
from tinytriage.explain.photo import _cnn_geometry, cell_input_window, explain_photo, model_summary
from tinytriage.explain.pointing import pointing_game
from tinytriage.inference.predict import Predictor
from tinytriage.models.cnn import CNNConfig, TriageCNN, count_macs
from tinytriage.models.file import ModelFile, save_model


@pytest.fixture
def cnn_path(tmp_path) -> Path:
    return model_file(random_cnn(11, widths=(4, 8, 8)), tmp_path / "cnn.safetensors")


@pytest.fixture
def wide_photo(tmp_path) -> Path:
    """A 120x80 photo with texture, so every channel has something to say."""
    rng = np.random.default_rng(0)
    a = (rng.random((80, 120, 3)) * 255).astype(np.uint8)
    a[10:40, 60:100] = (250, 240, 30)
    path = tmp_path / "wide.png"
    Image.fromarray(a).save(path)
    return path


# -- 1. the summary ------------------------------------------------------------------------------
def test_summary_of_a_four_stage_cnn_by_hand():
    cfg = CNNConfig(input_size=96, widths=(16, 32, 64, 128))
    s = model_summary("cnn", cfg.to_dict())
    rows = {r.name: r for r in s.rows}
    # r = r_prev + (k - 1) * jump_prev; jump doubles at every 2x2 pool
    expected = {
        "conv1": (3, 1),  # 1 + 2*1
        "relu1": (3, 1),  # BatchNorm and ReLU are 1x1
        "pool1": (4, 2),  # 3 + 1*1
        "conv2": (8, 2),  # 4 + 2*2
        "pool2": (10, 4),  # 8 + 1*2
        "conv3": (18, 4),  # 10 + 2*4
        "pool3": (22, 8),  # 18 + 1*4
        "conv4": (38, 8),  # 22 + 2*8
        "avgpool": (126, 8),  # 38 + (12 - 1)*8: the whole 96-pixel input and then some padding
    }
    for name, (r, jump) in expected.items():
        assert (rows[name].receptive_field, rows[name].jump) == (r, jump), name
    assert rows["conv1"].output_shape == (16, 96, 96) and rows["conv1"].params == 16 * 3 * 3 * 3
    assert rows["bn1"].params == 2 * 16 and rows["relu1"].params == 0
    assert rows["pool3"].output_shape == (64, 12, 12)
    assert rows["head"].output_shape == (5,) and rows["head"].params == 128 * 5 + 5
    assert s.total_params == TriageCNN(cfg).num_parameters()


def test_summary_of_the_default_cnn_ends_in_a_fifth_stage():
    s = model_summary("cnn", CNNConfig().to_dict())  # 128 input, widths 16 ... 256
    rows = {r.name: r for r in s.rows}
    assert (rows["pool4"].receptive_field, rows["pool4"].jump) == (46, 16)  # 38 + 1*8
    assert (rows["conv5"].receptive_field, rows["conv5"].jump) == (78, 16)  # 46 + 2*16
    assert rows["conv5"].output_shape == (256, 8, 8) and rows["head"].params == 256 * 5 + 5
    assert s.total_params == TriageCNN(CNNConfig()).num_parameters()


def test_summary_of_an_avgmax_head_counts_twice_the_features():
    cfg = CNNConfig(pool="avgmax")
    rows = {r.name: r for r in model_summary("cnn", cfg.to_dict()).rows}
    assert rows["avgmaxpool"].output_shape == (512, 1, 1) and rows["head"].params == 512 * 5 + 5
    assert model_summary("cnn", cfg.to_dict()).total_params == TriageCNN(cfg).num_parameters()
    assert count_macs(cfg) == count_macs(CNNConfig()) + 256 * 5  # the maxima's weights, no conv


def test_summary_of_a_deeper_stage_by_hand():
    """A second 3x3 block in a stage adds (k - 1) * jump to the receptive field and no pool."""
    cfg = CNNConfig(input_size=32, widths=(4, 8, 8), depths=(1, 2, 2))
    s = model_summary("cnn", cfg.to_dict())
    rows = {r.name: r for r in s.rows}
    assert [r.name for r in s.rows][4:12] == ["conv2", "bn2", "relu2", "conv2b", "bn2b", "relu2b", "pool2", "conv3"]
    assert (rows["conv2"].receptive_field, rows["conv2b"].receptive_field) == (8, 12)  # 4 + 2*2, then 8 + 2*2
    assert (rows["pool2"].receptive_field, rows["conv3b"].receptive_field) == (14, 30)  # 12 + 1*2; 22 + 2*4
    assert rows["conv2b"].output_shape == (8, 16, 16) and rows["conv2b"].params == 8 * 8 * 3 * 3
    assert s.total_params == TriageCNN(cfg).num_parameters()
    assert count_macs(cfg) == count_macs(CNNConfig(input_size=32, widths=(4, 8, 8))) + 8 * 8 * 9 * (16 * 16 + 8 * 8)


def test_cell_input_window_is_the_receptive_field():
    cfg = CNNConfig()
    geometry = _cnn_geometry(cfg)
    rows = model_summary("cnn", cfg.to_dict()).rows
    for i, (name, *_) in enumerate(geometry):
        (r0, r1), (c0, c1) = cell_input_window(geometry, i, 5, 6)
        assert r1 - r0 + 1 == c1 - c0 + 1 == rows[i].receptive_field, name
        assert c0 - r0 == rows[i].jump  # one cell to the right moves the window by the jump
    assert cell_input_window(geometry, 0, 0, 0) == ((-1, 1), (-1, 1))  # conv1's corner cell reads padding


def test_summary_of_a_vit_counts_its_parameters():
    from tinytriage.models.vit import ViTConfig, build_vit

    cfg = ViTConfig(img_size=32, patch_size=8, embed_dim=16, depth=2, num_heads=2)
    s = model_summary("vit", cfg.to_dict())
    assert s.total_params == build_vit(cfg).num_parameters()
    assert s.rows[0].receptive_field == 8 and s.rows[-1].receptive_field == 32


# -- 2.-3. feature maps and the cell by hand ---------------------------------------------------------
def test_default_explanation_computes_the_strongest_cell_by_hand(cnn_path, wide_photo):
    r = explain_photo(wide_photo, model=cnn_path)
    f, c = r.features, r.cell
    assert f.layer == "relu1" and f.shape == (4, 32, 32) and f.channels == [0, 1, 2, 3]
    assert f.vmin == pytest.approx(f.maps.min()) and f.vmax == pytest.approx(f.maps.max())
    assert c.conv == "conv1" and c.source == "input" and c.window.shape == (3, 3, 3)
    assert c.relu_out == pytest.approx(f.vmax, rel=1e-5)  # the strongest activation of the layer
    np.testing.assert_allclose(c.products, c.window * c.kernel)
    assert c.conv_sum == pytest.approx(c.products.sum()) and c.conv_bias == 0.0
    assert c.bn_out == pytest.approx((c.conv_sum - c.bn_mean) / np.sqrt(c.bn_var + c.bn_eps) * c.bn_gamma + c.bn_beta)
    assert c.agrees and c.max_abs_diff < 1e-5
    assert c.engine["relu"] == pytest.approx(c.relu_out, abs=1e-5)
    assert r.pool is not None and r.pool.value == pytest.approx(r.pool.window.max())


def test_hand_cell_of_a_deeper_block_equals_both_engines(cnn_path, wide_photo):
    a = explain_photo(wide_photo, model=cnn_path, layer="pool2", channel=5, at=(6, 9))
    c = a.cell
    assert (c.conv, c.source, c.channel, c.row, c.col) == ("conv2", "pool1", 5, 6, 9)
    assert c.window.shape == (4, 3, 3) and c.channel_sums.shape == (4,)
    assert c.agrees, c.max_abs_diff
    assert a.features.layer == "pool2" and a.features.maps.shape == (1, 8, 8)
    assert (a.pool.pool, a.pool.row, a.pool.col) == ("pool2", 3, 4)
    assert c.receptive_field == 8 and c.input_box[2] - c.input_box[0] == 8
    pytest.importorskip("torch")
    b = explain_photo(wide_photo, model=cnn_path, backend="torch", layer="pool2", channel=5, at=(6, 9))
    assert b.cell.agrees
    np.testing.assert_allclose(b.cell.window, c.window, rtol=1e-5, atol=1e-6)
    assert b.cell.relu_out == pytest.approx(c.relu_out, rel=1e-5, abs=1e-6)
    np.testing.assert_allclose(b.heatmap.cam, a.heatmap.cam, rtol=1e-4, atol=1e-5 * a.heatmap.cam.max())
    assert b.heatmap.where.peak == a.heatmap.where.peak


def test_last_block_has_no_max_pool(cnn_path, wide_photo, tmp_path):
    r = explain_photo(wide_photo, model=cnn_path, layer="relu3")
    assert r.cell.conv == "conv3" and r.cell.agrees
    assert r.pool is None and "last conv block: global average pooling follows" in r.pool_note
    avgmax = model_file(random_cnn(11, widths=(4, 8, 8), pool="avgmax"), tmp_path / "avgmax.safetensors")
    r = explain_photo(wide_photo, model=avgmax, layer="relu3")
    assert r.pool is None and "global average and max pooling follows" in r.pool_note


def test_hand_cell_of_a_second_block_reads_the_first(tmp_path, wide_photo):
    path = model_file(random_cnn(12, widths=(4, 8, 8), depths=(2, 1, 1)), tmp_path / "deep.safetensors")
    r = explain_photo(wide_photo, model=path, layer="relu1b", channel=1, at=(5, 7))
    c = r.cell
    assert (c.conv, c.source, c.bn, c.relu) == ("conv1b", "relu1", "bn1b", "relu1b")
    assert c.window.shape == (4, 3, 3) and c.receptive_field == 5 and c.agrees, c.max_abs_diff
    assert r.pool is not None and r.pool.pool == "pool1"  # the stage's last block is pooled
    first = explain_photo(wide_photo, model=path, layer="relu1")
    assert first.pool is None and "conv1b, the stage's next block" in first.pool_note


def test_pool_winner_of_a_chosen_cell(cnn_path, wide_photo):
    r = explain_photo(wide_photo, model=cnn_path, channel=2, at=(7, 4))
    p = r.pool
    assert (p.pool, p.row, p.col, p.origin) == ("pool1", 3, 2, (6, 4))
    relu = r.features.maps[0]  # relu1, channel 2
    np.testing.assert_allclose(p.window, relu[6:8, 4:6], rtol=1e-6)
    assert relu[p.winner] == p.value == pytest.approx(p.engine_value)
    assert p.cell_won == (p.winner == (7, 4))


def test_user_errors_say_what_to_do(cnn_path, wide_photo):
    """Each names the option (the CLI makes it a usage error, exit code 2) and what would work."""
    for kw, option, message in [
        ({"layer": "conv9"}, "--layer", "conv9.*conv1"),
        ({"at": (99, 0)}, "--at", "99,0"),
        ({"channel": 4}, "--channel", "^4: "),
        ({"class_name": "nope"}, "--class", "nope: not a class"),
    ]:
        with pytest.raises(ConfigError, match=message) as err:
            explain_photo(wide_photo, model=cnn_path, **kw)
        assert err.value.option == option


# -- 4.-6. heatmap, decision, CLI ---------------------------------------------------------------------
def test_overlay_heat_reads_on_a_bright_bluish_photo():
    """Pale-yellow heat blended straight onto a light-blue screen averages out to grey; the
    overlay puts it on a dimmed grey copy, so hot and cold halves differ plainly in colour,
    and the photo's own light and dark still show where the heat is 0."""
    from tinytriage.plots import overlay_png

    rgb = np.zeros((40, 80, 3), np.uint8)
    rgb[:] = (150, 175, 235)  # a bright, bluish phone screen
    rgb[:20, 40:] = (20, 20, 60)  # and a dark patch in the cold half
    heat = np.zeros((40, 80))
    heat[:, :40] = 1.0  # the left half is hot
    out = np.asarray(Image.open(io.BytesIO(overlay_png(Image.fromarray(rgb), heat))).convert("RGB"), float)
    hot, cold, dark = out[30, 10], out[30, 70], out[5, 70]
    assert np.linalg.norm(hot - cold) > 100, (hot, cold)  # the old straight blend gave about 67
    assert cold.mean() - dark.mean() > 60  # the photo is still visible under zero heat


def test_cli_json_and_save(wide_photo, tmp_path):
    out = tmp_path / "out"
    photo = tmp_path / "spot.png"
    photo_with_spot(120, 80, (90, 20)).save(photo)
    model = spot_finder(tmp_path / "spot.safetensors")
    r = run_cli("explain", str(photo), "-m", str(model), "--class", "screen_damage", "--json", "--save", str(out))
    assert r.returncode == 0, r.stderr

    def no_nan(s):
        raise AssertionError(f"{s} in JSON")

    d = json.loads(r.stdout, parse_constant=no_nan)
    x, y = d["gradcam_peak"]  # photo pixels: on the white spot
    assert abs(x - 90) <= 8 and abs(y - 20) <= 8 and d["photo_size"] == [120, 80]
    assert d["heatmap"]["class"] == "screen_damage" and d["heatmap"]["method"] == "grad-cam"
    assert len(d["heatmap"]["alpha"]) == 8 and np.shape(d["heatmap"]["cam"]) == (16, 16)
    assert d["cell"]["agrees"] and d["summary"]["layers"][0]["name"] == "conv1"
    assert d["decision"]["route"] and set(d["decision"]["probabilities"]) == set(CLASSES)
    assert sorted(Path(p).name for p in d["saved"]) == ["spot.gradcam.screen_damage.png", "spot.relu1.png"]
    for p in d["saved"]:
        with Image.open(p) as im:
            assert im.format == "PNG"
    assert Image.open(out / "spot.gradcam.screen_damage.png").size == (120, 80)

    cnn_path = model_file(random_cnn(11, widths=(4, 8, 8)), tmp_path / "cnn.safetensors")
    text = run_cli("explain", str(wide_photo), "-m", str(cnn_path), "--layer", "relu2", "--at", "2,3")
    assert text.returncode == 0, text.stderr
    for heading in ("1. The network", "2. Feature maps", "3. One cell by hand", "4. Grad-CAM", "5. Decision"):
        assert heading in text.stdout
    assert "conv2 channel" in text.stdout and "agree" in text.stdout

    bad = run_cli("explain", str(wide_photo), "-m", str(cnn_path), "--at", "2,x")
    assert bad.returncode == 2 and "ROW,COL" in bad.stderr


def test_half_block_pictures_on_a_colour_terminal(cnn_path, wide_photo, monkeypatch):
    from rich.console import Console

    from tinytriage.cli import render

    buf = io.StringIO()
    monkeypatch.setattr(
        render, "out", Console(file=buf, force_terminal=True, color_system="truecolor", width=100, highlight=False)
    )
    render.print_explain(explain_photo(wide_photo, model=cnn_path, channel=1), as_json=False)
    text = buf.getvalue()
    assert text.count(render.HALF_BLOCK) >= 32 * 16 + 48 * 16  # one 32x32 map, the 48-wide preview
    assert "\x1b[38;2;" in text and "ch 1" in text


def test_vit_is_explained_by_attention_rollout(tmp_path, wide_photo):
    from tinytriage.models.vit import ViTConfig, build_vit

    cfg = ViTConfig(num_classes=len(CLASSES), img_size=32, patch_size=8, embed_dim=16, depth=2, num_heads=2)
    mf = ModelFile(
        arch="vit", config=cfg.to_dict(), classes=CLASSES, routes=dict(DEFAULT_ROUTES),
        preprocess={"input_size": 32, "mean": [0.5] * 3, "std": [0.25] * 3, "resize_mode": "letterbox"},
        tensors=build_vit(cfg, np.random.default_rng(0)).state_dict(),
    )  # fmt: skip
    path = save_model(mf, tmp_path / "vit.safetensors")
    r = explain_photo(wide_photo, model=path, save_dir=tmp_path / "out")
    assert r.heatmap.method == "attention rollout" and r.heatmap.cam.shape == (4, 4)
    assert r.features is None and r.cell is None and r.heatmap.where.peak is not None
    # the class token's attention per layer and head: rows are probabilities over the patches
    assert r.attention_heads.shape == (2, 2, 4, 4)
    assert (r.attention_heads >= 0).all() and (r.attention_heads.sum(axis=(2, 3)) <= 1 + 1e-6).all()
    assert any(p.endswith(".attention_heads.png") for p in r.saved)
    assert (tmp_path / "out").is_dir() and len(list((tmp_path / "out").iterdir())) == 2
    with pytest.raises(TinyTriageError, match="CNN"):
        explain_photo(wide_photo, model=path, layer="conv1")


# -- 7. the pointing game ------------------------------------------------------------------------------
def spot_finder(path: Path) -> Path:
    """A CNN that lights up on bright pixels and scores that as screen_damage: every conv
    averages its window, BatchNorm is the identity, only screen_damage's head row is 1.
    Its Grad-CAM peak for screen_damage is the brightest spot of the photo."""
    model = TriageCNN(CNNConfig(num_classes=len(CLASSES), input_size=32, widths=(4, 8)))
    sd = model.state_dict()
    sd["features.0.weight"][:] = 1 / 27
    sd["features.4.weight"][:] = 1 / 36
    sd["head.3.weight"][:] = 0
    sd["head.3.weight"][CLASSES.index("screen_damage")] = 1
    sd["head.3.bias"][:] = 0
    model.load_state_dict(sd)
    return model_file(model, path)


def damage_folder(root: Path) -> Path:
    d = root / "screen_damage"
    d.mkdir(parents=True)
    box = {"damage_bbox": [70, 0, 110, 40]}
    photo_with_spot(120, 80, (90, 20)).save(d / "a.png")  # spot in the box: a hit
    (d / "a.json").write_text(json.dumps(box))
    photo_with_spot(120, 80, (20, 60)).save(d / "b.png")  # spot outside: a miss
    (d / "b.json").write_text(json.dumps(box))
    # stored sideways, EXIF orientation 6; the box is in upright pixels, as the spot
    exif = Image.Exif()
    exif[0x0112] = 6
    photo_with_spot(160, 80, (130, 20)).transpose(Image.Transpose.ROTATE_90).save(
        d / "c.jpg", quality=95, exif=exif.tobytes()
    )
    (d / "c.json").write_text(json.dumps({"damage_bbox": [110, 0, 150, 40]}))
    photo_with_spot(120, 80, (90, 20)).save(d / "d.png")  # no sidecar
    photo_with_spot(120, 80, (90, 20)).save(d / "e.png")
    (d / "e.json").write_text(json.dumps({"damage_bbox": None}))
    return root


def test_pointing_game_on_photos_with_known_boxes(tmp_path):
    data = damage_folder(tmp_path / "data")
    predictor = Predictor.load(spot_finder(tmp_path / "spot.safetensors"))
    pg = pointing_game(data, predictor, batch_size=2)
    by_name = {Path(p.path).name: p for p in pg.photos}
    assert sorted(by_name) == ["a.png", "b.png", "c.jpg"]
    assert by_name["a.png"].hit and not by_name["b.png"].hit and by_name["c.jpg"].hit
    assert (pg.hits, pg.total, pg.tolerance_px) == (2, 3, 0) and pg.rate == pytest.approx(2 / 3)
    assert pg.center_hits == 0  # the photo centres (60, 40) and (80, 40) are outside the boxes
    assert pg.box_fraction == pytest.approx((2 * 40 * 40 / (120 * 80) + 40 * 40 / (160 * 80)) / 3)
    assert sorted(Path(p).name for p, _ in pg.skipped) == ["d.png", "e.png"]


def test_evaluate_explain_cli(tmp_path):
    data = damage_folder(tmp_path / "data")
    (data / "parcel").mkdir()
    photo_with_spot(64, 64, (10, 10)).save(data / "parcel" / "p.png")
    model = spot_finder(tmp_path / "spot.safetensors")
    r = run_cli("evaluate", str(data), "-m", str(model), "--explain", "--json")
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert d["n"] == 6 and d["pointing_game"]["hits"] == 2 and d["pointing_game"]["total"] == 3
    text = run_cli("evaluate", str(data), "-m", str(model), "--explain")
    assert "pointing game" in text.stdout and "2/3" in text.stdout
