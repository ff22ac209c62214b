"""study.py end to end on a tiny configuration: the coupling study (make study) and the ablation
table (make table) run, resume, and write their reports."""

from __future__ import annotations

import json

import pytest

import study

TINY_SET = (
    "--size 48 --min-frames 6 --max-frames 8 --min-expressions 2 --max-expressions 3 --unlabelled 0"
)
TINY_TRAIN = [
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
]


def run(what: str, tmp_path, *extra: str) -> None:
    study.main(
        [
            what,
            "--data",
            str(tmp_path / "data"),
            "--out",
            str(tmp_path / "runs"),
            "--subjects",
            "6",
            "--epochs",
            "1",
            "--folds",
            "0",
            "1",
            "--synthetic",
            TINY_SET,
            *extra,
            "--train",
            *TINY_TRAIN,
        ]
    )


@pytest.mark.timeout(1800)  # a dozen train.py runs: minutes on a loaded 2-core machine
def test_coupling_study_end_to_end(tmp_path):
    run("coupling", tmp_path, "--couplings", "0", "1", "--seeds", "0")
    report = (tmp_path / "runs" / "study.md").read_text()
    assert "| 0 | mic+resnet6 |" in report and "| 1 | mic-mi+resnet6 |" in report
    assert "Paired difference" in report
    res = json.loads((tmp_path / "runs" / "study.json").read_text())
    assert set(res) == {"0.0", "1.0"}
    for r in res.values():
        assert [v["variant"] for v in r["variants"]] == ["mic+resnet6", "mic-mi+resnet6"]
        assert all(v["splits"] == ["fold0", "fold1"] for v in r["variants"])
    assert (tmp_path / "runs" / "study.png").stat().st_size > 5000
    mtime = (tmp_path / "runs" / "c0" / "mic+resnet6" / "fold0" / "ckpt.pt").stat().st_mtime
    run("coupling", tmp_path, "--couplings", "0", "1", "--seeds", "0")  # resumes: no retraining
    assert (tmp_path / "runs" / "c0" / "mic+resnet6" / "fold0" / "ckpt.pt").stat().st_mtime == mtime


@pytest.mark.timeout(1800)
def test_ablation_table_end_to_end(tmp_path):
    run("ablations", tmp_path, "--coupling", "1", "--seeds", "0", "--deeper")
    table = (tmp_path / "runs" / "ablations-c1" / "table.md").read_text()
    for row in (
        "mic+resnet6",
        "mic-mi+resnet6",
        "mic-mi+adv+resnet6",
        "mic-rec+resnet6",
        "mic+mv+resnet6",
        "rgb+resnet6",
    ):
        assert f"| {row} |" in table, row
    assert "Mode VLSTM" in table and "99.71" in table  # the paper's column
