"""The `custom` dataset end to end as a user runs it: a raw tree of videos and JPEG frame folders
with an annotation CSV -> reencode.sh -> datasets.py --dataset custom -> train.py, evaluate.py
and predict.py; the split-column protocol; every unmatched annotation line reported."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import datasets as ds
import evaluate
import predict
from tests.clips import make_clip
from tests.conftest import ROOT
from tests.trees import frame_folder, read_csv

SMALL = [
    "--backbone",
    "resnet6",
    "--hidden",
    "8",
    "--size",
    "32",
    "--num-segments",
    "2",
    "--batch-size",
    "4",
    "--workers",
    "0",
    "--mi-hidden",
    "16",
    "--device",
    "cpu",
    "--epochs",
    "1",
]


def raw_tree(raw: Path, split: bool = False) -> Path:
    """Ten clips of five subjects, six .avi videos and four JPEG frame folders, listed in
    raw/labels.csv with three lines that give no clip; one video on disk is in no line."""
    lines = ["path,label,subject" + (",split" if split else "")]
    for i in range(10):
        subject, label = f"P{i // 2}", ("happy", "sad")[i % 2]
        if i < 6:
            make_clip(raw / "videos" / f"v{i}.avi", 32, 32, 8, container="avi", seed=i)
            path = f"videos/v{i}.avi"
        else:
            frame_folder(raw / "frames" / f"f{i}", 8, seed=i)
            path = f"frames/f{i}/"  # a trailing slash is fine
        role = ("train", "test")[i < 4]
        lines.append(f"{path},{label},{subject}" + (f",{role}" if split else ""))
    make_clip(raw / "videos" / "extra.avi", 32, 32, 8, container="avi", seed=11)
    lines += [
        "videos/gone.avi,happy,P9" + (",train" if split else ""),
        "videos/v0.avi,happy,P0" + (",train" if split else ""),
        "videos/v1.avi,angry,P0" + (",train" if split else ""),
    ]
    (raw / "labels.csv").write_text("\n".join(lines) + "\n")
    return raw


def reencode(raw: Path, out: Path) -> None:
    res = subprocess.run(
        ["bash", str(ROOT / "reencode.sh"), "-j", "2", str(raw), str(out)],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHON": sys.executable},
    )
    assert res.returncode == 0, res.stdout + res.stderr


@pytest.fixture(scope="module")
def custom(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("custom")
    reencode(raw_tree(base / "raw"), base / "data")
    return base


def test_custom_index_maps_raw_paths_and_reports_every_unmatched_line(custom, capsys):
    root = custom / "data"
    with pytest.raises(ds.RawTreeError, match="reencode.sh"):
        ds.build_index("custom", custom / "raw", annotations=str(custom / "raw" / "labels.csv"))
    assert (
        ds.main(
            [
                "--dataset",
                "custom",
                "--root",
                str(root),
                "--annotations",
                str(root / "labels.csv"),
                "--classes",
                "sad,happy",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    rows = read_csv(root / "index.csv")
    assert sorted(r["path"] for r in rows) == sorted(
        [f"videos/v{i}.mp4" for i in range(6)] + [f"frames/f{i}.mp4" for i in range(6, 10)]
    )
    assert {(r["label"], r["label_name"]) for r in rows} == {("0", "sad"), ("1", "happy")}
    assert ds.classes_file(root / "index.csv").read_text() == "sad\nhappy\n"
    # 5 subject-independent folds: sorted subject i -> fold 1 + i mod 5
    assert {r["subject"]: r["fold"] for r in rows} == {f"P{i}": str(i + 1) for i in range(5)}
    problems = (root / "index_problems.txt").read_text()
    assert "missing clip\tlabels.csv:12 (videos/gone.avi: no videos/gone.mp4)" in problems
    assert "clip listed twice\tlabels.csv:13" in problems
    assert "unknown label\tlabels.csv:14 ('angry' not in --classes)" in problems
    assert "clip in no annotation line\tvideos/extra.mp4" in problems
    assert "problems: 4" in out
    assert [s.name for s in ds.protocol("custom", root / "index.csv")] == [
        f"fold{k}" for k in range(1, 6)
    ]


def test_train_evaluate_predict_on_custom(custom):
    root, run = custom / "data", custom / "run"
    ds.main(["--dataset", "custom", "--root", str(root), "--annotations", str(root / "labels.csv")])
    res = subprocess.run(
        [
            sys.executable,
            str(ROOT / "train.py"),
            "--dataset",
            "custom",
            "--root",
            str(root),
            "--out",
            str(run),
            "--fold",
            "1",
            *SMALL,
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    result = json.loads((run / "mic+resnet6" / "fold1" / "result.json").read_text())
    assert result["classes"] == ["happy", "sad"]  # found in the CSV, sorted
    evaluate.main([str(run), "--no-speed"])
    assert "mic+resnet6" in (run / "results.md").read_text()
    ckpt = run / "mic+resnet6" / "fold1" / "ckpt.pt"
    out = predict.predict_video(custom / "raw" / "frames" / "f6", ckpt, crop=False)
    assert set(out["probabilities"]) == {"happy", "sad"}


def test_custom_split_column(tmp_path):
    raw = raw_tree(tmp_path / "raw", split=True)
    (raw / "labels.csv").write_text((raw / "labels.csv").read_text() + "videos/v5.avi,sad,P2,dev\n")
    reencode(raw, tmp_path / "data")
    root = tmp_path / "data"
    index = ds.build_index("custom", root, annotations=str(root / "labels.csv"))
    assert {e.path: e.fold for e in index.entries}["videos/v0.mp4"] == "test"
    assert {e.fold for e in index.entries} == {"train", "test"}
    assert any("'dev'" in p for p in index.problems["unknown split"])
    ds.write_index(index, root / "index.csv")
    assert [s.name for s in ds.protocol("custom", root / "index.csv")] == ["test"]
    assert len(ds.read_index(root / "index.csv")) == 10


def test_custom_needs_annotations_with_path_and_label(tmp_path, capsys):
    (tmp_path / "a.csv").write_text("file,emotion\nx.avi,happy\n")
    assert ds.main(["--dataset", "custom", "--root", str(tmp_path)]) == 2
    assert "--annotations" in capsys.readouterr().err
    assert (
        ds.main(
            [
                "--dataset",
                "custom",
                "--root",
                str(tmp_path),
                "--annotations",
                str(tmp_path / "a.csv"),
            ]
        )
        == 2
    )
    assert "path,label" in capsys.readouterr().err


@pytest.mark.parametrize(
    "raw, clip",
    [
        ("a/b.avi", "a/b.mp4"),
        ("a/b/", "a/b.mp4"),
        ("a/b.MKV", "a/b.mp4"),
        ("a/clip.001", "a/clip.001.mp4"),
        ("a\\b.mp4", "a/b.mp4"),
    ],
)
def test_reencoded_path(raw, clip):
    assert ds.reencoded_path(raw) == clip
