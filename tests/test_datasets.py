"""Tests of datasets.py: indexing of CK+/MMI/AFEW trees with their quirks, the protocols."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

import datasets as ds
from tests.trees import CK_SUBJECTS, emotion, read_csv

ROOT = Path(__file__).resolve().parents[1]


def test_ckplus_index(ckplus: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rows = read_csv(ckplus / "index.csv")
    assert list(rows[0]) == list(ds.COLUMNS)
    assert len(rows) == len(CK_SUBJECTS)
    for i, s in enumerate(CK_SUBJECTS):
        (r,) = [r for r in rows if r["subject"] == s]
        assert r["path"] == f"cohn-kanade-images/{s}/001.mp4"
        assert int(r["label"]) == i % 7 and r["label_name"] == ds.CKPLUS_CLASSES[i % 7]
        assert r["num_frames"] == "8" and r["apex"] == "7" and r["crop"] == "none"
        assert r["fold"] == str(i % 10)  # sorted subject i -> fold i mod 10
    folds_of: dict[str, set[str]] = {}
    for r in rows:
        folds_of.setdefault(r["subject"], set()).add(r["fold"])
    assert all(len(f) == 1 for f in folds_of.values())

    index = ds.build_index("ckplus", ckplus)
    p = index.problems
    assert sorted(p["unlabelled sequence"]) == [
        "cohn-kanade-images/S005/002.mp4",
        "cohn-kanade-images/S010/003.mp4",
    ]
    assert len(p["unreadable clip"]) == 1 and "S011/002.mp4" in p["unreadable clip"][0]
    assert len(p["unknown label"]) == 1 and "S014/002.mp4 (code 0)" in p["unknown label"][0]
    assert p["label without clip"] == ["Emotion/S099/001"]
    assert sum(map(len, p.values())) == 5
    text = ds.summary(index)
    assert "unlabelled sequence: 2" in text and "unreadable clip: 1" in text
    assert "11 clips, 11 subjects, 7 classes" in text


def test_synthetic_uses_ckplus_layout(ckplus: Path, tmp_path: Path) -> None:
    out = tmp_path / "index.csv"
    assert (
        ds.main(["index", "--dataset", "synthetic", "--root", str(ckplus), "--out", str(out)]) == 0
    )
    rows = read_csv(out)
    assert len(rows) == len(CK_SUBJECTS) and {r["dataset"] for r in rows} == {"synthetic"}


def test_raw_tree_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    seq = tmp_path / "cohn-kanade-images" / "S005" / "001"
    seq.mkdir(parents=True)
    for i in range(3):
        Image.new("L", (16, 16), i * 40).save(seq / f"S005_001_{i + 1:08d}.png")
    emotion(tmp_path, "S005", "001", 5)
    assert ds.main(["--dataset", "ckplus", "--root", str(tmp_path)]) == 2
    assert "reencode.sh" in capsys.readouterr().err
    assert not (tmp_path / "index.csv").exists()
    afew = tmp_path / "afew" / "Train_AFEW" / "Happy"
    afew.mkdir(parents=True)
    (afew / "000000001.avi").write_bytes(b"RIFF")
    with pytest.raises(ds.RawTreeError, match="reencode.sh"):
        ds.build_index("afew", tmp_path / "afew")


def test_mmi_index(mmi: Path) -> None:
    index = ds.build_index("mmi", mmi, dual_view_half="right")
    rows = {Path(e.path).stem: e for e in index.entries}
    assert sorted(rows) == ["S001-001", "S001-002", "S002-003", "S003-006", "S004-008"]
    names = [rows[s].label_name for s in sorted(rows)]
    assert names == ["anger", "happy", "surprise", "fear", "sadness"]
    assert rows["S001-002"].view == 2 and rows["S001-002"].crop == "right"
    assert rows["S001-001"].crop == "none" and rows["S001-001"].apex == 4  # middle of 8
    assert rows["S003-006"].subject == "S003"
    assert {e.subject: e.fold for e in index.entries} == {"1": "0", "2": "1", "4": "2", "S003": "3"}
    assert rows["S004-008"].num_frames == 5  # GOP 0 only
    p = index.problems
    assert p["several GOPs (only GOP 0 used)"] == ["Sessions/8/S004-008.mp4 (5 frames)"]
    assert p["unsupported view 1"] == ["Sessions/4/S002-004.mp4"]
    assert p["unlabelled sequence"] == ["Sessions/5/S003-005.mp4"]
    assert len(p["no subject in session.xml (taken from the name)"]) == 1


def test_mmi_selection(mmi: Path, tmp_path: Path) -> None:
    sel = tmp_path / "selection.csv"
    sel.write_text("sid,label,subject\nS001-001,happy,\nS003-005,2,7\nS009-999,1,9\n")
    index = ds.build_index("mmi", mmi, selection=str(sel))
    got = {Path(e.path).stem: (e.label_name, e.subject) for e in index.entries}
    assert got == {"S001-001": ("happy", "1"), "S003-005": ("disgust", "7")}
    assert index.problems["selection entry not found"] == ["S009-999"]
    assert len(index.problems["not in selection"]) == 5


def test_afew_index(afew: Path) -> None:
    rows = read_csv(afew / "index.csv")
    got = {r["subject"]: (r["label_name"], r["fold"], r["apex"]) for r in rows}
    assert got == {
        "000000001": ("angry", "train", "-1"),
        "000000002": ("happy", "train", "-1"),
        "000000003": ("happy", "train", "-1"),
        "000000004": ("sad", "val", "-1"),
        "000000005": ("neutral", "val", "-1"),
    }
    index = ds.build_index("afew", afew)
    assert index.problems == {"unknown label": ["Train_AFEW/Bored/000000006.mp4 (folder Bored)"]}


def test_cli_subprocess(afew: Path, tmp_path: Path) -> None:
    out = tmp_path / "i.csv"
    cmd = [sys.executable, "datasets.py", "--dataset", "afew", "--root", str(afew), "--out", out]
    res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert "5 clips" in res.stdout and "unknown label: 1" in res.stdout
    assert len(read_csv(out)) == 5


