"""Grad-CAM: both engines agree, the gradients are right, and the peak lands on the photo."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tinytriage.data.preprocess import LetterboxGeometry, Preprocess, load_image, preprocess_with_geometry
from tinytriage.data.routes import DEFAULT_ROUTES
from tinytriage.engines.numpy_engine import NumpyEngine
from tinytriage.explain.gradcam import grad_cam, heat_on_photo, localize, upsample_bilinear
from tinytriage.models import ARCHS
from tinytriage.models.cnn import CNNConfig, TriageCNN
from tinytriage.models.file import ModelFile, save_model

CLASSES = list(DEFAULT_ROUTES)


def random_cnn(
    seed: int = 0, widths=(4, 8), size: int = 32, dtype=np.float32, pool: str = "avg", depths=None
) -> TriageCNN:
    """A tiny CNN whose BatchNorms have non-trivial running statistics and affine weights."""
    rng = np.random.default_rng(seed)
    cfg = CNNConfig(num_classes=len(CLASSES), input_size=size, widths=widths, pool=pool, depths=depths)
    model = TriageCNN(cfg, rng=rng, dtype=dtype)
    sd = model.state_dict()
    for k, v in sd.items():
        if k.endswith("running_mean"):
            sd[k] = rng.normal(0, 0.3, v.shape).astype(v.dtype)
        elif k.endswith("running_var"):
            sd[k] = rng.uniform(0.5, 2.0, v.shape).astype(v.dtype)
        elif k.endswith(".weight") and v.ndim == 1:  # BatchNorm gamma
            sd[k] = rng.uniform(0.5, 1.5, v.shape).astype(v.dtype)
        elif k.endswith(".bias") and v.ndim == 1 and not k.startswith("head"):  # BatchNorm beta
            sd[k] = rng.normal(0, 0.2, v.shape).astype(v.dtype)
    model.load_state_dict(sd)
    return model


def model_file(model: TriageCNN, path: Path) -> Path:
    """Save ``model`` as a tinytriage model file (letterbox, mean 0.5, std 0.25)."""
    cfg = model.cfg
    mf = ModelFile(
        arch="cnn",
        config=cfg.to_dict(),
        classes=CLASSES,
        routes=dict(DEFAULT_ROUTES),
        preprocess={"input_size": cfg.input_size, "mean": [0.5] * 3, "std": [0.25] * 3, "resize_mode": "letterbox"},
        tensors=model.state_dict(),
        threshold=0.3,
    )
    return save_model(mf, path)


def photo_with_spot(w: int, h: int, spot: tuple[int, int], r: int = 6) -> Image.Image:
    """A dark photo with one white square of side 2r centred on ``spot`` (x, y)."""
    a = np.full((h, w, 3), 20, np.uint8)
    x, y = spot
    a[max(0, y - r) : y + r, max(0, x - r) : x + r] = 255
    return Image.fromarray(a)


# -- the two engines ---------------------------------------------------------------------------
@pytest.mark.parametrize("pool, depths", [("avg", None), ("avgmax", None), ("avg", (2, 1, 2))])
def test_numpy_and_torch_grad_cam_agree(pool, depths):
    pytest.importorskip("torch")
    from tinytriage.engines.torch_engine import TorchEngine

    model = random_cnn(1, widths=(4, 8, 8), pool=pool, depths=depths)
    x = np.random.default_rng(2).normal(0, 1, (3, 3, 32, 32)).astype(np.float32)
    torch_engine = TorchEngine.create(ARCHS["cnn"], model.cfg.to_dict())
    torch_engine.load_state_dict(model.state_dict())
    layers = (None, "relu2", "pool1") + (("relu1b", "relu3") if depths else ())
    if depths:  # the default layer is the last block's ReLU, the second of stage 3
        assert grad_cam(NumpyEngine(model, arch=ARCHS["cnn"]), model.cfg, x, [0], None).layer == "relu3b"
    for layer in layers:
        a = grad_cam(NumpyEngine(model, arch=ARCHS["cnn"]), model.cfg, x, [0, 3, 4], layer)
        b = grad_cam(torch_engine, model.cfg, x, [0, 3, 4], layer)
        assert a.layer == b.layer
        np.testing.assert_allclose(a.logits, b.logits, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(a.activations, b.activations, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(a.gradients, b.gradients, rtol=1e-4, atol=1e-7)
        np.testing.assert_allclose(a.alpha, b.alpha, rtol=1e-4, atol=1e-8)
        np.testing.assert_allclose(a.cam, b.cam, rtol=1e-4, atol=1e-5 * a.cam.max())


# -- the gradients, checked two independent ways --------------------------------------------------
def test_grad_cam_of_a_gap_head_is_cam():
    """Head = global average pool + linear: d y_c / d A_k[i, j] = W[c, k] / (h*w) everywhere."""
    model = random_cnn(3)
    x = np.random.default_rng(4).normal(0, 1, (2, 3, 32, 32)).astype(np.float32)
    m = grad_cam(NumpyEngine(model, arch=ARCHS["cnn"]), model.cfg, x, [1, 2])
    assert m.layer == "relu2"
    W = model.head[3].params["weight"]  # (classes, K)
    h, w = m.activations.shape[2:]
    for n, c in enumerate([1, 2]):
        np.testing.assert_allclose(m.alpha[n], W[c] / (h * w), rtol=1e-5)
        expected = np.maximum(np.einsum("k,khw->hw", W[c].astype(np.float64), m.activations[n]) / (h * w), 0)
        np.testing.assert_allclose(m.cam[n], expected, rtol=1e-5, atol=1e-9)
    # the predicted class by default
    default = grad_cam(NumpyEngine(model, arch=ARCHS["cnn"]), model.cfg, x)
    assert default.class_index.tolist() == model.eval()(x).argmax(1).tolist()


def test_grad_cam_of_an_avgmax_head_adds_the_maxima_weight_at_the_winning_cell():
    """Head = [mean | max] + linear: d y_c / d A_k = W[c, k] / (h*w) everywhere, plus W[c, K + k] at the max."""
    model = random_cnn(3, pool="avgmax")
    x = np.random.default_rng(4).normal(0, 1, (2, 3, 32, 32)).astype(np.float32)
    m = grad_cam(NumpyEngine(model, arch=ARCHS["cnn"]), model.cfg, x, [1, 2])
    W = model.head[3].params["weight"]  # (classes, 2K)
    K, (h, w) = m.activations.shape[1], m.activations.shape[2:]
    for n, c in enumerate([1, 2]):
        expected = np.broadcast_to(W[c, :K, None, None] / (h * w), (K, h, w)).copy()
        for k in range(K):
            i, j = np.unravel_index(np.argmax(m.activations[n, k]), (h, w))
            expected[k, i, j] += W[c, K + k]
        np.testing.assert_allclose(m.gradients[n], expected, rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(m.alpha[n], (W[c, :K] + W[c, K:]) / (h * w), rtol=1e-5, atol=1e-8)


@pytest.mark.parametrize("pool", ["avg", "avgmax"])
def test_grad_cam_gradient_matches_finite_differences(pool):
    """At relu1 the path back is pool, conv, BatchNorm, ReLU, global pool(s), linear."""
    model = random_cnn(5, dtype=np.float64, pool=pool).astype(np.float64)
    x = np.random.default_rng(6).normal(0, 1, (1, 3, 32, 32))
    c = 3
    m = grad_cam(NumpyEngine(model, arch=ARCHS["cnn"]), model.cfg, x, c, "relu1")
    layers = list(model.features)

    def y_c(A):  # the class score as a function of the relu1 maps
        a = A
        for layer in layers[3:]:
            a = layer(a)
        return model.head(a)[0, c]

    # cells away from kinks: A = 0 cells tie in their max-pool window (a nudge up makes them win)
    smooth = np.argwhere(m.activations[0] > 1e-3)
    picks = np.random.default_rng(7).choice(len(smooth), 12, replace=False)
    eps = 1e-6
    assert np.count_nonzero(m.gradients[0][tuple(smooth[picks].T)]) >= 4  # not only max-pool losers
    for k, i, j in smooth[picks]:
        A = m.activations.copy()
        A[0, k, i, j] += eps
        up = y_c(A)
        A[0, k, i, j] -= 2 * eps
        numeric = (up - y_c(A)) / (2 * eps)
        assert m.gradients[0, k, i, j] == pytest.approx(numeric, rel=1e-5, abs=1e-9)
    # alpha is the spatial mean of those gradients
    np.testing.assert_allclose(m.alpha[0], m.gradients[0].mean(axis=(1, 2)))


# -- upsampling and the way back to the photo -----------------------------------------------------
def test_upsample_bilinear_matches_torch():
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    m = np.random.default_rng(8).random((2, 5, 7))
    for size in ((32, 32), (10, 14), (13, 9), (5, 7)):
        ours = upsample_bilinear(m, size)
        theirs = F.interpolate(torch.from_numpy(m)[None], size=size, mode="bilinear", align_corners=False)[0]
        np.testing.assert_allclose(ours, theirs.numpy(), atol=1e-12)


def test_peak_of_a_letterboxed_wide_photo():
    """200x100 photo in a 32 input: scale 0.16, 16 rows of photo between 8 rows of padding."""
    geom = LetterboxGeometry(scale=0.16, pad_x=0.0, pad_y=8.0, orig_w=200, orig_h=100)
    cam = np.zeros((32, 32))  # at the input's resolution, upsampling is the identity
    cam[2, 5] = 9.0  # hottest, but in the padding: not the photo
    cam[10, 20] = 5.0
    loc = localize(cam, geom, 32)
    assert loc.content_box == (0, 8, 32, 24)
    assert loc.peak_input == (20, 10)
    # pixel centre (20.5, 10.5) -> ((20.5 - 0) / 0.16, (10.5 - 8) / 0.16) = (128.1, 15.6)
    assert loc.peak == (128, 15)
    assert loc.heat.max() == 1.0
    assert heat_on_photo(loc.heat, geom, (50, 25)).shape == (25, 50)
    # an empty map has no peak
    assert localize(np.zeros((4, 4)), geom, 32).peak is None


def _peak_of_bright_spot(path: Path, size: int = 48) -> tuple[tuple[int, int], float]:
    """Where the brightest part of the model input maps back to, and the pixels per input pixel."""
    cfg = Preprocess(input_size=size, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    x, geom = preprocess_with_geometry(path, cfg)
    brightness = x[0].mean(axis=0)  # (S, S)
    return localize(brightness - brightness.min(), geom, size).peak, 1 / geom.scale


@pytest.mark.parametrize("size", [(240, 120), (90, 210)])
def test_peak_maps_back_to_the_spot_in_a_non_square_photo(tmp_path, size):
    spot = (size[0] * 3 // 4, size[1] // 4)
    path = tmp_path / "p.png"
    photo_with_spot(*size, spot).save(path)
    peak, px = _peak_of_bright_spot(path)
    assert abs(peak[0] - spot[0]) <= px and abs(peak[1] - spot[1]) <= px, (peak, spot)


@pytest.mark.parametrize("orientation", [3, 6, 8])
def test_peak_maps_back_to_the_upright_photo_of_an_exif_rotated_jpeg(tmp_path, orientation):
    """Stored sideways with an EXIF orientation: the peak is in upright (displayed) pixels."""
    upright = photo_with_spot(240, 120, (180, 30))
    stored = upright.transpose(
        {3: Image.Transpose.ROTATE_180, 6: Image.Transpose.ROTATE_90, 8: Image.Transpose.ROTATE_270}[orientation]
    )
    exif = Image.Exif()
    exif[0x0112] = orientation
    path = tmp_path / "r.jpg"
    stored.save(path, quality=95, exif=exif.tobytes())
    assert load_image(path).size == (240, 120)
    peak, px = _peak_of_bright_spot(path)
    assert abs(peak[0] - 180) <= px and abs(peak[1] - 30) <= px, peak
