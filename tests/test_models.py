"""Tests of models.py: shapes, gradient flow, frozen identity branch, weight loading."""

import dataclasses
import json
import re
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import torch
import torchvision
from facenet_pytorch import InceptionResnetV1
from torch import nn

import models
from models import (
    MIC,
    ApexDecoder,
    ExpressionBranch,
    FaceNetMobileNet,
    IdentityDiscriminator,
    ResNet6,
    build_backbone,
    build_identity,
    count_parameters,
    grad_reverse,
    letterbox,
)

B, S, HW = 2, 3, 32  # tiny clips: 2 clips × 3 segments × 32×32


@pytest.fixture(autouse=True)
def _isolate(tmp_path):
    """Seed, point the torch hub cache at an empty folder (no machine-dependent weights) and use
    one thread (these tiny inputs gain nothing from more; spinning threads on a busy CPU cost)."""
    torch.manual_seed(0)
    old_dir, old_threads = torch.hub.get_dir(), torch.get_num_threads()
    torch.hub.set_dir(str(tmp_path / "hub"))
    torch.set_num_threads(1)
    yield
    torch.hub.set_dir(old_dir)
    torch.set_num_threads(old_threads)


def _clips(channels: int = 3) -> torch.Tensor:
    return torch.randn(B, S, channels, HW, HW)


# ---------------------------------------------------------------------------------- backbones


def test_resnet6_has_five_convs_and_resnet18_names():
    net = ResNet6()
    convs = [m for m in net.modules() if isinstance(m, nn.Conv2d) and m.kernel_size != (1, 1)]
    assert len(convs) == 5
    assert set(net.state_dict()) < set(torchvision.models.resnet18().state_dict())
    assert net(torch.randn(2, 3, HW, HW)).shape == (2, 128)


@pytest.mark.parametrize("name,dim", [("resnet6", 128), ("resnet18", 512)])
@pytest.mark.parametrize("in_channels", [3, 2])
def test_backbone_shapes(name, dim, in_channels):
    net, d = build_backbone(name, in_channels, weights=models.RANDOM)
    assert d == dim
    assert net(torch.randn(2, in_channels, HW, HW)).shape == (2, dim)


def test_resnet50_shape():
    net, d = build_backbone("resnet50", weights=models.RANDOM)
    assert d == 2048
    assert net.eval()(torch.randn(1, 3, 32, 32)).shape == (1, 2048)


def test_backbone_loads_hub_cache_and_adapts_first_conv(tmp_path):
    ref = torchvision.models.resnet18()
    ckpt = tmp_path / "hub" / "checkpoints"
    ckpt.mkdir(parents=True)
    torch.save(ref.state_dict(), ckpt / "resnet18-0123abcd.pth")

    net, _ = build_backbone("resnet18")
    assert torch.equal(net.conv1.weight, ref.conv1.weight)
    assert isinstance(net.fc, nn.Identity)
    mv_net, _ = build_backbone("resnet18", in_channels=2)
    expected = ref.conv1.weight.mean(dim=1, keepdim=True).expand(-1, 2, -1, -1)
    assert torch.equal(mv_net.conv1.weight, expected)
    assert torch.equal(mv_net.layer1[0].conv1.weight, ref.layer1[0].conv1.weight)
    random_net, _ = build_backbone("resnet18", weights=models.RANDOM)
    assert not torch.equal(random_net.conv1.weight, ref.conv1.weight)


def test_resnet6_initialises_from_resnet18_file(tmp_path):
    ref = torchvision.models.resnet18()
    torch.save(ref.state_dict(), tmp_path / "r18.pth")
    net, _ = build_backbone("resnet6", weights=str(tmp_path / "r18.pth"))
    assert torch.equal(net.layer2[0].downsample[0].weight, ref.layer2[0].downsample[0].weight)


def test_imagenet_weights_by_name_from_the_hub_cache(tmp_path):
    """`imagenet` loads torchvision's file from torch's hub cache (resnet6: resnet18's keys)."""
    ref = torchvision.models.resnet18()
    cached = Path(torch.hub.get_dir()) / "checkpoints" / "resnet18-f37072fd.pth"
    cached.parent.mkdir(parents=True)
    torch.save(ref.state_dict(), cached)
    net, _ = build_backbone("resnet18", weights=models.IMAGENET)
    assert torch.equal(net.layer4[1].conv2.weight, ref.layer4[1].conv2.weight)
    small, _ = build_backbone("resnet6", weights=models.IMAGENET)
    assert torch.equal(small.layer2[0].conv1.weight, ref.layer2[0].conv1.weight)


def test_imagenet_weights_offline_name_the_file_and_folder(monkeypatch):
    def offline(*args, **kwargs):
        raise urllib.error.URLError("Name or service not known")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    folder = Path(torch.hub.get_dir()) / "checkpoints"
    with pytest.raises(
        FileNotFoundError,
        match=rf"resnet50-0676ba61.pth is not in {folder} and "
        r"could not be downloaded from https://download",
    ):
        build_backbone("resnet50", weights=models.IMAGENET)


def test_backbone_without_weights_warns(caplog):
    with caplog.at_level("WARNING", logger="models"):
        build_backbone("resnet18")
    assert "random init" in caplog.text


def test_backbone_weight_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="torchvision resnet18 ImageNet state dict"):
        build_backbone("resnet18", weights=str(tmp_path / "nope.pth"))
    torch.save(ResNet6().state_dict(), tmp_path / "r6.pth")
    with pytest.raises(KeyError, match="missing keys"):
        build_backbone("resnet18", weights=str(tmp_path / "r6.pth"))
    with pytest.raises(ValueError, match="unknown backbone"):
        build_backbone("vgg16")


# -------------------------------------------------------------------------- expression branch


def test_expression_branch_shapes_and_grads():
    branch = ExpressionBranch("resnet6", num_segments=S, hidden=16, weights=models.RANDOM)
    z_e = branch(_clips())
    assert branch.dim == S * 16 and z_e.shape == (B, S * 16)
    z_e.square().mean().backward()
    for name, p in branch.named_parameters():
        assert p.grad is not None, name
    with pytest.raises(ValueError, match="expected"):
        branch(torch.randn(B, S + 1, 3, HW, HW))


# ---------------------------------------------------------------------------- identity branch


def test_facenet_state_dict_layout():
    keys = FaceNetMobileNet(num_classes=10).state_dict().keys()
    for key in [
        "backbone.model.stage1.0.0.weight",  # conv_bn conv
        "backbone.model.stage1.1.4.running_var",  # conv_dw pointwise BN
        "backbone.model.stage2.0.3.weight",  # conv_dw pointwise conv
        "backbone.model.stage2.5.1.weight",
        "backbone.model.stage3.1.4.num_batches_tracked",
        "Bottleneck.weight",
        "last_bn.running_mean",
        "classifier.weight",
    ]:
        assert key in keys, key
    assert "Bottleneck.bias" not in keys
    net = FaceNetMobileNet()
    assert [len(net.backbone.model.stage1), len(net.backbone.model.stage2)] == [6, 6]
    assert len(net.backbone.model.stage3) == 2
    assert not any(k.startswith("classifier") for k in net.state_dict())
    assert [name for name, _ in net.named_children()] == [
        "backbone",
        "avg",
        "Dropout",
        "Bottleneck",
        "last_bn",
    ]


def test_facenet_round_trip(tmp_path):
    trained = FaceNetMobileNet(num_classes=10)
    for m in trained.modules():  # non-trivial BN statistics
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
    path = tmp_path / "facenet_mobilenet.pth"
    torch.save(trained.state_dict(), path)  # classifier.* included, as in the released file

    branch = build_identity("facenet_mobilenet", str(path))
    images = torch.rand(2, 3, 100, 80)
    z_i = branch(images)
    assert branch.dim == 1024 and z_i.shape == (2, 1024)
    with torch.no_grad():
        expected = trained.eval().features(letterbox(images))
    torch.testing.assert_close(z_i, expected)
    assert trained.logits(torch.rand(2, 3, 32, 32)).shape == (2, 10)


def test_identity_weight_errors(tmp_path):
    state = FaceNetMobileNet().state_dict()
    state["backbone.model.stage9.weight"] = state.pop("backbone.model.stage2.0.3.weight")
    path = tmp_path / "renamed.pth"
    torch.save(state, path)
    with pytest.raises(KeyError, match=r"missing keys \['backbone.model.stage2.0.3.weight'\]"):
        build_identity("facenet_mobilenet", str(path))
    loose = build_identity("facenet_mobilenet", str(path), strict=False)
    assert torch.equal(loose.net.Bottleneck.weight, state["Bottleneck.weight"])

    with pytest.raises(FileNotFoundError, match=r"missing.pth'?: no such file.*casia-webface-pip"):
        build_identity("facenet_mobilenet", str(tmp_path / "missing.pth"))
    with pytest.raises(ValueError, match="unknown identity network"):
        build_identity("arcface", models.RANDOM)


def test_inception_resnet_v1_round_trip(tmp_path):
    ref = InceptionResnetV1(classify=True, num_classes=5)  # logits.* as in the vggface2 file
    path = tmp_path / "20180402-114759-vggface2.pt"
    saved = ref.state_dict()
    torch.save(saved, path)
    branch = build_identity("inception_resnet_v1", str(path))
    loaded = branch.net.state_dict()
    assert loaded.keys() == {k for k in saved if not k.startswith("logits.")}
    assert all(torch.equal(v, saved[k]) for k, v in loaded.items())

    images = torch.rand(1, 3, 160, 160)  # one forward only: InceptionResnetV1 is slow on CPU
    torch.testing.assert_close(branch.preprocess(images), (images * 255 - 127.5) / 128)
    z_i = branch(images)
    assert branch.dim == 512 and z_i.shape == (1, 512)
    torch.testing.assert_close(z_i.norm(dim=1), torch.ones(1))


def test_letterbox():
    images = torch.rand(2, 3, 80, 40)
    out = letterbox(images)
    assert out.shape == (2, 3, 160, 160)
    assert torch.all(out[..., :, :40] == models.GREY) and torch.all(
        out[..., :, 120:] == models.GREY
    )
    assert out.min() >= 0 and out.max() <= 1
    as_uint8 = (images * 255).round().to(torch.uint8)
    torch.testing.assert_close(letterbox(as_uint8), letterbox(as_uint8.float() / 255))
    with pytest.raises(ValueError, match="expected"):
        letterbox(torch.rand(3, 80, 40))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        letterbox(images * 255)


def test_identity_branch_is_frozen_inside_training():
    identity = build_identity("facenet_mobilenet", models.RANDOM)
    model = MIC(
        4, num_segments=S, backbone="resnet6", hidden=16, size=56, backbone_weights=models.RANDOM
    )
    parent = nn.ModuleDict({"mic": model, "identity": identity}).train()
    assert model.training and not any(m.training for m in identity.modules())
    assert count_parameters(identity, trainable_only=True) == 0

    frames = torch.rand(B, 3, 64, 64)
    z_i = parent["identity"](frames)
    out = model(_clips())
    loss = nn.functional.mse_loss(model.reconstruct(z_i, out["z_e"]), torch.rand(B, 3, 56, 56))
    loss.backward()
    assert all(p.grad is None for p in identity.parameters())
    assert model.decoder.fc[0].weight.grad is not None
    assert model.residual.backbone.conv1.weight.grad is not None


# --------------------------------------------------------------- decoder, adversary, full model


@pytest.mark.parametrize("size", [56, 64, 100, 112, 224])
def test_apex_decoder_sizes(size):
    dec = ApexDecoder(d_i=8, d_e=12, size=size, width=32, bottleneck=16)
    out = dec(torch.randn(B, 8), torch.randn(B, 12))
    assert out.shape == (B, 3, size, size)
    assert out.min() > 0 and out.max() < 1


def test_grad_reverse_negates_and_scales():
    x = torch.randn(4, 3, requires_grad=True)
    w = torch.randn(4, 3)
    y = grad_reverse(x, 0.5)
    assert torch.equal(y, x)
    (y * w).sum().backward()
    torch.testing.assert_close(x.grad, -0.5 * w)


def test_identity_discriminator_reverses_gradient():
    disc = IdentityDiscriminator(d_e=12, num_subjects=5, hidden=8, lambd=2.0)
    z_e = torch.randn(B, 12, requires_grad=True)
    logits = disc(z_e)
    assert logits.shape == (B, 5)
    nn.functional.cross_entropy(logits, torch.tensor([0, 3])).backward()
    z_plain = z_e.detach().clone().requires_grad_()
    nn.functional.cross_entropy(disc.mlp(z_plain), torch.tensor([0, 3])).backward()
    torch.testing.assert_close(z_e.grad, -2.0 * z_plain.grad)
    assert disc.mlp[0].weight.grad is not None


def test_label_conditional_discriminator_sees_y():
    disc = IdentityDiscriminator(d_e=12, num_subjects=5, hidden=8, num_classes=3)
    z_e = torch.randn(B, 12)
    a, b = disc(z_e, torch.tensor([0, 1])), disc(z_e, torch.tensor([2, 1]))
    assert not torch.allclose(a[0], b[0]) and torch.allclose(a[1], b[1])  # y moves its logits
    with pytest.raises(ValueError, match="labels"):
        disc(z_e)


def test_mic_shapes_and_grads():
    model = MIC(
        7,
        num_segments=S,
        backbone="resnet6",
        hidden=16,
        size=56,
        num_subjects=4,
        backbone_weights=models.RANDOM,
    )
    out = model(_clips())
    assert model.d_e == S * 16
    assert out["logits"].shape == (B, 7) and out["z_e"].shape == (B, model.d_e)
    assert model.discriminator(out["z_e"]).shape == (B, 4)
    rec = model.reconstruct(torch.randn(B, 1024), out["z_e"])
    assert rec.shape == (B, 3, 56, 56)
    (out["logits"].sum() + rec.mean() + model.discriminator(out["z_e"]).sum()).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, name
    with pytest.raises(ValueError, match="mvs"):
        model(_clips(), _clips(2))


def test_mic_with_motion_vectors():
    model = MIC(
        6,
        num_segments=S,
        backbone="resnet6",
        hidden=16,
        with_mv=True,
        decoder=False,
        d_i=512,
        backbone_weights=models.RANDOM,
    )
    assert model.d_e == model.residual.dim + model.mv.dim == 2 * S * 16
    assert model.mv.backbone.conv1.in_channels == 2
    out = model(_clips(), _clips(2))
    assert out["logits"].shape == (B, 6) and out["z_e"].shape == (B, 2 * S * 16)
    out["logits"].sum().backward()
    assert model.mv.lstm.weight_ih_l0.grad is not None
    with pytest.raises(ValueError, match="mvs"):
        model(_clips())
    with pytest.raises(RuntimeError, match="decoder=False"):
        model.reconstruct(torch.randn(B, 512), out["z_e"])
    assert model.discriminator is None


def test_mic_resnet18_default_dims():
    model = MIC(7, num_segments=S, hidden=32, size=56, backbone_weights=models.RANDOM).eval()
    with torch.no_grad():
        out = model(_clips())
    assert out["z_e"].shape == (B, S * 32)
    assert model.decoder.fc[0].in_features == 1024 + S * 32


def test_mic_config_rebuilds_the_model_and_says_what_is_wrong():
    """`MICConfig` is the model's record: through JSON it rebuilds the same model
    (`MIC.from_config`, the state dict loads strictly); a record with a key missing or unknown,
    or an impossible value, is a ValueError naming it; a checkpoint record of before (the model's
    keys in the record itself) gives the same config, without the adversary."""
    cfg = models.MICConfig(
        num_classes=3,
        num_segments=2,
        backbone="resnet6",
        hidden=8,
        with_mv=True,
        decoder=True,
        d_i=16,
        size=32,
        num_subjects=4,
    )
    record = json.loads(json.dumps({"model": dataclasses.asdict(cfg), "class_names": "abc"}))
    again = models.MICConfig.from_checkpoint(record)
    assert again == cfg
    model = MIC.from_config(cfg, backbone_weights=models.RANDOM)
    MIC.from_config(again, backbone_weights=models.RANDOM).load_state_dict(model.state_dict())
    assert model.mv is not None and model.discriminator is not None
    adversary = ("num_subjects", "adv_weight", "adv_conditional")
    flat = {k: v for k, v in record["model"].items() if k not in (*adversary, "dropout")}
    assert models.MICConfig.from_checkpoint({**flat, "input": "residual"}) == dataclasses.replace(
        cfg, num_subjects=0
    )
    for change, message in (
        ({"hidden": None}, "lacks hidden"),
        ({"depth": 3}, "unknown depth"),
        ({"size": 0}, "impossible size 0"),
        ({"with_mv": 1}, "with_mv 1 is not of type bool"),
        ({"backbone": "vgg"}, "backbone 'vgg'"),
    ):
        bad = {k: v for k, v in {**record["model"], **change}.items() if v is not None}
        with pytest.raises(ValueError, match=f"^model config: .*{re.escape(message)}"):
            models.MICConfig.from_checkpoint({"model": bad})
