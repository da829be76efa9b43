"""Image classifiers in plain torch: CIFAR-style ResNets, WideResNets, a small TinyViT-like ViT.

timm and torchvision do not install beside the CPU torch this project pins, so the models are
written here. Every model maps ``(b, C, H, W)`` floats to ``(b, num_classes)`` logits, keeps its
residual blocks in one flat ``nn.ModuleList`` called ``blocks`` (so :class:`opdf.AlignmentLoss`
pairs teacher and student blocks by index and role, e.g. ``blocks.3.conv1``) and registers its
classifier last (so :func:`opdf.overparam.default_targets` leaves it dense).

==============  ===================================================================  ==========
name            architecture                                                         params**
==============  ===================================================================  ==========
resnet8 ..110   CIFAR ResNet (He et al. 2016), widths 16/16/32/64, depth 6n+2        78k .. 1.7M
resnet8x4       the same, widths 32/64/128/256 (the DKD / CRD student)               1.23M
resnet32x4      the same, depth 32 (the DKD / CRD teacher)                           7.43M
wrn-16-1 .. -2  WideResNet (Zagoruyko & Komodakis 2016), depth 6n+4, widen k         0.17M .. 2.2M
wrn-40-1 .. -2
vit-d2/d4/d8    TinyViT-like: conv patch embedding (two stride-2 3x3 convs), blocks  0.11M .. 0.42M
                of attention with TinyViT's relative attention biases, a depthwise
                3x3 local conv, and an MLP; width 64, 4 heads
==============  ===================================================================  ==========

\\** 10 classes, 3 input channels (the ResNet family matches mdistiller's counts for CIFAR-100:
resnet8x4 1.23M, resnet32x4 7.43M, wrn-40-2 2.26M).

Export: :func:`save_vision_model` writes ``model.safetensors`` plus ``architecture.json`` (the
builder and its arguments, the input spec, label names); :func:`load_vision_model` rebuilds the
model from that folder with no other file and no opdf state.
"""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from opdf.errors import OpdfError

__all__ = [
    "ARCHITECTURE_FILE",
    "VISION_MODELS",
    "CifarResNet",
    "TinyViT",
    "WideResNet",
    "build_from_spec",
    "build_vision_model",
    "is_vision_model",
    "load_vision_model",
    "read_architecture",
    "save_vision_architecture",
    "save_vision_model",
    "vision_model_names",
]

ARCHITECTURE_FILE = "architecture.json"
WEIGHTS_FILE = "model.safetensors"
FORMAT = "opdf-vision"
FORMAT_VERSION = 1


# ------------------------------------------------------------------------------------ ResNet


def _init_conv_net(net: nn.Module, *, zero_linear_bias: bool = False) -> None:
    """The CIFAR ResNets' initialisation: Kaiming-normal convolutions (fan-out), BatchNorm at
    identity, and (WideResNet) zero Linear biases; modules in order, so the draws are fixed."""
    for m in net.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif zero_linear_bias and isinstance(m, nn.Linear):
            nn.init.zeros_(m.bias)


class BasicBlock(nn.Module):
    """Two 3x3 convs with BN; a 1x1 conv + BN shortcut when the shape changes (mdistiller's)."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = None
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + (x if self.shortcut is None else self.shortcut(x)))


class CifarResNet(nn.Module):
    """CIFAR ResNet of depth ``6n + 2``: a 3x3 stem, three stages of ``n`` basic blocks (strides
    1, 2, 2), global average pooling and a linear classifier. ``widths = (stem, s1, s2, s3)``."""

    def __init__(self, depth: int = 20, widths=(16, 16, 32, 64), num_classes: int = 10,
                 in_channels: int = 3):  # fmt: skip
        super().__init__()
        if depth < 8 or (depth - 2) % 6:
            raise OpdfError(f"ResNet depth must be 6n+2 (8, 14, 20, 32, 56, ...), got {depth}")
        if len(widths) != 4:
            raise OpdfError(f"widths must be (stem, stage1, stage2, stage3), got {widths}")
        n = (depth - 2) // 6
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        blocks, planes = [], widths[0]
        for stage, stride in zip(widths[1:], (1, 2, 2), strict=True):
            for b in range(n):
                blocks.append(BasicBlock(planes, stage, stride if b == 0 else 1))
                planes = stage
        self.blocks = nn.ModuleList(blocks)
        self.fc = nn.Linear(planes, num_classes)
        _init_conv_net(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        for block in self.blocks:
            x = block(x)
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


# ------------------------------------------------------------------------------------ WideResNet


class WideBlock(nn.Module):
    """Pre-activation basic block of a WideResNet (BN-ReLU-conv twice, 1x1 conv shortcut)."""

    def __init__(self, in_planes: int, planes: int, stride: int, dropout: float = 0.0):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.dropout = dropout
        self.shortcut = None
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Conv2d(in_planes, planes, 1, stride, 0, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pre = F.relu(self.bn1(x))
        out = F.relu(self.bn2(self.conv1(pre)))
        if self.dropout > 0:
            out = F.dropout(out, self.dropout, self.training)
        out = self.conv2(out)
        return out + (x if self.shortcut is None else self.shortcut(pre))


class WideResNet(nn.Module):
    """WRN-``depth``-``widen`` (depth ``6n + 4``): stem 16, stages 16k / 32k / 64k."""

    def __init__(self, depth: int = 16, widen: int = 2, num_classes: int = 10,
                 in_channels: int = 3, dropout: float = 0.0):  # fmt: skip
        super().__init__()
        if depth < 10 or (depth - 4) % 6:
            raise OpdfError(f"WideResNet depth must be 6n+4 (10, 16, 22, 28, 40), got {depth}")
        n = (depth - 4) // 6
        widths = [16 * widen, 32 * widen, 64 * widen]
        self.conv1 = nn.Conv2d(in_channels, 16, 3, 1, 1, bias=False)
        blocks, planes = [], 16
        for stage, stride in zip(widths, (1, 2, 2), strict=True):
            for b in range(n):
                blocks.append(WideBlock(planes, stage, stride if b == 0 else 1, dropout))
                planes = stage
        self.blocks = nn.ModuleList(blocks)
        self.bn = nn.BatchNorm2d(planes)
        self.fc = nn.Linear(planes, num_classes)
        _init_conv_net(self, zero_linear_bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(x)
        for block in self.blocks:
            x = block(x)
        x = F.relu(self.bn(x))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


# ------------------------------------------------------------------------------------ TinyViT-like


class ConvBN(nn.Sequential):
    def __init__(self, cin: int, cout: int, kernel: int = 1, stride: int = 1, groups: int = 1):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, stride, (kernel - 1) // 2, groups=groups,
                              bias=False)  # fmt: skip
        self.bn = nn.BatchNorm2d(cout)


class PatchEmbed(nn.Module):
    """TinyViT's patch embedding: conv3x3/2 - BN - GELU - conv3x3/2 - BN (patch size 4)."""

    def __init__(self, in_channels: int, dim: int):
        super().__init__()
        self.conv1 = ConvBN(in_channels, dim // 2, 3, 2)
        self.conv2 = ConvBN(dim // 2, dim, 3, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(F.gelu(self.conv1(x)))


class Attention(nn.Module):
    """Multi-head self-attention over an ``r x r`` token grid with TinyViT's (LeViT's) learned
    attention biases: one scalar per head and per absolute offset ``(|dy|, |dx|)``, in place of
    positional embeddings."""

    def __init__(self, dim: int, heads: int, resolution: int):
        super().__init__()
        if dim % heads:
            raise OpdfError(f"dim {dim} is not divisible by heads {heads}")
        self.heads, self.head_dim = heads, dim // heads
        self.norm = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        points = list(itertools.product(range(resolution), range(resolution)))
        offsets: dict[tuple[int, int], int] = {}
        idxs = []
        for p1 in points:
            for p2 in points:
                off = (abs(p1[0] - p2[0]), abs(p1[1] - p2[1]))
                idxs.append(offsets.setdefault(off, len(offsets)))
        self.attention_biases = nn.Parameter(torch.zeros(heads, len(offsets)))
        n = len(points)
        self.register_buffer("bias_idxs", torch.tensor(idxs).view(n, n), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        qkv = self.qkv(self.norm(x)).view(b, n, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
        bias = self.attention_biases[:, self.bias_idxs]
        out = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2], attn_mask=bias)
        return self.proj(out.transpose(1, 2).reshape(b, n, c))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(self.norm(x))))


class TinyViTBlock(nn.Module):
    """TinyViT block: ``x + attn(x)``, a depthwise 3x3 conv on the token grid, ``x + mlp(x)``."""

    def __init__(self, dim: int, heads: int, resolution: int, mlp_ratio: float = 4.0):
        super().__init__()
        self.resolution = resolution
        self.attn = Attention(dim, heads, resolution)
        self.local_conv = ConvBN(dim, dim, 3, 1, groups=dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        r = self.resolution
        x = x + self.attn(x)
        x = self.local_conv(x.transpose(1, 2).reshape(b, c, r, r)).flatten(2).transpose(1, 2)
        return x + self.mlp(x)


class TinyViT(nn.Module):
    """A single-stage TinyViT-like classifier sized for 8..32 pixel images: patch embedding
    (stride 4), ``depth`` blocks at width ``dim``, LayerNorm, mean over tokens, linear head."""

    def __init__(self, depth: int = 4, dim: int = 64, heads: int = 4, mlp_ratio: float = 4.0,
                 num_classes: int = 10, in_channels: int = 3, image_size: int = 32):  # fmt: skip
        super().__init__()
        if depth < 1:
            raise OpdfError(f"depth must be >= 1, got {depth}")
        resolution = image_size
        for _ in range(2):
            resolution = (resolution + 1) // 2  # two 3x3 stride-2 convs with padding 1
        self.patch_embed = PatchEmbed(in_channels, dim)
        self.blocks = nn.ModuleList(
            TinyViTBlock(dim, heads, resolution, mlp_ratio) for _ in range(depth)
        )
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x).flatten(2).transpose(1, 2)
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x).mean(1))


# ------------------------------------------------------------------------------------ registry


def _resnet(depth, widths):
    return "resnet", {"depth": depth, "widths": list(widths)}


VISION_MODELS: dict[str, tuple[str, dict]] = {
    **{f"resnet{d}": _resnet(d, (16, 16, 32, 64)) for d in (8, 14, 20, 32, 44, 56, 110)},
    "resnet8x4": _resnet(8, (32, 64, 128, 256)),
    "resnet32x4": _resnet(32, (32, 64, 128, 256)),
    **{f"wrn-{d}-{k}": ("wrn", {"depth": d, "widen": k}) for d in (16, 40) for k in (1, 2)},
    **{f"vit-d{d}": ("tinyvit", {"depth": d, "dim": 64, "heads": 4}) for d in (2, 4, 8)},
}
FAMILIES = {"resnet": CifarResNet, "wrn": WideResNet, "tinyvit": TinyViT}


def vision_model_names() -> list[str]:
    return list(VISION_MODELS)


def is_vision_model(name_or_path) -> bool:
    """A built-in vision model name, or a folder holding an ``architecture.json``."""
    if name_or_path is None:
        return False
    name = str(name_or_path)
    return name in VISION_MODELS or (Path(name).expanduser() / ARCHITECTURE_FILE).is_file()


def build_from_spec(spec: dict) -> nn.Module:
    """The model an architecture spec (``architecture.json``) describes, freshly initialized."""
    family = spec.get("family")
    if family not in FAMILIES:
        raise OpdfError(f"unknown model family {family!r}; valid: {', '.join(FAMILIES)}")
    kwargs = dict(spec.get("kwargs", {}))
    kwargs.update(num_classes=spec["num_classes"], in_channels=spec["in_channels"])
    if family == "tinyvit":
        kwargs["image_size"] = spec["image_size"]
    model = FAMILIES[family](**kwargs)
    model.vision_spec = spec
    return model


def build_vision_model(name: str, num_classes: int, in_channels: int = 3, image_size: int = 32,
                       *, seed: int | None = None) -> nn.Module:  # fmt: skip
    """A freshly initialized built-in model (``seed``: initialize without touching the global
    RNG). The model carries its architecture in ``model.vision_spec`` for export."""
    if name not in VISION_MODELS:
        raise OpdfError(f"unknown vision model {name!r}; valid names: {', '.join(VISION_MODELS)}")
    family, kwargs = VISION_MODELS[name]
    spec = {"format": FORMAT, "version": FORMAT_VERSION, "name": name, "family": family,
            "kwargs": kwargs, "num_classes": int(num_classes), "in_channels": int(in_channels),
            "image_size": int(image_size)}  # fmt: skip
    if seed is None:
        return build_from_spec(spec)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build_from_spec(spec)


def save_vision_architecture(model: nn.Module, folder: str | Path, **extra) -> Path:
    """``folder/architecture.json`` alone: ``model.vision_spec`` plus ``extra`` (e.g. ``input=``,
    ``label_names=``); enough to rebuild the model (:func:`load_vision_model` with
    ``weights=False``), also while it is over-parameterized."""
    spec = getattr(model, "vision_spec", None)
    if spec is None:
        raise OpdfError("this model was not built by opdf.models.vision (no vision_spec)")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / ARCHITECTURE_FILE).write_text(json.dumps({**spec, **extra}, indent=2) + "\n")
    return folder


def save_vision_model(model: nn.Module, folder: str | Path, **extra) -> Path:
    """``folder/model.safetensors`` (weights and BN statistics) + ``folder/architecture.json``
    (``model.vision_spec`` plus ``extra``, e.g. ``input=`` and ``label_names=``)."""
    from safetensors.torch import save_file

    if getattr(model, "vision_spec", None) is None:
        raise OpdfError("this model was not built by opdf.models.vision (no vision_spec)")
    if any("parametrizations" in k for k in model.state_dict()):
        raise OpdfError("the model is over-parameterized; call opdf.merge(model) before saving")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    save_file(state, str(folder / WEIGHTS_FILE), metadata={"format": FORMAT})
    return save_vision_architecture(model, folder, **extra)


def read_architecture(folder: str | Path) -> dict:
    path = Path(folder).expanduser() / ARCHITECTURE_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{folder} has no {ARCHITECTURE_FILE} (not an opdf vision model)")
    try:
        spec = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise OpdfError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(spec, dict) or spec.get("format") != FORMAT:
        raise OpdfError(f"{path}: not an opdf vision architecture file (format {FORMAT!r})")
    if spec.get("version", 0) > FORMAT_VERSION:
        raise OpdfError(f"{path}: format version {spec['version']} is newer than this opdf's")
    missing = [k for k in ("family", "num_classes", "in_channels", "image_size") if k not in spec]
    if missing:
        raise OpdfError(f"{path}: missing {', '.join(missing)}")
    return spec


def load_vision_model(folder: str | Path, *, weights: bool = True) -> nn.Module:
    """Rebuild a model saved by :func:`save_vision_model` (eval mode). ``weights=False`` gives
    the architecture freshly initialized."""
    from safetensors.torch import load_file

    folder = Path(folder).expanduser()
    model = build_from_spec(read_architecture(folder))
    if weights:
        path = folder / WEIGHTS_FILE
        if not path.is_file():
            raise FileNotFoundError(f"{folder} has an {ARCHITECTURE_FILE} but no {WEIGHTS_FILE}")
        state = load_file(str(path))
        missing, unexpected = model.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise OpdfError(
                f"{path} does not match its architecture: missing {missing[:4]}, unexpected "
                f"{unexpected[:4]}"
            )
    return model.eval()


def param_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def flops_estimate(model: nn.Module, in_channels: int, image_size: int) -> int:
    """Multiply-accumulates of one forward on one image (convs and linears; for sizing runs)."""
    total = 0

    def conv_hook(mod, inp, out):
        nonlocal total
        total += out.numel() // out.shape[0] * math.prod(mod.weight.shape[1:])

    def lin_hook(mod, inp, out):
        nonlocal total
        total += out.numel() // out.shape[0] * mod.in_features

    hooks = []
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            hooks.append(m.register_forward_hook(conv_hook))
        elif isinstance(m, nn.Linear):
            hooks.append(m.register_forward_hook(lin_hook))
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(torch.zeros(1, in_channels, image_size, image_size))
    finally:
        model.train(was)
        for h in hooks:
            h.remove()
    return total
