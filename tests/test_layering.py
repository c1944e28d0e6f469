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


# -- web does web (issue 22 item 6) ------------------------------------------------------------------
# Slides, artifacts and images are opened below web/ (`service.media`, `service.viewer`): a blueprint
# parses, calls the service, caches HTTP-wise and renders.
SLIDE_READERS = ("h5py", "openslide", "PIL", "tifffile", "eagle_index.slides", "eagle_index.formats.h5util",
                 "eagle_index.pipeline")
# The one module below web/ that may spell the API's paths: the HTTP client of that API.
API_CLIENTS = {ROOT / "eagle_index" / "client.py"}


def test_web_opens_no_slide_artifact_or_image():
    offenders = []
    for path in sorted((ROOT / "web").rglob("*.py")):
        for line, module in _imports(path):
            if any(module == f or module.startswith(f + ".") for f in SLIDE_READERS):
                offenders.append(f"{path.relative_to(ROOT)}:{line} imports {module}")
    assert not offenders, "\n".join(offenders)


def _api_urls(path: Path) -> list[tuple[int, str]]:
    """String literals (f-strings too; docstrings and comments are not code) that begin an API path."""
    tree = ast.parse(path.read_text(), filename=str(path))
    skip = {id(node.value) for node in ast.walk(tree)  # docstrings, and the parts of f-strings (seen whole)
            if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant)}
    skip |= {id(part) for node in ast.walk(tree) if isinstance(node, ast.JoinedStr) for part in node.values}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.JoinedStr):
            head = node.values[0] if node.values else None
            text = head.value if isinstance(head, ast.Constant) and isinstance(head.value, str) else ""
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in skip:
            text = node.value
        else:
            continue
        if text.startswith("/api/"):
            found.append((node.lineno, text[:60]))
    return found


def test_only_web_makes_api_urls():
    """Services answer ids and coordinates; `web/` (web/urls.py) alone turns them into URLs."""
    offenders = [f"{path.relative_to(ROOT)}:{line} builds {text!r}"
                 for path in sorted((ROOT / "eagle_index").rglob("*.py")) if path not in API_CLIENTS
                 for line, text in _api_urls(path)]
    assert not offenders, "\n".join(offenders)


def test_the_url_walk_sees_f_strings_and_skips_docstrings(tmp_path):
    sample = tmp_path / "sample.py"
    sample.write_text('"""Serves /api/v1/slides/<id>."""\n\ndef f(i):\n    """GET /api/v1/x."""\n'
                      '    return f"/api/v1/slides/{i}/tile.png", "/api/v1/status", "see /api/v1/x"\n')
    assert [text for _, text in _api_urls(sample)] == ["/api/v1/slides/", "/api/v1/status"]


def test_the_pages_scripts_take_slide_ids_from_the_answers_not_from_urls():
    """The JSON names the tile's slide id next to its URL (pairs: query_slide_id/hit_slide_id, boxes: slide_id)."""
    scripts = sorted((ROOT / "web" / "static" / "js").glob("*.js"))
    offenders = [f"{p.relative_to(ROOT)}: parses a tile or slide URL" for p in scripts
                 if "tile\\.png" in p.read_text() or "\\/slides\\/(" in p.read_text()]
    assert not offenders, "\n".join(offenders)


def _private_uses(path: Path) -> list[tuple[int, str]]:
    """`x._name` where x is not `self`/`cls`: a reach into another object's internals."""
    tree = ast.parse(path.read_text(), filename=str(path))
    return [(node.lineno, ast.unparse(node)) for node in ast.walk(tree)
            if isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__")
            and not (isinstance(node.value, ast.Name) and node.value.id in ("self", "cls"))]


def test_web_calls_no_private_service_method():
    """A blueprint needs a public service method (the cohort preview once called `cohorts._materialise`)."""
    offenders = [f"{path.relative_to(ROOT)}:{line} uses {text}"
                 for path in sorted((ROOT / "web").rglob("*.py")) for line, text in _private_uses(path)]
    assert not offenders, "\n".join(offenders)


def _enqueue_calls(path: Path) -> list[tuple[int, str]]:
    """Calls of a job queue's `enqueue` (`<...>.jobs.enqueue(...)`, `<...>.queue.enqueue(...)`)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    return [(node.lineno, ast.unparse(node.func)) for node in ast.walk(tree)
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "enqueue"
            and isinstance(node.func.value, ast.Attribute) and node.func.value.attr in ("jobs", "queue")]


def test_one_way_into_the_job_queue():
    """The watcher, the backfill, the demo and the API queue slides through eagle_index/ingest/enqueue.py."""
    allowed = {ROOT / "eagle_index" / "ingest" / "enqueue.py"}
    offenders = [f"{path.relative_to(ROOT)}:{line} calls {text}"
                 for folder in (ROOT / "eagle_index", ROOT / "web") for path in sorted(folder.rglob("*.py"))
                 if path not in allowed for line, text in _enqueue_calls(path)]
    assert not offenders, "\n".join(offenders)


TOPIC_SERVICES = ("search", "viewer", "region_search", "cohorts", "probes", "annotations", "media")


def _facade_uses(path: Path) -> list[tuple[int, str]]:
    """Where a module keeps or passes the facade: `self.service`, or (in service.py) `self` as an argument."""
    tree = ast.parse(path.read_text(), filename=str(path))
    found = [(node.lineno, ast.unparse(node)) for node in ast.walk(tree)
             if isinstance(node, ast.Attribute) and node.attr == "service" and isinstance(node.value, ast.Name)
             and node.value.id == "self"]
    if path.name == "service.py":
        found += [(node.lineno, ast.unparse(node)) for node in ast.walk(tree) if isinstance(node, ast.Call)
                  and any(isinstance(arg, ast.Name) and arg.id == "self" for arg in [*node.args, *(k.value for k in node.keywords)])]
    return found


def test_topic_services_get_their_collaborators_not_the_facade():
    """SearchService, ViewerService, RegionSearchService, ... are built with what they use (catalog,
    vector indexes, settings, a sibling, a function) and never call back up into EagleService."""
    paths = [ROOT / "eagle_index" / f"{name}.py" for name in (*TOPIC_SERVICES, "service")]
    offenders = [f"{path.relative_to(ROOT)}:{line} {text}" for path in paths for line, text in _facade_uses(path)]
    assert not offenders, "\n".join(offenders)
