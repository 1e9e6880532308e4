import os
import subprocess
import sys

from nnunet_ext._startup import DISCOVERY_DIR, register_discovery_path


def test_register_keeps_user_folders_and_is_idempotent():
    env = {"nnUNet_extTrainer": os.pathsep.join(["/my/trainers", "/more"])}
    register_discovery_path(env)
    register_discovery_path(env)
    assert env["nnUNet_extTrainer"].split(os.pathsep) == ["/my/trainers", "/more", DISCOVERY_DIR]


def test_new_interpreter_gets_the_variable_from_the_installed_hook():
    env = {k: v for k, v in os.environ.items() if not k.startswith("nnUNet")}
    code = "import os; print(os.environ['nnUNet_extTrainer'])"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == DISCOVERY_DIR
    env["nnUNet_extTrainer"] = "/user/folder"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip().split(os.pathsep) == ["/user/folder", DISCOVERY_DIR]


def test_discovery_folder_holds_only_the_shim():
    # nnU-Net imports every module of the folder as a top-level module
    mods = sorted(f for f in os.listdir(DISCOVERY_DIR) if f.endswith(".py"))
    assert mods == ["nnunet_ext_trainers.py"]


HOOK = os.path.join(DISCOVERY_DIR, "nnunet_ext.pth")


def _python_without_nnunet_ext() -> str:
    """The interpreter this venv was made from: it has no nnunet_ext installed."""
    exe = os.path.join(sys.base_prefix, "bin", "python3")
    probe = subprocess.run([exe, "-c", "import nnunet_ext"], capture_output=True, text=True, cwd=os.sep)
    assert probe.returncode != 0, "the base interpreter unexpectedly imports nnunet_ext"
    return exe


def test_hook_is_silent_where_nnunet_ext_cannot_be_imported(tmp_path):
    # site-packages of an environment that keeps the hook but lost the package (moved editable checkout)
    site_dir = tmp_path / "site"
    site_dir.mkdir()
    (site_dir / "nnunet_ext.pth").write_text(open(HOOK).read())
    code = f"import os, site; site.addsitedir({str(site_dir)!r}); print(os.environ.get('nnUNet_extTrainer'))"
    env = {k: v for k, v in os.environ.items() if not k.startswith("nnUNet")}
    p = subprocess.run([_python_without_nnunet_ext(), "-c", code], env=env, capture_output=True, text=True,
                       cwd=tmp_path)
    assert p.returncode == 0 and p.stderr == "", p.stderr
    assert p.stdout.strip() == "None"


def test_inherited_variable_without_the_package_gives_one_line_and_trainer_not_found(tmp_path):
    # a child in an environment where `nnunet_ext` is a broken install, with the variable inherited
    shadow = tmp_path / "shadow" / "nnunet_ext"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("")
    env = {k: v for k, v in os.environ.items() if not k.startswith("nnUNet")}
    env.update(PYTHONPATH=str(tmp_path / "shadow"), nnUNet_extTrainer=DISCOVERY_DIR, nnUNet_raw=str(tmp_path),
               nnUNet_preprocessed=str(tmp_path), nnUNet_results=str(tmp_path))
    exe = os.path.join(os.path.dirname(sys.executable), "nnUNetv2_train")
    p = subprocess.run([exe, "901", "3d_fullres", "0", "-tr", "MISSUTrainer"], env=env, capture_output=True,
                       text=True, cwd=tmp_path)
    assert p.returncode != 0
    ours = [line for line in p.stderr.splitlines() if line.startswith("nnunet-ext:")]
    assert len(ours) == 1 and "cannot import nnunet_ext" in ours[0] and "pip install" in ours[0], p.stderr[-2000:]
    assert "ModuleNotFoundError" not in p.stderr and "Error processing line" not in p.stderr
    assert "Could not find requested nnunet trainer MISSUTrainer" in p.stderr
