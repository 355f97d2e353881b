"""Weight conversion from ``torch.nn`` reference modules to the core's layout."""

from __future__ import annotations

import re

from torch import Tensor


def convert_torch_mha(state_dict: dict[str, Tensor], cross_attention: bool = False, prefix: str = "") -> dict[str, Tensor]:
    """``torch.nn.MultiheadAttention`` weights (``in_proj_*``, ``out_proj.*``) -> :class:`MultiHeadAttention`.

    For cross-attention the packed ``in_proj`` rows split into ``q_proj`` (first ``D``) and
    ``kv_proj`` (last ``2D``). Keys without ``prefix`` are returned unchanged.

    Raises:
        ValueError: separate ``q/k/v_proj_weight`` (``kdim != embed_dim``), which has no fused layout here.
    """
    out: dict[str, Tensor] = {}
    for key, value in state_dict.items():
        if not key.startswith(prefix):
            out[key] = value
            continue
        name = key[len(prefix):]
        if name in ("q_proj_weight", "k_proj_weight", "v_proj_weight"):
            raise ValueError("nn.MultiheadAttention with kdim/vdim != embed_dim is not supported")
        m = re.fullmatch(r"in_proj_(weight|bias)", name)
        if m is None:
            out[key] = value  # out_proj.* keeps its name
        elif cross_attention:
            d = value.size(0) // 3
            out[f"{prefix}q_proj.{m[1]}"], out[f"{prefix}kv_proj.{m[1]}"] = value[:d], value[d:]
        else:
            out[f"{prefix}qkv_proj.{m[1]}"] = value
    return out


_RENAMES = [
    (r"(encoder|decoder)\.layers\.(\d+)\.linear1\.", r"\1.layers.\2.ffn.fc1."),
    (r"(encoder|decoder)\.layers\.(\d+)\.linear2\.", r"\1.layers.\2.ffn.fc2."),
    (r"decoder\.layers\.(\d+)\.multihead_attn\.", r"decoder.layers.\1.cross_attn."),
]


def convert_torch_transformer(state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
    """``torch.nn.Transformer`` state dict -> :class:`EncoderDecoder` state dict.

    The layouts agree except for names (``linear1/2`` -> ``ffn.fc1/2``, ``multihead_attn`` ->
    ``cross_attn``) and the packed attention projections (see :func:`convert_torch_mha`). Build
    the target with ``TransformerConfig(final_norm=True)``: ``nn.Transformer`` always ends each
    stack with a LayerNorm, also in post-norm mode.
    """
    renamed: dict[str, Tensor] = {}
    for key, value in state_dict.items():
        for pattern, repl in _RENAMES:
            key = re.sub(pattern, repl, key)
        renamed[key] = value
    prefixes = {m[1] for k in renamed if (m := re.match(r"(.*\.(?:self_attn|cross_attn)\.)", k))}
    for prefix in sorted(prefixes):
        renamed = convert_torch_mha(renamed, cross_attention=prefix.endswith("cross_attn."), prefix=prefix)
    return renamed
