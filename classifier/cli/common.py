"""What several commands share: the user-error exit code and JSON-lines output."""

from __future__ import annotations

import json

EXIT_USER_ERROR = 2  # a user error: one `error: ...` line on stderr


def print_results(results: list[dict]) -> int:
    """One JSON line per input; exit 2 when any of them carries an error."""
    for r in results:
        print(json.dumps(r))
    return EXIT_USER_ERROR if any("error" in r for r in results) else 0
