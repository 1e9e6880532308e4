"""StepTimingMixin on its own: train steps timed, each epoch's median logged, the record written."""

import json
import statistics

from nnunet_ext.trainers.timing import TIMING_FILE, StepTimingMixin, read_step_times, write_step_times
from tests.trainers.fake_trainer import FakeTrainer


class TimedTrainer(StepTimingMixin, FakeTrainer):
    pass


def test_times_train_steps_and_writes_the_record(tmp_path):
    t = TimedTrainer({}, "3d_fullres", 0, {})
    t.output_folder = str(tmp_path)
    for _ in range(2):
        for i in range(3):
            assert t.train_step({"x": i}) == {"loss": 2 * i}  # the base step runs unchanged
        t.on_epoch_end()
    t.on_train_end()
    assert t.ended and t.current_epoch == 2
    assert [m.split(" s/")[1] for m in t.log if m.startswith("Train step:")] == ["iteration (median of 3)"] * 2
    rec = read_step_times(tmp_path)
    assert rec == json.loads((tmp_path / TIMING_FILE).read_text()) and TIMING_FILE == "train_step_seconds.json"
    assert set(rec) == {"device", "median_s_per_iteration", "num_timed_iterations", "seconds_by_epoch"}
    by_epoch = rec["seconds_by_epoch"]
    assert rec["device"] == "cpu" and sorted(by_epoch) == ["0", "1"]
    assert all(len(v) == 3 and min(v) > 0 for v in by_epoch.values())
    # warm-up epoch excluded from the summary
    assert rec["median_s_per_iteration"] == statistics.median(by_epoch["1"]) and rec["num_timed_iterations"] == 3
    assert read_step_times(tmp_path / "missing") is None


def test_only_rank_0_writes_and_untimed_runs_write_nothing(tmp_path):
    t = TimedTrainer({}, "3d_fullres", 0, {})
    t.output_folder, t.local_rank = str(tmp_path), 1
    t.train_step({"x": 1})
    t.on_epoch_end()
    t.on_train_end()
    idle = TimedTrainer({}, "3d_fullres", 0, {})
    idle.output_folder = str(tmp_path)
    idle.on_epoch_end()
    idle.on_train_end()
    assert idle.log == [] and list(tmp_path.iterdir()) == []


def test_step_times_of_a_single_epoch_skip_the_first_step(tmp_path):
    rec = write_step_times(tmp_path, {0: [9.0, 1.0, 2.0, 3.0]}, "cpu")
    assert rec["median_s_per_iteration"] == 2.0 and rec["num_timed_iterations"] == 3
    assert write_step_times(tmp_path, {4: [5.0]}, "cpu")["median_s_per_iteration"] == 5.0
