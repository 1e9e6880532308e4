"""Who may import measuring: bench imports the layers it measures (and planning); only the CLI imports bench;
planning imports the network layers and trainers, only the CLI and bench import planning;
ops imports nothing of ours outside ops, evaluation nothing but nnunet_ext.io; nothing imports the CLI."""

import ast
from pathlib import Path

import nnunet_ext

PACKAGE = Path(nnunet_ext.__file__).parent


def _imports():
    """(package of the importing module, imported nnunet_ext module) for every module of nnunet_ext."""
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        here = parts[:-1]                                   # the package a relative import starts from
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = ".".join(here[:len(here) - node.level + 1]) if node.level else ""
                module = ".".join(filter(None, [base, node.module]))
                names = [f"{module}.{a.name}" for a in node.names]
            else:
                continue
            for name in names:
                if name == "nnunet_ext" or name.startswith("nnunet_ext."):
                    yield ".".join(parts[:2]), name


def _layer(name):
    return ".".join(name.split(".")[:2])


def test_measuring_is_its_own_layer():
    bad = []
    for where, name in _imports():
        target = _layer(name)
        if where == target:
            continue
        if target == "nnunet_ext.cli":
            bad.append((where, name))
        elif target == "nnunet_ext.bench" and where != "nnunet_ext.cli":
            bad.append((where, name))
        elif target == "nnunet_ext.planning" and where not in ("nnunet_ext.cli", "nnunet_ext.bench"):
            bad.append((where, name))
        elif where == "nnunet_ext.planning" and target not in ("nnunet_ext.ops", "nnunet_ext.blocks",
                                                               "nnunet_ext.architectures", "nnunet_ext.trainers",
                                                               "nnunet_ext.io"):
            bad.append((where, name))
        elif where == "nnunet_ext.ops":
            bad.append((where, name))
        elif where == "nnunet_ext.evaluation" and target != "nnunet_ext.io":
            bad.append((where, name))
        elif where == "nnunet_ext.bench" and target not in ("nnunet_ext.ops", "nnunet_ext.blocks",
                                                            "nnunet_ext.architectures", "nnunet_ext.planning"):
            bad.append((where, name))
    assert bad == []


def test_the_check_sees_imports():
    found = set(_imports())
    assert ("nnunet_ext.cli", "nnunet_ext.bench.networks.NNUNET") in found
    assert ("nnunet_ext.bench", "nnunet_ext.architectures.PlanSpec") in found
    assert ("nnunet_ext.planning", "nnunet_ext.trainers.AbstractExtTrainer") in found or \
        any(w == "nnunet_ext.planning" and n.startswith("nnunet_ext.architectures") for w, n in found)
