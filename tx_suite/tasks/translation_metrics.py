"""Corpus-level translation metrics from sacreBLEU (Post 2018, "A Call for Clarity in Reporting BLEU Scores").

All scores are computed on detokenized text with sacreBLEU's own tokenization (``13a``), as the
Multi30k / WMT shared tasks report them:

* ``bleu``: case-sensitive BLEU (Papineni et al. 2002), the standard reported number;
* ``bleu_lc``: lowercased BLEU, closer to papers that report tokenized, lowercased BLEU;
* ``chrf``: character n-gram F-score (Popović 2015), ``chrF2``.
"""

from __future__ import annotations

from collections.abc import Sequence

from sacrebleu.metrics import BLEU, CHRF


def translation_scores(hypotheses: Sequence[str], references: Sequence[str]) -> dict[str, float]:
    """``{"bleu", "bleu_lc", "chrf"}`` in [0, 100] for one reference per hypothesis.

    Raises:
        ValueError: different numbers of hypotheses and references.
    """
    if len(hypotheses) != len(references):
        raise ValueError(f"{len(hypotheses)} hypotheses but {len(references)} references")
    if not hypotheses:
        return {"bleu": 0.0, "bleu_lc": 0.0, "chrf": 0.0}
    refs = [list(references)]
    return {
        "bleu": BLEU().corpus_score(list(hypotheses), refs).score,
        "bleu_lc": BLEU(lowercase=True).corpus_score(list(hypotheses), refs).score,
        "chrf": CHRF().corpus_score(list(hypotheses), refs).score,
    }


def signatures() -> dict[str, str]:
    """sacreBLEU signatures of the three metrics (to record next to reported numbers)."""
    out = {}
    for name, metric in (("bleu", BLEU()), ("bleu_lc", BLEU(lowercase=True)), ("chrf", CHRF())):
        metric.corpus_score(["x"], [["x"]])  # the signature needs the reference count
        out[name] = str(metric.get_signature())
    return out
