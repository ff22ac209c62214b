"""Predict the facial expression in a video with a checkpoint of train.py.

    python predict.py VIDEO --checkpoint runs/mic/mic/fold0/ckpt.pt
    python predict.py long.mp4 --checkpoint CKPT --window 16 --stride 8 --plot probs.png
    python predict.py face_crop.avi --checkpoint CKPT --no-crop
    python predict.py /dev/video0 --checkpoint CKPT --stream      # a camera, one line a window

VIDEO is any video PyAV/FFmpeg reads (H.264 .mp4, .avi, .mkv, ...) or a folder of frames (CK+,
frames in natural name order: 2 before 10). It goes through the same path as the training data
of AFEW: the face is found with MTCNN and one box per video is kept (`faces.face_box`: MTCNN
runs on 16 evenly spaced frames only, as `datasets.py crop`; the box is the median of those
detections, enlarged by --margin), every frame is cropped to it and written as MPEG-4 Part 2
(`faces.write_video`), and that is re-encoded into the stream coviar reads with reencode.sh's
settings. With --no-crop (videos that already show a face filling the frame, as CK+ and MMI) the
video goes to `reencode.sh` as it is. The clip is then read by `reader.ClipDataset` in test mode
(TSN centre sampling, the centred square of the shorter side resized to the model's size), over
a temporary index: the very reader of training and evaluation.

Output (stdout, JSON): {"video", "checkpoint", "classes", "frames", "probabilities" (class ->
probability), "prediction"} for the whole video (num_segments residual frames sampled over all of
it). A video longer than --window frames also gets "window", "stride" and "windows": one
{"start_frame", "end_frame" (exclusive), "probabilities", "prediction"} per sliding window.
The default window is 2 × num_segments frames (16 for 8 segments: about the length of a CK+
neutral-to-apex sequence, which is what the models are trained on); the default stride is half
a window. A checkpoint trained on the synthetic set adds "warning" (also said on stderr).
With --stream (face crop only) each window's entry is printed as one JSON line as soon as its
frames are in, and the whole video's result (without "windows") as the last line, in constant
memory (a window of crops): for long videos and cameras. A file or folder gets the same windows
and probabilities (within 1e-6) as without --stream, at the cost of two more decodes (counting
the frames, then the 16 MTCNN looks at); a device gets the face box of its first 16 frames.

Each window is represented as a training clip is: its source frames (the face crops, the frame
files, or the decoded frames of the video written losslessly) are re-encoded on their own, so
that its first frame is an I-frame and its residuals refer to its own frames, not to frames
before the window. A window's input is bit-identical to that of the same frames given alone
(tested: a clip alone and preceded by other frames). Face crops are re-encoded in this process
(`_Reencoding`: `faces.VideoWriter`'s encoder, then reencode.sh's, through PyAV, frame by frame
without a file between; the stream is reencode.sh's byte for byte but for the encoder's version
string, tested), window by window as the frames are read; with --no-crop the windows go through
one reencode.sh run (all cores in parallel). Every mpeg4 encoder runs one thread, so the streams
do not depend on the machine's cores. Torch and the modules that need it are imported in a thread
that then loads the checkpoint and MTCNN, while the video decodes (`import predict` imports no
torch; torchvision is imported without torch._dynamo, `_without_dynamo`).

Frame indices are those of the re-encoded video (the frames of the input, in order). Without
--stream the face crop decodes the whole video into memory once (about frames × width × height
× 3 bytes). Errors (no face, unreadable video, no video stream, fewer than 2 frames, a file that
is not a train.py checkpoint, a plot that cannot be written) are reported on stderr in one line
with exit status 1; the JSON is printed before the plot is written.
"""

from __future__ import annotations

import argparse
import csv
import importlib
import itertools
import json
import os
import shutil
import subprocess
import sys
import tempfile
import types
import zipfile
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, TypeVar

import av
import numpy as np
from av.video.frame import PictureType
from av.video.reformatter import VideoReformatter
from PIL import Image

import coviar
from frames import frame_files, reencode_env

# The modules of torch (seconds to import) are imported where they are needed, the first time
# in `_load`'s thread, while this one decodes the video.
if TYPE_CHECKING:
    from models import MIC
    from reader import ClipDataset

ROOT = Path(__file__).resolve().parent
BATCH = 16  # windows per forward pass
DETECT_FRAMES = 16  # frames MTCNN looks at (faces.face_box's default, as `datasets.py crop`)
FF_QP2LAMBDA = 118  # libavcodec's lambda of quantiser 1
SWITCH_INTERVAL = 0.0005  # s, while the video decodes and torch imports (Python's: 0.005)
T = TypeVar("T")
SYNTHETIC_WARNING = (
    "this model was trained on the synthetic set only: it has seen no real "
    "face, so its predictions on real faces mean little"
)


class PredictError(RuntimeError):
    """A problem with the user's input, reported without a traceback."""


class CheckpointError(PredictError):
    """The checkpoint is missing, unreadable or not one of train.py."""


class VideoError(PredictError):
    """The video cannot be read or re-encoded."""


class NoFaceError(PredictError):
    """MTCNN found no face in the video."""


@dataclass
class Window:
    """Frames [start, end) of the video."""

    start: int
    end: int


def load_model(checkpoint: str | Path, device: str = "cpu") -> tuple[MIC, dict[str, Any]]:
    """The expression model of a train.py checkpoint (eval mode; on the CPU with
    `faces.fast_max_pools`: the same outputs, faster) and its config (the model's under
    "model", as `MICConfig.from_checkpoint` reads it)."""
    import torch

    from faces import fast_max_pools
    from models import MIC, RANDOM, MICConfig

    path = Path(checkpoint)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    _check_records(path)
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a file that is not a checkpoint
        raise CheckpointError(
            f"{path}: not a PyTorch checkpoint of tensors (torch.load(weights_only=True) "
            f"failed: {type(exc).__name__})"
        ) from exc
    if not (
        isinstance(ckpt, dict)
        and {"model", "config"} <= ckpt.keys()
        and isinstance(ckpt["model"], dict)
    ):
        keys = sorted(map(str, ckpt))[:8] if isinstance(ckpt, dict) else type(ckpt).__name__
        raise CheckpointError(
            f"{path}: not a train.py checkpoint (expected a state dict 'model' and a 'config', "
            f"found {keys})"
        )
    try:
        config = json.loads(ckpt["config"])
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{path}: its 'config' is not train.py's JSON ({exc})") from exc
    if not isinstance(config, dict):
        raise CheckpointError(f"{path}: its 'config' is not a JSON object, as train.py writes")
    try:
        cfg = MICConfig.from_checkpoint(config)
    except ValueError as exc:
        raise CheckpointError(f"{path}: {exc}; is it from train.py?") from None
    names = config.get("class_names")
    if (
        config.get("input") not in ("residual", "rgb")
        or not isinstance(names, list)
        or len(names) != cfg.num_classes
    ):
        raise CheckpointError(
            f"{path}: inconsistent config (input {config.get('input')!r}, "
            f"class names {names!r}, num_classes {cfg.num_classes})"
        )
    config = {**config, "model": asdict(cfg)}  # the model's record, of old checkpoints too
    try:
        # The decoder and the adversary only serve training.
        model = MIC.from_config(
            replace(cfg, decoder=False, num_subjects=0), backbone_weights=RANDOM
        )
        model.load_state_dict(
            {
                k: v
                for k, v in ckpt["model"].items()
                if not k.startswith(("decoder.", "discriminator."))
            }
        )
    except (RuntimeError, ValueError, TypeError) as exc:
        raise CheckpointError(f"{path}: its weights do not match its config: {exc}") from exc
    model = model.to(device).eval()
    return fast_max_pools(model) if torch.device(device).type == "cpu" else model, config


@contextmanager
def _without_dynamo() -> Iterator[None]:
    """Imports made inside that need not import torch._dynamo: torchvision.ops imports one
    function of torch._dynamo.utils at its top (`is_compile_supported`, for torch.compile),
    which imports all of torch._dynamo, 2 of torchvision's 2.5 s of import on a 2-core CPU.
    Meanwhile a stand-in module takes that name: its `is_compile_supported` imports the real one
    when called, and any other name asked of it imports the real module at once (so an import
    that needs more of it still gets it). The stand-in is gone on exit."""
    name = "torch._dynamo.utils"
    stand_in = types.ModuleType(name)

    def real() -> types.ModuleType:
        if sys.modules.get(name) is stand_in:
            del sys.modules[name]
        return importlib.import_module(name)

    def is_compile_supported(device_type: str) -> bool:
        return real().is_compile_supported(device_type)

    def attribute(attr: str) -> Any:
        if attr.startswith("__"):  # the import system's questions (__path__: a package?)
            raise AttributeError(attr)
        return getattr(real(), attr)

    stand_in.is_compile_supported = is_compile_supported  # type: ignore[attr-defined]
    stand_in.__getattr__ = attribute  # type: ignore[method-assign]
    if name in sys.modules:
        yield
        return
    sys.modules[name] = stand_in
    try:
        yield
    finally:
        if sys.modules.get(name) is stand_in:
            del sys.modules[name]


def _load(
    checkpoint: str | Path, device: str | None, crop: bool, threads: int | None = None
) -> Future:
    """`load_model` and, with `crop`, `faces.detector`, in a thread: (model, config, detector or
    None, device: `device`, or with None cuda if available, else cpu); `threads`: torch's CPU
    threads, set as soon as it is imported (`_loaded` sets them in its thread too). Their
    imports (torch, torchvision, facenet_pytorch: seconds that hold the interpreter;
    torchvision's `_without_dynamo`) run while the caller decodes the video, which PyAV does
    without holding it."""

    def load() -> tuple[MIC, dict[str, Any], Any, str]:
        import torch

        if threads is not None:
            torch.set_num_threads(threads)
        with _without_dynamo():
            import torchvision  # noqa: F401

            if crop:
                import facenet_pytorch  # noqa: F401
        from faces import detector

        on = device or ("cuda" if torch.cuda.is_available() else "cpu")
        return (*load_model(checkpoint, on), detector(on) if crop else None, on)

    pool = ThreadPoolExecutor(1)
    try:
        return pool.submit(load)
    finally:
        pool.shutdown(wait=False)


def _loaded(
    loading: Future, video_work: Callable[[], T], threads: int | None = None
) -> tuple[tuple[MIC, dict, Any, str], T]:
    """The results of `loading` and of `video_work()`, done meanwhile; a bad checkpoint is
    reported before a bad video, as if the checkpoint were loaded first. Meanwhile the
    interpreter switches threads every `SWITCH_INTERVAL` s: the video's work, which holds it
    briefly many times a frame, waits less on the imports, which hold it most of the time. With
    `threads`, torch's CPU threads are then set in this thread, which runs the networks (torch
    keeps a thread's number once it has run an operation)."""
    interval = sys.getswitchinterval()
    sys.setswitchinterval(SWITCH_INTERVAL)
    try:
        done = video_work()
    except PredictError:
        loading.result()
        raise
    finally:
        sys.setswitchinterval(interval)
    loaded = loading.result()
    if threads is not None:
        import torch

        torch.set_num_threads(threads)
    return loaded, done


def _check_records(path: Path) -> None:
    """Refuse, before loading, a checkpoint archive whose records expand far beyond the file:
    torch.save stores them uncompressed, so records of more than twice the file's size (at
    least 64 MiB, at most coviar.MAX_RESULT_BYTES: half the memory) are compressed ones, not
    train.py's."""
    if not zipfile.is_zipfile(path):
        return  # torch.load names what else it is
    try:
        with zipfile.ZipFile(path) as archive:
            total = sum(info.file_size for info in archive.infolist())
    except (OSError, zipfile.BadZipFile) as exc:
        raise CheckpointError(f"{path}: a damaged checkpoint archive ({exc})") from exc
    size = path.stat().st_size
    if total > min(max(2 * size, 64 << 20), coviar.MAX_RESULT_BYTES):
        raise CheckpointError(
            f"{path}: its records expand to {total / 2**20:.0f} MiB from a "
            f"{size / 2**20:.1f} MiB file; torch.save writes them uncompressed, "
            "so this is no train.py checkpoint: refused before loading"
        )


def _link_or_copy(src: str | Path, dst: str | Path) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


class Source:
    """The frames of the user's video (without face crop) as items of reencode.sh's input tree:
    the whole video or any run of its frames, each as reencode.sh would take those frames alone.

    * a folder of frames: a folder of links to the frame files (renamed to their order, so that
      every item is read in that order);
    * a video: the file itself for the whole video; for a run of frames, its decoded frames
      written losslessly (FFV1), in their own pixel format."""

    def __init__(self, video: Path) -> None:
        self.video = video
        self.files = _check_input(video)

    def write(self, dst: Path, runs: dict[str, Window | None]) -> None:
        """Write item `name` of `dst` for each run of frames (None: the whole video)."""
        dst.mkdir(parents=True, exist_ok=True)
        if self.files:
            for name, w in runs.items():
                (dst / name).mkdir()
                part = self.files if w is None else self.files[w.start : w.end]
                for k, f in enumerate(part):
                    _link_or_copy(f, dst / name / f"{k:08d}{f.suffix.lower()}")
        else:
            if None in runs.values():
                # reencode.sh picks videos by suffix; FFmpeg reads the content whatever its name
                name = next(n for n, w in runs.items() if w is None)
                _link_or_copy(self.video, dst / f"{name}.mkv")
            windows = {n: w for n, w in runs.items() if w is not None}
            if windows:
                self._write_lossless(dst, windows)

    def _write_lossless(self, dst: Path, windows: dict[str, Window]) -> None:
        """The decoded frames of each window as FFV1 (lossless) .mkv, in one decode."""
        writers: dict[str, tuple[Any, Any]] = {}
        count = 0
        try:
            with av.open(str(self.video)) as container:
                stream = container.streams.video[0]
                rate = stream.average_rate or 25
                for i, frame in enumerate(container.decode(stream)):
                    count = i + 1
                    for name, w in windows.items():
                        if not w.start <= i < w.end:
                            continue
                        if name not in writers:
                            out = av.open(str(dst / f"{name}.mkv"), "w")
                            vs = out.add_stream("ffv1", rate=rate)
                            vs.width, vs.height, vs.pix_fmt = (
                                frame.width,
                                frame.height,
                                frame.format.name,
                            )
                            writers[name] = (out, vs)
                        out, vs = writers[name]
                        frame.pts, frame.time_base = i - w.start, Fraction(1) / rate
                        out.mux(vs.encode(frame))
                        if i == w.end - 1:
                            out.mux(vs.encode())
                            writers.pop(name)[0].close()
        except (OSError, ValueError, av.error.FFmpegError) as exc:
            raise VideoError(f"{self.video}: cannot write its windows losslessly ({exc})") from exc
        finally:
            for out, _ in writers.values():
                out.close()
        last = max(w.end for w in windows.values())
        if count < last:
            raise VideoError(
                f"{self.video}: decoded {count} frames, but the re-encoded video "
                f"has at least {last}"
            )


def _check_input(video: Path) -> list[Path]:
    """The frame files of a folder (none for a video file), after the checks every input gets:
    it exists, a folder holds at least 2 frames, a file holds a video stream."""
    if not video.exists():
        raise VideoError(f"{video}: no such file")
    if video.is_dir():
        files = frame_files(video)
        if len(files) < 2:
            raise VideoError(
                f"{video}: a folder of {len(files)} image frame(s); predict.py "
                "needs at least 2 frames"
            )
        return files
    try:
        with av.open(str(video)) as container:
            streams = len(container.streams.video)
    except (OSError, ValueError, av.error.FFmpegError) as exc:
        raise VideoError(f"{video}: not a readable video ({type(exc).__name__}: {exc})") from exc
    if not streams:
        raise VideoError(f"{video}: no video stream (audio only?)")
    return []


def _decoded(video: Path) -> tuple[list[np.ndarray], float]:
    """Every RGB frame of a video file or frame folder, and its frame rate (those of
    `faces.read_frames`, without importing torch), checked: a readable video of at least 2
    frames."""
    _check_input(video)
    frames = list(_rgb_frames(video))
    if len(frames) < 2:
        raise VideoError(f"{video}: {len(frames)} frame(s); predict.py needs at least 2 frames")
    return frames, _frame_rate(video)


def _rgb_frames(video: Path) -> Iterator[np.ndarray]:
    """The RGB frames of a video file, device or frame folder, one at a time (in the order of
    `faces.read_frames`); a decoding error is a VideoError."""
    try:
        if video.is_dir():
            for f in frame_files(video):
                yield np.asarray(Image.open(f).convert("RGB"))
            return
        with av.open(str(video), format="v4l2" if _is_device(video) else None) as container:
            for frame in container.decode(container.streams.video[0]):
                yield frame.to_ndarray(format="rgb24")
    except (OSError, ValueError, av.error.FFmpegError) as exc:
        raise VideoError(f"{video}: not a readable video ({type(exc).__name__}: {exc})") from exc


def _is_device(video: Path) -> bool:
    return str(video).startswith("/dev/")


def _frame_rate(video: Path) -> float:
    """Frames per second of a video (25 for a frame folder, as reencode.sh encodes it)."""
    if video.is_dir():
        return 25.0
    with av.open(str(video), format="v4l2" if _is_device(video) else None) as container:
        return float(container.streams.video[0].average_rate or 25)


def find_face(
    video: Path, frames: Sequence[np.ndarray], mtcnn: Any, margin: float, min_prob: float
) -> tuple[int, int, int, int]:
    """The face box of a video (`faces.face_box`: MTCNN on 16 evenly spaced frames; `mtcnn`
    from `faces.detector`)."""
    from faces import face_box

    box = face_box(frames, mtcnn, margin=margin, min_prob=min_prob)
    if box is None:
        raise NoFaceError(
            f"{video}: no face found (MTCNN, probability >= {min_prob}); lower --min-prob, or "
            "pass --no-crop if the video already shows a face filling the frame"
        )
    return box


class _Picked(Sequence):
    """The frames `faces.face_box` looks at, of a video of `n` frames, as a sequence of n."""

    def __init__(self, n: int, frames: dict[int, np.ndarray]) -> None:
        self.n, self.frames = n, frames

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> np.ndarray:  # type: ignore[override]
        return self.frames[i]


def detection_frames(video: Path) -> Sequence[np.ndarray]:
    """The frames `faces.face_box` looks at of a video read as a stream, in constant memory. A
    file or folder: those of the whole video, as without --stream (a first decode counts the
    frames, a second keeps the 16 detected on); a device: its first 16 frames (read again from
    there)."""
    if _is_device(video):
        return list(itertools.islice(_rgb_frames(video), DETECT_FRAMES))
    if video.is_dir():
        n = len(frame_files(video))
    else:
        n = 0
        try:
            with av.open(str(video)) as container:
                for _ in container.decode(container.streams.video[0]):
                    n += 1
        except (OSError, ValueError, av.error.FFmpegError) as exc:
            raise VideoError(f"{video}: not a readable video ({exc})") from exc
    from faces import detect_indices

    picks = set(detect_indices(n, DETECT_FRAMES)) | {0}
    head = itertools.islice(_rgb_frames(video), max(picks) + 1)
    return _Picked(n, {i: f for i, f in enumerate(head) if i in picks})


def _mpeg4(width: int, height: int, rate: Fraction) -> Any:
    """reencode.sh's encoder through the library: `-threads 1 -q:v 1` (a fixed quantiser: the
    qscale flag and global_quality 1 x FF_QP2LAMBDA), `-g 2147483647 -strict:v experimental
    -sc_threshold 1000000000 -c:v mpeg4`."""
    enc = av.CodecContext.create("mpeg4", "w")
    enc.thread_count = 1  # one slice a frame: the bytes do not depend on the machine's cores
    enc.width, enc.height, enc.pix_fmt = width, height, "yuv420p"
    enc.time_base, enc.framerate = 1 / rate, rate
    enc.qscale, enc.global_quality = True, FF_QP2LAMBDA
    enc.gop_size = 2**31 - 1
    enc.options = {"strict": "experimental", "sc_threshold": "1000000000"}
    return enc


def _writer_encoder(width: int, height: int, rate: float, q: int = 2) -> Any:
    """The encoder of `faces.VideoWriter` (MPEG-4 Part 2 at the fixed quantiser `q`, with the
    settings PyAV's add_stream gives it, one thread) without its container."""
    enc = av.CodecContext.create("mpeg4", "w")
    enc.thread_count = 1
    enc.width, enc.height, enc.pix_fmt = width, height, "yuv420p"
    enc.framerate = Fraction(round(rate) or 25)
    enc.time_base = 1 / enc.framerate
    enc.bit_rate, enc.bit_rate_tolerance = 0, 128000
    enc.options = {"qmin": str(q), "qmax": str(q)}
    return enc


class _Reencoding:
    """The stream reencode.sh makes of what `faces.VideoWriter` writes of a clip, made in this
    process frame by frame, without a file between: each yuv420p frame (as VideoWriter
    converts it) is encoded as VideoWriter encodes it, decoded, and encoded again with
    reencode.sh's settings (`_mpeg4`); the stream goes to `out` as it comes. It is
    reencode.sh's byte for byte but for the encoder's name in the header's user data (this
    libavcodec's version, not ffmpeg's: tested)."""

    def __init__(self, out: BinaryIO, width: int, height: int, rate: float) -> None:
        self.out = out
        self.writer = _writer_encoder(width, height, rate)
        self.decoder = av.CodecContext.create("mpeg4", "r")
        self.encoder = _mpeg4(width, height, self.writer.framerate)
        self.count = 0

    def _encode(self, frames: Iterable[Any]) -> None:
        for frame in frames:
            frame.pts, frame.time_base = self.count, self.encoder.time_base
            frame.pict_type = PictureType.NONE  # the decoder's I-frames are no forced key frames
            self.count += 1
            for packet in self.encoder.encode(frame):
                self.out.write(bytes(packet))

    def add(self, frame: Any, pts: int) -> None:
        """Add the clip's next frame (yuv420p, its index in the clip `pts`)."""
        frame.pts = pts
        for packet in self.writer.encode(frame):
            self._encode(self.decoder.decode(packet))

    def close(self) -> int:
        """Flush the three codecs; the number of frames."""
        for packet in self.writer.encode(None):
            self._encode(self.decoder.decode(packet))
        self._encode(self.decoder.decode(None))
        for packet in self.encoder.encode(None):
            self.out.write(bytes(packet))
        return self.count


def crop_streams(
    video: Path,
    frames: Iterable[np.ndarray],
    box: tuple[int, int, int, int],
    rate: float,
    window: int,
    stride: int,
    out: Path,
) -> Iterator[tuple[str, Window | None]]:
    """Re-encode the face crops of `frames` of `video` into `out`, as reencode.sh would
    each window's crops alone (`faces.write_video` of them, then reencode.sh) and the whole
    video's (`_Reencoding`): yields (name, window) as each `out/<name>.mp4` is written, the
    windows of `plan_windows` in order and then ("video", None), the whole video. Each crop is
    converted to yuv420p once, for its windows and the whole video. Memory: a window of crops.
    """
    x0, y0, x1, y1 = box
    recent: deque[Any] = deque(maxlen=window + 1)
    reformatter = VideoReformatter()
    n, last = 0, -1

    def encoded(w: Window, crops: list[Any]) -> tuple[str, Window]:
        name = f"w{w.start:08d}"
        with open(out / f"{name}.mp4", "wb") as f:
            clip = _Reencoding(f, x1 - x0, y1 - y0, rate)
            for i, crop in enumerate(crops):
                clip.add(crop, i)
            clip.close()
        return name, w

    with open(out / "video.mp4", "wb") as f:
        whole = _Reencoding(f, x1 - x0, y1 - y0, rate)
        for frame in frames:
            rgb = av.VideoFrame.from_ndarray(
                np.ascontiguousarray(frame[y0:y1, x0:x1]), format="rgb24"
            )
            crop = reformatter.reformat(rgb, format="yuv420p")
            whole.add(crop, n)
            recent.append(crop)
            n += 1
            # a window is written once a frame follows it; the last one (ending at the last
            # frame) is planned at the end
            s = n - 1 - window
            if s >= 0 and s % stride == 0:
                yield encoded(Window(s, s + window), list(recent)[:window])
                last = s
        if n < 2:
            raise VideoError(f"{video}: {n} frame(s); predict.py needs at least 2 frames")
        if n > window and last + window < n:
            yield encoded(Window(n - window, n), list(recent)[-window:])
        whole.close()
    yield "video", None


def reencode(src: Path, out: Path, video: Path) -> None:
    """Run reencode.sh on the tree `src` into `out` (all cores; its ffmpeg: `reencode_env`); a
    failure is a VideoError naming `video`."""
    proc = subprocess.run(
        ["bash", str(ROOT / "reencode.sh"), str(src), str(out)],
        capture_output=True,
        text=True,
        env=reencode_env(),
    )
    if proc.returncode != 0:
        lines = [ln.strip() for ln in proc.stderr.splitlines() if ln.strip()]
        why = lines[-1] if lines else f"status {proc.returncode}"
        raise VideoError(f"{video}: reencode.sh could not convert it ({why})")


def _reencoded_frames(path: Path, video: Path, frames: int | None = None) -> int:
    """Number of frames of a re-encoded stream, checked: one GOP (and `frames` frames)."""
    if not path.is_file():
        raise VideoError(f"{video}: reencode.sh wrote no {path.name}")
    try:
        gops = coviar.gop_lengths(path)
    except (OSError, ValueError) as exc:
        raise VideoError(f"{video}: unreadable after re-encoding ({exc})") from exc
    if len(gops) != 1:
        raise VideoError(
            f"{video}: reencode.sh wrote {len(gops)} GOPs; ClipDataset reads one "
            "GOP per clip (reencode.sh writes one however long the clip)"
        )
    n = gops[0]
    if frames is not None and n != frames:
        raise VideoError(f"{video}: a window of {frames} frames re-encoded to {n}")
    return n


def plan_windows(num_frames: int, window: int, stride: int) -> list[Window]:
    """Sliding windows of `window` frames every `stride` frames, the last one ending at the
    last frame; none if the video is not longer than a window."""
    if num_frames <= window:
        return []
    starts = list(range(0, num_frames - window + 1, stride))
    if starts[-1] + window < num_frames:
        starts.append(num_frames - window)
    return [Window(s, s + window) for s in starts]


def clip_dataset(root: Path, clips: dict[str, int], config: dict[str, Any]) -> ClipDataset:
    """`reader.ClipDataset` in test mode over the re-encoded clips {name: frames} of `root`
    (a temporary index.csv), configured as the checkpoint's model was trained."""
    from datasets import CLASSES, COLUMNS, FOLDS
    from reader import ClipDataset

    dataset = config.get("dataset") if config.get("dataset") in CLASSES else "ckplus"
    label = CLASSES[dataset][0]  # a placeholder: predicting needs no label
    with open(root / "index.csv", "w", newline="") as f:
        rows = csv.DictWriter(f, COLUMNS)
        rows.writeheader()
        for name, n in clips.items():
            rows.writerow(
                dict(
                    path=f"{name}.mp4",
                    subject="video",
                    label=0,
                    label_name=label,
                    num_frames=n,
                    fold=FOLDS[dataset][0],
                    dataset=dataset,
                    view=0,
                    crop="none",
                    apex=-1,
                )
            )
    model = config["model"]
    return ClipDataset(
        root,
        num_segments=model["num_segments"],
        size=model["size"],
        representation=config["input"],
        with_mv=model["with_mv"],
        accumulate=config.get("accumulate", False),
        apex=False,
    )


def classify(model: MIC, dataset: ClipDataset, device: str = "cpu") -> np.ndarray:
    """Class probabilities (len(dataset), C) of the clips of `dataset`."""
    import torch

    from reader import model_outputs

    logits = model_outputs(model, dataset, BATCH, device)["logits"]
    return torch.softmax(logits, dim=1).numpy()


def _prediction(classes: list[str], p: np.ndarray) -> dict[str, Any]:
    """The JSON of class probabilities `p`: each rounded, and the most probable class."""
    return {
        "probabilities": {c: round(float(v), 6) for c, v in zip(classes, p, strict=True)},
        "prediction": classes[int(p.argmax())],
    }


def _settings(config: dict[str, Any], window: int | None, stride: int | None) -> tuple[int, int]:
    """The window and stride (defaults: 2 x num_segments, half a window), checked."""
    window = 2 * config["model"]["num_segments"] if window is None else window
    stride = max(1, window // 2) if stride is None else stride
    if window < 2 or stride < 1:
        raise PredictError(f"window must be >= 2 and stride >= 1, not {window} and {stride}")
    return window, stride


def _result(
    video: Path, checkpoint: str | Path, config: dict[str, Any], n: int, probs: np.ndarray
) -> dict[str, Any]:
    """The whole video's part of the JSON result."""
    classes = list(config["class_names"])
    result: dict[str, Any] = {
        "video": str(video),
        "checkpoint": str(checkpoint),
        "classes": classes,
        "frames": n,
        **_prediction(classes, probs),
    }
    if config.get("dataset") == "synthetic":
        result["warning"] = SYNTHETIC_WARNING
    return result


def predict_video(
    video: str | Path,
    checkpoint: str | Path,
    window: int | None = None,
    stride: int | None = None,
    crop: bool = True,
    device: str | None = "cpu",
    margin: float = 0.3,
    min_prob: float = 0.9,
    threads: int | None = None,
) -> dict[str, Any]:
    """Expression probabilities of `video` (see the module docstring for the result's keys).

    `window` defaults to 2 × num_segments frames, `stride` to half a window; `device` None is
    cuda if available; `threads` sets torch's CPU threads (None: as they are)."""
    video = Path(video)
    loading = _load(checkpoint, device, crop, threads)
    with tempfile.TemporaryDirectory(prefix="mic-predict-") as tmp:
        out, src = Path(tmp) / "out", Path(tmp) / "in"
        if crop:
            (model, config, mtcnn, device), (frames, rate) = _loaded(
                loading, lambda: _decoded(video), threads
            )
            window, stride = _settings(config, window, stride)
            box = find_face(video, frames, mtcnn, margin, min_prob)
            out.mkdir()
            made = list(crop_streams(video, frames, box, rate, window, stride, out))
            del frames
            names = {name: w for name, w in made if w is not None}
            n = _reencoded_frames(out / "video.mp4", video)
        else:

            def whole() -> tuple[Source, int]:
                """The whole video through reencode.sh (another process), while loading."""
                source = Source(video)
                source.write(src / "whole", {"video": None})
                reencode(src / "whole", out, video)
                n = _reencoded_frames(out / "video.mp4", video)
                if n < 2:
                    raise VideoError(f"{video}: {n} frame(s); predict.py needs at least 2 frames")
                return source, n

            (model, config, _, device), (source, n) = _loaded(loading, whole, threads)
            window, stride = _settings(config, window, stride)
            names = {f"w{w.start:08d}": w for w in plan_windows(n, window, stride)}
            if names:
                source.write(src / "windows", names)
                reencode(src / "windows", out, video)
        clips = {"video": n} | {
            name: _reencoded_frames(out / f"{name}.mp4", video, w.end - w.start)
            for name, w in names.items()
        }
        probs = classify(model, clip_dataset(out, clips, config), device)
    result = _result(video, checkpoint, config, n, probs[0])
    if names:
        classes = result["classes"]
        result.update(
            window=window,
            stride=stride,
            windows=[
                {"start_frame": w.start, "end_frame": w.end, **_prediction(classes, p)}
                for w, p in zip(names.values(), probs[1:], strict=True)
            ],
        )
    return result


def predict_stream(
    video: str | Path,
    checkpoint: str | Path,
    window: int | None = None,
    stride: int | None = None,
    device: str | None = "cpu",
    margin: float = 0.3,
    min_prob: float = 0.9,
    threads: int | None = None,
) -> Iterator[dict[str, Any]]:
    """`predict_video` as a stream, in constant memory (the frames of a window): yields each
    window's entry as soon as its frames are in, then the whole video's result (without
    "windows"). A video file or folder gets the windows and probabilities of `predict_video`
    (within 1e-6: one window per batch); a device (/dev/video0) the face box of its first
    frames. `device` and `threads` as in `predict_video`."""
    video = Path(video)

    def picked() -> Sequence[np.ndarray]:
        if not _is_device(video):
            _check_input(video)
        return detection_frames(video)

    (model, config, mtcnn, device), frames = _loaded(
        _load(checkpoint, device, True, threads), picked, threads
    )
    window, stride = _settings(config, window, stride)
    box = find_face(video, frames, mtcnn, margin, min_prob)
    del frames
    classes = list(config["class_names"])
    with tempfile.TemporaryDirectory(prefix="mic-predict-") as tmp:
        out = Path(tmp)
        made = crop_streams(video, _rgb_frames(video), box, _frame_rate(video), window, stride, out)
        for name, w in made:
            n = _reencoded_frames(
                out / f"{name}.mp4", video, None if w is None else w.end - w.start
            )
            probs = classify(model, clip_dataset(out, {name: n}, config), device)[0]
            if w is None:
                yield _result(video, checkpoint, config, n, probs)
            else:
                yield {"start_frame": w.start, "end_frame": w.end, **_prediction(classes, probs)}
                (out / f"{name}.mp4").unlink()


def plot_probabilities(result: dict[str, Any], out: str | Path) -> None:
    """PNG of the probabilities: per class over time (window centres) for a video with windows,
    a bar chart otherwise."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    classes = result["classes"]
    fig, ax = plt.subplots(figsize=(8, 3.6))
    if "windows" in result:
        ws = result["windows"]
        x = [(w["start_frame"] + w["end_frame"] - 1) / 2 for w in ws]
        for c in classes:
            ax.plot(x, [w["probabilities"][c] for w in ws], marker=".", label=c)
        ax.set_xlabel(f"frame (centre of a {result['window']}-frame window)")
        ax.set_xlim(0, result["frames"] - 1)
        ax.set_ylim(0, 1)
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1), fontsize=8)
    else:
        ax.barh(classes, [result["probabilities"][c] for c in classes])
        ax.invert_yaxis()
        ax.set_xlim(0, 1)
    ax.set_ylabel("probability" if "windows" in result else "")
    ax.set_title(f"{Path(result['video']).name}: {result['prediction']}", fontsize=10)
    fig.tight_layout()
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    """Command line entry point; returns the exit status."""
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "video", metavar="VIDEO", help="video file (any codec/container) or folder of frames"
    )
    p.add_argument("--checkpoint", metavar="CKPT", required=True, help="ckpt.pt of train.py")
    p.add_argument(
        "--window",
        type=int,
        metavar="N",
        help="frames per window (default: 2 × num_segments of the checkpoint)",
    )
    p.add_argument(
        "--stride",
        type=int,
        metavar="N",
        help="frames between window starts (default: half a window)",
    )
    p.add_argument("--plot", metavar="PNG", help="write a plot of the probabilities")
    p.add_argument(
        "--stream",
        action="store_true",
        help="print one JSON line per window as soon as it is ready, then one for the "
        "whole video, in constant memory (long videos, a camera: /dev/video0)",
    )
    p.add_argument(
        "--no-crop", action="store_true", help="no face detection: the video already is a face crop"
    )
    p.add_argument(
        "--margin",
        type=float,
        default=0.3,
        help="face box enlargement, as `datasets.py crop` (default 0.3)",
    )
    p.add_argument(
        "--min-prob",
        type=float,
        default=0.9,
        help="MTCNN face probability, as `datasets.py crop` (default 0.9)",
    )
    p.add_argument(
        "--device",
        default=None,
        help="cpu, cuda, cuda:1, ... (default: cuda if available)",
    )
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        metavar="N",
        help="CPU threads of torch (default 1: the work is many small operations, "
        "which more threads slow down, a lot on a busy machine)",
    )
    args = p.parse_args(argv)
    if args.stream and (args.no_crop or args.plot):
        p.error("--stream goes with the face crop and without --plot")
    try:
        if args.stream:
            for line in predict_stream(
                args.video,
                args.checkpoint,
                args.window,
                args.stride,
                args.device,
                args.margin,
                args.min_prob,
                max(1, args.threads),
            ):
                print(json.dumps(line), flush=True)
            return 0
        result = predict_video(
            args.video,
            args.checkpoint,
            args.window,
            args.stride,
            not args.no_crop,
            args.device,
            args.margin,
            args.min_prob,
            max(1, args.threads),
        )
    except PredictError as exc:
        print(f"predict.py: error: {exc}", file=sys.stderr)
        return 1
    if "warning" in result:
        print(f"predict.py: warning: {result['warning']}", file=sys.stderr)
    print(json.dumps(result, indent=1), flush=True)
    if args.plot:
        try:
            plot_probabilities(result, args.plot)
        except OSError as exc:
            print(
                f"predict.py: error: cannot write the plot {args.plot}: {exc.strerror or exc}",
                file=sys.stderr,
            )
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
