"""`coviar` against the independent pure-Python reference, bad input, and `reencode.sh`."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import coviar
from tests.clips import bad_inputs, has_libx264, make_clip
from tests.coviar_reference import identity_map, ref_all_from_decoded, ref_decode, ref_warp

ROOT = Path(__file__).resolve().parents[1]

# (name, make_clip keyword arguments): sizes that are and are not multiples of 16, +mv4+qpel,
# several GOPs, content that translates at two speeds or rotates and scales, and containers.
CLIPS = {
    "176x144": dict(width=176, height=144, frames=20),
    "100x76-rotate": dict(width=100, height=76, frames=16, content="rotate"),
    "mv4-qpel": dict(width=176, height=144, frames=16, mv4=True, qpel=True),
    "gop12": dict(width=112, height=80, frames=30, gop=12, seed=3),
    "mp4": dict(width=96, height=64, frames=10, container="mp4"),
    "avi": dict(width=96, height=64, frames=10, container="avi", content="rotate"),
    "mkv": dict(width=96, height=64, frames=10, container="mkv", mv4=True),
}


@pytest.fixture(scope="module", params=sorted(CLIPS))
def clip(request, tmp_path_factory) -> tuple[Path, list]:
    """A generated clip and its reference decoding (one pass)."""
    kw = CLIPS[request.param]
    ext = {"m4v": "m4v"}.get(kw.get("container", "m4v"), kw.get("container"))
    path = make_clip(tmp_path_factory.mktemp("clip") / f"{request.param}.{ext}", **kw)
    return path, ref_decode(path)


@pytest.mark.parametrize("accumulate", [False, True])
@pytest.mark.parametrize("representation", [0, 1, 2])
def test_equal_to_reference_on_every_frame(clip, representation, accumulate):
    path, gops = clip
    expected = ref_all_from_decoded(gops, representation, accumulate)
    assert coviar.get_num_gops(path) == len(gops)
    assert coviar.get_num_frames(path) == sum(len(g) for g in gops)
    for g, frames in enumerate(expected):
        got = coviar.load_many(path, g, range(len(frames)), representation, accumulate)
        assert got.dtype == (np.uint8 if representation == 0 else np.int32)
        assert got.shape == (len(frames), *frames[0].shape)
        assert np.abs(got.astype(np.int64) - np.stack(frames)).max() == 0
    # `load` of one frame, and `load_many` in any order with repeats, agree with the above.
    last = len(expected[-1]) - 1
    one = coviar.load(path, len(expected) - 1, last, representation, accumulate)
    np.testing.assert_array_equal(one, expected[-1][last])
    some = coviar.load_many(path, 0, [3, 1, 3], representation, accumulate)
    np.testing.assert_array_equal(some, np.stack([expected[0][i] for i in (3, 1, 3)]))


def test_content_really_moves(clip):
    path, gops = clip
    mv = coviar.load_many(path, 0, range(1, len(gops[0])), 1, False)
    moving = 0.001 if CLIPS[path.stem].get("content") == "rotate" else 0.05  # a patch, or all
    assert np.count_nonzero(mv) > moving * mv.size
    if "mv4" in path.stem or "mkv" in path.name:  # +mv4 gives 8x8 blocks
        sizes = {(r[0], r[1]) for f in gops[0] if f.records for r in f.records}
        assert (8, 8) in sizes


@pytest.mark.parametrize("accumulate", [False, True])
def test_warp_plus_residual_is_the_decoded_frame(clip, accumulate):
    path, gops = clip
    for g, gop in enumerate(gops):
        n = len(gop)
        pics = coviar.load_many(path, g, range(n), 0, False).astype(np.int32)
        mvs = coviar.load_many(path, g, range(n), 1, accumulate)
        res = coviar.load_many(path, g, range(n), 2, accumulate)
        h, w = pics.shape[1:3]
        for t in range(1, n):
            ref = pics[0] if accumulate else pics[t - 1]
            warped = ref_warp(ref, identity_map(h, w) - mvs[t])
            np.testing.assert_array_equal(warped + res[t], pics[t])


def test_several_gops_restart_frame_index(tmp_path):
    path = make_clip(tmp_path / "g.m4v", width=64, height=48, frames=26, gop=12)
    assert coviar.get_num_gops(path) == 3
    assert coviar.get_num_frames(path) == 26
    assert coviar.gop_lengths(path) == [12, 12, 2]
    np.testing.assert_array_equal(coviar.load(path, 1, 0, 2, False), 0)  # an I-frame
    with pytest.raises(IndexError, match="out of range"):
        coviar.load(path, 2, 2, 0, False)  # GOP 2 holds frames 24 and 25 only


# Each bad input runs in a child process, so that a crash fails this test and not the suite.
_PROBE = """
import sys, coviar
path, gop, frame, rep = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
try:
    coviar.load(path, gop, frame, rep, False)
    print("OK")
except Exception as e:
    print(type(e).__name__, e)
"""


def _probe(path: Path | str, gop: int = 0, frame: int = 0, rep: int = 2) -> str:
    run = subprocess.run(
        [sys.executable, "-c", _PROBE, str(path), str(gop), str(frame), str(rep)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 0, f"crashed with {run.returncode}: {run.stderr[-2000:]}"
    return run.stdout.strip()


@pytest.fixture(scope="module")
def good(tmp_path_factory) -> Path:
    return make_clip(tmp_path_factory.mktemp("good") / "good.m4v", width=64, height=48, frames=8)


@pytest.mark.parametrize(
    "case, expected",
    [
        ("missing", "FileNotFoundError"),
        ("empty", "ValueError"),
        ("random", "ValueError"),
        ("text", "ValueError"),
        ("truncated", "IndexError"),  # its frames are readable up to the cut
    ],
)
def test_bad_files_raise_clear_errors(tmp_path, case, expected):
    paths = bad_inputs(tmp_path)
    path = tmp_path / "nope.m4v" if case == "missing" else paths[case]
    out = _probe(path, frame=10_000)
    assert out.split()[0] == expected, out
    assert str(path) in out


def test_truncated_stream_reads_its_intact_frames(tmp_path):
    path = bad_inputs(tmp_path)["truncated"]
    n = coviar.get_num_frames(path)
    assert n >= 1
    assert _probe(path, frame=0, rep=0) == "OK"


@pytest.mark.parametrize(
    "gop, frame, rep, expected",
    [
        (1, 0, 2, "IndexError"),
        (0, 8, 2, "IndexError"),
        (0, -1, 2, "IndexError"),
        (-1, 0, 2, "IndexError"),
        (0, 0, 3, "ValueError"),
        (0, 7, 1, "OK"),
    ],
)
def test_out_of_range_indices(good, gop, frame, rep, expected):
    assert _probe(good, gop, frame, rep).split()[0] == expected


def test_b_frames_are_refused_with_a_hint(tmp_path):
    path = make_clip(tmp_path / "b.m4v", width=64, height=48, frames=10, bframes=2)
    out = _probe(path, frame=3)
    assert out.startswith("ValueError") and "B-frames" in out and "reencode.sh" in out


@pytest.mark.skipif(not has_libx264(), reason="PyAV built without libx264")
def test_h264_is_refused_with_a_hint(tmp_path):
    path = make_clip(
        tmp_path / "h.mp4", width=64, height=48, frames=10, codec="h264", bframes=2, container="mp4"
    )
    out = _probe(path)
    assert out.startswith("ValueError") and "h264" in out and "reencode.sh" in out


def test_kernels_check_their_input():
    from coviar import _kernels

    rec = np.array([[16, 16, 0, 0, 4, 4]], np.int32)
    with pytest.raises(ValueError, match="records"):
        _kernels.mv_field(rec.astype(np.int64), 8, 8)
    with pytest.raises(ValueError, match="frame size"):
        _kernels.mv_field(rec, 0, 8)
    bad_map = np.full((4, 4, 2), 99, np.int32)
    img = np.zeros((4, 4, 3), np.uint8)
    with pytest.raises(ValueError, match=r"outside the frame at pixel \(x=0, y=0\)"):
        _kernels.residual(img, img, bad_map)
    bad_map = np.stack(np.meshgrid(np.arange(4), np.arange(4)), -1).astype(np.int32)
    bad_map[2, 3] = (4, 2)  # the first pixel whose source is outside: (x=3, y=2)
    bad_map[3, 1] = (-1, 0)
    with pytest.raises(ValueError, match=r"outside the frame at pixel \(x=3, y=2\)"):
        _kernels.residual(img, img, bad_map)
    # A record far outside the frame writes nothing.
    far = np.array([[16, 16, -30000, -30000, 30000, 30000]], np.int32)
    assert not _kernels.mv_field(far, 8, 8).any()
    with pytest.raises(ValueError, match="whole number"):
        _kernels.records(b"\0" * 41)  # side data is a whole number of 40-byte records
    assert _kernels.records(b"").shape == (0, 6)


@pytest.mark.parametrize("accumulate", [False, True])
def test_load_clip_equals_load_many(clip, accumulate):
    """All three representations from one decode, whole and cropped, equal `load_many` of each
    representation alone on every frame (max |diff| 0)."""
    path, gops = clip
    g = len(gops) - 1
    n = len(gops[g])
    every = list(range(n))
    alone = {rep: coviar.load_many(path, g, every, rep, accumulate) for rep in (0, 1, 2)}
    both = coviar.load_clip(path, g, {rep: every for rep in (0, 1, 2)}, accumulate)
    assert sorted(both) == [0, 1, 2]
    for rep in (0, 1, 2):
        assert both[rep].dtype == alone[rep].dtype and both[rep].shape == alone[rep].shape
        assert np.abs(both[rep].astype(np.int64) - alone[rep]).max() == 0
    # Different frames per representation, repeats, any order; boxes at odd offsets, one of them
    # given by a function of the frame size (called once).
    h, w = alone[0].shape[1:3]
    box = (h // 5, w // 3 + 1, h // 2, w // 2 - 1)
    calls = []

    def boxes(height, width):
        calls.append((height, width))
        return {1: box, 2: (0, 1, height, width - 1)}

    picks = {0: [n - 1, 0], 1: [2, 1, 2], 2: list(range(n - 1, 0, -2))}
    for crop in (boxes, {1: box, 2: (0, 1, h, w - 1)}):
        got = coviar.load_clip(path, g, picks, accumulate, crop=crop)
        np.testing.assert_array_equal(got[0], alone[0][picks[0]])
        t, le, bh, bw = box
        np.testing.assert_array_equal(got[1], alone[1][picks[1], t : t + bh, le : le + bw])
        np.testing.assert_array_equal(got[2], alone[2][picks[2], :, 1:])
    assert calls == [(h, w)]
    # Lookup tables: pytorch-coviar's residual bytes, and a table per channel for the vectors
    # (short, so that large values take its end entries).
    res_table = np.tile(np.clip(np.arange(-255, 256) + 128, 0, 255).astype(np.uint8), (3, 1))
    mv_table = np.stack([np.arange(-5, 6) * 20 + 100, np.arange(5, -6, -1) * 3 + 50]).astype(
        np.uint8
    )
    got = coviar.load_clip(
        path,
        g,
        picks,
        accumulate,
        crop={1: box},
        lut=lambda height, width: {2: res_table, 1: mv_table},
    )
    assert got[1].dtype == got[2].dtype == np.uint8
    np.testing.assert_array_equal(got[2], np.clip(alone[2][picks[2]] + 128, 0, 255))
    v = alone[1][picks[1], t : t + bh, le : le + bw]
    want = np.stack([mv_table[c][np.clip(v[..., c] + 5, 0, 10)] for c in (0, 1)], axis=-1)
    np.testing.assert_array_equal(got[1], want)
    scrambled = (np.arange(3 * 41).reshape(3, 41) * 37 % 256).astype(np.uint8)  # no clipped shift
    got = coviar.load_clip(path, g, {2: picks[2]}, accumulate, lut={2: scrambled})[2]
    v = np.clip(alone[2][picks[2]] + 20, 0, 40)
    np.testing.assert_array_equal(got, np.stack([scrambled[c][v[..., c]] for c in range(3)], -1))


def test_no_reference_cycles(good):
    """Decoded frames are freed when dropped, not left to the garbage collector (PyAV's
    ``frame.side_data`` makes a frame part of a cycle)."""
    import gc

    gc.collect()
    gc.disable()
    try:
        for acc in (False, True):
            coviar.load_clip(good, 0, {0: [1], 1: [2, 3], 2: [4, 5]}, acc)
        assert gc.collect() == 0
    finally:
        gc.enable()


def test_load_clip_refuses_bad_boxes(good):
    with pytest.raises(ValueError, match="not inside the 64x48 frame"):
        coviar.load_clip(good, 0, {2: [1]}, False, crop={2: (40, 0, 10, 10)})
    with pytest.raises(ValueError, match="not inside"):
        coviar.load_clip(good, 0, {1: [1]}, False, crop={1: (0, 0, 0, 10)})
    with pytest.raises(ValueError, match="representation"):
        coviar.load_clip(good, 0, {3: [1]}, False)
    with pytest.raises(ValueError, match="no representation"):
        coviar.load_clip(good, 0, {}, False)
    with pytest.raises(ValueError, match="lookup table"):
        coviar.load_clip(good, 0, {2: [1]}, False, lut={2: np.zeros((3, 4), np.uint8)})
    with pytest.raises(ValueError, match="lookup table"):
        coviar.load_clip(good, 0, {0: [1]}, False, lut={0: np.zeros((3, 5), np.uint8)})


def test_arguments_are_checked(good):
    want = coviar.load_many(str(good), 0, [1, 2], 2, True)
    for flag in (True, 1, np.True_, np.int64(1)):
        np.testing.assert_array_equal(coviar.load_many(good, 0, [1, 2], 2, flag), want)
    np.testing.assert_array_equal(coviar.load_many(bytes(good), 0, [1, 2], 2, True), want)
    assert coviar.get_num_frames(bytes(good)) == 8 and coviar.get_num_gops(bytes(good)) == 1
    for bad in ("no", "yes", None, 1.0, [True]):
        with pytest.raises(TypeError, match="accumulate must be a bool"):
            coviar.load_many(good, 0, [1], 2, bad)
    with pytest.raises(ValueError, match="accumulate must be True/False"):
        coviar.load_many(good, 0, [1], 2, 2)
    with pytest.raises(TypeError, match="path must be"):
        coviar.load_many(8, 0, [1], 2, False)
    with pytest.raises(TypeError, match="integers"):
        coviar.load_many(good, 0, [1.5], 2, False)
    with pytest.raises(TypeError):
        coviar.load_many(good, 0.0, [1], 2, False)
    with pytest.raises(IndexError, match="out of range"):
        coviar.load_many(good, 0, [3, 8], 0, False)  # more frames than the GOP holds


_ABSURD = """
import resource, sys, time, coviar
start = time.perf_counter()
for rep in (0, 1, 2):
    try:
        coviar.load_many(sys.argv[1], 0, [0] * 10**7, rep, False)
        print("no error")
    except ValueError as e:
        print(e)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB -> GiB
print(f"{time.perf_counter() - start:.2f} s, peak {peak:.2f} GiB")
"""


def test_absurd_requests_fail_before_allocating(good):
    """10**7 indices of a valid frame (368 GB of residuals): refused at the first frame, in a
    child process that stays far below one such result (its peak RSS is measured)."""
    run = subprocess.run(
        [sys.executable, "-c", _ABSURD, str(good)], capture_output=True, text=True, timeout=120
    )
    assert run.returncode == 0, run.stderr[-2000:]
    *errors, summary = run.stdout.strip().splitlines()
    assert len(errors) == 3 and all("GiB" in e and str(good) in e for e in errors), errors
    seconds, peak = float(summary.split()[0]), float(summary.split()[-2])
    assert seconds < 30 and peak < 1.0, summary
    assert coviar.MAX_RESULT_BYTES < 10**7 * 64 * 48 * 3  # why each of the calls is refused


def test_reencode_mirrors_a_mixed_tree(tmp_path):
    src, out = tmp_path / "in put", tmp_path / "out"
    seq = src / "cohn-kanade-images" / "S005" / "001"
    seq.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(1, 7):  # odd size: padded to even
        Image.fromarray(rng.integers(0, 255, (45, 61, 3), np.uint8)).save(
            seq / f"S005_001_{i:08d}.png"
        )
    (seq / ".DS_Store").write_bytes(b"\0junk")
    emo = src / "Emotion" / "S005" / "001"
    emo.mkdir(parents=True)
    (emo / "S005_001_00000006_emotion.txt").write_text("   3.0000000e+00\n")
    make_clip(src / "movies" / "a clip.avi", width=64, height=48, frames=9, container="avi")
    run = subprocess.run(
        ["bash", str(ROOT / "reencode.sh"), "-j", "2", str(src), str(out)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert "converted 2" in run.stdout and "failed 0" in run.stdout
    assert "padded" in run.stdout
    seq_out = out / "cohn-kanade-images" / "S005" / "001.mp4"
    assert coviar.get_num_frames(seq_out) == 6 and coviar.get_num_gops(seq_out) == 1
    assert coviar.load(seq_out, 0, 0, 0, False).shape == (46, 62, 3)
    assert coviar.get_num_frames(out / "movies" / "a clip.mp4") == 9
    label = out / "Emotion" / "S005" / "001" / "S005_001_00000006_emotion.txt"
    assert label.read_text() == "   3.0000000e+00\n"
    assert not list(out.rglob("*.png"))
    # A second run skips what is up to date; a broken video fails the run and is named.
    (src / "movies" / "broken.avi").write_text("not a video")
    again = subprocess.run(
        ["bash", str(ROOT / "reencode.sh"), str(src), str(out)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert again.returncode == 1
    assert "skipped 4" in again.stdout and "failed 1" in again.stdout
    assert "broken.mp4" in again.stderr


def test_reencode_usage_errors(tmp_path):
    for args in (
        [],
        [str(tmp_path)],
        ["-j", "x", str(tmp_path), str(tmp_path / "o")],
        [str(tmp_path / "missing"), str(tmp_path / "o")],
    ):
        run = subprocess.run(
            ["bash", str(ROOT / "reencode.sh"), *args], capture_output=True, text=True, timeout=60
        )
        assert run.returncode == 2, args
        assert run.stderr


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_reencode_output_matches_coviar_semantics(tmp_path):
    """A clip made by reencode.sh has one GOP and passes the reference check."""
    src = tmp_path / "in"
    make_clip(src / "x.mp4", width=80, height=64, frames=12, container="mp4", content="rotate")
    subprocess.run(
        ["bash", str(ROOT / "reencode.sh"), str(src), str(tmp_path / "out")],
        check=True,
        capture_output=True,
        timeout=300,
    )
    path = tmp_path / "out" / "x.mp4"
    gops = ref_decode(path)
    assert len(gops) == 1 and len(gops[0]) == 12
    for acc in (False, True):
        want = np.stack(ref_all_from_decoded(gops, 2, acc)[0])
        np.testing.assert_array_equal(coviar.load_many(path, 0, range(12), 2, acc), want)


def test_accumulate_on_a_box_matches_the_whole_frame():
    """Composing only the boxes that `source_box` says are read later gives, in the last box,
    the whole-frame map: random 8x8 and 16x16 records with large vectors, frame by frame."""
    from coviar import _kernels

    rng = np.random.default_rng(0)
    h, w = 64, 80
    frames = []
    for _ in range(5):
        rec = []
        for y in range(0, h, 8):
            for x in range(0, w, 8):
                size = int(rng.choice([8, 16]))
                v = rng.integers(-20, 21, 2) * (rng.random() < 0.7)
                rec.append([size, size, x + 4 - v[0], y + 4 - v[1], x + 4, y + 4])
        frames.append(np.array(rec, np.int32))
    box = (20, 30, 12, 10)
    need = [box]
    for rec in frames[:0:-1]:  # back from the last frame
        need.insert(0, _kernels.source_box(rec, h, w, *need[0]))
    assert need[0] != box  # sources outside the box were needed
    whole = coviar._identity_map(h, w)
    part = coviar._identity_map(h, w)
    for rec, b in zip(frames, need, strict=True):
        _kernels.accumulate(rec, whole)
        _kernels.accumulate(rec, part, *b)
    t, left, bh, bw = box
    np.testing.assert_array_equal(
        part[t : t + bh, left : left + bw], whole[t : t + bh, left : left + bw]
    )
    assert not np.array_equal(part, whole)  # outside the boxes it was not composed
    with pytest.raises(ValueError, match="not inside"):
        _kernels.accumulate(frames[0], part, 60, 0, 10, 10)
