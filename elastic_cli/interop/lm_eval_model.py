"""An lm-evaluation-harness model backed by an elastic checkpoint, registered as `elastic`.

Importing this module registers it (`elastic lm-eval` does), after which
`lm_eval.simple_evaluate(model="elastic", model_args="ckpt=RUN", ...)` works. Every request reads
its whole text through memory, segment by segment; nothing is truncated to a window:
- loglikelihood: the context is streamed into memory (`Decoder.step`), then the continuation is
  scored from that stream; requests sharing a context reuse its stream (a value, so branching is free);
- loglikelihood_rolling: the document as `elastic eval` reads it, `[BOS] text`, scored by elastic's
  own `scoring.score` (teacher-forced segments). With `document_end=true` the end-of-document token
  is scored too, exactly as `elastic eval` does (its total NLL and bits per byte are then equal);
  the default scores the text only, the harness convention for Hugging Face models;
- generate_until: streamed as `elastic generate` (greedy unless the task samples), stopped at the
  first stop string (cut off) or EOS.

Model args: ckpt (required), schedule, samples (Elastic Memory test-time options), document_end,
seed; batch_size, max_batch_size and device are accepted from the harness (documents are read one
at a time; the device is the run's).
"""
from __future__ import annotations

import numpy as np
import torch
from lm_eval.api.model import TemplateLM
from lm_eval.api.registry import register_model

from elastic_cli import precision
from elastic_cli.runs import inference
from elastic_cli.runs.checkpoint import Checkpoint, open_checkpoint
from elastic_cli.generate.decoding import DecodingOptions, Sampler, check_options, make_generator
from elastic_cli.generate.stream import continuation
from elastic_cli.evaluate.scoring import Scoring, score
from elastic_cli.errors import UsageError

TRUE = ("1", "true", "yes")
MODEL_ARGS = ("schedule", "samples", "document_end", "seed")  # ElasticLM's own options (besides ckpt)
HARNESS_ARGS = ("batch_size", "max_batch_size", "device")  # passed by the harness: documents are read one at a
# time, on the device the settings choose


@register_model("elastic")
class ElasticLM(TemplateLM):
    backend = "causal"

    def __init__(self, ckpt: str | Checkpoint, settings: inference.Settings | None = None, **args):
        """ckpt: a run or checkpoint directory (from the harness's model_args) or one already opened;
        args: MODEL_ARGS, and the harness's own HARNESS_ARGS (accepted, unused)."""
        super().__init__()
        unknown = sorted(set(args) - set(MODEL_ARGS) - set(HARNESS_ARGS))
        if unknown:
            raise ValueError(f"elastic model: unknown model_args {unknown}; known: ckpt, {', '.join(MODEL_ARGS)}")
        settings = settings or inference.Settings()
        ckpt = ckpt if isinstance(ckpt, Checkpoint) else open_checkpoint(ckpt, settings.tokenizer)
        samples = args.get("samples")
        self.loaded = inference.load(ckpt, settings, args.get("schedule"), int(samples) if samples is not None else None)
        self.tok = inference.load_tokenizer(ckpt, self.loaded.cfg)
        self.document_end = str(args.get("document_end", False)).lower() in TRUE
        self.seed = int(args.get("seed", 0))
        self._device = self.loaded.device

    @property
    def model(self):
        return self.loaded.model

    @property
    def eot_token_id(self) -> int:
        return self.tok.eos_id

    @property
    def prefix_token_id(self) -> int:
        return self.tok.bos_id  # documents start with BOS (elastic eval, elastic generate)

    @property
    def tokenizer_name(self) -> str:
        return f"sentencepiece-{self.tok.sha256[:12]}"

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kwargs) -> list[int]:
        ids = self.tok.encode(string)
        return [self.tok.bos_id] + ids if add_special_tokens is not False else ids

    def tok_decode(self, ids) -> str:
        return self.tok.decode(ids)

    def _amp(self):
        return precision.autocast(self._device, self.loaded.cfg.train.dtype)

    @torch.no_grad()
    def _stream(self, ids: list[int]):
        """The generation stream after reading `ids` (memory folded at every full segment)."""
        stream = self.model.start_stream(1, self._device)
        if ids:
            with self._amp():
                _, stream = self.model.step(torch.tensor([ids], device=self._device), stream)
        return stream

    @torch.no_grad()
    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, **kwargs) -> list[tuple[float, bool]]:
        """requests: ((context, continuation), context ids, continuation ids) -> (sum log p, all greedy)."""
        results, cached = [], (None, None)
        for _, ctx, cont in requests:
            key = tuple(ctx[:-1])
            if cached[0] != key:
                cached = (key, self._stream(ctx[:-1]))
            with self._amp():
                logits, _ = self.model.step(torch.tensor([ctx[-1:] + cont[:-1]], device=self._device),
                                            cached[1].fork())  # the cached context serves the next request too
            logp = torch.log_softmax(logits[0].float(), dim=-1)  # (n, V)
            target = torch.tensor(cont, device=self._device)  # (n,)
            total = float(logp.gather(1, target[:, None]).double().sum())
            results.append((total, bool((logp.argmax(-1) == target).all())))
            self.cache_hook.add_partial("loglikelihood", requests[len(results) - 1][0], results[-1])
        return results

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        """Log-likelihood of each whole document, [BOS] text (+ EOS with document_end), through memory."""
        out = []
        for request in requests:
            (text,) = request.args
            ids = [self.tok.bos_id] + self.tok.encode(text) + [self.tok.eos_id] * self.document_end
            tally = score(self.model, [np.asarray(ids)], [None], 1, self._device, Scoring(self._amp))
            out.append(-tally.nll)
            self.cache_hook.add_partial("loglikelihood_rolling", (text,), out[-1])
        return out

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        generator = make_generator(self.seed)
        return [self._generate(*request.args, generator) for request in requests]

    @torch.no_grad()
    def _generate(self, context: str, gen_kwargs: dict, generator: torch.Generator) -> str:
        kwargs = dict(gen_kwargs)
        until = kwargs.pop("until", None) or []
        until = [until] if isinstance(until, str) else list(until)
        max_new = int(kwargs.pop("max_gen_toks", 256))
        sample = bool(kwargs.pop("do_sample", False))
        temperature = float(kwargs.pop("temperature", 1.0 if sample else 0.0))
        opts = check_options(DecodingOptions(temperature if sample else 0.0, kwargs.pop("top_k", None),
                                             float(kwargs.pop("top_p", 1.0))))
        with self._amp():  # the prompt in one call: the same segment chunks as `elastic generate`'s prefill
            logits, stream = self.model.step(torch.tensor([self.tok_encode(context)], device=self._device),
                                             self.model.start_stream(1, self._device))
        tokens = []
        sampler = Sampler(opts, generator, self.tok.eos_id, self._amp)
        for token, _ in continuation(self.model, stream, logits[:, -1].float(), max_new, sampler):
            if token == self.tok.eos_id:
                break
            tokens.append(token)
            text = self.tok.decode(tokens)
            cut = min((text.index(s) for s in until if s and s in text), default=None)
            if cut is not None:
                return text[:cut]
        return self.tok.decode(tokens)


def parse_model_args(text: str | None) -> dict:
    args = {}
    for item in filter(None, (text or "").split(",")):
        key, eq, value = item.partition("=")
        if not eq or not key.strip():
            raise UsageError(f"--model-args: expected key=value[,key=value...], got {item!r}")
        args[key.strip()] = value.strip()
    unknown = sorted(set(args) - set(MODEL_ARGS))
    if unknown:
        raise UsageError(f"--model-args: unknown {', '.join(unknown)}; known: {', '.join(MODEL_ARGS)} (--ckpt gives ckpt)")
    return args
