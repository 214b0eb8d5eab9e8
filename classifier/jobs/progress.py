"""How a run's progress reads, the same on the Train page and in `python -m classifier jobs status`: the phase with
its own progress and time left, and in training epoch, step, loss, images/s and the run's time left.

    >>> describe({"phase": "features", "phase_done": 32, "phase_total": 244, "phase_seconds": 8.0})
    'Computing features (once: later runs, the LR finder and search trials reuse them) · 32/244 · about 53s left'
"""

from __future__ import annotations

from typing import Any

PHASES = {
    "setup": "Preparing",
    "cache": "Decoding images (once: later epochs and runs read the cache)",
    "features": "Computing features (once: later runs, the LR finder and search trials reuse them)",
    "train": "Training",
    "val": "Validating",
    "final": "Final evaluation of the best epoch",
}


def duration(seconds: float | None) -> str:
    """'1h 02m', '3m 05s', '12s'; '—' when unknown."""
    if seconds is None or seconds < 0:
        return "—"
    s = int(round(seconds))
    if s >= 3600:
        return f"{s // 3600}h {s % 3600 // 60:02d}m"
    return f"{s // 60}m {s % 60:02d}s" if s >= 60 else f"{s}s"


def phase_eta(p: dict[str, Any]) -> float | None:
    """Seconds left in the current phase, from its measured pace (done items over the seconds it has run)."""
    done, total, seconds = p.get("phase_done") or 0, p.get("phase_total") or 0, p.get("phase_seconds")
    if not (done and total and seconds) or done >= total:
        return None
    return seconds / done * (total - done)


def describe(p: dict[str, Any]) -> str:
    """One line: the phase with its own progress and time left; in training, epoch, step, loss and images/s."""
    phase = p.get("phase")
    if phase in ("cache", "features", "setup", "final") or (phase is None and not p.get("step")):
        label, done, total = PHASES.get(phase or "setup", "Preparing"), p.get("phase_done"), p.get("phase_total")
        left = phase_eta(p)
        return label + (f" · {done}/{total}" if total else "") + (f" · about {duration(left)} left" if left else "")
    parts = [PHASES.get(phase, "Training")]
    if p.get("epochs"):
        parts.append(f"epoch {p.get('epoch', 0)}/{p['epochs']}")
    if p.get("total_steps") and phase == "train":
        parts.append(f"step {p.get('step', 0)}/{p['total_steps']}")
    if p.get("loss") is not None:
        parts.append(f"loss {p['loss']:.3f}")
    if p.get("images_per_sec"):
        parts.append(f"{p['images_per_sec']:.1f} images/s")
    if p.get("eta_seconds") is not None:
        parts.append(f"about {duration(p['eta_seconds'])} left")
    return " · ".join(parts)
