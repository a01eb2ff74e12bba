"""Export of what real VLAs contain (issue 11, item 3), on small user-style policies loaded through the
`python` adapter: grouped-query SDPA, stock `nn.TransformerEncoder`, transformers Llama / SigLIP parts,
flow-matching loops, inputs the model never reads, graphs that bake the export batch, and operators with
no ONNX conversion. Each either exports and matches torch in ONNX Runtime, or fails with one line that
names the cause and the fix, leaving nothing on disk."""

import pytest
import torch
import torch.nn.functional as F
from cli_runner import run_cli
from torch import nn

from vlaedge.compress.export import export_onnx
from vlaedge.errors import VlaedgeError
from vlaedge.models.python import PythonPolicy, PythonPolicySpec
from vlaedge.recipe import ExportConfig

WIDTH, HEADS, KV_HEADS, WORDS = 16, 4, 2, 6


class GqaAttention(nn.Module):
    """q/k/v/o projections with fewer key/value heads than query heads, through SDPA's enable_gqa."""

    def __init__(self):
        super().__init__()
        head = WIDTH // HEADS
        self.q, self.o = nn.Linear(WIDTH, WIDTH), nn.Linear(WIDTH, WIDTH)
        self.k, self.v = nn.Linear(WIDTH, KV_HEADS * head), nn.Linear(WIDTH, KV_HEADS * head)

    def forward(self, x, keep):  # x (B, L, W), keep bool (B, L): False on padding
        b, length, _ = x.shape
        q = self.q(x).view(b, length, HEADS, -1).transpose(1, 2)  # (B, H, L, hs)
        k = self.k(x).view(b, length, KV_HEADS, -1).transpose(1, 2)  # (B, Hkv, L, hs)
        v = self.v(x).view(b, length, KV_HEADS, -1).transpose(1, 2)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=keep[:, None, None, :], enable_gqa=True)
        return self.o(y.transpose(1, 2).reshape(b, length, WIDTH))


class Policy(nn.Module):
    """image uint8 (B, 3, 16, 16), instruction ids (B, 6), mask (B, 6), state (B, 4) -> actions (B, 2, 3)
    in [-1, 1]; `kind` picks the trunk (and the fault) under test."""

    def __init__(self, kind: str):
        super().__init__()
        self.kind = kind
        self.patch = nn.Conv2d(3, WIDTH, 8, stride=8)  # 4 patch tokens
        self.embed = nn.Embedding(32, WIDTH)
        self.state = nn.Linear(4, WIDTH)
        if kind == "gqa":
            self.attn = GqaAttention()
        elif kind == "encoder":
            layer = nn.TransformerEncoderLayer(WIDTH, HEADS, 32, dropout=0.0, batch_first=True)
            self.encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=True)
        elif kind == "transformers":
            from transformers import LlamaConfig, LlamaModel, SiglipVisionConfig, SiglipVisionModel

            self.vision = SiglipVisionModel(SiglipVisionConfig(
                hidden_size=WIDTH, intermediate_size=32, num_hidden_layers=1, num_attention_heads=HEADS,
                image_size=16, patch_size=8))
            self.llm = LlamaModel(LlamaConfig(
                vocab_size=32, hidden_size=WIDTH, intermediate_size=32, num_hidden_layers=2,
                num_attention_heads=HEADS, num_key_value_heads=KV_HEADS, max_position_embeddings=32))
        elif kind == "flow":
            self.velocity = nn.Sequential(nn.Linear(WIDTH + 6 + 1, 32), nn.GELU(), nn.Linear(32, 6))
        elif kind == "bilinear":
            self.fuse = nn.ModuleDict({"mix": nn.Bilinear(WIDTH, WIDTH, WIDTH)})
        self.head = nn.Linear(WIDTH, 6)

    def forward(self, image, ids, mask, state, *noise):
        pixels = image.float() / 255.0
        patches = self.patch(pixels).flatten(2).transpose(1, 2)  # (B, 4, W)
        proprio = self.state(state) if self.kind != "unused_state" else torch.zeros_like(patches[:, 0])
        tokens = torch.cat([patches, self.embed(ids), proprio[:, None]], 1)  # (B, 4 + 6 + 1, W)
        keep = torch.cat([torch.ones_like(mask[:, :4]), mask, torch.ones_like(mask[:, :1])], 1) > 0
        if self.kind == "gqa":
            pooled = self.attn(tokens, keep).mean(1)
        elif self.kind == "encoder":
            pooled = self.encoder(tokens, src_key_padding_mask=~keep).mean(1)
        elif self.kind == "transformers":
            seen = self.vision(pixel_values=pixels * 2 - 1).last_hidden_state  # (B, 4, W)
            embeds = torch.cat([seen, self.llm.embed_tokens(ids), self.state(state)[:, None]], 1)
            pooled = self.llm(inputs_embeds=embeds, attention_mask=keep.long()).last_hidden_state[:, -1]
        elif self.kind == "flow":  # 10 Euler steps of a flow-matching action expert, from the given noise
            context, actions = tokens.mean(1), noise[0].flatten(1)
            for step in range(10):
                t = torch.full_like(actions[:, :1], step / 10)
                actions = actions + 0.1 * self.velocity(torch.cat([context, actions, t], 1))
            return torch.tanh(actions).view(-1, 2, 3)
        elif self.kind == "unused_state":
            pooled = tokens.mean(1)  # `state` is never read (the exporter drops the input)
        elif self.kind == "baked_batch":
            pooled = tokens.mean(1).reshape(2, -1)  # the batch written as the export batch
        elif self.kind == "batch_one":
            pooled = tokens.mean(1).view(1, -1)  # only runs at batch 1
        elif self.kind == "bilinear":
            pooled = self.fuse["mix"](tokens.mean(1), tokens.mean(1))
        return torch.tanh(self.head(pooled)).view(-1, 2, 3)


def build(kind: str) -> Policy:
    torch.manual_seed(0)
    return Policy(kind)


def policy_of(kind: str) -> PythonPolicy:
    inputs = [
        {"name": "image", "shape": ["B", 3, 16, 16], "dtype": "uint8", "low": 0, "high": 255,
         "source": "image"},
        {"name": "ids", "shape": ["B", WORDS], "dtype": "int64", "low": 0, "high": 31,
         "source": "instruction"},
        {"name": "mask", "shape": ["B", WORDS], "dtype": "int64", "low": 1, "high": 1,
         "source": "instruction_mask"},
        {"name": "state", "shape": ["B", 4], "dtype": "float32", "source": "state"},
    ]
    if kind == "flow":
        inputs.append({"name": "noise", "shape": ["B", 2, 3], "dtype": "float32", "source": "noise"})
    spec = {"family": "python", "factory": "test_export_models:build", "factory_kwargs": {"kind": kind},
            "inputs": inputs, "tokenizer": {"vocab": ["pick", "up", "the", "red", "block"]},
            "outputs": ["actions"],
            "actions": {"names": ["dx", "dy", "grip"], "low": [-1, -1, 0], "high": [1, 1, 1],
                        "gripper_dims": [2], "chunk": 2, "normalised": True}}
    return PythonPolicy(PythonPolicySpec.model_validate(spec))


def feeds_with_padding(policy: PythonPolicy, batch: int = 8) -> dict:
    feeds = policy.example_inputs(batch, seed=3)
    feeds["mask"][:, -2:] = 0  # padded instructions, so masks take effect
    feeds["mask"][::2, -3] = 0
    return feeds


def export(policy, tmp_path, config=None, feeds=None):
    feeds = feeds_with_padding(policy) if feeds is None else feeds
    return export_onnx(policy, tmp_path / "model.onnx", config or ExportConfig(), feeds)


def test_sdpa_with_grouped_query_attention_exports_and_matches_torch(tmp_path):
    import onnx

    result = export(policy_of("gqa"), tmp_path)
    assert result.check.max_abs < 1e-5, result.check
    ops = {n.op_type for n in onnx.load(result.path).graph.node}
    assert {"Expand", "Softmax"} <= ops  # key/value heads repeated, then plain attention
    with pytest.raises(AssertionError, match="enable_gqa"):  # the decomposition is gone after the export
        torch.onnx.export(GqaAttention().eval(), (torch.randn(1, 3, WIDTH), torch.ones(1, 3, dtype=bool)),
                          str(tmp_path / "plain.onnx"), dynamo=False, opset_version=17)


def test_stock_transformer_encoder_exports_exactly_with_the_fast_path_off_only_during_export(tmp_path):
    policy = policy_of("encoder")
    assert torch.backends.mha.get_fastpath_enabled()
    result = export(policy, tmp_path)
    assert result.check.max_abs < 1e-5, result.check
    assert torch.backends.mha.get_fastpath_enabled()  # restored


@pytest.mark.slow
def test_transformers_llama_with_gqa_and_siglip_export_with_sdpa_attention(tmp_path):
    policy = policy_of("transformers")
    assert policy.module.llm.config._attn_implementation == "sdpa"  # transformers v5's default
    result = export(policy, tmp_path)
    assert result.check.max_abs < 1e-5, result.check
    assert policy.module.llm.config._attn_implementation == "sdpa"


def test_flow_matching_loop_is_reported_as_unrolled_with_node_counts(tmp_path):
    import onnx

    result = export(policy_of("flow"), tmp_path)
    nodes = onnx.load(result.path).graph.node
    inside = sum(n.name.startswith("/velocity") for n in nodes)
    note = next(n for n in result.notes if "velocity" in n)
    assert note == (f"module velocity runs 10 times per forward (a loop, e.g. flow-matching steps, or a "
                    f"shared module): the exporter unrolled it into 10 copies, {inside} of the graph's "
                    f"{len(nodes)} nodes")
    assert inside >= 10 * 3 and result.nodes == len(nodes)  # each copy: Gemm, GELU, Gemm
    assert note in result.summary() and result.check.max_abs < 1e-5


def test_input_the_model_never_reads_is_kept_and_named(tmp_path):
    import onnx

    result = export(policy_of("unused_state"), tmp_path)
    assert [i.name for i in onnx.load(result.path).graph.input] == ["image", "ids", "mask", "state"]
    assert any(n.startswith("input state is never read by the model") for n in result.notes)
    assert result.check.max_abs < 1e-5


def test_baked_export_batch_is_refused_with_the_fix_and_nothing_on_disk(tmp_path):
    with pytest.raises(VlaedgeError) as info:
        export(policy_of("baked_batch"), tmp_path)
    assert "only runs at the export batch 2: at batch 1" in info.value.message
    assert "Reshape" in info.value.message and "reshapes to the constant shape [2, -1]" in info.value.message
    assert "export.dynamic_batch: false" in info.value.hint
    assert list(tmp_path.iterdir()) == []


def test_batch_one_model_is_refused_at_trace_and_exports_with_a_fixed_batch(tmp_path):
    policy = policy_of("batch_one")
    with pytest.raises(VlaedgeError) as info:
        export(policy, tmp_path)
    assert "fails in torch at batch 2" in info.value.message or "has shape [1, 2, 3]" in info.value.message
    assert "export.dynamic_batch: false" in info.value.hint
    assert list(tmp_path.iterdir()) == []
    import onnx

    result = export(policy, tmp_path, ExportConfig(dynamic_batch=False))  # batch 1, checked frame by frame
    assert result.check.frames == 8 and result.check.max_abs < 1e-5
    assert onnx.load(result.path).graph.input[0].type.tensor_type.shape.dim[0].dim_value == 1


def test_unsupported_operator_names_the_operator_and_its_module_not_the_opset(tmp_path, capfd):
    with pytest.raises(VlaedgeError) as info:
        export(policy_of("bilinear"), tmp_path)
    message = info.value.message
    assert message.startswith("export: operator aten::bilinear (in module fuse.mix (Bilinear)")
    assert "has no ONNX conversion" in message and "opset" not in message + info.value.hint
    assert "Torch IR graph" not in capfd.readouterr().out  # the exporter's graph dump stays off the terminal
    assert list(tmp_path.iterdir()) == []


def test_cli_refuses_a_baked_batch_with_one_line_and_exit_2(tmp_path, capsys, monkeypatch):
    policy_of("baked_batch").save(tmp_path / "ckpt")
    out = tmp_path / "out" / "model.onnx"
    code, text = run_cli(["export", tmp_path / "ckpt", "--out", out, "--trust-code"], capsys, monkeypatch)
    lines = [line for line in text.splitlines() if line.startswith(("error:", "  fix:"))]
    assert code == 2 and len(lines) == 2 and "Traceback" not in text, text
    assert "export.dynamic_batch: false" in lines[1]
    assert not out.exists() and list(out.parent.iterdir()) == []
