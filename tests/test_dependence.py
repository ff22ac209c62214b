"""evaluate.py's identity measures and statistics on features made here: the held-out dependence
test of z_E on z_I (planted dependence found, a shuffled one not), its pooled permutation p, the
label residual and the Nadeau–Bengio corrected t-test against hand computations. (The run-level
columns are checked on the tiny run in test_train.py.)"""

from __future__ import annotations

import numpy as np
import pytest

import evaluate
from benchmarks.identity_power import split


def dependence_p(f: dict, seed: int = 0) -> float:
    null = evaluate.dependence_null(
        f["train_z"], f["train_zi"], f["test_z"], f["test_zi"], f["train_subject"], seed=seed
    )
    return evaluate.pooled_dependence([null], "ridge")["p"]


def test_dependence_test_finds_a_planted_dependence_and_not_a_shuffled_one():
    """One split of the 200-subject set's size (about 500 training / 55 test clips, z_E 256-d,
    z_I 512-d, clips stored subject by subject): 1 nat is found; with the test clips' z_I rows
    shuffled (the ridge still fit on dependent training clips) or no dependence, nothing is."""
    rng = np.random.default_rng(0)
    planted = split(1.0, "top", rng)
    assert 450 < len(planted["train_z"]) < 600 and 40 < len(planted["test_z"]) < 75
    assert dependence_p(planted) < 0.01
    ps = []
    for k in range(9):
        f = split(1.0, "top", np.random.default_rng(k + 1))
        f["test_zi"] = f["test_zi"][rng.permutation(len(f["test_zi"]))]
        ps.append(dependence_p(f, seed=k))
    ps.append(dependence_p(split(0.0, "top", rng)))
    # An exact test at 5 %: 3 or more of 10 below 0.05 has probability 0.012.
    assert sum(p < 0.05 for p in ps) <= 2 and np.mean(ps) > 0.3, ps


def test_pooled_dependence_by_hand():
    """Each split's statistic standardised by its null (observed value included), summed; p
    counts the permuted sums at least as large, plus one."""
    a = (3.0, np.array([0.0, 1.0, 2.0]))  # values 3, 0, 1, 2: mean 1.5, sd √1.25
    b = (0.0, np.array([1.0, -1.0, 0.0]))  # values 0, 1, −1, 0: mean 0, sd √0.5
    out = evaluate.pooled_dependence([a, b], "ridge")
    za = (np.array([3.0, 0, 1, 2]) - 1.5) / np.sqrt(1.25)
    zb = np.array([0.0, 1, -1, 0]) / np.sqrt(0.5)
    total = za + zb
    assert out["statistic"] == pytest.approx(total[0])
    assert out["p"] == pytest.approx((1 + (total[1:] >= total[0]).sum()) / 4)
    assert [r["p"] for r in out["per_split"]] == pytest.approx([1 / 4, 3 / 4])
    assert out["test"] == "ridge" and out["per_split"][0]["z"] == pytest.approx(za[0])


def test_permutations_exchange_whole_subjects_of_one_size():
    groups = np.array([0, 0, 1, 1, 2, 3, 4, 4, 4])
    perms = evaluate.permutations(len(groups), 50, np.random.default_rng(0), groups)
    for p in perms:
        assert sorted(p) == list(range(len(groups)))
        for s in np.unique(groups):  # a subject's clips go to the clips of one subject
            targets = np.unique(groups[p[groups == s]])
            assert len(targets) == 1 and (groups == targets[0]).sum() == (groups == s).sum()
    assert len({tuple(p) for p in perms}) > 10


def test_label_residual_subtracts_the_training_class_means():
    train_z = np.array([[1.0, 0], [3, 0], [0, 4]])
    train_label = np.array([0, 0, 1])
    test_z = np.array([[2.0, 2], [1, 1], [5, 5]])
    test_label = np.array([0, 1, 2])  # class 2 has no training clip: the overall mean
    out = evaluate.label_residual(train_z, train_label, test_z, test_label)
    assert out == pytest.approx(np.array([[0.0, 2], [1, -3], [5 - 4 / 3, 5 - 4 / 3]]))


def test_nadeau_bengio_corrected_t_test_by_hand():
    """d = [5, 10, −1, −1, 10] points over 5 folds, 12 and 10 test against 100 and 110 training
    clips: mean 4.6, sd 5.5045; corrected se = sd·√(1/5 + 11/105) = 3.0388, t(4) = 1.5138,
    p = 0.2046, CI 4.6 ± 2.7764·3.0388; the plain test: se = sd / √5, p = 0.135."""
    splits = [f"fold{k}" for k in range(5)]
    a = {
        "variant": "a",
        "splits": splits,
        "folds": splits,
        "accuracy_per_split": [0.50, 0.60, 0.55, 0.40, 0.70],
        "num_test_per_split": [12, 10, 12, 10, 11],
        "num_train_per_split": [100, 110, 100, 110, 105],
    }
    b = {"variant": "b", "splits": splits, "accuracy_per_split": [0.45, 0.50, 0.56, 0.41, 0.60]}
    c = evaluate.paired(a, b)
    assert c["test_train_ratio"] == pytest.approx(11 / 105)
    se = 0.0550454 * (1 / 5 + 11 / 105) ** 0.5
    assert se == pytest.approx(0.0303880, abs=1e-6)
    assert c["p_corrected"] == pytest.approx(0.2046468, abs=1e-5)
    assert c["ci95_corrected"] == pytest.approx(
        [0.046 - 2.7764451 * se, 0.046 + 2.7764451 * se], abs=1e-6
    )
    assert c["p"] == pytest.approx(0.1350, abs=1e-4) and c["p_corrected"] > c["p"]
    assert "Nadeau–Bengio corrected 95 % CI" in evaluate.verdict(c)
    assert "| 0.135 / 0.205 |" in evaluate.paired_cells(c)


def test_verdict_uses_the_corrected_test():
    """A difference the plain t-test calls significant (p = 0.031) and the corrected one does not
    (p = 0.11 with a tenth of the clips in test): no difference shown."""
    splits = [f"fold{k}" for k in range(10)]
    d = [0.02, 0.05, -0.01, 0.04, 0.03, 0.00, 0.06, 0.01, 0.03, -0.02]
    a = {
        "variant": "a",
        "splits": splits,
        "folds": splits,
        "accuracy_per_split": [0.5 + x for x in d],
        "num_test_per_split": [10] * 10,
        "num_train_per_split": [90] * 10,
    }
    b = {"variant": "b", "splits": splits, "accuracy_per_split": [0.5] * 10}
    c = evaluate.paired(a, b)
    assert c["p"] < 0.05 < c["p_corrected"] and c["ci95"][0] > 0 > c["ci95_corrected"][0]
    assert "no difference shown" in evaluate.verdict(c)
