"""Tests for synthetic.py: CK+ layout, labels, determinism, identity set."""

import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import synthetic
from synthetic import SyntheticConfig, generate

TINY = SyntheticConfig(subjects=4, id_subjects=3, id_images=3, size=48, min_frames=3,
                       max_frames=6, unlabelled=1)


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
