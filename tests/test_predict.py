"""predict.py with a checkpoint of the tiny run: a face video in another codec and container
(H.264 .mp4, MPEG-4 Part 2 .avi), sliding windows with a plot, each window the same as its frames
alone (bit for bit), the test-time prediction of train.py reproduced from the raw frames, the
synthetic-model warning, and clear errors for a video without a face, an unreadable video and
bad checkpoints."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import zipfile
from dataclasses import asdict, replace
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from PIL import Image
from skimage import data as skdata

import coviar
import faces
import predict
from datasets import CLASSES
from models import MIC, MICConfig
from reader import ClipDataset
from tests.clips import has_libx264, on_cores
from tests.conftest import ROOT, TINY

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
        "long": encode(d / "long.avi", face_frames(60), "mpeg4"),
        "noise": encode(d / "noise.mp4", noise, CODEC),
    }


def check_probabilities(entry: dict, classes: list[str]) -> None:
    probs = entry["probabilities"]
    assert list(probs) == classes
    assert sum(probs.values()) == pytest.approx(1, abs=1e-5)
    assert entry["prediction"] == max(probs, key=probs.get)


def test_h264_clip_json(ckpt, clips, capsys):
    assert (
        predict.main(
            [str(clips["face"]), "--checkpoint", str(ckpt), "--window", "64", "--device", "cpu"]
        )
        == 0
    )
    captured = capsys.readouterr()
    out = json.loads(captured.out)
    classes = json.loads(torch.load(ckpt, weights_only=True)["config"])["class_names"]
    assert set(out) == {
        "video",
        "checkpoint",
        "classes",
        "frames",
        "probabilities",
        "prediction",
        "warning",
    }
    assert out["classes"] == classes and out["frames"] == 12
    check_probabilities(out, classes)
    # The tiny run trained on the synthetic set: said in the JSON and on stderr.
    assert "synthetic" in out["warning"] and "real face" in out["warning"]
    assert f"warning: {out['warning']}" in captured.err


def test_sliding_windows_with_plot(ckpt, clips, tmp_path):
    png = tmp_path / "probs.png"
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "predict.py"),
            str(clips["long"]),
            "--checkpoint",
            str(ckpt),
            "--window",
            "32",
            "--stride",
            "16",
            "--plot",
            str(png),
            "--device",
            "cpu",
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["frames"] == 60 and (out["window"], out["stride"]) == (32, 16)
    bounds = [(w["start_frame"], w["end_frame"]) for w in out["windows"]]
    assert bounds == [(0, 32), (16, 48), (28, 60)]
    for entry in [out, *out["windows"]]:
        check_probabilities(entry, out["classes"])
    with Image.open(png) as im:
        assert im.format == "PNG" and im.width > 300


def test_plan_windows():
    assert predict.plan_windows(12, 16, 8) == []
    got = [(w.start, w.end) for w in predict.plan_windows(50, 16, 8)]
    assert got == [(0, 16), (8, 24), (16, 32), (24, 40), (32, 48), (34, 50)]
    assert [(w.start, w.end) for w in predict.plan_windows(17, 16, 100)] == [(0, 16), (1, 17)]


def write_frames(folder: Path, frames: list[np.ndarray]) -> Path:
    folder.mkdir(parents=True)
    for i, f in enumerate(frames, 1):
        Image.fromarray(f).save(folder / f"f{i}.png")  # f2 before f10: natural order
    return folder


def test_window_is_the_clip_alone(ckpt, tmp_path):
    """A 12-frame clip alone, and preceded by 200 frames of a still face in another pose: the
    window over the clip's frames is re-encoded from those frames alone, so its stream is byte
    for byte the clip's, its input bit for bit, and its probabilities those of the clip (up to
    float32 rounding of another batch composition: 1e-6)."""
    clip = face_frames(12)
    still = face_frames(40)[30]  # the face elsewhere, turned: not the clip's first frame
    alone = write_frames(tmp_path / "alone", clip)
    after = write_frames(tmp_path / "after", [still] * 200 + clip)
    lossless = {}
    for name, frames in (("alone", clip), ("after", [still] * 200 + clip)):
        lossless[name] = tmp_path / f"{name}.mkv"
        with av.open(str(lossless[name]), "w") as out:
            stream = out.add_stream("ffv1", rate=25)
            stream.width, stream.height, stream.pix_fmt = 96, 96, "yuv420p"
            for i, img in enumerate(frames):
                frame = av.VideoFrame.from_ndarray(img, format="rgb24")
                frame.pts = i
                out.mux(stream.encode(frame))
            out.mux(stream.encode())
    window = predict.Window(200, 212)
    for a, b in ((alone, after), (lossless["alone"], lossless["after"])):
        src = tmp_path / f"src-{a.name}"
        predict.Source(a).write(src, {"alone": None})
        predict.Source(b).write(src, {"window": window})
        predict.reencode(src, tmp_path / f"out-{a.name}", a)
        streams = [tmp_path / f"out-{a.name}" / f"{n}.mp4" for n in ("alone", "window")]
        assert streams[0].read_bytes() == streams[1].read_bytes(), a
    # (Lossless videos, not the folders: reencode.sh of main drops a folder of 212 frames at
    # random, its `find | grep -q` under pipefail.)
    one = predict.predict_video(lossless["alone"], ckpt, crop=False, window=64)
    both = predict.predict_video(lossless["after"], ckpt, crop=False, window=12, stride=20)
    entry = both["windows"][10]
    assert (entry["start_frame"], entry["end_frame"]) == (200, 212)
    assert one["frames"] == 12 and both["frames"] == 212
    assert entry["probabilities"] == pytest.approx(one["probabilities"], abs=1e-6)
    config = json.loads(torch.load(ckpt, weights_only=True)["config"])
    root = tmp_path / f"out-{alone.name}"
    dataset = predict.clip_dataset(root, {"alone": 12, "window": 12}, config)
    assert torch.equal(dataset[0]["input"], dataset[1]["input"])


def test_reencode_gets_ffmpeg_from_this_interpreter(monkeypatch, tmp_path):
    """reencode.sh finds ffmpeg through $FFMPEG, set from the running interpreter's
    imageio-ffmpeg, so predict.py works without a .venv beside it; a user's $FFMPEG is kept."""
    import imageio_ffmpeg

    seen = []

    def run(cmd, **kw):
        seen.append(kw["env"].get("FFMPEG"))
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(predict.subprocess, "run", run)
    monkeypatch.delenv("FFMPEG", raising=False)
    predict.reencode(tmp_path, tmp_path / "out", tmp_path)
    monkeypatch.setenv("FFMPEG", "/opt/my/ffmpeg")
    predict.reencode(tmp_path, tmp_path / "out", tmp_path)
    assert seen == [imageio_ffmpeg.get_ffmpeg_exe(), "/opt/my/ffmpeg"]
    import train  # train.py's pipeline steps find it the same way (`frames.reencode_env`)

    monkeypatch.setattr(train.subprocess, "run", run)
    monkeypatch.delenv("FFMPEG")
    train.run_step(["true"])
    assert seen[-1] == imageio_ffmpeg.get_ffmpeg_exe()


def test_one_batched_pass_for_train_and_predict(data):
    """train.py's test pass and predict.classify share `reader.model_outputs`: the clips in
    order, whatever the batch, as the model gives them one by one."""
    import train

    ds = ClipDataset(data, num_segments=2, size=32, apex=False)
    torch.manual_seed(0)
    model = MIC(
        ds.num_classes, 2, "resnet6", 8, decoder=False, size=32, backbone_weights="random"
    ).eval()
    args = train.parse_args([*TINY, "--root", str(data), "--batch-size", "3"])
    out = train.clip_predictions(model, ds, args, torch.device("cpu"))
    assert out["label"].tolist() == [int(r["label"]) for r in ds.rows]
    with torch.no_grad():
        alone = torch.cat([model(ds[i]["input"][None])["logits"] for i in range(len(ds))])
    assert np.allclose(out["logits"], alone.numpy(), atol=1e-5)
    probs = predict.classify(model, ds)
    assert np.allclose(probs, torch.softmax(alone, 1).numpy(), atol=1e-6)


@pytest.mark.parametrize(
    "variant",
    [
        {"with_mv": True},
        {"input": "rgb", "data_bn": False},
        {"num_subjects": 3},
        {"decoder": False, "backbone": "resnet18"},
    ],
    ids=["mv", "rgb", "adversary", "resnet18-no-decoder"],
)
def test_every_model_variant(ckpt, clips, tmp_path, variant):
    """Checkpoints of MIC+T^t, the RGB baseline, MIC−MI+Adv (an adversary in the state dict) and
    without decoder: made here with random weights in train.py's format."""
    record = json.loads(torch.load(ckpt, weights_only=True)["config"])
    cfg = replace(
        MICConfig.from_checkpoint(record), **{k: v for k, v in variant.items() if k != "input"}
    )
    config = {
        **record,
        "input": variant.get("input", record["input"]),
        "dataset": "ckplus",
        "model": asdict(cfg),
    }
    torch.manual_seed(0)
    model = MIC.from_config(cfg, backbone_weights="random")
    path = tmp_path / "ckpt.pt"
    torch.save({"model": model.state_dict(), "config": json.dumps(config)}, path)
    out = predict.predict_video(clips["face"], path, window=8, stride=4, crop=False)
    assert [(w["start_frame"], w["end_frame"]) for w in out["windows"]] == [(0, 8), (4, 12)]
    assert "warning" not in out  # not a synthetic-only model
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
    cases = [
        ([str(tmp_path / "missing.mp4")], "no such file"),
        ([str(text)], "not a readable video"),
        ([str(text), "--no-crop"], "not a readable video"),
    ]
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
        "lacking.pt": {
            **good,
            "config": json.dumps(
                {**config, "model": {k: v for k, v in config["model"].items() if k != "hidden"}}
            ),
        },
        "unknown.pt": {
            **good,
            "config": json.dumps({**config, "model": {**config["model"], "depth": 3}}),
        },
        "mismatch.pt": {
            **good,
            "config": json.dumps({**config, "model": {**config["model"], "hidden": 16}}),
        },
    }
    messages = {
        "missing.pt": "no such checkpoint file",
        "text.pt": "not a PyTorch checkpoint",
        "state_dict.pt": "not a train.py checkpoint",
        "no_keys.pt": "no_keys.pt: model config: lacks num_segments, backbone",
        "lacking.pt": "lacking.pt: model config: lacks hidden;",
        "unknown.pt": "unknown.pt: model config: unknown depth;",
        "mismatch.pt": "weights do not match its config",
    }
    for name, content in bad.items():
        path = tmp_path / name
        if isinstance(content, str):
            path.write_text(content)
        elif content is not None:
            torch.save(content, path)
        assert predict.main([str(clips["face"]), "--checkpoint", str(path)]) == 1, name
        assert messages[name] in capsys.readouterr().err, name


def without_encoder_name(stream: bytes) -> bytes:
    """An MPEG-4 Part 2 stream without its user data "Lavc<version>" (the encoder's name)."""
    return re.sub(rb"\x00\x00\x01\xb2Lavc[0-9.]+\x00", b"", stream)


def test_crop_windows_are_reencode_sh_of_the_crops_alone(tmp_path):
    """Face-crop mode re-encodes in this process: a window's stream is what reencode.sh makes
    of `faces.write_video` of that window's crops alone (the old path), byte for byte but for
    the encoder's version string, here at 30 fps after 30 other frames; so is the whole
    video's; and every stream is one GOP."""
    clip = face_frames(12)
    frames = [face_frames(40)[30]] * 30 + clip
    box = (8, 4, 88, 84)
    out = tmp_path / "out"
    out.mkdir()
    made = list(predict.crop_streams(tmp_path / "v", frames, box, 30.0, 12, 30, out))
    assert [(n, w and (w.start, w.end)) for n, w in made] == [
        ("w00000000", (0, 12)),
        ("w00000030", (30, 42)),
        ("video", None),
    ]
    src = tmp_path / "src"
    crops = [f[4:84, 8:88] for f in frames]
    faces.write_video(src / "alone.avi", crops[30:], 30.0)
    faces.write_video(src / "video.avi", crops, 30.0)
    predict.reencode(src, tmp_path / "ref", src)
    for name, ref in (("w00000030", "alone"), ("video", "video")):
        ours, theirs = (out / f"{name}.mp4").read_bytes(), (tmp_path / "ref" / f"{ref}.mp4")
        assert ours != theirs.read_bytes()  # the encoder's name differs ...
        assert without_encoder_name(ours) == without_encoder_name(theirs.read_bytes())  # only
        assert len(coviar.gop_lengths(out / f"{name}.mp4")) == 1


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs 2 CPUs")
def test_crop_streams_do_not_depend_on_the_cores(tmp_path):
    """The face crops' streams (predict's encoders) and `faces.write_video`'s are the same bytes
    on one CPU and on two: the mpeg4 encoder's automatic threads would cut every frame into
    one slice per thread."""
    frames = face_frames(20, size=160)
    cores = sorted(os.sched_getaffinity(0))[:2]
    made = {}
    for cpus in ({cores[0]}, set(cores)):
        out = tmp_path / f"out{len(cpus)}"
        out.mkdir()
        with on_cores(cpus):
            list(predict.crop_streams(tmp_path / "v", frames, (0, 0, 160, 160), 25.0, 8, 4, out))
            faces.write_video(out / "writer.avi", frames, 25.0)
        made[len(cpus)] = {p.name: p.read_bytes() for p in sorted(out.iterdir())}
    assert len(made[1]) == 6 and made[1] == made[2]


def test_stream_mode_gives_the_windows_as_lines(ckpt, clips, capsys):
    """--stream on a file: one JSON line per window, then the whole video's; the same windows
    and probabilities as without --stream."""
    args = [str(clips["long"]), "--checkpoint", str(ckpt), "--window", "32", "--stride", "16"]
    assert predict.main([*args, "--stream"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert predict.main(args) == 0
    whole = json.loads(capsys.readouterr().out)
    assert (
        [(w["start_frame"], w["end_frame"]) for w in lines[:-1]]
        == [(w["start_frame"], w["end_frame"]) for w in whole["windows"]]
        == [(0, 32), (16, 48), (28, 60)]
    )
    assert lines[-1]["frames"] == 60 and "windows" not in lines[-1]
    for a, b in zip(lines, [*whole["windows"], whole], strict=True):
        assert a["probabilities"] == pytest.approx(b["probabilities"], abs=1.5e-6)


@pytest.mark.parametrize("dataset", sorted(CLASSES))
def test_a_checkpoint_of_each_dataset(ckpt, clips, tmp_path, dataset):
    """A checkpoint of every dataset predicts: its temporary index lists a fold of that dataset
    and its classes."""
    classes = list(CLASSES[dataset])
    record = json.loads(torch.load(ckpt, weights_only=True)["config"])
    cfg = replace(MICConfig.from_checkpoint(record), num_classes=len(classes))
    config = {**record, "dataset": dataset, "class_names": classes, "model": asdict(cfg)}
    model = MIC.from_config(cfg, backbone_weights="random")
    path = tmp_path / "ckpt.pt"
    torch.save({"model": model.state_dict(), "config": json.dumps(config)}, path)
    out = predict.predict_video(clips["face"], path, window=64, crop=False)
    check_probabilities(out, classes)


def test_inputs_too_short_or_without_video_are_clear_errors(ckpt, tmp_path, capsys):
    """One frame (a video, with and without the face crop; a folder) and an audio-only file:
    one line each."""
    one = encode(tmp_path / "one.mp4", face_frames(1), CODEC)
    folder = write_frames(tmp_path / "one", face_frames(1))
    audio = tmp_path / "audio.mkv"
    with av.open(str(audio), "w") as out:
        stream = out.add_stream("pcm_s16le", rate=8000)
        frame = av.AudioFrame.from_ndarray(
            np.zeros((1, 800), np.int16), format="s16", layout="mono"
        )
        frame.sample_rate, frame.pts = 8000, 0
        out.mux(stream.encode(frame))
        out.mux(stream.encode())
    cases = [
        ([str(one)], "at least 2 frames"),
        ([str(one), "--no-crop"], "at least 2 frames"),
        ([str(folder), "--no-crop"], "at least 2 frames"),
        ([str(audio)], "no video stream"),
        ([str(audio), "--no-crop"], "no video stream"),
    ]
    for args, message in cases:
        assert predict.main([*args, "--checkpoint", str(ckpt)]) == 1, args
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err and len(err.splitlines()) == 1, args


def test_plot_into_an_unwritable_place(ckpt, clips, tmp_path, capsys):
    """A plot that cannot be written: one line, and the JSON was printed before."""
    blocker = tmp_path / "file.txt"
    blocker.write_text("a file, not a folder")
    assert (
        predict.main(
            [
                str(clips["face"]),
                "--checkpoint",
                str(ckpt),
                "--window",
                "64",
                "--plot",
                str(blocker / "p.png"),
            ]
        )
        == 1
    )
    captured = capsys.readouterr()
    assert json.loads(captured.out)["frames"] == 12
    lines = [ln for ln in captured.err.splitlines() if "warning" not in ln]
    assert len(lines) == 1 and "cannot write the plot" in lines[0]


def test_a_compressed_record_is_refused_before_loading(tmp_path, capsys, monkeypatch):
    """A small checkpoint whose archive holds a record that deflates to far more than the file
    (96 MiB here) is refused from the archive's directory, before torch.load reads it."""
    small, path = tmp_path / "small.pt", tmp_path / "bomb.pt"
    torch.save({"model": {"w": torch.zeros(4)}, "config": "{}"}, small)
    with zipfile.ZipFile(small) as src, zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as dst:
        for info in src.infolist():
            dst.writestr(info, src.read(info))
        with dst.open("archive/data/bomb", "w", force_zip64=True) as big:
            zeros = bytes(1 << 20)
            for _ in range(96):
                big.write(zeros)
    assert path.stat().st_size < 1 << 20
    monkeypatch.setattr(torch, "load", lambda *a, **k: pytest.fail("loaded"))
    assert predict.main([str(tmp_path / "x.mp4"), "--checkpoint", str(path)]) == 1
    assert "refused before loading" in capsys.readouterr().err


def test_import_leaves_torch_for_the_loading_thread():
    """`import predict` does not import torch, torchvision nor facenet_pytorch (seconds): the
    thread that loads the checkpoint and MTCNN does, while the video decodes."""
    code = (
        "import sys, predict; print(sorted(m for m in ('torch', 'torchvision', 'facenet_pytorch', "
        "'identity_weights', 'faces', 'models', 'reader', 'datasets') if m in sys.modules))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True
    )
    assert proc.stdout.split() == ["[]"]


def test_loading_skips_torch_dynamo_which_still_works(ckpt):
    """The loading thread imports torchvision and facenet_pytorch without torch._dynamo (seconds);
    the function torchvision took from it still answers as the real one, and an import that asks
    the stand-in for anything else gets the real module."""
    code = f"""if True:
        import sys, predict
        predict._load({str(ckpt)!r}, "cpu", True).result()
        assert "torch._dynamo" not in sys.modules and "facenet_pytorch" in sys.modules
        took = sys.modules["torchvision.ops.roi_align"].is_compile_supported
        from torch._dynamo.utils import is_compile_supported
        assert took("cpu") == is_compile_supported("cpu") and took is not is_compile_supported
        del sys.modules["torch._dynamo.utils"]
        with predict._without_dynamo():
            from torch._dynamo.utils import counters
        assert counters is sys.modules["torch._dynamo.utils"].counters
        print("ok")"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert proc.stdout.split() == ["ok"], proc.stderr


def test_fast_pools_give_the_model_s_outputs(ckpt, monkeypatch):
    """load_model's model (on the CPU, `faces.fast_max_pools`) gives the logits of the model as
    built, bit for bit."""
    model, config = predict.load_model(ckpt)
    assert not any(isinstance(m, torch.nn.MaxPool2d) for m in model.modules())
    assert any(isinstance(m, faces.MaxPool) for m in model.modules())
    monkeypatch.setattr(faces, "fast_max_pools", lambda m: m)
    plain, _ = predict.load_model(ckpt)
    assert any(isinstance(m, torch.nn.MaxPool2d) for m in plain.modules())
    x = torch.randn(
        3, config["model"]["num_segments"], 3, config["model"]["size"], config["model"]["size"]
    )
    with torch.no_grad():
        assert torch.equal(model(x, None)["logits"], plain(x, None)["logits"])


def test_checkpoints_of_the_flat_config_still_load(ckpt, tmp_path):
    """Checkpoints written before the model had a record of its own (the MICConfig under
    "model") kept its keys in the record itself, without the adversary's (size, weight,
    conditioning) nor dropout: they load to the same model, their config read as the new one's
    but for the adversary's defaults (which predict.py does not use)."""
    state = torch.load(ckpt, weights_only=True)
    config = json.loads(state["config"])
    flat = {**{k: v for k, v in config.items() if k != "model"}, **config["model"]}
    for key in ("num_subjects", "adv_weight", "adv_conditional", "dropout"):
        del flat[key]
    old = tmp_path / "old.pt"
    torch.save({**state, "config": json.dumps(flat)}, old)
    model, loaded = predict.load_model(old)
    new, _ = predict.load_model(ckpt)
    assert loaded["model"] == {**config["model"], "adv_weight": 1.0, "adv_conditional": False}
    x = torch.randn(2, flat["num_segments"], 3, flat["size"], flat["size"])
    with torch.no_grad():
        assert torch.equal(model(x, None)["logits"], new(x, None)["logits"])


def test_torch_s_threads_and_the_device_are_set_once_loaded(ckpt):
    """Torch, imported by the loading thread, gets its `threads` in the thread that runs the
    networks, although it has run operations before; device None is cuda where there is one,
    else cpu (the command line's default)."""
    before = torch.get_num_threads()
    try:
        (*_, device), done = predict._loaded(
            predict._load(ckpt, None, False), lambda: 7, before + 1
        )
        assert torch.get_num_threads() == before + 1 and done == 7
    finally:
        torch.set_num_threads(before)
    assert device == ("cuda" if torch.cuda.is_available() else "cpu")


def test_the_switch_interval_is_short_while_the_video_decodes(ckpt):
    """While the imports and the video's decoding share the interpreter, it switches threads
    every `SWITCH_INTERVAL` s (the decoding waits less for it); as before afterwards."""
    before = sys.getswitchinterval()
    _, during = predict._loaded(predict._load(ckpt, "cpu", False), sys.getswitchinterval)
    assert during == predict.SWITCH_INTERVAL < before == sys.getswitchinterval()
