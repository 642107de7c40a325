"""The three spheroid segmentation architectures of docs/models.md, defined from scratch.

The original service's trained weights are not public, so the pool serves these equivalent
architectures with random weights; parameter counts (PARAMS) are the check that an implementation
matches: run check_params.py.

Every model maps a (N, 3, H, W) float tensor to (N, 1, H, W) logits. H and W must be divisible by
32; HRNet additionally needs H, W >= 64, because its lowest branch runs at 1/32 resolution and
InstanceNorm needs more than one spatial element per channel.

`width` scales all channel counts by width/64 (64 is the full models' base width), so tests can build
tiny CPU versions of the same topologies: width=8 gives HRNet branches [6, 12, 24, 48] and UNet
features [8, ..., 128]. The default is full size.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

# Full-size parameter counts. HRNet and CBAM-ResUNet are docs/models.md's figures. For the UNet,
# models.md gives 45,197,505 for the original (which also builds an unused 512→1024 double conv) and
# 31,042,369 "used". The UNet it describes has 31,037,633, and that plus the unused block (14,159,872)
# is exactly the original's 45,197,505; the public original code (github.com/michalprusek/
# cell-segmentation-hub, backend/segmentation/models/unet.py) runs exactly these layers. So the
# "used" figure is off by 4,736, and the UNet is checked against the two consistent figures instead.
PARAMS = {"hrnet": 65_846_401, "cbam_resunet": 52_072_673, "unet_spherohq": 31_037_633}
UNET_ORIGINAL_PARAMS = 45_197_505

FULL_WIDTH = 64
DEFAULT_SIZE = 1024


def _scale(channels: int, width: int) -> int:
    return max(1, channels * width // FULL_WIDTH)


def conv_norm(cin: int, cout: int, k: int = 3, stride: int = 1, bias: bool = False, relu: bool = True) -> nn.Sequential:
    """k×k conv (padding keeps the size at stride 1) + InstanceNorm(affine) [+ ReLU]."""
    layers = [nn.Conv2d(cin, cout, k, stride, k // 2, bias=bias), nn.InstanceNorm2d(cout, affine=True)]
    if relu:
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


def upsample(x: torch.Tensor, size) -> torch.Tensor:
    return F.interpolate(x, size=size, mode="bilinear", align_corners=True)


# --------------------------------------------------------------------------------------------------
# HRNetV2 (W48-like)
# --------------------------------------------------------------------------------------------------


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, cin: int, planes: int):
        super().__init__()
        cout = planes * self.expansion
        self.body = nn.Sequential(
            conv_norm(cin, planes, 1),
            conv_norm(planes, planes, 3),
            conv_norm(planes, cout, 1, relu=False),
        )
        self.shortcut = nn.Identity() if cin == cout else conv_norm(cin, cout, 1, relu=False)

    def forward(self, x):
        return F.relu(self.body(x) + self.shortcut(x))


class BasicBlock(nn.Module):
    """Two 3×3 conv + norm with an identity residual (HRNet branches keep their width)."""

    def __init__(self, channels: int):
        super().__init__()
        self.body = nn.Sequential(conv_norm(channels, channels), conv_norm(channels, channels, relu=False))

    def forward(self, x):
        return F.relu(self.body(x) + x)


class HRModule(nn.Module):
    def __init__(self, channels: list[int], blocks: int = 4):
        super().__init__()
        n = len(channels)
        self.branches = nn.ModuleList(nn.Sequential(*[BasicBlock(c) for _ in range(blocks)]) for c in channels)
        # fuse[i][j] brings input branch j to output branch i's resolution and width.
        self.fuse = nn.ModuleList()
        for i in range(n):
            row = nn.ModuleList()
            for j in range(n):
                if j == i:
                    row.append(nn.Identity())  # unused; keeps row[j] aligned with branch j
                elif j > i:  # lower resolution: 1×1 conv now, bilinear upsample in forward
                    row.append(conv_norm(channels[j], channels[i], 1, relu=False))
                else:  # higher resolution: (i-j) stride-2 convs, ReLU between but not after the last
                    steps = [conv_norm(channels[j], channels[j], 3, 2) for _ in range(i - j - 1)]
                    steps.append(conv_norm(channels[j], channels[i], 3, 2, relu=False))
                    row.append(nn.Sequential(*steps))
            self.fuse.append(row)

    def forward(self, xs: list[torch.Tensor]) -> list[torch.Tensor]:
        xs = [branch(x) for branch, x in zip(self.branches, xs)]
        out = []
        for i, row in enumerate(self.fuse):
            y = xs[i]
            for j, f in enumerate(row):
                if j > i:
                    y = y + upsample(f(xs[j]), xs[i].shape[-2:])
                elif j < i:
                    y = y + f(xs[j])
            out.append(F.relu(y))
        return out


class HRNet(nn.Module):
    def __init__(self, width: int = FULL_WIDTH):
        super().__init__()
        stem = _scale(64, width)
        ch = [_scale(c, width) for c in (48, 96, 192, 384)]
        self.stem = nn.Sequential(conv_norm(3, stem, 3, 2), conv_norm(stem, stem, 3, 2))
        planes = _scale(64, width)
        self.layer1 = nn.Sequential(*[Bottleneck(stem if b == 0 else planes * 4, planes) for b in range(4)])
        # Transition 1 creates two branches from the stage-1 output; later transitions keep the
        # existing branches and add one from the lowest-resolution branch.
        self.transition1 = nn.ModuleList([conv_norm(planes * 4, ch[0]), conv_norm(planes * 4, ch[1], 3, 2)])
        self.stage2 = nn.Sequential(*[HRModule(ch[:2]) for _ in range(1)])
        self.transition2 = conv_norm(ch[1], ch[2], 3, 2)
        self.stage3 = nn.Sequential(*[HRModule(ch[:3]) for _ in range(4)])
        self.transition3 = conv_norm(ch[2], ch[3], 3, 2)
        self.stage4 = nn.Sequential(*[HRModule(ch) for _ in range(3)])
        total = sum(ch)  # 720 at full width
        self.head = nn.Sequential(
            conv_norm(total, total, 1, bias=True),
            nn.Conv2d(total, 1, 1),
        )

    def forward(self, x):
        size = x.shape[-2:]
        x = self.layer1(self.stem(x))
        xs = [t(x) for t in self.transition1]
        xs = self.stage2(xs)  # the stages pass lists of branch tensors from module to module
        xs = self.stage3(xs + [self.transition2(xs[-1])])
        xs = self.stage4(xs + [self.transition3(xs[-1])])
        quarter = xs[0].shape[-2:]
        y = torch.cat([xs[0]] + [upsample(t, quarter) for t in xs[1:]], dim=1)
        # To the input size rather than scale_factor=4: the same for these sizes, and explicit.
        return upsample(self.head(y), size)


# --------------------------------------------------------------------------------------------------
# ResUNet with CBAM attention
# --------------------------------------------------------------------------------------------------


class CBAM(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        hidden = max(channels // 16, 8)
        # Shared bias-free MLP as 1×1 convs, so pooled (N, C, 1, 1) tensors need no reshape.
        self.mlp = nn.Sequential(
            nn.Conv2d(channels, hidden, 1, bias=False), nn.ReLU(inplace=True), nn.Conv2d(hidden, channels, 1, bias=False)
        )
        self.spatial = nn.Conv2d(2, 1, 7, padding=3, bias=False)

    def forward(self, x):
        x = x * torch.sigmoid(self.mlp(x.mean((2, 3), keepdim=True)) + self.mlp(x.amax((2, 3), keepdim=True)))
        pooled = torch.cat([x.mean(1, keepdim=True), x.amax(1, keepdim=True)], dim=1)
        return x * torch.sigmoid(self.spatial(pooled))


class ResCBAMBlock(nn.Module):
    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.body = nn.Sequential(conv_norm(cin, cout), conv_norm(cout, cout, relu=False))
        self.shortcut = nn.Identity() if cin == cout else conv_norm(cin, cout, 1, relu=False)
        self.cbam = CBAM(cout)

    def forward(self, x):
        return self.cbam(F.relu(self.body(x) + self.shortcut(x)))


class AttentionGate(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        inter = max(1, channels // 2)
        self.gate = conv_norm(channels, inter, 1, bias=True, relu=False)
        self.skip = conv_norm(channels, inter, 1, bias=True, relu=False)
        self.psi = conv_norm(inter, 1, 1, bias=True, relu=False)

    def forward(self, gate, skip):
        return skip * torch.sigmoid(self.psi(F.relu(self.gate(gate) + self.skip(skip))))


class CBAMResUNet(nn.Module):
    def __init__(self, width: int = FULL_WIDTH):
        super().__init__()
        f = [_scale(c, width) for c in (64, 128, 256, 512, 1024)]
        self.init = conv_norm(3, f[0])
        self.encoder = nn.ModuleList(ResCBAMBlock(cin, cout) for cin, cout in zip([f[0]] + f[:3], f[:4]))
        self.bottleneck = nn.Sequential(ResCBAMBlock(f[3], f[4]), ResCBAMBlock(f[4], f[4]))
        self.up = nn.ModuleList(nn.ConvTranspose2d(2 * c, c, 2, 2) for c in reversed(f[:4]))
        self.gates = nn.ModuleList(AttentionGate(c) for c in reversed(f[:4]))
        self.decoder = nn.ModuleList(ResCBAMBlock(2 * c, c) for c in reversed(f[:4]))
        # models.md says this 3×3 conv has a bias, but its parameter count and the original code
        # (cbam_resunet.py, same repository as above) have none: with it the total is 52,072,705.
        self.head = nn.Sequential(conv_norm(f[0], f[0] // 2), nn.Conv2d(f[0] // 2, 1, 1))

    def forward(self, x):
        x = self.init(x)
        skips = []
        for block in self.encoder:
            x = block(x)
            skips.append(x)
            x = F.max_pool2d(x, 2)
        x = self.bottleneck(x)
        for up, gate, block, skip in zip(self.up, self.gates, self.decoder, reversed(skips)):
            x = up(x)
            x = block(torch.cat([gate(x, skip), x], dim=1))
        return self.head(x)


# --------------------------------------------------------------------------------------------------
# UNet ("SpheroHQ")
# --------------------------------------------------------------------------------------------------


def double_conv(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(conv_norm(cin, cout), conv_norm(cout, cout))


class UNet(nn.Module):
    """Only the used layers: the original also built an unused 512→1024 block (45,197,505 params)."""

    def __init__(self, width: int = FULL_WIDTH):
        super().__init__()
        f = [_scale(c, width) for c in (64, 128, 256, 512, 1024)]
        self.encoder = nn.ModuleList(double_conv(cin, cout) for cin, cout in zip([3] + f[:3], f[:4]))
        self.bottleneck = double_conv(f[3], f[4])
        self.up = nn.ModuleList(nn.ConvTranspose2d(2 * c, c, 2, 2) for c in reversed(f[:4]))
        self.decoder = nn.ModuleList(double_conv(2 * c, c) for c in reversed(f[:4]))
        self.head = nn.Conv2d(f[0], 1, 1)

    def forward(self, x):
        skips = []
        for block in self.encoder:
            x = block(x)
            skips.append(x)
            x = F.max_pool2d(x, 2)
        x = self.bottleneck(x)
        for up, block, skip in zip(self.up, self.decoder, reversed(skips)):
            x = block(torch.cat([skip, up(x)], dim=1))
        return self.head(x)


# The original service's model names.
MODELS = {"hrnet": HRNet, "cbam_resunet": CBAMResUNet, "unet_spherohq": UNet}


def build(name: str, width: int = FULL_WIDTH, seed: int | None = None) -> nn.Module:
    """The model in eval mode; with a seed, its random weights depend on nothing else (built on CPU)."""
    if seed is not None:
        torch.manual_seed(seed)
    return MODELS[name](width).eval()


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def check_params() -> list[str]:
    """Mismatches between the full-size models and the expected counts; empty when all match.

    Built on the meta device: no memory is allocated and nothing is initialised, so it takes about a
    second.
    """
    with torch.device("meta"):
        got = {name: count_params(MODELS[name]()) for name in PARAMS}
        unused_block = count_params(double_conv(512, 1024))
    checks = [(name, got[name], expected) for name, expected in PARAMS.items()]
    checks.append(("unet_spherohq + unused block", got["unet_spherohq"] + unused_block, UNET_ORIGINAL_PARAMS))
    errors = []
    for what, n, expected in checks:
        print(f"{what:30s} {n:>12,d} params (expected {expected:,d}) {'ok' if n == expected else 'MISMATCH'}")
        if n != expected:
            errors.append(f"{what}: {n:,d} parameters, expected {expected:,d}")
    return errors

