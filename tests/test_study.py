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


@pytest.mark.timeout(2400)  # eight train.py runs on three tiny sets
def test_identity_sweep_end_to_end(tmp_path):
    """study.py sweep: every stage trains (validation folds, then each family's best α on the
    test folds, then the label-coupled set), the document, its JSON and the plot are written
    from the evaluated runs, and a second call trains nothing."""
    doc = tmp_path / "doc" / "identity-study"
    args = [
        "sweep",
        "--data",
        str(tmp_path / "data"),
        "--out",
        str(tmp_path / "runs"),
        "--subjects",
        "10",
        "--epochs",
        "1",
        "--folds",
        "0",
        "--confirm-folds",
        "0",
        "1",
        "--seeds",
        "0",
        "--families",
        "mi",
        "--alphas",
        "1",
        "--synthetic",
        TINY_SET,
        "--doc",
        str(doc),
        "--train",
        *TINY_TRAIN,
    ]
    study.main(args)
    summary = json.loads(doc.with_suffix(".json").read_text())
    assert summary["best_alpha"] == {"mi": 1.0}
    sweep_rows = {x["variant"]: x for x in summary["sweep"]["rows"]}
    assert set(sweep_rows) == {"mi-a1+resnet6", study.REFERENCE}
    assert summary["sweep"]["style_off"]["variant"] == f"{study.REFERENCE}, style off"
    assert all(x["splits"] == 1 for x in sweep_rows.values())  # fold0-val
    assert {x["variant"] for x in summary["c1"]["rows"]} == set(sweep_rows)
    assert all(x["splits"] == 2 for x in summary["c1"]["rows"])
    assert {x["variant"] for x in summary["coupled"]} == {"mi-a1+resnet6", study.REFERENCE}
    confirmed = {x["variant"]: x for x in summary["c1"]["rows"]}
    assert confirmed["mi-a1+resnet6"]["diff"] is not None  # paired against MIC − MI
    assert confirmed[study.REFERENCE]["diff"] is None
    text = doc.with_suffix(".md").read_text()
    for part in (
        "## The sweep",
        "## Confirmation",
        "## The label-coupled set",
        "| mi-a1+resnet6 | 1 |",
        f"| {study.REFERENCE}, style off |",
    ):
        assert part in text, part
    assert doc.with_suffix(".png").stat().st_size > 5000
    assert (tmp_path / "runs" / "sweep" / "mi-a1+resnet6" / "fold0-val" / "result.json").exists()
    assert (tmp_path / "runs-lc1" / "c1" / study.REFERENCE / "fold1" / "result.json").exists()
    timing = (tmp_path / "runs" / "sweep-timing.json").read_text()
    assert len(json.loads(timing)) == 3 + 3 * 2 + 2 * 2  # fold-runs trained
    study.main(args)  # resumes: nothing to train
    assert (tmp_path / "runs" / "sweep-timing.json").read_text() == timing
    doc.with_suffix(".md").unlink()
    study.main([*args[:1], "--report", *args[1:]])  # the document again, nothing trained
    assert doc.with_suffix(".md").read_text() == text


def test_paper_numbers_follow_the_variants_row_and_backbone():
    """The ablation table's paper column from the row and backbone evaluate.py read from the
    options (a name such as mic-mi+adv+resnet6 is not taken apart)."""
    assert (
        study.paper_numbers({"ablation": "mic-mi+adv", "backbone": "resnet6"}, "resnet6")
        == "98.78 / 80.98"
    )
    assert (
        study.paper_numbers({"ablation": "mic+mv", "backbone": "resnet6"}, "resnet6")
        == "98.93 / 81.24"
    )
    assert study.paper_numbers({"ablation": "mic", "backbone": "resnet6"}, "resnet6") == "99.71 / –"
    assert study.paper_numbers({"ablation": "mic", "backbone": "resnet18"}, "resnet6") == "–"
