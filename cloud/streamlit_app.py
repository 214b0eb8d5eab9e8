"""Entry point for Streamlit Community Cloud: the same app as ../app.py, started from this folder so that Cloud
installs `cloud/requirements.txt` (CPU-only PyTorch) instead of the root requirements.txt (Cloud reads the dependency
file of the entry point's folder first). `app_pages` here is a link to ../app_pages: page paths are relative to the
entry point's folder. See docs/deploy.md."""

import runpy
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # the classifier and ui packages live beside this folder
runpy.run_path(str(ROOT / "app.py"), run_name="__main__")
