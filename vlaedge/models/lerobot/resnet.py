"""The ResNet-18 trunk LeRobot's vision policies use, written without torchvision.

LeRobot builds its image encoders from `torchvision.models.resnet18` (He et al. 2016, "Deep Residual
Learning for Image Recognition") and keeps the layers up to `layer4` (no average pool, no classifier):

- ACT wraps them by name (`IntermediateLayerGetter`), so its tensors are `backbone.conv1.weight`,
  `backbone.layer2.0.downsample.1.running_mean`, ... and its norm layers are `FrozenBatchNorm2d`;
- Diffusion Policy wraps them as `nn.Sequential(*list(resnet.children())[:-2])` (tensor names `0.weight`,
  `4.0.conv1.weight`, ...) and replaces BatchNorm with GroupNorm.

`resnet18_layers(norm_layer)` returns those eight layers, in torchvision's order and with its child names,
so both wrappings can be built from one definition:

    >>> layers = resnet18_layers(FrozenBatchNorm2d)
    >>> act_backbone = nn.Sequential(layers)                  # keys conv1.weight, layer1.0.bn1.weight, ...
    >>> dp_backbone = nn.Sequential(*resnet18_layers(norm).values())  # keys 0.weight, 4.0.bn1.weight, ...

Only what ResNet-18 needs is here: BasicBlock, no dilation (torchvision refuses dilation in BasicBlock
too), groups 1, width 64. Weights come from the checkpoint; the initialisation below only matters for a
module built outside `vlaedge.models.weights.empty_parameters()`.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable

import torch
from torch import Tensor, nn

NormLayer = Callable[[int], nn.Module]  # num_channels -> a norm module for (B, C, H, W) tensors

BLOCKS_PER_STAGE = (2, 2, 2, 2)  # ResNet-18: two BasicBlocks in each of layer1..layer4
STAGE_WIDTHS = (64, 128, 256, 512)
FEATURE_CHANNELS = 512  # channels of layer4's output (torchvision's `fc.in_features`)


class FrozenBatchNorm2d(nn.Module):
    """BatchNorm2d with fixed statistics and affine parameters, as `torchvision.ops.FrozenBatchNorm2d`.

    All four tensors are buffers (state-dict entries, not parameters): `weight` and `bias` (C,) float32,
    `running_mean` and `running_var` (C,) float32. `y = (x - running_mean) / sqrt(running_var + eps) *
    weight + bias`, computed as torchvision does (one scale and one shift) so that results match it to
    the last bit.

    Args:
        num_features: channels C.
        eps: added to `running_var`; 1e-5 as torchvision's.
    """

    def __init__(self, num_features: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.register_buffer("weight", torch.ones(num_features))
        self.register_buffer("bias", torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs):
        # a BatchNorm2d checkpoint has a counter this module does not use (torchvision drops it too)
        state_dict.pop(prefix + "num_batches_tracked", None)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys,
                                      unexpected_keys, error_msgs)

    def forward(self, x: Tensor) -> Tensor:
        """(B, C, H, W) -> (B, C, H, W), same dtype."""
        scale = self.weight.reshape(1, -1, 1, 1) * (self.running_var.reshape(1, -1, 1, 1) + self.eps).rsqrt()
        shift = self.bias.reshape(1, -1, 1, 1) - self.running_mean.reshape(1, -1, 1, 1) * scale
        return x * scale + shift

    def extra_repr(self) -> str:
        return f"{self.weight.shape[0]}, eps={self.eps}"


def _conv3x3(in_channels: int, out_channels: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with a residual connection (torchvision's `BasicBlock`, same child names).

    Args:
        in_channels: channels of the input.
        channels: channels of both convolutions and of the output.
        stride: of the first convolution (2 halves H and W).
        norm_layer: `num_channels -> module`, after each convolution.

    The shortcut is `downsample` (a 1x1 convolution with `stride`, then `norm_layer`) when the shape
    changes, else the identity.
    """

    def __init__(self, in_channels: int, channels: int, stride: int, norm_layer: NormLayer):
        super().__init__()
        self.conv1 = _conv3x3(in_channels, channels, stride)
        self.bn1 = norm_layer(channels)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = _conv3x3(channels, channels)
        self.bn2 = norm_layer(channels)
        self.downsample = None
        if stride != 1 or in_channels != channels:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_channels, channels, 1, stride=stride, bias=False), norm_layer(channels))

    def forward(self, x: Tensor) -> Tensor:
        """(B, in_channels, H, W) -> (B, channels, H / stride, W / stride)."""
        shortcut = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + shortcut)


def resnet18_layers(norm_layer: NormLayer) -> OrderedDict[str, nn.Module]:
    """ResNet-18 up to `layer4`: `conv1, bn1, relu, maxpool, layer1, layer2, layer3, layer4`.

    Run in order, the layers map (B, 3, H, W) float images to (B, 512, H', W') features with
    H' = ceil(H / 32) (96 -> 3, 224 -> 7); see `feature_size`.

    Args:
        norm_layer: `num_channels -> module`, e.g. `FrozenBatchNorm2d` (ACT), `nn.BatchNorm2d`, or
            `lambda c: nn.GroupNorm(c // 16, c)` (Diffusion Policy with `use_group_norm`).

    Returns:
        The eight layers by torchvision's names; wrap them with `nn.Sequential(layers)` for named keys or
        `nn.Sequential(*layers.values())` for numeric ones.
    """
    layers: OrderedDict[str, nn.Module] = OrderedDict()
    layers["conv1"] = nn.Conv2d(3, STAGE_WIDTHS[0], 7, stride=2, padding=3, bias=False)
    layers["bn1"] = norm_layer(STAGE_WIDTHS[0])
    layers["relu"] = nn.ReLU(inplace=True)
    layers["maxpool"] = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
    in_channels = STAGE_WIDTHS[0]
    for i, (width, n_blocks) in enumerate(zip(STAGE_WIDTHS, BLOCKS_PER_STAGE, strict=True)):
        stride = 1 if i == 0 else 2
        blocks = [BasicBlock(in_channels, width, stride, norm_layer)]
        blocks += [BasicBlock(width, width, 1, norm_layer) for _ in range(n_blocks - 1)]
        layers[f"layer{i + 1}"] = nn.Sequential(*blocks)
        in_channels = width
    _init_like_torchvision(layers.values())
    return layers


def _init_like_torchvision(modules) -> None:
    """Kaiming-normal convolutions, unit/zero affine norms (torchvision's init; no-ops on meta tensors)."""
    for layer in modules:
        for m in layer.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d | nn.GroupNorm) and m.affine:
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)


def feature_size(height: int, width: int) -> tuple[int, int]:
    """(H', W') of layer4's output for an (H, W) input: ceil(H / 32), ceil(W / 32): the stem
    convolution, the max pool and each of layer2..4 halve, rounding up.

    Example:
        >>> feature_size(96, 96)
        (3, 3)
    """
    def conv_out(n: int, kernel: int, stride: int, pad: int) -> int:
        return (n + 2 * pad - kernel) // stride + 1

    sizes = []
    for n in (height, width):
        n = conv_out(n, 7, 2, 3)  # conv1
        n = conv_out(n, 3, 2, 1)  # maxpool
        for _ in range(3):  # the first 3x3 convolution of layer2, layer3, layer4
            n = conv_out(n, 3, 2, 1)
        sizes.append(n)
    return sizes[0], sizes[1]
