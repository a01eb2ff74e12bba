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
