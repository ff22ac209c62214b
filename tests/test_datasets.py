"""Tests of datasets.py: indexing of CK+/MMI/AFEW/DFEW/FERV39k/MAFW trees with their quirks (raw
JPEG frame folders through reencode.sh too), label codes, the protocols, index.csv validation."""

from __future__ import annotations

import csv
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from PIL import Image

import datasets as ds
import reader
from tests.trees import (
    CK_SUBJECTS,
    DFEW_GOOD,
    FERV39K_GOOD,
    MAFW_GOOD,
    clip,
    dfew_tree,
    emotion,
    ferv39k_tree,
    frame_folder,
    mafw_tree,
    mmi_session,
    read_csv,
)

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
    assert p["unknown label"] == ["cohn-kanade-images/S014/002.mp4 ('0.0000000e+00')"]
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


# ----------------------------------------------------------------------------------------------
# CK+ label codes
# ----------------------------------------------------------------------------------------------

# label file text -> integer_code (None: not an integer code)
LABEL_TEXTS = {
    "   3.0000000e+00": 3,
    "3": 3,
    "+3.0": 3,
    "7.": 7,
    "3.7": None,
    "inf": None,
    "1e400": None,  # overflows to inf
    "-1e400": None,
    "nan": None,
    "": None,
    "happy": None,
    "0x3": None,
    "3_0": None,  # float() would read 30
    "-3": -3,  # integers, but not CK+ codes 1..7
    "0": 0,  # neutral
    "8": 8,
}


@pytest.mark.parametrize("text", LABEL_TEXTS)
def test_integer_code(text: str) -> None:
    assert ds.integer_code(text) == LABEL_TEXTS[text]


def test_ckplus_label_files(tmp_path: Path) -> None:
    """Each label text on its own sequence: integer codes 1..7 are classes, everything else
    (3.7, inf, 1e400, nan, empty, text, negative, 0, 8) an unknown label listed with its text."""
    for n, text in enumerate(LABEL_TEXTS, 1):
        subject = f"S{n:03d}"
        clip(tmp_path / "cohn-kanade-images" / subject / "001.mp4", 32, 32, frames=3, seed=n)
        d = tmp_path / "Emotion" / subject / "001"
        d.mkdir(parents=True)
        (d / f"{subject}_001_00000003_emotion.txt").write_text(text + "\n")
    index = ds.build_index("ckplus", tmp_path)
    got = {e.subject: e.label for e in index.entries}
    unknown = index.problems["unknown label"]
    for n, (text, code) in enumerate(LABEL_TEXTS.items(), 1):
        subject = f"S{n:03d}"
        if code is not None and 1 <= code <= 7:
            assert got[subject] == code - 1
        else:
            assert f"cohn-kanade-images/{subject}/001.mp4 ({text!r})" in unknown
            assert subject not in got
    assert len(got) == 4 and len(unknown) == len(LABEL_TEXTS) - 4


# ----------------------------------------------------------------------------------------------
# DFEW, FERV39k, MAFW
# ----------------------------------------------------------------------------------------------


def only(items: list[str], start: str) -> bool:
    """Whether ``items`` is one item starting with ``start``."""
    return len(items) == 1 and items[0].startswith(start)


def check_garbled(p: dict[str, list[str]], missing: str, garbled: str, from_frames: bool) -> None:
    """The listed clip ``missing`` is missing; the garbled clip is unreadable, or, when the tree
    was re-encoded from frame folders (reencode.sh failed on it), missing too."""
    gone = sorted(p.pop("missing clip"))
    assert gone[0].startswith(f"{missing} (")
    if from_frames:
        assert len(gone) == 2 and gone[1].startswith(f"{garbled} (")
    else:
        assert len(gone) == 1 and only(p.pop("unreadable clip"), f"{garbled} (")


def check_dfew(root: Path, from_frames: bool = False) -> None:
    rows = read_csv(root / "index.csv")
    got = {r["subject"]: (r["path"], r["label_name"], r["fold"]) for r in rows}
    assert got == {
        f"{i:05d}": (f"Clip/clip_224x224/{i:05d}.mp4", ds.DFEW_CLASSES[int(code) - 1], str(k))
        for i, (code, (k,)) in DFEW_GOOD.items()
    }
    assert {(r["num_frames"], r["apex"], r["dataset"]) for r in rows} == {("6", "-1", "dfew")}
    p = ds.build_index("dfew", root).problems
    clips, split = "Clip/clip_224x224", "EmoLabel_DataSplit"
    check_garbled(p, f"{clips}/00013.mp4", f"{clips}/00016.mp4", from_frames)
    assert p.pop("test clip in several sets") == ["00009 (sets 1, 2)"]
    assert p.pop("train and test clip in the same set") == ["00010 (set 1)"]
    assert only(p.pop("unknown label"), f"00011 ('8' at {split}/")
    assert p.pop("labels disagree between split files") == [
        f"00014: 3 at {split}/train(single_labeled)/set_1.csv:11, "
        f"3 at {split}/train(single_labeled)/set_2.csv:11, "
        f"3 at {split}/train(single_labeled)/set_3.csv:10, "
        f"2 at {split}/test(single-labeled)/set_4.csv:3, "
        f"3 at {split}/train(single_labeled)/set_5.csv:13"
    ]
    assert p.pop("missing from a train set (trained on there)") == [
        "00015 (test in set 5, not in train of set 2)"
    ]
    assert p.pop("clip in no split file") == [f"{clips}/00017.mp4"]
    assert only(p.pop("train clip in no test set"), f"00018 ({split}/train(single_labeled)/")
    assert p == {}


def check_ferv39k(root: Path, from_frames: bool = False) -> None:
    rows = read_csv(root / "index.csv")
    got = {r["subject"]: (r["path"], r["label_name"], r["fold"]) for r in rows}
    assert got == {
        k: (f"2_ClipsforFaceCrop/{k}.mp4", label.lower(), role)
        for k, (role, label) in FERV39K_GOOD.items()
    }
    p = ds.build_index("ferv39k", root).problems
    clips, split = "2_ClipsforFaceCrop", "4_setups/All_scenes"
    check_garbled(
        p, f"{clips}/Argue/Fear/0009.mp4", f"{clips}/Business/Happy/0003.mp4", from_frames
    )
    assert p.pop("train and test clip in the same set") == ["Action/Happy/0002 (set All)"]
    assert p.pop("unknown label") == [f"Action/Sad/0005 ('Sadness' at {split}/train_All.csv:6)"]
    assert p.pop("listed twice in a split file") == ["Crime/Angry/0004 (train of set All)"]
    assert p.pop("labels disagree between split files") == [
        f"Crime/Angry/0004: Angry at {split}/train_All.csv:7, Disgust at {split}/train_All.csv:8"
    ]
    assert p.pop("bad split line") == [f"{split}/train_All.csv:9 ('Action/Happy/0010')"]
    assert p.pop("bad clip name") == [f"'../Action/Happy/0000' at {split}/train_All.csv:10"]
    assert p.pop("clip in no split file") == [f"{clips}/Crime/Happy/0007.mp4"]
    assert p == {}


def check_mafw(root: Path, from_frames: bool = False) -> None:
    clips = "data/frames" if from_frames else "data/clips"
    rows = read_csv(root / "index.csv")
    got = {r["subject"]: (r["path"], r["label_name"], r["fold"]) for r in rows}
    assert got == {
        f"{i:05d}": (f"{clips}/{i:05d}.mp4", label, str(k))
        for i, (label, (k,)) in MAFW_GOOD.items()
    }
    assert {r["label"] for r in rows} == {str(i) for i in range(11)}
    p = ds.build_index("mafw", root).problems
    split = "Train & Test Set/single/no_caption"
    check_garbled(p, f"{clips}/00014.mp4", f"{clips}/00016.mp4", from_frames)
    assert p.pop("test clip in several sets") == ["00012 (sets 1, 3)"]
    assert p.pop("unknown label") == [f"00013 ('Happy' at {split}/set_1/train.txt:9)"]
    assert only(p.pop("labels disagree between split files"), "00017: contempt at ")
    assert p.pop("clip in no split file") == [f"{clips}/00015.mp4"]
    assert p == {}


def test_dfew_index(dfew: Path) -> None:
    check_dfew(dfew)
    assert ds.read_index(dfew / "index.csv")  # valid as written


def test_ferv39k_index(ferv39k: Path) -> None:
    check_ferv39k(ferv39k)
    assert ds.read_index(ferv39k / "index.csv")


def test_mafw_index(mafw: Path) -> None:
    check_mafw(mafw)
    assert ds.read_index(mafw / "index.csv")


@pytest.mark.parametrize(
    "dataset, build, check",
    [("dfew", dfew_tree, check_dfew), ("ferv39k", ferv39k_tree, check_ferv39k),
     ("mafw", mafw_tree, check_mafw)],
)  # fmt: skip
def test_jpeg_frame_folders_end_to_end(
    dataset: str, build: Callable[..., Path], check: Callable[[Path, bool], None], tmp_path: Path
) -> None:
    """The released layout with JPEG frame folders -> reencode.sh -> datasets.py: the same index
    and problems as the re-encoded fixture, but the clip of undecodable frames, which
    reencode.sh reports as failed, is a missing clip."""
    raw, out = build(tmp_path / "raw", ".jpg"), tmp_path / "out"
    with pytest.raises(ds.RawTreeError, match="reencode.sh"):
        ds.build_index(dataset, raw)
    res = subprocess.run(
        ["bash", str(ROOT / "reencode.sh"), "-j", "2", str(raw), str(out)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert res.returncode == 1 and "failed 1" in res.stdout, res.stdout + res.stderr
    assert ds.main(["--dataset", dataset, "--root", str(out)]) == 0
    check(out, True)


def test_split_dataset_cli(dfew: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """--clips picks another clip folder; a folder outside ROOT is refused; every problem goes
    to index_problems.txt while the printout lists MAX_LISTED of each kind."""
    other = dfew / "Clip" / "original"
    clip(other / "00001.mp4", 32, 32, frames=5, seed=1)
    out = tmp_path / "i.csv"
    argv = ["--dataset", "dfew", "--root", str(dfew), "--out", str(out), "--clips", "Clip/original"]
    assert ds.main(argv) == 0
    text = capsys.readouterr().out
    assert "1 clips, 1 subjects, 7 classes (clips from Clip/original)" in text
    assert read_csv(out)[0]["path"] == "Clip/original/00001.mp4"
    listed = (tmp_path / "i_problems.txt").read_text().splitlines()
    assert any(line.startswith("missing clip\tClip/original/00002.mp4 (") for line in listed)
    assert sum(line.startswith("missing clip\t") for line in listed) == 10  # 1-8, 13, 15, 16
    argv[-1] = str(tmp_path)
    assert ds.main(argv) == 2
    assert "outside" in capsys.readouterr().err
    index = ds.build_index("dfew", dfew, clips="Clip/original")
    short = ds.summary(index, max_items=2)
    assert "  missing clip: 10\n" in short and "    ... and 8 more" in short


def test_kfold_protocols() -> None:
    for name in ("dfew", "mafw"):
        splits = ds.PROTOCOLS[name]
        assert [s.name for s in splits] == [f"fold{k}" for k in range(1, 6)]
        for k, s in enumerate(splits, 1):
            assert s.test == (str(k),) and set(s.train) == {str(j) for j in range(1, 6)} - {str(k)}
    assert ds.PROTOCOLS["ferv39k"] == (ds.Split("test", ("train",), ("test",)),)
    assert {s.apex for s in ds.SPECS.values()} == {"last", "middle", "none"}
    assert set(ds.CLASSES) == set(ds.SPECS) - {"custom"} and set(ds.PROTOCOLS) == set(ds.SPECS)


def test_raw_dfew_videos_are_refused(tmp_path: Path) -> None:
    dfew_tree(tmp_path)
    for p in (tmp_path / "Clip" / "clip_224x224").glob("*.mp4"):
        p.unlink()
    frame_folder(tmp_path / "Clip" / "clip_224x224" / "00001", 3, 0)
    with pytest.raises(ds.RawTreeError, match="Clip/clip_224x224/00001"):
        ds.build_index("dfew", tmp_path)


# ----------------------------------------------------------------------------------------------
# index.csv validation
# ----------------------------------------------------------------------------------------------

GOOD_ROWS = [
    dict(path="cohn-kanade-images/S005/001.mp4", subject="S005", label="0", label_name="anger",
         num_frames="8", fold="0", dataset="ckplus", view="0", crop="none", apex="7"),
    dict(path="cohn-kanade-images/S010/001.mp4", subject="S010", label="4", label_name="happy",
         num_frames="8", fold="1", dataset="ckplus", view="0", crop="none", apex="7"),
    dict(path="cohn-kanade-images/S011/001.mp4", subject="S011", label="6",
         label_name="surprise", num_frames="12", fold="2", dataset="ckplus", view="0",
         crop="none", apex="11"),
]  # fmt: skip

BAD_ROWS = {
    "unknown dataset": ({"dataset": "ck+"}, "unknown dataset 'ck+'"),
    "mixed datasets": (
        {"dataset": "afew", "fold": "train", "label_name": "happy", "label": "3"},
        "dataset 'afew' in an index of 'ckplus'",
    ),
    "label not integer": ({"label": "3.0"}, "label '3.0' is not an integer in 0..6 (ckplus)"),
    "label too large": ({"label": "7"}, "label '7' is not an integer in 0..6"),
    "label negative": ({"label": "-1"}, "label '-1' is not an integer in 0..6"),
    "label_name mismatch": ({"label_name": "fear"}, "label_name 'fear' is not class 4, 'happy'"),
    "one frame": ({"num_frames": "1"}, "num_frames '1' is not an integer >= 2"),
    "frames not integer": ({"num_frames": "8.5"}, "num_frames '8.5' is not an integer >= 2"),
    "apex past the end": ({"apex": "8"}, "apex '8' is not an integer in -1..7"),
    "apex below -1": ({"apex": "-2"}, "apex '-2' is not an integer in -1..7"),
    "unknown crop": ({"crop": "top"}, "crop 'top' is not none, left or right"),
    "view not integer": ({"view": "frontal"}, "view 'frontal' is not an integer"),
    "fold out of range": ({"fold": "10"}, "fold '10' is not a fold of ckplus (0, 1, 2, 3"),
    "fold of another protocol": ({"fold": "val"}, "fold 'val' is not a fold of ckplus"),
    "path up": ({"path": "../S010/001.mp4"}, "path '../S010/001.mp4' is not a relative path"),
    "path absolute": ({"path": "/data/S010/001.mp4"}, "path '/data/S010/001.mp4' is not a"),
    "path escaping midway": ({"path": "a/../../S010.mp4"}, "path 'a/../../S010.mp4' is not"),
    "path with a drive": ({"path": "C:\\data\\001.mp4"}, "path 'C:\\\\data\\\\001.mp4' is not"),
    "path with backslashes up": (
        {"path": "a\\..\\..\\x.mp4"},
        "path 'a\\\\..\\\\..\\\\x.mp4' is not",
    ),
    "empty path": ({"path": ""}, "path '' is not a relative path inside the root"),
    "empty subject": ({"subject": " "}, "empty subject"),
    "clip listed twice": (
        {"path": "./cohn-kanade-images//S005/001.mp4", "subject": "S005", "fold": "0"},
        "clip ./cohn-kanade-images//S005/001.mp4 listed twice (first at line 2)",
    ),
    "subject in two folds": (
        {"subject": "S005"},
        "subject S005 in fold 1 and in fold 0 (line 2): the ckplus protocol is subject-independent",
    ),
}


def write_rows(path: Path, rows: list[dict[str, str]]) -> Path:
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, ds.COLUMNS)
        w.writeheader()
        w.writerows(rows)
    return path


def test_read_index_accepts_good_rows(tmp_path: Path) -> None:
    rows = ds.read_index(write_rows(tmp_path / "index.csv", GOOD_ROWS))
    assert rows == GOOD_ROWS
    dfew = dict(GOOD_ROWS[0], dataset="dfew", fold="5", label_name="happy", apex="-1")
    mmi = dict(GOOD_ROWS[0], dataset="mmi", view="2", crop="left", apex="4")
    for row in (dfew, mmi):
        assert ds.read_index(write_rows(tmp_path / "other.csv", [row])) == [row]


@pytest.mark.parametrize("case", BAD_ROWS)
def test_read_index_rejects(case: str, tmp_path: Path) -> None:
    change, message = BAD_ROWS[case]
    rows = [GOOD_ROWS[0], dict(GOOD_ROWS[1], **change), GOOD_ROWS[2]]
    path = write_rows(tmp_path / "index.csv", rows)
    with pytest.raises(ValueError) as exc:
        ds.read_index(path)
    text = str(exc.value)
    assert text.startswith(f"{path}: 1 bad row(s)") and f"line 3: {message}" in text, text


def test_read_index_rejects_short_rows_and_empty_files(tmp_path: Path) -> None:
    path = write_rows(tmp_path / "index.csv", GOOD_ROWS)
    with open(path, "a") as f:
        f.write("cohn-kanade-images/S022/001.mp4,S022,3\n")
    with pytest.raises(ValueError, match=r"index.csv: 1 bad row.*\n  line 5: wrong number"):
        ds.read_index(path)
    with pytest.raises(ValueError, match="no clip listed"):
        ds.read_index(write_rows(tmp_path / "empty.csv", []))
    many = [dict(GOOD_ROWS[0], path=f"x/{i}.mp4", label="9") for i in range(25)]
    with pytest.raises(ValueError, match=r"(?s)25 bad row.*line 21: [^\n]*\n  \.\.\. and 5 more$"):
        ds.read_index(write_rows(tmp_path / "many.csv", many))


def test_bad_index_stops_the_reader_before_any_clip(ckplus: Path, tmp_path: Path) -> None:
    """A test clip moved into a training fold by hand is caught when the dataset is built."""
    rows = read_csv(ckplus / "index.csv")
    rows.append(dict(rows[0], path=rows[0]["path"].replace("001", "002"), fold="5"))
    bad = write_rows(tmp_path / "bad.csv", rows)
    with pytest.raises(
        ValueError,
        match=f"(?s){bad}: 1 bad row.*line {len(rows) + 1}: subject S005 in fold 5 and in fold 0",
    ):
        reader.ClipDataset(ckplus, index_csv=bad, folds=["0"])


# ----------------------------------------------------------------------------------------------
# Digits that are not ASCII digits ("²".isdigit() is True, int("²") fails): bad lines, listed
# ----------------------------------------------------------------------------------------------


def test_a_superscript_clip_name_is_a_bad_line(tmp_path: Path) -> None:
    """DFEW video_name "²": listed with its file:line, the other clips indexed."""
    split = tmp_path / "EmoLabel_DataSplit" / "test(single-labeled)" / "set_1.csv"
    split.parent.mkdir(parents=True)
    split.write_text("video_name,label\n1,3\n²,2\n")
    clip(tmp_path / "Clip" / "clip_224x224" / "00001.mp4", 32, 32, frames=3)
    index = ds.build_index("dfew", tmp_path)
    assert [e.path for e in index.entries] == ["Clip/clip_224x224/00001.mp4"]
    assert index.problems["bad clip name"] == [
        "'²' at EmoLabel_DataSplit/test(single-labeled)/set_1.csv:3"
    ]
    assert ds.main(["--dataset", "dfew", "--root", str(tmp_path)]) == 0


def test_mmi_bad_emotion_and_selection_labels_are_listed(mmi: Path, tmp_path: Path) -> None:
    """An MMI Emotion "²" (its clip and .xml named) and selection labels "Happiness", "²", "0"
    (each with the selection file:line) are listed; the other clips are indexed."""
    root = tmp_path / "mmi"
    mmi_session(root, 1, "S001-001", 0, 1, "1")
    mmi_session(root, 2, "S002-002", 0, "²", "2")  # type: ignore[arg-type]
    index = ds.build_index("mmi", root)
    assert [Path(e.path).stem for e in index.entries] == ["S001-001"]
    assert index.problems["unknown label"] == [
        "Sessions/2/S002-002.mp4 (Emotion '²' in S002-002.xml)"
    ]
    sel = tmp_path / "selection.csv"
    sel.write_text(
        "sid,label,subject\nS001-001,Happiness,\nS001-002,²,\nS002-003,0,\nS003-006,fear,\n"
    )
    index = ds.build_index("mmi", mmi, selection=str(sel))
    assert [Path(e.path).stem for e in index.entries] == ["S003-006"]
    assert index.problems["bad selection line"] == [
        f"{sel}:{n} (label {text!r} of {sid} is not 1..6 nor one of {', '.join(ds.CLASSES['mmi'])})"
        for n, text, sid in (
            (2, "Happiness", "S001-001"),
            (3, "²", "S001-002"),
            (4, "0", "S002-003"),
        )
    ]
    assert len(index.problems["not in selection"]) == 3  # the bad lines' clips are not
    assert (
        ds.main(
            [
                "--dataset",
                "mmi",
                "--root",
                str(mmi),
                "--selection",
                str(sel),
                "--out",
                str(tmp_path / "i.csv"),
            ]
        )
        == 0
    )


def test_frame_names_with_superscripts_sort(tmp_path: Path) -> None:
    """A frame named "1²2.png" sorts with "²" as text, as `sort -V` takes it."""
    for name in ("1²2.png", "1.png", "10.png", "2.png"):
        Image.new("L", (4, 4)).save(tmp_path / name)
    assert [p.name for p in ds.frame_files(tmp_path)] == ["1.png", "1²2.png", "2.png", "10.png"]
