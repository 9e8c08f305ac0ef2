"""A whole small CNN trained for 20 SGD steps in both engines: same losses, same weights."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
tnn = torch.nn

from parity import assert_close  # noqa: E402

import tinytriage.nn as nn  # noqa: E402


def small_cnn(lib, batchnorm: bool):
    """(N, 3, 8, 8) -> (N, 3): Conv-ReLU-MaxPool twice, Flatten, Linear; in either library."""
    norm = (lambda c: [lib.BatchNorm2d(c)]) if batchnorm else (lambda c: [])
    return lib.Sequential(
        lib.Conv2d(3, 4, 3, padding=1), *norm(4), lib.ReLU(), lib.MaxPool2d(2),  # (N, 4, 4, 4)
        lib.Conv2d(4, 8, 3, padding=1), *norm(8), lib.ReLU(), lib.MaxPool2d(2),  # (N, 8, 2, 2)
        lib.Flatten(), lib.Linear(8 * 2 * 2, 3),
    )  # fmt: skip


@pytest.mark.parametrize("batchnorm", [False, True], ids=["plain", "batchnorm"])
@pytest.mark.parametrize("dtype, rtol, atol", [(np.float64, 1e-9, 1e-11), (np.float32, 1e-4, 1e-5)], ids=["f64", "f32"])
def test_small_cnn_trains_like_torch(batchnorm, dtype, rtol, atol):
    ours = small_cnn(nn, batchnorm).astype(dtype)
    ours[0].needs_input_grad = False  # nobody needs d loss / d image
    theirs = small_cnn(tnn, batchnorm).to({np.float64: torch.float64, np.float32: torch.float32}[dtype])
    theirs.load_state_dict({k: torch.from_numpy(v) for k, v in ours.state_dict().items()})

    rng = np.random.default_rng(0)
    batches = [(rng.standard_normal((8, 3, 8, 8)).astype(dtype), rng.integers(0, 3, 8)) for _ in range(4)]
    loss_fn = nn.CrossEntropyLoss()
    opt = nn.SGD(ours.params, lr=0.05, momentum=0.9)
    topt = torch.optim.SGD(theirs.parameters(), lr=0.05, momentum=0.9)

    losses = []
    for step in range(20):
        x, y = batches[step % len(batches)]
        logits = ours(x)
        loss, dlogits = loss_fn(logits, y)
        ours.backward(dlogits)
        opt.step(ours.grads)

        topt.zero_grad()
        tloss = tnn.functional.cross_entropy(theirs(torch.from_numpy(x)), torch.from_numpy(y))
        tloss.backward()
        topt.step()
        assert_close(f"loss at step {step}", loss, tloss, rtol=rtol, atol=atol)
        losses.append(float(loss))

    assert np.mean(losses[-4:]) < np.mean(losses[:4])  # it learned something (the batches repeat)
    tstate = theirs.state_dict()
    for name, value in ours.state_dict().items():  # weights and running statistics
        assert_close(f"final {name}", value, tstate[name], rtol=10 * rtol, atol=10 * atol)
    ours.eval(), theirs.eval()
    x = batches[0][0]
    assert_close("eval logits", ours(x), theirs(torch.from_numpy(x)), rtol=10 * rtol, atol=10 * atol)
