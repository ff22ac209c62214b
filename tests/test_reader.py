"""Tests of reader.py: ClipDataset items, normalisation, flips, errors, the decode cache."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

import coviar
import datasets as ds
import reader
from models import letterbox
from tests.trees import CK_SUBJECTS, read_csv


def test_dataset_items(ckplus: Path) -> None:
    test = reader.ClipDataset(ckplus, folds=[0, 1], num_segments=4, size=40, iframe=True)
    assert len(test) == 3 and test.num_classes == 7 and test.class_names[1] == "contempt"
    assert test.subjects == CK_SUBJECTS
    item = test[0]
    assert item["input"].shape == (4, 3, 40, 40) and item["input"].dtype == torch.float32
    assert item["iframe"].shape == (3, 160, 160) and item["apex"].shape == (3, 40, 40)
    assert 0 <= item["iframe"].min() and item["iframe"].max() <= 1 and item["has_apex"]
    assert item["iframe"][:, 0, 0].allclose(torch.full((3,), 128 / 255))  # letterbox grey
    assert item["label"].dtype == torch.int64 and item["subject"].dtype == torch.int64
    assert test.subjects[int(item["subject"])] == test.rows[0]["subject"]
    assert torch.equal(test[0]["input"], item["input"])  # test mode is deterministic

    torch.manual_seed(0)
    train = reader.ClipDataset(ckplus, folds=[0], train=True, num_segments=3, size=32, with_mv=True)
    item = train[0]
    assert item["input"].shape == (3, 3, 32, 32) and item["mv"].shape == (3, 2, 32, 32)
    assert item["mv"].dtype == torch.float32

    rgb = reader.ClipDataset(ckplus, folds=[3], representation="rgb", num_segments=2)
    x = rgb[0]["input"]
    assert x.shape == (2, 3, 112, 112) and -2.2 < x.min() and x.max() < 2.7

    loader = DataLoader(train, batch_size=2, collate_fn=reader.collate)
    batch = next(iter(loader))
    assert batch["input"].shape == (2, 3, 3, 32, 32) and batch["mv"].shape == (2, 3, 2, 32, 32)
    assert batch["label"].dtype == torch.int64 and batch["has_apex"].dtype == torch.bool
    assert batch["index"].tolist() == [0, 1]


def test_residual_normalisation_exact(afew: Path) -> None:
    """48x48 clips at size 48: no resampling, so the input is exactly the normalised residual."""
    dset = reader.ClipDataset(afew, folds=["val"], num_segments=3, size=48, iframe=True)
    assert len(dset) == 2 and dset.dataset == "afew"
    item = dset[0]
    path = str(afew / dset.rows[0]["path"])
    seg = reader.sample_indices(8, 3, train=False)
    assert seg == [2, 4, 6]
    res = coviar.load_many(path, 0, seg, 2, False)
    want = (np.clip(res + 128, 0, 255)[..., ::-1] / 255 - 0.5) / 0.226
    got = item["input"].permute(0, 2, 3, 1).numpy()
    np.testing.assert_allclose(got, want, atol=1e-5)
    assert not item["has_apex"] and not item["apex"].any()
    frame0 = coviar.load(path, 0, 0, 0, False)[..., ::-1].copy()  # RGB uint8, 48x48
    want_iframe = letterbox(torch.from_numpy(frame0).permute(2, 0, 1)[None])[0]
    assert torch.allclose(item["iframe"], want_iframe, atol=1e-6)


def test_flip_negates_mv_x(afew: Path) -> None:
    kw = dict(folds=["train"], num_segments=7, size=48, with_mv=True, scales=(1.0,))
    plain = reader.ClipDataset(afew, **kw)[0]  # 7 segments over 7 P-frames: no sampling freedom
    seen = set()
    for seed in range(12):
        torch.manual_seed(seed)
        item = reader.ClipDataset(afew, train=True, **kw)[0]
        flipped = not torch.equal(item["input"], plain["input"])
        seen.add(flipped)
        if not flipped:
            assert torch.equal(item["mv"], plain["mv"])
            continue
        assert torch.equal(item["input"], plain["input"].flip(-1))
        assert torch.equal(item["apex"], plain["apex"])  # no apex in AFEW
        assert torch.equal(item["mv"][:, 1], plain["mv"][:, 1].flip(-1))
        u = plain["mv"][:, 0].flip(-1) * 0.226 * 255 + 127.5  # back to v + 128
        want = ((256 - u).clamp(0, 255) / 255 - 0.5) / 0.226
        assert torch.allclose(item["mv"][:, 0], want, atol=1e-4)
    assert seen == {True, False}
    moved = (plain["mv"] * 0.226 * 255 + 127.5 - 128).abs() > 0.5  # |displacement| >= 1 px
    assert moved[:, 0].any()  # the clip really moves horizontally


def test_load_error_names_file(ckplus: Path, tmp_path: Path) -> None:
    rows = read_csv(ckplus / "index.csv")
    bad = dict(rows[0], path="cohn-kanade-images/S011/002.mp4")
    index = tmp_path / "bad.csv"
    with open(index, "w", newline="") as f:
        w = csv.DictWriter(f, ds.COLUMNS)
        w.writeheader()
        w.writerow(bad)
    dset = reader.ClipDataset(ckplus, index_csv=index)
    with pytest.raises(reader.ClipError, match="S011/002.mp4"):
        dset[0]


def test_cache_matches_decoding(ckplus: Path, mmi: Path, tmp_path: Path) -> None:
    kw = dict(folds=[4, 5], num_segments=3, size=32, with_mv=True, iframe=True)
    plain = reader.ClipDataset(ckplus, **kw)
    cached = reader.ClipDataset(ckplus, cache=tmp_path / "c", **kw)
    for i in range(len(plain)):
        a, b = plain[i], cached[i]
        for key in ("input", "mv", "iframe", "apex"):
            assert torch.equal(a[key], b[key]), key
    assert len(list((tmp_path / "c").glob("*.npy"))) == 3 * len(plain)
    assert torch.equal(cached[0]["input"], plain[0]["input"])  # now read back from disk
    small_cache = reader.DecodeCache(tmp_path / "s", short_side=24)
    small = reader.ClipDataset(ckplus, cache=small_cache, **kw)
    assert (small[0]["input"] - plain[0]["input"]).abs().mean() < 0.5

    ds.main(["--dataset", "mmi", "--root", str(mmi), "--dual-view-half", "left"])
    dual = reader.ClipDataset(mmi, num_segments=2, size=32, iframe=True)
    k = [r["crop"] for r in dual.rows].index("left")
    path = str(mmi / dual.rows[k]["path"])
    frame0 = coviar.load(path, 0, 0, 0, False)[:, :48, ::-1].copy()  # left half of 96 columns
    want = letterbox(torch.from_numpy(frame0).permute(2, 0, 1)[None])[0]
    assert torch.allclose(dual[k]["iframe"], want, atol=1e-6)


def test_reconstruction_target_ignores_the_input_augmentation(ckplus: Path) -> None:
    """For any crop and flip draw, the apex target is the centred square of the apex frame,
    unflipped (L_rec must not ask z_E to encode the augmentation)."""
    kw = dict(folds=[2], num_segments=3, size=24)
    dset = reader.ClipDataset(ckplus, train=True, **kw)
    path = str(ckplus / dset.rows[0]["path"])
    apex = int(dset.rows[0]["apex"])
    frame = coviar.load(path, 0, apex, coviar.PICTURE, False)  # (48, 64, 3) BGR
    centre = frame[:, 8:56, ::-1].copy()  # the centred 48x48 square, RGB
    want = reader.resize_frames(torch.from_numpy(centre).permute(2, 0, 1)[None], 24)[0] / 255
    inputs = set()
    for seed in range(8):
        torch.manual_seed(seed)
        item = dset[0]
        inputs.add(item["input"].sum().item())
        assert item["has_apex"] and torch.equal(item["apex"], want)
    assert len(inputs) > 1  # the draws did differ


def test_items_hold_only_what_is_asked(ckplus: Path) -> None:
    default = reader.ClipDataset(ckplus, folds=[0], num_segments=2, size=24)[0]
    assert set(default) == {"input", "apex", "has_apex", "label", "subject", "index"}
    bare = reader.ClipDataset(ckplus, folds=[0], num_segments=2, size=24, apex=False)[0]
    assert set(bare) == {"input", "label", "subject", "index"}
    full = reader.ClipDataset(ckplus, folds=[0], num_segments=2, size=24, iframe=True,
                              iframe_size=40, with_mv=True)[0]
    assert full["iframe"].shape == (3, 40, 40) and full["mv"].shape == (2, 2, 24, 24)
    assert torch.equal(full["input"], default["input"])
