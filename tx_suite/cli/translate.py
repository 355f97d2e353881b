"""``tx-suite translate``: translate sentences with a trained translation checkpoint.

Sentences come from the command line, a file (``--input FILE``) or standard input, one per
line; translations are written one per line in the same order, so the output has exactly as many
lines as the input. Empty (or blank) lines give empty lines; sources longer than
``--max_src_tokens`` are truncated with a warning on stderr; characters never seen in training
are encoded as bytes and never fail. Undecodable input bytes are replaced (U+FFFD).

Examples::

    tx-suite translate --ckpt_path runs/multi30k_de_en/<run>/checkpoints/last.ckpt "Ein Hund rennt."
    tx-suite translate --ckpt_path last --experiment multi30k_de_en_quickstart < de.txt > en.txt
    tx-suite translate --ckpt_path model.ckpt -i de.txt -o en.txt --beam_size 5 --length_penalty 1.0
"""

from __future__ import annotations

import argparse
import inspect
import math
import sys
from collections.abc import Sequence
from pathlib import Path

import torch
from tqdm import tqdm

from tx_suite.cli.devices import check_device
from tx_suite.data.bpe import BOS_ID, DECODER_STARTS, EOS_ID, PAD_ID, BPETokenizer
from tx_suite.data.translation_dataset import encode_source, pad_batch
from tx_suite.data.text_normalize import has_undecodable_bytes, input_encoding, normalize_source, one_line, split_lines
from tx_suite.decoding.beam_search import beam_search
from tx_suite.decoding.greedy import greedy_search
from tx_suite.models.seq2seq import Seq2SeqTransformer
from tx_suite.utils.atomic_write import atomic_open, check_writable
from tx_suite.utils.checkpoint import load_checkpoint, state_dict_mismatch
from tx_suite.utils.option_parser import OptionParser
from tx_suite.utils.runs import default_runs_dir, find_checkpoint, resolve_checkpoint

PROG = "tx-suite translate"


class TranslateError(ValueError):
    """A checkpoint that is not a translation model, or bad arguments; shown as one line."""


def load_translator(path: str | Path, device: str = "cpu") -> tuple[Seq2SeqTransformer, BPETokenizer, dict]:
    """Model (eval mode), tokenizer and hyper-parameters from a TranslationTask checkpoint.

    The checkpoint is read with ``torch.load(..., weights_only=True)``
    (:func:`tx_suite.utils.checkpoint.load_checkpoint`).

    Raises:
        tx_suite.utils.checkpoint.CheckpointError: missing, corrupt or unsafe file.
        TranslateError: the file is not a checkpoint of a translation model.
    """
    ckpt = load_checkpoint(path)
    if "state_dict" not in ckpt or "tokenizer" not in ckpt:
        raise TranslateError(f"{path} is not a translation checkpoint (needs state_dict and tokenizer)")
    hparams = dict(ckpt.get("hyper_parameters") or {})
    if "vocab_size" not in hparams:
        raise TranslateError(f"{path} has no model hyper-parameters (vocab_size, d_model, ...) to build the model from")
    # A model trained on lowercased text (Multi30kDataModule(lowercase=True)) reads lowercased input.
    hparams["lowercase"] = bool((ckpt.get("datamodule_hyper_parameters") or {}).get("lowercase", False))
    start = hparams.get("decoder_start", "bos")  # checkpoints from before the option started with BOS
    if start not in DECODER_STARTS:
        raise TranslateError(f"{path}: unknown decoder_start {start!r} in its hyper-parameters")
    hparams["bos_id"] = DECODER_STARTS[start]
    names = set(inspect.signature(Seq2SeqTransformer).parameters)
    model = Seq2SeqTransformer(**{k: v for k, v in hparams.items() if k in names})
    state = {k.removeprefix("model."): v for k, v in ckpt["state_dict"].items() if k.startswith("model.")}
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise TranslateError(f"{path}: weights do not match the stored hyper-parameters "
                             f"({state_dict_mismatch(e)})") from None
    try:
        tok = BPETokenizer.from_str(ckpt["tokenizer"])
    except Exception as e:  # noqa: BLE001 - tokenizers raises a bare Exception for a bad JSON model
        raise TranslateError(f"{path}: its stored BPE tokenizer cannot be read ({e})") from None
    return model.to(device).eval(), tok, hparams


@torch.no_grad()
def translate_lines(model: Seq2SeqTransformer, tok: BPETokenizer, lines: Sequence[str], beam_size: int = 5,
                    length_penalty: float = 1.0, max_len_a: float = 1.2, max_len_b: int = 10,
                    batch_size: int = 64, max_src_tokens: int = 256, warn=None, progress: bool = False,
                    lowercase: bool = False, bos_id: int = BOS_ID) -> list[str]:
    """One translation per input line (same order, same count).

    Lines are normalized first (:func:`~tx_suite.data.text_normalize.normalize_source`: NFC, no
    control or invisible format characters, single spaces), and lowercased for a model trained
    on lowercased text (``lowercase``: :func:`load_translator`'s ``hparams["lowercase"]``). Blank
    lines give ``""`` without running the model. Sentences are batched by length; sources above
    ``max_src_tokens`` tokens are truncated and reported through ``warn(message)``.
    ``progress``: a tqdm bar of sentences on stderr (shown only when stderr is a terminal).
    ``bos_id``: the decoder's first input the model was trained with (:func:`load_translator`'s
    ``hparams["bos_id"]``).
    """
    device = next(model.parameters()).device
    out = [""] * len(lines)
    lines = [normalize_source(s.lower() if lowercase else s) for s in lines]
    todo = [i for i, s in enumerate(lines) if s]
    srcs = dict(zip(todo, encode_source(tok, [lines[i] for i in todo])))
    for i, ids in srcs.items():
        if len(ids) > max_src_tokens:
            if warn:
                warn(f"line {i + 1}: {len(ids)} tokens, truncated to {max_src_tokens}")
            srcs[i] = torch.cat([ids[: max_src_tokens - 1], torch.tensor([EOS_ID])])
    order = sorted(todo, key=lambda i: len(srcs[i]))
    bar = tqdm(total=len(order), unit="sent", file=sys.stderr, disable=None if progress else True, leave=False)
    for start in range(0, len(order), batch_size):
        idx = order[start: start + batch_size]
        src, mask = pad_batch([srcs[i] for i in idx])
        src, mask = src.to(device), mask.to(device)
        kw = dict(bos_id=bos_id, eos_id=EOS_ID, pad_id=PAD_ID, max_len_a=max_len_a, max_len_b=max_len_b)
        if beam_size == 1:
            hyp = greedy_search(model, src, mask, **kw)
        else:
            hyp = beam_search(model, src, mask, beam_size=beam_size, length_penalty=length_penalty, **kw)
        for i, h in zip(idx, tok.decode_batch(hyp)):
            out[i] = one_line(h)  # a newline would break the one-line-per-input contract
        bar.update(len(idx))
    bar.close()
    return out


def build_parser() -> argparse.ArgumentParser:
    ap = OptionParser(prog=PROG, description="Translate sentences with a trained translation checkpoint.")
    ap.add_argument("sentences", nargs="*", help="sentences to translate (none: read --input or stdin)")
    ap.add_argument("--ckpt_path", required=True,
                    help="checkpoint file, EXPERIMENT:last|best, or last/best with --experiment (the newest run's)")
    ap.add_argument("--experiment", default=None, help="experiment whose newest run --ckpt_path last|best means")
    ap.add_argument("--runs_dir", default=default_runs_dir(),
                    help="root of the run directories (default: $TX_SUITE_RUNS_DIR or runs)")
    ap.add_argument("-i", "--input", default=None, help="input file, one sentence per line ('-' = stdin)")
    ap.add_argument("-o", "--output", default=None, help="output file (default: stdout)")
    ap.add_argument("--batch_size", type=int, default=64, help="sentences per batch (default 64)")
    ap.add_argument("--beam_size", type=int, default=None, help="beam size (1 = greedy; default: the checkpoint's)")
    ap.add_argument("--length_penalty", type=float, default=None, help="beam length penalty (default: the checkpoint's)")
    ap.add_argument("--max_len_a", type=float, default=None, help="output budget a * source length + b (default: the checkpoint's)")
    ap.add_argument("--max_len_b", type=int, default=None, help="output budget a * source length + b")
    ap.add_argument("--max_src_tokens", type=int, default=256, help="longer sources are truncated, with a warning (default 256)")
    ap.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda (default cpu)")
    return ap


def _resolve_checkpoint(ckpt: str, experiment: str | None, runs_dir: str) -> str:
    """``last``/``best`` of ``--experiment``, ``EXPERIMENT:last|best`` (as classify and generate
    take it), or a file."""
    if ckpt not in ("last", "best"):
        return str(resolve_checkpoint(ckpt, runs_dir, kind="translation",
                                      hint="train it first: tx-suite fit --config experiments/translation/{name}.yaml"))
    if not experiment:
        raise TranslateError(f"--ckpt_path {ckpt} needs --experiment (e.g. multi30k_de_en_quickstart), "
                             f"or write --ckpt_path EXPERIMENT:{ckpt}")
    return str(find_checkpoint(runs_dir, experiment, ckpt))


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.batch_size < 1 or (args.beam_size is not None and args.beam_size < 1) or args.max_src_tokens < 2:
        print(f"{PROG}: error: --batch_size and --beam_size must be >= 1, --max_src_tokens >= 2", file=sys.stderr)
        return 2
    if args.length_penalty is not None and not math.isfinite(args.length_penalty):
        print(f"{PROG}: error: --length_penalty must be a finite number, got {args.length_penalty}", file=sys.stderr)
        return 2
    if args.max_len_a is not None and not (math.isfinite(args.max_len_a) and args.max_len_a >= 0):
        print(f"{PROG}: error: --max_len_a must be a finite number >= 0, got {args.max_len_a}", file=sys.stderr)
        return 2
    device_error = check_device(args.device)
    if device_error:
        print(f"{PROG}: error: {device_error}", file=sys.stderr)
        return 2
    try:
        ckpt = _resolve_checkpoint(args.ckpt_path, args.experiment, args.runs_dir)
        model, tok, hp = load_translator(ckpt, args.device)
    except (FileNotFoundError, ValueError) as e:  # CheckpointError, RunLookupError, TranslateError
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 2
    if args.sentences and args.input:
        print(f"{PROG}: error: give sentences or --input, not both", file=sys.stderr)
        return 2
    if args.sentences:
        lines = list(args.sentences)
    else:
        if args.input and args.input != "-":
            try:
                data = Path(args.input).read_bytes()
            except OSError as e:
                print(f"{PROG}: error: cannot read {args.input}: {e.strerror}", file=sys.stderr)
                return 2
        else:
            data = sys.stdin.buffer.read()
        if has_undecodable_bytes(data):
            print(f"{PROG}: note: {args.input or 'standard input'} is not valid {input_encoding(data).upper()}: "
                  "its undecodable bytes were read as U+FFFD (save it as UTF-8)", file=sys.stderr)
        lines = split_lines(data)

    def pick(name: str, default):
        value = getattr(args, name)
        return value if value is not None else hp.get(name, default)

    # The budget floor(a * S) + b output tokens includes EOS, and the shortest source is one token
    # plus its EOS (S = 2): below 2 even that source gets an empty line, and so does every source.
    if math.floor(2 * pick("max_len_a", 1.2)) + pick("max_len_b", 10) < 2:
        print(f"{PROG}: error: --max_len_a {pick('max_len_a', 1.2)} with --max_len_b {pick('max_len_b', 10)} "
              "leaves no room for a word (floor(2a) + b must be >= 2)", file=sys.stderr)
        return 2
    if args.output:  # before the slow part: an unwritable output must not cost the translations
        try:
            check_writable(args.output)
        except OSError as e:
            print(f"{PROG}: error: cannot write {args.output}: {e.strerror}", file=sys.stderr)
            return 2

    hyps = translate_lines(
        model, tok, lines, beam_size=pick("beam_size", 5), length_penalty=pick("length_penalty", 1.0),
        max_len_a=pick("max_len_a", 1.2), max_len_b=pick("max_len_b", 10), batch_size=args.batch_size,
        max_src_tokens=args.max_src_tokens, warn=lambda m: print(f"{PROG}: warning: {m}", file=sys.stderr),
        progress=True, lowercase=hp["lowercase"], bos_id=hp["bos_id"])
    text = "".join(h + "\n" for h in hyps)
    if args.output:  # whole or not at all: a full disk must not leave half a file over the old one
        with atomic_open(args.output, "w", encoding="utf-8") as f:
            f.write(text)
    else:
        sys.stdout.write(text)
        sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
