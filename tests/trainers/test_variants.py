import pytest
import torch

import nnunet_ext.trainers as trainers
from nnunet_ext.trainers.timing import StepTimingMixin, read_step_times
from nnunet_ext.trainers.variants import make_variant, parse_variant, variant_name
from tests.trainers.fake_trainer import FakeTrainer


@pytest.mark.parametrize("name, expected", [
    ("UNETRPPTrainer_5epochs", ("UNETRPPTrainer", 5, None)),
    ("UNETRPPTrainer_1epoch", ("UNETRPPTrainer", 1, None)),
    ("SegMambaTrainer_2epochs_30iters", ("SegMambaTrainer", 2, 30)),
    ("nnUNetTrainer_3epochs_7iters", ("nnUNetTrainer", 3, 7)),
    ("UNETRPPTrainer", None), ("UNETRPPTrainer_0epochs", None), ("X_5epochs_0iters", None),
    ("UNETRPPTrainer_fiveepochs", None),
])
def test_parse_variant(name, expected):
    assert parse_variant(name) == expected


@pytest.mark.parametrize("epochs, iters", [(1, None), (1, 2), (5, None), (10, 15)])
def test_variant_name_round_trips(epochs, iters):
    name = variant_name("MISSUTrainer", epochs, iters)
    assert parse_variant(name) == ("MISSUTrainer", epochs, iters)
    assert ("epochs" in name) == (epochs != 1)


def test_variant_classes_are_cached_subclasses():
    cls = trainers.SmallUNetTrainer_3epochs_7iters
    assert cls is trainers.SmallUNetTrainer_3epochs_7iters
    assert issubclass(cls, trainers.SmallUNetTrainer) and cls.__name__ == "SmallUNetTrainer_3epochs_7iters"
    assert issubclass(trainers.nnUNetTrainer_2epochs, trainers.nnUNetTrainer)
    for bad in ("NotATrainer_2epochs", "AbstractExtTrainer_1epoch", "SmallUNetTrainer_x"):
        assert not hasattr(trainers, bad)


def test_variant_sets_epochs_and_iterations(tiny_dataset, monkeypatch):
    import json

    for var in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        monkeypatch.setenv(var, tiny_dataset.env[var])  # nnU-Net 2.8 reads them when it needs them

    plans = dict(tiny_dataset.plans(), continue_training=False)  # nnUNetv2_train inserts this key
    ds_json = json.loads((tiny_dataset.plans_file.parent / "dataset.json").read_text())
    t = trainers.SmallUNetTrainer_3epochs_20iters(plans, "3d_fullres", 0, ds_json, torch.device("cpu"))
    assert (t.num_epochs, t.num_iterations_per_epoch, t.num_val_iterations_per_epoch) == (3, 20, 4)
    # nnU-Net stores the init args for checkpoints: our signature must be the stock one
    assert set(t.my_init_kwargs) == {"plans", "configuration", "fold", "dataset_json", "device"}
    t.initialize()
    assert t._get_deep_supervision_scales() == t.network.deep_supervision_scales
    t.set_deep_supervision_enabled(False)
    assert t.network(torch.zeros(1, 1, *plans["configurations"]["3d_fullres"]["patch_size"])).dim() == 5


def test_variant_of_any_trainer_is_timed(tmp_path):
    cls = make_variant(FakeTrainer, "FakeTrainer_2epochs_3iters", 2, 3, __name__)
    assert issubclass(cls, StepTimingMixin) and issubclass(cls, FakeTrainer)
    t = cls({}, "3d_fullres", 0, {}, torch.device("cpu"))
    t.output_folder = str(tmp_path)
    assert (t.num_epochs, t.num_iterations_per_epoch, t.num_val_iterations_per_epoch) == (2, 3, 1)
    for _ in range(2):
        for i in range(3):
            assert t.train_step({"x": i}) == {"loss": 2 * i}  # the base step runs unchanged
        t.on_epoch_end()
    t.on_train_end()
    assert t.ended and read_step_times(tmp_path)["num_timed_iterations"] == 3
