"""A user-style torch policy for the generic `python` adapter tests (not a vlaedge model)."""

import torch
from torch import nn


class ToyPolicy(nn.Module):
    def __init__(self, width: int = 16, chunk: int = 2):
        super().__init__()
        self.chunk = chunk
        self.conv = nn.Conv2d(3, 4, 8, stride=8)
        self.embed = nn.Embedding(16, width)
        self.head = nn.Linear(4 * 16 + width + 4, chunk * 3)

    def forward(self, rgb, text, proprio):
        img = self.conv(rgb.float() / 255.0).flatten(1)
        words = self.embed(text).mean(1)
        return torch.tanh(self.head(torch.cat([img, words, proprio], dim=1))).view(-1, self.chunk, 3)


def build(width: int = 16, chunk: int = 2) -> ToyPolicy:
    return ToyPolicy(width, chunk)


class CameraPolicy(nn.Module):
    """Several float [0, 1] CHW cameras (32x32), instruction ids and mask, and a state vector ->
    actions [B, T, A] in [-1, 1]: the shape of a multi-camera VLA (ALOHA: 2 cameras, 14-dim)."""

    def __init__(self, cameras: int = 2, state_dim: int = 4, action_dim: int = 3, chunk: int = 2,
                 vocab: int = 64, width: int = 8):
        super().__init__()
        self.chunk, self.action_dim = chunk, action_dim
        self.convs = nn.ModuleList(nn.Conv2d(3, 4, 8, stride=8) for _ in range(cameras))
        self.embed = nn.Embedding(vocab, width)
        self.head = nn.Linear(cameras * 4 * 16 + width + state_dim, chunk * action_dim)

    def forward(self, *inputs):
        *images, ids, mask, state = inputs
        feats = [conv(image).flatten(1) for conv, image in zip(self.convs, images, strict=True)]
        weights = mask.unsqueeze(-1).float()
        words = (self.embed(ids) * weights).sum(1) / weights.sum(1).clamp(min=1)
        out = self.head(torch.cat([*feats, words, state], dim=1))
        return torch.tanh(out).view(-1, self.chunk, self.action_dim)


def build_cameras(**kwargs) -> CameraPolicy:
    return CameraPolicy(**kwargs)
