"""`ElasticTokenizer`: the run's SentencePiece model behind the Hugging Face tokenizer API.

Copied verbatim into every `elastic export` folder (as tokenization_elastic.py), next to the
run's `tokenizer.model`. Ids are SentencePiece's own (`sp.encode(text)`), with no text
normalisation, no added prefix space and no splitting on special-token strings, so they equal
elastic's `Tokenizer.encode` exactly; `add_special_tokens=True` (the default) puts BOS first, as
`elastic generate` and `elastic eval` do. Needs only `sentencepiece` (not elastic_cli).
"""
import os
import shutil
from typing import Optional

import sentencepiece as spm
from transformers import PreTrainedTokenizer

VOCAB_FILES_NAMES = {"vocab_file": "tokenizer.model"}


class ElasticTokenizer(PreTrainedTokenizer):
    vocab_files_names = VOCAB_FILES_NAMES
    model_input_names = ["input_ids", "attention_mask"]

    def __init__(self, vocab_file: str, bos_token: str = "<s>", eos_token: str = "</s>", unk_token: str = "<unk>",
                 pad_token: str = "<pad>", **kwargs):
        self.vocab_file = vocab_file
        self.sp = spm.SentencePieceProcessor()
        self.sp.Load(vocab_file)
        kwargs.setdefault("split_special_tokens", True)  # "<s>" in text is text, as in sentencepiece
        kwargs.setdefault("clean_up_tokenization_spaces", False)
        super().__init__(bos_token=bos_token, eos_token=eos_token, unk_token=unk_token, pad_token=pad_token, **kwargs)

    @property
    def vocab_size(self) -> int:
        return self.sp.get_piece_size()

    def get_vocab(self) -> dict:
        return {self.sp.id_to_piece(i): i for i in range(self.vocab_size)}

    def _tokenize(self, text: str, **kwargs) -> list:
        return self.sp.encode(text, out_type=str)

    def _convert_token_to_id(self, token: str) -> int:
        return self.sp.piece_to_id(token)

    def _convert_id_to_token(self, index: int) -> str:
        return self.sp.id_to_piece(int(index))

    def convert_tokens_to_string(self, tokens: list) -> str:
        return self.sp.decode_pieces(list(tokens))

    def _decode(self, token_ids, skip_special_tokens: bool = False, **kwargs) -> str:
        """SentencePiece's decode of the ids (bytes joined across byte-fallback pieces)."""
        ids = [int(token_ids)] if isinstance(token_ids, int) else [int(i) for i in token_ids]
        if skip_special_tokens:
            ids = [i for i in ids if i not in self.all_special_ids]
        return self.sp.decode(ids)

    def build_inputs_with_special_tokens(self, token_ids_0: list, token_ids_1: Optional[list] = None) -> list:
        ids = [self.bos_token_id] + list(token_ids_0)
        return ids if token_ids_1 is None else ids + [self.bos_token_id] + list(token_ids_1)

    def num_special_tokens_to_add(self, pair: bool = False) -> int:
        return 2 if pair else 1

    def get_special_tokens_mask(self, token_ids_0: list, token_ids_1: Optional[list] = None,
                                already_has_special_tokens: bool = False) -> list:
        if already_has_special_tokens:
            return [int(i in self.all_special_ids) for i in token_ids_0]
        mask = [1] + [0] * len(token_ids_0)
        return mask if token_ids_1 is None else mask + [1] + [0] * len(token_ids_1)

    def save_vocabulary(self, save_directory: str, filename_prefix: Optional[str] = None) -> tuple:
        name = (filename_prefix + "-" if filename_prefix else "") + VOCAB_FILES_NAMES["vocab_file"]
        target = os.path.join(save_directory, name)
        if os.path.abspath(self.vocab_file) != os.path.abspath(target):
            shutil.copyfile(self.vocab_file, target)
        return (target,)
