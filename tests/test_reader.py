"""Tests of reader.py: ClipDataset items, normalisation, flips, errors, the decode cache."""

from __future__ import annotations

import csv
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

import av
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

import coviar
import datasets as ds
import reader
from models import letterbox
from tests.clips import smooth_noise
from tests.trees import CK_SUBJECTS, read_csv

ROOT = Path(__file__).resolve().parents[1]


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
        u = (plain["mv"][:, 0].flip(-1) + 0.5) * 255  # back to the bytes 128 + v
        assert torch.allclose(item["mv"][:, 0], (256 - u) / 255 - 0.5, atol=1e-6)
    assert seen == {True, False}
    moved = (plain["mv"] * 255 + 127.5 - 128).abs() > 0.5  # some displacement
    assert moved[:, 0].any()  # the clip really moves horizontally


def reference_item(dset: reader.ClipDataset, i: int, seed: int) -> dict[str, Any]:
    """Input and motion vectors of item i the straightforward way of the reader before the
    one-pass change (ac75c2b): one coviar.load_many per representation of whole frames, then
    crop, pytorch-coviar's bytes, resize, flip and normalise, written out here; the motion
    vectors with today's normalisation (scaled by size / crop side, then pytorch-coviar's)."""
    torch.manual_seed(seed)
    row = dset.rows[i]
    path, n = str(dset.root / row["path"]), int(row["num_frames"])
    rgb = dset.representation == "rgb"
    seg = reader.sample_indices(n, dset.num_segments, dset.train, 0 if rgb else 1)
    a = coviar.load_many(path, 0, seg, coviar.PICTURE if rgb else coviar.RESIDUAL, dset.accumulate)
    h, w = a.shape[1:3]
    left, width = {"none": (0, w), "left": (0, w // 2), "right": (w // 2, w - w // 2)}[row["crop"]]
    top, x0, ch, cw = reader.multiscale_box(h, width, dset.train, dset.scales)
    flip = dset.train and torch.rand(()).item() < 0.5

    def resized(b: np.ndarray) -> torch.Tensor:  # uint8 (k, ch, cw, C) -> float (k, C, s, s)
        t = torch.from_numpy(np.ascontiguousarray(b)).permute(0, 3, 1, 2)
        if t.shape[-2:] != (dset.size, dset.size):
            t = F.interpolate(
                t, size=(dset.size, dset.size), mode="bilinear", align_corners=False, antialias=True
            )
        t = t.float()
        return t.flip(-1) if flip else t

    a = a[:, top : top + ch, left + x0 : left + x0 + cw]
    x = resized(a if rgb else np.clip(a + 128, 0, 255).astype(np.uint8))[:, [2, 1, 0]] / 255
    if rgb:
        x = (x - torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)) / torch.tensor(
            [0.229, 0.224, 0.225]
        ).view(3, 1, 1)
    else:
        x = (x - 0.5) / 0.226
    out = {"input": x, "flip": flip}
    if dset.with_mv:
        v = coviar.load_many(path, 0, seg, coviar.MV, dset.accumulate)
        v = v[:, top : top + ch, left + x0 : left + x0 + cw]
        scale = np.array([dset.size / cw, dset.size / ch])  # (x, y)
        b = np.clip(np.trunc(v * scale * 6.375) + 128, 0, 255).astype(np.uint8)
        m = resized(b)
        if flip:
            m[:, 0] = 256 - m[:, 0]
        out["mv"] = m / 255 - 0.5
    return out


@pytest.mark.parametrize("accumulate", [False, True])
def test_inputs_identical_to_the_straightforward_reader(ckplus: Path, mmi: Path, accumulate):
    """One decode, boxes computed on the crop only, bytes made frame by frame: the same inputs,
    bit for bit, as decoding each representation whole and cropping afterwards; for training
    (random samples, scales and flips) and test mode, residuals and RGB, with a decode cache,
    on CK+ clips and on the halves of MMI's dual-view clips."""
    ds.main(["--dataset", "mmi", "--root", str(mmi), "--dual-view-half", "right"])
    flips = set()
    for root, size in ((ckplus, 32), (mmi, 56)):
        for train in (True, False):
            for rep in ("residual", "rgb"):
                kw = dict(
                    train=train,
                    num_segments=3,
                    size=size,
                    representation=rep,
                    with_mv=True,
                    accumulate=accumulate,
                    apex=False,
                )
                dset = reader.ClipDataset(root, **kw)
                for i in range(len(dset)):
                    seed = 10 * i + train
                    want = reference_item(dset, i, seed)
                    torch.manual_seed(seed)
                    item = dset[i]
                    assert torch.equal(item["input"], want["input"]), (root, i, train, rep)
                    assert torch.equal(item["mv"], want["mv"]), (root, i, train, rep)
                    flips.add(want["flip"])
    assert flips == {True, False}  # both were drawn
    assert "right" in {r["crop"] for r in reader.ClipDataset(mmi).rows}


def translating_clip(path: Path, frames: int = 8, size: int = 96) -> Path:
    """Raw MPEG-4 Part 2 clip of a smooth texture translating by (2, 1) pixels per frame."""
    texture = smooth_noise(np.random.default_rng(5), 2 * size, 2 * size)
    imgs = [
        texture[size - t : 2 * size - t, size - 2 * t : 2 * size - 2 * t] for t in range(frames)
    ]
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w", format="m4v") as out:
        stream = out.add_stream("mpeg4", rate=25)
        stream.width = stream.height = size
        stream.pix_fmt = "yuv420p"
        stream.codec_context.gop_size = 300
        stream.codec_context.options = {"qmin": "2", "qmax": "2", "sc_threshold": "1000000000"}
        for t, img in enumerate(imgs):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(img), format="rgb24")
            frame.pts = t
            out.mux(stream.encode(frame))
        out.mux(stream.encode())
    return path


@pytest.mark.parametrize("accumulate", [False, True])
def test_mv_normalisation_exact(tmp_path: Path, accumulate: bool) -> None:
    """Known motion, (2, 1) px per frame: the input's motion-vector values are exactly
    pytorch-coviar's bytes of the displacement rescaled to the model's size, / 255 - 0.5."""
    path = translating_clip(tmp_path / "c" / "000000001.mp4")
    row = dict(
        path="c/000000001.mp4",
        subject="s",
        label="3",
        label_name="happy",
        num_frames="8",
        fold="train",
        dataset="afew",
        view="0",
        crop="none",
        apex="-1",
    )
    with open(tmp_path / "index.csv", "w", newline="") as f:
        w = csv.DictWriter(f, ds.COLUMNS)
        w.writeheader()
        w.writerow(row)
    raw = coviar.load_many(path, 0, range(8), coviar.MV, accumulate)[:, 32:80, 32:80]
    steps = (
        np.arange(8)[:, None, None] if accumulate else np.minimum(np.arange(8), 1)[:, None, None]
    )
    np.testing.assert_array_equal(raw[..., 0], 2 * steps * np.ones((8, 48, 48)))  # the motion
    np.testing.assert_array_equal(raw[..., 1], steps * np.ones((8, 48, 48)))
    # Test mode, 96 -> 48: x 2 px -> 1 px -> trunc(6.375) = 6 -> 134, y 0.5 px -> 3 -> 131.
    dset = reader.ClipDataset(
        tmp_path, num_segments=7, size=48, with_mv=True, accumulate=accumulate, apex=False
    )
    mv = dset[0]["mv"][:, :, 18:38, 18:38]  # away from the borders (and their resampling)
    t = torch.arange(1, 8).view(7, 1, 1) if accumulate else torch.ones(7, 1, 1, dtype=torch.long)
    bytes_x = (128 + torch.trunc(2 * t * 0.5 * 6.375)).clamp(max=255)
    bytes_y = (128 + torch.trunc(t * 0.5 * 6.375)).clamp(max=255)
    if not accumulate:
        assert bytes_x.unique().tolist() == [134] and bytes_y.unique().tolist() == [131]
    assert torch.equal(mv[:, 0], (bytes_x.float() / 255 - 0.5).expand(7, 20, 20))
    assert torch.equal(mv[:, 1], (bytes_y.float() / 255 - 0.5).expand(7, 20, 20))
    # Training, crops of 72 px (scale 0.75) resized to 48: 2/3 of the displacement; flips map
    # the x byte u to 256 - u.
    train = reader.ClipDataset(
        tmp_path,
        train=True,
        num_segments=7,
        size=48,
        with_mv=True,
        accumulate=accumulate,
        apex=False,
        scales=(0.75,),
    )
    seen = set()
    for seed in range(10):
        torch.manual_seed(seed)
        item = train[0]
        torch.manual_seed(seed)
        reader.sample_indices(8, 7, True)
        top, left, ch, cw = reader.multiscale_box(96, 96, True, (0.75,))
        flip = torch.rand(()).item() < 0.5
        seen.add(flip)
        assert (ch, cw) == (72, 72)
        # Output pixels whose source (resampling support included) lies in [32, 80) x [32, 80).
        centre = (torch.arange(48) + 0.5) * 1.5 - 0.5
        rows = ((centre + top - 2 >= 32) & (centre + top + 2 < 80)).nonzero()[:, 0]
        cols = ((centre + left - 2 >= 32) & (centre + left + 2 < 80)).nonzero()[:, 0]
        cols = 47 - cols if flip else cols
        got = item["mv"][:, :, rows][..., cols]
        assert got.shape[-2] >= 20 and got.shape[-1] >= 20
        bx = (128 + torch.trunc(2 * t * (48 / 72) * 6.375)).clamp(max=255).float()
        by = (128 + torch.trunc(t * (48 / 72) * 6.375)).clamp(max=255).float()
        if not accumulate:
            assert bx.unique().tolist() == [136] and by.unique().tolist() == [132]
        want_x = (256 - bx if flip else bx) / 255 - 0.5
        assert torch.equal(got[:, 0], want_x.expand_as(got[:, 0])), seed
        assert torch.equal(got[:, 1], (by / 255 - 0.5).expand_as(got[:, 1])), seed
    assert seen == {True, False}


@pytest.mark.parametrize(
    "shape, size",
    [((3, 2, 49, 67), 24), ((2, 2, 30, 17), 56), ((1, 2, 112, 90), 112), ((4, 2, 301, 255), 112)],
)
def test_two_channel_resize_is_torchs(shape: tuple, size: int) -> None:
    """resize_frames packs the motion-vector bytes of two frames into 4 channels for torch's
    fast path: the values are those of interpolating each frame's 2 channels (odd counts too)."""
    t = torch.from_numpy(np.random.default_rng(0).integers(0, 256, shape, np.uint8))
    want = F.interpolate(t, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    for x in (t, t.contiguous(memory_format=torch.channels_last)):
        assert torch.equal(reader.resize_frames(x, size), want)


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


def test_corrupt_cache_files_are_rebuilt(ckplus: Path, tmp_path: Path) -> None:
    """A truncated file, garbage, and a valid .npy of the wrong shape or dtype: each is
    detected on the next load, deleted and rebuilt with one warning naming it, and the item is
    the right one."""
    kw = dict(folds=[3], num_segments=3, size=32, with_mv=True, iframe=True)
    want = reader.ClipDataset(ckplus, **kw)[0]
    cached = reader.ClipDataset(ckplus, cache=tmp_path / "c", **kw)
    cached[0]
    files = sorted((tmp_path / "c").glob("*.npy"))
    assert len(files) == 3  # residuals, motion vectors, pictures (I-frame and apex)
    damage = {
        "truncated": lambda f: f.write_bytes(f.read_bytes()[: f.stat().st_size // 2]),
        "header only": lambda f: f.write_bytes(f.read_bytes()[:60]),
        "garbage": lambda f: f.write_bytes(np.random.default_rng(0).bytes(4000)),
        "empty": lambda f: f.write_bytes(b""),
        "wrong frame count": lambda f: np.save(f, np.load(f)[:1]),
        "wrong frame size": lambda f: np.save(f, np.load(f)[:, :4]),
        "wrong dtype": lambda f: np.save(f, np.load(f).astype(np.float64)),
    }
    for file in files:
        for name, spoil in damage.items():
            spoil(file)
            with pytest.warns(RuntimeWarning) as record:
                item = cached[0]
            assert len(record) == 1 and str(file) in str(record[0].message), name
            for key in ("input", "mv", "iframe", "apex"):
                assert torch.equal(item[key], want[key]), (file.name, name, key)
            assert np.load(file).dtype in (np.uint8, np.int16)  # rebuilt in place
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        cached[0]  # intact now: no warning


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
    full = reader.ClipDataset(
        ckplus, folds=[0], num_segments=2, size=24, iframe=True, iframe_size=40, with_mv=True
    )[0]
    assert full["iframe"].shape == (3, 40, 40) and full["mv"].shape == (2, 2, 24, 24)
    assert torch.equal(full["input"], default["input"])


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")
def test_worker_init_keeps_freed_memory() -> None:
    """After `worker_init`, a 48 MB array freed and made again reuses the heap's pages (no page
    faults); by default glibc maps and unmaps it each time (12 000 faults each, fewer with
    transparent huge pages, at least one)."""
    takes = subprocess.run(
        [
            sys.executable,
            "-c",
            "import ctypes; print(ctypes.CDLL('libc.so.6').mallopt(-3, 64 << 20))",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    if takes != "1":
        pytest.skip("this glibc keeps at most 32 MiB allocations on the heap")
    code = (
        "import resource, numpy as np, reader\n"
        "def faults():\n"
        "    np.ones(48 << 20, np.uint8)\n"
        "    r0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt\n"
        "    for _ in range(4):\n"
        "        np.ones(48 << 20, np.uint8)\n"
        "    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - r0\n"
        "before = faults()\n"
        "reader.worker_init(0)\n"
        "print(before, faults())\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    before, after = int(out[0]), int(out[1])
    assert before >= 4 and after <= before // 10, (before, after)
