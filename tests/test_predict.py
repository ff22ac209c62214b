"""predict.py with a checkpoint of the tiny run: a face video in another codec and container
(H.264 .mp4, MPEG-4 Part 2 .avi), sliding windows over several GOPs with a plot, inputs identical
to ClipDataset's, the test-time prediction of train.py reproduced from the raw frames, and clear
errors for a video without a face, an unreadable video and bad checkpoints."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from PIL import Image
from skimage import data as skdata

import coviar
import predict
from models import MIC
from reader import MV, PICTURE, RESIDUAL, ClipDataset, sample_indices
from tests.clips import has_libx264
from tests.conftest import ROOT

CODEC = "libx264" if has_libx264() else "mpeg4"


def face_frames(n: int, size: int = 96) -> list[np.ndarray]:
    """The astronaut's head (64 px) drifting and turning over a grey background."""
    head = Image.fromarray(skdata.astronaut()[:230, 110:340]).resize((64, 64), Image.BICUBIC)
    out = []
    for i in range(n):
        t = i / 8
        x, y = round(16 + 10 * np.sin(t)), round(16 + 6 * np.cos(1.3 * t))
        frame = np.full((size, size, 3), 90, np.uint8)
        frame[y : y + 64, x : x + 64] = np.asarray(head.rotate(8 * np.sin(t)))
        out.append(frame)
    return out


def encode(path: Path, frames: list[np.ndarray], codec: str) -> Path:
    """Write RGB frames with PyAV (container from the suffix)."""
    with av.open(str(path), "w") as out:
        stream = out.add_stream(codec, rate=25)
        stream.height, stream.width = frames[0].shape[:2]
        stream.pix_fmt = "yuv420p"
        for i, img in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(img, format="rgb24")
            frame.pts = i
            out.mux(stream.encode(frame))
        out.mux(stream.encode())
    return path


@pytest.fixture(scope="module")
def ckpt(tiny_run: Path) -> Path:
    return tiny_run / "mic+resnet6" / "fold0" / "ckpt.pt"


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("predict")
    rng = np.random.default_rng(0)
    noise = [rng.integers(0, 256, (96, 96, 3), dtype=np.uint8) for _ in range(10)]
    return {
        "face": encode(d / "face.mp4", face_frames(12), CODEC),
        "long": encode(d / "long.avi", face_frames(330), "mpeg4"),  # 2 GOPs once re-encoded
        "noise": encode(d / "noise.mp4", noise, CODEC),
    }


def check_probabilities(entry: dict, classes: list[str]) -> None:
    probs = entry["probabilities"]
    assert list(probs) == classes
    assert sum(probs.values()) == pytest.approx(1, abs=1e-5)
    assert entry["prediction"] == max(probs, key=probs.get)


def test_h264_clip_json(ckpt, clips, capsys):
    assert predict.main([str(clips["face"]), "--checkpoint", str(ckpt), "--window", "64",
                         "--device", "cpu"]) == 0
    out = json.loads(capsys.readouterr().out)
    classes = json.loads(torch.load(ckpt, weights_only=True)["config"])["class_names"]
    assert set(out) == {"video", "checkpoint", "classes", "frames", "probabilities", "prediction"}
    assert out["classes"] == classes and out["frames"] == 12
    check_probabilities(out, classes)


def test_sliding_windows_over_gops_with_plot(ckpt, clips, tmp_path):
    png = tmp_path / "probs.png"
    proc = subprocess.run([sys.executable, str(ROOT / "predict.py"), str(clips["long"]),
                           "--checkpoint", str(ckpt), "--window", "32", "--stride", "16",
                           "--plot", str(png), "--device", "cpu"],
                          capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["frames"] == 330 and (out["window"], out["stride"]) == (32, 16)
    bounds = [(w["start_frame"], w["end_frame"]) for w in out["windows"]]
    assert bounds == [(s, s + 32) for s in range(0, 299, 16)] + [(298, 330)]
    for entry in [out, *out["windows"]]:
        check_probabilities(entry, out["classes"])
    with Image.open(png) as im:
        assert im.format == "PNG" and im.width > 300


def test_windows_never_sample_iframes(clips, tmp_path):
    stream = predict.reencode(clips["long"], tmp_path, crop=False)
    starts, n, hw = predict.stream_layout(stream)
    assert (starts, n, hw) == ([0, 300], 330, (96, 96))
    assert not coviar.load(stream, 1, 0, RESIDUAL, False).any()  # why I-frames are skipped
    windows = predict.plan_windows(n, starts, 8, 32, 16)
    for w in windows:
        assert len(w.frames) == 8 and not set(w.frames) & {0, 300}
        assert all(w.start <= f < w.end for f in w.frames)
    straddling = next(w for w in windows if w.start < 300 < w.end - 1)
    assert min(straddling.frames) < 300 < max(straddling.frames)
    # A single-GOP clip is sampled as ClipDataset samples it in test mode.
    assert predict.plan_windows(20, [0], 8, 32, 16)[0].frames == sample_indices(20, 8, False, 1)
    rgb = predict.plan_windows(20, [0], 8, 32, 16, skip_iframes=False)[0].frames
    assert rgb == sample_indices(20, 8, False, 0)


@pytest.mark.parametrize("representation", ["residual", "rgb"])
def test_inputs_identical_to_clipdataset(data, representation):
    ds = ClipDataset(data, num_segments=3, size=32, representation=representation, with_mv=True)
    rep = RESIDUAL if representation == "residual" else PICTURE
    for i in range(2):
        stream = data / ds.rows[i]["path"]
        starts, n, hw = predict.stream_layout(stream)
        window = predict.plan_windows(n, starts, 3, n, 1, representation == "residual")[0]
        item = ds[i]
        x = predict.to_inputs([window], predict.load_frames(stream, window.frames, starts, rep,
                                                            hw, 32), representation)
        mv = predict.to_inputs([window], predict.load_frames(stream, window.frames, starts, MV,
                                                             hw, 32), "mv")
        assert torch.equal(x[0], item["input"]) and torch.equal(mv[0], item["mv"])


@pytest.mark.parametrize("variant", [{"with_mv": True}, {"input": "rgb"}, {"num_subjects": 3},
                                     {"decoder": False, "backbone": "resnet18"}],
                         ids=["mv", "rgb", "adversary", "resnet18-no-decoder"])
def test_every_model_variant(ckpt, clips, tmp_path, variant):
    """Checkpoints of MIC+T^t, the RGB baseline, MIC−MI+Adv (an adversary in the state dict) and
    without decoder: made here with random weights in train.py's format."""
    config = {**json.loads(torch.load(ckpt, weights_only=True)["config"]), **variant}
    config.pop("num_subjects", None)
    torch.manual_seed(0)
    model = MIC(config["num_classes"], config["num_segments"], config["backbone"],
                config["hidden"], with_mv=config["with_mv"], decoder=config["decoder"],
                d_i=config["d_i"], size=config["size"],
                num_subjects=variant.get("num_subjects", 0), backbone_weights="random")
    path = tmp_path / "ckpt.pt"
    torch.save({"model": model.state_dict(), "config": json.dumps(config)}, path)
    out = predict.predict_video(clips["face"], path, window=8, stride=4, crop=False)
    assert [(w["start_frame"], w["end_frame"]) for w in out["windows"]] == [(0, 8), (4, 12)]
    for entry in [out, *out["windows"]]:
        check_probabilities(entry, config["class_names"])


def test_raw_frames_reproduce_train_predictions(ckpt, data):
    """CK+ layout: the raw frame folder, not cropped, through reencode.sh as the dataset went:
    the probabilities train.py computed for that test clip (features.npz)."""
    feats = np.load(ckpt.parent / "features.npz")
    path = str(feats["test_path"][0])
    raw = data.parent / "tiny-raw" / Path(path).with_suffix("")
    out = predict.predict_video(raw, ckpt, window=64, crop=False)
    expected = torch.softmax(torch.from_numpy(feats["test_logits"][0]).float(), 0).numpy()
    assert list(out["probabilities"].values()) == pytest.approx(expected.tolist(), abs=1e-5)


def test_no_face_is_a_clear_error(ckpt, clips, capsys):
    assert predict.main([str(clips["noise"]), "--checkpoint", str(ckpt)]) == 1
    err = capsys.readouterr().err
    assert "no face found" in err and "--no-crop" in err and "Traceback" not in err


def test_unreadable_videos_are_clear_errors(ckpt, tmp_path, capsys):
    text = tmp_path / "notes.mp4"
    text.write_text("not a video\n" * 20)
    cases = [([str(tmp_path / "missing.mp4")], "no such file"),
             ([str(text)], "not a readable video"),
             ([str(text), "--no-crop"], "reencode.sh could not convert it")]
    for args, message in cases:
        assert predict.main([*args, "--checkpoint", str(ckpt)]) == 1
        assert message in capsys.readouterr().err


def test_bad_checkpoints_are_clear_errors(ckpt, clips, tmp_path, capsys):
    good = torch.load(ckpt, weights_only=True)
    config = json.loads(good["config"])
    bad = {
        "missing.pt": None,
        "text.pt": "not a checkpoint",
        "state_dict.pt": good["model"],
        "no_keys.pt": {**good, "config": json.dumps({"num_classes": 7})},
        "mismatch.pt": {**good, "config": json.dumps({**config, "hidden": 16})},
    }
    messages = {"missing.pt": "no such checkpoint file", "text.pt": "not a PyTorch checkpoint",
                "state_dict.pt": "not a train.py checkpoint", "no_keys.pt": "config lacks",
                "mismatch.pt": "weights do not match its config"}
    for name, content in bad.items():
        path = tmp_path / name
        if isinstance(content, str):
            path.write_text(content)
        elif content is not None:
            torch.save(content, path)
        assert predict.main([str(clips["face"]), "--checkpoint", str(path)]) == 1, name
        assert messages[name] in capsys.readouterr().err, name
