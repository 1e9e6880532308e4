"""``nnunet-ext benchmark`` (per-patch table): options reach the measurement, the table and JSON come out."""

import json

import pytest

from nnunet_ext.bench.networks import NNUNET
from nnunet_ext.cli.main import main


def _row(arch, train_s, **extra):
    return {"arch": arch, "params": 5e6, "macs": 16e9, "train_s": train_s, "infer_s": 0.2, "peak_train_mib": 500.0,
            "peak_infer_mib": 100.0, "device": "cpu", "device_name": "test-cpu", "threads": 2, **extra}


@pytest.fixture
def fake_benchmark(monkeypatch):
    import nnunet_ext.bench.networks as networks

    seen = {}

    def fake(archs, **kw):
        seen.update(kw, archs=archs)
        kw["on_row"](0, 2, _row(NNUNET, 1.0))
        return [_row(NNUNET, 1.0), {"arch": "segmamba", "error": "timed out"}, _row("missu", 0.5)]

    monkeypatch.setattr(networks, "benchmark", fake)
    return seen


def test_table_has_the_plan_header_ratios_and_error_rows(fake_benchmark, capsys):
    assert main(["benchmark", "--patch", "40", "48", "40", "--spacing", "4", "4", "4", "--batch", "2",
                 "--num-classes", "3", "--threads", "2", "--archs", "missu", "segmamba"]) == 0
    assert fake_benchmark["archs"] == ["missu", "segmamba"] and fake_benchmark["threads"] == 2
    assert fake_benchmark["patch_size"] == [40, 48, 40] and fake_benchmark["batch"] == 2
    captured = capsys.readouterr()
    assert "[1/2] nnU-Net (PlainConvUNet): train 1 s/iter" in captured.err
    out = captured.out.splitlines()
    assert out[0].startswith("patch [40, 48, 40], spacing [4.0, 4.0, 4.0], batch 2, 1 input channel(s), 3 classes, "
                             "test-cpu, 2 threads")
    assert out[-1].startswith("| missu | 5.00 (1.00×) | 16.00 (1.00×) | 0.5 (0.50×) |")
    assert out[-2].endswith("| error: timed out |")


def test_json_holds_the_config_and_rows(fake_benchmark, capsys):
    assert main(["benchmark", "--json", "--archs", "missu"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["config"]["patch_size"] == [64, 64, 64] and data["config"]["repeats"] == 3
    assert [r["arch"] for r in data["rows"]] == [NNUNET, "segmamba", "missu"]
