"""model.py: the U-Net's skip connections and output size, its full-resolution path, SegFormer (shapes,
sizes, the published attention), pretrained weights of each layout with an adapted first convolution and
the files refused, rebuilding from a checkpoint's settings, training steps, and the prediction rule."""

from __future__ import annotations

import pickle
import re
from urllib.error import URLError

import pytest
import torch
import torchvision

from model import (
    ENCODERS,
    MIT,
    Attention,
    SegFormer,
    UNet,
    adapt_first_conv,
    build_model,
    imagenet_weights_path,
    model_from_config,
)


@pytest.fixture(autouse=True)
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    yield
    torch.set_num_threads(n)


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """torch.hub downloads what is not cached: here nothing is ever fetched (an offline machine)."""

    def offline(*args, **kwargs):
        raise URLError("no network in tests")

    monkeypatch.setattr(torch.hub, "urlopen", offline)


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


# ---------------------------------------------------------------------------------------------
# U-Net: the full-resolution path


@pytest.fixture(scope="module")
def net18_fine() -> UNet:
    torch.manual_seed(0)
    return UNet("resnet18", in_channels=4, num_classes=13, full_res=16).eval()


@pytest.mark.parametrize(("h", "w"), [(150, 150), (97, 131), (37, 53)])
def test_full_res_unet_output_has_the_input_size(net18_fine, h, w):
    with torch.no_grad():
        assert net18_fine(torch.randn(1, 4, h, w)).shape == (1, 13, h, w)


def test_full_res_path_reaches_the_output_on_its_own(net18_fine):
    """Bottleneck and encoder skips cut off: the input still reaches the output through the full-size block
    (the last decoder block's skip); with that cut off too, it no longer does."""
    a, b = torch.randn(1, 4, 64, 64), torch.randn(1, 4, 64, 64)
    assert not torch.allclose(outputs_with(net18_fine, a, 4), outputs_with(net18_fine, b, 4), atol=1e-5)
    assert torch.allclose(outputs_with(net18_fine, a, None), outputs_with(net18_fine, b, None))


def test_old_unet_config_rebuilds_the_same_model(net18):
    """A checkpoint from before SegFormer and full_res (no "arch", no "full_res" key) loads unchanged."""
    old = {
        "encoder": "resnet18",
        "in_channels": 4,
        "num_classes": 13,
        "decoder_channels": [256, 128, 64, 32, 16],
    }
    for config in (old, {k: v for k, v in old.items() if k != "decoder_channels"}):
        again = model_from_config(config)
        again.load_state_dict(net18.state_dict())  # strict: no new module when full_res is 0
        assert again.config == {**old, "arch": "unet", "full_res": 0, "spectral": 0}
        x = torch.randn(1, 4, 40, 40)
        with torch.no_grad():
            assert torch.equal(again.eval()(x), net18(x))


@pytest.mark.parametrize("arch", ["unet", "segformer"])
def test_the_spectral_branch_adds_a_classifier_of_single_pixels(arch):
    """Evaluating: the network's logits plus the branch's, and the branch's logits at a pixel depend on
    that pixel's bands only (one pixel changed: the branch's logits change there and nowhere else)."""
    torch.manual_seed(5)
    encoder = "resnet18" if arch == "unet" else "mit_b0"
    net = build_model(encoder, 4, 13, arch=arch, full_res=8, spectral=16).eval()
    x = torch.randn(2, 4, 40, 44)
    with torch.no_grad():
        own = net.spectral.mlp(x)
        assert own.shape == (2, 13, 40, 44)
        branch = net.spectral
        net.spectral = None  # the same network without the branch
        without = net(x)
        net.spectral = branch
        assert torch.allclose(net(x), without + own, atol=1e-5)
        y = x.clone()
        y[1, :, 20, 30] += 3.0
        changed = (net.spectral.mlp(y) - own).abs().amax(dim=1) > 1e-6
    assert changed.sum() == 1 and changed[1, 20, 30]


def test_while_training_the_branch_classifies_some_tiles_alone():
    """Training: a random ``alone`` share of the tiles gets the branch's logits only, so that it learns to
    classify on its own; 0 never drops the network's logits, 1 always does."""
    torch.manual_seed(6)
    net = UNet("resnet18", 4, 13, full_res=8, spectral=16).train()
    x = torch.randn(8, 4, 32, 32)
    net.spectral.alone = 1.0
    out = net(x)
    assert torch.allclose(out, net.spectral.mlp(x), atol=1e-5)
    net.spectral.alone = 0.5
    torch.manual_seed(7)
    out = net(x)
    alone = [torch.allclose(out[i], net.spectral.mlp(x)[i], atol=1e-5) for i in range(8)]
    torch.manual_seed(7)
    assert 0 < sum(alone) < 8 and torch.equal(net(x), out)  # same seed, same tiles alone


# ---------------------------------------------------------------------------------------------
# SegFormer


@pytest.mark.parametrize(("bands", "full_res"), [(4, 0), (20, 16)])
def test_segformer_output_has_the_input_size(bands, full_res):
    net = SegFormer("mit_b0", bands, 13, full_res=full_res).eval()
    for h, w in [(64, 64), (97, 131), (150, 150), (16, 16)]:  # 16: maps smaller than the reduction ratios
        with torch.no_grad():
            assert net(torch.randn(2, bands, h, w)).shape == (2, 13, h, w)


def test_segformer_stages_are_at_a_quarter_to_a_thirty_second():
    net = SegFormer("mit_b0", 4, 13).eval()
    with torch.no_grad():
        feats = net.encode(torch.randn(1, 4, 97, 131))
    assert [tuple(f.shape[1:]) for f in feats] == [(32, 25, 33), (64, 13, 17), (160, 7, 9), (256, 4, 5)]


@pytest.mark.parametrize(
    ("encoder", "encoder_params", "published"),
    [("mit_b0", 3_319_392, 3.8), ("mit_b1", 13_151_424, 13.7), ("mit_b2", 24_196_288, 27.5)],
)
def test_mit_sizes_are_the_published_ones(encoder, encoder_params, published):
    """Parameters of the paper's ADE20K models (150 classes, 3 bands), in millions: 3.8, 13.7, 27.5."""
    net = SegFormer(encoder, 3, 150)
    assert sum(p.numel() for p in net.encoder.parameters()) == encoder_params
    assert round(sum(p.numel() for p in net.parameters()) / 1e6, 1) == published
    with torch.no_grad():
        assert net.eval()(torch.randn(1, 3, 33, 35)).shape == (1, 150, 33, 35)


def test_attention_is_the_published_formula():
    """softmax(q k^T / sqrt(d)) v per head, keys and values from the map reduced by the strided conv."""
    torch.manual_seed(3)
    attn = Attention(64, heads=2, sr=2).eval()
    x, h, w = torch.randn(2, 6 * 5, 64), 6, 5
    q = attn.q(x).reshape(2, 30, 2, 32).permute(0, 2, 1, 3)
    reduced = attn.norm(attn.sr(x.transpose(1, 2).reshape(2, 64, h, w)).reshape(2, 64, -1).transpose(1, 2))
    k, v = attn.kv(reduced).reshape(2, -1, 2, 2, 32).permute(2, 0, 3, 1, 4)
    y = ((q @ k.transpose(-2, -1)) * 32**-0.5).softmax(-1) @ v
    want = attn.proj(y.transpose(1, 2).reshape(2, 30, 64))
    with torch.no_grad():
        assert torch.allclose(attn(x, h, w), want, atol=1e-5)


@pytest.mark.parametrize(
    ("arch", "encoder", "full_res", "spectral"),
    [
        ("unet", "resnet18", 8, 0),
        ("unet", "resnet18", 0, 8),
        ("segformer", "mit_b0", 0, 0),
        ("segformer", "mit_b0", 16, 8),
    ],
)
def test_model_from_config_gives_the_same_outputs(arch, encoder, full_res, spectral):
    net = build_model(encoder, 5, 13, arch=arch, full_res=full_res, spectral=spectral).eval()
    assert net.config["arch"] == arch and net.config["full_res"] == full_res
    assert net.config["spectral"] == spectral
    again = model_from_config(dict(net.config))
    again.load_state_dict(net.state_dict())
    assert again.config == net.config
    x = torch.randn(2, 5, 45, 38)
    with torch.no_grad():
        assert torch.equal(again.eval()(x), net(x))


@pytest.mark.parametrize(
    "make",
    [lambda: UNet("resnet18", 4, 13, full_res=16), lambda: SegFormer("mit_b0", 4, 13, full_res=16)],
    ids=["unet-full-res", "segformer-b0"],
)
def test_a_few_adam_steps_lower_the_loss(make):
    torch.manual_seed(4)
    net = make().train()
    x = torch.randn(2, 4, 32, 32)
    y = 1 + (x[:, 0] > 0).long() + 2 * (x[:, 1] > 0).long()  # classes of each pixel's own bands
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    losses = []
    for _ in range(6):
        loss = torch.nn.functional.cross_entropy(net(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.9 * losses[0], losses


@pytest.mark.parametrize(
    ("config", "needle"),
    [
        ({"arch": "deeplab", "encoder": "resnet18"}, "unknown arch 'deeplab'; choose one of unet, segformer"),
        ({"arch": "segformer", "encoder": "mit_b5"}, "unknown encoder 'mit_b5' for segformer"),
        ({"arch": "segformer", "encoder": "resnet50"}, "(resnet50 is a unet encoder)"),
        ({"encoder": "mit_b0"}, "(mit_b0 is a segformer encoder)"),  # an old-style config: a U-Net
    ],
)
def test_unknown_arch_or_encoder_is_refused_in_one_line(config, needle):
    with pytest.raises(ValueError) as e:
        model_from_config({**config, "in_channels": 4, "num_classes": 13})
    assert needle in str(e.value) and "\n" not in str(e.value)


# ---------------------------------------------------------------------------------------------
# Pretrained weights


def test_imagenet_weights_are_read_from_the_torch_cache_without_network(tmp_path, monkeypatch):
    """torchvision's weights API reads the file torch.hub cached (a generated one) and fetches nothing."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    calls = []
    monkeypatch.setattr(torch.hub, "urlopen", lambda *a, **k: calls.append(a) or pytest.fail("network"))
    path = imagenet_weights_path("resnet18")
    assert path == tmp_path / "torch" / "hub" / "checkpoints" / "resnet18-f37072fd.pth"
    torch.manual_seed(5)
    resnet = torchvision.models.resnet18(weights=None)
    path.parent.mkdir(parents=True)
    torch.save(resnet.state_dict(), path)
    net = build_model("resnet18", 3, 13, weights="imagenet", rgb=[0, 1, 2])
    assert not calls
    state = net.state_dict()
    assert torch.equal(state["stem.0.weight"], resnet.conv1.weight)  # 3 bands in RGB order: as it was
    assert torch.equal(state["layers.2.1.bn2.running_mean"], resnet.layer3[1].bn2.running_mean)


def test_imagenet_weights_offline_and_not_cached_say_which_file_to_put_where(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    with pytest.raises(FileNotFoundError) as e:
        build_model("resnet18", 4, 13, weights="imagenet")
    msg = str(e.value)
    assert "\n" not in msg and "https://download.pytorch.org/models/resnet18-f37072fd.pth" in msg
    assert str(tmp_path / "torch" / "hub" / "checkpoints" / "resnet18-f37072fd.pth") in msg
    assert "--weights PATH" in msg and "--weights none" in msg
    assert not [p for p in (tmp_path / "torch").rglob("*") if p.is_file()]  # nothing half-written


def test_segformer_has_no_imagenet_weights_from_torchvision():
    with pytest.raises(FileNotFoundError) as e:
        build_model("mit_b0", 4, 13, weights="imagenet", arch="segformer")
    msg = str(e.value)
    assert "\n" not in msg and "torchvision ships no ImageNet weights for mit_b0" in msg
    assert "mit_b0.pth" in msg and "--weights PATH" in msg


def mit_file_state(encoder: str = "mit_b0") -> dict[str, torch.Tensor]:
    """A MiT ImageNet state dict as the authors publish it: encoder names as theirs, a 1000-class head."""
    torch.manual_seed(6)
    state = SegFormer(encoder, 3, 13).encoder.state_dict()
    dims = MIT[encoder][0]
    return {**state, "head.weight": torch.randn(1000, dims[-1]), "head.bias": torch.randn(1000)}


HF_PARTS = {"patch_embed": "patch_embeddings", "block": "block", "norm": "layer_norm"}
HF_NAMES = {  # the authors' names in a block -> HuggingFace's
    "norm1.": "layer_norm_1.",
    "norm2.": "layer_norm_2.",
    "attn.q.": "attention.self.query.",
    "attn.sr.": "attention.self.sr.",
    "attn.norm.": "attention.self.layer_norm.",
    "attn.proj.": "attention.output.dense.",
    "mlp.fc1.": "mlp.dense1.",
    "mlp.dwconv.": "mlp.dwconv.",
    "mlp.fc2.": "mlp.dense2.",
}


def to_huggingface(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The same weights under HuggingFace's SegformerForImageClassification names (kv split in two)."""
    out = {}
    for k, v in state.items():
        if k.startswith("head."):
            out["classifier." + k[5:]] = v
            continue
        kind, i, rest = re.match(r"(patch_embed|block|norm)(\d)\.(.*)", k).groups()
        base = f"segformer.encoder.{HF_PARTS[kind]}.{int(i) - 1}"
        if kind == "patch_embed":
            out[f"{base}.{rest.replace('norm', 'layer_norm')}"] = v
        elif kind == "norm":
            out[f"{base}.{rest}"] = v
        elif ".attn.kv." in f".{rest}":
            j, leaf = rest.split(".attn.kv.")
            key, value = v.chunk(2)
            out[f"{base}.{j}.attention.self.key.{leaf}"] = key
            out[f"{base}.{j}.attention.self.value.{leaf}"] = value
        else:
            j, name = rest.split(".", 1)
            prefix = next(p for p in HF_NAMES if name.startswith(p))
            out[f"{base}.{j}.{HF_NAMES[prefix]}{name[len(prefix) :]}"] = v
    return out


@pytest.mark.parametrize("layout", ["authors", "mmseg", "huggingface"])
def test_mit_weights_load_into_segformer_with_the_first_conv_adapted(tmp_path, layout):
    """mit_b0.pth as published (a plain state dict), an mmseg SegFormer checkpoint (backbone. and
    decode_head. under state_dict) or HuggingFace's names: the encoder gets them all, RGB kernels on the
    rgb bands and their mean elsewhere (scaled by 3 / bands)."""
    src = mit_file_state()
    saved = {
        "authors": src,
        "mmseg": {
            "state_dict": {
                **{"backbone." + k: v for k, v in src.items() if not k.startswith("head.")},
                "decode_head.linear_pred.weight": torch.zeros(150, 256, 1, 1),
            },
            "meta": {},
        },
        "huggingface": to_huggingface(src),
    }[layout]
    path = tmp_path / "mit_b0.pth"
    torch.save(saved, path)
    net = build_model("mit_b0", 6, 13, weights=str(path), rgb=[5, 4, 3], arch="segformer")
    state = net.state_dict()
    first = src["patch_embed1.proj.weight"]  # (32, 3, 7, 7)
    assert state["encoder.patch_embed1.proj.weight"].shape == (32, 6, 7, 7)
    assert torch.allclose(state["encoder.patch_embed1.proj.weight"][:, 5], first[:, 0] * 0.5)
    assert torch.allclose(state["encoder.patch_embed1.proj.weight"][:, 3], first[:, 2] * 0.5)
    assert torch.allclose(state["encoder.patch_embed1.proj.weight"][:, 1], first.mean(1) * 0.5)
    for k, v in src.items():
        if k not in ("patch_embed1.proj.weight", "head.weight", "head.bias"):
            assert torch.equal(state["encoder." + k], v), k


def resnet18_file(tmp_path) -> str:
    path = tmp_path / "resnet18.pth"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), path)
    return str(path)


def mit_file(tmp_path, state: dict | None = None) -> str:
    path = tmp_path / "mit.pth"
    torch.save(mit_file_state() if state is None else state, path)
    return str(path)


def without_block(state: dict) -> dict:
    return {k: v for k, v in state.items() if not k.startswith("block2.1.")}


@pytest.mark.parametrize(
    ("arch", "encoder", "make", "needle"),
    [
        (
            "segformer",
            "mit_b0",
            resnet18_file,
            r"is not a mit_b0 state dict \(MiT: .*\) \(it holds ResNet weights, for a unet\)$",
        ),
        ("unet", "resnet18", mit_file, "is not a torchvision resnet18 state dict \\(it holds MiT weights"),
        (
            "segformer",
            "mit_b1",
            mit_file,
            "is not a mit_b1 state dict .*: 176 of another shape \\(first "
            "encoder.patch_embed1.proj.weight \\(32, 4, 7, 7\\) for \\(64, 4, 7, 7\\)",
        ),
        (
            "segformer",
            "mit_b0",
            lambda p: mit_file(p, without_block(mit_file_state())),
            "is not a mit_b0 state dict .*: 20 missing \\(first encoder.block2.1.norm1.weight\\)",
        ),
        ("segformer", "mit_b0", lambda p: mit_file(p, {"fc.weight": torch.zeros(2, 2)}), "is not a mit_b0"),
        ("unet", "resnet18", lambda p: mit_file(p, {"fc.weight": torch.zeros(2, 2)}), "is not a torchvision"),
        ("unet", "resnet18", lambda p: mit_file(p, {"model": [1, 2]}), "holds no state dict"),
    ],
    ids=[
        "resnet-to-segformer",
        "mit-to-unet",
        "b0-to-b1",
        "block-missing",
        "unrelated-segformer",
        "unrelated-unet",
        "no-tensors",
    ],
)
def test_weights_of_another_layout_or_size_are_refused_in_one_line(tmp_path, arch, encoder, make, needle):
    path = make(tmp_path)
    with pytest.raises(ValueError) as e:
        build_model(encoder, 4, 13, weights=path, arch=arch)
    assert re.search(needle, str(e.value)) and "\n" not in str(e.value), str(e.value)
    assert str(e.value).startswith(path)


class RunsCode:
    """Unpickling this runs code (touches a file): a weights file holding it must be refused unrun."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.mark.parametrize(("arch", "encoder"), [("unet", "resnet18"), ("segformer", "mit_b0")])
def test_weights_holding_pickled_objects_are_refused_unrun(tmp_path, arch, encoder):
    marker = tmp_path / "ran"
    path = tmp_path / "evil.pth"
    torch.save({"patch_embed1.proj.weight": torch.zeros(32, 3, 7, 7), "note": RunsCode(marker)}, path)
    with pytest.raises(pickle.UnpicklingError):
        build_model(encoder, 4, 13, weights=str(path), arch=arch)
    assert not marker.exists()


def test_missing_weights_file_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"encoder weights not found: .*nothing\.pth"):
        build_model("mit_b0", 4, 13, weights=str(tmp_path / "nothing.pth"), arch="segformer")


def test_the_command_prints_parameters_flops_and_parts(capsys):
    import model

    model.main(["--arch", "segformer", "--encoder", "mit_b0", "--bands", "20", "--size", "64"])
    out = capsys.readouterr().out
    net = build_model("mit_b0", 20, arch="segformer", full_res=32, spectral=32)  # train.py's defaults
    n = sum(p.numel() for p in net.parameters())
    assert f"{n / 1e6:.2f} M parameters" in out and "GFLOP per 20-band 64 x 64 tile" in out
    assert "encoder" in out and "MiT" in out and "Spectral" in out


def test_the_command_refuses_an_encoder_of_the_other_architecture(capsys):
    import model
    from landcover.common import run_main

    assert run_main(model.main, ["--arch", "unet", "--encoder", "mit_b0"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "mit_b0 is a segformer encoder" in err
