"""Joint BPE: fixed special ids, exact round trip, unknown characters, on-disk cache."""

import os

import pytest

from tx_suite.data.bpe import BPETokenizer, cache_key
from tx_suite.data.multi30k import read_pair


@pytest.fixture(scope="module")
def corpus():
    de, en = read_pair("train", "de", "en")
    return de[:2000] + en[:2000]


@pytest.fixture(scope="module")
def tok(corpus):
    return BPETokenizer.train(corpus, vocab_size=1500)


def test_special_ids_and_size(tok):
    assert (tok.pad_id, tok.bos_id, tok.eos_id, tok.unk_id) == (0, 1, 2, 3)
    assert tok.tokens([0, 1, 2, 3, 4, 259]) == ["<pad>", "<s>", "</s>", "<unk>", "<0x00>", "<0xFF>"]
    assert tok.vocab_size == 1500


def test_round_trip_on_held_out_sentences(tok):
    de, en = read_pair("val", "de", "en")
    fr, cs = read_pair("val", "fr", "cs")  # languages the model never saw: many unseen characters
    for s in de + en + fr[:200] + cs[:200]:
        assert tok.decode(tok.encode(s)) == s
    # Subwords, not characters: a German sentence costs far fewer tokens than characters.
    assert sum(len(tok.encode(s)) for s in de) < 0.4 * sum(len(s) for s in de)


@pytest.mark.parametrize("text", ["", " ", "  two  spaces ", "tab\there", "Emoji 🤖 中文 Ωmega ÿ",
                                  "<s> </s> <unk> <0x41>", "1999 Menschen, 3.5 m!"])
def test_unusual_text_round_trips_without_unk(tok, text):
    ids = tok.encode(text)
    assert tok.unk_id not in ids
    assert tok.decode(ids) == text


def test_the_meta_space_is_the_documented_exception(tok):
    assert tok.decode(tok.encode("a\u2581b")) == "a b"  # as the encode/decode docstring says


def test_decode_stops_at_eos_and_skips_pad_bos(tok):
    ids = tok.encode("Ein Hund läuft.")
    assert tok.decode([tok.bos_id] + ids + [tok.eos_id] + tok.encode("Müll") + [tok.pad_id]) == "Ein Hund läuft."


def test_cache_is_keyed_by_settings(corpus, tmp_path):
    a = BPETokenizer.load_or_train(corpus, tmp_path, vocab_size=600)
    files = list((tmp_path / "bpe").glob("*.json"))
    assert len(files) == 1
    mask = os.umask(0)
    os.umask(mask)
    assert files[0].stat().st_mode & 0o777 == 0o666 & ~mask  # as open() makes it, not mkstemp's 0600
    b = BPETokenizer.load_or_train(corpus, tmp_path, vocab_size=600)  # read back, not retrained
    assert b.to_str() == a.to_str()
    BPETokenizer.load_or_train(corpus, tmp_path, vocab_size=700)
    assert len(list((tmp_path / "bpe").glob("*.json"))) == 2
    assert cache_key(corpus, 600, 2) != cache_key(corpus[:-1], 600, 2)  # text is part of the key
    BPETokenizer.from_str(a.to_str())  # checkpoint form loads


def test_a_failed_save_keeps_the_cached_file_and_leaves_no_temporary(tok, tmp_path, monkeypatch):
    path = tmp_path / "bpe.json"
    tok.save(path)
    before = path.read_text(encoding="utf-8")

    def serialisation_fails():
        raise RuntimeError("serialisation failed")

    monkeypatch.setattr(tok, "to_str", serialisation_fails)
    with pytest.raises(RuntimeError, match="serialisation failed"):
        tok.save(path)
    assert [p.name for p in tmp_path.iterdir()] == ["bpe.json"]  # no stray .tmp next to the cache
    assert path.read_text(encoding="utf-8") == before


def test_too_small_vocab_is_rejected(corpus):
    with pytest.raises(ValueError, match="vocab_size must be > 260"):
        BPETokenizer.train(corpus, vocab_size=200)


def test_cache_key_separates_texts_and_settings():
    # Keys are over the recipe, the settings and the text: no two different inputs may collide
    # by concatenation ("ab" + "c" vs "a" + "bc"; vocabulary 600 / min_frequency 12 vs 6001 / 2).
    assert cache_key(["ab", "c"], 600, 2) != cache_key(["a", "bc"], 600, 2)
    assert cache_key(["a b"], 600, 12) != cache_key(["a b"], 6001, 2)
    assert cache_key(["a b"], 600, 2) == cache_key(["a b"], 600, 2) and len(cache_key(["a b"], 600, 2)) == 12
    # Texts are separated by newlines in the hash: a text holding one is not two texts.
    assert cache_key(["a\nb"], 600, 2) != cache_key(["a", "b"], 600, 2)
    assert cache_key(["a\n", "b"], 600, 2) != cache_key(["a", "\nb"], 600, 2)
    assert cache_key(["a b"], 600, 2) == "c113b081075a"  # unchanged for newline-free texts: caches stay valid


def test_min_frequency_shapes_the_model_and_its_cache_entry(corpus, tmp_path):
    assert cache_key(corpus, 600, 2) != cache_key(corpus, 600, 3)
    a = BPETokenizer.load_or_train(corpus, tmp_path, vocab_size=600, min_frequency=2)
    b = BPETokenizer.load_or_train(corpus, tmp_path, vocab_size=600, min_frequency=1000)
    assert len(list((tmp_path / "bpe").glob("*.json"))) == 2  # not the cached min_frequency=2 model
    assert a.vocab_size == 600 and b.vocab_size < 600  # few pairs occur 1000 times: fewer merges


def test_same_as_compares_the_vocabulary_not_its_size(corpus):
    de, en = corpus[:2000], corpus[2000:]
    a, b = BPETokenizer.train(de, vocab_size=500), BPETokenizer.train(en, vocab_size=500)
    assert a.vocab_size == b.vocab_size == 500
    assert not a.same_as(b) and a.same_as(BPETokenizer.from_str(a.to_str()))


def test_a_damaged_cache_entry_is_rebuilt(corpus, tmp_path):
    a = BPETokenizer.load_or_train(corpus, tmp_path, vocab_size=400)
    (path,) = (tmp_path / "bpe").glob("*.json")
    path.write_text('{"version": "1.0", "model": {trunc')  # a cache file cut short
    b = BPETokenizer.load_or_train(corpus, tmp_path, vocab_size=400)
    assert b.to_str() == a.to_str()
    assert BPETokenizer.from_file(path).to_str() == a.to_str()  # and the cache file is repaired


def test_a_tokenizer_without_byte_fallback_tokens_is_refused():
    from tokenizers import Tokenizer, models

    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": 3, "a": 4, "b": 5}
    plain = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    with pytest.raises(ValueError, match="byte-fallback tokens missing"):
        BPETokenizer(plain)
    with pytest.raises(ValueError, match="byte-fallback tokens missing"):
        BPETokenizer.from_str(plain.to_str())
