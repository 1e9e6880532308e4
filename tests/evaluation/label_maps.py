"""Small label maps on disk for the evaluation tests."""

import numpy as np
import SimpleITK as sitk

SITK_SPACING = (1.0, 1.0, 3.0)  # SimpleITK order (x, y, z): 3 mm slices


def write(arr, path, spacing=SITK_SPACING, origin=(0.0, 0.0, 0.0), dtype=np.uint8):
    img = sitk.GetImageFromArray(arr.astype(dtype))
    img.SetSpacing(spacing)
    img.SetOrigin(origin)
    sitk.WriteImage(img, str(path))


def reference():
    seg = np.zeros((20, 40, 40), np.uint8)        # array order (z, y, x)
    seg[8:12, 10:30, 10:30] = 1
    seg[2:5, 2:6, 2:6] = 2
    return seg
