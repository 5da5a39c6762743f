"""`train.micro_batch: auto` (autobatch.py): the largest divisor of a process's share that fits."""
import torch

from elastic_cli.train import autobatch
from elastic_cli.build import build_model
from elastic_cli.config import load_config


def test_divisors_and_the_largest_that_fits():
    assert autobatch.divisors(12) == [12, 6, 4, 3, 2, 1]
    assert autobatch.largest_fitting(12, lambda m: m <= 5) == 4  # 5 does not divide 12
    assert autobatch.largest_fitting(32, lambda m: m * 3 <= 50) == 16
    assert autobatch.largest_fitting(8, lambda m: False) == 1  # nothing fits: 1 (the step reports the OOM)


def test_auto_is_the_whole_share_on_a_cpu_and_a_given_number_stays():
    cfg = load_config("recipes/tiny.yaml", ["train.micro_batch=auto", "train.global_batch=8"])
    assert autobatch.resolve(cfg, 2, torch.device("cpu")).train.micro_batch == 4  # 8 windows over 2 processes
    fixed = load_config("recipes/tiny.yaml", ["train.micro_batch=2"])
    assert autobatch.resolve(fixed, 1, torch.device("cpu")) is fixed


def test_the_estimate_grows_with_the_micro_batch():
    """The CUDA choice compares this estimate with the device's memory: more windows, more activations."""
    cfg = load_config("recipes/code-32k.yaml", ["train.micro_batch=auto"])
    one, four = (autobatch.estimated_bytes(cfg, 8, m) for m in (1, 4))
    assert four > one > 0
    with torch.device("meta"):
        weights_and_moments = 16 * sum(p.numel() for p in build_model(autobatch.with_micro_batch(cfg, 1)).parameters())
    assert four - one > 3 * (one - weights_and_moments) * 0.99  # activations scale with the windows
