"""Peak training memory of a trainer's network at a candidate plan, without a GPU and without data.

:func:`estimate_training_memory` runs the trainer's own training step (nnU-Net's ``train_step`` with
the trainer's loss -- deep supervision, its weights, MISSU's self-distillation -- and optimizer, set
up by :func:`nnunet_ext.trainers.step.step_trainer`) on a network built as the trainer builds it
from the plan, on the meta device, with fake parameters
(``torch._subclasses.fake_tensor.FakeTensorMode``: shapes, dtypes and devices, no storage), under
:class:`LiveMemory`, which follows every tensor's storage and keeps the peak of the live bytes:
parameters, SGD momentum (present from the second iteration on), the batch and targets, the
activations the forward keeps for backward, the gradients and every transient; the optimizer
step's peak follows from the parameters.

Two precisions (:class:`Precision`):

- ``"amp"``: nnU-Net's CUDA training, ``torch.autocast(float16)``. Without a GPU the fake tensors
  are CPU tensors, so CPU autocast casts what it casts to float16 (convolutions, linear layers,
  matmuls, attention) and :class:`CudaAutocastPolicy` adds CUDA autocast's float32 rules (softmax,
  layer/group norm, exp/log/pow, sums, losses run in float32 on CUDA); the optimizer step counts
  at least what SGD's ``foreach`` implementation holds on CUDA (two parameter-sized temporaries).
- ``"fp32"``: plain float32, what nnU-Net does on a CPU (used to validate the estimate against a
  measured CPU run, :mod:`nnunet_ext.bench.memory_check`).

The selective scan is not traced (its ``torch`` back-end would keep float32 copies no kernel keeps):
:class:`ScanMemoryModel` stands in for the kernel that trains (through the public
:func:`nnunet_ext.ops.selective_scan.substitute_scan`), with that kernel's saved tensors and
its largest transients -- mamba-ssm's CUDA kernel for ``"amp"`` (inputs, the output, float32 state
checkpoints every 2048 tokens), our fused CPU kernel for ``"fp32"`` (inputs, float32 state checkpoints
every ``CHUNK_T`` tokens, token-major float32 copies of B and C, per-thread-group partial gradients).

What it does not see: the CUDA context, cuDNN workspaces and the caching allocator's rounding and
fragmentation (the estimate is what ``torch.cuda.max_memory_allocated`` counts); the planner keeps a
reserve for them (:mod:`.planner`).
"""

from __future__ import annotations

import contextlib
import weakref
from dataclasses import asdict, dataclass
from typing import Literal, Sequence

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

Precision = Literal["amp", "fp32"]
PRECISIONS = ("amp", "fp32")

#: mamba-ssm's selective-scan kernel keeps the state every this many tokens (float32, 2 x N values)
CUDA_SCAN_CHUNK = 2048


@dataclass(frozen=True)
class MemoryEstimate:
    """Peak memory of one training step, in bytes.

    ``total`` is the peak of all live tensors. The parts: ``parameters`` (incl. buffers),
    ``gradients`` and ``optimizer`` (SGD momentum; each the size of the trained parameters),
    ``activations`` (what is live after the forward and loss: kept for backward, outputs,
    autocast's weight copies), ``inputs`` (batch and targets), ``backward`` = total minus
    parameters, momentum, inputs and activations (the gradients and transients live at the peak).
    """

    total: int
    parameters: int
    gradients: int
    optimizer: int
    activations: int
    backward: int
    inputs: int
    batch_size: int
    patch_size: tuple[int, ...]
    precision: str

    def as_dict(self) -> dict:
        return {**asdict(self), "patch_size": list(self.patch_size)}


# ------------------------------------------------------------------------------------------ autocast
#: functions CUDA autocast runs in float32 (casting float16 inputs up): its "fp32" op list
_CUDA_FP32_OPS = frozenset({
    "layer_norm", "group_norm", "exp", "expm1", "log", "log10", "log2", "log1p", "reciprocal", "rsqrt",
    "pow", "softplus", "acos", "asin", "cosh", "sinh", "tan", "erfinv", "cosine_similarity", "nll_loss",
    "cross_entropy", "mse_loss", "l1_loss", "smooth_l1_loss", "kl_div", "binary_cross_entropy_with_logits",
    "cdist", "pdist", "dist", "logsumexp", "renorm",
})
#: functions CUDA autocast runs with ``dtype=float32`` (its "fp32_set_opt_dtype" list)
_CUDA_FP32_DTYPE_OPS = frozenset({"softmax", "log_softmax", "cumsum", "cumprod", "sum", "prod"})


def _half(t) -> bool:
    return isinstance(t, torch.Tensor) and t.dtype in (torch.float16, torch.bfloat16)


class CudaAutocastPolicy(torch.overrides.TorchFunctionMode):
    """CUDA autocast's float32 rules on top of CPU autocast (which keeps these ops in float16).

    Inside ``torch.autocast("cpu", dtype=torch.float16)``, the ops CUDA autocast runs in float32
    get float32 inputs (or ``dtype=float32``), so their outputs -- and what they save for
    backward -- have the sizes they have on a GPU.

    Attention: ``scaled_dot_product_attention`` with dropout runs on CUDA in the flash or
    memory-efficient kernel, which draws the dropout mask from a seed inside the kernel and keeps
    only the output and the log-sum-exp (linear in the tokens); the CPU kernel has no dropout and
    would fall back to the math path, which keeps the (B, heads, N, N) weights. So the call is
    traced without dropout, whose memory is the CUDA kernel's.
    """

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = dict(kwargs or {})
        name = getattr(func, "__name__", "")
        if name == "scaled_dot_product_attention" and torch.is_autocast_enabled("cpu"):
            if len(args) > 4:  # (query, key, value, attn_mask, dropout_p, is_causal, ...): positional
                args = (*args[:4], 0.0, *args[5:])
            else:
                kwargs["dropout_p"] = 0.0
        elif torch.is_autocast_enabled("cpu") and args:
            if name in _CUDA_FP32_DTYPE_OPS and _half(args[0]) and kwargs.get("dtype") is None:
                kwargs["dtype"] = torch.float32
            elif name in _CUDA_FP32_OPS and any(_half(a) for a in args):
                args = tuple(a.float() if _half(a) else a for a in args)
        return func(*args, **kwargs)


def autocast_context(precision: Precision):
    """``"amp"``: CPU autocast float16 + :class:`CudaAutocastPolicy`; ``"fp32"``: nothing."""
    if precision == "fp32":
        return contextlib.nullcontext()
    stack = contextlib.ExitStack()
    stack.enter_context(torch.autocast("cpu", dtype=torch.float16))
    stack.enter_context(CudaAutocastPolicy())
    return stack


# ------------------------------------------------------------------------------------------ scan model
class ScanMemoryModel(torch.autograd.Function):
    """Stands in for a selective-scan kernel: outputs of the right shape and dtype (no values),
    the kernel's saved tensors and its largest transients.

    forward(profile, u (B,E,L), delta (B,E,L), A (E,N), B (B,N,L), C (B,N,L), D (E,)|None,
    z (B,E,L)|None, delta_bias (E,)|None) -> y (B,E,L) in u's dtype.
    ``profile`` is ``"cuda"`` (mamba-ssm) or ``"fused"`` (our numba CPU kernel).
    """

    @staticmethod
    def forward(ctx, profile, threads, u, delta, A, B, C, D, z, delta_bias):
        b, e, length = u.shape
        n = A.shape[1]
        f32 = torch.float32
        ctx.profile, ctx.threads = profile, threads
        if profile == "cuda":
            ckpt = u.new_empty((b, e, -(-length // CUDA_SCAN_CHUNK), 2 * n), dtype=f32)
            out = u.new_empty(u.shape)
            if z is not None:
                out_z = u.new_empty(u.shape)
                ctx.save_for_backward(u, delta, A, B, C, D, z, delta_bias, ckpt, out)
                return out_z
            ctx.save_for_backward(u, delta, A, B, C, D, z, delta_bias, ckpt)
            return out
        from nnunet_ext.ops.scan_fused import CHUNK_T

        bt, ctt = B.new_empty((b, length, n), dtype=f32), C.new_empty((b, length, n), dtype=f32)  # noqa: F841
        ckpt = u.new_empty((b, e, -(-length // int(CHUNK_T)), n), dtype=f32)
        out = u.new_empty(u.shape, dtype=f32)
        ctx.save_for_backward(u, delta, A, B, C, D, z, delta_bias, ckpt)
        return out.to(u.dtype) if u.dtype != f32 else out

    @staticmethod
    def backward(ctx, gy):
        u, delta, A, B, C, D, z, delta_bias, *_ = ctx.saved_tensors
        b, e, length = u.shape
        n = A.shape[1]
        f32 = torch.float32
        if ctx.profile == "fused":
            from nnunet_ext.ops.scan_fused import work_groups

            g = work_groups(b, e, ctx.threads)
            transient = [B.new_empty((b, length, n), dtype=f32), C.new_empty((b, length, n), dtype=f32),
                         u.new_empty((b, g, length, n), dtype=f32), u.new_empty((b, g, length, n), dtype=f32)]
        else:  # mamba-ssm: float32 dB, dC accumulators, cast to B's / C's dtype at the end
            transient = [B.new_empty(B.shape, dtype=f32), C.new_empty(C.shape, dtype=f32)]
        grads = (u.new_empty(u.shape), delta.new_empty(delta.shape), A.new_empty(A.shape), B.new_empty(B.shape),
                 C.new_empty(C.shape), D.new_empty(D.shape) if D is not None else None,
                 z.new_empty(z.shape) if z is not None else None,
                 delta_bias.new_empty(delta_bias.shape) if delta_bias is not None else None)
        del transient
        return (None, None, *grads)


@contextlib.contextmanager
def scan_memory_model(profile: str, threads: int = 1):
    """Count every :func:`nnunet_ext.ops.selective_scan` call as :class:`ScanMemoryModel` of ``profile``
    (through the public :func:`nnunet_ext.ops.selective_scan.substitute_scan`)."""
    from nnunet_ext.ops.selective_scan import substitute_scan

    def scan(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state):
        y = ScanMemoryModel.apply(profile, threads, u, delta, A, B, C, D, z, delta_bias)
        if return_last_state:
            return y, u.new_empty((u.shape[0], u.shape[1], A.shape[1]), dtype=torch.float32)
        return y

    with substitute_scan(scan):
        yield


# ------------------------------------------------------------------------------------------ estimate
class LiveMemory(TorchDispatchMode):
    """Live and peak bytes of tensor storages: every op's outputs are counted once per storage until
    the storage dies (``weakref.finalize``), as an allocator without caching would see them.

    ``torch.distributed._tools.mem_tracker.MemTracker`` does the same with a breakdown per module
    and category, but updates every module's statistics on every op (about 100x slower on our
    networks: a minute per candidate patch); this keeps only the totals.
    """

    def __init__(self):
        super().__init__()
        self.live = 0
        self.peak = 0
        self._sizes: dict[int, int] = {}

    def track(self, tensor: torch.Tensor) -> None:
        storage = tensor.untyped_storage()
        key = storage._cdata
        if key in self._sizes:
            return
        size = storage.nbytes()
        self._sizes[key] = size
        self.live += size
        self.peak = max(self.peak, self.live)
        weakref.finalize(storage, self._free, key)

    def _free(self, key: int) -> None:
        self.live -= self._sizes.pop(key, 0)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in torch.utils._pytree.tree_leaves(out):
            if isinstance(t, torch.Tensor):
                self.track(t)
        return out


def _fake_parameters(network: nn.Module) -> None:
    """Replace the meta network's parameters and buffers by fake CPU tensors in place (shared
    parameters stay shared); must run inside the FakeTensorMode."""
    done: dict[int, torch.Tensor] = {}
    for module in network.modules():
        for key, p in list(module._parameters.items()):
            if p is not None:
                if id(p) not in done:
                    done[id(p)] = nn.Parameter(torch.empty(p.shape, dtype=p.dtype), requires_grad=p.requires_grad)
                module._parameters[key] = done[id(p)]
        for key, b in list(module._buffers.items()):
            if b is not None:
                if id(b) not in done:
                    done[id(b)] = torch.empty(b.shape, dtype=b.dtype)
                module._buffers[key] = done[id(b)]


_FAKE_MODE = None


def _fake_mode():
    """One FakeTensorMode per process: its cache of op results by shape carries over candidates."""
    global _FAKE_MODE
    if _FAKE_MODE is None:
        from torch._subclasses.fake_tensor import FakeTensorMode
        _FAKE_MODE = FakeTensorMode()
    return _FAKE_MODE


def _run_train_step(trainer, batch: dict) -> None:
    """nnU-Net's ``train_step`` of ``trainer`` (the trainer's class's, e.g. MISSU's; or nnU-Net's own for
    a stand-in holding ``device``, ``network``, ``loss``, ``optimizer``, ``grad_scaler``) on fake tensors:
    all of it up to its last line, which turns the loss into a NumPy value (a fake tensor has none)."""
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    step = type(trainer).train_step if isinstance(trainer, nnUNetTrainer) else nnUNetTrainer.train_step
    try:
        step(trainer, batch)
    except RuntimeError as e:
        if ".numpy()" not in str(e):
            raise


def estimate_training_memory(trainer_cls: type, plans_manager, configuration_manager, dataset_json: dict,
                             batch_size: int | None = None, precision: Precision = "amp",
                             scan_profile: str | None = None, threads: int = 1) -> MemoryEstimate:
    """Peak memory of one training iteration of ``trainer_cls`` on this configuration (see the module
    docstring): the trainer's own ``train_step`` (:mod:`nnunet_ext.trainers.step`: its network, loss
    and optimizer) on fake tensors; ``batch_size`` defaults to the configuration's. ``scan_profile``
    (``"cuda"`` or ``"fused"``) defaults to ``"cuda"`` for ``"amp"`` and ``"fused"`` for ``"fp32"``;
    ``threads`` is the torch thread count the fused kernel would run with (its backward's work split).

    Raises ``PlanError`` for a patch the network cannot divide (as the trainer would).
    """
    from nnunet_ext.trainers.step import build_network, step_trainer, synthetic_batch

    cm = configuration_manager
    batch = int(batch_size if batch_size is not None else cm.batch_size)

    def make_step(network):
        trainer = step_trainer(trainer_cls, plans_manager, dataset_json, "cpu", configuration=cm, network=network)
        return trainer, synthetic_batch(trainer, batch, fake=True)

    return _estimate(lambda: build_network(trainer_cls, plans_manager, cm, dataset_json), make_step, precision,
                     scan_profile, threads)


def estimate_network_memory(make_network, make_loss, data_shape: Sequence[int], precision: Precision = "amp",
                            scan_profile: str | None = None, threads: int = 1) -> MemoryEstimate:
    """Peak memory of one training iteration of ``make_network()`` (called on the meta device) with
    ``make_loss(network)(output, target)`` on a float32 batch of ``data_shape`` (B, C, Z, Y, X) and
    a (B, 1, Z, Y, X) int16 target, run by nnU-Net's ``train_step`` with its SGD (a network that no
    trainer builds, e.g. in tests)."""
    from types import SimpleNamespace

    def make_step(network):
        trainer = SimpleNamespace(device=torch.device("cpu"), network=network, loss=make_loss(network),
                                  grad_scaler=None,
                                  optimizer=torch.optim.SGD(network.parameters(), 1e-2, weight_decay=3e-5,
                                                            momentum=0.99, nesterov=True))
        shape = tuple(int(d) for d in data_shape)
        return trainer, {"data": torch.empty(shape, dtype=torch.float32),
                         "target": torch.empty((shape[0], 1, *shape[2:]), dtype=torch.int16)}

    return _estimate(make_network, make_step, precision, scan_profile, threads)


def _estimate(make_network, make_step, precision: Precision, scan_profile: str | None,
              threads: int) -> MemoryEstimate:
    """Trace ``train_step`` of ``make_step(network) -> (trainer, batch)`` on fake tensors.

    The network is built on the meta device and given fake parameters; the optimizer holds SGD's
    momentum from the start (every step after the first does). :class:`LiveMemory` follows the step
    (forward and loss under :func:`autocast_context`, backward, clipping); the live bytes right after
    the loss give ``activations``. SGD's update itself is not traced (it would add a third to the
    time): its peak follows from the parameters -- parameters + momentum + gradients + SGD's
    temporaries (``foreach``, as on CUDA: two parameter-sized lists; on a CPU two of the largest
    parameter) + the batch and targets -- and the estimate is at least that.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    scan_profile = scan_profile or ("cuda" if precision == "amp" else "fused")
    with torch.device("meta"):
        network = make_network()
    tracker = LiveMemory()
    after_loss = []
    with _fake_mode(), scan_memory_model(scan_profile, threads):
        _fake_parameters(network)
        network.train()
        trainer, batch = make_step(network)
        params = [p for p in network.parameters()]
        trained = [p for p in params if p.requires_grad]
        for p in trained:  # what every step after the first holds
            trainer.optimizer.state[p]["momentum_buffer"] = torch.zeros_like(p)
        targets = batch["target"] if isinstance(batch["target"], list) else [batch["target"]]
        for t in (*params, *network.buffers(), *(trainer.optimizer.state[p]["momentum_buffer"] for p in trained),
                  batch["data"], *targets):
            tracker.track(t)
        loss = trainer.loss
        if isinstance(loss, nn.Module):
            hook = loss.register_forward_hook(lambda module, args, out: after_loss.append(tracker.live))
        else:
            hook = None
            trainer.loss = lambda output, target: _record(loss(output, target), tracker, after_loss)
        trainer.optimizer.step = lambda *args, **kwargs: None  # counted from the parameters below
        try:
            with tracker, autocast_context(precision):
                _run_train_step(trainer, batch)
        finally:
            if hook is not None:
                hook.remove()
            trainer.loss = loss
            del trainer.optimizer.step
    data = batch["data"]
    param_bytes = sum(p.numel() * p.element_size() for p in params)
    trained_bytes = sum(p.numel() * p.element_size() for p in trained)
    buffer_bytes = sum(b.numel() * b.element_size() for b in network.buffers())
    data_bytes = data.numel() * data.element_size() + sum(t.numel() * t.element_size() for t in targets)
    largest = max((p.numel() * p.element_size() for p in trained), default=0)
    sgd_temporaries = 2 * trained_bytes if precision == "amp" else 2 * largest
    step_peak = param_bytes + buffer_bytes + 2 * trained_bytes + sgd_temporaries + data_bytes
    activations = after_loss[0] - (param_bytes + buffer_bytes + trained_bytes + data_bytes)
    total = max(tracker.peak, step_peak)
    return MemoryEstimate(
        total=int(total), parameters=int(param_bytes + buffer_bytes), gradients=int(trained_bytes),
        optimizer=int(trained_bytes), activations=int(activations),
        backward=int(max(total - (param_bytes + buffer_bytes + trained_bytes + data_bytes) - activations, 0)),
        inputs=int(data_bytes), batch_size=int(data.shape[0]), patch_size=tuple(int(p) for p in data.shape[2:]),
        precision=precision)


def _record(value, tracker: LiveMemory, into: list):
    into.append(tracker.live)
    return value
