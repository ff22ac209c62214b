"""Tests of faces.py: MTCNN crops of a real photograph moving over frames; no-face clips."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image
from skimage import data as skdata

import datasets as ds
import faces
from tests.trees import read_csv


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
    faces.write_video(path, imgs, 25)
    return cores


def test_crop_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    raw = tmp_path / "raw" / "Train_AFEW"
    (raw / "Happy").mkdir(parents=True)
    (raw / "Sad").mkdir(parents=True)
    cores = astronaut_clip(raw / "Happy" / "000000001.avi")
    rng = np.random.default_rng(0)
    noise = [rng.integers(0, 256, (240, 320, 3), dtype=np.uint8) for _ in range(4)]
    faces.write_video(raw / "Sad" / "000000002.avi", noise, 25)
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

    frames = faces.crop_tree(
        raw / "Happy", tmp_path / "frames", size=64, fmt="frames", detect_frames=2
    )
    assert list(frames.boxes) == ["000000001.avi"] and not frames.no_face
    pngs = sorted((tmp_path / "frames" / "000000001").glob("*.png"))
    assert len(pngs) == 5 and Image.open(pngs[0]).size == (64, 64)

    only_noise = tmp_path / "noise"
    only_noise.mkdir()
    faces.write_video(only_noise / "a.avi", noise, 25)
    assert ds.main(["crop", "--in", str(only_noise), "--out", str(tmp_path / "o2")]) == 1


def test_frame_folder_read_in_reencode_order(tmp_path: Path) -> None:
    """Unpadded frame numbers (1.jpg ... 12.jpg, JPEG as many datasets ship) are read in number
    order, the order reencode.sh (``sort -V``) encodes them, not name order (1, 10, 11, 12, 2)."""
    import subprocess

    folder = tmp_path / "clip"
    folder.mkdir()
    for i in range(1, 13):  # frame i is uniformly 20 * i
        Image.fromarray(np.full((16, 16, 3), 20 * i, np.uint8)).save(
            folder / f"{i}.jpg", quality=95
        )
    (folder / ".5.jpg").write_bytes(b"not an image")  # hidden: left out
    files = ds.frame_files(folder)
    assert [p.name for p in files] == [f"{i}.jpg" for i in range(1, 13)]
    listing = subprocess.run(
        ["sort", "-V"],
        input="\n".join(p.name for p in reversed(files)),
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert listing == [p.name for p in files]
    frames, _ = faces.read_frames(folder)
    assert [int(round(f.mean() / 20)) for f in frames] == list(range(1, 13))


@pytest.mark.parametrize("out", ["same", "inside", "outside"])
def test_crop_refuses_out_and_in_inside_one_another(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], out: str
) -> None:
    """OUT equal to IN (which would write crops over the originals), OUT inside IN, IN inside
    OUT: one line, status 2, before any clip is read; nothing written."""
    top = tmp_path / "top"
    src = {"same": top, "inside": top, "outside": top / "raw"}[out]
    dst = {"same": top, "inside": top / "crops", "outside": top}[out]
    rng = np.random.default_rng(0)
    faces.write_video(src / "a.avi", [rng.integers(0, 256, (48, 64, 3), np.uint8)] * 3, 25)
    (src / "notes.txt").write_text("mine\n")
    before = {p: p.read_bytes() for p in src.rglob("*") if p.is_file()}
    assert ds.main(["crop", "--in", str(src), "--out", str(dst)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "must not lie inside" in err and err.count("\n") == 1
    assert {p: p.read_bytes() for p in top.rglob("*") if p.is_file()} == before


def test_detector_finds_what_facenet_mtcnn_finds(tmp_path: Path) -> None:
    """`faces.detector` (facenet-pytorch's MTCNN with faster max pools) gives its detections
    bit for bit, on the astronaut over grey and over grain (many candidates), so the crop box
    of `datasets.py crop` and predict.py is the one of plain MTCNN; `MaxPool` is MaxPool2d's
    padding and ceil mode on even and odd sides."""
    import torch
    from facenet_pytorch import MTCNN

    astronaut_clip(tmp_path / "a.avi", frames=3)
    frames, _ = faces.read_frames(tmp_path / "a.avi")
    rng = np.random.default_rng(0)
    grain = [np.clip(f + rng.normal(0, 12, f.shape), 0, 255).astype(np.uint8) for f in frames]
    plain = MTCNN(select_largest=True, post_process=False)
    fast = faces.detector()
    for imgs in (np.stack(frames), np.stack(grain)):
        (want, want_p), (got, got_p) = plain.detect(imgs), fast.detect(imgs)
        for a, b, pa, pb in zip(want, got, want_p, got_p, strict=True):
            assert np.array_equal(a, b) and np.array_equal(pa, pb)
    assert faces.face_box(frames, fast) == faces.face_box(frames, plain) is not None
    x = torch.randn(2, 3, 23, 30)
    for k, s, p in ((2, 2, 0), (3, 2, 0), (3, 3, 0), (3, 2, 1), (2, 1, 1)):
        for ceil in (True, False):
            layer = torch.nn.MaxPool2d(k, s, p, ceil_mode=ceil)
            fast = faces.fast_max_pools(torch.nn.Sequential(layer))[0]
            assert isinstance(fast, faces.MaxPool)
            for part in (x, x[:, :, :22, :29]):
                assert torch.equal(fast(part), layer(part)), (k, s, p, ceil)
