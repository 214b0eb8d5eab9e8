"""The house's structure, read from the source: no import cycles in classifier/ or ui/ (imports inside functions
count), the package never imports the UI, ui/ never imports the pages, and functions stay short.

The checks themselves are tested on small generated trees first, so a green run means something.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from classifier.devtools import cycles, external_imports, function_lengths, import_graph, levels

ROOT = Path(__file__).resolve().parent.parent
MAX_FUNCTION_LINES = 80  # longer only with a docstring that says why ("Long because ...")
UI_NAMES = ("streamlit", "ui", "app_pages")


def write_tree(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


def upward_imports(root: Path) -> list[str]:
    """`classifier` importing the UI or Streamlit; `ui` importing the pages."""
    bad = []
    for mod, names in external_imports(root, ("classifier",)).items():
        bad += [f"{mod} imports {n}" for n in sorted(names & set(UI_NAMES))]
    for mod, names in external_imports(root, ("ui",)).items():
        bad += [f"{mod} imports app_pages" for n in names if n == "app_pages"]
    return bad


def long_functions(root: Path, packages=("classifier", "ui", "app_pages")) -> list[str]:
    return [
        f"{name} ({n} lines)"
        for name, n, doc in function_lengths(root, packages)
        if n > MAX_FUNCTION_LINES and "long because" not in (doc or "").lower()
    ]


# --- the checks catch what they should -----------------------------------------------------------------------------


def test_checks_find_a_cycle_hidden_in_a_function(tmp_path):
    root = write_tree(
        tmp_path,
        {
            "classifier/__init__.py": "",
            "classifier/a.py": "from classifier.b import g\n",
            "classifier/b.py": "def g():\n    from classifier import a\n",
            "classifier/c.py": "import classifier.a\n",
            "ui/__init__.py": "",
        },
    )
    graph = import_graph(root, ("classifier", "ui"))
    assert cycles(graph) == [["classifier.a", "classifier.b"]]
    assert levels(graph)["classifier.c"] == -1  # no levels above a cycle


def test_checks_find_upward_imports_and_long_functions(tmp_path):
    body = "".join(f"    x{i} = {i}\n" for i in range(MAX_FUNCTION_LINES))
    root = write_tree(
        tmp_path,
        {
            "classifier/__init__.py": "",
            "classifier/a.py": f"def f():\n    import streamlit as st\n{body}",
            "classifier/b.py": f'def g():\n    """Long because it is a table."""\n{body}',
            "ui/__init__.py": "",
            "ui/w.py": "from app_pages import train\n",
            "app_pages/__init__.py": "",
        },
    )
    assert upward_imports(root) == ["classifier.a imports streamlit", "ui.w imports app_pages"]
    assert long_functions(root) == [f"classifier.a.f ({MAX_FUNCTION_LINES + 2} lines)"]


def test_levels_of_a_chain(tmp_path):
    root = write_tree(
        tmp_path,
        {
            "classifier/__init__.py": "",
            "classifier/low.py": "import os\n",
            "classifier/mid.py": "from classifier import low\n",
            "classifier/top.py": "def f():\n    from classifier.mid import x\n",
            "ui/__init__.py": "",
        },
    )
    lv = levels(import_graph(root, ("classifier", "ui")))
    assert (lv["classifier.low"], lv["classifier.mid"], lv["classifier.top"]) == (0, 1, 2)


# --- the project ---------------------------------------------------------------------------------------------------


def test_no_import_cycles():
    found = cycles(import_graph(ROOT, ("classifier", "ui")))
    assert not found, "import cycles: " + "; ".join(" <-> ".join(c) for c in found)


def test_package_never_imports_the_ui_and_ui_never_imports_pages():
    assert upward_imports(ROOT) == []


@pytest.mark.parametrize("package", ["classifier", "ui", "app_pages"])
def test_functions_are_short_or_say_why(package):
    assert long_functions(ROOT, (package,)) == []


@pytest.mark.parametrize("package", ["classifier.training", "classifier.explain", "classifier.quality"])
def test_lazy_packages_declare_their_names_statically(package):
    """A package whose names load on first use also imports them under TYPE_CHECKING (so the import graph above sees
    its dependencies) and lists them in __all__: all three lists the same, and every name loads."""
    import ast
    import importlib

    pkg = importlib.import_module(package)
    tree = ast.parse(Path(pkg.__file__).read_text(encoding="utf-8"))
    static = {
        a.name: node.module.rsplit(".", 1)[1]
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith(package + ".")
        for a in node.names
    }
    assert static == pkg._OWNER
    assert sorted(pkg.__all__) == sorted(pkg._OWNER)
    assert all(getattr(pkg, name) is not None for name in pkg.__all__)


# Quoted run-file names that are not the run folder's: a DDP launch's temporary request, the Hub cache's file names,
# and the download bundle's own standalone predict script (it cannot import the package).
NOT_THE_RUN_FOLDER = {
    ("classifier/training/run.py", "config.json"),
    ("classifier/models/weights.py", "model.safetensors"),
    ("classifier/bundle_predict.py", "config.json"),
}


def test_only_rundir_spells_a_run_file_name():
    from classifier import rundir

    names = [rundir.CONFIG, rundir.WEIGHTS, rundir.METRICS, rundir.HISTORY, rundir.SPLIT, rundir.VAL_PREDICTIONS,
             rundir.RESUME, rundir.ENSEMBLE, rundir.PROGRESS]  # fmt: skip
    found = []
    for folder in ("classifier", "ui", "app_pages"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            rel = path.relative_to(ROOT).as_posix()
            if rel == "classifier/rundir.py":
                continue
            text = path.read_text(encoding="utf-8")
            found += [(rel, n) for n in names if (f'"{n}"' in text or f"'{n}'" in text)]
    assert [f for f in found if f not in NOT_THE_RUN_FOLDER] == []
