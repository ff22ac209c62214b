"""Tests for synthetic.py: CK+ layout, labels, determinism, identity set, coupling, skew,
label coupling."""

import hashlib
import json
import re
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import synthetic
from synthetic import SyntheticConfig, generate

TINY = SyntheticConfig(
    subjects=4, id_subjects=3, id_images=3, size=48, min_frames=3, max_frames=6, unlabelled=1
)


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*.png"))}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("ckplus")
    return root, generate(root, TINY, jobs=1)


def test_ckplus_layout(tiny: tuple[Path, dict]) -> None:
    root, summary = tiny
    images, emotion = root / "cohn-kanade-images", root / "Emotion"
    subjects = sorted(p.name for p in images.iterdir() if p.is_dir())
    assert len(subjects) == TINY.subjects
    assert all(re.fullmatch(r"S\d{3}", s) for s in subjects)
    n_labelled = n_unlabelled = n_frames = 0
    for s in subjects:
        seqs = sorted(p.name for p in (images / s).iterdir() if p.is_dir())
        assert seqs == [f"{i:03d}" for i in range(1, len(seqs) + 1)]
        codes = []
        for q in seqs:
            frames = sorted(p.name for p in (images / s / q).iterdir())
            n = len(frames)
            assert TINY.min_frames <= n <= TINY.max_frames
            assert frames == [f"{s}_{q}_{i:08d}.png" for i in range(1, n + 1)]
            n_frames += n
            labels = list((emotion / s / q).glob("*")) if (emotion / s / q).is_dir() else []
            if not labels:
                n_unlabelled += 1
                continue
            assert [p.name for p in labels] == [f"{s}_{q}_{n:08d}_emotion.txt"]
            text = labels[0].read_text()
            assert re.fullmatch(r" +\d\.\d{7}e\+00\n", text)
            codes.append(int(float(text)))
        assert all(1 <= c <= 7 for c in codes)
        assert len(set(codes)) == len(codes)  # each expression at most once per subject
        assert TINY.min_expressions <= len(codes) <= TINY.max_expressions
        n_labelled += len(codes)
    assert n_unlabelled == TINY.unlabelled == summary["unlabelled"]
    assert n_labelled == summary["labelled"] == sum(summary["per_class"].values())
    assert n_frames == summary["frames"]
    assert (root / "synthetic.json").is_file()


def test_frames_rgb_even(tiny: tuple[Path, dict]) -> None:
    root, _ = tiny
    for p in list(root.rglob("*.png"))[:20]:
        im = Image.open(p)
        assert im.mode == "RGB" and im.size == (TINY.size, TINY.size)
    with pytest.raises(ValueError):
        SyntheticConfig(size=127)


def test_identity_set(tiny: tuple[Path, dict]) -> None:
    root, summary = tiny
    people = sorted(p.name for p in (root / "identities").iterdir())
    assert people == [f"P{i:03d}" for i in range(1, TINY.id_subjects + 1)]
    for p in people:
        names = sorted(f.name for f in (root / "identities" / p).iterdir())
        assert names == [f"{i:03d}.png" for i in range(1, TINY.id_images + 1)]
    assert summary["id_images"] == TINY.id_subjects * TINY.id_images
    # disjoint from the expression subjects: different people, drawn from another stream
    a = [synthetic.make_identity(TINY, 0, i) for i in range(TINY.subjects)]
    b = [synthetic.make_identity(TINY, 1, i) for i in range(TINY.id_subjects)]
    geo = [np.array(list(x.geo.values())) for x in a + b]
    for i in range(len(a)):
        for j in range(len(a), len(geo)):
            assert np.abs(geo[i] - geo[j]).max() > 1e-3


def test_deterministic(tiny: tuple[Path, dict], tmp_path: Path) -> None:
    root, _ = tiny
    generate(tmp_path / "same", TINY, jobs=2)
    same = _files(tmp_path / "same")
    assert same == _files(root)
    other = SyntheticConfig(**{**TINY.__dict__, "seed": 1})
    generate(tmp_path / "other", other, jobs=1)
    diff = _files(tmp_path / "other")
    common = set(diff) & set(same)
    assert any(diff[k] != same[k] for k in common)


def test_refuses_non_empty(tiny: tuple[Path, dict]) -> None:
    root, _ = tiny
    with pytest.raises(FileExistsError):
        generate(root, TINY)


def test_cli_preview(tmp_path: Path) -> None:
    out = tmp_path / "prev.png"
    assert synthetic.main(["--preview", str(out), "--size", "64"]) is None
    assert Image.open(out).size[0] == 8 * 96


def _held_out_r2(x: np.ndarray, y: np.ndarray, n_fit: int, lam: float) -> float:
    """R² of ridge x → y (standardised columns) fit on the first n_fit rows, scored on the rest."""
    mu, sd = x[:n_fit].mean(0), x[:n_fit].std(0) + 1e-6
    x = (x - mu) / sd
    y = (y - y[:n_fit].mean(0)) / y[:n_fit].std(0)
    b = np.linalg.solve(x[:n_fit].T @ x[:n_fit] + lam * np.eye(x.shape[1]), x[:n_fit].T @ y[:n_fit])
    rest = y[n_fit:]
    return float(1 - ((rest - x[n_fit:] @ b) ** 2).sum() / ((rest - rest.mean(0)) ** 2).sum())


_SCALARS = (
    "gain",
    "asym",
    "gamma",
    "lead",
    "reach",
    "blink_period",
    "nod_amp",
    "nod_period",
    "tic_amp",
    "tic_period",
)


def _styles(people: list) -> np.ndarray:
    """The scalar style quantities, then the person's weight of each emotion's own units."""
    own = synthetic._PROTO > 0
    return np.stack([np.r_[[getattr(p, k) for k in _SCALARS], p.protos[own]] for p in people])


def test_coupling_ties_style_to_appearance() -> None:
    """Held-out R² from the appearance attributes to the style rises with c (about c²)."""
    r2 = {}
    for c in (0.0, 0.5, 1.0):
        cfg = SyntheticConfig(coupling=c)
        people = [synthetic.make_identity(cfg, 0, i) for i in range(400)]
        a = np.stack([synthetic.appearance(p) for p in people])
        y = _styles(people)
        r2[c] = _held_out_r2(a, y[:, : len(_SCALARS)], 300, 10.0)
        r2[f"protos {c}"] = _held_out_r2(a, y[:, len(_SCALARS) :], 300, 10.0)
    assert max(r2[0.0], r2["protos 0.0"]) < 0.05, r2
    assert 0.1 < min(r2[0.5], r2["protos 0.5"]) and max(r2[0.5], r2["protos 0.5"]) < 0.4, r2
    assert min(r2[1.0], r2["protos 1.0"]) > 0.8, r2


def test_coupling_visible_in_the_neutral_frame() -> None:
    """Downsampled pixels of the neutral frame predict the style at c = 1, not at c = 0."""
    r2 = {}
    for c in (0.0, 1.0):
        cfg = SyntheticConfig(coupling=c, size=32, expressions=0)
        frames = [synthetic.neutral_frame(cfg, i) for i in range(150)]
        x = np.stack([np.asarray(img.reduce(2), float).ravel() for _, img in frames])
        r2[c] = _held_out_r2(x, _styles([p for p, _ in frames])[:, : len(_SCALARS)], 110, 300.0)
    assert r2[0.0] < 0.02 and r2[1.0] > r2[0.0] + 0.1, r2


def test_coupling_keeps_appearance_and_marginals() -> None:
    """Coupling changes the style only, and each style quantity keeps its distribution."""
    stats = {}
    for c in (0.0, 1.0):
        cfg = SyntheticConfig(coupling=c, expressions=0)
        people = [synthetic.make_identity(cfg, 0, i) for i in range(400)]
        stats[c] = np.array(
            [
                [
                    np.log(p.gain),
                    np.log(p.gamma),
                    p.asym,
                    p.lead,
                    p.blink_period,
                    np.log(p.protos[4, synthetic._A["12"]]),
                ]
                for p in people
            ]
        )
        if c == 0.0:
            base = people
    for p, q in zip(base, people, strict=True):
        assert p.geo == q.geo and p.colors == q.colors and p.age == q.age and p.part == q.part
        assert (p.hair, p.beard, p.glasses) == (q.hair, q.beard, q.glasses)
        assert p.gain != q.gain
    mean0, mean1 = stats[0.0].mean(0), stats[1.0].mean(0)
    sd0, sd1 = stats[0.0].std(0), stats[1.0].std(0)
    assert np.all(np.abs(mean1 - mean0) < 0.2 * sd0), (mean0, mean1)
    assert np.all(np.abs(sd1 / sd0 - 1) < 0.15), (sd0, sd1)
    with pytest.raises(ValueError, match="coupling"):
        SyntheticConfig(coupling=1.5)


def test_coupled_style_adds_style() -> None:
    """λ = coupled_style > 1: the appearance-driven part is λ times stronger, the style wider."""
    sd = {}
    for c, lam in ((0.0, 2.0), (1.0, 1.0), (1.0, 2.0), (0.5, 2.0)):
        cfg = SyntheticConfig(coupling=c, coupled_style=lam, expressions=0)
        people = [synthetic.make_identity(cfg, 0, i) for i in range(400)]
        sd[c, lam] = np.std([[np.log(p.gain), np.log(p.gamma)] for p in people], axis=0)
    base = sd[0.0, 2.0]  # c = 0: λ has nothing to scale
    assert np.all(np.abs(sd[1.0, 1.0] / base - 1) < 0.15)
    rho2 = 1 - 0.1**2
    for c in (1.0, 0.5):  # latent sd sqrt(1 + ρ²(λ² − 1)), ρ = c·sqrt(1 − η²)
        want = np.sqrt(1 + c * c * rho2 * 3)
        assert np.all(np.abs(sd[c, 2.0] / base / want - 1) < 0.15), (c, sd[c, 2.0] / base, want)
    with pytest.raises(ValueError, match="coupled_style"):
        SyntheticConfig(coupled_style=-1)


def test_label_skew_like_ckplus() -> None:
    cfg = SyntheticConfig(subjects=118)
    plan = synthetic.label_plan(cfg)
    counts = np.array([len(e) for e in plan])
    assert all(len(set(e)) == len(e) for e in plan)  # each emotion at most once per subject
    assert abs(counts.mean() - 327 / 118) < 0.3
    assert np.mean((counts >= 1) & (counts <= 3)) > 0.6 and counts.min() >= 1
    totals = np.bincount([e for es in plan for e in es], minlength=7)
    ckplus = np.array([45, 18, 59, 25, 69, 28, 83])
    assert np.abs(totals - counts.sum() * ckplus / ckplus.sum()).max() <= 1
    # more skew: one emotion per subject on average shows in the plan
    few = synthetic.label_plan(SyntheticConfig(subjects=118, expressions=1.3))
    assert np.mean([len(e) for e in few]) < 1.5
    assert synthetic.label_plan(SyntheticConfig(expressions=0)) is None
    with pytest.raises(ValueError, match="expressions"):
        SyntheticConfig(expressions=0.5)


def test_summary_counts_labels_per_subject(tiny: tuple[Path, dict]) -> None:
    root, summary = tiny
    shown = [
        len(list((root / "Emotion" / s.name).glob("*/*.txt")))
        for s in sorted((root / "cohn-kanade-images").iterdir())
        if s.is_dir()
    ]
    hist = summary["labels_per_subject"]
    assert sum(hist.values()) == TINY.subjects
    assert {int(k): v for k, v in hist.items() if v} == {k: shown.count(k) for k in set(shown)}
    plan = synthetic.label_plan(TINY)
    assert sorted(len(e) for e in plan) == sorted(shown)


def test_neutral_frame_is_the_written_first_frame(tiny: tuple[Path, dict]) -> None:
    root, _ = tiny
    ids = synthetic.subject_ids(TINY)
    plan = synthetic.label_plan(TINY)
    for i in range(TINY.subjects):
        sid = ids[i]
        path = root / "cohn-kanade-images" / f"S{sid:03d}" / "001" / f"S{sid:03d}_001_00000001.png"
        extra = len(list((root / "cohn-kanade-images" / f"S{sid:03d}").glob("0*"))) - len(plan[i])
        _, img = synthetic.neutral_frame(TINY, i, extra, plan[i])
        assert np.array_equal(np.asarray(img), np.asarray(Image.open(path)))


def _digest(root: Path) -> str:
    """SHA-256 of a generated set: every path, the pixels of every PNG, every other file's bytes
    (synthetic.json left out: it records the config, which gains fields)."""
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.name == "synthetic.json":
            continue
        h.update(str(p.relative_to(root)).encode() + b"\0")
        if p.suffix == ".png":
            h.update(np.asarray(Image.open(p)).tobytes())
        elif p.is_file():
            h.update(p.read_bytes())
    return h.hexdigest()


def test_label_coupling_zero_is_the_set_before_it(tiny: tuple[Path, dict], tmp_path: Path) -> None:
    """At label coupling 0 the set is the one generated before the knob existed (digests of
    the code before it), with CK+'s skew and with the per-subject draw."""
    assert _digest(tiny[0]) == "834477ce9e0c6860d9acbba05736eefcd1e0b03aa0181ba78cafe4aaabcce0f0"
    cfg = replace(TINY, subjects=6, expressions=0, coupling=0.0, label_coupling=0.0)
    generate(tmp_path, cfg)
    assert _digest(tmp_path) == "69095e71ea85d21257a9b2ad4723489d282b9b7279be83a032af0f1cf2c28449"


def _neutral_label_rows(cfg: SyntheticConfig) -> tuple[np.ndarray, ...]:
    """One row per labelled sequence: the subject's neutral I-frame (8×8 pixels), the label
    (0..6), the subject and its appearance group."""
    plan = synthetic.label_plan(cfg)
    x, y, subject, group = [], [], [], []
    for i in range(cfg.subjects):
        ident, _, labels, _ = synthetic._subject_start(cfg, i, 0, plan[i])
        _, img = synthetic.neutral_frame(cfg, i, 0, plan[i])
        for code in labels:
            x.append(np.asarray(img.reduce(4), float).ravel())
            y.append(code - 1)
            subject.append(i)
            group.append(synthetic.label_group(ident))
    return np.array(x), np.array(y), np.array(subject), np.array(group)


def test_label_coupling_makes_the_neutral_face_predict_the_label() -> None:
    """Held-out subjects (5 folds): a ridge classifier of the label from the neutral frame's
    pixels, and the most frequent label of the recorded appearance group, beat the majority
    rate at L = 1 and not at L = 0."""
    gain = {}
    for lc in (0.0, 1.0):
        cfg = SyntheticConfig(subjects=100, size=32, coupling=0.0, label_coupling=lc)
        pixels, y, subject, group = _neutral_label_rows(cfg)
        hits = np.zeros((2, len(y)), bool)
        for k in range(5):
            test = subject % 5 == k
            fit = ~test
            x = (pixels - pixels[fit].mean(0)) / (pixels[fit].std(0) + 1e-6)
            onehot = np.eye(7)[y] - np.eye(7)[y[fit]].mean(0)
            b = np.linalg.solve(
                x[fit].T @ x[fit] + 300 * np.eye(x.shape[1]), x[fit].T @ onehot[fit]
            )
            hits[0, test] = (x[test] @ b).argmax(1) == y[test]
            by_group = [np.bincount(y[fit & (group == g)], minlength=7).argmax() for g in range(3)]
            hits[1, test] = np.take(by_group, group[test]) == y[test]
        gain[lc] = hits.mean(1) - np.bincount(y).max() / len(y)
        if lc == 1.0:  # each subject shows exactly its group's emotions
            for i in range(cfg.subjects):
                emotions = {synthetic.EMOTIONS[e] for e in y[subject == i]}
                assert emotions == set(synthetic.LABEL_GROUPS[group[subject == i][0]])
    assert gain[0.0].max() < 0.03 and gain[1.0].min() > 0.1, gain


def test_label_coupling_mixes_and_is_recorded(tmp_path: Path) -> None:
    """0 < L < 1: a share L of the subjects is coupled (the same ones and more as L rises);
    the CLI takes --label-coupling and synthetic.json records it, each subject's group and the
    coupled subjects, which show their group's emotions."""
    coupled = {
        lc: synthetic.label_coupled(SyntheticConfig(subjects=1000, label_coupling=lc))
        for lc in (0.0, 0.3, 0.7, 1.0)
    }
    assert not coupled[0.0].any() and coupled[1.0].all()
    assert abs(coupled[0.3].mean() - 0.3) < 0.05 and abs(coupled[0.7].mean() - 0.7) < 0.05
    assert np.all(coupled[0.7][coupled[0.3]])
    root = tmp_path / "set"
    synthetic.main(
        [
            "--out",
            str(root),
            "--subjects",
            "8",
            "--id-subjects",
            "0",
            "--size",
            "32",
            "--min-frames",
            "2",
            "--max-frames",
            "3",
            "--unlabelled",
            "0",
            "--label-coupling",
            "0.5",
        ]
    )
    meta = json.loads((root / "synthetic.json").read_text())
    assert meta["config"]["label_coupling"] == 0.5
    groups = meta["summary"]["label_groups"]
    assert groups["emotions"] == [list(g) for g in synthetic.LABEL_GROUPS]
    assert 0 < len(groups["coupled"]) < 8 and len(groups["group"]) == 8
    for sid, k in groups["group"].items():
        codes = {int(float(p.read_text())) for p in (root / "Emotion" / sid).glob("*/*.txt")}
        emotions = {synthetic.EMOTIONS[c - 1] for c in codes}
        if sid in groups["coupled"]:
            assert emotions == set(synthetic.LABEL_GROUPS[k])
    with pytest.raises(ValueError, match="label_coupling must"):
        SyntheticConfig(label_coupling=1.5)
    with pytest.raises(ValueError, match="label_coupling needs"):
        SyntheticConfig(label_coupling=0.5, max_expressions=2, expressions=0)
