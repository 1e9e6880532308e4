import pytest
import torch

import nnunet_ext.trainers as trainers
from nnunet_ext.trainers.variants import parse_variant, variant_name


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


class _FakeTrainer:
    """The parts of nnUNetTrainer a variant's timing touches."""

    local_rank = 0

    def __init__(self, plans, configuration, fold, dataset_json, device=torch.device("cpu")):
        self.device, self.current_epoch, self.log, self.ended = device, 0, [], False

    def train_step(self, batch):
        return {"loss": batch["x"] * 2}

    def print_to_log_file(self, *args):
        self.log.append(" ".join(map(str, args)))

    def on_epoch_end(self):
        self.current_epoch += 1

    def on_train_end(self):
        self.ended = True


def test_variant_times_train_steps_and_writes_the_record(tmp_path):
    import json
    import statistics

    from nnunet_ext.trainers.variants import TIMING_FILE, make_variant, read_step_times

    cls = make_variant(_FakeTrainer, "_FakeTrainer_2epochs_3iters", 2, 3, __name__)
    t = cls({}, "3d_fullres", 0, {}, torch.device("cpu"))
    t.output_folder = str(tmp_path)
    assert (t.num_epochs, t.num_iterations_per_epoch, t.num_val_iterations_per_epoch) == (2, 3, 1)
    for _ in range(2):
        for i in range(3):
            assert t.train_step({"x": i}) == {"loss": 2 * i}  # the base step runs unchanged
        t.on_epoch_end()
    t.on_train_end()
    assert t.ended and t.current_epoch == 2
    assert [m.split(" s/")[1] for m in t.log if m.startswith("Train step:")] == ["iteration (median of 3)"] * 2
    rec = read_step_times(tmp_path)
    assert rec == json.loads((tmp_path / TIMING_FILE).read_text())
    by_epoch = rec["seconds_by_epoch"]
    assert sorted(by_epoch) == ["0", "1"] and all(len(v) == 3 and min(v) > 0 for v in by_epoch.values())
    # warm-up epoch excluded from the summary
    assert rec["median_s_per_iteration"] == statistics.median(by_epoch["1"]) and rec["num_timed_iterations"] == 3
    assert read_step_times(tmp_path / "missing") is None


def test_step_times_of_a_single_epoch_skip_the_first_step(tmp_path):
    from nnunet_ext.trainers.variants import write_step_times

    rec = write_step_times(tmp_path, {0: [9.0, 1.0, 2.0, 3.0]}, "cpu")
    assert rec["median_s_per_iteration"] == 2.0 and rec["num_timed_iterations"] == 3
    assert write_step_times(tmp_path, {4: [5.0]}, "cpu")["median_s_per_iteration"] == 5.0
