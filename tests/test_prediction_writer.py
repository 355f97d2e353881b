"""PredictionWriter's text outputs: every sample -> predictions.txt in dataset order, a subset -> .tsv."""

import types

from tx_suite.tasks.callbacks.prediction_writer import PredictionWriter


def write(tmp_path, batches, indices):
    trainer = types.SimpleNamespace(is_global_zero=True, default_root_dir=str(tmp_path))
    # Lightning passes batch_indices per dataloader, then per batch; predictions per batch for one loader
    PredictionWriter().write_on_epoch_end(trainer, types.SimpleNamespace(), batches, [indices])
    return sorted(p.name for p in tmp_path.iterdir())


def test_every_sample_in_bucketed_order_gives_one_line_per_sample_in_dataset_order(tmp_path):
    # bucketing by length hands the batches over out of dataset order
    batches = [["two", "zero"], ["three  spaced\nover lines", "one"], ["four"]]
    indices = [[2, 0], [3, 1], [4]]
    assert write(tmp_path, batches, indices) == ["predictions.txt"]
    # line n is sample n; a hypothesis with a newline or runs of spaces stays on its own line
    assert (tmp_path / "predictions.txt").read_text(encoding="utf-8") == "zero\none\ntwo\nthree spaced over lines\nfour\n"


def test_a_subset_keeps_each_line_with_its_index(tmp_path):
    # limit_predict_batches: samples 0 and 2 are missing, so line numbers cannot stand for indices
    batches = [["three", "one"], ["four"]]
    assert write(tmp_path, batches, [[3, 1], [4]]) == ["predictions.tsv"]
    assert (tmp_path / "predictions.tsv").read_text(encoding="utf-8") == "1\tone\n3\tthree\n4\tfour\n"
