"""The bundled models' predictions on the samples, pinned.

``tests/data/bundled_golden.json`` holds, for each bundled model and each sample photo,
every probability ``predict`` computed (as ``float.hex``, so nothing is rounded), with
and without the second look. It was written by the code *before* the package was laid
out anew (issue 30); a refactor that changes any bit of any prediction fails here.

OpenBLAS picks its kernels by CPU (the same kind of VM shows AVX-512 on some days and
AVX2 on others), and two kernels may sum a matmul in another order. So the comparison is
exact when the kernel matches the one the file was written with, and within 1e-6
otherwise. Rewrite the file (only when a change *should* move predictions):

    python tests/test_bundled_golden.py --write
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parent.parent
GOLDEN = REPO / "tests" / "data" / "bundled_golden.json"
CASES = [("cnn", True), ("cnn", False), ("vit", True)]  # (bundled model, second look)


def _blas_kernel() -> str:
    from threadpoolctl import threadpool_info

    return ",".join(sorted(str(i.get("architecture")) for i in threadpool_info() if i.get("user_api") == "blas"))


def _predict(arch: str, second_look: bool) -> dict[str, list[float]]:
    from tinytriage.inference.predict import Predictor

    photos = sorted(str(p.relative_to(REPO)) for p in (REPO / "samples").rglob("*.jpg"))
    predictor = Predictor.load(None, arch=arch, second_look=second_look)
    out = {}
    for r in predictor.predict_paths([str(REPO / p) for p in photos], workers=1):
        rel = str(Path(r.path).relative_to(REPO))
        out[rel] = [r.label, r.route, r.second_look, *[float(v).hex() for v in r.probabilities.values()]]
    return out


def _golden() -> dict:
    return {
        "blas_kernel": _blas_kernel(),
        "predictions": {f"{arch}/second_look={sl}": _predict(arch, sl) for arch, sl in CASES},
    }


@pytest.mark.parametrize(("arch", "second_look"), CASES)
def test_bundled_predictions_unchanged(arch, second_look):
    golden = json.loads(GOLDEN.read_text())
    want = golden["predictions"][f"{arch}/second_look={second_look}"]
    got = _predict(arch, second_look)
    assert sorted(got) == sorted(want)
    exact = golden["blas_kernel"] == _blas_kernel()
    for photo, (label, route, looked, *probs) in want.items():
        g_label, g_route, g_looked, *g_probs = got[photo]
        w, g = np.array([float.fromhex(p) for p in probs]), np.array([float.fromhex(p) for p in g_probs])
        if exact:
            assert (label, route, looked, probs) == (g_label, g_route, g_looked, g_probs), photo
        else:  # another BLAS kernel: the same maths summed in another order
            np.testing.assert_allclose(g, w, atol=1e-6, err_msg=photo)


if __name__ == "__main__" and sys.argv[1:] == ["--write"]:
    GOLDEN.write_text(json.dumps(_golden(), indent=1, sort_keys=True) + "\n")
    print(f"wrote {GOLDEN}")
