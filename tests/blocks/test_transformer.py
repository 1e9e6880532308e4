"""The pre-LN transformer against torch.nn.MultiheadAttention and the pre-LN formula (ViT)."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from nnunet_ext.blocks.transformer import MultiHeadSelfAttention, TransformerEncoder, TransformerLayer
from tests.weights import randomise


def _torch_attention(attn: MultiHeadSelfAttention, dim: int, num_heads: int) -> nn.MultiheadAttention:
    """torch's own multi-head attention with our weights copied in."""
    ref = nn.MultiheadAttention(dim, num_heads, batch_first=True).eval()
    with torch.no_grad():
        ref.in_proj_weight.copy_(attn.qkv.weight)
        ref.in_proj_bias.copy_(attn.qkv.bias)
        ref.out_proj.weight.copy_(attn.proj.weight)
        ref.out_proj.bias.copy_(attn.proj.bias)
    return ref


def _pre_ln_layer(layer: TransformerLayer, x: torch.Tensor, num_heads: int) -> torch.Tensor:
    """x + MSA(LN_1(x)), then + W_2 GELU(W_1 LN_2(.) + b_1) + b_2 (pre-LN as in ViT), with torch's attention."""
    d = x.shape[-1]
    mha = _torch_attention(layer.attn, d, num_heads)
    h = F.layer_norm(x, (d,), layer.norm1.weight, layer.norm1.bias)
    x = x + mha(h, h, h, need_weights=False)[0]
    h = F.layer_norm(x, (d,), layer.norm2.weight, layer.norm2.bias)
    fc1, fc2 = (m for m in layer.ffn if isinstance(m, nn.Linear))
    return x + F.linear(F.gelu(F.linear(h, fc1.weight, fc1.bias)), fc2.weight, fc2.bias)


@pytest.mark.parametrize("dim, num_heads, n", [(8, 2, 5), (12, 3, 7), (16, 1, 4)])
def test_attention_matches_torch_multihead_attention(dim, num_heads, n):
    attn = MultiHeadSelfAttention(dim, num_heads).eval()
    randomise(attn)
    x = torch.randn(2, n, dim)
    ref = _torch_attention(attn, dim, num_heads)
    with torch.no_grad():
        torch.testing.assert_close(attn(x), ref(x, x, x, need_weights=False)[0], rtol=1e-5, atol=1e-5)


def test_layer_matches_the_pre_ln_formula():
    layer = TransformerLayer(8, num_heads=2, ffn_dim=12).eval()
    randomise(layer)
    x = torch.randn(3, 6, 8)
    with torch.no_grad():
        torch.testing.assert_close(layer(x), _pre_ln_layer(layer, x, 2), rtol=1e-5, atol=1e-5)


def test_encoder_matches_position_embedding_layers_and_final_norm():
    d, n, depth = 8, 5, 2
    enc = TransformerEncoder(d, n, depth=depth, num_heads=2, ffn_dim=16).eval()
    randomise(enc)
    x = torch.randn(2, n, d)
    with torch.no_grad():
        h = x + enc.pos_embed
        for layer in enc.layers:
            h = _pre_ln_layer(layer, h, 2)
        expected = F.layer_norm(h, (d,), enc.norm.weight, enc.norm.bias)
        torch.testing.assert_close(enc(x), expected, rtol=1e-5, atol=1e-5)


def test_encoder_parameter_count_and_learnable_position_embedding():
    d, n, depth, ffn = 16, 10, 3, 24
    enc = TransformerEncoder(d, n, depth=depth, num_heads=4, ffn_dim=ffn).eval()
    # per pre-LN layer (ViT): QKV (3d^2 + 3d), projection (d^2 + d), FFN (d f + f + f d + d), 2 LayerNorms (2 x 2d)
    per_layer = (3 * d * d + 3 * d) + (d * d + d) + (d * ffn + ffn) + (ffn * d + d) + 2 * 2 * d
    assert sum(p.numel() for p in enc.parameters()) == depth * per_layer + n * d + 2 * d
    x = torch.randn(2, n, d)
    assert enc(x).shape == (2, n, d)
    enc(x).sum().backward()
    assert enc.pos_embed.grad.abs().sum() > 0
