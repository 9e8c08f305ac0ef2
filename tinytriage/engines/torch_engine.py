"""The PyTorch engine: twins of tinytriage's models, same parameter names, autograd.

Imported only when ``--backend torch`` is chosen (``import torch`` alone takes about a
second). A model file written by either engine loads in both: the twins are built from
the same config dataclasses and ``state_dict()`` keys match name for name.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from tinytriage.engines.base import OptimConfig, check_head_targets, class_logits
from tinytriage.errors import BackendUnavailable, TinyTriageError
from tinytriage.models import Architecture


def resolve_device(device: str) -> torch.device:
    if device == "cuda" and not torch.cuda.is_available():
        raise BackendUnavailable("--device cuda: PyTorch sees no CUDA GPU here (use --device cpu)")
    if device not in ("cpu", "cuda") and not device.startswith("cuda:"):
        raise TinyTriageError(f"unknown device {device!r} (choose cpu or cuda)")
    return torch.device(device)


class TorchEngine:
    """Same calls as ``tinytriage.engines.numpy_engine.NumpyEngine``; arrays in and out are NumPy."""

    name = "torch"

    def __init__(
        self,
        model: nn.Module,
        optim: OptimConfig | None,
        device: torch.device,
        dtype=torch.float32,
        *,
        arch: Architecture,
    ):
        self.arch = arch  # its row of the architecture table
        self.device = device
        self.dtype = dtype
        self.model = model.to(device=device, dtype=dtype)
        self.optim_cfg = optim or OptimConfig()
        self.loss_fn = nn.CrossEntropyLoss(label_smoothing=self.optim_cfg.label_smoothing)
        self.optimizer: torch.optim.Optimizer | None = None
        self.param_names = [n for n, _ in self.model.named_parameters()]
        self.ddp: nn.Module | None = None  # the DistributedDataParallel wrapper, under torchrun

    @classmethod
    def create(cls, arch: Architecture, config: dict, *, optim=None, device: str = "cpu", seed: int = 0) -> TorchEngine:
        """Fresh twin. Its weights start from the NumPy engine's initialisation for the same
        seed, so both engines train from identical weights."""
        engine = cls(arch.torch_model(config), optim, resolve_device(device), arch=arch)
        engine.load_state_dict(arch.numpy_model(config, seed=seed).state_dict())
        return engine

    def _tensor(self, x: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(x)).to(self.device, self.dtype)

    def _make_optimizer(self) -> torch.optim.Optimizer:
        o = self.optim_cfg
        if o.name == "sgd":
            return torch.optim.SGD(
                self.model.parameters(), lr=o.lr, momentum=o.momentum, nesterov=o.nesterov, weight_decay=o.weight_decay
            )
        if o.name == "adamw":
            return torch.optim.AdamW(self.model.parameters(), lr=o.lr, weight_decay=o.weight_decay)
        raise TinyTriageError(f"unknown optimizer {o.name!r} (known: sgd, adamw)")

    @torch.no_grad()
    def logits(self, x: np.ndarray) -> np.ndarray:
        self.model.eval()
        return self.model(self._tensor(x)).float().cpu().numpy()

    @torch.no_grad()
    def logits_and_features(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Inference, also returning the last conv stage's map (N, C, h, w). CNN only."""
        self.model.eval()
        features = self.model.features(self._tensor(x))
        return self.model.head(features).float().cpu().numpy(), features.float().cpu().numpy()

    @torch.no_grad()
    def logits_and_attention(self, x: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
        """Logits and each block's attention probabilities (N, heads, T, T). Transformers only."""
        self.model.eval()
        logits, attns = self.model(self._tensor(x), return_attn=True)
        return logits.float().cpu().numpy(), [a.float().cpu().numpy() for a in attns]

    @torch.no_grad()
    def layer_outputs(self, x: np.ndarray) -> dict[str, np.ndarray]:
        """Every ``features`` layer's output for the first photo, (C, h, w) each, by name."""
        self.model.eval()
        names = self.arch.layer_names(self.model.cfg)
        outs, a = {}, self._tensor(x)
        for name, layer in zip(names, self.model.features, strict=True):
            a = layer(a)
            outs[name] = a[0].float().cpu().numpy()
        return outs

    @torch.no_grad()
    def block_outputs(self, x: np.ndarray, layer: str) -> dict[str, np.ndarray]:
        """A ``features`` block's input and each child's output, by name, for the first photo."""
        self.model.eval()
        features = self.model.features
        i = self.arch.layer_names(self.model.cfg).index(layer)
        a = features[:i](self._tensor(x))
        outs = {"input": a[0].float().cpu().numpy()}
        for name, child in features[i].named_children():
            a = child(a)
            outs[name] = a[0].float().cpu().numpy()
        return outs

    def activations_and_gradients(
        self, x: np.ndarray, class_index: np.ndarray, layer_index: int
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(A, d y_c / d A, logits) for Grad-CAM, by autograd: A as a leaf, y_c summed over
        the batch, torch.autograd.grad."""
        model = self.model
        model.eval()
        with torch.enable_grad():
            with torch.no_grad():
                A = model.features[: layer_index + 1](self._tensor(x))  # (N, K, h, w)
            A.requires_grad_(True)
            logits = model.head(model.features[layer_index + 1 :](A))  # (N, classes)
            idx = torch.as_tensor(class_index, device=logits.device)
            y = logits[torch.arange(len(x), device=logits.device), idx].sum()
            (dA,) = torch.autograd.grad(y, A)
        as_np = lambda v: v.detach().float().cpu().numpy()  # noqa: E731
        return as_np(A), as_np(dA), as_np(logits)

    def loss_and_grads(self, x: np.ndarray, y: np.ndarray):
        """Forward and backward in training mode, no step: (loss, class-head logits (N, K), gradients)."""
        self.model.train()
        self.model.zero_grad(set_to_none=True)
        logits = self.model(self._tensor(x))  # (N, K), or (N, H, K) from H heads (a distilled ViT)
        loss = self._loss(logits, y)
        loss.backward()
        grads = {n: p.grad.detach().cpu().numpy() for n, p in self.model.named_parameters()}
        return loss.item(), class_logits(logits).detach().cpu().numpy(), grads

    def _loss(self, logits: torch.Tensor, y: np.ndarray) -> torch.Tensor:
        """Cross-entropy of (N, K) logits and (N,) targets, or of (N, H, K) logits and (N, H)
        targets over all N*H rows (``NumpyEngine._loss``: DeiT's hard distillation)."""
        if logits.ndim == 3:
            N, H, K = logits.shape
            y = check_head_targets(logits, y).reshape(N * H)
            logits = logits.reshape(N * H, K)
        return self.loss_fn(logits, torch.from_numpy(np.asarray(y, np.int64)).to(self.device))

    def train_step(self, x: np.ndarray, y: np.ndarray, lr: float):
        """Forward, backward, step. After ``distribute()``, x and y are this rank's share of the
        global batch, and the loss and logits returned are the global batch's, on every rank."""
        if self.optimizer is None:
            self.optimizer = self._make_optimizer()
        if self.ddp is not None:
            for group in self.optimizer.param_groups:
                group["lr"] = lr
            return self._ddp_step(x, y)
        loss, logits, _ = self.loss_and_grads(x, y)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.optimizer.step()
        return loss, logits

    def distribute(self) -> None:
        """Train data-parallel with the other torchrun ranks (after ``distributed.init``).

        BatchNorm and Dropout are swapped for versions that see the global batch, so the
        run equals single-process training (see ``AllReduceBatchNorm2d``, ``ShardedDropout``);
        parameter names are unchanged, so state dicts and model files are too."""
        from torch.nn.parallel import DistributedDataParallel

        if self.optimizer is not None:
            raise TinyTriageError("distribute() must come before the first step or optimizer load")
        _swap_for_data_parallel(self.model)
        self.model.to(device=self.device, dtype=self.dtype)
        device_ids = [self.device.index] if self.device.type == "cuda" else None
        self.ddp = DistributedDataParallel(self.model, device_ids=device_ids)

    def _ddp_step(self, x: np.ndarray, y: np.ndarray):
        from tinytriage.engines import distributed

        self.ddp.train()
        self.model.zero_grad(set_to_none=True)
        logits = self.ddp(self._tensor(x))  # (B/W, classes): this rank's share ((B/W, H, classes): H heads)
        loss = self._loss(logits, y)
        loss.backward()  # DDP averages the gradients over the ranks here
        self.optimizer.step()
        loss_all = distributed.mean_over_ranks(loss)  # the mean of equal shares' means: the batch mean
        logits_all = distributed.gather_rows(class_logits(logits))  # (B, classes), in global batch order
        return float(loss_all), logits_all.float().cpu().numpy()

    def state_dict(self) -> dict[str, np.ndarray]:
        return {k: v.detach().cpu().numpy().copy() for k, v in self.model.state_dict().items()}

    def load_state_dict(self, state: dict[str, np.ndarray]) -> None:
        own = self.model.state_dict()
        converted = {
            k: torch.from_numpy(np.array(v, order="C")).to(own[k].dtype)
            if k in own
            else torch.from_numpy(np.array(v, order="C"))
            for k, v in state.items()
        }
        self.model.load_state_dict(converted, strict=True)

    # optimizer state as flat arrays, with the NumPy engine's key names
    def optimizer_state(self) -> dict:
        if self.optimizer is None:
            self.optimizer = self._make_optimizer()
        flat: dict = {}
        params = dict(self.model.named_parameters())
        by_id = {id(p): n for n, p in params.items()}
        for p, st in self.optimizer.state.items():
            name = by_id[id(p)]
            for k, v in st.items():
                if torch.is_tensor(v) and v.ndim > 0:
                    flat[f"{k}.{name}"] = v.detach().cpu().numpy().copy()
                else:
                    flat[f"{k}.{name}"] = float(v)
        return flat

    def load_optimizer_state(self, state: dict) -> None:
        if self.optimizer is None:
            self.optimizer = self._make_optimizer()
        params = dict(self.model.named_parameters())
        for key, v in state.items():
            k, _, name = key.partition(".")
            if name not in params:
                continue
            st = self.optimizer.state[params[name]]
            if isinstance(v, np.ndarray) and v.ndim > 0:
                st[k] = torch.from_numpy(v.copy()).to(self.device, self.dtype)
            else:
                st[k] = torch.tensor(float(np.asarray(v)))

    def use_float64(self) -> None:
        """Compute in float64 from now on (``compare``'s checks); before the first step."""
        self.dtype = torch.float64
        self.model.to(dtype=self.dtype)
        self.optimizer = None

    def reseed(self, seed_seq: list[int]) -> None:
        torch.manual_seed(int(np.random.SeedSequence(seed_seq).generate_state(1)[0]))


# -- data-parallel training (torchrun): layers that see the global batch -----------------


class _SumOverRanks(torch.autograd.Function):
    """s = sum over ranks of x. Every rank's loss depends on s, so the gradient reaching
    each rank's x is the sum over ranks of dL_r/ds: the backward is the same all-reduce."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        import torch.distributed as dist

        s = x.clone()
        dist.all_reduce(s)  # sum
        return s

    @staticmethod
    def backward(ctx, ds: torch.Tensor) -> torch.Tensor:
        import torch.distributed as dist

        dx = ds.clone()
        dist.all_reduce(dx)  # sum
        return dx


class AllReduceBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d whose training statistics are the global batch's, summed over all ranks.

    What ``nn.SyncBatchNorm`` does, written out, because in torch 2.13 that one refuses CPU
    tensors ("SyncBatchNorm expected input tensor to be on GPU"); this one runs on gloo and
    NCCL alike. Without it each rank would normalise by its own B/W photos. The sums go
    through ``_SumOverRanks``, whose backward all-reduces the gradient, so the gradient
    through the mean and variance reaches every rank's photos too.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return super().forward(x)
        from tinytriage.engines.distributed import world_size

        N, C, H, W = x.shape
        count = N * H * W * world_size()  # values per channel in the global batch
        mean = _SumOverRanks.apply(x.sum((0, 2, 3))) / count  # (C,)
        centred = x - mean.view(1, C, 1, 1)  # (N, C, H, W)
        var = _SumOverRanks.apply((centred * centred).sum((0, 2, 3))) / count  # (C,) biased: what BN divides by
        with torch.no_grad():  # running statistics as nn.BatchNorm2d keeps them (variance unbiased)
            m = self.momentum
            self.running_mean.mul_(1 - m).add_(mean, alpha=m)
            self.running_var.mul_(1 - m).add_(var * (count / (count - 1)), alpha=m)
            self.num_batches_tracked.add_(1)
        x_hat = centred * torch.rsqrt(var + self.eps).view(1, C, 1, 1)
        return x_hat * self.weight.view(1, C, 1, 1) + self.bias.view(1, C, 1, 1)


class ShardedDropout(nn.Dropout):
    """Dropout whose mask is the global batch's mask, cut to this rank's rows.

    On the CPU ``nn.Dropout`` draws ``empty_like(x).bernoulli_(1 - p)``. Every rank's generator
    is in the same state (same seed, same draws so far), so each draws the whole batch's mask
    and keeps its own rows: each photo gets the mask it gets in a single process. (CUDA's fused
    dropout kernel draws differently, so there the masks match in distribution only.)
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0:
            return x
        from tinytriage.engines.distributed import shard, world_size

        B = x.shape[0] * world_size()  # the global batch
        noise = x.new_empty((B, *x.shape[1:])).bernoulli_(1 - self.p).div_(1 - self.p)
        return x * noise[shard(B)]


def _swap_for_data_parallel(module: nn.Module) -> None:
    """Replace, in place, every BatchNorm2d and Dropout below ``module`` by its global-batch twin."""
    for name, child in module.named_children():
        if isinstance(child, nn.BatchNorm2d):
            twin = AllReduceBatchNorm2d(child.num_features, eps=child.eps, momentum=child.momentum)
            twin.load_state_dict(child.state_dict())
            setattr(module, name, twin)
        elif isinstance(child, nn.Dropout):
            setattr(module, name, ShardedDropout(child.p))
        else:
            _swap_for_data_parallel(child)
