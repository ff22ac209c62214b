"""Power and false-alarm rate of evaluate.py's identity measures, on features with known MI.

One repetition is one split of the 200-subject synthetic set: 180 training and 20 test subjects
with 1–5 clips each (about 500 training / 55 test clips), each subject showing 1–3 of 7 emotions
(CK+'s skew), z_E 256-d and z_I 512-d as in the demo. z_I is a face embedding: per subject an
appearance vector, per clip that vector plus noise (correlation ``CLUSTER`` between two clips of a
subject). z_E holds the expression (its label's mean plus noise, in ``LABEL_DIMS`` dimensions) and
``K`` coordinates correlated with the first ``K`` coordinates of z_I, ρ each, so that
I(z_E; z_I) = −K/2 · log(1 − ρ²) exactly (the rest is independent noise). Variants: ``top``, the
dependent coordinates have the largest variance (they are the first principal components);
``hidden``, ``NUISANCE`` independent coordinates of larger variance in each feature come first,
so the dependence sits outside the top principal components.

Measures, each on every repetition (a rule for each: "detects"):
- held-out MINE (`mi.heldout_mi` with evaluate.MI_KW) minus its control on shuffled test pairs,
  as evaluate.py's column shows them: no p-value, so it detects when the difference exceeds the
  95th percentile of the same difference at MI 0 (calibrated on the benchmark's own MI-0
  repetitions, the most favourable rule; its false-alarm rate is 5 % by construction);
- the ridge dependence test (`evaluate.dependence_null`, rows of z_I permuted as evaluate.py
  does, and with whole subjects exchanged): p < 0.05;
- HSIC with a permutation p-value (Gaussian kernels on the test clips; measured here only, not
  in evaluate.py: with rows permuted it is invalid on subject-clustered features, and with
  subjects exchanged it has no power at these sizes): p < 0.05;
- with ``--pooled SPLITS``, the ridge test pooled over SPLITS independent splits as evaluate.py
  pools its folds (`evaluate.pooled_dependence`): p < 0.05;
- the unseen-clip identity probe (`evaluate.identity_probe` on the test clips) minus the majority
  baseline, with the same calibrated rule as MINE.
The row ``0, labels`` is MI 0 with z_E's expression coordinates strong: z_E then clusters by
subject through each subject's emotions while z_I clusters by appearance (independent of the
emotions), which is where permuting single clips can be anti-conservative.

    python benchmarks/identity_power.py               # 20 repetitions, ~35 min, loaded CPU
    python benchmarks/identity_power.py --measures --mi 0 0.2 --reps 10 --pooled 10
    python benchmarks/identity_power.py --reps 5 --mi 0 1
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import evaluate  # noqa: E402
import mi  # noqa: E402

D_E, D_I = 256, 512
K = 4  # dependent coordinate pairs
CLUSTER = 0.8  # correlation of two clips' z_I of one subject
LABEL_DIMS = 32
NUISANCE = 16
CLASSES = 7


def split(
    mi_nats: float,
    variant: str,
    rng: np.random.Generator,
    labels: float = 1.0,
    train_subjects: int = 180,
    test_subjects: int = 20,
) -> dict[str, np.ndarray]:
    """One split's features as train.py's features.npz names them (train_z, train_zi,
    train_subject, train_label and the same for test), test clips stored subject by subject.
    ``labels``: sd of the expression's class means in z_E."""
    n_subjects = train_subjects + test_subjects
    counts = 1 + rng.binomial(4, 0.45, n_subjects)
    subject = np.repeat(np.arange(n_subjects), counts)
    emotions = [rng.choice(CLASSES, rng.integers(1, 4), replace=False) for _ in range(n_subjects)]
    label = np.array([rng.choice(emotions[s]) for s in subject])
    n = len(subject)
    zi = np.sqrt(CLUSTER) * rng.standard_normal((n_subjects, D_I))[subject] + np.sqrt(
        1 - CLUSTER
    ) * rng.standard_normal((n, D_I))
    rho = mi.gaussian_rho(mi_nats, K) if mi_nats > 0 else 0.0
    ze = rng.standard_normal((n, D_E))
    ze[:, :K] = rho * zi[:, :K] + np.sqrt(1 - rho**2) * ze[:, :K]
    ze[:, K : K + LABEL_DIMS] += labels * rng.standard_normal((CLASSES, LABEL_DIMS))[label]
    big = 3.0
    if variant == "top":
        ze[:, :K] *= big
        zi[:, :K] *= big
    elif variant == "hidden":  # larger independent coordinates first: the dependence comes after
        ze, zi = np.roll(ze, NUISANCE, 1), np.roll(zi, NUISANCE, 1)
        ze[:, :NUISANCE] = big * rng.standard_normal((n, NUISANCE))
        zi[:, :NUISANCE] *= big
    else:
        raise ValueError(f"variant must be top or hidden, got {variant!r}")
    test = subject >= train_subjects
    out = {}
    for name, mask in (("train", ~test), ("test", test)):
        out.update(
            {
                f"{name}_z": ze[mask].astype(np.float32),
                f"{name}_zi": zi[mask].astype(np.float32),
                f"{name}_subject": subject[mask],
                f"{name}_label": label[mask],
            }
        )
    return out


def hsic_null(
    f: dict[str, np.ndarray], seed: int, groups: np.ndarray | None = None
) -> tuple[float, np.ndarray]:
    """HSIC of the test clips' z_E and z_I (Gaussian kernels, each feature standardised, the
    median distance as bandwidth) and its null over permutations of the z_I rows."""

    def gram(a: np.ndarray) -> np.ndarray:
        a = (a - a.mean(0)) / (a.std(0) + 1e-8)
        d2 = np.maximum((a**2).sum(1)[:, None] + (a**2).sum(1)[None] - 2 * a @ a.T, 0)
        return np.exp(-d2 / np.median(d2[np.triu_indices(len(a), 1)]))

    k = gram(f["test_z"].astype(np.float64))
    l_ = gram(f["test_zi"].astype(np.float64))
    h = np.eye(len(k)) - 1.0 / len(k)
    k = h @ k @ h
    perms = evaluate.permutations(
        len(k), evaluate.DEPENDENCE["permutations"], np.random.default_rng(seed), groups
    )
    return float((k * l_).sum()), np.array([(k * l_[np.ix_(q, q)]).sum() for q in perms])


def p_value(stat_null: tuple[float, np.ndarray]) -> float:
    return evaluate.pooled_dependence([stat_null], "")["p"]


def measure(f: dict[str, np.ndarray], seed: int, measures: list[str]) -> dict[str, float]:
    """The chosen measures of one split: p-values, MINE − control, probe − majority."""
    args = (f["train_z"], f["train_zi"], f["test_z"], f["test_zi"], f["train_subject"])
    out = {}
    if "mine" in measures:
        m, m0 = evaluate.heldout_mi_pair(f, seed)
        out["mine"] = m - m0
    if "ridge" in measures:
        out["ridge"] = p_value(evaluate.dependence_null(*args, seed=seed))
        out["ridge_subjects"] = p_value(
            evaluate.dependence_null(*args, seed=seed, groups=f["test_subject"])
        )
    if "hsic" in measures:
        out["hsic"] = p_value(hsic_null(f, seed))
        out["hsic_subjects"] = p_value(hsic_null(f, seed, f["test_subject"]))
    if "probe" in measures:
        acc, _, majority = evaluate.identity_probe(f["test_z"], f["test_subject"], seed=seed)
        out["probe"] = acc - majority
    return out


def pooled(mi_nats: float, variant: str, labels: float, rep: int, splits: int) -> float:
    """The ridge test's pooled p over ``splits`` independent splits (as evaluate.py pools)."""
    per = []
    for k in range(splits):
        f = split(
            mi_nats, variant, np.random.default_rng([rep, int(1000 * mi_nats), k, 7]), labels=labels
        )
        per.append(
            evaluate.dependence_null(
                f["train_z"], f["train_zi"], f["test_z"], f["test_zi"], f["train_subject"], seed=k
            )
        )
    return evaluate.pooled_dependence(per, "ridge")["p"]


P_MEASURES = {
    "ridge": "ridge, rows permuted",
    "ridge_subjects": "ridge, subjects exchanged",
    "hsic": "HSIC, rows permuted",
    "hsic_subjects": "HSIC, subjects exchanged",
    "pooled": "ridge pooled over the splits, rows permuted",
}
CALIBRATED = {"mine": "held-out MINE − control", "probe": "unseen-clip probe − majority"}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--reps", type=int, default=20)
    p.add_argument("--mi", type=float, nargs="+", default=[0, 0.05, 0.2, 0.5, 1.0])
    p.add_argument("--variants", nargs="+", default=["top", "hidden"])
    p.add_argument("--measures", nargs="*", default=["mine", "ridge", "hsic", "probe"])
    p.add_argument(
        "--pooled",
        type=int,
        default=0,
        metavar="SPLITS",
        help="also the ridge test pooled over SPLITS splits (reps × SPLITS fits)",
    )
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    rows = [(v, m, 1.0) for v in args.variants for m in args.mi]
    rows += [(v, 0.0, 3.0) for v in args.variants if 0 in args.mi]
    results = {}
    t0 = time.time()
    for v, m, lab in rows:
        results[v, m, lab] = [
            measure(
                split(m, v, np.random.default_rng([r, int(1000 * m)]), labels=lab), r, args.measures
            )
            for r in range(args.reps)
        ]
        if args.pooled:
            for r, res in enumerate(results[v, m, lab]):
                res["pooled"] = pooled(m, v, lab, r, args.pooled)
        print(f"  {v} MI {m:g} labels {lab:g}: {time.time() - t0:.0f} s", file=sys.stderr)
    keys = [k for k in (*P_MEASURES, *CALIBRATED) if k in results[rows[0]][0]]
    names = {**P_MEASURES, **CALIBRATED}
    print(
        f"Share of {args.reps} repetitions (one split each) that detect dependence; MI 0 rows: "
        "the false-alarm rate.\n"
    )
    print("| variant | true MI, nats | " + " | ".join(names[k] for k in keys) + " |")
    print("|---|---|" + "---|" * len(keys))
    for v, m, lab in rows:
        base = results.get((v, 0.0, 1.0))
        cells = []
        for k in keys:
            values = np.array([r[k] for r in results[v, m, lab]])
            if k in P_MEASURES:
                cells.append(f"{(values < 0.05).mean():.2f}")
            elif base is None:
                cells.append(f"({values.mean():+.3f})")
            else:  # threshold: the 95th percentile at MI 0
                cut = np.quantile([r[k] for r in base], 0.95)
                cells.append(f"{(values > cut).mean():.2f} ({values.mean():+.3f})")
        label = f"{m:g}" + (", labels" if lab != 1.0 else "")
        print(f"| {v} | {label} | " + " | ".join(cells) + " |")
    print(
        "\nMINE and probe cells: share above the 95th percentile of the MI-0 row's values, "
        "(mean difference)."
    )


if __name__ == "__main__":
    main()
