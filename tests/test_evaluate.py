"""evaluate.py on damaged or degenerate runs (copies of the tiny evaluated run): each split it
cannot use is listed with its reason, what cannot be computed shows as "–", the tables are
written before the speed step, which is skipped with a reason, and a folder it cannot write is
one line."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

import evaluate


def _copy(tiny_run: Path, run: Path, *variants: str) -> Path:
    for v in variants or ("mic+resnet6", "mic-mi+resnet6"):
        shutil.copytree(tiny_run / v, run / v)
    return run


def test_one_test_clip_shows_a_dash(tiny_run, tmp_path):
    """A split with one test clip has no held-out MI and no unseen-clip probe: "–", not a
    crash."""
    run = _copy(tiny_run, tmp_path / "run", "mic+resnet6")
    for fold in ("fold0", "fold1"):
        path = run / "mic+resnet6" / fold / "features.npz"
        f = dict(np.load(path))
        np.savez_compressed(
            path, **{k: v[:1] if k.startswith("test_") else v for k, v in f.items()}
        )
    evaluate.main([str(run), "--no-speed"])
    (v,) = json.loads((run / "results.json").read_text())["variants"]
    assert v["splits"] == ["fold0", "fold1"] and len(v["accuracy_per_split"]) == 2
    assert all(np.isnan(v["mi_per_split"])) and all(np.isnan(v["probe_test_per_split"]))
    row = next(
        line
        for line in (run / "results.md").read_text().splitlines()
        if line.startswith("| mic+resnet6 ")
    )
    cells = [c.strip() for c in row.split("|")]
    assert cells[6] == "–" and cells[8] == "– (– / –)", row


def test_damaged_splits_are_listed_with_their_reason(tiny_run, tmp_path, capsys):
    run = _copy(tiny_run, tmp_path / "run", "mic+resnet6")
    v = run / "mic+resnet6"
    result = json.loads((v / "fold0" / "result.json").read_text())
    damage = {
        "fold2": ("truncated features.npz", "unreadable features.npz (BadZipFile"),
        "fold3": (
            {k: x for k, x in result.items() if k != "classes"},
            "unreadable result.json (KeyError: 'classes')",
        ),
        "fold4": (
            {"accuracy": True, "classes": result["classes"], "fold": "4"},
            "unreadable result.json (TypeError: accuracy True is not a number)",
        ),
        "fold5": ("prediction 99", "features.npz: test_pred outside the"),
    }
    for fold, (what, _) in damage.items():
        shutil.copytree(v / "fold0", v / fold)
        features = v / fold / "features.npz"
        if what == "truncated features.npz":
            features.write_bytes(features.read_bytes()[:200])
        elif what == "prediction 99":
            f = dict(np.load(features))
            f["test_pred"][0] = 99
            np.savez_compressed(features, **f)
        else:
            (v / fold / "result.json").write_text(json.dumps(what))
    evaluate.main([str(run), "--no-speed"])
    out = capsys.readouterr().out
    for fold, (_, reason) in damage.items():
        assert f"left out mic+resnet6/{fold}: {reason}" in out, out
    res = json.loads((run / "results.json").read_text())
    assert res["variants"][0]["splits"] == ["fold0", "fold1"]
    assert set(res["left_out"]["mic+resnet6"]) == set(damage)


def test_speed_step_uses_any_checkpoint_or_is_skipped_after_the_tables(tiny_run, tmp_path, capsys):
    """The speed step reads a variant's config from any split's ckpt.pt; with none (or data it
    cannot find) it is skipped with the reason, and the tables are written all the same."""
    run = _copy(tiny_run, tmp_path / "run")
    (run / "mic+resnet6" / "fold0" / "ckpt.pt").unlink()
    evaluate.main([str(run), "--speed-clips", "1"])
    res = json.loads((run / "results.json").read_text())
    assert res["speed"] and res["speed_skipped"] == "" and "speed" in res["variants"][0]
    for ckpt in run.glob("*/*/ckpt.pt"):  # old checkpoints: a relative root
        state = torch.load(ckpt, weights_only=True)
        state["config"] = json.dumps({**json.loads(state["config"]), "root": "data/not-made-here"})
        torch.save(state, ckpt)
    evaluate.main([str(run), "--speed-clips", "1"])
    assert (
        "speed step skipped: the data of the checkpoints, data/not-made-here/index.csv, "
        "is not found (a relative root"
    ) in capsys.readouterr().out
    (run / "mic+resnet6" / "fold1" / "ckpt.pt").write_bytes(b"")
    (run / "results.json").unlink()
    evaluate.main([str(run), "--speed-clips", "1"])
    out = capsys.readouterr().out
    assert (
        "speed step skipped: mic+resnet6: no readable checkpoint (fold0: no ckpt.pt; fold1: "
        "unreadable ckpt.pt" in out
    )
    res = json.loads((run / "results.json").read_text())
    assert res["speed"] == [] and "mic+resnet6: no readable checkpoint" in res["speed_skipped"]
    assert [v["variant"] for v in res["variants"]] == ["mic+resnet6", "mic-mi+resnet6"]
    assert "Test-time speed: skipped: mic+resnet6" in (run / "results.md").read_text()


def test_a_run_folder_it_cannot_write_is_one_line(tiny_run, tmp_path):
    """A results file that cannot be written (a read-only folder; here a folder in its place,
    which holds for root too): one line naming it, no OSError traceback."""
    run = _copy(tiny_run, tmp_path / "run", "mic+resnet6")
    (run / "results.json").mkdir()
    with pytest.raises(
        SystemExit,
        match=r"^evaluate.py: cannot write \S+results.json: Is a "
        r"directory$",
    ):
        evaluate.main([str(run), "--no-speed"])
