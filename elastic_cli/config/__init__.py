"""Run configuration: the schema (schema.py), recipes and overrides (recipes.py), error messages
(explain.py). Callers import from here."""
from .recipes import dump_yaml, load_config, split_args, with_overrides
from .schema import (DataConfig, EvalConfig, ModelConfig, RunConfig, RunSection, TrainConfig, check_world,
                     config_hash, diff, layer_context, memory_kinds, memory_layers, to_dict)

__all__ = ["DataConfig", "EvalConfig", "ModelConfig", "RunConfig", "RunSection", "TrainConfig", "check_world",
           "config_hash", "diff", "dump_yaml", "layer_context", "load_config", "memory_kinds", "memory_layers",
           "split_args", "to_dict", "with_overrides"]
