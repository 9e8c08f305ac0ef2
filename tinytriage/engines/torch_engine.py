"""The PyTorch engine: twins of tinytriage's models, same parameter names, autograd.

Imported only when ``--backend torch`` is chosen (``import torch`` alone takes about a
second). A model file written by either engine loads in both: the twins are built from
the same config dataclasses and ``state_dict()`` keys match name for name.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from tinytriage.models.cnn import CNNConfig, feature_layers
from tinytriage.engines.numpy_engine import OptimConfig
from tinytriage.errors import BackendUnavailable, TinyTriageError


class TorchGlobalAvgMaxPool2d(nn.Module):
    """Twin of ``tinytriage.nn.GlobalAvgMaxPool2d``: (N, C, H, W) -> (N, 2C, 1, 1), means then maxima."""

    def __init__(self) -> None:
        super().__init__()
        self.avg, self.max = nn.AdaptiveAvgPool2d(1), nn.AdaptiveMaxPool2d(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.avg(x), self.max(x)], dim=1)


class TorchTriageCNN(nn.Module):
    """PyTorch twin of ``tinytriage.models.cnn.TriageCNN``."""

    def __init__(self, cfg: CNNConfig) -> None:
        super().__init__()
        self.cfg = cfg
        layers: list[nn.Module] = []
        for kind, _role, args in feature_layers(cfg):
            if kind == "conv":
                layers.append(nn.Conv2d(**args))
            elif kind == "bn":
                layers.append(nn.BatchNorm2d(**args))
            elif kind == "relu":
                layers.append(nn.ReLU())
            elif kind == "maxpool":
                layers.append(nn.MaxPool2d(**args))
        self.features = nn.Sequential(*layers)
        pool = nn.AdaptiveAvgPool2d(1) if cfg.pool == "avg" else TorchGlobalAvgMaxPool2d()
        self.head = nn.Sequential(
            pool, nn.Flatten(), nn.Dropout(cfg.dropout), nn.Linear(cfg.head_features, cfg.num_classes)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def build_torch_model(arch: str, config: dict) -> nn.Module:
    if arch == "cnn":
        return TorchTriageCNN(CNNConfig.from_dict(config))
    if arch == "vit":
        from tinytriage.models.torch_vit import TorchVisionTransformer
        from tinytriage.models.vit import ViTConfig

        return TorchVisionTransformer(ViTConfig.from_dict(config))
    raise TinyTriageError(f"unknown architecture {arch!r} (known: cnn, vit)")


def resolve_device(device: str) -> torch.device:
    if device == "cuda" and not torch.cuda.is_available():
        raise BackendUnavailable("--device cuda: PyTorch sees no CUDA GPU here (use --device cpu)")
    if device not in ("cpu", "cuda") and not device.startswith("cuda:"):
        raise TinyTriageError(f"unknown device {device!r} (choose cpu or cuda)")
    return torch.device(device)


class TorchEngine:
    """Same calls as ``tinytriage.engines.numpy_engine.NumpyEngine``; arrays in and out are NumPy."""

    name = "torch"

    def __init__(self, model: nn.Module, optim: OptimConfig | None, device: torch.device, dtype=torch.float32):
        self.device = device
        self.dtype = dtype
        self.model = model.to(device=device, dtype=dtype)
        self.optim_cfg = optim or OptimConfig()
        self.loss_fn = nn.CrossEntropyLoss(label_smoothing=self.optim_cfg.label_smoothing)
        self.optimizer: torch.optim.Optimizer | None = None
        self.param_names = [n for n, _ in self.model.named_parameters()]
        self.ddp: nn.Module | None = None  # the DistributedDataParallel wrapper, under torchrun

    @classmethod
    def create(cls, arch: str, config: dict, *, optim=None, device: str = "cpu", seed: int = 0) -> TorchEngine:
        """Fresh twin. Its weights start from the NumPy engine's initialisation for the same
        seed, so both engines train from identical weights."""
        from tinytriage.models.file import build_numpy_model

        engine = cls(build_torch_model(arch, config), optim, resolve_device(device))
        engine.load_state_dict(build_numpy_model(arch, config, seed=seed).state_dict())
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

    def loss_and_grads(self, x: np.ndarray, y: np.ndarray):
        self.model.train()
        self.model.zero_grad(set_to_none=True)
        logits = self.model(self._tensor(x))
        loss = self.loss_fn(logits, torch.from_numpy(np.asarray(y, np.int64)).to(self.device))
        loss.backward()
        grads = {n: p.grad.detach().cpu().numpy() for n, p in self.model.named_parameters()}
        return loss.item(), logits.detach().cpu().numpy(), grads

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
        logits = self.ddp(self._tensor(x))  # (B/W, classes): this rank's share
        loss = self.loss_fn(logits, torch.from_numpy(np.asarray(y, np.int64)).to(self.device))
        loss.backward()  # DDP averages the gradients over the ranks here
        self.optimizer.step()
        loss_all = distributed.mean_over_ranks(loss)  # the mean of equal shares' means: the batch mean
        logits_all = distributed.gather_rows(logits)  # (B, classes), in global batch order
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
