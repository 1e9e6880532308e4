"""``nnUNetv2_train -num_gpus 2`` for the paper networks, on CPU: DDP with the gloo back-end.

nnU-Net's launcher needs NCCL, so two ranks are started here as plain processes
(:mod:`tests.trainers.ddp_worker`, file:// rendezvous). Each builds the real trainer from a small plan and
runs nnU-Net's ``initialize()`` under DDP (SyncBatchNorm conversion, ``DDP(network)`` with
``find_unused_parameters=False``, the DDP form of the DC+CE deep-supervision loss; for MISSU also its
self-distillation term) and two ``train_step`` calls on a different random batch per rank.

Checked per network: no error (DDP raises "Expected to have finished reduction ..." at the next forward
when a parameter got no gradient), every parameter has a gradient on every rank, gradients after
backward (and nnU-Net's clipping) are identical on both ranks although each rank saw its own batch (DDP
averaged them), and so are the parameters after the SGD steps.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

import nnunet_ext.trainers as trainers
from nnunet_ext.architectures import available_architectures, get_architecture
from nnunet_ext.blocks.mamba import MambaLayer
from tests.trainers import ddp_worker

pytestmark = pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(),
                                reason="torch.distributed with gloo is not available")

REPO = Path(__file__).resolve().parents[2]
WORLD_SIZE = 2
PAPER_NETWORKS = available_architectures(paper_network=True)


@pytest.fixture(scope="module")
def ddp_results(tmp_path_factory) -> dict:
    """Both ranks' run over all paper networks (one process group for all: start-up is the slow part)."""
    root = tmp_path_factory.mktemp("ddp")
    data = root / "pre" / ddp_worker.DATASET_NAME / ddp_worker.DATA_IDENTIFIER
    data.mkdir(parents=True)
    (data / "case.b2nd").touch()  # lets nnU-Net infer its dataset class
    out = root / "results.json"
    # the Mamba networks run the default CPU scan (numba): compile it (or load it from numba's cache) once
    # here rather than in both ranks at the same time
    MambaLayer(8)(torch.randn(1, 8, 2, 2, 2, requires_grad=True)).sum().backward()
    procs = []
    for rank in range(WORLD_SIZE):
        env = {k: v for k, v in os.environ.items() if not k.startswith("nnUNet")}
        env.update(nnUNet_preprocessed=str(root / "pre"), nnUNet_results=str(root / f"results_rank{rank}"),
                   OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", NUMBA_NUM_THREADS="1")
        log = open(root / f"rank{rank}.log", "w")
        procs.append((subprocess.Popen(
            [sys.executable, "-m", "tests.trainers.ddp_worker", str(rank), str(WORLD_SIZE), str(root / "rendezvous"),
             str(out), ",".join(PAPER_NETWORKS)], cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT), log))
    deadline, codes = time.monotonic() + 300, []
    for p, log in procs:
        try:
            codes.append(p.wait(timeout=max(1.0, deadline - time.monotonic())))
        except subprocess.TimeoutExpired:
            p.kill()
            codes.append(p.wait())
        log.close()
    if any(codes) or not out.exists():
        logs = "\n".join(f"--- rank {r} (exit {c})\n" + (root / f"rank{r}.log").read_text()[-5000:]
                         for r, c in enumerate(codes))
        pytest.fail(f"DDP workers failed\n{logs}")
    return json.loads(out.read_text())["networks"]


def test_all_paper_networks_are_checked(ddp_results):
    """The run covers the registry's paper networks, and each of them is a published network with a trainer."""
    assert sorted(ddp_results) == PAPER_NETWORKS and PAPER_NETWORKS
    assert all(get_architecture(a).paper_network and get_architecture(a).trainer for a in PAPER_NETWORKS)


@pytest.mark.parametrize("arch", PAPER_NETWORKS)
def test_ddp_training_keeps_ranks_in_sync(ddp_results, arch):
    r = ddp_results[arch]
    assert r["error"] is None, r["error"]
    # wrapped as nnU-Net wraps it under -num_gpus
    assert r["wrapped"] and r["find_unused_parameters"] is False
    assert [w["device_ids"] for w in r["wraps"]] == [[0]]  # nnU-Net passes its local rank (rank 0 reports)
    assert r["batch_size"] == ddp_worker.GLOBAL_BATCH // WORLD_SIZE
    # nnU-Net's DDP loss: distributed batch dice, and the lowest output weighted 1e-6 (not 0) so that
    # its head stays in the graph -- or, for a trainer that weights every output, 1/2^i throughout
    assert r["dice_ddp"] is True
    weights = r["ds_weights"]
    assert len(weights) == len(r["ds_scales"]) and all(w > 0 for w in weights)
    raw = [1 / 2 ** i for i in range(len(weights))]
    if not getattr(trainers, get_architecture(arch).trainer).weight_every_output:
        raw[-1] = 1e-6
    assert weights == pytest.approx([w / sum(raw) for w in raw])

    assert len(r["steps"]) == ddp_worker.STEPS
    for i, s in enumerate(r["steps"]):
        assert s["no_grad"] == [[]] * WORLD_SIZE, f"step {i}: parameters without a gradient: {s['no_grad']}"
        assert math.isfinite(s["grad_abs_sum"]) and s["grad_abs_sum"] > 0
        # each rank saw its own batch ...
        assert s["losses"][0]["loss"] != s["losses"][1]["loss"]
        # ... yet both hold the same (all-reduced) gradients
        assert s["grad_diff"] == {}, f"step {i}: gradients differ between ranks: {s['grad_diff']}"
    # and, after the SGD steps, the same parameters (they were initialised differently per rank: DDP
    # broadcast rank 0's)
    assert r["param_diff_after_steps"] == {}, f"parameters differ between ranks: {r['param_diff_after_steps']}"


@pytest.mark.parametrize("arch", PAPER_NETWORKS)
def test_sync_batchnorm_conversion_touches_only_batchnorm(ddp_results, arch):
    """Before DDP nnU-Net converts every BatchNorm to SyncBatchNorm and leaves instance, group and layer
    norms alone (they normalise within one sample: nothing to synchronise). Of our networks only UNETR++
    has BatchNorm (its EPA blocks, as the public code), so only its statistics are synchronised across GPUs."""
    pm = PlansManager(ddp_worker.plans())
    with torch.device("meta"):
        net = getattr(trainers, get_architecture(arch).trainer).build_network_architecture(
            pm, pm.get_configuration("3d_fullres"), 1, ddp_worker.NUM_CLASSES, True)
    built = {n: type(m).__name__ for n, m in net.named_modules() if ddp_worker.is_norm(m)}
    assert built and ddp_results[arch]["wraps"][0]["norm_types"] == {
        n: "SyncBatchNorm" if t == "BatchNorm3d" else t for n, t in built.items()}
    assert ("BatchNorm3d" in built.values()) == (arch == "unetr_pp")


def test_missu_distillation_term_under_ddp(ddp_results):
    r = ddp_results["missu"]
    assert r["loss_type"] == "SegmentationWithDistillationLoss"
    for s in r["steps"]:
        for terms in s["losses"]:  # each rank: total = segmentation + 0.3 * L_sd
            assert terms["distillation_loss"] > 0
            assert terms["loss"] == pytest.approx(terms["seg_loss"] + 0.3 * terms["distillation_loss"], rel=1e-5)
        assert s["msf_grad_abs_sum"] > 0  # the MSF blocks learn only through L_sd
