"""Structure figures of the code base: lines per module, the longest functions, and the import graph's levels.

    python bench/structure.py            # a table for docs/architecture.md
    python bench/structure.py --json     # the same as JSON

The import graph is built from the source with `classifier.devtools.import_graph` (imports inside functions
count, as they do for the cycle test in tests/test_layers.py). A level is the length of the longest import
chain below a module: level 0 imports no other project module, level k imports only modules below k.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from classifier.devtools import function_lengths, import_graph, levels  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--top", type=int, default=10, help="how many of the longest functions to list")
    a = ap.parse_args()
    packages = ("classifier", "ui", "app_pages")
    files = sorted(f for pkg in packages for f in (ROOT / pkg).rglob("*.py"))
    lines = {str(f.relative_to(ROOT)): len(f.read_text(encoding="utf-8").splitlines()) for f in files}
    funcs = sorted(function_lengths(ROOT, packages), key=lambda t: -t[1])[: a.top]
    graph = import_graph(ROOT, ("classifier", "ui"))
    lv = levels(graph)
    by_level: dict[int, list[str]] = {}
    for mod, k in sorted(lv.items()):
        by_level.setdefault(k, []).append(mod)
    out = {
        "total_lines": sum(lines.values()),
        "modules": len(lines),
        "lines": lines,
        "longest_functions": [{"function": n, "lines": k} for n, k, _ in funcs],
        "levels": {str(k): v for k, v in sorted(by_level.items())},
    }
    if a.json:
        print(json.dumps(out, indent=2))
        return 0
    print(f"{out['modules']} modules, {out['total_lines']} lines")
    for name, n in sorted(lines.items(), key=lambda t: -t[1]):
        print(f"{n:6d}  {name}")
    print("\nlongest functions")
    for f in out["longest_functions"]:
        print(f"{f['lines']:6d}  {f['function']}")
    print("\nimport levels (classifier/ and ui/; a module imports only modules on lower levels)")
    for k, mods in sorted(by_level.items()):
        print(f"{k:3d}  {', '.join(mods)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
