"""ARMT at initialisation (issue 25): with L2-normalised DPFP features (the reference code) the read
is a β-weighted mean of the stored values, gain β s / (s + ε) ≈ 1/2; with the 2024 paper code's raw
features s = zᵀφ(q) ~ 1e-8 falls below ε and the read vanishes. And the write gate β is logged."""
import torch

from tests.helpers import tiny_run
from elastic_cli.config import load_config
from elastic_cli.memory.armt import EPS, associate, delta_write
from elastic_cli.memory import REGISTRY
from elastic_cli.model.decoder import Decoder, DecoderShape
from elastic_cli.model.init import init_weights
from elastic_cli.train.loop import train

# the matched cpu row of scripts/reproduce.py: d_model 128, 2 layers, 4 heads, 8 memory tokens, key_dim 11
D, LAYERS, HEADS, SEG, TOKENS, KEY_DIM, V = 128, 2, 4, 16, 8, 11, 512


def model_at_init(l2: bool) -> Decoder:
    mems = {i: REGISTRY["armt"](HEADS, D // HEADS, tokens=TOKENS, key_dim=KEY_DIM, l2=l2) for i in range(LAYERS)}
    model = Decoder(DecoderShape(V, D, LAYERS, HEADS, 384, SEG), mems)
    init_weights(model, seed=0)
    return model


def recorded(model: Decoder) -> dict:
    """Run two segments; record layer 0's memory-token outputs (segment 1's write) and residual
    stream (segment 2's read)."""
    mem, seen = model.blocks[0].memory, {}
    write, pre = mem.write, mem.pre
    mem.write = lambda state, seg: seen.setdefault("o", seg.slots) is not None and write(state, seg)
    mem.pre = lambda state, x: (seen.__setitem__("x", x), pre(state, x))[1]
    toks = torch.randint(0, V, (4, 2 * SEG), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        _, states = model(toks[:, :SEG], model.empty_states(4, "cpu"))
        model(toks[:, SEG:], states)
    seen["states"] = states
    return seen


def stored(mem, o: torch.Tensor, values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(A, z) after one write of `values` (B, m, D) under the keys and gates of the outputs o (B, m, D)."""
    k, beta = mem.features_of(mem.wk, o), torch.sigmoid(mem.wbeta(o))  # (B, m, K), (B, m, 1)
    b = o.shape[0]
    return delta_write(torch.zeros(b, mem.features, D), torch.zeros(b, mem.features), k, values, beta)


def gain(model: Decoder, seen: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(g, s, β): what a read returns per unit of stored value, g = Σ_i β_i φ(q)·k_i / (s + ε), for every
    token of segment 2 (stored values all ones: the read is g · 1), s = zᵀφ(q), β of the write."""
    mem = model.blocks[0].memory
    with torch.no_grad():
        o, x = seen["o"], seen["x"]
        a, z = stored(mem, o, torch.ones(o.shape[0], TOKENS, D))
        q = mem.features_of(mem.wq, x)  # (B, n, K)
        return associate(a, z, q)[..., 0], (q @ z[..., None])[..., 0], torch.sigmoid(mem.wbeta(o))  # (B, n) x2, (B, m, 1)


def test_normalised_features_read_half_the_stored_value_at_init():
    model = model_at_init(l2=True)
    assert all(model.blocks[i].memory.wv.weight.abs().sum() == 0 for i in range(LAYERS))  # W_v zero-initialised
    seen = recorded(model)
    g, s, beta = gain(model, seen)
    # β = sigmoid(W_β o + b), W_β ~ N(0, 0.02), b = 0: 1/2 to 1e-2; s = Σ_i φ(q)·φ(k_i) in (0, m], far above ε
    assert (beta - 0.5).abs().max() < 1e-2 and s.min() > 1e3 * EPS
    torch.testing.assert_close(g, (beta.mean(dim=(1, 2))[:, None] * s / (s + EPS)), rtol=2e-2, atol=0)
    assert 0.49 < g.min() and g.max() < 0.51
    # with a unit-gain value projection (W_v = I) the read is a β-weighted mean of the memory-token
    # outputs: a sizeable fraction of the residual it is added to
    mem = model.blocks[0].memory
    with torch.no_grad():
        a, z = stored(mem, seen["o"], seen["o"])
        ratio = associate(a, z, mem.features_of(mem.wq, seen["x"])).norm(dim=-1) / seen["x"].norm(dim=-1)
    assert ratio.median() > 0.1, ratio.median()


def test_raw_features_of_the_2024_code_read_almost_nothing_at_init():
    model = model_at_init(l2=False)
    g, s, _ = gain(model, recorded(model))
    assert s.max() < EPS  # zᵀφ(q) below the ε of the denominator for every token
    assert g.max() < 1e-2  # the read is under 1% of the stored value (the issue measured 1e-4 to 1e-3)


def test_beta_of_the_last_write_is_a_memory_metric():
    model = model_at_init(l2=True)
    states = recorded(model)["states"]
    metrics = model.memory_metrics(states)
    assert sorted(metrics) == ["beta/layer0", "beta/layer1"]
    for i, state in enumerate(states):
        torch.testing.assert_close(metrics[f"beta/layer{i}"], state.beta.mean())
        assert abs(metrics[f"beta/layer{i}"].item() - 0.5) < 1e-2


def test_training_logs_beta_at_each_validation(tmp_path):
    data = tiny_run.prepare(tmp_path / "d")
    cfg = load_config("recipes/tiny.yaml", tiny_run.overrides(data, tmp_path / "run", "memory.kind=armt", "memory.tokens=2",
                                                              "memory.key_dim=4", "train.steps=2", "train.eval_every=1",
                                                              "train.eval_batches=1"))
    train(cfg)
    rows = [r for r in tiny_run.metrics(tmp_path / "run") if "val_loss" in r]
    assert len(rows) == 2 and all(0 < r["beta/layer0"] < 1 and 0 < r["beta/layer1"] < 1 for r in rows)
