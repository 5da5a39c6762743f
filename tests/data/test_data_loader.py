"""SegmentLoader: layout against a slow twin, deterministic order, exact resume across world sizes."""

from pathlib import Path

import numpy as np
import pytest

from elastic_cli.data.loader import PreparedData, SegmentLoader, Windows
from elastic_cli.data.prepare import PrepareOptions, prepare
from elastic_cli.data.tokenizer import PAD_ID, Tokenizer
from elastic_cli.errors import DataError

ROOT = Path(__file__).resolve().parents[2]
BOOKS = str(ROOT / "tokenizers" / "books-8k.model")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("loader")
    src = root / "docs"
    src.mkdir()
    rng = np.random.default_rng(0)
    words = ["the", "king", "said", "unto", "them", "and", "lo", "12", "x", "\n"]
    for i in range(23):
        n = int(rng.integers(1, 120))
        (src / f"d{i:02d}.txt").write_text(" ".join(rng.choice(words, n)))
    prepare([str(src)], BOOKS, str(root / "out"), PrepareOptions(val_frac=0.2, test_frac=0.1, workers=1))
    return PreparedData(root / "out")


def slow_epoch_stream(data, split, L, seed, epoch):
    """Obviously-correct twin: the padded stream of one epoch built segment by segment."""
    docs = data.documents(split)
    if split == "train":
        docs = [docs[i] for i in np.random.default_rng([seed, epoch]).permutation(len(docs))]
    inp, tgt, start = [], [], []
    for d in docs:
        t = list(map(int, data.tokens(d)))
        nseg = -(-len(t) // L)
        padded = t + [PAD_ID] * (nseg * L - len(t))
        nxt = t[1:] + [-1] * (nseg * L - len(t) + 1)
        for s in range(nseg):
            inp.append(padded[s * L:(s + 1) * L])
            tgt.append(nxt[s * L:(s + 1) * L])
            start.append(s == 0)
    return inp, tgt, start


def test_windows_match_the_slow_twin_over_two_epochs(data):
    S, L, G = 3, 16, 4
    ld = SegmentLoader(data, "train", Windows(G, S, L), seed=7)
    per_epoch = []
    for epoch in range(2):
        inp, tgt, start = slow_epoch_stream(data, "train", L, 7, epoch)
        pad = -len(inp) % S
        inp += [[PAD_ID] * L] * pad
        tgt += [[-1] * L] * pad
        start += [True] * pad
        assert len(inp) == S * ld.windows_per_epoch
        per_epoch += [(inp[w * S:(w + 1) * S], tgt[w * S:(w + 1) * S], [True] + start[w * S + 1:(w + 1) * S])
                      for w in range(ld.windows_per_epoch)]
    for k in range(len(per_epoch) // G):
        b = ld.next_batch()
        assert b.inputs.shape == (G, S, L) and b.doc_start.shape == (G, S)
        for r in range(G):
            i, t, s = per_epoch[k * G + r]
            assert b.inputs[r].tolist() == i and b.targets[r].tolist() == t and b.doc_start[r].tolist() == s


def test_epochs_are_different_permutations_and_eval_order_is_stored_order(data):
    a = SegmentLoader(data, "train", Windows(1, 1, 4096), seed=1)
    first = [a.next_batch().inputs[0, 0, :8].tolist() for _ in range(2 * a.windows_per_epoch)]
    e0, e1 = first[:a.windows_per_epoch], first[a.windows_per_epoch:]
    assert sorted(e0) == sorted(e1) and e0 != e1
    b = SegmentLoader(data, "train", Windows(1, 1, 4096), seed=1)
    assert [b.next_batch().inputs[0, 0, :8].tolist() for _ in range(len(first))] == first
    v = SegmentLoader(data, "val", Windows(1, 1, 4096), seed=1)
    assert [v.next_batch().inputs[0, 0, :3].tolist() for _ in data.documents("val")] == \
           [list(map(int, data.tokens(d)[:3])) for d in data.documents("val")]


def run(data, world, steps, state=None):
    loaders = [SegmentLoader(data, "train", Windows(4, 2, 8), seed=3, rank=r, world=world) for r in range(world)]
    if state is not None:
        for ld in loaders:
            ld.load_state_dict(state)
    out = []
    for _ in range(steps):
        parts = [ld.next_batch() for ld in loaders]
        out.append(np.concatenate([p.inputs.numpy() for p in parts]).tolist()
                   + np.concatenate([p.targets.numpy() for p in parts]).tolist())
    return out, loaders[0].state_dict()


@pytest.mark.parametrize("world_before,world_after", [(1, 1), (2, 2), (2, 1), (1, 2)])
def test_resume_equals_uninterrupted_iteration(data, world_before, world_after):
    full, _ = run(data, 1, 30)
    first, state = run(data, world_before, 12)
    rest, _ = run(data, world_after, 18, state)
    assert first + rest == full


def test_cursor_from_another_configuration_is_refused(data):
    _, state = run(data, 1, 2)
    other = SegmentLoader(data, "train", Windows(4, 2, 16), seed=3)
    with pytest.raises(DataError, match="segment_len=8"):
        other.load_state_dict(state)


def test_tokenizer_hash_is_checked(data, tmp_path):
    from types import SimpleNamespace

    from elastic_cli.data.compat import check_data

    def model(tokenizer):  # the parts of a RunConfig the check reads
        return SimpleNamespace(model=SimpleNamespace(vocab_size=data.vocab_size),
                               data=SimpleNamespace(path=str(tmp_path / "elsewhere"), tokenizer=tokenizer))

    assert check_data(model(BOOKS), data.meta, data.path) is None
    with pytest.raises(DataError, match=r"prepared with \S*books-8k.model \(sha256 [0-9a-f]{12}\), but the model's tokenizer is \S*code-8k.model"):
        check_data(model(str(ROOT / "tokenizers" / "code-8k.model")), data.meta, data.path)


def test_truncated_shard_and_missing_meta_are_data_errors(data, tmp_path):
    import shutil
    copy = tmp_path / "copy"
    shutil.copytree(data.path, copy)
    with open(copy / "tokens-00000.bin", "r+b") as f:
        f.truncate(10)
    with pytest.raises(DataError, match="truncated"):
        PreparedData(copy)
    with pytest.raises(DataError, match="no meta.json"):
        PreparedData(tmp_path)


def test_loader_round_trip_gives_back_every_source_text(data):
    tok = Tokenizer.load(BOOKS)
    src = data.path.parent / "docs"
    for split in ("train", "val", "test"):
        ld = SegmentLoader(data, split, Windows(1, 10_000, 8), seed=0)
        b = ld.next_batch()
        docs, cur = [], None
        for s in range(b.inputs.shape[1]):
            if b.doc_start[0, s]:
                cur = []
                docs.append(cur)
            cur += b.inputs[0, s].tolist()
        texts = []
        for d in docs:
            if d[0] != tok.bos_id:
                continue                                                    # tail padding
            texts.append(tok.decode(d[1:d.index(tok.eos_id)]))
        want = [(src / data.name(i).split("/", 1)[1]).read_text() for i in data.documents(split)]
        assert sorted(texts) == sorted(want) and len(texts) == len(data.documents(split)) > 0
