"""`ElasticConfig`: the Hugging Face config of an exported elastic model.

Copied verbatim into every `elastic export` folder (as configuration_elastic.py). It holds the
run's whole resolved elastic config under `elastic` (the model is rebuilt from it by elastic's
own `build_model`) plus the fields `transformers` itself reads.
"""
from transformers import PretrainedConfig


class ElasticConfig(PretrainedConfig):
    model_type = "elastic"

    def __init__(self, elastic: dict | None = None, elastic_version: str | None = None, vocab_size: int = 0,
                 segment_len: int = 0, memory_kind: str | None = None, bos_token_id: int = 1,
                 eos_token_id: int = 2, pad_token_id: int = 0, **kwargs):
        self.elastic = elastic or {}  # elastic_cli.config.to_dict(RunConfig) of the exported run
        self.elastic_version = elastic_version  # elastic_cli.__version__ that exported it
        self.vocab_size = vocab_size
        self.segment_len = segment_len  # tokens per segment; memory carries the rest
        self.memory_kind = memory_kind
        kwargs["tie_word_embeddings"] = False  # the elastic Decoder ties (or not) inside itself
        super().__init__(bos_token_id=bos_token_id, eos_token_id=eos_token_id, pad_token_id=pad_token_id, **kwargs)
