"""Evaluate a run of train.py as the paper's tables do, with the statistics the claim needs.

    python evaluate.py runs/mic                 # every variant under the run folder
    python evaluate.py runs/mic --no-speed      # without the speed measurement
    python evaluate.py runs/a --against runs/b  # + each variant of a against its twin in b

Writes RUN/results.json, RUN/results.md and RUN/<variant>/confusion.png:
- WAR (accuracy) and UAR (mean per-class recall) per split (fold × seed), mean ± sd, per-class
  recall and the pooled confusion matrix;
- MI(z_E; z_I) held out: a fresh estimator (`mi.heldout_mi`) trained on the training clips' pairs
  and evaluated on the test clips' pairs, next to its control, the same on shuffled test pairs
  (true MI 0: the estimator's floor);
- the dependence of z_E on z_I held out, with a p-value (`dependence_null`): a ridge regression
  z_E → z_I fit on the training clips, scored on the test clips against permutations of their
  z_I, pooled over the splits (`pooled_dependence`: results.json's `dependence`);
- identity left in z_E: a linear probe predicting the subject, trained on half of each subject's
  clips and tested on the other half, once on the training clips and once on the test fold's
  clips (unseen by the model), against chance (1 / subjects) and the majority baseline; the
  unseen-clip probe paired against the majority baseline over the splits (does z_E identify
  people the model never saw? MIC's precondition); the unseen-clip probe again on z_E minus the
  training clips' mean z_E of each label (identity beyond what the expression gives away);
- the MI term's diagnostics train.py records (`DIAGNOSTICS`, last epoch, mean over splits);
- paired comparisons: for each variant against MIC − MI (same backbone) over the splits both
  finished, the per-split difference of accuracy, UAR and both unseen-clip probes (mean, sd,
  paired t-test and its 95 % CI, and the Nadeau–Bengio corrected test for overlapping training
  sets; with several seeds also over the folds, seeds averaged); the verdict uses the corrected
  test;
- test-time speed measured here, in this run: MIC's test path (the reader + expression branch
  on residuals, no identity branch) for each trained backbone, against decoded frames +
  ResNet50+LSTM and the same backbone on RGB; one clip at a time.
Splits without a readable, finite result.json and a readable features.npz are listed with the
reason, never silently left out; what a split cannot give (held-out MI with one test clip) is "–".
The tables are written before the speed step, which is skipped with its reason when it cannot run.
"""

from __future__ import annotations

import argparse
import json
import math
import pickle
import time
import zipfile
from collections.abc import Callable, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from scipy import stats  # noqa: E402

import mi  # noqa: E402
from models import MIC, RANDOM  # noqa: E402
from reader import ClipDataset  # noqa: E402

# Variant name (train.variant_name without the backbone) -> the paper's row label.
PAPER_ROWS = {
    "mic": "MIC",
    "mic-mi": "MIC − MI",
    "mic-mi+adv": "MIC − MI + Adv",
    "mic-rec": "MIC − Î (no reconstruction)",
    "mic+mv": "MIC + T^t (motion vectors)",
    "rgb": "Mode VLSTM (RGB baseline)",
}
# The held-out MI's estimator: few clips per fold, so each feature is reduced to its first
# principal components and the critic is small and briefly trained (measured: its value on
# independent features of the demo's dimensions is 0.00 ± 0.01 nats, tests/test_mi.py).
MI_KW = dict(dims=8, steps=200, hidden=32, lr=1e-3)
# The held-out dependence test of z_E on z_I (`dependence_null`): its ridges' z_I (None: all of
# it; k: its first k principal components), permutations of the null.
DEPENDENCE = dict(zi_dims=(None, 8), permutations=1000)
# The MI term's diagnostics train.py records per epoch in result.json's history.
DIAGNOSTICS = ("mi_raw", "mi_active", "mi_grad_ratio")


def paper_row(variant: str) -> str:
    core, _, backbone = variant.partition("+resnet")
    label = PAPER_ROWS.get(core, core)
    return f"{label}, ResNet{backbone}" if backbone else f"{label}, ResNet50"


def recall_metrics(
    labels: np.ndarray, preds: np.ndarray, num_classes: int
) -> tuple[float, float, list[float]]:
    """(WAR = accuracy, UAR = mean recall over the classes present in `labels`, per-class recall
    with NaN for absent classes)."""
    labels, preds = np.asarray(labels), np.asarray(preds)
    recall = []
    for c in range(num_classes):
        mask = labels == c
        recall.append(float((preds[mask] == c).mean()) if mask.any() else float("nan"))
    return float((labels == preds).mean()), float(np.nanmean(recall)), recall


# What evaluate_variant reads of a split's features.npz.
FEATURES = ("train_z", "train_subject", "test_z", "test_subject", "test_label", "test_pred")


def features_problem(path: Path, num_classes: int) -> str | None:
    """Why a split's features.npz cannot be used (None: it can): missing, not a readable
    archive, lacking an array, or labels/predictions outside the result's classes."""
    if not path.exists():
        return "no features.npz"
    try:
        with np.load(path) as f:
            missing = [k for k in FEATURES if k not in f]
            if missing:
                return f"features.npz lacks {', '.join(missing)}"
            for key in ("test_label", "test_pred"):
                v = f[key]
                if v.size and not (
                    np.issubdtype(v.dtype, np.integer) and 0 <= v.min() and v.max() < num_classes
                ):
                    return f"features.npz: {key} outside the {num_classes} classes"
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, pickle.UnpicklingError) as exc:
        return f"unreadable features.npz ({type(exc).__name__}: {exc})"
    return None


def read_splits(variant_dir: Path) -> tuple[list[tuple[Path, dict]], dict[str, str]]:
    """The finished splits of a variant (folder, result) and the others with the reason."""
    done, skipped = [], {}
    for d in sorted(p for p in variant_dir.iterdir() if p.is_dir()):
        path = d / "result.json"
        if not path.exists():
            skipped[d.name] = (
                "unfinished (checkpoint, no result.json)"
                if (d / "ckpt.pt").exists()
                else "no result.json"
            )
            continue
        try:
            result = json.loads(path.read_text())
            acc, classes, _ = result["accuracy"], result["classes"], result["fold"]
            if isinstance(acc, bool) or not isinstance(acc, int | float):
                raise TypeError(f"accuracy {acc!r} is not a number")
            if (
                not isinstance(classes, list)
                or not classes
                or not all(isinstance(c, str) for c in classes)
            ):
                raise TypeError(f"classes {classes!r} is not a list of class names")
        except (OSError, ValueError, KeyError, TypeError) as exc:
            skipped[d.name] = f"unreadable result.json ({type(exc).__name__}: {exc})"
            continue
        problem = (
            "non-finite accuracy"
            if not math.isfinite(acc)
            else features_problem(d / "features.npz", len(classes))
        )
        if problem:
            skipped[d.name] = problem
            continue
        done.append((d, result))
    return done, skipped


def identity_probe(
    z: np.ndarray, subjects: np.ndarray, steps: int = 300, seed: int = 0
) -> tuple[float, float, float]:
    """Linear probe z_E → subject: trained on every other clip of each subject (subjects with at
    least 2 clips), tested on the rest.

    Returns (held-out accuracy, chance = 1 / probed subjects, majority baseline = accuracy of
    always answering the subject most frequent among the probe's training clips); NaNs when no
    subject has 2 clips."""
    order = np.argsort(subjects, kind="stable")
    rank = np.zeros(len(subjects), int)  # position of each clip among its subject's clips
    for s in np.unique(subjects):
        idx = order[subjects[order] == s]
        rank[idx] = np.arange(len(idx))
    counts = np.bincount(subjects)
    keep = counts[subjects] >= 2
    fit, held = keep & (rank % 2 == 0), keep & (rank % 2 == 1)
    if not held.any():
        return float("nan"), float("nan"), float("nan")
    names, y = np.unique(subjects[keep], return_inverse=True)
    y_all = np.full(len(subjects), -1)
    y_all[keep] = y
    majority = float((y_all[held] == np.bincount(y_all[fit]).argmax()).mean())
    x = torch.from_numpy(z).float()
    mu, sd = x[fit].mean(0), x[fit].std(0, correction=0) + 1e-6
    x = (x - mu) / sd
    torch.manual_seed(seed)
    probe = torch.nn.Linear(x.shape[1], len(names))
    opt = torch.optim.Adam(probe.parameters(), lr=1e-2, weight_decay=1e-4)
    xf, yf = x[fit], torch.from_numpy(y_all[fit])
    for _ in range(steps):
        loss = F.cross_entropy(probe(xf), yf)
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        pred = probe(x[held]).argmax(1).numpy()
    return float((pred == y_all[held]).mean()), 1.0 / len(names), majority


def heldout_mi_pair(f: np.lib.npyio.NpzFile, seed: int = 0) -> tuple[float, float]:
    """(held-out MI between z_E and z_I, the same on shuffled test pairs) of one split; NaNs
    (shown as "–") with fewer than 2 training or test pairs."""
    if min(len(f["train_zi"]), len(f["test_zi"])) < 2:
        return math.nan, math.nan
    shuffled = np.random.default_rng(seed).permutation(len(f["test_zi"]))
    return (
        mi.heldout_mi(f["train_z"], f["train_zi"], f["test_z"], f["test_zi"], seed=seed, **MI_KW),
        mi.heldout_mi(
            f["train_z"], f["train_zi"], f["test_z"], f["test_zi"][shuffled], seed=seed, **MI_KW
        ),
    )


def _zscore(train: np.ndarray, test: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Both centred and scaled by the training set's mean and sd, in float64."""
    train, test = np.asarray(train, np.float64), np.asarray(test, np.float64)
    mu, sd = train.mean(0), train.std(0) + 1e-8
    return (train - mu) / sd, (test - mu) / sd


RIDGES = np.array([*np.logspace(-3, 1, 9), np.inf])  # ridge grid, × the largest eigenvalue


def _ridge_path(x_fit: np.ndarray, y_fit: np.ndarray, x_new: np.ndarray) -> np.ndarray:
    """``(len(RIDGES), n_new, d_y)`` predictions at ``x_new`` of the ridge regressions
    y ~ x fit on (``x_fit``, ``y_fit``), one per ridge of ``RIDGES`` (the last: predicts 0)."""
    u, s, vt = np.linalg.svd(x_fit, full_matrices=False)
    a, uy = x_new @ vt.T, u.T @ y_fit
    shrink = s / (s**2 + s[0] ** 2 * RIDGES[:, None])
    return np.einsum("nr,lr,rq->lnq", a, shrink, uy, optimize=True)


def ridge_cross(
    train_z: np.ndarray,
    train_zi: np.ndarray,
    test_z: np.ndarray,
    test_zi: np.ndarray,
    train_groups: np.ndarray | None = None,
    zi_dims: int | None = None,
    folds: int = 5,
) -> np.ndarray:
    """``M (n_test, n_test)``, ``M[i, j]`` = the prediction of z_I from test clip i's z_E · test
    clip j's z_I. The prediction is a ridge regression z_E → z_I fit on the training clips (both
    standardised by them, z_I on its first ``zi_dims`` principal components), with a ridge per
    z_I coordinate chosen by ``folds``-fold cross-validation over ``train_groups`` (the training
    clips' subjects: a subject's clips are never split, so that coincidences within a subject do
    not pass for a dependence); a coordinate z_E does not predict gets the prediction 0. The
    held-out statistic is ``trace(M)``."""
    x_tr, x_te = _zscore(train_z, test_z)
    y_tr, y_te = (
        a.numpy()
        for a in mi._standardise(
            torch.as_tensor(train_zi, dtype=torch.float64),
            torch.as_tensor(test_zi, dtype=torch.float64),
            zi_dims,
        )
    )
    groups = np.arange(len(x_tr)) if train_groups is None else np.asarray(train_groups)
    _, g = np.unique(groups, return_inverse=True)
    fold = np.random.default_rng(0).permutation(g.max() + 1)[g] % folds
    error = np.zeros((len(RIDGES), y_tr.shape[1]))
    for k in range(folds):
        held = fold == k
        if held.all() or not held.any():
            continue
        error += ((_ridge_path(x_tr[~held], y_tr[~held], x_tr[held]) - y_tr[held]) ** 2).sum(1)
    pred = _ridge_path(x_tr, y_tr, x_te)[error.argmin(0), :, np.arange(y_tr.shape[1])]
    return pred.T @ y_te.T


def permutations(
    n: int, count: int, rng: np.random.Generator, groups: np.ndarray | None = None
) -> np.ndarray:
    """``(count, n)`` random permutations of the test clips' z_I rows; with ``groups`` (the
    clips' subjects), whole subjects are exchanged among subjects with as many clips (and
    shuffled inside), which keeps the null exact when both features cluster by subject."""
    if groups is None:
        return np.argsort(rng.random((count, n)), axis=1)
    _, inverse, sizes = np.unique(groups, return_inverse=True, return_counts=True)
    members = [np.flatnonzero(inverse == g) for g in range(len(sizes))]
    out = np.empty((count, n), int)
    for b in range(count):
        for m in np.unique(sizes):
            same = np.flatnonzero(sizes == m)
            for g, t in zip(same, rng.permutation(same), strict=True):
                out[b, members[g]] = rng.permutation(members[t])
    return out


def _standardised(values: np.ndarray) -> np.ndarray:
    """``values`` (an observed statistic first, then its permutations) minus their mean, over
    their sd: symmetric in the permutations, so a test on them stays exact."""
    sd = values.std()
    return (values - values.mean()) / sd if sd > 0 else np.zeros_like(values)


def dependence_null(
    train_z: np.ndarray,
    train_zi: np.ndarray,
    test_z: np.ndarray,
    test_zi: np.ndarray,
    train_groups: np.ndarray | None = None,
    groups: np.ndarray | None = None,
    seed: int = 0,
    count: int = DEPENDENCE["permutations"],
    zi_dims: Sequence[int | None] = DEPENDENCE["zi_dims"],
) -> tuple[float, np.ndarray]:
    """The held-out dependence statistic of z_E on z_I of one split and its permutation null:
    ``count`` values with the test clips' z_I rows permuted (`permutations`, with ``groups`` the
    test clips' subjects). One ridge per entry of ``zi_dims`` (`ridge_cross`: None, all of z_I;
    k, its first k principal components), each trace standardised by its own permutations (the
    same ones); the statistic is the largest, so that one exact test covers a dependence inside
    and outside z_I's top components."""
    perms = permutations(len(test_z), count, np.random.default_rng(seed), groups)
    zs = []
    for dims in zi_dims:
        m = ridge_cross(train_z, train_zi, test_z, test_zi, train_groups, dims)
        zs.append(
            _standardised(np.concatenate([[np.trace(m)], m[np.arange(len(m)), perms].sum(1)]))
        )
    best = np.max(zs, axis=0)
    return float(best[0]), best[1:]


def pooled_dependence(per_split: Sequence[tuple[float, np.ndarray]], test: str) -> dict:
    """Per-split permutation p-values and the pooled one: each split's statistic standardised by
    the mean and sd of its own null (observed value included, so the standardisation is symmetric
    in the permutations and the pooled p stays exact), summed over the splits, against the sums of
    the splits' independent permutations."""
    zs, rows = [], []
    for stat, null in per_split:
        z = _standardised(np.concatenate([[stat], null]))
        zs.append(z)
        rows.append(
            {
                "statistic": stat,
                "z": float(z[0]),
                "p": float((null >= stat).sum() + 1) / (len(null) + 1),
            }
        )
    total = np.sum(zs, axis=0)
    return {
        "test": test,
        "statistic": float(total[0]),
        "p": float((total[1:] >= total[0]).sum() + 1) / len(total),
        "per_split": rows,
    }


def label_residual(
    train_z: np.ndarray, train_label: np.ndarray, test_z: np.ndarray, test_label: np.ndarray
) -> np.ndarray:
    """The test clips' z_E minus the mean z_E of the training clips of the same label (labels
    without training clips: the mean of all training clips)."""
    means = np.tile(train_z.mean(0), (int(max(train_label.max(), test_label.max())) + 1, 1))
    for c in np.unique(train_label):
        means[c] = train_z[train_label == c].mean(0)
    return test_z - means[test_label]


def mean_sd(values: list[float]) -> tuple[float, float]:
    a = np.asarray(values, float)
    if not np.isfinite(a).any():
        return math.nan, 0.0
    return float(np.nanmean(a)), float(np.nanstd(a, ddof=1)) if np.isfinite(a).sum() > 1 else 0.0


def evaluate_variant(variant_dir: Path, splits: list[tuple[Path, dict]]) -> dict:
    """Accuracy, UAR, confusion, held-out MI and identity probes of one variant."""
    results = [r for _, r in splits]
    classes = results[0]["classes"]
    n = len(classes)
    confusion = np.zeros((n, n), int)
    per: dict[str, list[float]] = {
        k: []
        for k in (
            "war",
            "uar",
            "mi",
            "mi_shuffled",
            "probe_train",
            "probe_train_chance",
            "probe_test",
            "probe_test_chance",
            "probe_test_majority",
            "probe_resid",
        )
    }
    dependence, dependence_splits = [], []
    for d, _ in splits:
        f = np.load(d / "features.npz")
        np.add.at(confusion, (f["test_label"], f["test_pred"]), 1)
        war, uar, _ = recall_metrics(f["test_label"], f["test_pred"], n)
        per["war"].append(war)
        per["uar"].append(uar)
        if "train_zi" in f:
            m, m0 = heldout_mi_pair(f)
            per["mi"].append(m)
            per["mi_shuffled"].append(m0)
            dependence.append(
                dependence_null(
                    f["train_z"], f["train_zi"], f["test_z"], f["test_zi"], f["train_subject"]
                )
            )
            dependence_splits.append(d.name)
        acc, chance, _ = identity_probe(f["train_z"], f["train_subject"])
        per["probe_train"].append(acc)
        per["probe_train_chance"].append(chance)
        acc, chance, majority = identity_probe(f["test_z"], f["test_subject"])
        per["probe_test"].append(acc)
        per["probe_test_chance"].append(chance)
        per["probe_test_majority"].append(majority)
        per["probe_resid"].append(
            identity_probe(
                label_residual(f["train_z"], f["train_label"], f["test_z"], f["test_label"]),
                f["test_subject"],
            )[0]
        )
    recall = confusion.diagonal() / np.maximum(confusion.sum(1), 1)
    out = {
        "variant": variant_dir.name,
        "row": paper_row(variant_dir.name),
        "splits": [d.name for d, _ in splits],
        "folds": [r["fold"] for r in results],
        "accuracy_per_split": per["war"],
        "uar_per_split": per["uar"],
        "per_class_recall": dict(zip(classes, recall.tolist(), strict=True)),
        "confusion": confusion.tolist(),
        "classes": classes,
        "pooled_accuracy": float(confusion.diagonal().sum() / confusion.sum()),
        "identity": results[0].get("identity"),
        "num_test_per_split": [r.get("num_test") for r in results],
        "num_train_per_split": [r.get("num_train") for r in results],
    }
    if dependence:
        out["dependence"] = pooled_dependence(dependence, "ridge")
        for row, name in zip(out["dependence"]["per_split"], dependence_splits, strict=True):
            row["split"] = name
    for key, values in per.items():
        out[f"{key}_mean"], out[f"{key}_sd"] = mean_sd(values) if values else (math.nan, 0.0)
    out["mi_per_split"], out["mi_shuffled_per_split"] = per["mi"], per["mi_shuffled"]
    out["probe_test_per_split"] = per["probe_test"]
    out["probe_test_majority_per_split"] = per["probe_test_majority"]
    out["probe_resid_per_split"] = per["probe_resid"]
    for key in DIAGNOSTICS:  # the last epoch's, from train.py's history (old runs: NaN)
        last = [r["history"][-1].get(key) if r.get("history") else None for r in results]
        values = [math.nan if v is None else float(v) for v in last]
        out[f"{key}_per_split"] = values
        out[f"{key}_mean"] = float(np.nanmean(values)) if np.isfinite(values).any() else math.nan
    return out


def t_interval(
    diff: np.ndarray, ratio: float | None = None
) -> tuple[float, float, list[float], float]:
    """Mean, sd, t 95 % CI of the mean and the one-sample t-test p (= the paired t-test's).
    With ``ratio`` = n_test / n_train, the Nadeau–Bengio corrected resampled t-test instead: the
    variance of the mean sd² / J becomes sd² · (1/J + n_test/n_train), for resampled splits whose
    training sets overlap (Nadeau & Bengio 2003)."""
    mean, sd, j = float(diff.mean()), float(diff.std(ddof=1)), len(diff)
    se = sd * math.sqrt(1 / j + (0.0 if ratio is None else ratio))
    half = float(stats.t.ppf(0.975, j - 1)) * se
    if se > 0:
        p = float(2 * stats.t.sf(abs(mean) / se, j - 1))
    else:
        p = 1.0 if mean == 0 else 0.0
    return mean, sd, [mean - half, mean + half], p


def split_size_ratio(a: dict, splits: Sequence[str]) -> float | None:
    """Mean test clips / mean training clips of ``splits`` (result.json's num_test, num_train),
    None where a split does not say."""
    sizes = dict(
        zip(
            a["splits"],
            zip(
                a.get("num_test_per_split") or [None] * len(a["splits"]),
                a.get("num_train_per_split") or [None] * len(a["splits"]),
                strict=True,
            ),
            strict=True,
        )
    )
    known = [sizes[s] for s in splits]
    if any(t is None or not n for t, n in known):
        return None
    return float(np.mean([t for t, _ in known]) / np.mean([n for _, n in known]))


def paired(a: dict, b: dict, key: str = "accuracy_per_split") -> dict | None:
    """Per-split paired difference a − b over the splits both finished: mean, sd, paired t-test
    p-value and the t 95 % CI of the mean, which excludes 0 exactly when p < 0.05 (None with
    fewer than 2 common splits; a split where either value is not finite, a probe with no
    subject of 2 clips say, is left out). (A percentile bootstrap over 10 splits is too narrow:
    it called −4.2 ± 7.6 points "worse" at p = 0.12.) Beside it, where the splits' sizes are known
    (`split_size_ratio` of a), the Nadeau–Bengio corrected test (`ci95_corrected`,
    `p_corrected`): cross-validation folds share most of their training clips, which the plain
    t-test ignores. With several seeds, a fold's splits share their test subjects, so the test
    is also made over the folds (`a["folds"]`, each split's recorded fold), each the mean of its
    seeds (`folds`, `fold_ci95`, `fold_p`, and corrected). The verdict uses the corrected test
    over the folds, else the corrected one over the splits (the plain ones where sizes are
    unknown)."""
    va = dict(zip(a["splits"], a[key], strict=True))
    vb = dict(zip(b["splits"], b[key], strict=True))
    common = sorted(
        s for s in va.keys() & vb.keys() if math.isfinite(va[s]) and math.isfinite(vb[s])
    )
    if len(common) < 2:
        return None
    diff = np.array([va[s] - vb[s] for s in common])
    mean, sd, ci95, p = t_interval(diff)
    out = {
        "a": a["variant"],
        "b": b["variant"],
        "metric": key,
        "n": len(common),
        "mean": mean,
        "sd": sd,
        "ci95": ci95,
        "p": p,
    }
    ratio = split_size_ratio(a, common)
    if ratio is not None:
        _, _, out["ci95_corrected"], out["p_corrected"] = t_interval(diff, ratio)
        out["test_train_ratio"] = ratio
    fold = dict(zip(a["splits"], a["folds"], strict=True))
    by_fold: dict[str, list[float]] = {}
    for s, d in zip(common, diff, strict=True):
        by_fold.setdefault(fold[s], []).append(float(d))
    if 2 <= len(by_fold) < len(common):
        fold_diff = np.array([np.mean(v) for v in by_fold.values()])
        _, _, out["fold_ci95"], out["fold_p"] = t_interval(fold_diff)
        if ratio is not None:
            _, _, out["fold_ci95_corrected"], out["fold_p_corrected"] = t_interval(fold_diff, ratio)
        out["folds"] = len(by_fold)
    return out


def _decisive(c: dict) -> tuple[str, str]:
    """The key of the CI the verdict uses (see `paired`) and its name."""
    key = "fold_ci95" if "folds" in c else "ci95"
    corrected = f"{key}_corrected" in c
    return (
        f"{key}_corrected" if corrected else key,
        ("Nadeau–Bengio corrected " if corrected else "")
        + "95 % CI"
        + (f" over {c['folds']} folds, seeds averaged," if "folds" in c else ""),
    )


def verdict(c: dict) -> str:
    key, ci = _decisive(c)
    lo, hi = c[key]
    diff = f"{100 * c['mean']:+.2f} points"
    up, down = ("higher", "lower") if c["metric"].startswith("probe") else ("better", "worse")
    if lo > 0:
        return f"{c['a']} {up} than {c['b']} ({diff}, {ci} above 0)"
    if hi < 0:
        return f"{c['a']} {down} than {c['b']} ({diff}, {ci} below 0)"
    return f"no difference shown between {c['a']} and {c['b']} ({diff}, the {ci} contains 0)"


PAIRED_HEAD = (
    "| metric | splits | mean (points) | sd | 95 % CI (paired t; Nadeau–Bengio "
    "corrected) | p (plain / corrected) | over the folds, seeds averaged: folds, "
    "95 % CI (corrected), p (plain / corrected) |"
)


def paired_cells(c: dict) -> str:
    """The cells of PAIRED_HEAD for one paired difference (a corrected value where the sizes
    of the splits are known, "–" for a corrected p that is not)."""

    def ci(key: str) -> str:
        lo, hi = c.get(f"{key}_corrected", c[key])
        return f"[{100 * lo:+.2f}, {100 * hi:+.2f}]"

    def ps(key: str) -> str:
        corrected = c.get(f"{key}_corrected")
        return f"{c[key]:.3f} / " + ("–" if corrected is None else f"{corrected:.3f}")

    fold = f"{c['folds']}, {ci('fold_ci95')}, {ps('fold_p')}" if "folds" in c else "–"
    return (
        f"| {c['metric'].removesuffix('_per_split')} | {c['n']} | {100 * c['mean']:+.2f} | "
        f"{100 * c['sd']:.2f} | {ci('ci95')} | {ps('p')} | {fold} |"
    )


def comparisons(variants: list[dict]) -> list[dict]:
    """Each variant against MIC − MI of the same backbone, on accuracy, UAR and the identity
    probes on unseen test clips, plain and label-residualised (MIC's claim: its probe is
    lower)."""
    out = []
    by_name = {v["variant"]: v for v in variants}
    for v in variants:
        core, sep, backbone = v["variant"].partition("+resnet")
        base = by_name.get("mic-mi" + (f"+resnet{backbone}" if sep else ""))
        if base is None or base is v:
            continue
        for key in (
            "accuracy_per_split",
            "uar_per_split",
            "probe_test_per_split",
            "probe_resid_per_split",
        ):
            c = paired(v, base, key) if key in v and key in base else None
            if c is not None:
                out.append(c)
    return out


def probe_over_majority(v: dict) -> dict | None:
    """Precondition (a) of MIC's claim as a test: the identity probe on unseen test clips
    against the majority baseline of the same splits, paired (splits without a probe left out)."""
    key = "probe_test_per_split"
    probe = {
        "variant": f"{v['variant']} probe",
        "splits": v["splits"],
        "folds": v["folds"],
        key: v[key],
        "num_test_per_split": v.get("num_test_per_split"),
        "num_train_per_split": v.get("num_train_per_split"),
    }
    return paired(
        probe,
        {**probe, "variant": "majority baseline", key: v["probe_test_majority_per_split"]},
        key,
    )


def against(run: Path, variants: list[dict], other: Path) -> list[dict]:
    """Each variant of `run` against the variant of the same name in the evaluated run `other`
    (its results.json), paired over the splits both finished: the same model on two versions
    of a dataset (a knob of the synthetic set on and off, say)."""
    path = other / "results.json"
    if not path.is_file():
        raise SystemExit(f"evaluate.py: {path} not found: run `python evaluate.py {other}` first")
    theirs = {v["variant"]: v for v in json.loads(path.read_text())["variants"]}
    out = []
    for v in variants:
        for key in ("accuracy_per_split", "uar_per_split"):
            c = paired(v, theirs[v["variant"]], key) if v["variant"] in theirs else None
            if c is not None:
                out.append({**c, "a": f"{run}: {c['a']}", "b": f"{other}: {c['b']}"})
    return out


def plot_confusion(res: dict, path: Path) -> None:
    c = np.array(res["confusion"], float)
    norm = c / np.maximum(c.sum(1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(5.2, 4.6))
    ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    ticks = range(len(res["classes"]))
    ax.set_xticks(ticks, res["classes"], rotation=45, ha="right")
    ax.set_yticks(ticks, res["classes"])
    for i in ticks:
        for j in ticks:
            if c[i, j]:
                ax.text(
                    j,
                    i,
                    int(c[i, j]),
                    ha="center",
                    va="center",
                    color="white" if norm[i, j] > 0.5 else "black",
                    fontsize=8,
                )
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"{res['variant']}: {res['pooled_accuracy']:.1%} (all splits pooled)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


@torch.no_grad()
def measure_speed(
    root: Path, config: dict, representation: str, backbone: str, clips: int, device: torch.device
) -> dict:
    """Clips/s and frames/s of reading `clips` clips (the reader in test mode: the sampled
    residuals or frames only) and running the expression branch on them, one at a time."""
    ds = ClipDataset(
        root,
        num_segments=config["num_segments"],
        size=config["size"],
        representation=representation,
        accumulate=config.get("accumulate", False),
        apex=False,
    )
    model = (
        MIC(
            config["num_classes"],
            config["num_segments"],
            backbone,
            config["hidden"],
            decoder=False,
            size=config["size"],
            backbone_weights=RANDOM,
            data_bn=representation != "rgb",
        )
        .to(device)
        .eval()
    )
    n = min(clips, len(ds))
    model(ds[0]["input"][None].to(device))  # warm-up
    t0 = time.perf_counter()
    for i in range(n):
        model(ds[i]["input"][None].to(device))
    if device.type == "cuda":
        torch.cuda.synchronize()
    dt = time.perf_counter() - t0
    frames = sum(int(r["num_frames"]) for r in ds.rows[:n])
    return {
        "path": f"{representation} + {backbone}+LSTM",
        "representation": representation,
        "backbone": backbone,
        "clips_per_s": n / dt,
        "frames_per_s": frames / dt,
    }


def speed_config(run: Path, v: dict) -> dict:
    """The model config of a variant (from the first of its splits with a readable ckpt.pt);
    `ValueError` saying why there is none."""
    why = []
    for split in v["splits"]:
        path = run / v["variant"] / split / "ckpt.pt"
        if not path.exists():
            why.append(f"{split}: no ckpt.pt")
            continue
        try:
            return json.loads(
                torch.load(path, map_location="cpu", weights_only=True, mmap=True)["config"]
            )
        except (
            OSError,
            RuntimeError,
            pickle.UnpicklingError,
            EOFError,
            ValueError,
            KeyError,
            TypeError,
        ) as exc:
            why.append(f"{split}: unreadable ckpt.pt ({str(exc).splitlines()[0][:80]})")
    raise ValueError(f"{v['variant']}: no readable checkpoint ({'; '.join(why)})")


def speed_table(run: Path, variants: list[dict], clips: int, device: torch.device) -> list[dict]:
    """The speed rows (`measure_speed`) of every path the variants need, each variant's own in
    `v["speed"]`; `ValueError` saying why the step cannot run (no checkpoint, no data)."""
    configs = {v["variant"]: speed_config(run, v) for v in variants}
    config = next(iter(configs.values()))
    root = Path(config["root"])
    if not (root / "index.csv").is_file():
        raise ValueError(
            f"the data of the checkpoints, {root}/index.csv, is not found"
            + (
                " (a relative root: run evaluate.py from the folder train.py ran in)"
                if not root.is_absolute()
                else ""
            )
        )
    backbones = sorted({c["backbone"] for c in configs.values()})
    paths = [("residual", b) for b in backbones] + [("rgb", b) for b in backbones]
    if "resnet50" not in backbones:
        paths.append(("rgb", "resnet50"))
    rows = [measure_speed(root, config, r, b, clips, device) for r, b in paths]
    base = next(r for r in rows if r["representation"] == "rgb" and r["backbone"] == "resnet50")
    for r in rows:
        r["speedup_vs_rgb_resnet50"] = r["clips_per_s"] / base["clips_per_s"]
    for v in variants:
        c = configs[v["variant"]]
        v["speed"] = next(
            r for r in rows if r["representation"] == c["input"] and r["backbone"] == c["backbone"]
        )
    return rows


def dependence_cell(v: dict) -> str:
    """The dependence test's pooled z and p, "–" without z_I."""
    d = v.get("dependence")
    return "–" if d is None else f"{d['statistic']:.2f}, {d['p']:.3f}"


def pct(mean: float, sd: float | None = None) -> str:
    """A share in percent (± its sd); "–" for what could not be computed."""
    if not math.isfinite(mean):
        return "–"
    return f"{100 * mean:.1f}" + ("" if sd is None else f" ± {100 * sd:.1f}")


def write_markdown(
    run: Path,
    variants: list[dict],
    compared: list[dict],
    speed: list[dict],
    skipped: dict[str, dict[str, str]],
    across: Sequence[dict] = (),
    probes: Sequence[dict] = (),
    speed_note: str = "",
) -> str:
    lines = [
        f"# Results of `{run}`",
        "",
        "| variant | paper row | WAR % | UAR % | splits | held-out MI (shuffled control), "
        "nats | identity probe on z_E, training clips (chance) | on unseen test clips "
        "(chance / majority) | the same, label-residualised | dependence z_E ~ z_I: "
        "pooled z, p | MI term, last epoch: raw / active / grad ratio | clips/s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for v in variants:
        sp = f"{v['speed']['clips_per_s']:.1f}" if "speed" in v else "–"
        mi_text = (
            "–"
            if not math.isfinite(v["mi_mean"])
            else f"{v['mi_mean']:.3f} ± {v['mi_sd']:.3f} ({v['mi_shuffled_mean']:.3f})"
        )
        lines.append(
            f"| {v['variant']} | {v['row']} | {pct(v['war_mean'], v['war_sd'])} | "
            f"{pct(v['uar_mean'], v['uar_sd'])} | {len(v['splits'])} | {mi_text} | "
            f"{pct(v['probe_train_mean'], v['probe_train_sd'])} "
            f"({pct(v['probe_train_chance_mean'])}) | "
            f"{pct(v['probe_test_mean'], v['probe_test_sd'])} "
            f"({pct(v['probe_test_chance_mean'])} / "
            f"{pct(v['probe_test_majority_mean'])}) | "
            f"{pct(v['probe_resid_mean'], v['probe_resid_sd'])} | {dependence_cell(v)} | "
            + " / ".join(
                "–" if not math.isfinite(v[f"{k}_mean"]) else f"{v[f'{k}_mean']:.3g}"
                for k in DIAGNOSTICS
            )
            + f" | {sp} |"
        )
    lines += [
        "",
        "± is the sd over splits (folds × seeds). Held-out MI: a fresh MINE trained on "
        "the training clips' (z_E, z_I) and evaluated on the test clips' (first "
        f"{MI_KW['dims']} principal components of each); the control pairs the test clips' "
        "z_E with shuffled z_I, whose true MI is 0. Label-residualised probe: the same "
        "probe on z_E minus the training clips' mean z_E of the clip's label. "
        "Dependence: a ridge regression z_E → z_I fit on the training clips and scored "
        "on the test clips (Σ_i prediction_i · z_I,i; to all of z_I and to its first "
        "principal components, the larger standardised one counting), against "
        f"{DEPENDENCE['permutations']} permutations of the test clips' z_I; each split's "
        "statistic standardised by its permutations, summed over the splits (pooled z), "
        "and p from the sums of independent permutations. MI term: train.py's mean raw "
        "estimate, share of steps with a gradient on z_E, median ‖α∇MI‖ / ‖∇L_CE‖ at the "
        "last epoch, mean over splits (– : not recorded).",
    ]
    for title, rows in (
        ("Paired differences over the splits both variants finished:", compared),
        ("Paired differences over the splits both runs finished:", across),
        (
            "The identity probe on unseen test clips against the majority baseline, paired over "
            "the splits (MIC's precondition: z_E identifies people it never saw):",
            probes,
        ),
    ):
        if not rows:
            continue
        lines += ["", title, "", "| a − b " + PAIRED_HEAD, "|---" * 8 + "|"]
        lines += [f"| {c['a']} − {c['b']} " + paired_cells(c) for c in rows]
        lines += [""] + [
            f"Verdict ({c['metric'].removesuffix('_per_split')}): {verdict(c)}." for c in rows
        ]
    ids = {json.dumps(v["identity"], sort_keys=True) for v in variants if v.get("identity")}
    for text in sorted(ids):
        i = json.loads(text)
        lines += [
            "",
            f"Identity network f_I: {i.get('network')}, weights {i.get('weights')} "
            f"(sha256 {i.get('sha256')}).",
        ]
    lines += [
        "",
        "Per-class recall (%, all splits pooled):",
        "",
        "| variant | " + " | ".join(variants[0]["classes"]) + " |",
        "|---|" + "---|" * len(variants[0]["classes"]),
    ]
    for v in variants:
        lines.append(
            f"| {v['variant']} | "
            + " | ".join(f"{100 * r:.0f}" for r in v["per_class_recall"].values())
            + " |"
        )
    if speed:
        lines += [
            "",
            "Test-time speed, measured in this run on this machine (reader + "
            "expression branch, one clip at a time):",
            "",
            "| path | clips/s | frames/s | × RGB ResNet50+LSTM |",
            "|---|---|---|---|",
        ]
        for r in speed:
            lines.append(
                f"| {r['path']} | {r['clips_per_s']:.2f} | {r['frames_per_s']:.1f} | "
                f"{r['speedup_vs_rgb_resnet50']:.2f} |"
            )
    if speed_note:
        lines += ["", f"Test-time speed: {speed_note}."]
    if any(skipped.values()):
        lines += ["", "Splits left out:", ""]
        for variant, reasons in skipped.items():
            lines += [f"- {variant}/{name}: {why}" for name, why in reasons.items()]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("run", type=Path, help="run folder of train.py (--out)")
    p.add_argument("--no-speed", action="store_true", help="skip the speed measurement")
    p.add_argument("--speed-clips", type=int, default=8, help="clips timed per path")
    p.add_argument("--device", default="cpu")
    p.add_argument(
        "--against",
        type=Path,
        metavar="OTHER",
        help="an evaluated run: each variant paired with its namesake there",
    )
    args = p.parse_args(argv)
    if not args.run.is_dir():
        raise SystemExit(f"evaluate.py: {args.run} is not a folder")
    found, skipped = {}, {}
    for d in sorted(p for p in args.run.iterdir() if p.is_dir()):
        done, left = read_splits(d)
        if done or left:
            skipped[d.name] = left
        if done:
            found[d] = done
    for variant, reasons in skipped.items():
        for name, why in reasons.items():
            print(f"evaluate.py: left out {variant}/{name}: {why}")
    if not found:
        raise SystemExit(f"evaluate.py: no finished split (result.json) under {args.run}")
    order = list(PAPER_ROWS)

    def rank(d: Path) -> tuple[int, str]:
        core = d.name.partition("+resnet")[0]
        return (order.index(core) if core in order else 99, d.name)

    variants = [evaluate_variant(d, found[d]) for d in sorted(found, key=rank)]
    compared = comparisons(variants)
    probes = [c for c in map(probe_over_majority, variants) if c is not None]
    across = against(args.run, variants, args.against) if args.against else []

    def save(speed: list[dict], note: str) -> str:
        """results.json and results.md as they stand (the tables first, then with the speed)."""
        md = write_markdown(args.run, variants, compared, speed, skipped, across, probes, note)
        write_or_exit(
            args.run / "results.json",
            lambda path: path.write_text(
                json.dumps(
                    {
                        "variants": variants,
                        "comparisons": compared,
                        "against": across,
                        "probe_over_majority": probes,
                        "speed": speed,
                        "speed_skipped": note,
                        "left_out": skipped,
                    },
                    indent=1,
                )
            ),
        )
        write_or_exit(args.run / "results.md", lambda path: path.write_text(md))
        return md

    for v in variants:
        write_or_exit(
            args.run / v["variant"] / "confusion.png", lambda path, v=v: plot_confusion(v, path)
        )
    md = save([], "")
    if not args.no_speed:
        try:
            md = save(
                speed_table(args.run, variants, args.speed_clips, torch.device(args.device)), ""
            )
        except (ValueError, OSError, RuntimeError, KeyError) as exc:
            print(f"evaluate.py: speed step skipped: {exc}")
            md = save([], f"skipped: {exc}")
    print(md)


def write_or_exit(path: Path, write: Callable[[Path], object]) -> None:
    """`write(path)`, or stop with one line naming the file when it cannot be written."""
    try:
        write(path)
    except OSError as exc:
        raise SystemExit(f"evaluate.py: cannot write {path}: {exc.strerror or exc}") from None


if __name__ == "__main__":
    main()
