"""Multi30k files, checksums, offline behaviour, bucketing and the datamodule on real data."""

import shutil
import time
import urllib.error

import pytest
import torch

from tx_suite.data import multi30k
from tx_suite.data.bucketing import TokenBudgetBatchSampler
from tx_suite.data.checksums import ChecksumError
from tx_suite.data.multi30k import Multi30kError, read_pair, split_path
from tx_suite.data.multi30k_datamodule import Multi30kDataModule
from tx_suite.data.translation_dataset import TranslationDataset, collate_translation, encode_source


@pytest.fixture
def offline(monkeypatch):
    """Any network access fails at once, as on a machine without a connection."""
    def refuse(*args, **kwargs):
        raise urllib.error.URLError("network is unreachable (simulated)")
    monkeypatch.setattr(multi30k.urllib.request, "urlopen", refuse)


def test_bundled_pairs_are_aligned_real_sentences():
    de, en = read_pair("val", "de", "en")
    assert len(de) == len(en) == 1014
    assert de[0] == "Eine Gruppe von Männern lädt Baumwolle auf einen Lastwagen"
    assert en[0] == "A group of men are loading cotton onto a truck"
    fr, cs = read_pair("test_2016_flickr", "fr", "cs")
    assert len(fr) == len(cs) == 1000


def test_corrupt_file_is_named(tmp_path):
    rel = "multi30k/task1/raw/val.de.gz"
    (tmp_path / rel).parent.mkdir(parents=True)
    shutil.copy(multi30k.default_data_dir() / rel, tmp_path / rel)
    assert split_path("val", "de", data_dir=tmp_path) == tmp_path / rel  # intact copy passes
    with open(tmp_path / rel, "r+b") as f:
        f.seek(100)
        f.write(b"\x00\x01\x02")
    with pytest.raises(ChecksumError, match="val.de.gz") as info:
        read_pair("val", "de", "en", data_dir=tmp_path)
    assert "git checkout" not in str(info.value)  # would restore data/, not this directory


def test_unbundled_split_offline_fails_clearly(tmp_path, offline):
    t0 = time.monotonic()
    with pytest.raises(Multi30kError, match=r"test_2018_flickr\.de is not bundled.*offline"):
        split_path("test_2018_flickr", "de", cache_dir=tmp_path)
    assert time.monotonic() - t0 < 2
    with pytest.raises(Multi30kError, match="download=False"):
        split_path("test_2017_mscoco", "en", cache_dir=tmp_path, download=False)
    # Czech has no bundled test_2017_flickr: the advice lists what exists for the language
    with pytest.raises(Multi30kError, match=r"Bundled cs splits: train, val, test_2016_flickr;"):
        split_path("test_2017_flickr", "cs", cache_dir=tmp_path)
    # A wrong data_dir is named as such, with where the bundled copy is
    with pytest.raises(Multi30kError, match=r"Bundled de splits: none, .*wrong has no multi30k/task1/raw/ "
                                            r"\(the repository's copy is under .*data\)"):
        split_path("train", "de", data_dir=tmp_path / "wrong", cache_dir=tmp_path)
    assert issubclass(Multi30kError, FileNotFoundError)  # the CLI's bad-input class: one line, exit 2


def test_truncated_fetched_split_is_named(tmp_path):
    import gzip

    from tx_suite.data.multi30k import read_lines

    raw = tmp_path / "multi30k" / "task1" / "raw"
    raw.mkdir(parents=True)
    data = gzip.compress("Ein Hund läuft.\n".encode() * 50)
    (raw / "test_2018_flickr.de.gz").write_bytes(data[: len(data) // 2])  # no checksum is recorded for it
    with pytest.raises(Multi30kError, match=r"cannot read .*test_2018_flickr\.de\.gz .*delete it"):
        read_lines(split_path("test_2018_flickr", "de", cache_dir=tmp_path))



def test_fetched_split_with_crlf_endings_reads_as_lines(tmp_path):
    import gzip

    from tx_suite.data.multi30k import read_lines

    raw = tmp_path / "multi30k" / "task1" / "raw"
    raw.mkdir(parents=True)
    (raw / "test_2018_flickr.de.gz").write_bytes(gzip.compress("Ein Hund\r\nzwei\u2028Katzen\r\n".encode()))
    assert read_lines(split_path("test_2018_flickr", "de", cache_dir=tmp_path)) == ["Ein Hund", "zwei\u2028Katzen"]

def test_hanging_network_times_out(tmp_path, monkeypatch):
    monkeypatch.setattr(multi30k.urllib.request, "urlopen", lambda *a, **k: time.sleep(30))
    t0 = time.monotonic()
    with pytest.raises(Multi30kError, match="timed out"):
        split_path("test_2018_flickr", "fr", cache_dir=tmp_path, timeout=0.3)
    assert time.monotonic() - t0 < 2


def test_bad_names_list_the_choices():
    with pytest.raises(ValueError, match="official splits: train, val"):
        split_path("tset_2016", "de")
    with pytest.raises(ValueError, match="en, de, fr, cs"):
        split_path("val", "es")
    with pytest.raises(ValueError, match="tgt_lang are both"):
        Multi30kDataModule(src_lang="de", tgt_lang="de")
    with pytest.raises(ValueError, match="unknown Multi30k split"):
        Multi30kDataModule(test_split="test2016")  # fails at construction, before any training


@pytest.mark.parametrize("kwargs, message", [
    (dict(train_limit=-5), "train_limit must be >= 1"),  # sliced off the last 5 pairs
    (dict(train_limit=0), "train_limit must be >= 1"),  # learned a BPE of bytes only
    (dict(vocab_size=100), "vocab_size must be > 260"),  # failed only when the BPE was built
    (dict(max_len=0, max_tokens=64), "max_len must be >= 1"),
    (dict(num_workers=-1), "num_workers must be >= 0"),
])
def test_bad_sizes_fail_at_construction(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Multi30kDataModule(**kwargs)


def test_max_len_that_drops_every_pair_is_an_error(tmp_path):
    # fit used to end with "no training batches" and exit status 0
    dm = Multi30kDataModule(train_limit=200, vocab_size=400, max_len=2, cache_dir=str(tmp_path))
    with pytest.raises(ValueError, match="max_len 2 drops all 200 training pairs"):
        dm.setup("fit")


def test_a_val_split_that_is_also_the_train_split_is_evaluated_whole(tmp_path):
    # the datasets were cached by split name only: validation got the training set, cut to
    # train_limit pairs and filtered by max_len (2 of the 1014 pairs here)
    dm = Multi30kDataModule(train_split="val", val_split="val", train_limit=100, vocab_size=400, max_len=20,
                            cache_dir=str(tmp_path))
    dm.setup("fit")
    train = dm.train_dataloader().dataset
    assert len(dm.val_dataloader().dataset) == 1014
    assert dm.dataset("val", train=False) is dm.val_dataloader().dataset
    assert len(train) + train.n_dropped == 100 and len(train) < 100


def test_token_budget_batches_cover_every_index_once():
    sizes = torch.randint(1, 40, (500,)).tolist() + [100]  # one pair longer than the budget
    s = TokenBudgetBatchSampler(sizes, max_tokens=64, shuffle=True, seed=1)
    epochs = []
    for epoch in range(2):
        s.set_epoch(epoch)
        batches = list(s)
        assert len(batches) == len(s)
        assert sorted(i for b in batches for i in b) == list(range(len(sizes)))
        for b in batches:
            assert len(b) == 1 or len(b) * max(sizes[i] for i in b) <= 64
        epochs.append(batches)
    assert epochs[0] != epochs[1]  # reshuffled between epochs
    # Bucketing keeps padding low compared with random batches of the same count.
    waste = sum(len(b) * max(sizes[i] for i in b) - sum(sizes[i] for i in b) for b in epochs[0])
    assert waste < 0.1 * sum(sizes)
    # The batches come in random order, not by length (a run would see short sentences first).
    longest = [max(sizes[i] for i in b) for b in epochs[0]]
    assert longest != sorted(longest) and longest != sorted(longest, reverse=True)
    # max_sentences caps a batch even when the token budget would allow more.
    capped = list(TokenBudgetBatchSampler([1] * 5, max_tokens=100, max_sentences=2, shuffle=False))
    assert sorted(len(b) for b in capped) == [1, 2, 2]


def test_token_budget_batches_fill_the_budget_and_reshuffle_ties():
    # As many sentences as fit: 4 * 16 = 64 padded tokens is within a budget of 64.
    assert list(TokenBudgetBatchSampler([16] * 8, max_tokens=64, shuffle=False)) == [[0, 1, 2, 3], [4, 5, 6, 7]]
    # Sentences of equal size are grouped differently each epoch, not only the batch order.
    s = TokenBudgetBatchSampler([5] * 40, max_tokens=50, seed=0)
    groups = []
    for epoch in range(2):
        s.set_epoch(epoch)
        groups.append({frozenset(b) for b in s})
    assert groups[0] != groups[1]


class _WordTokenizer:
    """One id per word (4 + its length), enough for TranslationDataset and encode_source."""

    def encode_batch(self, texts):
        return [[4 + len(w) for w in t.split()] for t in texts]


def test_max_len_counts_eos_and_sizes_are_the_padded_width():
    src, tgt = ["a b", "a b c", "a", "a"], ["a", "a", "a b", "a b c"]
    ds = TranslationDataset(src, tgt, _WordTokenizer(), max_len=3)  # 2 words + EOS (or BOS) fit, 3 do not
    assert ds.index == [0, 2] and ds.n_dropped == 2 and ds.tgt_text == ["a", "a b"]
    full = TranslationDataset(src, tgt, _WordTokenizer())
    for i, size in enumerate(full.sizes()):  # what the token budget counts is the padded batch width
        b = collate_translation([full[i]])
        assert size == max(b["src"].size(1), b["tgt_in"].size(1), b["tgt_out"].size(1))
    out = encode_source(_WordTokenizer(), ["a bb ccc dddd", "a", "a bb ccc", "a bb"], max_len=3)
    # truncated to max_len, EOS kept: 3 words + EOS are one too many, 2 + EOS fit exactly
    assert [o.tolist() for o in out] == [[5, 6, 2], [5, 2], [5, 6, 2], [5, 6, 2]]


@pytest.mark.parametrize("world", [2, 3])
def test_token_budget_batches_shard_over_ranks(world):
    """Under DDP every rank takes every N-th batch of the same epoch list, padded so all ranks run
    the same number of steps; together they cover every batch of one process."""
    sizes = torch.randint(1, 40, (500,), generator=torch.Generator().manual_seed(0)).tolist()  # 215 batches
    one = TokenBudgetBatchSampler(sizes, max_tokens=64, seed=1, num_replicas=1, rank=0)
    ranks = [TokenBudgetBatchSampler(sizes, max_tokens=64, seed=1, num_replicas=world, rank=r) for r in range(world)]
    for s in (one, *ranks):
        s.set_epoch(3)
    full = list(one)
    shards = [list(s) for s in ranks]
    n = -(-len(full) // world)
    assert [len(x) for x in shards] == [len(s) for s in ranks] == [n] * world
    assert len(full) % world != 0  # the padding is exercised
    # Global step k of `world` ranks = batches k*world ... k*world + world - 1 of one process.
    interleaved = [shards[r][k] for k in range(n) for r in range(world)]
    assert interleaved[: len(full)] == full
    assert interleaved[len(full):] == full[: n * world - len(full)]
    with pytest.raises(ValueError, match="rank 2 is not in"):
        TokenBudgetBatchSampler(sizes, max_tokens=64, num_replicas=2, rank=2)


def test_token_budget_batches_pad_when_fewer_batches_than_ranks():
    s = [TokenBudgetBatchSampler([5, 5, 5], max_tokens=64, shuffle=False, num_replicas=4, rank=r) for r in range(4)]
    assert [list(x) for x in s] == [[[0, 1, 2]]] * 4


@pytest.fixture(scope="module")
def dm(tmp_path_factory):
    dm = Multi30kDataModule(train_limit=3000, vocab_size=1200, max_tokens=512, max_len=64,
                            cache_dir=str(tmp_path_factory.mktemp("cache")))
    dm.prepare_data()
    dm.setup("fit")
    return dm


def test_datamodule_batches(dm):
    assert (dm.pad_id, dm.bos_id, dm.eos_id, dm.unk_id) == (0, 1, 2, 3)
    assert dm.vocab_size == 1200
    seen = 0
    for batch in dm.train_dataloader():
        src, tgt_in, tgt_out = batch["src"], batch["tgt_in"], batch["tgt_out"]
        assert src.numel() <= 512 and tgt_in.numel() <= 512
        assert torch.equal(batch["src_key_padding_mask"], src == dm.pad_id)
        assert torch.equal(batch["tgt_key_padding_mask"], tgt_in == dm.pad_id)
        assert (tgt_in[:, 0] == dm.bos_id).all()
        n_tgt = (~batch["tgt_key_padding_mask"]).sum(1)
        n_src = (~batch["src_key_padding_mask"]).sum(1)
        assert (tgt_out.gather(1, (n_tgt - 1)[:, None]) == dm.eos_id).all()
        assert (src.gather(1, (n_src - 1)[:, None]) == dm.eos_id).all()
        keep = ~batch["tgt_key_padding_mask"][:, 1:]
        assert torch.equal(tgt_in[:, 1:][keep], tgt_out[:, :-1][keep])  # shifted by one
        assert dm.tokenizer.decode(tgt_out[0]) == batch["tgt_text"][0]
        seen += len(src)
    assert seen == len(dm.dataset("train")) > 2900
    val = next(iter(dm.val_dataloader()))
    assert dm.tokenizer.decode(val["src"][0]) == val["src_text"][0]


def test_lowercase_option_lowercases_every_split_and_its_bpe(dm, tmp_path):
    lc = Multi30kDataModule(train_limit=3000, vocab_size=1200, max_tokens=512, max_len=64,
                            cache_dir=str(tmp_path), lowercase=True)
    lc.setup("fit")
    val_cased, val_lc = dm.dataset("val"), lc.dataset("val")
    assert val_lc.src_text == [s.lower() for s in val_cased.src_text] != val_cased.src_text
    assert val_lc.tgt_text == [t.lower() for t in val_cased.tgt_text]
    vocab = [lc.tokenizer.id_to_token(i) for i in range(lc.vocab_size)]
    assert not any(c.isupper() for v in vocab if not v.startswith(("<", "[")) for c in v)
    assert any(c.isupper() for i in range(dm.vocab_size) for c in dm.tokenizer.id_to_token(i))


def test_fetch_asks_for_the_split_and_language_of_the_canonical_url(tmp_path, monkeypatch):
    asked = []

    def refuse(url, *args, **kwargs):
        asked.append(url)
        raise urllib.error.URLError("offline (simulated)")
    monkeypatch.setattr(multi30k.urllib.request, "urlopen", refuse)
    with pytest.raises(Multi30kError):
        split_path("test_2018_flickr", "de", cache_dir=tmp_path)
    assert asked == ["https://raw.githubusercontent.com/multi30k/dataset/master/data/task1/raw/test_2018_flickr.de.gz"]


def test_prepare_data_checks_the_test_split_before_training(tmp_path):
    # an unbundled test split that cannot be had must fail in prepare_data, not after training
    dm = Multi30kDataModule(test_split="test_2018_flickr", download=False, train_limit=200, vocab_size=400,
                            cache_dir=str(tmp_path))
    with pytest.raises(Multi30kError, match=r"test_2018_flickr\.(de|en) is not bundled"):
        dm.prepare_data()


def test_datamodule_splits_sides_and_budgets(dm, tmp_path):
    """Each loader reads its own split, source = src_lang, target = tgt_lang, the training slice
    stays aligned, the BPE is learned on both sides, and evaluation uses eval_max_tokens."""
    de, en = read_pair("val", "de", "en")
    val = dm.dataset("val")
    assert val.src_text[0] == de[0] and val.tgt_text[0] == en[0]  # de -> en, not reversed
    assert sorted(i for b in dm.val_dataloader() for i in b["index"].tolist()) == list(range(1014))
    dm.setup("test")
    assert sorted(i for b in dm.test_dataloader() for i in b["index"].tolist()) == list(range(1000))
    train, (tde, ten) = dm.dataset("train"), read_pair("train", "de", "en")
    pairs = set(zip(tde[:3000], ten[:3000]))
    assert all((s, t) in pairs for s, t in zip(train.src_text, train.tgt_text))
    # a joint BPE: frequent words of either language are single tokens
    assert all(len(dm.tokenizer.encode(w)) == 1 for w in ("Mann", "einem", "man", "the"))
    small = Multi30kDataModule(train_limit=3000, vocab_size=1200, max_tokens=512, eval_max_tokens=128,
                               max_len=64, cache_dir=str(dm.cache_dir))
    small.setup("validate")
    sizes = [b["src"].numel() for b in small.val_dataloader()]
    assert max(sizes) <= 128 < max(b["src"].numel() for b in dm.val_dataloader())


def test_a_fetch_that_is_not_gzip_is_refused_and_not_cached(tmp_path, monkeypatch):
    import io

    monkeypatch.setattr(multi30k.urllib.request, "urlopen",
                        lambda *a, **k: io.BytesIO(b"<html>captive portal</html>"))
    with pytest.raises(Multi30kError, match="did not return a gzip file"):
        split_path("test_2018_flickr", "de", cache_dir=tmp_path)
    assert not list(tmp_path.rglob("*.gz")) and not list(tmp_path.rglob("*.tmp"))


def test_a_fetched_file_with_a_wrong_checksum_is_never_used(tmp_path, monkeypatch):
    """A bundled split missing from data_dir was fetched and trained on unverified; only the next
    run's checksum caught the substitute."""
    import gzip
    import io

    monkeypatch.setattr(multi30k.urllib.request, "urlopen",
                        lambda *a, **k: io.BytesIO(gzip.compress(b"Tampered line\n" * 3)))
    with pytest.raises(Multi30kError, match="differs from the recorded"):
        split_path("train", "de", data_dir=tmp_path)
    assert not list(tmp_path.rglob("*.gz")) and not list(tmp_path.rglob("*.tmp"))


def test_only_http_404_is_called_a_missing_split(tmp_path, monkeypatch):
    def unavailable(url, *args, **kwargs):
        raise urllib.error.HTTPError(url, 503, "Service Unavailable", None, None)
    monkeypatch.setattr(multi30k.urllib.request, "urlopen", unavailable)
    with pytest.raises(Multi30kError, match="HTTP 503 Service Unavailable") as err:
        split_path("test_2018_flickr", "de", cache_dir=tmp_path)
    assert "does not exist" not in str(err.value)


def test_a_relative_data_dir_is_the_repositorys_from_any_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no ./data here: "data" is the repository's, as for the vision data
    dm = Multi30kDataModule(data_dir="data", download=False, cache_dir=str(tmp_path / "cache"))
    assert (dm.data_dir / "multi30k" / "task1" / "raw" / "val.de.gz").is_file()
    assert split_path("val", "de", data_dir="data", download=False) == dm.data_dir / "multi30k/task1/raw/val.de.gz"


def test_split_files_of_different_lengths_are_refused(monkeypatch):
    """A line missing in one language would shift every later pair by one sentence."""
    lines = {"de": ["Ein Hund.", "Eine Katze.", "Ein Haus."], "en": ["A dog.", "A cat."]}
    monkeypatch.setattr(multi30k, "read_split", lambda split, lang, **kw: lines[lang])
    with pytest.raises(ValueError, match="Multi30k val: de has 3 lines but en has 2"):
        read_pair("val", "de", "en")


def test_the_data_seed_sets_the_batch_order(dm):
    def first_batch():
        return next(iter(dm.train_dataloader()))["tgt_text"]

    seed = dm.hparams.seed
    before = first_batch()
    try:
        dm.hparams.seed = seed + 1
        other = first_batch()
    finally:
        dm.hparams.seed = seed
    assert first_batch() == before != other
