"""Segmentation models for any number of input bands and any tile size: a U-Net with a torchvision ResNet
encoder, and SegFormer (Xie et al. 2021: Mix Transformer encoder, all-MLP decoder) in plain torch.

Bottom floor: imports nothing of ours. The U-Net's decoder upsamples stage by stage and concatenates the
encoder feature of the same scale (skips at /16, /8, /4, /2); SegFormer's decoder mixes its four stages
at 1/4 of the input size. Both return logits at the input size, also for sizes that are not a multiple
of 32 (300 x 300, 97 x 131). With ``full_res`` > 0 both add a small conv block on the input at full size,
concatenated before their last layers: at 10 m roads are 1-2 px wide and both encoders halve (ResNet)
or quarter (MiT) the resolution at once, so without it nothing at full size reaches the classifier.
With ``spectral`` > 0 both add a classifier of single pixels (``Spectral``) whose logits add to theirs:
with sparse labels a network otherwise learns a pixel's class from its surroundings and loses to a
per-pixel random forest (README: real imagery and sparse labels).

``build_model`` makes a fresh model; ``model_from_config`` rebuilds one from the settings a checkpoint
carries (``model_config``), so evaluation and prediction never repeat the architecture arguments.

As a command, ``python model.py --arch segformer --encoder mit_b0`` prints a model's parameters, its
FLOPs per tile and the parameters of each of its parts (randomly initialised: nothing is downloaded).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from pathlib import Path
from urllib.error import URLError

import torch
import torch.nn.functional as F
import torchvision
from torch import nn

ARCHS = {"unet": ("resnet18", "resnet34", "resnet50"), "segformer": ("mit_b0", "mit_b1", "mit_b2")}
ENCODERS = ARCHS["unet"]
DECODER_CHANNELS = (256, 128, 64, 32, 16)
# torchvision's ImageNet weights per encoder (the file name torch.hub caches them under)
IMAGENET = {
    "resnet18": torchvision.models.ResNet18_Weights.IMAGENET1K_V1,
    "resnet34": torchvision.models.ResNet34_Weights.IMAGENET1K_V1,
    "resnet50": torchvision.models.ResNet50_Weights.IMAGENET1K_V2,
}
# MiT sizes as published: channels and blocks of the 4 stages, width of the all-MLP decoder
MIT = {
    "mit_b0": ((32, 64, 160, 256), (2, 2, 2, 2), 256),
    "mit_b1": ((64, 128, 320, 512), (2, 2, 2, 2), 256),
    "mit_b2": ((64, 128, 320, 512), (3, 4, 6, 3), 768),
}
MIT_HEADS = (1, 2, 5, 8)
MIT_SR = (8, 4, 2, 1)  # spatial reduction of keys and values per stage
MLP_RATIO = 4
REFINE_CHANNELS = 32  # SegFormer with full_res: decoder features squeezed to this before going full size
# HuggingFace's names inside a MiT block -> the authors'
HF_BLOCK = (
    ("layer_norm_1", "norm1"),
    ("layer_norm_2", "norm2"),
    ("attention.self.query", "attn.q"),
    ("attention.self.key", "attn.k"),
    ("attention.self.value", "attn.v"),
    ("attention.self.sr", "attn.sr"),
    ("attention.self.layer_norm", "attn.norm"),
    ("attention.output.dense", "attn.proj"),
    ("mlp.dense1", "mlp.fc1"),
    ("mlp.dense2", "mlp.fc2"),
)
LAYOUT_HINT = {  # what a refused weights file holds
    "resnet": " (it holds ResNet weights, for a unet)",
    "mit": " (it holds MiT weights, for a segformer)",
}


class ConvBlock(nn.Sequential):
    """Two 3x3 convolutions with batch norm and ReLU."""

    def __init__(self, cin: int, cout: int):
        super().__init__(
            nn.Conv2d(cin, cout, 3, padding=1, bias=False),
            nn.BatchNorm2d(cout),
            nn.ReLU(inplace=True),
            nn.Conv2d(cout, cout, 3, padding=1, bias=False),
            nn.BatchNorm2d(cout),
            nn.ReLU(inplace=True),
        )


def conv_bn_relu(cin: int, cout: int, k: int) -> nn.Sequential:
    """One k x k convolution with batch norm and ReLU."""
    return nn.Sequential(
        nn.Conv2d(cin, cout, k, padding=k // 2, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)
    )


class Spectral(nn.Module):
    """A classifier of single pixels beside the network: an MLP on each pixel's bands (1x1 convolutions,
    what a random forest on pixels sees) whose logits are added to the network's.

    While training, the network's logits of a random ``alone`` share of the tiles are dropped, so that the
    branch learns to classify on its own rather than only to correct the context; at evaluation both add.
    """

    def __init__(self, cin: int, width: int, num_classes: int, alone: float = 0.3):
        super().__init__()
        self.mlp = nn.Sequential(
            conv_bn_relu(cin, width, 1), conv_bn_relu(width, width, 1), nn.Conv2d(width, num_classes, 1)
        )
        self.alone = alone

    def forward(self, x: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        if self.training and self.alone:
            keep = torch.rand(len(x), 1, 1, 1, device=x.device) >= self.alone
            logits = logits * keep.to(logits.dtype)
        return logits + self.mlp(x)


def check_encoder(arch: str, encoder: str) -> None:
    """ValueError in one line for an encoder ``arch`` does not have (naming the arch that has it)."""
    if encoder in ARCHS[arch]:
        return
    other = [a for a, encoders in ARCHS.items() if encoder in encoders]
    hint = f" ({encoder} is a {other[0]} encoder)" if other else ""
    raise ValueError(f"unknown encoder {encoder!r} for {arch}; choose one of {', '.join(ARCHS[arch])}{hint}")


class DecoderBlock(nn.Module):
    """Upsample to the skip feature's size, concatenate it, convolve."""

    def __init__(self, cin: int, cskip: int, cout: int):
        super().__init__()
        self.conv = ConvBlock(cin + cskip, cout)

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None, size: Sequence[int]) -> torch.Tensor:
        x = F.interpolate(x, size=tuple(size), mode="nearest")
        if skip is not None:
            x = torch.cat([x, skip], dim=1)
        return self.conv(x)


class UNet(nn.Module):
    """U-Net: ResNet encoder (stem + 4 stages), 5 decoder blocks with skips, 1x1 classifier.

    ``full_res`` > 0: a ConvBlock of that width on the input is the skip of the last decoder block (the
    one at input size); 0 is the architecture without it (and old checkpoints' state dicts).
    """

    def __init__(
        self,
        encoder: str = "resnet50",
        in_channels: int = 10,
        num_classes: int = 13,
        decoder_channels: Sequence[int] = DECODER_CHANNELS,
        full_res: int = 0,
        spectral: int = 0,
    ):
        super().__init__()
        check_encoder("unet", encoder)
        if len(decoder_channels) != 5:
            raise ValueError("decoder_channels needs 5 values")
        resnet = getattr(torchvision.models, encoder)(weights=None)
        resnet.conv1 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.stem = nn.Sequential(resnet.conv1, resnet.bn1, resnet.relu)  # /2, 64 channels
        self.pool = resnet.maxpool
        self.layers = nn.ModuleList([resnet.layer1, resnet.layer2, resnet.layer3, resnet.layer4])
        expansion = 4 if encoder == "resnet50" else 1
        enc = [64] + [c * expansion for c in (64, 128, 256, 512)]  # channels at /2 /4 /8 /16 /32
        skips = [enc[3], enc[2], enc[1], enc[0], full_res]  # the skip each decoder block concatenates
        cins = [enc[4], *decoder_channels[:-1]]
        self.decoder = nn.ModuleList(
            DecoderBlock(ci, cs, co) for ci, cs, co in zip(cins, skips, decoder_channels, strict=True)
        )
        self.fine = ConvBlock(in_channels, full_res) if full_res else None
        self.head = nn.Conv2d(decoder_channels[-1], num_classes, kernel_size=1)
        self.spectral = Spectral(in_channels, spectral, num_classes) if spectral else None
        self.config = {
            "arch": "unet",
            "encoder": encoder,
            "in_channels": in_channels,
            "num_classes": num_classes,
            "decoder_channels": list(decoder_channels),
            "full_res": full_res,
            "spectral": spectral,
        }

    def encode(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Encoder features at /2, /4, /8, /16, /32."""
        feats = [self.stem(x)]
        y = self.pool(feats[0])
        for layer in self.layers:
            y = layer(y)
            feats.append(y)
        return feats

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = self.encode(x)
        y = feats[4]
        fine = self.fine(x) if self.fine is not None else None
        skips = [feats[3], feats[2], feats[1], feats[0], fine]
        sizes = [f.shape[-2:] for f in (feats[3], feats[2], feats[1], feats[0])] + [x.shape[-2:]]
        for block, skip, size in zip(self.decoder, skips, sizes, strict=True):
            y = block(y, skip, size)
        y = self.head(y)
        return self.spectral(x, y) if self.spectral is not None else y


def to_map(tokens: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """(N, h * w, C) tokens -> (N, C, h, w) feature map."""
    return tokens.transpose(1, 2).reshape(tokens.shape[0], -1, h, w)


def drop_path(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """Stochastic depth: while training, drop the residual branch of whole samples with probability p."""
    if not training or p == 0:
        return x
    keep = x.new_empty(x.shape[0], *([1] * (x.dim() - 1))).bernoulli_(1 - p)
    return x * keep / (1 - p)


class PatchEmbed(nn.Module):
    """Overlapping patch embedding: a strided k x k convolution (k > stride), then LayerNorm on tokens."""

    def __init__(self, cin: int, dim: int, k: int, stride: int):
        super().__init__()
        self.proj = nn.Conv2d(cin, dim, k, stride=stride, padding=k // 2)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, int, int]:
        x = self.proj(x)
        h, w = x.shape[-2:]  # from the convolution: any input size
        return self.norm(x.flatten(2).transpose(1, 2)), h, w


class Attention(nn.Module):
    """Efficient self-attention: keys and values from a map reduced ``sr`` times by a strided conv."""

    def __init__(self, dim: int, heads: int, sr: int):
        super().__init__()
        self.heads, self.sr_ratio = heads, sr
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)
        if sr > 1:
            self.sr = nn.Conv2d(dim, dim, sr, stride=sr)
            self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        b, n, c = x.shape
        q = self.q(x).reshape(b, n, self.heads, c // self.heads).transpose(1, 2)
        if self.sr_ratio > 1:
            r = self.sr_ratio
            y = F.pad(to_map(x, h, w), (0, max(0, r - w), 0, max(0, r - h)))  # maps smaller than r: one cell
            x = self.norm(self.sr(y).flatten(2).transpose(1, 2))
        k, v = self.kv(x).reshape(b, -1, 2, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v)
        return self.proj(y.transpose(1, 2).reshape(b, n, c))


class MixFFN(nn.Module):
    """MLP with a 3x3 depthwise convolution between its layers (the position information, no embedding)."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        # a ModuleDict only for the authors' name of the depthwise conv: mlp.dwconv.dwconv
        self.dwconv = nn.ModuleDict({"dwconv": nn.Conv2d(hidden, hidden, 3, padding=1, groups=hidden)})
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        y = self.dwconv["dwconv"](to_map(self.fc1(x), h, w))
        return self.fc2(F.gelu(y.flatten(2).transpose(1, 2)))


class Block(nn.Module):
    """Transformer block: pre-norm attention and Mix-FFN, each a residual (with stochastic depth)."""

    def __init__(self, dim: int, heads: int, sr: int, drop: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, heads, sr)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = MixFFN(dim, dim * MLP_RATIO)
        self.drop = drop

    def forward(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        x = x + drop_path(self.attn(self.norm1(x), h, w), self.drop, self.training)
        return x + drop_path(self.mlp(self.norm2(x), h, w), self.drop, self.training)


class MiT(nn.Module):
    """Mix Transformer encoder: 4 stages (patch embedding, blocks, LayerNorm) at /4, /8, /16, /32.

    Module names are the authors' (NVlabs/SegFormer: patch_embed1, block1.0.attn.kv, norm1, ...) so that
    their ImageNet checkpoints load as they are. Init as theirs: truncated normal linears, He convs.
    """

    def __init__(self, encoder: str, in_channels: int, drop_path: float = 0.0):
        super().__init__()
        dims, depths, _ = MIT[encoder]
        drops = iter(torch.linspace(0, drop_path, sum(depths)).tolist())  # deeper blocks dropped more
        for i, (dim, depth) in enumerate(zip(dims, depths, strict=True)):
            cin = in_channels if i == 0 else dims[i - 1]
            embed = PatchEmbed(cin, dim, 7, 4) if i == 0 else PatchEmbed(cin, dim, 3, 2)
            self.add_module(f"patch_embed{i + 1}", embed)
            blocks = [Block(dim, MIT_HEADS[i], MIT_SR[i], next(drops)) for _ in range(depth)]
            self.add_module(f"block{i + 1}", nn.ModuleList(blocks))
            self.add_module(f"norm{i + 1}", nn.LayerNorm(dim, eps=1e-6))
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Conv2d):
                fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels // m.groups
                nn.init.normal_(m.weight, 0, math.sqrt(2.0 / fan_out))
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        feats = []
        for i in range(1, 5):
            x, h, w = getattr(self, f"patch_embed{i}")(x)
            for block in getattr(self, f"block{i}"):
                x = block(x, h, w)
            x = to_map(getattr(self, f"norm{i}")(x), h, w)
            feats.append(x)
        return feats


class SegFormer(nn.Module):
    """SegFormer: MiT encoder, all-MLP decoder at 1/4 size, logits upsampled to the input size.

    The decoder projects each stage to one width (1x1 convs: per-pixel linear layers), upsamples them to
    1/4, and fuses them. ``full_res`` = 0: the 1x1 classifier at 1/4 and bilinear logits, as published;
    > 0: fused features squeezed to REFINE_CHANNELS, upsampled, concatenated with a ConvBlock of that
    width on the input, then one 3x3 conv and the classifier, all at full size.
    """

    def __init__(
        self,
        encoder: str = "mit_b0",
        in_channels: int = 10,
        num_classes: int = 13,
        full_res: int = 0,
        drop_path: float = 0.1,
        spectral: int = 0,
    ):
        super().__init__()
        check_encoder("segformer", encoder)
        dims, _, width = MIT[encoder]
        self.encoder = MiT(encoder, in_channels, drop_path)
        self.linear_c = nn.ModuleList(nn.Conv2d(d, width, 1) for d in dims)
        self.linear_fuse = conv_bn_relu(4 * width, width, 1)
        if full_res:
            self.fine = ConvBlock(in_channels, full_res)
            self.squeeze = conv_bn_relu(width, REFINE_CHANNELS, 1)
            self.refine = conv_bn_relu(REFINE_CHANNELS + full_res, REFINE_CHANNELS, 3)
        self.head = nn.Conv2d(REFINE_CHANNELS if full_res else width, num_classes, 1)
        self.spectral = Spectral(in_channels, spectral, num_classes) if spectral else None
        self.config = {
            "arch": "segformer",
            "encoder": encoder,
            "in_channels": in_channels,
            "num_classes": num_classes,
            "full_res": full_res,
            "drop_path": drop_path,
            "spectral": spectral,
        }

    def encode(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Encoder features at /4, /8, /16, /32 (sizes rounded up)."""
        return self.encoder(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = self.encode(x)
        size = feats[0].shape[-2:]
        ys = [
            F.interpolate(lin(f), size=size, mode="bilinear")
            for lin, f in zip(self.linear_c, feats, strict=True)
        ]
        y = self.linear_fuse(torch.cat(ys[::-1], dim=1))  # the authors' order: /32 first
        if not self.config["full_res"]:
            y = F.interpolate(self.head(y), size=x.shape[-2:], mode="bilinear")
        else:
            y = F.interpolate(self.squeeze(y), size=x.shape[-2:], mode="bilinear")
            y = self.head(self.refine(torch.cat([y, self.fine(x)], dim=1)))
        return self.spectral(x, y) if self.spectral is not None else y


def adapt_first_conv(weight: torch.Tensor, in_channels: int, rgb: Sequence[int] | None) -> torch.Tensor:
    """Turn a pretrained (out, 3, k, k) RGB kernel into one for ``in_channels`` bands.

    The red, green and blue kernels go to the bands at indices ``rgb``; every other band gets the
    mean kernel. All are scaled by 3 / in_channels so that activations keep their size.
    """
    mean = weight.mean(dim=1, keepdim=True)
    new = mean.repeat(1, in_channels, 1, 1)
    if rgb is not None:
        for src, band in enumerate(rgb):
            new[:, band] = weight[:, src]
    return new * (3.0 / in_channels)


def imagenet_weights_path(encoder: str) -> Path:
    """Where torch.hub keeps torchvision's ImageNet weights for ``encoder``."""
    url = IMAGENET[encoder].url
    return Path(torch.hub.get_dir()) / "checkpoints" / Path(url).name


def imagenet_state(encoder: str) -> dict[str, torch.Tensor]:
    """torchvision's ImageNet weights: downloaded once (hash checked) into the torch.hub cache, read from
    there after. Offline and not cached: FileNotFoundError in one line, with the file and the place."""
    try:
        return IMAGENET[encoder].get_state_dict(progress=True, check_hash=True, weights_only=True)
    except (URLError, ConnectionError, TimeoutError) as e:
        why = (str(getattr(e, "reason", e)) or type(e).__name__).splitlines()[0]
        raise FileNotFoundError(
            f"encoder weights not found: {imagenet_weights_path(encoder)} and no download ({why}): download "
            f"{IMAGENET[encoder].url} elsewhere and put it there, or pass --weights PATH, or --weights none"
        ) from None


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a weights file: a state dict, or one under a ``state_dict`` / ``model`` key.

    ``weights_only``: a file holding pickled objects is refused (UnpicklingError) without running them.
    """
    state = torch.load(path, map_location="cpu", weights_only=True)
    state = state if isinstance(state, dict) else {}
    state = next((state[k] for k in ("state_dict", "model") if isinstance(state.get(k), dict)), state)
    tensors = {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise ValueError(f"{path} holds no state dict (a dict of tensors)")
    return tensors


def layout(state: dict[str, torch.Tensor]) -> str:
    """Whose names a state dict uses: torchvision's ResNet, MiT's (authors', mmseg's, HuggingFace's), or ?"""
    if "conv1.weight" in state and "layer1.0.conv1.weight" in state:
        return "resnet"
    mit = r"(backbone\.)?patch_embed1\.|(segformer\.)?encoder\.patch_embeddings\.0\."
    if any(re.match(mit, k) for k in state):
        return "mit"
    return "?"


def mit_authors_names(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """MiT weights under the authors' names: theirs (ImageNet head dropped), mmseg's ``backbone.``, or
    HuggingFace's ``segformer.encoder.`` (separate key and value layers joined into ``kv``)."""
    out = {}
    for k, v in state.items():
        m = re.match(r"(?:segformer\.)?encoder\.(patch_embeddings|block|layer_norm)\.(\d)\.(.+)", k)
        if m is None:
            k = k.removeprefix("backbone.")
            if re.match(r"(patch_embed|block|norm)[1-4]\.", k):
                out[k] = v
            continue
        part, i, rest = m.group(1), int(m.group(2)) + 1, m.group(3)
        if part == "patch_embeddings":
            out[f"patch_embed{i}.{rest.replace('layer_norm', 'norm')}"] = v
        elif part == "layer_norm":
            out[f"norm{i}.{rest}"] = v
        else:
            for theirs, ours in HF_BLOCK:
                rest = rest.replace(theirs, ours)
            out[f"block{i}.{rest}"] = v
    for k in [k for k in out if ".attn.k." in k and k.replace(".attn.k.", ".attn.v.") in out]:
        value = out.pop(k.replace(".attn.k.", ".attn.v."))
        out[k.replace(".attn.k.", ".attn.kv.")] = torch.cat([out.pop(k), value])
    return out


def resnet_names(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """torchvision's ResNet names -> the U-Net's (stem.0, stem.1, layers.N); ImageNet's classifier dropped."""
    mapped = {}
    for k, v in state.items():
        if k.startswith(("conv1.", "bn1.")):
            mapped["stem." + k.replace("conv1.", "0.").replace("bn1.", "1.")] = v
        elif k.startswith("layer"):
            mapped[f"layers.{int(k[5]) - 1}.{k[7:]}"] = v
    return mapped


def load_mapped(model: nn.Module, mapped: dict, prefixes: tuple[str, ...], path: Path, what: str) -> None:
    """Load ``mapped`` into the modules under ``prefixes``; ValueError in one line unless it fills every one
    of them with tensors of the same shapes (a file of another size) and holds nothing else."""
    own = {k: v for k, v in model.state_dict().items() if k.startswith(prefixes)}
    shapes = [
        f"{k} {tuple(mapped[k].shape)} for {tuple(v.shape)}"
        for k, v in own.items()
        if k in mapped and mapped[k].shape != v.shape
    ]
    missing = [k for k in own if k not in mapped and not k.endswith("num_batches_tracked")]
    unknown = [k for k in mapped if k not in own]
    problems = [
        f"{len(found)} {kind} (first {found[0]})"
        for kind, found in (("of another shape", shapes), ("missing", missing), ("unknown", unknown))
        if found
    ]
    if problems:
        raise ValueError(f"{path} is not a {what}: {'; '.join(problems)}")
    model.load_state_dict(mapped, strict=False)


def load_encoder_weights(model: UNet | SegFormer, weights: str, rgb: Sequence[int] | None) -> None:
    """Load pretrained encoder weights, the first convolution adapted to the bands (``rgb``: see above).

    ``weights`` is ``imagenet`` (torchvision's, ResNets only: see imagenet_state) or a path: a torchvision
    ResNet state dict for the U-Net; MiT weights for SegFormer (the authors' mit_bN.pth, the backbone of
    an mmseg SegFormer checkpoint, or HuggingFace's). A file of another layout or size: ValueError.
    """
    arch, encoder = model.config.get("arch", "unet"), model.config["encoder"]
    if weights == "imagenet":
        if arch == "segformer":
            raise FileNotFoundError(
                f"torchvision ships no ImageNet weights for {encoder}: download the authors' {encoder}.pth "
                "(NVlabs/SegFormer) and pass --weights PATH, or --weights none"
            )
        path, state = imagenet_weights_path(encoder), imagenet_state(encoder)
    else:
        path = Path(weights)
        if not path.is_file():
            raise FileNotFoundError(f"encoder weights not found: {path}")
        state = read_state_dict(path)
    if arch == "unet":
        what, want = f"torchvision {encoder} state dict", "resnet"
    else:
        what, want = f"{encoder} state dict (MiT: the authors' {encoder}.pth, mmseg or HuggingFace)", "mit"
    found = layout(state)
    if found != want:
        raise ValueError(f"{path} is not a {what}{LAYOUT_HINT.get(found, '')}")
    if arch == "unet":
        mapped, first, prefixes = resnet_names(state), "stem.0.weight", ("stem.", "layers.")
    else:
        mapped = {"encoder." + k: v for k, v in mit_authors_names(state).items()}
        first, prefixes = "encoder.patch_embed1.proj.weight", ("encoder.",)
    if first in mapped and mapped[first].dim() == 4 and mapped[first].shape[1] == 3:  # RGB -> our bands
        mapped[first] = adapt_first_conv(mapped[first], model.config["in_channels"], rgb)
    load_mapped(model, mapped, prefixes, path, what)


def build_model(
    encoder: str = "resnet50",
    in_channels: int = 10,
    num_classes: int = 13,
    weights: str = "none",
    rgb: Sequence[int] | None = None,
    *,
    arch: str = "unet",
    full_res: int = 0,
    spectral: int = 0,
) -> UNet | SegFormer:
    """A new model; ``weights`` is ``none`` (random init), ``imagenet`` or a path (see above)."""
    sizes = {"encoder": encoder, "in_channels": in_channels, "num_classes": num_classes}
    model = model_from_config({"arch": arch, **sizes, "full_res": full_res, "spectral": spectral})
    if weights != "none":
        load_encoder_weights(model, weights, rgb)
    return model


def model_from_config(config: dict) -> UNet | SegFormer:
    """Rebuild the architecture a checkpoint's ``model_config`` describes (weights not loaded).

    Checkpoints older than SegFormer, full_res and spectral carry none of those keys: U-Nets without
    the full-size path or the per-pixel branch.
    """
    arch, full_res = config.get("arch", "unet"), int(config.get("full_res", 0))
    spectral = int(config.get("spectral", 0))
    if arch not in ARCHS:
        raise ValueError(f"unknown arch {arch!r}; choose one of {', '.join(ARCHS)}")
    check_encoder(arch, config["encoder"])
    sizes = config["encoder"], int(config["in_channels"]), int(config["num_classes"])
    if arch == "segformer":
        return SegFormer(*sizes, full_res, float(config.get("drop_path", 0.1)), spectral)
    return UNet(*sizes, tuple(config.get("decoder_channels", DECODER_CHANNELS)), full_res, spectral)


def summary(net: nn.Module, bands: int, size: int) -> str:
    """Parameters, forward FLOPs of one ``size`` x ``size`` tile, and the parameters of each part."""
    from torch.utils.flop_counter import FlopCounterMode

    with torch.no_grad(), FlopCounterMode(display=False) as flops:
        net.eval()(torch.zeros(1, bands, size, size))
    total = sum(p.numel() for p in net.parameters())
    gflop = flops.get_total_flops() / 1e9
    lines = [f"{type(net).__name__}: {total / 1e6:.2f} M parameters, {gflop:.1f} GFLOP per {bands}-band "
             f"{size} x {size} tile (forward; a training step is about 3x)"]  # fmt: skip
    for name, part in net.named_children():
        n = sum(p.numel() for p in part.parameters())
        lines.append(f"  {name:<24} {type(part).__name__:<24} {n / 1e6:>8.3f} M")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    from landcover.common import ArgumentParser, check_range, fail

    parser = ArgumentParser(description="Print a model's size, FLOPs per tile and parts (random weights).")
    parser.add_argument("--arch", choices=tuple(ARCHS), default="unet", help="U-Net or SegFormer")
    parser.add_argument(
        "--encoder", default=None, help="unet: resnet18|34|50 (resnet50); segformer: mit_b0|b1|b2 (mit_b2)"
    )
    parser.add_argument("--bands", type=int, default=10, help="input bands (20 for two stacked seasons)")
    parser.add_argument("--size", type=int, default=300, help="tile size in pixels (square)")
    parser.add_argument("--full-res", type=int, default=32, help="channels of the full-resolution path")
    parser.add_argument("--spectral", type=int, default=32, help="channels of the per-pixel branch (0: none)")
    args = parser.parse_args_none_unshown(argv)
    check_range("--bands", args.bands, 1)
    check_range("--size", args.size, 32)
    check_range("--full-res", args.full_res, 0)
    check_range("--spectral", args.spectral, 0)
    encoder = args.encoder or ARCHS[args.arch][-1]  # train.py's defaults: resnet50, mit_b2
    try:
        check_encoder(args.arch, encoder)
    except ValueError as e:
        fail(f"--encoder: {e}")
    net = build_model(encoder, args.bands, arch=args.arch, full_res=args.full_res, spectral=args.spectral)
    print(summary(net, args.bands, args.size))


if __name__ == "__main__":
    import sys

    from landcover.common import run_main

    sys.exit(run_main(main))
