"""Imports only point down the layers, and only the checkpoints package opens checkpoint files.

``score_s3prl/*.py``, ``score_s3prl/checkpoints/``, ``score_s3prl/softdtw/`` and
``downstream_recipes/`` are the lower layers; the SUPERB runner (``score_s3prl/superb/``) sits on
top of them. Among the lower layers, ``score_s3prl/checkpoints/`` sits low: above ``errors``,
``fileio`` and ``hashing`` (its only imports from the project), below ``model``, ``train``,
``hub`` and the commands that use it. Read with ``ast``, so imports inside functions count too.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TOP = "score_s3prl.superb"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_names(path: Path) -> list[tuple[int, str]]:
    """(line, dotted name) for every module and imported name in ``path``, relative ones resolved."""
    module = _module_name(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolve against this module's package
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([node.module] if node.module else []))
            # `from score_s3prl import superb` names the package as an attribute
            targets = [base] + [f"{base}.{alias.name}" for alias in node.names]
        else:
            continue
        found += [(node.lineno, t) for t in targets]
    return found


def _within(name: str, module: str) -> bool:
    return name == module or name.startswith(module + ".")


def upward_imports(path: Path) -> list[str]:
    """``file:line: module`` for every import in ``path`` that names ``score_s3prl.superb``."""
    return [f"{path.relative_to(REPO)}:{line}: {t}" for line, t in imported_names(path) if _within(t, TOP)]


def lower_layer_files() -> list[Path]:
    files = [p for p in (REPO / "score_s3prl").glob("*.py")]
    files += (REPO / "score_s3prl" / "checkpoints").glob("*.py")
    files += (REPO / "score_s3prl" / "softdtw").rglob("*.py")
    files += (REPO / "downstream_recipes").rglob("*.py")
    return sorted(files)


def test_lower_layers_never_import_the_superb_runner():
    assert len(lower_layer_files()) > 10  # the walk found the source
    bad = [hit for path in lower_layer_files() for hit in upward_imports(path)]
    assert not bad, "imports pointing up into score_s3prl/superb/:\n" + "\n".join(bad)


@pytest.mark.parametrize("source", [
    "from score_s3prl.superb.prepare import split_files\n",
    "import score_s3prl.superb.runner\n",
    "from score_s3prl import superb\n",
    "def f():\n    from .superb import mtwv\n",
])
def test_the_check_sees_each_form_of_upward_import(tmp_path, monkeypatch, source):
    fake = REPO / "score_s3prl" / "_layer_probe.py"
    monkeypatch.setattr(Path, "read_text", lambda self, encoding=None: source if self == fake else "")
    assert upward_imports(fake), source
    assert not upward_imports(REPO / "score_s3prl" / "_other.py")


# ----------------------------------------------------------------------------- checkpoints floor

CHECKPOINTS = "score_s3prl.checkpoints"
# What the checkpoints package may import from the project: the modules beneath it, and the
# package root (only for ``__version__``, in the downloader's User-Agent).
BENEATH_CHECKPOINTS = ("score_s3prl.errors", "score_s3prl.fileio", "score_s3prl.hashing")


def project_imports_outside(path: Path, allowed: tuple[str, ...]) -> list[str]:
    """``file:line: name`` for each import of a ``score_s3prl`` module not within ``allowed``."""
    return [f"{path.relative_to(REPO)}:{line}: {t}" for line, t in imported_names(path)
            if _within(t, "score_s3prl") and t not in ("score_s3prl", "score_s3prl.__version__")
            and not any(_within(t, ok) for ok in allowed)]


def test_the_checkpoints_package_imports_only_what_sits_beneath_it():
    files = sorted((REPO / "score_s3prl" / "checkpoints").glob("*.py"))
    assert len(files) >= 10  # the package's modules were found
    bad = [hit for path in files for hit in project_imports_outside(path, (CHECKPOINTS, *BENEATH_CHECKPOINTS))]
    assert not bad, "the checkpoints package imports from above it:\n" + "\n".join(bad)


def test_the_modules_beneath_checkpoints_import_only_each_other():
    files = [REPO / (name.replace(".", "/") + ".py") for name in BENEATH_CHECKPOINTS]
    bad = [hit for path in files for hit in project_imports_outside(path, BENEATH_CHECKPOINTS)]
    assert not bad, "a module beneath the checkpoints package imports from above it:\n" + "\n".join(bad)


@pytest.mark.parametrize("source", [
    "from ..model import build\n",
    "def f():\n    from .. import train\n",
    "import score_s3prl.hub\n",
])
def test_the_floor_check_sees_each_form_of_import_from_above(monkeypatch, source):
    fake = REPO / "score_s3prl" / "checkpoints" / "_layer_probe.py"
    monkeypatch.setattr(Path, "read_text", lambda self, encoding=None: source if self == fake else "")
    assert project_imports_outside(fake, (CHECKPOINTS, *BENEATH_CHECKPOINTS)), source


# ----------------------------------------------------------------------------- who opens checkpoints

# Loaders that unpickle a file (or read a weights file) and so belong in score_s3prl/checkpoints/.
UNPICKLERS = {"torch.load", "torch.serialization.load", "pickle.load", "pickle.loads", "pickle.Unpickler",
              "_pickle.load", "_pickle.loads", "_pickle.Unpickler", "dill.load", "dill.loads", "joblib.load"}
SAFETENSORS_LOADERS = ("load", "load_file", "safe_open")


def checkpoint_loads(path: Path) -> list[str]:
    """``file:line: name`` for each use of a checkpoint loader in ``path``: ``torch.load``,
    ``pickle.load``/``Unpickler`` and the like, by attribute or by ``from`` import, and any
    of safetensors' loaders (``load``, ``load_file``, ``safe_open``, from any of its modules)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    aliases: dict[str, str] = {}  # local name -> module: `import pickle as pk` binds pk to pickle
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.asname:
                    aliases[alias.asname] = alias.name
    found = []
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names = [f"{node.module}.{alias.name}" for alias in node.names]
        elif isinstance(node, ast.Attribute):
            parts, value = [node.attr], node.value
            while isinstance(value, ast.Attribute):
                parts.append(value.attr)
                value = value.value
            if isinstance(value, ast.Name):
                names = [".".join([aliases.get(value.id, value.id), *reversed(parts)])]
        for name in names:
            module, _, attr = name.rpartition(".")
            if name in UNPICKLERS or (_within(module, "safetensors") and attr in SAFETENSORS_LOADERS):
                found.append(f"{path.relative_to(REPO)}:{node.lineno}: {name}")
    return found


def test_only_the_checkpoints_package_opens_checkpoints():
    package = REPO / "score_s3prl"
    files = [p for p in sorted(package.rglob("*.py")) if (package / "checkpoints") not in p.parents]
    assert len(files) > 20 and any(p.name == "export.py" for p in files)
    bad = [hit for path in files for hit in checkpoint_loads(path)]
    assert not bad, ("checkpoint loading outside score_s3prl/checkpoints/ (use checkpoints.safeload):\n"
                     + "\n".join(bad))
    inside = [hit for path in sorted((package / "checkpoints").glob("*.py")) for hit in checkpoint_loads(path)]
    assert any("torch.load" in hit for hit in inside)  # the check does see the package's own loads


@pytest.mark.parametrize("source, is_load", [
    ("import torch\nstate = torch.load(path, weights_only=True)\n", True),
    ("import torch as T\ndef f(p):\n    return T.load(p)\n", True),
    ("from torch import load\n", True),
    ("import torch.serialization\ntorch.serialization.load(p)\n", True),
    ("import pickle\npickle.load(f)\n", True),
    ("import pickle as pk\nclass U(pk.Unpickler):\n    pass\n", True),
    ("from pickle import Unpickler\n", True),
    ("from safetensors.torch import load_file\n", True),
    ("def f(p):\n    import safetensors.torch\n    return safetensors.torch.load_file(p)\n", True),
    ("from safetensors import safe_open\n", True),
    # writers and loads of other things pass
    ("import torch\ntorch.save(state, path)\n", False),
    ("from safetensors.torch import save_file\n", False),
    ("import pickle\npickle.dumps(x)\n", False),
    ("import json\njson.load(f)\n", False),
])
def test_the_load_check_sees_each_form_and_only_loads(monkeypatch, source, is_load):
    fake = REPO / "score_s3prl" / "_load_probe.py"
    monkeypatch.setattr(Path, "read_text", lambda self, encoding=None: source if self == fake else "")
    assert bool(checkpoint_loads(fake)) == is_load, source
