"""A user-style policy built from Hugging Face transformers parts, as a `save_pretrained` model
(a SigLIP vision tower and a Llama decoder with grouped-query attention and tied embeddings).

Shipped next to a checkpoint as `policy.py` and named by `"factory": "policy.py:from_config"`."""

import torch
from torch import nn
from transformers import (
    LlamaConfig,
    LlamaModel,
    PretrainedConfig,
    PreTrainedModel,
    SiglipVisionConfig,
    SiglipVisionModel,
)


class TinyVLAConfig(PretrainedConfig):
    model_type = "tiny_vla_test"

    def __init__(self, hidden: int = 32, vocab: int = 40, chunk: int = 2, action_dim: int = 3,
                 tie_word_embeddings: bool = True, **kwargs):
        self.hidden, self.vocab, self.chunk, self.action_dim = hidden, vocab, chunk, action_dim
        super().__init__(tie_word_embeddings=tie_word_embeddings, **kwargs)


class TinyVLA(PreTrainedModel):
    config_class = TinyVLAConfig
    _tied_weights_keys = {"lm_head.weight": "decoder.embed_tokens.weight"}

    def __init__(self, config: TinyVLAConfig):
        super().__init__(config)
        h = config.hidden
        self.vision = SiglipVisionModel(SiglipVisionConfig(
            hidden_size=h, intermediate_size=2 * h, num_hidden_layers=1, num_attention_heads=2,
            image_size=32, patch_size=8, attn_implementation="eager"))
        self.decoder = LlamaModel(LlamaConfig(
            vocab_size=config.vocab, hidden_size=h, intermediate_size=2 * h, num_hidden_layers=1,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
            attn_implementation="eager"))
        self.lm_head = nn.Linear(h, config.vocab, bias=False)
        self.state = nn.Linear(4, h)
        self.action_head = nn.Linear(h, config.chunk * config.action_dim)
        self.post_init()

    def get_input_embeddings(self):
        return self.decoder.embed_tokens

    def get_output_embeddings(self):
        return self.lm_head

    def forward(self, rgb, text, proprio):
        patches = self.vision(pixel_values=rgb).last_hidden_state
        tokens = self.decoder.embed_tokens(text)
        seq = torch.cat([patches, tokens, self.state(proprio).unsqueeze(1)], dim=1)
        hidden = self.decoder(inputs_embeds=seq).last_hidden_state[:, -1]
        out = self.action_head(hidden) + 0.0 * self.lm_head(hidden).mean(-1, keepdim=True)
        return torch.tanh(out).view(-1, self.config.chunk, self.config.action_dim)


def from_config(config: dict) -> TinyVLA:
    return TinyVLA(TinyVLAConfig(**{k: v for k, v in config.items() if k in ("hidden", "vocab", "chunk",
                                                                           "action_dim")}))
