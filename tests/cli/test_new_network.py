"""A fifth network is one module with its registration, one import line and one trainer line.

A copy of the package gets exactly these three edits (a toy network: the small U-Net's builder under a
new name, registered as a paper network); a fresh interpreter that imports the copy then finds it in
``nnunet-ext trainers``, ``summary``, ``benchmark --archs`` (whose worker is another fresh interpreter),
``plan`` and nnU-Net's own trainer lookup (``nnUNet_extTrainer``)."""

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import nnunet_ext

TOY_MODULE = '''\
"""A toy network for the test: the small U-Net's builder under its own name."""

from nnunet_ext.architectures.plans import plan_strides
from nnunet_ext.architectures.registry import register_architecture
from nnunet_ext.architectures.small_unet import build_small_unet

register_architecture("toy_net", trainer="ToyNetTrainer", title="Toy net", paper="a test, 2026",
                      downsamplings=None, stride_rule=plan_strides)(build_small_unet)
'''

SCRIPT = textwrap.dedent("""
    import contextlib, io, json, os, sys, tempfile
    from nnunet_ext.planning.example import fabricate
    root = tempfile.mkdtemp()
    fabricate(root, input_channels=1, num_classes=2, median_shape=(32, 32, 32), cases=20)  # sets nnU-Net's folders
    import nnunet_ext
    from nnunet_ext.cli.main import main
    from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name
    report = {"package": nnunet_ext.__file__}

    def run(*argv):
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            code = main(list(argv))
        return code, out.getvalue()

    report["trainers"] = run("trainers")
    report["summary"] = run("summary", "--arch", "toy_net", "--patch", "16", "16", "16", "--json")
    report["benchmark"] = run("benchmark", "--archs", "toy_net", "--patch", "16", "16", "16", "--repeats", "1",
                              "--threads", "1", "--json")
    from nnunet_ext.bench.networks import default_architectures
    report["benchmarked_by_default"] = "toy_net" in default_architectures()
    report["plan"] = run("plan", "-d", "990", "-tr", "ToyNetTrainer", "--gpu-memory", "1", "--json")
    with contextlib.redirect_stdout(io.StringIO()):
        cls = recursive_find_trainer_class_by_name("ToyNetTrainer")
    report["lookup"] = [cls.__module__, cls.__name__, cls.arch]
    print("REPORT " + json.dumps(report))
""")


def test_a_fifth_network_is_one_module_one_import_one_trainer_line(tmp_path):
    copy = tmp_path / "nnunet_ext"
    shutil.copytree(Path(nnunet_ext.__file__).parent, copy, ignore=shutil.ignore_patterns("__pycache__"))
    (copy / "architectures" / "toy_net.py").write_text(TOY_MODULE)
    with open(copy / "architectures" / "__init__.py", "a") as f:
        f.write("from nnunet_ext.architectures import toy_net  # noqa: F401,E402\n")
    with open(copy / "trainers" / "networks.py", "a") as f:
        f.write("\n\nclass ToyNetTrainer(AbstractExtTrainer):\n    \"\"\"The toy network.\"\"\"\n")

    env = {k: v for k, v in os.environ.items() if not k.startswith("nnUNet")}
    env.update(PYTHONPATH=str(tmp_path), nnUNet_extTrainer=str(copy / "_discovery"), OMP_NUM_THREADS="1")
    p = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, env=env, cwd=tmp_path,
                       timeout=900)
    line = next((ln for ln in p.stdout.splitlines() if ln.startswith("REPORT ")), None)
    assert line, p.stdout[-3000:] + p.stderr[-3000:]
    report = json.loads(line[len("REPORT "):])
    assert report["package"].startswith(str(copy))

    code, out = report["trainers"]
    assert code == 0 and any(ln.startswith("ToyNetTrainer") and "Toy net (--arch toy_net)" in ln
                             for ln in out.splitlines())
    code, out = report["summary"]
    summary = json.loads(out)
    assert code == 0 and summary["arch"] == "toy_net" and summary["params"] > 0
    code, out = report["benchmark"]
    rows = json.loads(out)["rows"]
    assert code == 0 and [r["arch"] for r in rows][1:] == ["toy_net"] and report["benchmarked_by_default"]
    toy = next(r for r in rows if r["arch"] == "toy_net")
    assert "error" not in toy and toy["train_s"] > 0 and toy["params"] == summary["params"]
    code, out = report["plan"]
    planned = json.loads(out)["rows"]
    assert code == 0 and [r["trainer"] for r in planned] == ["ToyNetTrainer"] and "ToyNetTrainer" in out
    assert report["lookup"] == ["nnunet_ext.trainers.networks", "ToyNetTrainer", "toy_net"]
