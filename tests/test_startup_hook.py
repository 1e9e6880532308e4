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
