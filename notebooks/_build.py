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



# --------------------------------------------------------------------------------------------------
# Shared setup of notebooks 2 and 3: repository root, small mode, where short training runs go.
SETUP = """
import io
import os
import tempfile
from pathlib import Path

import matplotlib.pyplot as plt
import torch
from IPython.display import Image, display

from tx_suite.cli.main import main as tx_suite  # the `tx-suite` command, called in-process
from tx_suite.utils.runs import default_runs_dir

SMALL = os.environ.get("TX_SUITE_NOTEBOOK_SMALL") == "1"  # tiny, fast settings (the test suite)
REPO = Path.cwd().parent if Path.cwd().name == "notebooks" else Path.cwd()
os.chdir(REPO)  # experiment configs and data paths are relative to the repository root
os.environ.setdefault("WANDB_MODE", "disabled")  # these short runs need no W&B record
if SMALL:
    torch.set_num_threads(1)  # small mode runs beside other jobs; one thread avoids contention
# Small mode trains into a temporary folder, removed when the kernel exits; otherwise runs land in
# runs/ (or $TX_SUITE_RUNS_DIR) like any other run.
_TMP = tempfile.TemporaryDirectory(prefix="tx-suite-nb-") if SMALL else None
RUNS_DIR = Path(_TMP.name) if _TMP else Path(default_runs_dir())
QUIET = ["--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false"]


def show(fig, dpi=90):
    \"\"\"Display a matplotlib figure as a PNG and close it.\"\"\"
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    display(Image(buf.getvalue()))
"""

attention_maps = [
    md("""
# 2. Attention maps: a translation model and a Vision Transformer

What do trained attention heads look at? We take two models of the suite, a German→English
Transformer (Multi30k) and a ViT on MNIST, record the attention weights of every layer with
`tx_suite.core.record_attention`, and draw them with the tasks' own plotting helpers:

* translation: encoder **self-attention** (source × source) and decoder **cross-attention**
  (target × source) per head, for one sentence;
* ViT: **CLS-to-patch** attention per head of the last layer, and **attention rollout** over all
  layers (Abnar & Zuidema 2020, §3) for a few digits.

Checkpoints: `TX_SUITE_TRANSLATION_CKPT` / `TX_SUITE_VIT_CKPT` if set, else the newest `best.ckpt`
of `runs/multi30k_de_en_quickstart` / `runs/mnist_vit` (under `$TX_SUITE_RUNS_DIR` if set; train
them with `tx-suite fit --config experiments/...`), else a training run through the suite's own
CLI (the translation quickstart for up to 1500 steps, which its 11-minute `max_time` may stop
first, ~10 min on a 2-core CPU; 1000 ViT steps of `mnist_vit.yaml`, still inside its warm-up, plus
~1 min of `torch.compile`: a few minutes, not timed). With
`TX_SUITE_NOTEBOOK_SMALL=1` (the test suite) the models are tiny and train for 40 steps: the
maps are then those of barely trained models, but every step is the real one.
"""),
    code(SETUP),
    code("""
from tx_suite.utils.runs import RunLookupError, find_checkpoint


def checkpoint(env_var, experiment, train_args):
    \"\"\"$env_var, else the newest best.ckpt of `experiment` under RUNS_DIR, else a `tx-suite fit`.\"\"\"
    if os.environ.get(env_var):
        return Path(os.environ[env_var])
    if not SMALL:
        try:
            return find_checkpoint(RUNS_DIR, experiment, "best")
        except RunLookupError:
            pass
    assert tx_suite(["fit", *train_args, "--runs_dir", str(RUNS_DIR), *QUIET]) == 0
    return find_checkpoint(RUNS_DIR, experiment, "last")


tiny_translation = [
    "--model.init_args.d_model=64", "--model.init_args.d_ff=128", "--model.init_args.n_encoder_layers=2",
    "--model.init_args.n_decoder_layers=2", "--model.init_args.vocab_size=1000", "--data.init_args.vocab_size=1000",
    "--data.init_args.train_limit=3000", "--data.init_args.max_tokens=1024", "--data.init_args.eval_max_tokens=1024",
    "--model.init_args.warmup_steps=10", "--model.init_args.lr=3e-3", "--trainer.max_steps=40",
    "--trainer.val_check_interval=40", "--trainer.limit_val_batches=1",
]
translation_ckpt = checkpoint(
    "TX_SUITE_TRANSLATION_CKPT", "multi30k_de_en_quickstart",
    ["--config", "experiments/translation/multi30k_de_en_quickstart.yaml",
     *(tiny_translation if SMALL else ["--trainer.max_steps=1500"])],
)
tiny_vit = [
    "--model.init_args.d_model=64", "--model.init_args.d_ff=128", "--model.init_args.n_layers=3",
    "--model.init_args.ema_decay=null", "--model.init_args.warmup_epochs=0", "--model.init_args.lr=2e-3",
    "--model.init_args.drop_path=0", "--data.init_args.limit_train=2560", "--data.init_args.val_size=500",
    "--data.init_args.batch_size=64", "--trainer.max_steps=40", "--trainer.val_check_interval=20",
    "--trainer.limit_val_batches=2", "--model.init_args.compile=false",  # 40 steps: not worth a build
]
vit_ckpt = checkpoint(
    "TX_SUITE_VIT_CKPT", "mnist_vit",
    ["--config", "experiments/vision/mnist_vit.yaml", *(tiny_vit if SMALL else ["--trainer.max_steps=1000"])],
)
print(translation_ckpt, vit_ckpt, sep="\\n")
"""),
    md("""
## Translation: one sentence through the encoder and the decoder

`load_translator` rebuilds the `Seq2SeqTransformer` and its BPE tokenizer from the checkpoint
(read with `weights_only=True`). The model translates greedily; then its own output is fed back
with teacher forcing inside `record_attention`, which collects the weights `(B, H, Tq, Tk)` of
every attention module by name. Row *i* of a decoder map is the query that predicted output
token *i*.
"""),
    code("""
from tx_suite.cli.translate import load_translator
from tx_suite.core import record_attention
from tx_suite.data.bpe import BOS_ID, EOS_ID, PAD_ID
from tx_suite.data.translation_dataset import encode_source, pad_batch
from tx_suite.decoding.greedy import greedy_search

model, tok, hparams = load_translator(translation_ckpt)
sentence = "Ein Mann fährt mit dem Fahrrad eine Straße entlang."
src = encode_source(tok, [sentence])[0]
src_ids, src_pad = pad_batch([src])  # (1, S) ids, (1, S) bool, True = padding
with torch.no_grad():
    hyp = greedy_search(model, src_ids, src_pad, bos_id=BOS_ID, eos_id=EOS_ID, pad_id=PAD_ID)[0]
    hyp = hyp[hyp != PAD_ID]  # (T,) ending with EOS
    tgt_in = torch.cat([torch.tensor([BOS_ID]), hyp[:-1]])[None]  # (1, T): BOS + output, shifted right
    with record_attention(model) as maps:
        model(src_ids, tgt_in, src_pad)
print("source:     ", sentence)
print("translation:", tok.decode_batch(hyp[None].tolist())[0])
for name, weights in maps.items():
    print(f"{name:42s} {tuple(weights.shape)}")
    torch.testing.assert_close(weights.sum(-1), torch.ones(weights.shape[:-1]))  # softmax rows sum to 1
"""),
    code("""
from tx_suite.tasks.callbacks.translation_attention import plot_heads

src_tokens, tgt_tokens = tok.tokens(src.tolist()), tok.tokens(hyp.tolist())
last_enc = len(model.transformer.encoder.layers) - 1
last_dec = len(model.transformer.decoder.layers) - 1
show(plot_heads(maps[f"transformer.encoder.layers.{last_enc}.self_attn"][0], src_tokens, src_tokens,
                f"encoder self-attention, layer {last_enc}"))
show(plot_heads(maps[f"transformer.decoder.layers.{last_dec}.cross_attn"][0], tgt_tokens, src_tokens,
                f"decoder cross-attention, layer {last_dec} (rows: output tokens)"))
"""),
    md("""
In a trained model some cross-attention heads form a rough diagonal (the output word attends to
the source word it translates), others attend to the end of sentence or to punctuation. A tiny
model trained for 40 steps shows mostly uniform or position-driven patterns.

## ViT: where the CLS token looks

`vit_attention` runs the ViT under `record_attention` and returns the per-layer weights
`(B, H, 1 + N, 1 + N)` (CLS first, then the `N` patches). `cls_maps` takes the CLS row of the
last layer per head, and the CLS row of the attention rollout
$R = \\hat A_L \\cdots \\hat A_1$, $\\hat A_l = \\tfrac12 \\bar A_l + \\tfrac12 I$ (heads averaged,
identity for the residual connection, rows renormalised), both reshaped to the patch grid.
"""),
    code("""
from tx_suite.data.mnist import MNISTDataModule
from tx_suite.tasks.callbacks.vision_attention import attention_figure, cls_maps, vit_attention
from tx_suite.tasks.classification import load_classifier

task = load_classifier(vit_ckpt)
vit = task.inference_model  # the EMA weights if the run kept them
data = MNISTDataModule(data_dir="data", val_size=0)
data.setup("test")
images = torch.stack([data.test_set[i][0] for i in range(4)])  # (4, 1, 28, 28), normalised
labels = [int(data.test_set[i][1]) for i in range(4)]
logits, attentions = vit_attention(vit, images)  # n_layers x (B, H, T, T)
grid = tuple(vit.patch_embed.grid_size)  # not 28 // patch_size: a hybrid's conv stem downsamples first
heads, rollout = cls_maps(attentions, grid)  # (B, H, 7, 7), (B, 7, 7), each scaled to [0, 1]
probs = logits.softmax(-1)
titles = [f"{y} -> {int(p.argmax())} ({float(p.max()):.2f})" for y, p in zip(labels, probs)]
print(len(attentions), "layers of", tuple(attentions[-1].shape), "; accuracy on these:",
      sum(int(p.argmax()) == y for y, p in zip(labels, probs)), "/", len(labels))
pixels = images * data.std[0] + data.mean[0]  # back to [0, 1] for display
show(attention_figure(pixels, heads, rollout, titles), dpi=110)
"""),
    md("""
Rows: digit (label → prediction, confidence); columns: the input, the rollout over all layers,
and each head of the last layer, over the image (red = more attention). A trained ViT's rollout
concentrates on the strokes of the digit; individual heads specialise (edges, ends of strokes,
background). To look at your own runs, set `TX_SUITE_TRANSLATION_CKPT` / `TX_SUITE_VIT_CKPT` to
their checkpoints. The training callbacks `TranslationAttentionMaps` and `AttentionMaps` draw the
same figures during training (W&B or the run directory).
"""),
]

comparing_runs = [
    md("""
# 3. Comparing runs

Two short, real training runs of the ViT on MNIST that differ only in the learning rate, then
the comparison API of `tx-suite compare` (`tx_suite.utils.compare`): the table of final and best
metrics, the config keys that differ, and the learning curves. Everything is read from the run
directories (`metrics.csv`, `config.yaml`, `run_info.json`), so it works offline, without W&B.
With `TX_SUITE_NOTEBOOK_SMALL=1` the model is tiny and each run takes 40 steps.
"""),
    code(SETUP),
    code("""
import time

steps = 40 if SMALL else 400
EXPERIMENT = time.strftime("nb3_lr_%Y%m%d_%H%M%S")  # one per execution: the run ids below repeat
short_vit = [
    "--config", "experiments/vision/mnist_vit.yaml", "--experiment", EXPERIMENT, *QUIET,
    "--runs_dir", str(RUNS_DIR), f"--trainer.max_steps={steps}", f"--trainer.val_check_interval={steps // 4}",
    "--trainer.log_every_n_steps=5", "--model.init_args.warmup_epochs=0", "--model.init_args.ema_decay=null",
    "--data.init_args.val_size=500", "--data.init_args.batch_size=64",
    "--trainer.callbacks=[]",  # no attention/report figures for these runs
    "--model.init_args.compile=false",  # short runs: torch.compile's build would cost more than it saves
]
if SMALL:
    short_vit += ["--model.init_args.d_model=64", "--model.init_args.d_ff=128", "--model.init_args.n_layers=3",
                  "--model.init_args.drop_path=0", "--data.init_args.limit_train=2560", "--trainer.limit_val_batches=2"]
for lr in (3e-4, 3e-3):
    assert tx_suite(["fit", *short_vit, f"--model.init_args.lr={lr}", f"--run_id=lr{lr:g}"]) == 0
"""),
    md("""
## The table

`load_runs` accepts run directories, experiment names or directories, and globs. The report has
one column per run: status, the last logged step (a 40-step run ends at step 39), the **final** and **best** value of each metric the runs share
(best = min for losses, max for accuracy; the checkpoint's mode for the monitored metric), then
the config keys whose values differ (paths that only name the run itself are left out).
"""),
    code("""
from tx_suite.utils.compare import config_diff, format_report, info_diff, load_runs, summarize

runs = load_runs([EXPERIMENT], runs_dir=RUNS_DIR)
metrics = ["train/loss", "val/loss", "val/acc"]  # the task also logs per-class val/acc_0..9
print(format_report(runs, metrics))
"""),
    code("""
diff = config_diff(runs)
assert list(diff) == ["model.init_args.lr"], diff  # the only difference we made
print("config keys that differ:", diff)
print("run_info differences (seed, commit, versions):", info_diff(runs) or "none")
for label, values in summarize(runs, metrics).items():
    print(label, {m: (round(v["final"], 4), round(v["best"], 4)) for m, v in values.items()}, "(final, best)")
"""),
    md("""
## Learning curves

`plot_curves` draws each shared metric against the global step, one line per run, labelled with
the differing config values. (Without `metrics` it draws every shared metric logged more than
once.)
"""),
    code("""
from tx_suite.utils.compare import plot_curves

show(plot_curves(runs, metrics))
"""),
    md("""
## The same from the command line

`tx-suite compare` prints this table and writes the curves as `curves.png` and a self-contained
`report.html` (table + inline PNG) that can be attached to a report or opened offline.
"""),
    code("""
out = RUNS_DIR / "_compare"
assert tx_suite(["compare", EXPERIMENT, "--runs_dir", str(RUNS_DIR), "--out", str(out), "--metrics", ",".join(metrics)]) == 0
print(sorted(p.name for p in out.iterdir()), (out / "report.html").stat().st_size, "bytes")
"""),
]


NOTEBOOKS = {
    "01_self_attention_step_by_step.ipynb": self_attention,
    "02_attention_maps.ipynb": attention_maps,
    "03_comparing_runs.ipynb": comparing_runs,
}


def build(name: str, cells, out: Path = HERE) -> None:
    nb = new_notebook(cells=cells)
    for i, cell in enumerate(nb.cells):  # stable ids: a rebuild changes the files only where cells change
        cell.id = f"{name[:2]}-{i:02d}"
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, out / name)


if __name__ == "__main__":
    for name, cells in NOTEBOOKS.items():
        build(name, cells)
