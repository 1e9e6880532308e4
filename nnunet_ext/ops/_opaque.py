"""torch.compile support: dynamo never traces into the selective scan or the causal conv.

nnU-Net's predictor wraps any network in ``torch.compile`` when ``nnUNet_compile`` is set. Dynamo
must not trace the ops' dispatch: the back-end is chosen at run time (environment variable,
optional packages, device), the fused back-end leaves PyTorch for numba, the CUDA back-ends call
extension modules, the Triton back-end launches its own kernels (any back-end can sit behind the
op: it runs whatever the eager dispatch picks), and the PyTorch scan has Python loops over blocks that would be unrolled into
graphs of thousands of nodes. So, while dynamo traces, the public functions route as follows:

- no gradient needed (inference: nnU-Net predicts under ``torch.inference_mode``): the custom op
  ``torch.ops.nnunet_ext.selective_scan`` / ``torch.ops.nnunet_ext.causal_conv1d``. It is one
  node of the graph (no graph break); its implementation is the eager dispatch, which picks and
  runs the back-end when the compiled code runs; its fake implementation gives the output shapes
  and dtypes (tracing, and the meta device). The op has no backward.
- a gradient needed (compiled training): the eager dispatch behind ``torch.compiler.disable``,
  i.e. a graph break around each call, with ordinary autograd inside (the trainers of the Mamba
  networks do not compile, so this only serves users who compile them anyway).

Outside compilation the public functions call the eager dispatch directly.
"""

from __future__ import annotations

from typing import Callable

import torch

def compiling() -> bool:
    """True while dynamo (torch.compile / torch.export) traces the caller."""
    return torch.compiler.is_compiling()


def needs_grad(*tensors) -> bool:
    """Autograd would record a call on these tensors (grad mode on and one of them requires grad)."""
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def graph_break(fn: Callable) -> Callable:
    """``fn`` run eagerly (with autograd) when called from code that dynamo compiles."""
    return torch.compiler.disable(fn, recursive=True)


def no_backward(op_name: str, public: str):
    """A backward for :func:`torch.library.register_autograd` that explains what to call instead."""
    def backward(ctx, *grads):
        raise RuntimeError(
            f"{op_name} is the inference form of {public} used while torch.compile traces and has no "
            f"backward; call {public}, which runs the differentiable eager code when gradients are needed")

    return backward
