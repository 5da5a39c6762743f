"""Sampling filters (closed forms), incremental decoding, streaming generation vs teacher forcing,
and bounded per-token state and work after short and long prompts."""
import math
import shutil

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from elastic_cli.generate.decoding import (DecodingOptions, Sampler, check_options, draw, filter_logits, make_generator,
                                           next_token, top_k_filter, top_p_filter)
from elastic_cli.errors import DataError, UsageError
from elastic_cli.data import textio
from elastic_cli.generate.prompt import prompt_texts, read_prompt
from elastic_cli.generate.stream import IncrementalDecoder, continuation, prefill, prefill_chunks, samples, stream_numel
from elastic_cli.memory import REGISTRY
from elastic_cli.model.decoder import Decoder, DecoderShape
from elastic_cli.model.init import init_weights
from tests.helpers.tiny_run import TOKENIZER

PROBS = torch.tensor([[0.05, 0.5, 0.15, 0.3]])  # ranked: 1 (0.5), 3 (0.3), 2 (0.15), 0 (0.05)


def kept(logits):
    return sorted(torch.nonzero(torch.isfinite(logits[0])).flatten().tolist())


@pytest.mark.parametrize("p, expect", [(0.3, [1]), (0.5, [1]), (0.6, [1, 3]), (0.8, [1, 3]),
                                       (0.81, [1, 2, 3]), (0.95, [1, 2, 3]), (0.951, [0, 1, 2, 3]), (1.0, [0, 1, 2, 3])])
def test_top_p_keeps_smallest_set_reaching_p(p, expect):
    assert kept(top_p_filter(PROBS.log(), p)) == expect


def test_top_k_keeps_k_largest_and_values():
    logits = PROBS.log()
    out = top_k_filter(logits, 2)
    assert kept(out) == [1, 3]
    assert torch.equal(out[0, [1, 3]], logits[0, [1, 3]])
    assert kept(top_k_filter(logits, 99)) == [0, 1, 2, 3]


def test_filter_order_is_top_k_then_temperature_then_top_p():
    logits = PROBS.log()
    # temperature 2 flattens to sqrt(p): [0.2236, 0.7071, 0.3873, 0.5477] / 1.8657
    flat = PROBS.sqrt() / PROBS.sqrt().sum()
    assert flat[0, 1] + flat[0, 3] < 0.7 < flat[0, 1] + flat[0, 3] + flat[0, 2]
    got = filter_logits(logits, DecodingOptions(temperature=2.0, top_k=None, top_p=0.7))
    assert kept(got) == [1, 2, 3]  # top-p judged on the tempered distribution (at T=1 it would keep [1, 3])
    probs = got.softmax(-1)[0]
    assert torch.allclose(probs[[1, 2, 3]], flat[0, [1, 2, 3]] / flat[0, [1, 2, 3]].sum(), atol=1e-6)
    # top-k first: with k=2 only {1, 3} remain; tempered renormalised mass of 1 is sqrt(.5)/(sqrt(.5)+sqrt(.3))
    got = filter_logits(logits, DecodingOptions(temperature=2.0, top_k=2, top_p=0.6))
    share = math.sqrt(0.5) / (math.sqrt(0.5) + math.sqrt(0.3))
    assert share < 0.6 and kept(got) == [1, 3]
    assert got.softmax(-1)[0, 1].item() == pytest.approx(share, abs=1e-6)


def test_sample_frequencies_follow_filtered_distribution_and_seed_repeats():
    logits = PROBS.log().expand(20000, 4)
    opts = DecodingOptions(temperature=1.0, top_k=3, top_p=1.0)
    draws = next_token(logits, opts, make_generator(7))
    again = next_token(logits, opts, make_generator(7))
    assert torch.equal(draws, again)
    freq = torch.bincount(draws, minlength=4).double() / len(draws)
    expect = torch.tensor([0.0, 0.5, 0.15, 0.3], dtype=torch.double) / 0.95
    assert torch.allclose(freq, expect, atol=0.015)  # 20000 draws: std <= 0.0036
    assert freq[0] == 0


@pytest.mark.parametrize("temperature", [0.0, 0.8])
def test_draw_is_next_token_with_the_model_log_probabilities(temperature):
    """`draw` (one host transfer per token) picks what `next_token` picks and reports log_softmax there."""
    logits = torch.randn(6, 13, generator=torch.Generator().manual_seed(3))
    opts = DecodingOptions(temperature=temperature, top_k=5, top_p=0.9)
    ids, logps = draw(logits, opts, make_generator(4))
    assert ids == next_token(logits, opts, make_generator(4)).tolist()
    expect = torch.log_softmax(logits, -1)[torch.arange(6), torch.tensor(ids)]
    torch.testing.assert_close(torch.tensor(logps), expect, rtol=0, atol=1e-6)


def test_temperature_zero_is_greedy():
    logits = torch.randn(5, 11, generator=torch.Generator().manual_seed(0))
    out = next_token(logits, DecodingOptions(temperature=0.0, top_k=3, top_p=0.1), make_generator(0))
    assert torch.equal(out, logits.argmax(-1))


@pytest.mark.parametrize("opts, flag", [(DecodingOptions(-0.1, None, 1.0), "--temperature"),
                                        (DecodingOptions(1.0, None, 0.0), "--top-p"),
                                        (DecodingOptions(1.0, None, 1.5), "--top-p"),
                                        (DecodingOptions(1.0, 0, 1.0), "--top-k")])
def test_bad_options_name_the_flag(opts, flag):
    with pytest.raises(UsageError, match=flag):
        check_options(opts)


def test_read_prompt_errors(tmp_path, capsys):
    with pytest.raises(UsageError, match="empty"):
        read_prompt("", None)
    with pytest.raises(UsageError, match="give --prompt TEXT, --file PATH or -"):
        read_prompt(None, None)
    (tmp_path / "empty.txt").write_text("\n  \n")
    with pytest.raises(UsageError, match="empty"):
        read_prompt(None, str(tmp_path / "empty.txt"))
    (tmp_path / "latin1.txt").write_bytes("caf\xe9 cr\xe8me\n".encode("latin-1"))
    with pytest.raises(DataError, match="not utf-8 text.*offset 3"):
        read_prompt(None, str(tmp_path / "latin1.txt"), textio.Policy(strict=True))
    capsys.readouterr()
    replaced = read_prompt(None, str(tmp_path / "latin1.txt"))  # the default: replaced, counted, reported
    assert "".join(prompt_texts(replaced)) == "caf\ufffd cr\ufffdme\n"
    assert "latin1.txt: 2 byte(s) are not valid utf-8" in capsys.readouterr().err
    latin = read_prompt(None, str(tmp_path / "latin1.txt"), textio.Policy("iso8859-1", strict=True))
    assert "".join(prompt_texts(latin)) == "café crème\n" and capsys.readouterr().err == ""
    (tmp_path / "utf16.txt").write_text("déf\n", encoding="utf-16")  # a BOM decides by itself
    assert "".join(prompt_texts(read_prompt(None, str(tmp_path / "utf16.txt")))) == "déf\n"
    (tmp_path / "ok.txt").write_text("déf")
    assert "".join(prompt_texts(read_prompt(None, str(tmp_path / "ok.txt")))) == "déf"
    with pytest.raises(UsageError, match="is a directory"):
        read_prompt(None, str(tmp_path))
    with pytest.raises(UsageError, match="no such file"):
        read_prompt(None, str(tmp_path / "gone.txt"))
    with pytest.raises(UsageError, match="stdin .* once"):
        read_prompt(None, ["-", "-"])


def test_documents_then_the_prompt(tmp_path):
    """--file DOC --prompt Q reads DOC, then Q on a line of its own; several files are laid out as a
    prepared repository (`<|file|>NAME` before each); the token ids equal encoding the whole text."""
    from elastic_cli.data.tokenizer import Tokenizer

    (tmp_path / "a.py").write_text("x = 1\ny = 2")  # no newline at the end
    (tmp_path / "b.py").write_text("z = 3\n")
    one = read_prompt("Who set y?", str(tmp_path / "a.py"))
    assert "".join(prompt_texts(one)) == "x = 1\ny = 2\nWho set y?"
    two = read_prompt("Q", [str(tmp_path / "a.py"), str(tmp_path / "b.py")])
    assert "".join(prompt_texts(two)) == "<|file|>a.py\nx = 1\ny = 2<|file|>b.py\nz = 3\nQ"
    tok = Tokenizer.load(TOKENIZER)
    pieces = [i for t in prompt_texts(one) for i in tok.encode(t)]
    assert pieces == tok.encode("x = 1\ny = 2\nWho set y?")
    assert pieces[-len(tok.encode("Who set y?")):] == tok.encode("Who set y?")  # the question comes last


@pytest.mark.slow
def test_a_long_file_is_read_in_blocks_at_constant_memory(tmp_path, monkeypatch):
    """40 MB (about 10M tokens of text): checking and streaming it holds one block at a time, and
    the pieces (ending at newlines, also where a character straddles a block) are the whole text."""
    import tracemalloc

    monkeypatch.setattr(textio, "BLOCK_BYTES", 1 << 16)
    line = "def f(x):  # ünïcödé ✓\n"
    big = tmp_path / "big.py"
    big.write_text(line * (40_000_000 // len(line.encode())), encoding="utf-8")
    tracemalloc.start()
    prompt = read_prompt(None, str(big))
    n_chars = sum(len(piece) for piece in prompt_texts(prompt))
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert n_chars == len(line) * (40_000_000 // len(line.encode()))
    assert peak < 2_000_000  # a few blocks of 64 kB, not the 40 MB file
    odd = tmp_path / "odd.txt"
    odd.write_bytes(b"a" * ((1 << 16) - 1) + "é\nb".encode() + b"\xff")
    with pytest.raises(DataError, match=f"offset {(1 << 16) + 3}"):
        read_prompt(None, str(odd), textio.Policy(strict=True))
    odd.write_bytes(b"a" * ((1 << 16) - 1) + "é\nb".encode())
    assert list(prompt_texts(read_prompt(None, str(odd)))) == ["a" * ((1 << 16) - 1) + "é\n", "b"]


def test_prefill_in_chunks_equals_prefill_of_the_whole_prompt():
    torch.manual_seed(0)
    shape = DecoderShape(vocab_size=64, d_model=32, n_layer=2, n_head=2, mlp_hidden=64, segment_len=8)
    model = Decoder(shape, {i: REGISTRY["elastic"](2, 16, order=4, samples=4) for i in range(2)})
    init_weights(model, 0)
    ids = (torch.arange(45) * 7 % 60 + 4).tolist()
    whole, _ = prefill(model.eval(), ids, torch.device("cpu"))
    for cuts in ([3, 8, 20, 44], [1], [8, 16, 24, 32, 40]):
        pieces = [ids[a:b] for a, b in zip([0, *cuts], [*cuts, len(ids)])]
        logits, _, n, tail = prefill_chunks(model, pieces, torch.device("cpu"))
        torch.testing.assert_close(logits, whole, rtol=1e-5, atol=1e-5)
        assert n == 45 and tail == ids[-4:]


class PieceTokenizer:
    """SentencePiece-like decoding: '▁' is a space, <0xNN> are raw bytes, one leading space dropped."""

    def __init__(self, pieces):
        self.pieces = pieces

    def decode(self, ids):
        raw = b"".join(bytes([int(p[3:5], 16)]) if p.startswith("<0x") else p.replace("▁", " ").encode()
                       for p in (self.pieces[i] for i in ids))
        text = raw.decode("utf-8", errors="replace")
        return text[1:] if text.startswith(" ") else text


def test_incremental_decoder_prints_whole_characters_and_spaces():
    tok = PieceTokenizer(["▁def", "▁main", "(", "<0xC3>", "<0xA9>", "x", "<0xE2>", "<0x82>", "<0xAC>", "▁y"])
    context, gen = [0], [1, 2, 3, 4, 5, 9, 6, 7, 8, 9]
    dec = IncrementalDecoder(tok, context)
    pieces = [dec.push(t) for t in gen]
    pieces.append(dec.flush())
    assert pieces[:2] == [" main", "("]
    assert pieces[2] == "" and pieces[3] == "é"  # the first byte of é waits for the second
    assert pieces[6] == pieces[7] == "" and pieces[8] == "€"
    assert "".join(pieces) == tok.decode(context + gen)[len(tok.decode(context)):] == " main(éx y€ y"


V, D, LAYERS, HEADS, HIDDEN, SEG = 41, 16, 2, 2, 32, 8


def model(schedule="uniform"):
    mems = {i: REGISTRY["elastic"](HEADS, D // HEADS, order=6, samples=5, schedule=schedule) for i in range(LAYERS)}
    m = Decoder(DecoderShape(V, D, LAYERS, HEADS, HIDDEN, SEG), mems)
    init_weights(m, seed=3)
    return m.eval()


def ids(n, seed=1):
    return torch.randint(0, V, (n,), generator=torch.Generator().manual_seed(seed)).tolist()


@pytest.mark.parametrize("schedule", ["uniform", "exponential"])
@pytest.mark.parametrize("n_prompt", [5, 8, 19])
def test_streaming_logprobs_equal_teacher_forced_segments(schedule, n_prompt):
    m = model(schedule)
    prompt = ids(n_prompt)
    logits, stream = prefill(m, prompt, torch.device("cpu"))
    out = list(continuation(m, stream, logits, 3 * SEG, Sampler(DecodingOptions(1.0, None, 1.0), make_generator(0), None)))
    gen = [t for t, _ in out]
    full = torch.tensor(prompt + gen)[None]  # (1, n)
    states, chunks = m.empty_states(1, "cpu"), []
    with torch.no_grad():
        for s in range(0, full.shape[1], SEG):
            lg, states = m(full[:, s : s + SEG], states)
            chunks.append(lg)
    logp = torch.log_softmax(torch.cat(chunks, 1)[0], -1)  # (n, V)
    forced = [logp[n_prompt - 1 + i, t].item() for i, t in enumerate(gen)]
    assert [lp for _, lp in out] == pytest.approx(forced, abs=2e-5)


def test_samples_decoded_as_one_batch_are_each_a_continuation_of_the_prompt():
    """--num-samples: rows of one batch (the stream repeated) across segment boundaries. Greedy rows equal
    the one-row greedy continuation; sampled rows differ, and each drawn token is among the top 3 of its
    own row's distribution when that row is replayed alone."""
    m = model()
    logits, stream = prefill(m, ids(11), torch.device("cpu"))
    greedy = DecodingOptions(0.0, None, 1.0)
    alone = [t for t, _ in continuation(m, stream, logits, 3 * SEG, Sampler(greedy, make_generator(0), None))]
    assert samples(m, stream, logits, 3, 3 * SEG, Sampler(greedy, make_generator(0), None)) == [alone] * 3
    rows = samples(m, stream, logits, 4, 3 * SEG, Sampler(DecodingOptions(1.0, 3, 1.0), make_generator(1), None))
    assert len({tuple(r) for r in rows}) > 1
    for row in rows:
        s, lg = stream.fork(), logits
        for token in row:
            assert token in torch.topk(lg[0], 3).indices.tolist()
            with torch.no_grad():
                out, s = m.step(torch.tensor([[token]]), s)
            lg = out[:, -1]


def test_same_seed_same_tokens():
    m = model()
    logits, stream = prefill(m, ids(11), torch.device("cpu"))
    opts = DecodingOptions(0.9, 20, 0.95)
    a = [t for t, _ in continuation(m, stream, logits, 12, Sampler(opts, make_generator(5), None))]
    b = [t for t, _ in continuation(m, stream, logits, 12, Sampler(opts, make_generator(5), None))]
    c = [t for t, _ in continuation(m, stream, logits, 12, Sampler(opts, make_generator(6), None))]
    assert a == b and a != c


def test_generation_stops_after_eos():
    m = model()
    logits, stream = prefill(m, ids(4), torch.device("cpu"))
    greedy = [t for t, _ in continuation(m, stream, logits, 6, Sampler(DecodingOptions(0.0, None, 1.0), make_generator(0), None))]
    stop = greedy[2]
    cut = [t for t, _ in continuation(m, stream, logits, 6, Sampler(DecodingOptions(0.0, None, 1.0), make_generator(0), stop))]
    assert cut == greedy[: greedy.index(stop) + 1]


def step_flops(m, stream, token=3):
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        _, stream = m.step(torch.tensor([[token]]), stream)
    return counter.get_total_flops(), stream


def test_state_and_work_per_token_do_not_grow_with_prompt_length():
    m = model()
    short, long = ids(SEG + 3, seed=2), ids(40 * SEG + 3, seed=4)  # same position inside the last segment
    _, s_short = prefill(m, short, torch.device("cpu"))
    _, s_long = prefill(m, long, torch.device("cpu"))
    assert s_long.states[0].t[0] == 40 * SEG and s_short.states[0].t[0] == SEG
    assert stream_numel(s_short) == stream_numel(s_long) > 0
    f_short, s_short = step_flops(m, s_short)
    f_long, s_long = step_flops(m, s_long)
    assert f_short == f_long > 0
    # over a generation crossing several segment boundaries the cache never exceeds one segment
    sizes = set()
    for i in range(3 * SEG):
        _, s_long = step_flops(m, s_long, token=i % V)
        assert 0 <= s_long.pos < SEG
        assert all(p is None or p.qkv.shape[1] == SEG for p in s_long.past)  # buffers of one segment, reused
        sizes.add(stream_numel(s_long))
    # per layer and row of the segment: the normed input (D), q/k/v (3 D), the rotated keys (D) and the
    # joint keys and values (2 D each), these with the 5 memory samples in front
    bound = stream_numel(m.start_stream(1, "cpu")) + LAYERS * (SEG * 5 * D + (SEG + 5) * 4 * D) + LAYERS * 2 * 5 * D
    assert max(sizes) <= bound


# ------------------------------------------------------------------ the command, on a tiny run

import io  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402

from tests.helpers.cli_run import run_cli  # noqa: E402
from tests.helpers.eval_run import code_text  # noqa: E402


def test_generate_same_seed_same_output_and_jsonl(tiny_model, capsys, tmp_path):
    args = ["generate", "--ckpt", tiny_model, "--prompt", "def main(", "--max-new-tokens", "12", "--top-k", "50",
            "--top-p", "0.9", "--num-samples", "2"]
    code, out_a, err = run_cli(capsys, *args, "--seed", "1", "--output", tmp_path / "a.jsonl")
    assert code == 0, err
    code, out_b, _ = run_cli(capsys, *args, "--seed", "1")
    code, out_c, _ = run_cli(capsys, *args, "--seed", "2")
    assert out_a == out_b != out_c
    records = [json.loads(line) for line in (tmp_path / "a.jsonl").read_text().splitlines()]
    assert [r["sample"] for r in records] == [0, 1]
    assert all(len(r["tokens"]) == 12 or r["finish_reason"] == "eos" for r in records)
    assert out_a == "".join(r["text"] + "\n" for r in records)  # each streamed sample ends with a newline
    assert records[0]["prompt_tokens"] == records[1]["prompt_tokens"] > 1


@pytest.mark.slow
def test_generate_from_long_file_and_stdin(tiny_model, capsys, tmp_path, monkeypatch):
    book = tmp_path / "book.py"
    book.write_text("".join(code_text(i) for i in range(8)), encoding="utf-8")
    code, out_file, err = run_cli(capsys, "generate", "--ckpt", tiny_model, "--file", book, "--max-new-tokens",
                                  "8", "--temperature", "0", "--output", tmp_path / "f.jsonl")
    assert code == 0, err
    (rec,) = [json.loads(line) for line in (tmp_path / "f.jsonl").read_text().splitlines()]
    assert rec["prompt_tokens"] > 20 * 16  # many segments of 16 tokens were folded into memory
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(book.read_bytes())))
    code, out_stdin, _ = run_cli(capsys, "generate", "--ckpt", tiny_model, "-", "--max-new-tokens", "8",
                                 "--temperature", "0")
    assert code == 0 and out_stdin == out_file  # greedy: same prompt, same continuation


@pytest.mark.parametrize("extra, expect_code, message", [
    (["--prompt", ""], 2, "empty"),
    (["--file", "EMPTY"], 2, "empty"),
    (["--file", "LATIN1", "--strict"], 3, "not utf-8 text"),
    (["--file", "LATIN1", "--encoding", "klingon"], 2, "--encoding klingon: unknown encoding"),
    (["--file", "DIR"], 2, "is a directory"),
    (["--prompt", "x", "--top-p", "0"], 2, "--top-p"),
    (["--prompt", "x", "--top-p", "1.5"], 2, "--top-p"),
    (["--prompt", "x", "--temperature", "-1"], 2, "--temperature"),
    (["--prompt", "x", "--output", "FILE/x.jsonl"], 2, "not a directory"),
    (["--prompt", "x", "--output", "DIR"], 2, "is a directory"),
])
def test_generate_errors_exit_codes(tiny_model, capsys, tmp_path, extra, expect_code, message):
    (tmp_path / "empty.txt").write_text("")
    (tmp_path / "latin1.txt").write_bytes("caf\xe9 = 1\n".encode("latin-1"))
    names = {"EMPTY": tmp_path / "empty.txt", "LATIN1": tmp_path / "latin1.txt", "DIR": tmp_path,
             "FILE/x.jsonl": tmp_path / "empty.txt" / "x.jsonl"}
    code, out, err = run_cli(capsys, "generate", "--ckpt", tiny_model, *[names.get(a, a) for a in extra])
    assert code == expect_code and message in err
    assert err.startswith("error: ") and err.count("\n") == 1 and out == ""


def test_generate_missing_or_incomplete_checkpoint(tiny_model, capsys, tmp_path):
    code, _, err = run_cli(capsys, "generate", "--ckpt", tmp_path / "none", "--prompt", "x")
    assert code == 3 and f"{tmp_path / 'none'} does not exist" in err
    ckpt = next((tiny_model / "checkpoints").glob("step_*"))
    torn = tmp_path / (ckpt.name + ".tmp")
    shutil.copytree(ckpt, torn)
    (torn / "COMPLETE").unlink()
    code, _, err = run_cli(capsys, "generate", "--ckpt", torn, "--prompt", "x")
    assert code == 3 and "incomplete" in err
