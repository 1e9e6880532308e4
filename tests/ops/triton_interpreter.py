"""A faster Triton interpreter for the Triton scan's tests: :func:`vectorised_scans`.

Triton's interpreter evaluates a scan with a custom combine function as a left fold, calling the
combine function on scalars element by element, and a reduction likewise; that makes the
interpreted kernels of :mod:`nnunet_ext.ops.scan_triton` ~100x slower than the same fold over
whole slices. The replacement computes exactly the same fold (same float32 operations in the same
order, so the same bits: tests/ops/test_scan_triton.py checks it against the original) for the
module's ``_combine`` and ``_add`` only, and leaves every other scan or reduction to Triton.
"""

from __future__ import annotations

import contextlib

import numpy as np


@contextlib.contextmanager
def vectorised_scans(mod):
    """While active, the interpreter evaluates ``mod._combine`` scans and ``mod._add`` reductions
    with numpy over whole slices; yields ``(generic_scan, generic_reduce)``, Triton's own
    evaluations (restored afterwards). Raises ``RuntimeError`` when this Triton's interpreter
    lacks the hooks."""
    from triton.runtime import interpreter as ti

    scan_cls, reduce_cls = getattr(ti, "ScanOps", None), getattr(ti, "ReduceOps", None)
    if not (hasattr(scan_cls, "generic_scan") and hasattr(reduce_cls, "generic_reduce")):
        raise RuntimeError("this Triton's interpreter has no ScanOps.generic_scan / ReduceOps.generic_reduce")
    generic_scan, generic_reduce = scan_cls.generic_scan, reduce_cls.generic_reduce

    def scan(self, inputs):
        if self.combine_fn is not mod._combine or len(inputs) != 2:
            return generic_scan(self, inputs)
        a = np.moveaxis(inputs[0].handle.data, self.axis, 0)
        x = np.moveaxis(inputs[1].handle.data, self.axis, 0)
        pa, px = a.copy(), x.copy()
        for k in range(1, a.shape[0]):  # combine(acc, new) = (acc_a * a, a * acc_x + x)
            pa[k] = pa[k - 1] * a[k]
            px[k] = a[k] * px[k - 1] + x[k]
        return [self.to_tensor(np.moveaxis(pa, 0, self.axis), inputs[0].dtype),
                self.to_tensor(np.moveaxis(px, 0, self.axis), inputs[1].dtype)]

    def reduce(self, inputs):
        if self.combine_fn is not mod._add or len(inputs) != 1 or self.axis is None:
            return generic_reduce(self, inputs)
        x = np.moveaxis(inputs[0].handle.data, self.axis, 0)
        acc = x[0].copy()
        for k in range(1, x.shape[0]):
            acc = acc + x[k]
        if self.keep_dims:
            acc = np.expand_dims(acc, self.axis)
        return [self.to_tensor(acc, inputs[0].dtype)]

    scan_cls.generic_scan, reduce_cls.generic_reduce = scan, reduce
    try:
        yield generic_scan, generic_reduce
    finally:
        scan_cls.generic_scan, reduce_cls.generic_reduce = generic_scan, generic_reduce
