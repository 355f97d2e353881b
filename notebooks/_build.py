"""Regenerate the notebooks from their cell sources (outputs are never committed).

    python notebooks/_build.py
"""

from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

HERE = Path(__file__).parent


def md(text: str):
    return new_markdown_cell(text.strip())


def code(text: str):
    return new_code_cell(text.strip())


self_attention = [
    md("""
# 1. Self-attention step by step: "Thinking Machines"

We follow one self-attention computation by hand for the two-word input *Thinking Machines*
(the example of Jay Alammar's *Illustrated Transformer*), using the weights of a real
`tx_suite.core.MultiHeadAttention`, and check every step against the module itself.

Vaswani et al. 2017, §3.2.1 (Eq. 1): $\\mathrm{Attention}(Q, K, V) = \\mathrm{softmax}(QK^T/\\sqrt{d_k})\\,V$;
§3.2.2: several heads, concatenated and projected by $W^O$.
"""),
    code("""
import math
import torch
from tx_suite.core import MultiHeadAttention, scaled_dot_product_attention
from tx_suite.frontends import TokenEmbedding

torch.manual_seed(0)
torch.set_printoptions(precision=3, sci_mode=False)
d_model, n_heads = 8, 2
d_k = d_model // n_heads
vocab = {"Thinking": 0, "Machines": 1}
"""),
    md("""
## Embeddings
Each word becomes a vector of width `d_model` (scaled by $\\sqrt{d_{model}}$ and with sinusoidal
positions added, §3.4-3.5). Here `x` is a batch of one sentence: shape `(B, T, D) = (1, 2, 8)`.
"""),
    code("""
embed = TokenEmbedding(len(vocab), d_model, pos_encoding="sinusoidal")
tokens = torch.tensor([[vocab["Thinking"], vocab["Machines"]]])
x = embed(tokens)
x
"""),
    md("""
## Queries, keys, values
The fused projection `qkv_proj` holds $W^Q, W^K, W^V$ stacked row-wise; each is `(D, D)`, and
head $h$ uses rows $h \\cdot d_k \\ldots (h+1) d_k - 1$ of each.
"""),
    code("""
mha = MultiHeadAttention(d_model, n_heads).eval()
W_q, W_k, W_v = mha.qkv_proj.weight.split(d_model)
b_q, b_k, b_v = mha.qkv_proj.bias.split(d_model)
q = x[0] @ W_q.T + b_q          # (T, D)
k = x[0] @ W_k.T + b_k
v = x[0] @ W_v.T + b_v
q_heads = q.view(2, n_heads, d_k).transpose(0, 1)   # (T, D) -> (H, T, d_k)
k_heads = k.view(2, n_heads, d_k).transpose(0, 1)
v_heads = v.view(2, n_heads, d_k).transpose(0, 1)
print("q for 'Thinking', head 0:", q_heads[0, 0])
"""),
    md("""
## Scores, scaling, softmax
The score of word *i* against word *j* is $q_i \\cdot k_j$; dividing by $\\sqrt{d_k}$ keeps the
dot products from growing with $d_k$ and pushing the softmax into regions of tiny gradients.
"""),
    code("""
scores = q_heads @ k_heads.transpose(-2, -1)      # (H, T, T)
scaled = scores / math.sqrt(d_k)
weights = torch.softmax(scaled, dim=-1)
print("head 0 scores:\\n", scores[0])
print("head 0 scaled by 1/sqrt(d_k) =", 1 / math.sqrt(d_k), ":\\n", scaled[0])
print("head 0 softmax (rows sum to 1):\\n", weights[0])
"""),
    md("## Weighted sum of values, concatenation of heads, output projection"),
    code("""
z_heads = weights @ v_heads                        # (H, T, d_k)
z = z_heads.transpose(0, 1).reshape(2, d_model)    # (H, T, d_k) -> (T, D): concatenate heads
out_by_hand = z @ mha.out_proj.weight.T + mha.out_proj.bias
out_by_hand
"""),
    md("## Check against the core modules"),
    code("""
out_module, weights_module = mha(x, need_weights=True)
torch.testing.assert_close(out_by_hand, out_module[0], atol=1e-6, rtol=0)
torch.testing.assert_close(weights, weights_module[0], atol=1e-6, rtol=0)
z_sdpa, _ = scaled_dot_product_attention(q_heads[None], k_heads[None], v_heads[None])
torch.testing.assert_close(z_heads, z_sdpa[0], atol=1e-6, rtol=0)
print("by-hand computation == MultiHeadAttention == scaled_dot_product_attention")
"""),
]


def build(name: str, cells) -> None:
    nb = new_notebook(cells=cells)
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, HERE / name)


if __name__ == "__main__":
    build("01_self_attention_step_by_step.ipynb", self_attention)
