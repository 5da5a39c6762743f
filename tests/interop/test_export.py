"""`elastic export` (issue 15): the Hugging Face model equals elastic's (logits to 1e-5 in fp32 on a
3-segment input, through `forward`, the streaming cache and token-by-token decoding), its
AutoTokenizer gives SentencePiece's ids, greedy `generate()` equals `elastic generate
--temperature 0`, and refusals exit 2. Needs the `hf` extra (transformers)."""
import json
import os
import subprocess
import sys

import pytest
import torch

pytest.importorskip("transformers")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: E402

from elastic_cli.runs import inference  # noqa: E402
from elastic_cli.data.sources import stdlib_root  # noqa: E402
from elastic_cli.data.tokenizer import Tokenizer  # noqa: E402
from elastic_cli.interop.export import writer  # noqa: E402
from elastic_cli.memory import REGISTRY  # noqa: E402
from tests.helpers.cli_run import run_cli  # noqa: E402
from tests.helpers.eval_run import TOKENIZER, make_run, segment_logits, sharpen  # noqa: E402

L = 16  # segment_len of the test runs (eval_run.TINY)


def slow_but_elastic(kinds):
    """Parameters for every kind: the recipe's kind (elastic) runs in `make test-fast`, the others are slow."""
    return [pytest.param(kind, marks=() if kind == "elastic" else pytest.mark.slow) for kind in kinds]


def exported(root, kind):
    run = make_run(root, kind)
    sharpen(run)
    (run / "metrics.jsonl").write_text(json.dumps({"step": 1, "loss": 9.0, "val_loss": 8.5}) + "\n")
    out = writer.export(writer.ExportOptions(str(run), str(root / "hf")))
    return run, out


def test_every_exported_kind_is_a_registered_kind():
    assert set(writer.EXPORTABLE) <= set(REGISTRY)


@pytest.mark.parametrize("kind", slow_but_elastic(writer.EXPORTABLE))
def test_hf_logits_equal_elastic_on_three_segments(kind, tmp_path):
    run, out = exported(tmp_path, kind)
    hf = AutoModelForCausalLM.from_pretrained(out, trust_remote_code=True).eval()
    ref = inference.load_checkpoint(run).model
    ids = torch.randint(5, 8000, (2, 3 * L), generator=torch.Generator().manual_seed(0))  # (2, 48): 3 segments
    with torch.no_grad():
        want = segment_logits(ref, ids)
        got = hf(ids).logits
        streamed = hf(ids, use_cache=True).logits
        out1, stream = hf(ids[:, :1], use_cache=True), ref.start_stream(2, "cpu")  # token by token, as generate()
        steps, ref_steps = [out1.logits], [ref.step(ids[:, :1], stream)]
        for i in range(1, ids.shape[1]):
            out1 = hf(ids[:, i : i + 1], cache=out1.cache)
            steps.append(out1.logits)
            ref_steps.append(ref.step(ids[:, i : i + 1], ref_steps[-1][1]))
    assert want.dtype == torch.float32 and want[:, L:].std() > 0.1  # memory-bearing segments, non-trivial logits
    tol = 1e-5 * max(1.0, want.abs().max().item() / 5)  # float32 rounding of logits up to ~10 (sharpened weights)
    assert (got - want).abs().max().item() <= tol
    assert (streamed - want).abs().max().item() <= tol
    step_want = torch.cat([r[0] for r in ref_steps], dim=1)  # elastic's own decoding path (= want up to rounding)
    assert (torch.cat(steps, dim=1) - step_want).abs().max().item() <= tol
    assert out1.cache.seen == 3 * L


def stdlib_sample() -> str:
    root = stdlib_root()
    return "".join((root / name).read_text(encoding="utf-8") for name in ("textwrap.py", "json/__init__.py", "this.py"))


def test_auto_tokenizer_ids_equal_sentencepiece(tmp_path):
    _, out = exported(tmp_path, "none")
    hf_tok = AutoTokenizer.from_pretrained(out, trust_remote_code=True)
    sp = Tokenizer.load(TOKENIZER)
    text = stdlib_sample() + "\n<s></s><pad> <|file|>lib/x.py\né 中文 🙂 \t\r\n"
    ids = sp.encode(text)
    assert len(ids) > 5000
    assert hf_tok(text, add_special_tokens=False).input_ids == ids
    assert hf_tok(text).input_ids == [sp.bos_id] + ids  # BOS first, as elastic eval/generate read documents
    assert hf_tok.decode(ids) == sp.decode(ids) == text
    assert hf_tok.decode([sp.bos_id] + ids + [sp.eos_id], skip_special_tokens=True) == text
    assert (hf_tok.bos_token_id, hf_tok.eos_token_id, hf_tok.pad_token_id) == (sp.bos_id, sp.eos_id, sp.pad_id)


@pytest.mark.parametrize("kind", slow_but_elastic(["none", "elastic", "xl", "armt"]))
def test_greedy_generate_equals_elastic_generate(kind, tmp_path, capsys):
    run, out = exported(tmp_path, kind)
    prompt = "def compute(values):\n    total = 0\n    for v in values:\n        total += v"
    code, _, err = run_cli(capsys, "generate", "--ckpt", run, "--prompt", prompt, "--max-new-tokens", "40",
                           "--temperature", "0", "--output", tmp_path / "gen.jsonl")
    assert code == 0, err
    record = json.loads((tmp_path / "gen.jsonl").read_text())
    want = record["tokens"] + [2] * (record["finish_reason"] == "eos")
    hf = AutoModelForCausalLM.from_pretrained(out, trust_remote_code=True).eval()
    tok = AutoTokenizer.from_pretrained(out, trust_remote_code=True)
    ids = tok(prompt, return_tensors="pt").input_ids
    assert ids.shape[1] == record["prompt_tokens"] and ids.shape[1] + len(want) > 2 * L  # crosses segment folds
    got = hf.generate(ids, max_new_tokens=40, do_sample=False)[0, ids.shape[1] :].tolist()
    assert got == want
    assert len(set(want)) > 2  # a real continuation, not one token repeated


@pytest.mark.slow
def test_export_folder_and_model_card(tmp_path, capsys):
    run = make_run(tmp_path, "elastic")
    (run / "metrics.jsonl").write_text(json.dumps({"step": 1, "loss": 9.0, "val_loss": 8.5}) + "\n")
    code, _, err = run_cli(capsys, "eval", "--ckpt", run, "--json", run / "eval.json")
    assert code == 0, err
    report = json.loads((run / "eval.json").read_text())["results"][0]
    code, _, err = run_cli(capsys, "export", "--ckpt", run, "--out", tmp_path / "hf")
    assert code == 0, err
    out = tmp_path / "hf"
    names = sorted(p.name for p in out.iterdir())
    assert names == ["README.md", "config.json", "configuration_elastic.py", "generation_config.json",
                     "model.safetensors", "modeling_elastic.py", "tokenization_elastic.py", "tokenizer.model",
                     "tokenizer_config.json"]
    config = json.loads((out / "config.json").read_text())
    assert config["auto_map"] == {"AutoConfig": "configuration_elastic.ElasticConfig",
                                  "AutoModelForCausalLM": "modeling_elastic.ElasticForCausalLM"}
    assert json.loads((out / "tokenizer_config.json").read_text())["auto_map"]["AutoTokenizer"][0] == \
        "tokenization_elastic.ElasticTokenizer"
    assert (out / "tokenizer.model").read_bytes() == TOKENIZER.read_bytes()
    card = (out / "README.md").read_text()
    assert "`elastic` memory" in card and '"order": 8' in card and '"samples": 8' in card
    assert "8.5000 nats/token" in card and str(tmp_path / "data") in card
    assert f"perplexity {report['perplexity']:.3f}, bits per byte {report['bits_per_byte']:.4f}" in card
    assert not list(tmp_path.glob(".hf.tmp-*"))
    # --dtype bf16: the same weights rounded to bf16, half the file
    code, _, err = run_cli(capsys, "export", run, "--out", tmp_path / "hf16", "--dtype", "bf16")
    assert code == 0, err
    from safetensors.torch import load_file

    full, half = load_file(out / "model.safetensors"), load_file(tmp_path / "hf16" / "model.safetensors")
    assert full.keys() == half.keys() and all(t.dtype == torch.bfloat16 for t in half.values())
    assert all(torch.equal(half[k], full[k].to(torch.bfloat16)) for k in full)
    assert (tmp_path / "hf16" / "model.safetensors").stat().st_size < 0.6 * (out / "model.safetensors").stat().st_size


@pytest.mark.slow
def test_missing_elastic_cli_is_named_at_load_time(tmp_path):
    _, out = exported(tmp_path, "none")
    script = ("import sys; sys.modules['elastic_cli'] = None\n"
              "from transformers import AutoModelForCausalLM\n"
              f"AutoModelForCausalLM.from_pretrained({str(out)!r}, trust_remote_code=True)\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert done.returncode != 0
    assert "runs elastic's own code (the `elastic_cli` package), which is not installed" in done.stderr


def test_export_refusals_exit_2(tiny_model_of, tmp_path, capsys, monkeypatch):
    run = tiny_model_of("armt")
    monkeypatch.setattr(writer, "EXPORTABLE", ("none", "elastic"))
    code, _, err = run_cli(capsys, "export", "--ckpt", run, "--out", tmp_path / "a")
    assert code == 2 and "memory.kind=armt is not exported yet" in err and not (tmp_path / "a").exists()
    monkeypatch.setattr(writer, "EXPORTABLE", ("armt",))
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("keep")
    code, _, err = run_cli(capsys, "export", "--ckpt", run, "--out", tmp_path / "full")
    assert code == 2 and "not empty" in err and (tmp_path / "full" / "x").read_text() == "keep"
    monkeypatch.setitem(sys.modules, "transformers", None)
    code, _, err = run_cli(capsys, "export", "--ckpt", run, "--out", tmp_path / "b")
    assert code == 2 and "pip install 'elastic-cli[hf]'" in err
