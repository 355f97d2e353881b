"""Seq2seq model, loss, schedules, decoding and metrics, on a small model trained on real Multi30k."""

import functools
import math

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from tx_suite.data.bpe import BOS_ID, EOS_ID, PAD_ID
from tx_suite.data.multi30k_datamodule import Multi30kDataModule
from tx_suite.decoding.beam_search import beam_search
from tx_suite.decoding.greedy import greedy_search, never_produced
from tx_suite.models.seq2seq import Seq2SeqTransformer
from tx_suite.tasks.translation_loss import label_smoothed_nll_loss, linear_label_smoothed_nll_loss
from tx_suite.tasks.translation_metrics import translation_scores
from tx_suite.tasks.translation_schedules import build_scheduler, inverse_sqrt_factor

SPECIAL = dict(bos_id=BOS_ID, eos_id=EOS_ID, pad_id=PAD_ID)


@pytest.fixture(scope="module")
def dm(tmp_path_factory):
    dm = Multi30kDataModule(train_limit=2000, vocab_size=1000, max_tokens=1500, max_len=64,
                            cache_dir=str(tmp_path_factory.mktemp("cache")))
    dm.prepare_data()
    dm.setup("fit")
    return dm


@pytest.fixture(scope="module")
def trained(dm):
    """A small model after a few Adam steps on real sentences, and its loss curve."""
    torch.manual_seed(0)
    model = Seq2SeqTransformer(dm.vocab_size, d_model=64, n_heads=4, d_ff=128, n_encoder_layers=2,
                               n_decoder_layers=2, dropout=0.0)
    batches = [b for _, b in zip(range(6), dm.train_dataloader())]
    opt = torch.optim.Adam(model.parameters(), lr=3e-3, betas=(0.9, 0.98))

    def loss_on(bs):
        with torch.no_grad():
            tot = [label_smoothed_nll_loss(model(b["src"], b["tgt_in"], b["src_key_padding_mask"]),
                                           b["tgt_out"], 0.1)[1:] for b in bs]
        return sum(float(n) for n, _ in tot) / sum(c for _, c in tot)

    held_out = [b for _, b in zip(range(2), dm.val_dataloader())]
    before = loss_on(held_out)
    for step in range(40):
        b = batches[step % len(batches)]
        loss, _, n = label_smoothed_nll_loss(model(b["src"], b["tgt_in"], b["src_key_padding_mask"]), b["tgt_out"], 0.1)
        opt.zero_grad()
        (loss / n).backward()
        opt.step()
    model.eval()
    return model, before, loss_on(held_out)


def test_training_lowers_held_out_loss(trained):
    _, before, after = trained
    assert before > math.log(1000) - 1.0  # starts near uniform over the vocabulary
    assert after < before - 1.5


def test_label_smoothed_loss_matches_torch():
    torch.manual_seed(0)
    logits = torch.randn(3, 5, 11)
    target = torch.randint(4, 11, (3, 5))
    target[0, 3:] = PAD_ID
    loss, nll, n = label_smoothed_nll_loss(logits, target, 0.1)
    ref = F.cross_entropy(logits.transpose(1, 2), target, ignore_index=PAD_ID, label_smoothing=0.1, reduction="sum")
    ref_nll = F.cross_entropy(logits.transpose(1, 2), target, ignore_index=PAD_ID, reduction="sum")
    assert n == 13
    torch.testing.assert_close(loss, ref)
    torch.testing.assert_close(nll, ref_nll)


def test_label_smoothed_loss_gradient_matches_torch():
    # The loss has a hand-written backward (softmax - smoothed target); pad rows get no gradient.
    torch.manual_seed(0)
    logits = torch.randn(4, 6, 13, dtype=torch.float64, requires_grad=True)
    target = torch.randint(4, 13, (4, 6))
    target[1, 2:] = PAD_ID
    weights = torch.rand(4, 6, 13, dtype=torch.float64)  # the backward must chain through other ops
    (mine,) = torch.autograd.grad(label_smoothed_nll_loss(logits * weights, target, 0.1)[0] * 3.0, logits)
    ref = F.cross_entropy((logits * weights).transpose(1, 2), target, ignore_index=PAD_ID,
                          label_smoothing=0.1, reduction="sum") * 3.0
    (expected,) = torch.autograd.grad(ref, logits)
    torch.testing.assert_close(mine, expected)
    assert mine[1, 2:].abs().max() == 0
    assert torch.autograd.gradcheck(lambda x: label_smoothed_nll_loss(x, target, 0.1)[0], (logits,))


class _CountMatmuls(TorchDispatchMode):
    """Counts the aten matrix products run inside it (below autograd, so inside Functions too)."""

    def __enter__(self):
        self.n = 0
        return super().__enter__()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        # inference_mode sees aten.matmul itself; elsewhere it arrives decomposed into mm
        self.n += func.overloadpacket in (torch.ops.aten.matmul, torch.ops.aten.mm, torch.ops.aten.bmm, torch.ops.aten.addmm)
        return func(*args, **(kwargs or {}))


def _projection_case(dtype=torch.float64):
    torch.manual_seed(0)
    hidden = torch.randn(23, 7, dtype=dtype, requires_grad=True)
    weight = (torch.randn(19, 7, dtype=dtype) * 0.5).requires_grad_()
    target = torch.randint(4, 19, (23,))
    target[[2, 11, 12]] = PAD_ID
    return hidden, weight, target


@pytest.mark.parametrize("chunk_rows", [1, 5, 23, 64])
def test_fused_projection_loss_equals_the_unfused_one(chunk_rows):
    # Chunks of 1 row, a remainder (23 = 4 x 5 + 3), exactly one, and one larger than the batch.
    hidden, weight, target = _projection_case()
    loss, nll, n = linear_label_smoothed_nll_loss(hidden, weight, target, 0.1, chunk_rows=chunk_rows)
    ref_loss, ref_nll, ref_n = label_smoothed_nll_loss(F.linear(hidden, weight), target, 0.1)
    assert n == ref_n == 20
    torch.testing.assert_close(loss, ref_loss)
    torch.testing.assert_close(nll, ref_nll)
    mine = torch.autograd.grad(loss * 3.0, (hidden, weight))
    ref = torch.autograd.grad(ref_loss * 3.0, (hidden, weight))
    torch.testing.assert_close(mine, ref)
    assert mine[0][[2, 11, 12]].abs().max() == 0  # padding rows get no gradient


def test_fused_projection_loss_without_smoothing_and_without_rows():
    hidden, weight, target = _projection_case()
    loss = linear_label_smoothed_nll_loss(hidden, weight, target, 0.0, chunk_rows=5)
    ref = label_smoothed_nll_loss(F.linear(hidden, weight), target, 0.0)
    torch.testing.assert_close(loss[0], ref[0])
    torch.testing.assert_close(loss[0], loss[1])  # eps = 0: the loss is the NLL
    torch.testing.assert_close(torch.autograd.grad(loss[0], weight), torch.autograd.grad(ref[0], weight))
    empty = linear_label_smoothed_nll_loss(hidden[:0], weight, target[:0], 0.1)  # a batch of padding only
    assert empty[2] == 0 and float(empty[0].detach()) == 0.0
    assert torch.autograd.grad(empty[0], weight)[0].abs().max() == 0


def test_fused_projection_loss_gradcheck_and_tied_weights():
    hidden, weight, target = _projection_case()
    assert torch.autograd.gradcheck(
        lambda h, w: linear_label_smoothed_nll_loss(h, w, target, 0.1, chunk_rows=5)[0], (hidden, weight))
    # A weight shared with an embedding (tied lm_head) gets both gradients summed.
    def embedded():
        return (F.embedding(target, weight) ** 2).sum()

    loss = linear_label_smoothed_nll_loss(hidden, weight, target, 0.1, chunk_rows=5)[0]
    ref = label_smoothed_nll_loss(F.linear(hidden, weight), target, 0.1)[0]
    torch.testing.assert_close(torch.autograd.grad(loss + embedded(), weight),
                               torch.autograd.grad(ref + embedded(), weight))


def test_fused_projection_loss_under_bf16_autocast_and_without_grad():
    hidden, weight, target = (t.detach().float() if t.is_floating_point() else t for t in _projection_case())
    hidden.requires_grad_(), weight.requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss, _, _ = linear_label_smoothed_nll_loss(hidden, weight, target, 0.1, chunk_rows=5)
        ref_loss, _, _ = label_smoothed_nll_loss(F.linear(hidden, weight), target, 0.1)
    assert loss.dtype == torch.float32  # scored in float32 from bf16 products, as the unfused path
    torch.testing.assert_close(loss, ref_loss, rtol=1e-5, atol=1e-5)  # the same bf16 products
    mine, ref = torch.autograd.grad(loss, (hidden, weight)), torch.autograd.grad(ref_loss, (hidden, weight))
    assert (mine[0].dtype, mine[1].dtype) == (torch.float32, torch.float32)
    for a, b in zip(mine, ref):  # bf16 rounding of the gradient products, summed in another order
        assert (a - b).norm() < 1e-2 * b.norm()
    expected = label_smoothed_nll_loss(F.linear(hidden.detach(), weight.detach()), target, 0.1)[0]
    # Validation runs under inference_mode with parameters that require grad: the value only, one
    # projection per chunk and none of the two gradient products (5 chunks of 23 rows).
    for mode in (torch.no_grad, torch.inference_mode):
        with mode(), _CountMatmuls() as count:
            value = linear_label_smoothed_nll_loss(hidden, weight, target, 0.1, chunk_rows=5)[0]
        assert not value.requires_grad and count.n == 5, (mode, count.n)
        torch.testing.assert_close(value, expected)
    with _CountMatmuls() as count:
        linear_label_smoothed_nll_loss(hidden, weight, target, 0.1, chunk_rows=5)
    assert count.n == 15  # training: projection, d hidden and d weight per chunk
    with pytest.raises(ValueError, match="chunk_rows"):
        linear_label_smoothed_nll_loss(hidden, weight, target, 0.1, chunk_rows=0)
    with pytest.raises(ValueError, match="disagree"):
        linear_label_smoothed_nll_loss(hidden, weight, target[:-1], 0.1)


def test_shared_and_tied_embeddings():
    m = Seq2SeqTransformer(100, d_model=16, n_heads=2, d_ff=32, n_encoder_layers=1, n_decoder_layers=1)
    assert m.src_embed is m.tgt_embed and m.lm_head.weight is m.tgt_embed.weight
    m = Seq2SeqTransformer(100, d_model=16, n_heads=2, d_ff=32, n_encoder_layers=1, n_decoder_layers=1,
                           share_embeddings=False, tie_output=False)
    assert m.src_embed.weight is not m.tgt_embed.weight and m.lm_head.weight is not m.tgt_embed.weight


def test_inverse_sqrt_schedule():
    # Vaswani et al. Eq. 3 relative to its peak: linear to 1 at warm-up, then sqrt(warmup / step).
    w = 400
    assert inverse_sqrt_factor(w // 4 - 1, w) == pytest.approx(0.25)
    assert inverse_sqrt_factor(w - 1, w) == pytest.approx(1.0)
    assert inverse_sqrt_factor(4 * w - 1, w) == pytest.approx(0.5)
    for no_warmup in (0, 1):  # starts at the peak and still decays as 1/sqrt(step), not constant
        assert [inverse_sqrt_factor(s, no_warmup) for s in (0, 3, 99)] == pytest.approx([1.0, 0.5, 0.1])
    d_model = 512
    for step in (10, 4000, 20000):  # the paper's formula, up to the constant peak rate
        paper = d_model**-0.5 * min(step**-0.5, step * 4000**-1.5)
        assert inverse_sqrt_factor(step - 1, 4000) * d_model**-0.5 * 4000**-0.5 == pytest.approx(paper)
    peak = 5e-4  # not 1: the cosine floor is relative to the peak

    def lrs(name: str, steps: int, **kw) -> list[float]:
        opt = torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))], lr=peak)
        sched = build_scheduler(opt, name, **kw)
        out = []
        for _ in range(steps):
            out.append(opt.param_groups[0]["lr"] / peak)
            opt.step()
            sched.step()
        return out

    cos = lrs("cosine", 111, warmup_steps=10, total_steps=110, min_lr_ratio=0.1)
    assert cos[0] == pytest.approx(0.1) and max(cos) == pytest.approx(1.0) and cos[10] == pytest.approx(1.0)
    assert cos[-1] == pytest.approx(0.1) and min(cos[10:]) == pytest.approx(0.1)  # ends at min_lr_ratio * lr
    assert cos[60] == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 50 / 100)))
    # the warm-up rises linearly from 1 / warmup_steps (LinearLR(start_factor=0.1) did), every step
    assert cos[:11] == pytest.approx([1 / 10 + (1 - 1 / 10) * s / 10 for s in range(11)])
    # past total_steps it stays at the floor (a periodic cosine would climb back to the peak)
    past = lrs("cosine", 150, warmup_steps=10, total_steps=110, min_lr_ratio=0.1)
    assert past[110:] == pytest.approx([0.1] * 40)
    # Trained further (--ckpt_path last with a larger max_steps): Lightning restores the scheduler's
    # state into one built for the new length, which must then follow that length. torch's
    # SequentialLR(LinearLR, CosineAnnealingLR) restored the old T_max and its cosine rose back to
    # the peak past it (7e-4 at step 5999 of a 3500-step run extended to 7000, instead of 5e-5).
    opt = torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))], lr=peak)
    short = build_scheduler(opt, "cosine", warmup_steps=10, total_steps=60, min_lr_ratio=0.1)
    for _ in range(60):
        opt.step()
        short.step()
    opt = torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))], lr=peak)
    longer = build_scheduler(opt, "cosine", warmup_steps=10, total_steps=110, min_lr_ratio=0.1)
    longer.load_state_dict(short.state_dict())
    resumed = []
    for _ in range(51):
        resumed.append(opt.param_groups[0]["lr"] / peak)
        opt.step()
        longer.step()
    # (the first resumed step runs at the rate in force when the checkpoint was written: Lightning
    # restores the optimizer's lr too, and the schedule sets the next one)
    assert resumed[1:] == pytest.approx(cos[61:111], abs=1e-12)
    # a cosine checkpoint from before (torch's SequentialLR state) resumes at its step
    from torch.optim.lr_scheduler import CosineAnnealingLR, LinearLR, SequentialLR

    from tx_suite.tasks.translation import TranslationTask
    from tx_suite.tasks.translation_schedules import upgrade_scheduler_state

    opt = torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))], lr=peak)
    old = SequentialLR(opt, [LinearLR(opt, start_factor=0.1, total_iters=10),
                             CosineAnnealingLR(opt, T_max=100, eta_min=0.1 * peak)], milestones=[10])
    for _ in range(30):
        opt.step()
        old.step()
    ckpt = {"lr_schedulers": [old.state_dict()]}
    task = TranslationTask(vocab_size=64, d_model=16, n_heads=2, d_ff=32, n_encoder_layers=1, n_decoder_layers=1)
    task.on_load_checkpoint(ckpt)  # Lightning calls it before it restores the schedulers
    opt = torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))], lr=peak)
    new = build_scheduler(opt, "cosine", warmup_steps=10, total_steps=110, min_lr_ratio=0.1)
    new.load_state_dict(ckpt["lr_schedulers"][0])  # was KeyError: 'lr_lambdas'
    opt.step()
    new.step()
    assert opt.param_groups[0]["lr"] / peak == pytest.approx(cos[31], abs=1e-12)
    assert upgrade_scheduler_state(new.state_dict()) == new.state_dict()  # current states pass as they are
    const = lrs("constant", 12, warmup_steps=4, total_steps=100)
    assert const == pytest.approx([0.25, 0.5, 0.75] + [1.0] * 9)  # no step at lr = 0
    with pytest.raises(ValueError, match="inverse_sqrt"):
        build_scheduler(torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))]), "linear", 10, 100)


def _val_batch(dm, n=48):
    b = next(iter(dm.val_dataloader()))
    return b["src"][:n], b["src_key_padding_mask"][:n]


def test_beam_one_equals_greedy(trained, dm):
    model = trained[0]
    src, mask = _val_batch(dm)
    greedy = greedy_search(model, src, mask, **SPECIAL)
    assert torch.equal(beam_search(model, src, mask, beam_size=1, **SPECIAL), greedy)
    ends = (greedy == EOS_ID).float().argmax(1)
    assert ends.unique().numel() > 1  # sentences finish at different steps: the batch shrinks


@pytest.mark.parametrize("beam_size", [1, 4])
def test_cached_decoding_equals_uncached(trained, dm, beam_size):
    model = trained[0]
    src, mask = _val_batch(dm, 24)
    cached = beam_search(model, src, mask, beam_size=beam_size, **SPECIAL)
    uncached = beam_search(model, src, mask, beam_size=beam_size, use_cache=False, **SPECIAL)
    assert torch.equal(cached, uncached)
    if beam_size == 1:
        assert torch.equal(greedy_search(model, src, mask, use_cache=False, **SPECIAL), cached)


def _sequence_logprob(model, src, mask, hyp):
    """log P(hyp | src) by teacher forcing; ``hyp`` ``(N, T)`` ends with EOS, right-padded."""
    tgt_in = torch.cat([torch.full((len(hyp), 1), BOS_ID), hyp[:, :-1]], 1)
    tgt_in = tgt_in.masked_fill(tgt_in == EOS_ID, PAD_ID)
    with torch.no_grad():
        logits = model(src.expand(len(hyp), -1), tgt_in, mask.expand(len(hyp), -1))
        logits[..., [PAD_ID, BOS_ID]] = float("-inf")  # the decoders never produce these
        lp = torch.log_softmax(logits, -1).gather(2, hyp[:, :, None]).squeeze(2)
    return lp.masked_fill(hyp == PAD_ID, 0.0).sum(1)


@pytest.mark.parametrize("length_penalty", [0.0, 1.0, 2.0])
@pytest.mark.parametrize("vocab, max_len", [(8, 3), (5, 6)])
def test_wide_beam_finds_the_exact_best_output(length_penalty, vocab, max_len):
    """With a beam wider than the search space, beam search must return the argmax over all
    outputs (|y| counts the EOS). With (5, 6) the beam is wider than the live hypotheses, so
    impossible (-inf) candidates must never count as finished."""
    import itertools

    words = list(range(3, vocab))  # the ordinary tokens; outputs are 0..max_len-1 of them, then EOS
    outputs = [list(w) + [EOS_ID] for n in range(max_len) for w in itertools.product(words, repeat=n)]
    hyps = torch.tensor([o + [PAD_ID] * (max_len - len(o)) for o in outputs])
    lengths = torch.tensor([len(o) for o in outputs], dtype=torch.float)
    src = torch.tensor([[3, 4, 3, EOS_ID]])
    mask = torch.zeros_like(src, dtype=torch.bool)
    for seed in range(20):
        torch.manual_seed(seed)
        model = Seq2SeqTransformer(vocab, d_model=16, n_heads=2, d_ff=32, n_encoder_layers=1,
                                   n_decoder_layers=1, dropout=0.0).eval()
        with torch.no_grad():
            model.lm_head.weight.mul_(20.0)  # a peaked, non-uniform distribution
        scores = _sequence_logprob(model, src, mask, hyps) / lengths**length_penalty
        best = hyps[scores.argmax()]
        found = beam_search(model, src, mask, beam_size=64, length_penalty=length_penalty,
                            max_len_a=0.0, max_len_b=max_len, **SPECIAL)[0]
        assert found.tolist() == best[: len(found)].tolist() and (best[len(found):] == PAD_ID).all(), seed


def test_length_budget_counts_real_source_tokens_only(trained, dm):
    from tx_suite.decoding.greedy import max_lengths

    mask = torch.tensor([[False] * 10, [False] * 3 + [True] * 7])  # 10 and 3 real tokens
    assert max_lengths(mask, 1.0, 12).tolist() == [22, 15]
    # A short sentence decodes the same alone and next to a long one (its budget is its own).
    model = trained[0]
    src, m = _val_batch(dm, 48)
    lens = (~m).sum(1)
    short, long = int(lens.argmin()), int(lens.argmax())
    kw = dict(max_len_a=0.5, max_len_b=2, **SPECIAL)
    for decode in (greedy_search, lambda *a, **k: beam_search(*a, beam_size=3, **k)):
        alone = decode(model, src[short:short + 1, :int(lens[short])], m[short:short + 1, :int(lens[short])], **kw)[0]
        paired = decode(model, src[[short, long]], m[[short, long]], **kw)[0]
        assert paired[: len(alone)].tolist() == alone.tolist() and (paired[len(alone):] == PAD_ID).all()


def test_outputs_respect_length_budget_and_end_with_eos(trained, dm):
    model = trained[0]
    src, mask = _val_batch(dm, 16)
    for out in (greedy_search(model, src, mask, max_len_a=0.0, max_len_b=3, **SPECIAL),
                beam_search(model, src, mask, beam_size=3, max_len_a=0.0, max_len_b=3, **SPECIAL)):
        assert out.size(1) <= 3
        lengths = (out != PAD_ID).sum(1)
        assert (out.gather(1, (lengths - 1)[:, None]) == EOS_ID).all()
        assert not (out == BOS_ID).any()


def test_bleu_known_values():
    refs = ["A dog runs on the grass.", "Two men are playing football in a park."]
    assert translation_scores(refs, refs) == pytest.approx({"bleu": 100.0, "bleu_lc": 100.0, "chrf": 100.0})
    lower = [r.lower() for r in refs]
    s = translation_scores(lower, refs)
    assert s["bleu_lc"] == pytest.approx(100.0) and s["bleu"] < 90  # case-sensitive by default
    assert translation_scores(["cat"] * 2, refs)["bleu"] == pytest.approx(0.0)
    # chrF2 (character 6-grams, beta 2; Popovic 2015), not chrF++ (+ word bigrams, 30.3562)
    one = translation_scores(["the dog runs on grass"], ["a dog is running on the grass"])
    assert one["chrf"] == pytest.approx(30.3737, abs=1e-4)
    with pytest.raises(ValueError, match="2 hypotheses but 1 references"):
        translation_scores(refs, refs[:1])


def test_teacher_forcing_ignores_source_padding(trained, dm):
    """Training scores a sentence as decoding sees it: its logits next to a longer (padded)
    source equal its logits alone, so cross-attention never reads the padding."""
    model = trained[0]
    b = next(iter(dm.val_dataloader()))
    src_len = (~b["src_key_padding_mask"]).sum(1)
    tgt_len = (~b["tgt_key_padding_mask"]).sum(1)
    short, long = int(src_len.argmin()), int(src_len.argmax())
    assert src_len[short] < src_len[long]
    pair = [short, long]
    with torch.no_grad():
        together = model(b["src"][pair], b["tgt_in"][pair], b["src_key_padding_mask"][pair])[0]
        s, t = int(src_len[short]), int(tgt_len[short])
        alone = model(b["src"][short:short + 1, :s], b["tgt_in"][short:short + 1, :t],
                      b["src_key_padding_mask"][short:short + 1, :s])[0]
    torch.testing.assert_close(together[:t], alone, rtol=1e-4, atol=1e-4)


def test_length_budget_rounds_down_as_fairseq():
    from tx_suite.decoding.greedy import max_lengths

    # int(a * len) + b (fairseq's --max-len-a/b): 3 * 1.5 = 4.5 -> 4, 7 * 1.2 = 8.4 -> 8, 5 * 1.9 = 9.5 -> 9
    mask = torch.tensor([[False] * 3 + [True] * 4, [False] * 7, [False] * 5 + [True] * 2])
    assert max_lengths(mask, 1.5, 10).tolist() == [14, 20, 17]
    assert max_lengths(mask, 1.2, 10).tolist() == [13, 18, 16]
    assert max_lengths(mask, 1.9, 0).tolist() == [5, 13, 9]
    # Huge settings are capped, not wrapped around int64 (which gave a budget of 1: empty output).
    from tx_suite.decoding.greedy import MAX_BUDGET

    assert max_lengths(mask, 1e300, 0).tolist() == [MAX_BUDGET] * 3
    assert max_lengths(mask, 1.0, 10**20).tolist() == [MAX_BUDGET] * 3
    assert max_lengths(mask, 0.0, -10**20).tolist() == [-MAX_BUDGET] * 3


def test_bleu_brevity_penalty_and_13a_tokenization():
    # A hypothesis that is a prefix of the reference: every n-gram matches, so BLEU is the
    # brevity penalty exp(1 - r / c) alone (Papineni et al. 2002), with r = 7 and c = 5 tokens
    # under 13a ("grass." is "grass" + "."). Swapping hypothesis and reference, or scoring
    # whitespace tokens, gives other numbers (61.48, 81.87).
    s = translation_scores(["A dog runs on the"], ["A dog runs on the grass."])
    assert s["bleu"] == pytest.approx(100 * math.exp(1 - 7 / 5), abs=1e-6)
    assert s["bleu_lc"] == pytest.approx(s["bleu"], abs=1e-6)
    s = translation_scores(["a dog runs on the"], ["A dog runs on the grass."])
    assert s["bleu_lc"] == pytest.approx(100 * math.exp(1 - 7 / 5), abs=1e-6) and s["bleu"] < 50


class _PrefersSpecialTokens:
    """A stand-in decoder whose most likely tokens are PAD, then BOS, then word 5; EOS wins over
    word 5 from the third position on (no cache: the whole prefix is fed each step)."""

    def encode(self, src, src_key_padding_mask=None):
        return torch.zeros(src.size(0), src.size(1), 1)

    def decode(self, tgt, memory, memory_key_padding_mask=None, cache=None):
        logits = torch.zeros(tgt.size(0), tgt.size(1), 8)
        logits[..., PAD_ID], logits[..., BOS_ID], logits[..., 5] = 4.0, 3.0, 1.0
        logits[..., EOS_ID] = 2.0 if tgt.size(1) >= 3 else -1.0
        return logits


def test_decoders_never_produce_pad_or_bos():
    src = torch.tensor([[5, 6, EOS_ID]])
    mask = torch.zeros_like(src, dtype=torch.bool)
    greedy = greedy_search(_PrefersSpecialTokens(), src, mask, use_cache=False, **SPECIAL)
    assert greedy.tolist() == [[5, 5, EOS_ID]]
    beam = beam_search(_PrefersSpecialTokens(), src, mask, beam_size=2, use_cache=False, **SPECIAL)
    assert beam.tolist() == [[5, 5, EOS_ID]]


def test_decoders_started_with_eos_as_fairseq():
    """bos_id=EOS_ID (fairseq's decoder start): every prefix begins with EOS, EOS still ends the
    output, PAD is still never produced; BOS, no longer the start token, is an ordinary id."""
    firsts = []

    class Recording(_PrefersSpecialTokens):
        def decode(self, tgt, memory, memory_key_padding_mask=None, cache=None):
            firsts.extend(tgt[:, 0].tolist())
            logits = super().decode(tgt, memory, memory_key_padding_mask, cache)
            logits[..., BOS_ID] = 0.5  # below word 5, so the outputs equal the BOS-started ones
            return logits

    src = torch.tensor([[5, 6, EOS_ID]])
    mask = torch.zeros_like(src, dtype=torch.bool)
    special = {**SPECIAL, "bos_id": EOS_ID}
    assert greedy_search(Recording(), src, mask, use_cache=False, **special).tolist() == [[5, 5, EOS_ID]]
    assert beam_search(Recording(), src, mask, beam_size=2, use_cache=False, **special).tolist() == [[5, 5, EOS_ID]]
    assert firsts and set(firsts) == {EOS_ID}
    assert never_produced(EOS_ID, EOS_ID, PAD_ID) == (PAD_ID,)
    assert never_produced(BOS_ID, EOS_ID, PAD_ID) == (PAD_ID, BOS_ID)


def test_a_budget_of_zero_tokens_still_ends_each_output_with_eos():
    """max_len_b may be 0 or negative (only finiteness is checked): the budget is clamped to one
    token, the EOS, never an empty row that the detokenizer could not tell from a missing one."""
    src = torch.tensor([[5, 6, EOS_ID], [5, EOS_ID, PAD_ID]])
    mask = src == PAD_ID
    for decode in (greedy_search, functools.partial(beam_search, beam_size=2)):
        for b in (0, -5):
            out = decode(_PrefersSpecialTokens(), src, mask, max_len_a=0.0, max_len_b=b, use_cache=False, **SPECIAL)
            assert out.tolist() == [[EOS_ID], [EOS_ID]]


@pytest.mark.parametrize("beam", [1, 3])
def test_output_budget_stays_within_a_learned_position_table(beam):
    """With learned positions (a hard max_len) a sentence that never chose EOS decoded one position
    past the table and the whole batch failed with IndexError; it now ends with a forced EOS at
    the table's end, as fairseq caps at max_decoder_positions."""
    torch.manual_seed(0)
    model = Seq2SeqTransformer(12, d_model=16, n_heads=2, d_ff=32, n_encoder_layers=1, n_decoder_layers=1,
                               pos_encoding="learned", max_len=16).eval()
    with torch.no_grad():
        model.lm_head.weight[EOS_ID] = -10.0  # tied: EOS is never the likeliest token
    src = torch.randint(4, 12, (2, 10))
    mask = torch.zeros_like(src, dtype=torch.bool)
    with torch.no_grad():
        out = (greedy_search(model, src, mask, bos_id=BOS_ID, eos_id=EOS_ID, pad_id=PAD_ID) if beam == 1 else
               beam_search(model, src, mask, beam_size=beam, bos_id=BOS_ID, eos_id=EOS_ID, pad_id=PAD_ID))
    assert out.shape[1] == 16 and (out[:, -1] == EOS_ID).all()  # budget 1.2 * 10 + 10 = 22, capped
