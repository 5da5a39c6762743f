"""`ElasticForCausalLM`: elastic's own Decoder behind the Hugging Face `transformers` API.

Copied verbatim into every `elastic export` folder (as modeling_elastic.py). It contains no model
math: it imports `elastic_cli` and builds the model with `elastic_cli.build.build_model` from the
config the run was trained with, so an exported model cannot drift from elastic's code
(README "Hugging Face export" says why we import rather than generate a copy).

A sequence of any length is read segment by segment with memory carried across segments:
- `model(input_ids)` runs the teacher-forced segment loop of `elastic eval`
  (`Decoder.forward` per segment) and returns the logits of every position;
- `model(input_ids, use_cache=True)` and `generate()` go through `Decoder.step`, the streaming path
  of `elastic generate`: the returned `cache` (an `ElasticCache`) holds the memory states plus
  the current segment only, so its size does not grow with the length of the input.

Axis legend: B rows, n tokens, L segment length, V vocabulary.
"""
from dataclasses import dataclass
from typing import Any, Optional

import torch
import torch.nn.functional as F
from transformers import GenerationMixin, PreTrainedModel
from transformers.utils import ModelOutput, logging

from .configuration_elastic import ElasticConfig

try:
    import elastic_cli
    from elastic_cli.build import build_model
    from elastic_cli.config import RunConfig
except ImportError as e:  # transformers leaves imports inside try/except to us: say what to install
    raise ImportError(
        "this model runs elastic's own code (the `elastic_cli` package), which is not installed: "
        "pip install elastic-cli (from the elastic repository: pip install -e /path/to/elastic), "
        "the version named in the model's config.json under `elastic_version`") from e

logger = logging.get_logger(__name__)


class ElasticCache:
    """Streaming state between calls: elastic's `Decoder.Stream` (memory states, the current
    segment's keys/values and reads) and `seen`, the tokens consumed so far. A value: each
    forward returns a new one."""

    is_compileable = False  # attributes `generate()` asks of a cache
    is_croppable = False
    is_linear = (True,)  # no per-token cache to slice by length: the model slices by `seen` itself

    def __init__(self, stream: Any, seen: int):
        self.stream, self.seen = stream, seen

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.seen


@dataclass
class ElasticOutput(ModelOutput):
    loss: Optional[torch.FloatTensor] = None
    logits: Optional[torch.FloatTensor] = None
    cache: Optional[ElasticCache] = None  # the name `generate()` reads (transformers >= 5.24)


class ElasticForCausalLM(PreTrainedModel, GenerationMixin):
    config_class = ElasticConfig
    base_model_prefix = "decoder"
    main_input_name = "input_ids"
    _is_stateful = True  # memory: no assisted decoding, no contrastive search
    _supports_cache_class = False

    def __init__(self, config: ElasticConfig):
        super().__init__(config)
        if config.elastic_version and config.elastic_version != elastic_cli.__version__:
            logger.warning(f"exported with elastic {config.elastic_version}, running elastic {elastic_cli.__version__}")
        self.decoder = build_model(RunConfig.model_validate(config.elastic))
        self.post_init()

    @classmethod
    def _supports_default_dynamic_cache(cls) -> bool:
        return False  # the cache is elastic's stream, made by forward itself

    def _init_weights(self, module) -> None:
        """Weights come from the checkpoint (elastic_cli.model.init.init_weights makes fresh ones). What
        `from_pretrained` leaves uninitialised are non-persistent buffers (RoPE frequencies, RBF
        centres), which it allocates empty: they are recomputed by elastic's own constructors."""
        own = [name for name, _ in module.named_buffers(recurse=False)]
        if not own:
            return
        if "_buffer_values" not in self.__dict__:  # one fresh model, kept only for its buffers
            fresh = build_model(RunConfig.model_validate(self.config.elastic))
            self.__dict__["_buffer_values"] = {"decoder." + k: v for k, v in fresh.named_buffers()}
        prefix = next(name for name, m in self.named_modules() if m is module)
        for name in own:
            buf = module._buffers[name]
            module._buffers[name] = self.__dict__["_buffer_values"][f"{prefix}.{name}"].to(buf.device, buf.dtype)

    def get_input_embeddings(self):
        return self.decoder.embed

    def get_output_embeddings(self):
        return None

    def forward(self, input_ids: torch.LongTensor, attention_mask: Optional[torch.Tensor] = None,
                cache: Optional[ElasticCache] = None, past_key_values: Optional[ElasticCache] = None,
                use_cache: Optional[bool] = None, labels: Optional[torch.LongTensor] = None,
                return_dict: Optional[bool] = None, **kwargs) -> ElasticOutput:
        """input_ids (B, n) -> logits (B, n, V). Rows must be unpadded and of equal length: memory
        reads every token it is given (an attention_mask with zeros is refused)."""
        if attention_mask is not None and not bool(attention_mask.bool().all()):
            raise ValueError("elastic models read every token into memory: padding (attention_mask 0) is not "
                             "supported; pass rows of equal length or one row at a time")
        cache = cache if cache is not None else past_key_values
        if cache is None and not use_cache:
            logits, new = self._segments(input_ids), None
        else:
            stream = cache.stream if cache is not None else self.decoder.start_stream(input_ids.shape[0], input_ids.device)
            logits, stream = self.decoder.step(input_ids, stream)  # (B, n, V)
            new = ElasticCache(stream, (cache.seen if cache is not None else 0) + input_ids.shape[1])
        loss = None
        if labels is not None:  # next-token loss, the transformers convention (labels = input_ids, -100 ignored)
            loss = F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten(), ignore_index=-100)
        return ElasticOutput(loss=loss, logits=logits, cache=new)

    def _segments(self, input_ids: torch.LongTensor) -> torch.Tensor:
        """Teacher forcing from empty memory, one segment at a time (as `elastic eval`)."""
        L = self.decoder.segment_len
        states = self.decoder.empty_states(input_ids.shape[0], input_ids.device)
        out = []
        for start in range(0, input_ids.shape[1], L):
            logits, states = self.decoder(input_ids[:, start : start + L], states)  # (B, <=L, V)
            out.append(logits)
        return torch.cat(out, dim=1)  # (B, n, V)

    def prepare_inputs_for_generation(self, input_ids: torch.LongTensor, cache: Optional[ElasticCache] = None,
                                      past_key_values: Optional[ElasticCache] = None,
                                      attention_mask: Optional[torch.Tensor] = None, **kwargs) -> dict:
        """Feed only the tokens the stream has not read yet (the whole prompt first, then one)."""
        cache = cache if cache is not None else past_key_values
        seen = cache.seen if cache is not None else 0
        return {"input_ids": input_ids[:, seen:], "cache": cache, "use_cache": True, "attention_mask": attention_mask}

    def _update_model_kwargs_for_generation(self, outputs, model_kwargs: dict, *args, **kwargs) -> dict:
        model_kwargs = super()._update_model_kwargs_for_generation(outputs, model_kwargs, *args, **kwargs)
        model_kwargs["cache"] = outputs.cache
        model_kwargs.pop("past_key_values", None)
        return model_kwargs
