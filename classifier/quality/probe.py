"""Out-of-sample predicted probabilities of a linear probe on frozen features, by K-fold cross-validation.

cleanlab judges a label by how likely a model that never saw that image finds it, so every image's probabilities
come from the head trained on the other K-1 folds. The features are computed once (`frozen_features`); the K heads
are logistic regressions on them and take about a second for hundreds of images.

Choices, measured while building this on hymenoptera (EfficientNet-Lite0 features, 24 of 244 training labels
flipped, 10 seeds, the flipped images counted among the top 24 training images by cleanlab's score;
`bench/quality.py` keeps the final figures):
- features scaled to unit length: mean recall 0.86-0.89 across a range of regularisation strengths, against
  0.81-0.88 for standardised features;
- the regularisation strength chosen per dataset as the one with the lowest cross-validated log loss of the given
  (noisy) labels among `C_GRID`, so nothing is tuned on the true labels: recall 0.83-0.96 per seed.

Multi-label targets (an (n, classes) 0/1 matrix) get one binary head per class (one-vs-rest) and plain shuffled
folds; the probabilities then do not sum to one, which is what cleanlab's multi-label functions expect.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

C_GRID = (0.1, 0.3, 1.0, 3.0, 10.0, 30.0, 100.0)  # inverse regularisation strengths tried, on unit-length features
# Probabilities averaged over this many fold assignments: on hymenoptera with 24 flipped training labels (8 seeds),
# 3 instead of 1 found 0.849 instead of 0.833 of them in the top 24 and left 5.0 instead of 6.25 wrong labels after
# relabelling what cleanlab flags; the extra heads cost seconds, not another feature pass.
REPEATS = 3
Folds = list[tuple[np.ndarray, np.ndarray]]  # (training rows, held-out rows) per fold


@dataclass
class ProbeResult:
    probs: np.ndarray  # (n, classes) out-of-sample probabilities
    c: float  # the regularisation picked
    log_loss: float  # its cross-validated log loss against the given labels
    accuracy: float  # out-of-sample agreement with the given labels (single-label) or per-class (multi-label)
    folds: int


def unit_rows(features: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(features, axis=1, keepdims=True)
    return features / np.maximum(norms, 1e-12)


def fold_count(labels: np.ndarray, folds: int) -> int:
    """At most `folds`, and no more than the smallest class has images (stratified folds need one per fold)."""
    if labels.ndim == 2:
        return max(2, min(folds, len(labels)))
    smallest = int(np.bincount(labels).min(initial=len(labels))) if len(labels) else 0
    return max(2, min(folds, smallest))


def out_of_sample_probs(
    features: np.ndarray,
    labels: np.ndarray,
    n_classes: int,
    folds: int = 5,
    seed: int = 0,
    progress: Callable[[int, int], None] | None = None,
    repeats: int = REPEATS,
) -> ProbeResult:
    """K-fold out-of-sample probabilities of a logistic-regression probe; `labels` holds class indices (n,), or a
    0/1 matrix (n, classes) for multi-label data. `progress(done, total)` counts the heads trained.

    The regularisation grid is walked from strong to weak on the first fold assignment, each fold's head starting
    from its solution at the previous C (warm start: 9 lbfgs iterations instead of 13-16 at C >= 1 on
    hymenoptera), and stops once the log loss has risen twice in a row past the best. The probabilities are then
    averaged over `repeats` fold assignments at that C (see `REPEATS`).

    BLAS runs single-threaded here: with OpenBLAS's two threads on a busy 2-core machine (load 8) one head on the
    397 hymenoptera images took 1.47 s, with one thread 0.05 s; the matrices are too small to share out."""
    from threadpoolctl import threadpool_limits

    x = unit_rows(np.asarray(features, dtype=np.float64))
    k = fold_count(labels, folds)
    total, done = (len(C_GRID) + repeats - 1) * k, 0

    def tick() -> None:
        nonlocal done
        done += 1
        if progress:
            progress(min(done, total), total)

    limits = threadpool_limits(1)
    try:
        c, probs = _pick_c(x, labels, n_classes, _folds(x, labels, k, seed), seed, tick)
        runs = [probs] + [_predict_at(x, labels, n_classes, _folds(x, labels, k, seed + r), c, seed, tick)
                          for r in range(1, repeats)]  # fmt: skip
    finally:
        limits.restore_original_limits()
    if progress:
        progress(total, total)
    mean = np.mean(runs, axis=0)
    return ProbeResult(mean, c, _log_loss(mean, labels), _accuracy(mean, labels), k)


def _folds(x: np.ndarray, labels: np.ndarray, k: int, seed: int) -> Folds:
    from sklearn.model_selection import KFold, StratifiedKFold

    if labels.ndim == 2:
        return list(KFold(k, shuffle=True, random_state=seed).split(x))
    return list(StratifiedKFold(k, shuffle=True, random_state=seed).split(x, labels))


def _pick_c(x: np.ndarray, labels: np.ndarray, n_classes: int, parts: Folds, seed: int, tick: Callable[[], None]
            ) -> tuple[float, np.ndarray]:  # fmt: skip
    """The C of `C_GRID` with the lowest out-of-sample log loss on these folds, and its probabilities."""
    heads = [_Head(n_classes, seed) for _ in parts]
    best: tuple[float, float, np.ndarray] | None = None
    worse = 0
    for c in C_GRID:
        probs = np.zeros((len(x), n_classes))
        for head, (train, held) in zip(heads, parts):
            probs[held] = head.fit(x[train], labels[train], c).predict(x[held])
            tick()
        loss = _log_loss(probs, labels)
        if best is None or loss < best[0]:
            best, worse = (loss, c, probs), 0
        else:
            worse += 1
            if worse == 2:
                break
    assert best is not None
    return best[1], best[2]


def _predict_at(x: np.ndarray, labels: np.ndarray, n_classes: int, parts: Folds, c: float, seed: int,
                tick: Callable[[], None]) -> np.ndarray:  # fmt: skip
    probs = np.zeros((len(x), n_classes))
    for train, held in parts:
        probs[held] = _Head(n_classes, seed).fit(x[train], labels[train], c).predict(x[held])
        tick()
    return probs


class _Head:
    """One fold's head: logistic regression (one binary head per class for multi-label), warm-started across C;
    probabilities in all `n_classes` columns (a class missing from the training folds gets 0)."""

    def __init__(self, n_classes: int, seed: int):
        self.n_classes, self.seed = n_classes, seed
        self.models: dict[int, object] = {}

    def _model(self, j: int, c: float):
        from sklearn.linear_model import LogisticRegression

        model = self.models.get(j) or LogisticRegression(max_iter=1000, warm_start=True, random_state=self.seed)
        model.set_params(C=c)
        self.models[j] = model
        return model

    def fit(self, x: np.ndarray, y: np.ndarray, c: float) -> _Head:
        self.constant: dict[int, float] = {}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # convergence notes on tiny folds; the log loss judges the result
            if y.ndim == 1:
                self._model(-1, c).fit(x, y)
                return self
            for j in range(self.n_classes):  # multi-label
                if y[:, j].min() == y[:, j].max():
                    self.constant[j] = float(y[0, j])
                else:
                    self._model(j, c).fit(x, y[:, j])
        return self

    def predict(self, x: np.ndarray) -> np.ndarray:
        out = np.zeros((len(x), self.n_classes))
        if -1 in self.models:
            model = self.models[-1]
            out[:, model.classes_] = model.predict_proba(x)
            return out
        for j in range(self.n_classes):
            out[:, j] = self.constant[j] if j in self.constant else self.models[j].predict_proba(x)[:, 1]
        return out


def _log_loss(probs: np.ndarray, labels: np.ndarray) -> float:
    p = np.clip(probs, 1e-7, 1 - 1e-7)
    if labels.ndim == 2:
        return float(-np.mean(labels * np.log(p) + (1 - labels) * np.log(1 - p)))
    return float(-np.mean(np.log(p[np.arange(len(labels)), labels])))


def _accuracy(probs: np.ndarray, labels: np.ndarray) -> float:
    if labels.ndim == 2:
        return float(np.mean((probs >= 0.5) == labels.astype(bool)))
    return float(np.mean(probs.argmax(axis=1) == labels))
