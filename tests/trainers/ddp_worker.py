"""One rank of the DDP check in ``test_ddp.py``: real trainers, wrapped as ``nnUNetv2_train -num_gpus N``
wraps them, trained a few steps with the gloo back-end on CPU.

Run as ``python -m tests.trainers.ddp_worker RANK WORLD_SIZE INIT_FILE OUT_JSON ARCH[,ARCH...]`` with
``nnUNet_results`` and ``nnUNet_preprocessed`` set (nnU-Net reads them at import). Rank 0 writes one
JSON record per architecture to OUT_JSON (``{"networks": {arch: record}, "seconds": ...}``); the test
asserts on them.

What runs is nnU-Net's own code wherever the CPU allows it:

- ``Trainer.__init__`` and ``Trainer.initialize()`` with the process group up, so ``is_ddp`` is True:
  the per-rank batch size, ``build_network_architecture`` from the plans, nnU-Net's SGD, then
  ``SyncBatchNorm.convert_sync_batchnorm`` and DDP, then ``_build_loss()`` under DDP (the DDP dice
  with batch dice, the lowest deep-supervision weight 1e-6 instead of 0; MISSU's distillation wrapper).
- ``Trainer.train_step`` (forward, loss, backward with DDP's gradient all-reduce, clipping, SGD step).

What the CPU forces us to change, in one place (:func:`_cpu_ddp`, patched over nnU-Net's ``DDP``):
DDP refuses ``device_ids`` and SyncBatchNorm for CPU modules, so the ``device_ids=[rank]`` argument is
dropped and the modules nnU-Net converted to SyncBatchNorm (UNETR++'s EPA BatchNorm3d) run as plain
BatchNorm3d; which modules were converted (and that no other norm was touched) is recorded. ``__init__``
sets the device to ``cuda:rank`` under DDP; we set it back to CPU before ``initialize()``.
"""

from __future__ import annotations

import json
import sys
import time
import traceback
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from tests.plans import make_plans

PATCH = [16, 16, 16]
#: nnU-Net's global batch size; DDP splits it over the ranks (1 sample each with 2 ranks)
GLOBAL_BATCH = 2
STEPS = 2
NUM_CLASSES = 3
DATASET_NAME = "Dataset997_DDPProbe"
DATA_IDENTIFIER = "nnUNetPlans_3d_fullres"  # what tests.plans.make_plans names it
DATASET_JSON = {"channel_names": {"0": "CT"}, "labels": {"background": 0, "a": 1, "b": 2},
                "numTraining": 2, "file_ending": ".nii.gz"}


def plans() -> dict:
    """A minimal 3d_fullres plan: 16^3 patch, 3 poolings, batch dice (as nnU-Net plans 3d_fullres)."""
    return make_plans(PATCH, [[1, 1, 1]] + [[2, 2, 2]] * 3, dataset_name=DATASET_NAME, batch_size=GLOBAL_BATCH,
                      batch_dice=True)


# ------------------------------------------------------------------------------------ DDP on CPU
_WRAPS: list[dict] = []


def _revert_sync_batchnorm(module: nn.Module) -> nn.Module:
    """SyncBatchNorm -> BatchNorm3d with the same parameters and buffers (gloo/CPU cannot run it)."""
    if isinstance(module, nn.SyncBatchNorm):
        bn = nn.BatchNorm3d(module.num_features, module.eps, module.momentum, module.affine,
                            module.track_running_stats)
        bn.load_state_dict(module.state_dict())
        bn.train(module.training)
        return bn
    for name, child in module.named_children():
        setattr(module, name, _revert_sync_batchnorm(child))
    return module


def _cpu_ddp(module: nn.Module, device_ids=None, **kwargs) -> DistributedDataParallel:
    """Stands in for ``DDP`` inside nnU-Net's ``initialize()``: records the call, then wraps as it does
    (``find_unused_parameters`` left at its default, False) minus what DDP refuses on CPU."""
    _WRAPS.append({"device_ids": device_ids,
                   "norm_types": {n: type(m).__name__ for n, m in module.named_modules() if is_norm(m)}})
    return DistributedDataParallel(_revert_sync_batchnorm(module), **kwargs)


def is_norm(m: nn.Module) -> bool:
    """Batch, sync-batch, instance, group and layer norms."""
    return isinstance(m, (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm))


# ------------------------------------------------------------------------------------ one network
def _batch(seed: int, scales) -> dict:
    """A random batch of this rank's size; targets down-sampled per deep-supervision scale (nearest,
    as nnU-Net's DownsampleSegForDSTransform does for integer factors)."""
    g = torch.Generator().manual_seed(seed)
    n = GLOBAL_BATCH // dist.get_world_size()
    seg = torch.randint(0, NUM_CLASSES, (n, 1, *PATCH), generator=g).float()
    steps = [[round(1 / s) for s in scale] for scale in scales]
    return {"data": torch.randn(n, 1, *PATCH, generator=g),
            "target": [seg[:, :, ::z, ::y, ::x] for z, y, x in steps]}


def _differences_on_rank0(tensors: list[torch.Tensor], names: list[str]) -> dict[str, float] | None:
    """Gather the flattened ``tensors`` of every rank to rank 0; there, the largest |rank r - rank 0| of
    each tensor that is not identical on all ranks (NaN counts as a difference). None on other ranks."""
    flat = torch.cat([t.detach().reshape(-1) for t in tensors])
    gathered = [torch.empty_like(flat) for _ in range(dist.get_world_size())] if dist.get_rank() == 0 else None
    dist.gather(flat, gathered, dst=0)
    if gathered is None:
        return None
    sizes = [t.numel() for t in tensors]
    diffs: dict[str, float] = {}
    for other in gathered[1:]:
        if torch.equal(gathered[0], other):
            continue
        for name, a, b in zip(names, gathered[0].split(sizes), other.split(sizes)):
            if not torch.equal(a, b):
                diffs[name] = max(float((a - b).abs().max()), diffs.get(name, 0.0))
    return diffs


def check_architecture(arch: str, index: int) -> dict:
    import nnunetv2.training.nnUNetTrainer.nnUNetTrainer as nnunet_trainer_module

    import nnunet_ext.trainers as trainers
    from nnunet_ext.architectures import get_architecture

    start = time.perf_counter()
    rank = dist.get_rank()
    cls = getattr(trainers, get_architecture(arch).trainer)
    record: dict = {"trainer": cls.__name__, "error": None}
    # different initial weights per rank: DDP must broadcast rank 0's for them to end up equal
    torch.manual_seed(1000 * index + rank)
    _WRAPS.clear()
    nnunet_trainer_module.DDP = _cpu_ddp
    t = cls(plans(), "3d_fullres", 0, dict(DATASET_JSON), torch.device("cpu"))
    assert t.is_ddp and t.local_rank == rank
    t.device, t.grad_scaler = torch.device("cpu"), None  # __init__ chose cuda:rank
    t.initialize()
    net = t.network.module
    names, params = zip(*[(n, p) for n, p in net.named_parameters() if p.requires_grad])
    record.update(
        wrapped=isinstance(t.network, DistributedDataParallel), wraps=_WRAPS[:],
        find_unused_parameters=t.network.find_unused_parameters, batch_size=t.batch_size,
        num_parameters=sum(p.numel() for p in params), ds_scales=t._get_deep_supervision_scales(),
        ds_weights=list(getattr(getattr(t.loss, "seg_loss", t.loss), "weight_factors", [])),
        dice_ddp=getattr(t.loss, "seg_loss", t.loss).loss.dc.ddp, loss_type=type(t.loss).__name__, steps=[])
    record["seconds_setup"] = time.perf_counter() - start
    try:
        for step in range(STEPS):
            # nnU-Net's step: forward, loss, backward (DDP all-reduces the gradients), clipping, SGD
            out = t.train_step(_batch(10_000 * index + 100 * rank + step, t._get_deep_supervision_scales()))
            grads = [torch.zeros_like(p) if p.grad is None else p.grad for p in params]
            s = {"no_grad": [None] * dist.get_world_size(), "losses": [None] * dist.get_world_size(),
                 "grad_diff": _differences_on_rank0(grads, names),
                 "grad_abs_sum": sum(float(g.abs().sum()) for g in grads) if rank == 0 else None}
            dist.all_gather_object(s["no_grad"], [n for n, p in zip(names, params) if p.grad is None])
            dist.all_gather_object(s["losses"], {k: float(v) for k, v in out.items()})
            if arch == "missu":
                s["msf_grad_abs_sum"] = sum(float(p.grad.abs().sum()) for p in net.msf.parameters()
                                            if p.grad is not None)
            record["steps"].append(s)
        record["param_diff_after_steps"] = _differences_on_rank0(params, names)
    except Exception:  # DDP's unused-parameter error shows here (at the next forward)
        record["error"] = traceback.format_exc()
    record["seconds"] = time.perf_counter() - start
    return record


def main(rank: int, world_size: int, init_file: str, out_json: str, archs: list[str]) -> None:
    start = time.perf_counter()
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size,
                            timeout=timedelta(seconds=120))
    try:
        results: dict = {"networks": {}}
        for i, arch in enumerate(archs):
            results["networks"][arch] = check_architecture(arch, i)
            dist.barrier()
        results["seconds"] = time.perf_counter() - start
        if rank == 0:
            with open(out_json, "w") as f:
                json.dump(results, f, indent=1)
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5].split(","))
