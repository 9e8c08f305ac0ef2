"""SGD, Adam and AdamW against torch.optim: 20 steps on the same parameters and gradients."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from parity import assert_close  # noqa: E402

from tinytriage.nn import SGD, Adam, AdamW  # noqa: E402

SHAPES = {"0.weight": (4, 3, 3, 3), "0.bias": (4,), "3.weight": (5, 7)}
TORCH_DTYPE = {np.float32: torch.float32, np.float64: torch.float64}


def twins(np_cls, torch_cls, **kwargs):
    """The same optimizer settings in both engines, as two factories of their params."""
    return (lambda params: np_cls(params, **kwargs)), (lambda params: torch_cls(params, **kwargs))


# fmt: off
OPTIMIZERS = [
    pytest.param(twins(SGD, torch.optim.SGD, lr=0.1),                                                   id="sgd"),
    pytest.param(twins(SGD, torch.optim.SGD, lr=0.1, momentum=0.9),                                     id="sgd-momentum"),
    pytest.param(twins(SGD, torch.optim.SGD, lr=0.1, momentum=0.9, dampening=0.3),                      id="sgd-dampening"),
    pytest.param(twins(SGD, torch.optim.SGD, lr=0.1, momentum=0.9, nesterov=True),                      id="sgd-nesterov"),
    pytest.param(twins(SGD, torch.optim.SGD, lr=0.1, weight_decay=0.05),                                id="sgd-weight-decay"),
    pytest.param(twins(SGD, torch.optim.SGD, lr=0.05, momentum=0.5, weight_decay=0.1, nesterov=True),   id="sgd-all"),
    pytest.param(twins(Adam, torch.optim.Adam),                                                         id="adam"),
    pytest.param(twins(Adam, torch.optim.Adam, lr=1e-2, betas=(0.8, 0.99), eps=1e-6),                   id="adam-betas-eps"),
    pytest.param(twins(Adam, torch.optim.Adam, lr=1e-2, betas=(0.3, 0.9)),                              id="adam-small-beta1"),
    pytest.param(twins(Adam, torch.optim.Adam, lr=1e-2, weight_decay=0.1),                              id="adam-l2"),
    pytest.param(twins(AdamW, torch.optim.AdamW, lr=1e-2),                                              id="adamw"),
    pytest.param(twins(AdamW, torch.optim.AdamW, lr=1e-2, weight_decay=0.5, betas=(0.5, 0.9)),          id="adamw-strong-decay"),
]
# fmt: on


def _start(dtype, seed=0):
    rng = np.random.default_rng(seed)
    ours = {name: rng.standard_normal(shape).astype(dtype) for name, shape in SHAPES.items()}
    theirs = {name: torch.tensor(p.copy(), requires_grad=True) for name, p in ours.items()}
    return ours, theirs


def _gradients(dtype, steps, seed=1):
    rng = np.random.default_rng(seed)
    return [{name: rng.standard_normal(shape).astype(dtype) for name, shape in SHAPES.items()} for _ in range(steps)]


@pytest.mark.parametrize(
    "dtype, rtol, atol", [(np.float64, 1e-10, 1e-12), (np.float32, 1e-5, 1e-6)], ids=["f64", "f32"]
)
@pytest.mark.parametrize("optimizers", OPTIMIZERS)
def test_optimizer_tracks_torch(optimizers, dtype, rtol, atol):
    make_ours, make_theirs = optimizers
    ours, theirs = _start(dtype)
    arrays = dict(ours)  # the optimizer must update these very arrays
    opt, topt = make_ours(ours), make_theirs(list(theirs.values()))
    for step, grads in enumerate(_gradients(dtype, 20)):
        if step == 10:  # a schedule changes the learning rate mid-run
            opt.lr *= 0.5
            for group in topt.param_groups:
                group["lr"] *= 0.5
        for name, g in grads.items():
            theirs[name].grad = torch.from_numpy(g.copy())
        opt.step(grads)
        topt.step()
        for name in SHAPES:
            assert_close(f"step {step + 1}: {name}", ours[name], theirs[name], rtol=rtol, atol=atol)
    for name, p in ours.items():
        assert p is arrays[name] and p.dtype == dtype  # in place, dtype kept
    # the state means what torch's means
    state = opt.state_dict()
    assert state["step"] == 20 and state["lr"] == topt.param_groups[0]["lr"]
    for name, tp in theirs.items():
        for kind, value in topt.state[tp].items():
            if kind == "step":
                assert int(value) == state["step"]
            else:
                assert_close(f"{kind}.{name}", state[f"{kind}.{name}"], value, rtol=rtol, atol=atol)


@pytest.mark.parametrize("optimizers", OPTIMIZERS)
def test_state_dict_round_trip_resumes_identically(optimizers):
    make_ours, _ = optimizers
    grads = _gradients(np.float64, 16)
    params, _ = _start(np.float64)
    opt = make_ours(params)
    for g in grads[:8]:
        opt.step(g)
    checkpoint = {name: p.copy() for name, p in params.items()}, opt.state_dict()
    for g in grads[8:]:
        opt.step(g)

    resumed_params = {name: p.copy() for name, p in checkpoint[0].items()}
    resumed = make_ours(resumed_params)
    resumed.load_state_dict(checkpoint[1])
    for g in grads[8:]:
        resumed.step(g)
    for name in params:
        np.testing.assert_array_equal(resumed_params[name], params[name])
    # and without the optimizer state, the run would differ (so the test can fail)
    if any(k not in ("lr", "step") for k in checkpoint[1]):
        fresh_params = {name: p.copy() for name, p in checkpoint[0].items()}
        fresh = make_ours(fresh_params)
        for g in grads[8:]:
            fresh.step(g)
        assert any(not np.array_equal(fresh_params[n], params[n]) for n in params)


def test_state_dict_is_flat_and_a_copy():
    params, _ = _start(np.float64)
    opt = Adam(params, lr=0.01)
    opt.step(_gradients(np.float64, 1)[0])
    state = opt.state_dict()
    assert set(state) == {"lr", "step"} | {f"{kind}.{name}" for kind in ("exp_avg", "exp_avg_sq") for name in SHAPES}
    before = state["exp_avg.0.bias"].copy()
    opt.step(_gradients(np.float64, 1)[0])
    np.testing.assert_array_equal(state["exp_avg.0.bias"], before)
    with pytest.raises(KeyError, match="unexpected key"):
        opt.load_state_dict({**state, "exp_avg.nope": np.zeros(1)})


def test_step_needs_a_gradient_for_every_parameter():
    params, _ = _start(np.float64)
    grads = _gradients(np.float64, 1)[0]
    del grads["0.bias"]
    with pytest.raises(KeyError, match="0.bias"):
        SGD(params, lr=0.1).step(grads)
