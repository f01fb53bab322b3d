"""model.py: the U-Net's skip connections and output size, ImageNet weights with an adapted first
convolution, rebuilding from a checkpoint's settings, and the prediction rule."""

from __future__ import annotations

import pytest
import torch
import torchvision

from model import (
    ENCODERS,
    UNet,
    adapt_first_conv,
    build_model,
    imagenet_weights_path,
    model_from_config,
    predict_classes,
)


@pytest.fixture(autouse=True)
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def net18() -> UNet:
    torch.manual_seed(0)
    return UNet("resnet18", in_channels=4, num_classes=13).eval()


def encoder_features(net: UNet, x: torch.Tensor) -> list[torch.Tensor]:
    with torch.no_grad():
        return net.encode(x)


@pytest.mark.parametrize(("h", "w"), [(300, 300), (301, 299), (37, 53), (64, 64)])
def test_output_has_the_input_size(net18, h, w):
    with torch.no_grad():
        out = net18(torch.randn(1, 4, h, w))
    assert out.shape == (1, 13, h, w)


def test_resnet50_any_band_count():
    net = build_model("resnet50", in_channels=20, num_classes=13).eval()  # two stacked 10-band scenes
    with torch.no_grad():
        assert net(torch.randn(2, 20, 75, 90)).shape == (2, 13, 75, 90)


def test_each_decoder_block_receives_the_encoder_feature_of_its_scale(net18):
    """Blocks 1-4 get the encoder outputs at /16, /8, /4, /2 as their skip (the fifth, full size, none)."""
    x = torch.randn(1, 4, 96, 96)
    feats = encoder_features(net18, x)  # /2, /4, /8, /16, /32
    seen = []
    hooks = [b.register_forward_pre_hook(lambda m, args: seen.append(args[1])) for b in net18.decoder]
    try:
        with torch.no_grad():
            net18(x)
    finally:
        for h in hooks:
            h.remove()
    expected = [feats[3], feats[2], feats[1], feats[0], None]
    assert len(seen) == 5
    for got, want in zip(seen, expected, strict=True):
        if want is None:
            assert got is None
        else:
            assert got is not None and got.shape == want.shape and torch.equal(got, want)
    assert [f.shape[-1] for f in feats[:4]] == [48, 24, 12, 6]


def outputs_with(net: UNet, x: torch.Tensor, keep_skip: int | None) -> torch.Tensor:
    """The output with the deepest encoder stage zeroed and every skip but ``keep_skip`` zeroed."""
    hooks = [net.layers[3].register_forward_hook(lambda m, args, out: torch.zeros_like(out))]

    def zero_skip(i):
        def hook(m, args):
            y, skip, size = args
            if skip is not None and i != keep_skip:
                skip = torch.zeros_like(skip)
            return y, skip, size

        return hook

    hooks += [b.register_forward_pre_hook(zero_skip(i)) for i, b in enumerate(net.decoder)]
    try:
        with torch.no_grad():
            return net(x)
    finally:
        for h in hooks:
            h.remove()


@pytest.mark.parametrize("scale", [0, 1, 2, 3])
def test_output_depends_on_the_input_through_every_skip(net18, scale):
    """With the bottleneck cut off, the input still reaches the output through the skip at each scale
    (/16, /8, /4, /2) on its own; a decoder without that skip would give the same output for any input."""
    a, b = torch.randn(1, 4, 64, 64), torch.randn(1, 4, 64, 64)
    assert not torch.allclose(outputs_with(net18, a, scale), outputs_with(net18, b, scale), atol=1e-5)


def test_the_skip_check_can_fail(net18):
    """Control: bottleneck and every skip cut off, the output no longer depends on the input."""
    a, b = torch.randn(1, 4, 64, 64), torch.randn(1, 4, 64, 64)
    assert torch.allclose(outputs_with(net18, a, None), outputs_with(net18, b, None))


def test_adapt_first_conv_puts_rgb_kernels_on_the_rgb_bands_and_keeps_the_scale():
    torch.manual_seed(1)
    rgb_weight = torch.randn(64, 3, 7, 7)
    rgb = [2, 1, 0]  # Sentinel-2 order B2, B3, B4, ...: red is band 3 (index 2)
    new = adapt_first_conv(rgb_weight, 10, rgb)
    assert new.shape == (64, 10, 7, 7)
    scale = 3 / 10
    for src, band in enumerate(rgb):  # weight[:, 0] is the red kernel
        assert torch.allclose(new[:, band], rgb_weight[:, src] * scale)
    for band in range(3, 10):
        assert torch.allclose(new[:, band], rgb_weight.mean(1) * scale)
    # a grey scene (every band alike) gives the pretrained conv's activations, same size
    grey = torch.randn(2, 1, 32, 32)
    before = torch.nn.functional.conv2d(grey.expand(-1, 3, -1, -1), rgb_weight, padding=3)
    after = torch.nn.functional.conv2d(grey.expand(-1, 10, -1, -1), new, padding=3)
    assert torch.allclose(after, before, atol=1e-4)


def test_imagenet_style_weights_load_into_the_encoder(tmp_path):
    """A torchvision ResNet state dict (--weights PATH) fills stem and stages; conv1 adapted to 6 bands."""
    torch.manual_seed(2)
    resnet = torchvision.models.resnet18(weights=None)
    path = tmp_path / "resnet18.pth"
    torch.save(resnet.state_dict(), path)
    net = build_model("resnet18", in_channels=6, num_classes=13, weights=str(path), rgb=[5, 4, 3])
    state = net.state_dict()
    assert torch.allclose(state["stem.0.weight"][:, 5], resnet.conv1.weight[:, 0] * 0.5)
    assert torch.allclose(state["stem.0.weight"][:, 0], resnet.conv1.weight.mean(1) * 0.5)
    assert torch.equal(state["stem.1.running_var"], resnet.bn1.running_var)
    assert torch.equal(state["layers.3.1.conv2.weight"], resnet.layer4[1].conv2.weight)
    assert torch.equal(state["layers.1.0.downsample.0.weight"], resnet.layer2[0].downsample[0].weight)


def test_missing_imagenet_weights_say_where_to_put_them(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "cache"))
    with pytest.raises(FileNotFoundError) as e:
        build_model("resnet50", 10, 13, weights="imagenet")
    msg = str(e.value)
    assert str(imagenet_weights_path("resnet50")) in msg and "download" in msg and "--weights none" in msg
    assert str(tmp_path / "cache") in msg


def test_wrong_weights_file_is_refused(tmp_path):
    path = tmp_path / "other.pth"
    torch.save({"conv1.weight": torch.zeros(64, 3, 7, 7), "something.else": torch.zeros(1)}, path)
    with pytest.raises(ValueError, match="not a torchvision resnet18"):
        build_model("resnet18", 4, 13, weights=str(path))


@pytest.mark.parametrize("encoder", ENCODERS)
def test_model_from_config_rebuilds_the_architecture(encoder):
    net = build_model(encoder, in_channels=7, num_classes=13)
    again = model_from_config(dict(net.config))
    again.load_state_dict(net.state_dict())  # strict: same names and shapes
    assert again.config == net.config


def test_unknown_encoder_is_refused():
    with pytest.raises(ValueError, match="unknown encoder"):
        UNet("vgg16")


def test_predict_classes_never_returns_nodata():
    logits = torch.randn(2, 13, 5, 6)
    logits[:, 0] += 100  # nodata would win an argmax over all 13 outputs
    pred = predict_classes(logits)
    assert pred.shape == (2, 5, 6) and pred.min() >= 1 and pred.max() <= 12
    assert torch.equal(pred, logits[:, 1:].argmax(1) + 1)
