"""Front ends only call the service: no module under web/ or eagle_index/cli/ imports the store,
the ORM models or SQLAlchemy (at module level or inside a function)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FRONT_ENDS = [ROOT / "web", ROOT / "eagle_index" / "cli"]
FORBIDDEN = ("eagle_index.store", "sqlalchemy")


def _imports(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.append((node.lineno, node.module))
            if node.module == "eagle_index":  # from eagle_index import store
                found += [(node.lineno, f"eagle_index.{alias.name}") for alias in node.names]
    return found


def test_front_ends_import_neither_store_nor_sqlalchemy():
    offenders = []
    for folder in FRONT_ENDS:
        for path in sorted(folder.rglob("*.py")):
            for line, module in _imports(path):
                if any(module == f or module.startswith(f + ".") for f in FORBIDDEN):
                    offenders.append(f"{path.relative_to(ROOT)}:{line} imports {module}")
    assert not offenders, "\n".join(offenders)


def test_the_walk_sees_imports_inside_functions(tmp_path):
    sample = tmp_path / "sample.py"
    sample.write_text("def f():\n    from eagle_index.store import catalog\n    import sqlalchemy.orm\n")
    assert {m for _, m in _imports(sample)} == {"eagle_index.store", "sqlalchemy.orm"}


def test_config_imports_nothing_from_models():
    """`config` is the ground floor: it checks presets and model ids against `eagle_index.model_names`,
    never against `eagle_index.models` (which imports config)."""
    offenders = [f"eagle_index/config.py:{line} imports {module}"
                 for line, module in _imports(ROOT / "eagle_index" / "config.py")
                 if module == "eagle_index.models" or module.startswith("eagle_index.models.")]
    assert not offenders, "\n".join(offenders)
