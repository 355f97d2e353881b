"""tx_suite.core.Dropout: nn.Dropout's distribution and scaling with a different CPU mask."""

import pytest
import torch
import torch.nn.functional as F

from tx_suite.core import Dropout, EncoderLayer


def test_identity_in_eval_and_at_zero():
    x = torch.randn(4, 5)
    assert Dropout(0.3).eval()(x) is x
    assert Dropout(0.0).train()(x) is x


@pytest.mark.parametrize("p", [0.1, 0.3])
def test_drop_rate_scale_and_gradient(p):
    torch.manual_seed(0)
    x = torch.full((1000, 1000), 2.0, requires_grad=True)
    y = Dropout(p).train()(x)
    dropped = (y == 0).float().mean().item()
    assert abs(dropped - p) < 5e-3  # 1e6 draws: the standard error is < 5e-4
    kept = y[y != 0]
    assert torch.allclose(kept, torch.full_like(kept, 2.0 / (1.0 - p)))
    y.sum().backward()
    assert torch.equal(x.grad, (y != 0).float() / (1.0 - p))


def test_bf16_autocast_keeps_dtype_and_rate():
    torch.manual_seed(0)
    lin = torch.nn.Linear(64, 64)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = Dropout(0.25).train()(lin(torch.randn(512, 64)))
    assert y.dtype == torch.bfloat16
    assert abs((y == 0).float().mean().item() - 0.25) < 0.01


def test_same_moments_as_torch_dropout():
    """Mean and variance of the output match F.dropout's on the same input (both unbiased)."""
    torch.manual_seed(0)
    x = torch.randn(2000, 500) + 1.0  # a non-zero mean, so that a missing 1/(1-p) shows
    ours = Dropout(0.2).train()(x)
    ref = F.dropout(x, 0.2, training=True)
    assert abs(ours.mean().item() - ref.mean().item()) < 0.01
    assert ours.var().item() == pytest.approx(ref.var().item(), rel=0.01)


def test_layers_use_it_and_bad_p_is_refused():
    layer = EncoderLayer(16, 2, 32, dropout=0.1)
    assert isinstance(layer.dropout, Dropout) and isinstance(layer.ffn.dropout, Dropout)
    for p in (-0.1, 1.0):
        with pytest.raises(ValueError, match="dropout probability"):
            Dropout(p)
