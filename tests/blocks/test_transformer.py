import math

import torch

from nnunet_ext.blocks.transformer import MultiHeadSelfAttention, TransformerEncoder, TransformerLayer


def test_attention_matches_explicit_softmax():
    attn = MultiHeadSelfAttention(8, heads=2).eval()
    x = torch.randn(2, 5, 8)
    q, k, v = attn.qkv(x).view(2, 5, 3, 2, 4).permute(2, 0, 3, 1, 4)
    w = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(4), dim=-1)
    expected = attn.proj((w @ v).transpose(1, 2).reshape(2, 5, 8))
    torch.testing.assert_close(attn(x), expected, rtol=1e-5, atol=1e-6)


def test_layer_is_pre_ln_residual():
    layer = TransformerLayer(8, heads=2, ffn_dim=12).eval()
    x = torch.randn(1, 6, 8)
    h = x + layer.attn(layer.norm1(x))
    torch.testing.assert_close(layer(x), h + layer.ffn(layer.norm2(h)))


def test_encoder_shapes_parameters_and_position_embedding():
    d, n, depth, ffn = 16, 10, 3, 24
    enc = TransformerEncoder(d, n, depth=depth, heads=4, ffn_dim=ffn).eval()
    assert enc.pos_embed.shape == (1, n, d)
    x = torch.randn(2, n, d)
    assert enc(x).shape == (2, n, d)
    per_layer = (3 * d * d + 3 * d) + (d * d + d) + (d * ffn + ffn) + (ffn * d + d) + 2 * 2 * d
    assert sum(p.numel() for p in enc.parameters()) == depth * per_layer + n * d + 2 * d
    # the position embedding is learnable and gets gradients
    enc(x).sum().backward()
    assert enc.pos_embed.grad.abs().sum() > 0
