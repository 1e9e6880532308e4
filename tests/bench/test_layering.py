"""Who may import measuring: bench imports the layers it measures (and planning); only the CLI imports bench;
planning imports the network layers and trainers, only the CLI and bench import planning;
ops imports nothing of ours outside ops, evaluation nothing but nnunet_ext.io; nothing imports the CLI.
And no module imports or calls another package's private (``_``-prefixed) modules or names."""

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
                                                            "nnunet_ext.architectures", "nnunet_ext.trainers",
                                                            "nnunet_ext.planning"):
            bad.append((where, name))
    assert bad == []


def test_the_check_sees_imports():
    found = set(_imports())
    assert ("nnunet_ext.cli", "nnunet_ext.bench.networks.NNUNET") in found
    assert ("nnunet_ext.bench", "nnunet_ext.architectures.PlanSpec") in found
    assert ("nnunet_ext.planning", "nnunet_ext.trainers.AbstractExtTrainer") in found or \
        any(w == "nnunet_ext.planning" and n.startswith("nnunet_ext.architectures") for w, n in found)


def _private(dotted: str) -> bool:
    """A dotted name with a ``_``-prefixed part after ``nnunet_ext`` (dunders such as ``__all__`` are public)."""
    return any(part.startswith("_") and not part.startswith("__") for part in dotted.split(".")[1:])


def _package(dotted: str) -> str:
    """``nnunet_ext.ops.selective_scan._dispatch`` -> ``nnunet_ext.ops``: the package that owns a name."""
    return ".".join(dotted.split(".")[:2])


def _reach_ins(parts: tuple, source: str):
    """(module, what) for each import of, and each attribute read through a name bound to, another
    package's private name in the module ``parts`` (``("nnunet_ext", "bench", "scan")``) of ``source``."""
    module, here = ".".join(parts), ".".join(parts[:2])
    tree = ast.parse(source)
    bound = {}  # local name -> the nnunet_ext module or name it stands for
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [(a.asname or a.name, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            pkg = parts[:-1]
            base = ".".join(pkg[:len(pkg) - node.level + 1]) if node.level else ""
            origin = ".".join(filter(None, [base, node.module]))
            names = [(a.asname or a.name, f"{origin}.{a.name}") for a in node.names]
        else:
            continue
        for local, name in names:
            if name.startswith("nnunet_ext"):
                bound[local] = name
                if _package(name) != here and _private(name):
                    yield module, name
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in bound:
            name = f"{bound[node.value.id]}.{node.attr}"
            if _package(name) != here and _private(name):
                yield module, name


def test_no_module_reaches_into_another_packages_private_names():
    found = {hit for path in PACKAGE.rglob("*.py")
             for hit in _reach_ins(path.relative_to(PACKAGE.parent).with_suffix("").parts, path.read_text())}
    assert sorted(found) == []


def test_the_private_check_sees_reach_ins():
    source = ("from nnunet_ext.ops import backends\nfrom nnunet_ext.ops.scan_fused import _work_groups\n"
              "from . import _local\nbackends._probe_fused()\nbackends.fused_scan()\n")
    found = set(_reach_ins(("nnunet_ext", "bench", "probe"), source))
    assert found == {("nnunet_ext.bench.probe", "nnunet_ext.ops.scan_fused._work_groups"),
                     ("nnunet_ext.bench.probe", "nnunet_ext.ops.backends._probe_fused")}
