"""Decoding speed on Multi30k test_2016_flickr: greedy vs beam search, KV-cached vs uncached.

For a trained translation checkpoint, translates the test sources in length-sorted batches and
reports sentences per second and BLEU for each decoder. Cached and uncached decoding must give the
same output (checked); their speed ratio is the gain of the core's KV cache. Prints JSON and a
short table.

    flock /tmp/tx-cpu.lock python benchmarks/translation_decoding.py --ckpt runs/.../averaged.ckpt
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch
from _common import finite_floats, nonnegative_int, positive_int, positive_ints

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tx_suite.cli.translate import load_translator  # noqa: E402
from tx_suite.data.bpe import BOS_ID, EOS_ID, PAD_ID  # noqa: E402
from tx_suite.data.multi30k import read_pair  # noqa: E402
from tx_suite.data.translation_dataset import encode_source, pad_batch  # noqa: E402
from tx_suite.decoding.beam_search import beam_search  # noqa: E402
from tx_suite.tasks.translation_metrics import translation_scores  # noqa: E402
from tx_suite.utils.checkpoint import load_checkpoint  # noqa: E402


def decode_all(model, tok, sources, beam, use_cache, batch_size, lp, a, b, bos_id=BOS_ID):
    srcs = encode_source(tok, sources)
    order = sorted(range(len(srcs)), key=lambda i: len(srcs[i]))
    out = [None] * len(srcs)
    t0 = time.perf_counter()
    for s in range(0, len(order), batch_size):
        idx = order[s: s + batch_size]
        src, mask = pad_batch([srcs[i] for i in idx])
        hyp = beam_search(model, src, mask, bos_id, EOS_ID, PAD_ID, beam_size=beam, length_penalty=lp,
                          max_len_a=a, max_len_b=b, use_cache=use_cache)
        for i, h in zip(idx, hyp):
            out[i] = h[h != PAD_ID].tolist()
    return out, time.perf_counter() - t0


def checkpoint_languages(path: str) -> tuple[str, str]:
    """The language pair the checkpoint's data module was trained on (saved by Lightning).

    A second read of the file (``load_translator`` keeps only the model's hyper-parameters); once,
    at start-up.
    """
    ckpt = load_checkpoint(path)
    dm = ckpt.get("datamodule_hyper_parameters") or {}
    if "src_lang" not in dm:
        # Checkpoints written without a data module do not name their pair: Multi30k's default.
        return "de", "en"
    return dm["src_lang"], dm["tgt_lang"]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ckpt", required=True)
    ap.add_argument("--split", default="test_2016_flickr")
    ap.add_argument("--src_lang", default=None, help="default: the checkpoint's data module's")
    ap.add_argument("--tgt_lang", default=None)
    ap.add_argument("--batch_size", type=positive_int, default=64)
    ap.add_argument("--beams", type=positive_ints, default=[1, 5], help="comma-separated beam sizes (1,5)")
    ap.add_argument("--uncached_n", type=nonnegative_int, default=200,
                    help="sentences for the (slow) uncached comparison; 0 skips it")
    ap.add_argument("--length_penalties", type=finite_floats, default=None,
                    help="comma-separated length penalties to compare (default: the checkpoint's)")
    ap.add_argument("--threads", type=positive_int, default=None,
                    help="torch CPU threads (1 is far faster when other processes share the cores)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.set_grad_enabled(False)
    model, tok, hp = load_translator(args.ckpt)
    src_lang, tgt_lang = checkpoint_languages(args.ckpt)
    src_lang, tgt_lang = args.src_lang or src_lang, args.tgt_lang or tgt_lang
    src, ref = read_pair(args.split, src_lang, tgt_lang)
    lp, a, b = hp.get("length_penalty", 1.0), hp.get("max_len_a", 1.2), hp.get("max_len_b", 10)
    # Untimed warm-up: otherwise the first row (greedy) alone paid the first-call costs (allocator,
    # kernel selection), which lowered beam's speed_vs_greedy in the runs recorded before 12-06.
    decode_all(model, tok, src[: args.batch_size], 1, True, args.batch_size, lp, a, b, hp["bos_id"])
    rows = []
    lps = args.length_penalties or [lp]
    for beam in args.beams:
        for pen in lps if beam > 1 else [lp]:
            hyp, dt = decode_all(model, tok, src, beam, True, args.batch_size, pen, a, b, hp["bos_id"])
            scores = translation_scores(tok.decode_batch(hyp), ref)
            row = {"beam": beam, "length_penalty": pen, "sentences": len(src), "sent_per_s": round(len(src) / dt, 1),
                   "bleu": round(scores["bleu"], 2), "bleu_lc": round(scores["bleu_lc"], 2),
                   "chrf": round(scores["chrf"], 2)}
            n = min(args.uncached_n, len(src))  # the rates divide by the sentences decoded
            if n > 0:
                sub_c, dt_c = decode_all(model, tok, src[:n], beam, True, args.batch_size, pen, a, b, hp["bos_id"])
                sub_u, dt_u = decode_all(model, tok, src[:n], beam, False, args.batch_size, pen, a, b, hp["bos_id"])
                row.update({"uncached_subset": n, "cached_sent_per_s_subset": round(n / dt_c, 1),
                            "uncached_sent_per_s_subset": round(n / dt_u, 1), "cache_speedup": round(dt_u / dt_c, 2),
                            "cached_equals_uncached": sub_c == sub_u})
            rows.append(row)
    greedy = next((r for r in rows if r["beam"] == 1), None)
    for r in rows:
        if greedy:
            r["speed_vs_greedy"] = round(r["sent_per_s"] / greedy["sent_per_s"], 3)
    result = {"ckpt": args.ckpt, "pair": f"{src_lang}-{tgt_lang}", "split": args.split, "batch_size": args.batch_size, "threads": torch.get_num_threads(),
              "cpus": os.cpu_count(), "length_penalty": lp, "rows": rows}
    print(json.dumps(result, indent=1))
    print(f"\n{'beam':>4} {'lenpen':>6} {'sent/s':>7} {'vs greedy':>9} {'BLEU':>6} {'BLEU lc':>7} "
          f"{'cache speed-up':>14} {'same output':>11}")
    for r in rows:
        speedup = f"{r['cache_speedup']:.2f}x" if "cache_speedup" in r else "-"
        print(f"{r['beam']:>4} {r['length_penalty']:>6.2f} {r['sent_per_s']:>7.1f} {r.get('speed_vs_greedy', 1):>9.2f} "
              f"{r['bleu']:>6.2f} {r['bleu_lc']:>7.2f} {speedup:>14} {str(r.get('cached_equals_uncached', '-')):>11}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
