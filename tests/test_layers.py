"""Imports only point down the layers: nothing below ``score_s3prl/superb/`` imports from it.

``score_s3prl/*.py``, ``score_s3prl/softdtw/`` and ``downstream_recipes/`` are the lower layers;
the SUPERB runner (``score_s3prl/superb/``) sits on top of them. Read with ``ast``, so imports
inside functions count too.
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


def upward_imports(path: Path) -> list[str]:
    """``file:line: module`` for every import in ``path`` that names ``score_s3prl.superb``."""
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
        found += [f"{path.relative_to(REPO)}:{node.lineno}: {t}" for t in targets
                  if t == TOP or t.startswith(TOP + ".")]
    return found


def lower_layer_files() -> list[Path]:
    files = [p for p in (REPO / "score_s3prl").glob("*.py")]
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
