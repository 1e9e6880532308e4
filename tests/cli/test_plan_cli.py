"""``nnunet-ext plan``: bad arguments stop with one line and write nothing; written plans train."""

import json
import sys

import pytest

from tests.nnunet_cli import DATASET_ID, clean_env, run


def _env(root):
    return clean_env(root, nnUNet_n_proc_DA="1")  # 0 crashes nnU-Net 2.8.1's stock planner


def _plan(root, *args, check=True):
    return run([sys.executable, "-m", "nnunet_ext.cli.main", "plan", *args], _env(root), check=check)


def _fabricate(root):
    run([sys.executable, "-m", "nnunet_ext.planning.example", "--root", str(root), "--fabricate-only"], _env(root))


def _one_line_error(p, *words):
    assert p.returncode != 0
    lines = [line for line in p.stderr.strip().splitlines() if "Warning" not in line and line.strip()]
    assert len(lines) == 1 and lines[0].startswith("nnunet-ext plan:"), p.stderr
    for w in words:
        assert w in lines[0], lines[0]


def _files(folder):
    return sorted(str(p) for p in folder.rglob("*")) if folder.exists() else []


@pytest.mark.parametrize("args, words", [
    (["-d", "990", "--trainer", "NoSuchTrainer"], ["unknown trainer", "--trainer"]),
    (["-d", "990", "--trainer", "SmallUNetTrainer", "--gpu-memory", "0"], ["--gpu-memory", "> 0"]),
    (["-d", "777", "--trainer", "SmallUNetTrainer"], ["no dataset", "-d"]),
])
def test_bad_arguments_name_the_fix_and_write_nothing(tmp_path, args, words):
    _fabricate(tmp_path)
    before = _files(tmp_path)
    _one_line_error(_plan(tmp_path, *args, check=False), *words)
    assert _files(tmp_path) == before


def test_missing_fingerprint_and_plans(tmp_path):
    _fabricate(tmp_path)
    pre = tmp_path / "preprocessed" / "Dataset990_BraTSLike"
    (pre / "nnUNetPlans.json").unlink()
    _one_line_error(_plan(tmp_path, "-d", "990", "--trainer", "SmallUNetTrainer", check=False),
                    "nnUNetPlans.json", "nnUNetv2_plan_experiment")
    (pre / "dataset_fingerprint.json").unlink()
    _one_line_error(_plan(tmp_path, "-d", "990", "--trainer", "SmallUNetTrainer", check=False),
                    "nnUNetv2_extract_fingerprint")
    assert sorted(p.name for p in pre.iterdir()) == ["dataset.json"]


def test_too_small_a_target_names_the_one_that_fits(tmp_path):
    _fabricate(tmp_path)
    p = _plan(tmp_path, "-d", "990", "--trainer", "SmallUNetTrainer", "--gpu-memory", "0.00001", check=False)
    _one_line_error(p, "too small", "--gpu-memory")
    needed = float(p.stderr.split("Pass --gpu-memory ")[1].split()[0])
    assert not list((tmp_path / "preprocessed").rglob("*SmallUNetTrainer*"))
    ok = json.loads(_plan(tmp_path, "-d", "990", "--trainer", "SmallUNetTrainer", "--gpu-memory", str(needed),
                          "--json").stdout)
    assert ok["rows"][0]["batch_size"] >= 2


def test_plans_load_and_train_with_nnunet(tiny_dataset):
    from nnunet_ext.architectures import PlanSpec, get_architecture

    stock = tiny_dataset.plans_file.read_text()
    trainer = "SmallUNetTrainer_1epoch_2iters"
    out = json.loads(_plan(tiny_dataset.root, "-d", str(DATASET_ID), "--trainer", trainer,
                           "--gpu-memory", "2", "0.5", "--json").stdout)
    assert tiny_dataset.plans_file.read_text() == stock       # stock plans untouched
    by_target = {r["gpu_memory_gb"]: r for r in out["rows"]}
    big, small = by_target[2.0], by_target[0.5]
    voxels = lambda r: r["batch_size"] * __import__("math").prod(r["patch_size"])  # noqa: E731
    assert voxels(small) <= voxels(big)
    assert small["estimate_gib"] <= small["budget_gib"] and big["estimate_gib"] <= big["budget_gib"]
    for r in out["rows"]:
        plans = json.loads(open(r["file"]).read())
        cfg = plans["configurations"]["3d_fullres"]
        assert cfg["data_identifier"] == tiny_dataset.plans()["configurations"]["3d_fullres"]["data_identifier"]
        assert cfg["patch_size"] == r["patch_size"] and cfg["batch_size"] == r["batch_size"]
        spec = PlanSpec(cfg["patch_size"], cfg["architecture"]["arch_kwargs"]["strides"], cfg["spacing"])
        divisor = get_architecture("small_unet").divisor(spec)
        assert all(p % d == 0 for p, d in zip(cfg["patch_size"], divisor))
    assert any(f"-tr {trainer} -p {big['plans']}" in line for line in out["next"])
    run(["nnUNetv2_train", str(DATASET_ID), "3d_fullres", "0", "-tr", trainer, "-p", big["plans"], "-device", "cpu"],
        tiny_dataset.env)
    assert (tiny_dataset.output_folder(trainer, plans=big["plans"]) / "fold_0" / "checkpoint_final.pth").is_file()


@pytest.mark.parametrize("args, words", [
    (["--gpu-memory", "8", "8"], ["--gpu-memory gives 8 more than once"]),
    (["--gpu-memory", "nan"], ["--gpu-memory", "> 0", "got nan"]),
    (["--trainer", "SmallUNetTrainer", "SmallUNetTrainer"], ["--trainer names a trainer twice"]),
    (["--headroom", "1.5"], ["--headroom", "got 1.5"]),
])
def test_argument_checks_come_before_the_heavy_imports(tmp_path, args, words):
    """Checked before torch or nnU-Net is imported: one line, in a fraction of a second."""
    code = ("import sys\nfrom nnunet_ext.cli.main import main\ntry:\n    main(sys.argv[1:])\nexcept SystemExit as e:\n"
            "    print(e, file=sys.stderr)\n    sys.exit(sorted(m for m in ('torch', 'nnunetv2') if m in sys.modules) "
            "and 'imported: ' + ' '.join(m for m in ('torch', 'nnunetv2') if m in sys.modules) or 1)")
    p = run([sys.executable, "-c", code, "plan", "-d", "990", "--trainer", "SmallUNetTrainer", *args],
            _env(tmp_path), check=False)
    _one_line_error(p, *words)
    assert "imported" not in p.stderr
    assert _files(tmp_path / "preprocessed") == []
