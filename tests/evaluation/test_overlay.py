"""The overlay PNG: label colours explained by a legend that carries each label's Dice."""

import numpy as np
import pytest
from matplotlib.colors import to_rgba

from nnunet_ext.evaluation.overlay import draw_overlay, label_colour, save_overlay
from tests.evaluation.label_maps import reference, write


@pytest.fixture
def case(tmp_path):
    ref = reference()
    pred = ref.copy()
    pred[ref == 2] = 0                                   # label 2 missed
    image = np.random.default_rng(0).normal(size=ref.shape).astype(np.float32)
    paths = [tmp_path / n for n in ("image.nii.gz", "ref.nii.gz", "pred.nii.gz")]
    write(image, paths[0], dtype=np.float32)
    write(ref, paths[1])
    write(pred, paths[2])
    return paths


def test_legend_names_each_label_in_its_colour_with_its_dice(case):
    import matplotlib.pyplot as plt

    fig = draw_overlay(*case, title="case", label_names={1: "grey_matter", 2: "white_matter"},
                       dice={1: 0.8456, 2: 0.0})
    try:
        (legend,) = fig.legends
        texts = [t.get_text() for t in legend.get_texts()]
        assert texts == ["1 grey_matter: Dice 0.846", "2 white_matter: Dice 0.000"]
        assert "Dice" in legend.get_title().get_text()
        for patch, label in zip(legend.get_patches(), (1, 2)):
            assert patch.get_facecolor()[:3] == pytest.approx(to_rgba(label_colour(label))[:3])
        # the reference column draws label 1 in the legend's colour for label 1
        overlay = fig.axes[1].get_images()[1]            # axial row, reference column: the label layer
        assert overlay.cmap(overlay.norm(1))[:3] == pytest.approx(to_rgba(label_colour(1))[:3])
        assert overlay.cmap(overlay.norm(2))[:3] == pytest.approx(to_rgba(label_colour(2))[:3])
    finally:
        plt.close(fig)


def test_without_names_the_legend_still_gives_the_colours(case, tmp_path):
    png = save_overlay(*case, tmp_path / "o.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    import matplotlib.pyplot as plt
    fig = draw_overlay(*case)
    try:
        assert [t.get_text() for t in fig.legends[0].get_texts()] == ["1", "2"]
    finally:
        plt.close(fig)
