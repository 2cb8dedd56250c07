"""GPT-2's byte-level BPE: ids equal to tiktoken's on any string (the real
vocabulary from ../shared), decoding exact, the cache bounded."""

import base64
import json
import random

import pytest

from picogpt2.encoder import (
    UNICODE_17_DIGITS,
    UNICODE_17_LETTERS,
    Encoder,
    UnknownTokenError,
    load_encoder,
)
from picogpt2.weights.vocabulary import EncoderFileError

KNOWN = {
    "Hello my name is": [15496, 616, 1438, 318],
    "HELLO'S don't": [13909, 3069, 46, 6, 50, 836, 470],
    "Alan Turing theorized that computers would one day become": [
        36235,
        39141,
        18765,
        1143,
        326,
        9061,
        561,
        530,
        1110,
        1716,
    ],
    "Hello!! I'm Andrej Karpathy. It's 2022. w00t :D 🤗": [
        15496,
        3228,
        314,
        1101,
        10948,
        73,
        509,
        5117,
        10036,
        13,
        632,
        338,
        33160,
        13,
        266,
        405,
        83,
        1058,
        35,
        12520,
        97,
        245,
    ],
}

# Hand-picked hard cases: every kind of whitespace run, contractions in both
# cases, combining marks, emoji sequences, controls, digits, scripts.
HARD = [
    "",
    " ",
    "  ",
    "a  b",
    "a \n b",
    "trailing   ",
    "\r\n\r\n",
    "\t\tx",
    "x\t ",
    "\xa0non\xa0breaking\xa0",
    "ideo\u3000graphic\u3000\u3000space",
    "\u2028\u2029\x85",
    "'s 'S 't 'T 're 'RE 've 'll 'LL 'd 'm 'M",
    "don't DON'T we'Re I'M",
    "e\u0301 a\u0308\u0301 \u0915\u094d\u0937",
    "👨‍👩‍👧‍👦 🏳️‍🌈 👍🏽 🇫🇷",
    "\x00\x01\x1b[31mred\x1b[0m\x7f",
    "\x1c\x1d\x1e\x1f",
    "1234567890 ١٢٣ ⅷ ½",
    "Привет мир",
    "你好，世界",
    "مرحبا بالعالم",
    "𝔘𝔫𝔦𝔠𝔬𝔡𝔢",
    "\ufeffBOM",
    "def f(x):\n    return x**2  # square\n",
]


def random_string(rng: random.Random) -> str:
    out = []
    for _ in range(rng.randint(0, 24)):
        r = rng.random()
        if r < 0.3:
            out.append(rng.choice(" \t\n\r\xa0\u3000'sSdDtTlLvVeErRmM"))
        elif r < 0.5:
            out.append(chr(rng.randint(0, 0x7F)))
        elif r < 0.8:
            out.append(chr(rng.randint(0x80, 0x2FFF)))
        else:
            c = rng.randint(0, 0x10FFFF)
            out.append(chr(c) if not 0xD800 <= c < 0xE000 else "\ufffd")
    return "".join(out)


@pytest.mark.parametrize("text", list(KNOWN))
def test_known_answers(real_encoder, text):
    assert real_encoder.encode(text) == KNOWN[text]
    assert real_encoder.decode(KNOWN[text]) == text


def test_vocabulary_facts(real_encoder):
    assert real_encoder.n_vocab == 50257
    assert real_encoder.eot_token == 50256


def test_endoftext_is_ordinary_text_by_default(real_encoder):
    ids = real_encoder.encode("<|endoftext|>")
    assert len(ids) == 7 and 50256 not in ids
    assert real_encoder.decode(ids) == "<|endoftext|>"


def test_endoftext_maps_to_its_id_when_allowed(real_encoder):
    enc = real_encoder
    assert enc.encode("<|endoftext|>", allowed_special="all") == [50256]
    assert enc.encode("a<|endoftext|>b", allowed_special={"<|endoftext|>"}) == [
        *enc.encode("a"),
        50256,
        *enc.encode("b"),
    ]
    assert enc.decode([50256]) == "<|endoftext|>"


@pytest.mark.parametrize("text", HARD)
def test_hard_cases_round_trip(real_encoder, text):
    ids = real_encoder.encode(text)
    assert real_encoder.decode(ids) == text
    assert real_encoder.decode_bytes(ids) == text.encode("utf-8")


def test_fuzz_round_trip(real_encoder):
    rng = random.Random(1234)
    for _ in range(3000):
        text = random_string(rng)
        ids = real_encoder.encode(text)
        assert real_encoder.decode_bytes(ids) == text.encode("utf-8"), repr(text)
        assert real_encoder.decode(ids) == text


def test_lone_surrogates_become_replacement_characters(real_encoder):
    enc = real_encoder
    assert enc.encode("a\ud800b") == enc.encode("a\ufffdb")
    # A pair written as two code units is joined, as tiktoken does.
    assert enc.encode("\ud83d\ude00") == enc.encode("😀")


def test_invalid_utf8_decodes_to_replacement_character(real_encoder):
    # 12520 is a space and the first two bytes of a four-byte emoji.
    assert real_encoder.decode_bytes([12520]) == b" \xf0\x9f"
    assert real_encoder.decode([12520]) == " \ufffd"


def test_decoding_an_id_outside_the_vocabulary_says_which():
    encoder = Encoder({b"a": 0, b"<|endoftext|>": 1}, [])
    assert encoder.decode([0, 0, 1]) == "aa<|endoftext|>"
    with pytest.raises(
        UnknownTokenError, match=r"token id 7 is not in the vocabulary \(ids 0 to 1\)"
    ):
        encoder.decode([0, 7])


def test_stream_decoder_never_splits_a_character(real_encoder):
    ids = real_encoder.encode("ok 🤗 done")
    stream = real_encoder.stream_decoder()
    pieces = [stream.feed([i]) for i in ids] + [stream.flush()]
    assert "".join(pieces) == "ok 🤗 done"
    assert all("\ufffd" not in p for p in pieces)
    assert "🤗" in pieces  # released whole, once its last byte arrived


def test_word_cache_is_bounded(real_dir):
    enc = load_encoder(real_dir, cache_size=100)
    text = " ".join(f"word{i}x" for i in range(5000))
    assert enc.decode(enc.encode(text)) == text
    assert len(enc._cache) <= 100


def write_vocab(folder, encoder_json, vocab_bpe):
    (folder / "encoder.json").write_text(encoder_json, encoding="utf-8")
    (folder / "vocab.bpe").write_text(vocab_bpe, encoding="utf-8")


def test_missing_file_is_named(tmp_path):
    with pytest.raises(EncoderFileError, match="encoder.json"):
        load_encoder(tmp_path)


def test_malformed_json_is_named(tmp_path):
    write_vocab(tmp_path, "{not json", "#version: 0.2\n")
    with pytest.raises(EncoderFileError, match=r"encoder\.json.*not valid JSON"):
        load_encoder(tmp_path)


def test_malformed_merge_line_is_named(tmp_path):
    vocab = {chr(c): i for i, c in enumerate(range(33, 127))}
    vocab["<|endoftext|>"] = len(vocab)
    write_vocab(tmp_path, json.dumps(vocab), "#version: 0.2\na b c\n")
    with pytest.raises(EncoderFileError, match=r"vocab\.bpe: line 2"):
        load_encoder(tmp_path)


def test_merge_must_make_a_known_token(tmp_path):
    vocab = {chr(c): i for i, c in enumerate(range(33, 127))}
    vocab["<|endoftext|>"] = len(vocab)
    write_vocab(tmp_path, json.dumps(vocab), "#version: 0.2\na b\n")
    with pytest.raises(EncoderFileError, match="missing from"):
        load_encoder(tmp_path)


# Parity with tiktoken, when installed. The tests above run everywhere.


def expand(ranges: str) -> list[str]:
    chars, i = [], 0
    while i < len(ranges):
        if i + 2 < len(ranges) and ranges[i + 1] == "-":
            chars += [chr(c) for c in range(ord(ranges[i]), ord(ranges[i + 2]) + 1)]
            i += 3
        else:
            chars.append(ranges[i])
            i += 1
    return chars


def test_tiktoken_parity_known_and_hard(real_encoder, tiktoken_gpt2):
    for text in [*KNOWN, *HARD, "<|endoftext|>", "x<|endoftext|>y"]:
        assert real_encoder.encode(text) == tiktoken_gpt2.encode_ordinary(text), repr(text)


def test_tiktoken_parity_fuzz(real_encoder, tiktoken_gpt2):
    rng = random.Random(99)
    for _ in range(20000):
        text = random_string(rng)
        assert real_encoder.encode(text) == tiktoken_gpt2.encode_ordinary(text), repr(text)


def test_tiktoken_parity_unicode_17_characters(real_encoder, tiktoken_gpt2):
    for c in expand(UNICODE_17_LETTERS) + expand(UNICODE_17_DIGITS):
        for text in (c + "'t", "1" + c + "2", " " + c + "a", "a" + c):
            assert real_encoder.encode(text) == tiktoken_gpt2.encode_ordinary(text), repr(text)


def test_tiktoken_parity_special(real_encoder, tiktoken_gpt2):
    text = "a<|endoftext|>b"
    assert real_encoder.encode(text, allowed_special="all") == tiktoken_gpt2.encode(
        text, allowed_special="all"
    )


def test_threads_sharing_one_encoder_get_the_ids_each_would_alone(real_dir):
    # A text holding a Unicode 17.0 letter is split with another pattern (see
    # encoder.py). A thread encoding such texts must get the same ids while
    # other threads encode plain text with the same Encoder, and the bounded
    # cache must survive being trimmed by several threads at once.
    import sys
    import threading

    encoder = load_encoder(real_dir, cache_size=64)
    # Each text starts with a piece the two patterns split differently, then
    # words that miss the cache, so that threads switch after that piece.
    letters = ["\u088f't", "\U00010940's", "\U00011de0'll"]
    texts = [f"{letters[k % 3]} " + " ".join(f"z{k}x{j}" for j in range(12)) for k in range(300)]
    assert encoder.encode(letters[0]) != [i for p in ("\u088f", "'t") for i in encoder.encode(p)]
    expected = [encoder.encode(text) for text in texts]
    done = threading.Event()
    wrong: list[str] = []

    def special() -> None:
        for text, ids in zip(texts, expected, strict=True):
            if encoder.encode(text) != ids:
                wrong.append(text)
        done.set()

    def plain() -> None:
        while not done.is_set():
            encoder.encode("plain words here")

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        threads = [threading.Thread(target=f) for f in (special, plain, plain)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        sys.setswitchinterval(interval)
    assert not wrong, f"{len(wrong)} of {len(texts)} texts got wrong ids, e.g. {wrong[0]!r}"


@pytest.mark.parametrize("name", ["encoder.json", "vocab.bpe"])
def test_vocabulary_file_that_is_not_utf8_is_named(tmp_path, name):
    vocab = {chr(c): i for i, c in enumerate(range(33, 127))}
    vocab["<|endoftext|>"] = len(vocab)
    write_vocab(tmp_path, json.dumps(vocab), "#version: 0.2\n")
    (tmp_path / name).write_bytes((tmp_path / name).read_bytes() + b"\n\xe9\xff")
    with pytest.raises(EncoderFileError, match=rf"{name}: not UTF-8 text \(byte \d+\)"):
        load_encoder(tmp_path)


# -- #28: BPE in O(n log n), the same ids ------------------------------------------


def reference_bpe(word, ranks, steps):
    """OpenAI's encoder's loop, as the teaching version: the lowest-ranked
    pair, every place of it left to right, until none is ranked."""
    parts = [word[i : i + 1] for i in range(len(word))]
    while len(parts) > 1:
        pairs = zip(parts, parts[1:], strict=False)
        best = min(pairs, key=lambda pair: ranks.get(pair, float("inf")))
        if best not in ranks:
            break
        steps.append((ranks[best], *best))
        merged, i = [], 0
        while i < len(parts):
            if i < len(parts) - 1 and (parts[i], parts[i + 1]) == best:
                merged.append(parts[i] + parts[i + 1])
                i += 2
            else:
                merged.append(parts[i])
                i += 1
        parts = merged
    return parts


def test_the_heap_merges_as_the_teaching_loop_does(real_encoder):
    from picogpt2.encoder import bpe

    rng = random.Random(7)
    alphabets = ["abcdefghijklmnopqrstuvwxyz", "aaab", "ACGT", "0123456789+/=abcXYZ", " \n\t"]
    for _ in range(400):
        word = "".join(rng.choice(rng.choice(alphabets)) for _ in range(rng.randint(1, 60)))
        data = word.encode()
        ours, theirs = [], []
        assert bpe(data, real_encoder.ranks, ours) == reference_bpe(
            data, real_encoder.ranks, theirs
        )
        assert ours == theirs, word


@pytest.mark.parametrize("alphabet", ["abcdefghijklmnopqrstuvwxyz", "ACGT", "base64"])
def test_long_pieces_are_tiktokens_ids_in_milliseconds(real_encoder, tiktoken_gpt2, alphabet):
    rng = random.Random(3)
    if alphabet == "base64":
        text = base64.b64encode(rng.randbytes(15_000)).decode()
    else:
        text = "".join(rng.choice(alphabet) for _ in range(20_000))
    assert real_encoder.encode(text) == tiktoken_gpt2.encode_ordinary(text)
