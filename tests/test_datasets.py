"""Tests of datasets.py: indexing of CK+/MMI/AFEW trees with their quirks, ClipDataset, crop."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from PIL import Image
from skimage import data as skdata
from torch.utils.data import DataLoader

import coviar
import datasets as ds
from tests.clips import make_clip

ROOT = Path(__file__).resolve().parents[1]
CK_SUBJECTS = [f"S{n:03d}" for n in (5, 10, 11, 14, 22, 26, 32, 34, 35, 37, 42)]


def clip(
    path: Path, width: int = 64, height: int = 48, frames: int = 8, seed: int = 0, gop: int = 300
) -> Path:
    """A tiny raw MPEG-4 Part 2 stream named like reencode.sh's output."""
    return make_clip(path, width, height, frames, gop, container="m4v", seed=seed)


def garbage(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(np.random.default_rng(7).bytes(2048))
    return path


def emotion(root: Path, subject: str, seq: str, code: int) -> None:
    d = root / "Emotion" / subject / seq
    d.mkdir(parents=True, exist_ok=True)
    (d / f"{subject}_{seq}_00000008_emotion.txt").write_text(f"   {code:.7e}\n")


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def ckplus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Re-encoded CK+ tree: 11 labelled subjects plus every quirk."""
    root = tmp_path_factory.mktemp("ckplus")
    images = root / "cohn-kanade-images"
    for i, s in enumerate(CK_SUBJECTS):
        clip(images / s / "001.mp4", seed=i)
        emotion(root, s, "001", i % 7 + 1)
    clip(images / "S005" / "002.mp4", seed=20)  # unlabelled: no Emotion folder
    clip(images / "S010" / "003.mp4", seed=21)  # unlabelled: empty Emotion folder
    (root / "Emotion" / "S010" / "003").mkdir(parents=True)
    garbage(images / "S011" / "002.mp4")  # unreadable, labelled
    emotion(root, "S011", "002", 3)
    clip(images / "S014" / "002.mp4", seed=22)  # neutral (code 0): not a class
    emotion(root, "S014", "002", 0)
    emotion(root, "S099", "001", 5)  # label without clip
    for d in (images, root / "Emotion", root / "Emotion" / "S005"):
        (d / ".DS_Store").write_bytes(b"\0\1junk")
    assert ds.main(["--dataset", "ckplus", "--root", str(root)]) == 0
    return root


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


def mmi_session(
    root: Path, n: int, sid: str, view: int | None, emotion_code: int | None, subject: str | None
) -> None:
    d = root / "Sessions" / str(n)
    clip(d / f"{sid}.mp4", width=96 if view == 2 else 64, seed=n)
    subj = f'<subject id="{subject}" />' if subject else ""
    track = f'<track id="0" type="Video" view="{view}" />' if view is not None else ""
    (d / "session.xml").write_text(
        f'<?xml version="1.0"?><session sessionId="{n}" mediaFile="{sid}.avi">'
        f"{subj}{track}</session>"
    )
    tags = '<Metatag Name="AU" Value="12" />'
    if emotion_code is not None:
        tags += f'<Metatag Name="Emotion" Value="{emotion_code}" />'
    (d / f"{sid}.xml").write_text(f"<Annotation>{tags}</Annotation>")


@pytest.fixture(scope="module")
def mmi(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("mmi")
    mmi_session(root, 1, "S001-001", 0, 1, "1")
    mmi_session(root, 2, "S001-002", 2, 4, "1")  # dual view
    mmi_session(root, 3, "S002-003", 0, 6, "2")
    mmi_session(root, 4, "S002-004", 1, 2, "2")  # profile only: unsupported
    mmi_session(root, 5, "S003-005", 0, None, "3")  # no Emotion metatag
    mmi_session(root, 6, "S003-006", 0, 3, None)  # subject from the name
    mmi_session(root, 8, "S004-008", 0, 5, "4")
    clip(root / "Sessions" / "8" / "S004-008.mp4", frames=12, gop=5, seed=8)  # 3 GOPs
    (root / "Sessions" / "7").mkdir()  # an image session: no video, ignored
    Image.new("RGB", (8, 8)).save(root / "Sessions" / "7" / "S004-007.jpg")
    (root / "Sessions" / ".DS_Store").write_bytes(b"x")
    return root


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


@pytest.fixture(scope="module")
def afew(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Re-encoded AFEW tree of square (face-crop-like) 48x48 clips."""
    root = tmp_path_factory.mktemp("afew")
    layout = [
        ("Train_AFEW", "Angry", 1),
        ("Train_AFEW", "Happy", 2),
        ("Train_AFEW", "Happy", 3),
        ("Val_AFEW", "Sad", 4),
        ("Val_AFEW", "Neutral", 5),
        ("Train_AFEW", "Bored", 6),  # not an AFEW class
    ]
    for split, cls, k in layout:
        clip(root / split / cls / f"{k:09d}.mp4", width=48, height=48, seed=k)
    (root / "Train_AFEW" / ".DS_Store").write_bytes(b"x")
    assert ds.main(["--dataset", "afew", "--root", str(root)]) == 0
    return root


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


def test_dataset_items(ckplus: Path) -> None:
    test = ds.ClipDataset(ckplus, folds=[0, 1], num_segments=4, size=40)
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
    train = ds.ClipDataset(ckplus, folds=[0], train=True, num_segments=3, size=32, with_mv=True)
    item = train[0]
    assert item["input"].shape == (3, 3, 32, 32) and item["mv"].shape == (3, 2, 32, 32)
    assert item["mv"].dtype == torch.float32

    rgb = ds.ClipDataset(ckplus, folds=[3], representation="rgb", num_segments=2)
    x = rgb[0]["input"]
    assert x.shape == (2, 3, 112, 112) and -2.2 < x.min() and x.max() < 2.7

    loader = DataLoader(train, batch_size=2, collate_fn=ds.collate)
    batch = next(iter(loader))
    assert batch["input"].shape == (2, 3, 3, 32, 32) and batch["mv"].shape == (2, 3, 2, 32, 32)
    assert batch["label"].dtype == torch.int64 and batch["has_apex"].dtype == torch.bool
    assert batch["index"].tolist() == [0, 1]


def test_residual_normalisation_exact(afew: Path) -> None:
    """48x48 clips at size 48: no resampling, so the input is exactly the normalised residual."""
    dset = ds.ClipDataset(afew, split="val", num_segments=3, size=48)
    assert len(dset) == 2 and dset.dataset == "afew"
    item = dset[0]
    path = str(afew / dset.rows[0]["path"])
    seg = ds.sample_indices(8, 3, train=False)
    assert seg == [2, 4, 6]
    res = coviar.load_many(path, 0, seg, 2, False)
    want = (np.clip(res + 128, 0, 255)[..., ::-1] / 255 - 0.5) / 0.226
    got = item["input"].permute(0, 2, 3, 1).numpy()
    np.testing.assert_allclose(got, want, atol=1e-5)
    assert not item["has_apex"] and not item["apex"].any()
    frame0 = coviar.load(path, 0, 0, 0, False)[..., ::-1].copy()  # RGB uint8, 48x48
    want_iframe = ds.letterbox(torch.from_numpy(frame0).permute(2, 0, 1))
    assert torch.allclose(item["iframe"], want_iframe, atol=1e-6)


def test_flip_negates_mv_x(afew: Path) -> None:
    kw = dict(split="train", num_segments=7, size=48, with_mv=True, scales=(1.0,))
    plain = ds.ClipDataset(afew, **kw)[0]  # 7 segments over 7 P-frames: no sampling freedom
    seen = set()
    for seed in range(12):
        torch.manual_seed(seed)
        item = ds.ClipDataset(afew, train=True, **kw)[0]
        flipped = not torch.equal(item["input"], plain["input"])
        seen.add(flipped)
        if not flipped:
            assert torch.equal(item["mv"], plain["mv"])
            continue
        assert torch.equal(item["input"], plain["input"].flip(-1))
        assert torch.equal(item["apex"], plain["apex"])  # no apex in AFEW
        assert torch.allclose(item["iframe"], plain["iframe"].flip(-1))
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
    dset = ds.ClipDataset(ckplus, index_csv=index)
    with pytest.raises(ds.ClipError, match="S011/002.mp4"):
        dset[0]


def test_cache_matches_decoding(ckplus: Path, mmi: Path, tmp_path: Path) -> None:
    kw = dict(folds=[4, 5], num_segments=3, size=32, with_mv=True)
    plain = ds.ClipDataset(ckplus, **kw)
    cached = ds.ClipDataset(ckplus, cache=tmp_path / "c", **kw)
    for i in range(len(plain)):
        a, b = plain[i], cached[i]
        for key in ("input", "mv", "iframe", "apex"):
            assert torch.equal(a[key], b[key]), key
    assert len(list((tmp_path / "c").glob("*.npy"))) == 3 * len(plain)
    assert torch.equal(cached[0]["input"], plain[0]["input"])  # now read back from disk
    small = ds.ClipDataset(ckplus, cache=ds.DecodeCache(tmp_path / "s", short_side=24), **kw)
    assert (small[0]["input"] - plain[0]["input"]).abs().mean() < 0.5

    ds.main(["--dataset", "mmi", "--root", str(mmi), "--dual-view-half", "left"])
    dual = ds.ClipDataset(mmi, num_segments=2, size=32)
    k = [r["crop"] for r in dual.rows].index("left")
    path = str(mmi / dual.rows[k]["path"])
    frame0 = coviar.load(path, 0, 0, 0, False)[:, :48, ::-1].copy()  # left half of 96 columns
    want = ds.letterbox(torch.from_numpy(frame0).permute(2, 0, 1))
    assert torch.allclose(dual[k]["iframe"], want, atol=1e-6)


def astronaut_clip(path: Path, frames: int = 5) -> list[tuple[float, float, float, float]]:
    """The scikit-image astronaut, scaled and moved inside a 320x240 canvas; returns the core
    of the face (eyes to mouth, from MTCNN's landmarks on the photograph) in every frame."""
    photo = skdata.astronaut()
    core = (195.0, 95.0, 252.0, 148.0)  # x0, y0, x1, y1 in the 512x512 photograph
    imgs, cores = [], []
    for i in range(frames):
        side = 260 + 5 * i
        x, y = 20 + 3 * i, 2 * i
        canvas = np.full((240, 320, 3), 90, np.uint8)
        canvas[y : y + side, x : x + side] = np.asarray(
            Image.fromarray(photo).resize((side, side), Image.BICUBIC)
        )[: 240 - y, : 320 - x]
        imgs.append(canvas)
        s = side / 512
        cores.append((x + core[0] * s, y + core[1] * s, x + core[2] * s, y + core[3] * s))
    ds.write_video(path, imgs, 25)
    return cores


def test_crop_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    raw = tmp_path / "raw" / "Train_AFEW"
    (raw / "Happy").mkdir(parents=True)
    (raw / "Sad").mkdir(parents=True)
    cores = astronaut_clip(raw / "Happy" / "000000001.avi")
    rng = np.random.default_rng(0)
    noise = [rng.integers(0, 256, (240, 320, 3), dtype=np.uint8) for _ in range(4)]
    ds.write_video(raw / "Sad" / "000000002.avi", noise, 25)
    (raw / "notes.txt").write_text("copied\n")
    out = tmp_path / "out"
    argv = ["crop", "--in", str(tmp_path / "raw"), "--out", str(out), "--detect-frames", "3"]
    assert ds.main(argv) == 0
    text = capsys.readouterr().out
    assert "2 clips, 1 cropped, 1 with no face" in text and "Sad/000000002.avi" in text
    rows = {r["source"]: r for r in read_csv(out / "crops.csv")}
    face = rows["Train_AFEW/Happy/000000001.avi"]
    x0, y0, x1, y1 = (int(face[k]) for k in ("x0", "y0", "x1", "y1"))
    assert x1 - x0 == y1 - y0 and (x1 - x0) % 2 == 0
    for cx0, cy0, cx1, cy1 in cores:
        assert x0 <= cx0 and y0 <= cy0 and cx1 <= x1 and cy1 <= y1
    assert x1 - x0 < 120  # a face crop, not the whole canvas
    assert rows["Train_AFEW/Sad/000000002.avi"]["x0"] == ""
    assert (out / "Train_AFEW" / "notes.txt").read_text() == "copied\n"
    with av.open(str(out / face["path"])) as c:
        got = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    assert len(got) == 5 and got[0].shape == (y1 - y0, x1 - x0, 3)

    frames = ds.crop_tree(
        raw / "Happy", tmp_path / "frames", size=64, fmt="frames", detect_frames=2
    )
    assert list(frames.boxes) == ["000000001.avi"] and not frames.no_face
    pngs = sorted((tmp_path / "frames" / "000000001").glob("*.png"))
    assert len(pngs) == 5 and Image.open(pngs[0]).size == (64, 64)

    only_noise = tmp_path / "noise"
    only_noise.mkdir()
    ds.write_video(only_noise / "a.avi", noise, 25)
    assert ds.main(["crop", "--in", str(only_noise), "--out", str(tmp_path / "o2")]) == 1
