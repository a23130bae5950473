"""Every training config file's presets pass the start-up checks (a preset that cannot start is
found here, not an hour into a benchmark)."""

import importlib

import pytest

from selfimprove.config_checks import validate_config

PRESETS = [("sft_arithmetic", "tiny"), ("sft_arithmetic", "test"), ("score_arithmetic", "tiny"),
           ("score_arithmetic", "hard"), ("score_arithmetic", "test"),
           ("stp_linear_equations", "tiny"), ("stp_linear_equations", "test"),
           ("rl_arithmetic", "tiny"), ("rl_arithmetic", "test"),
           ("preference_jsonl", "tiny"), ("preference_jsonl", "test")]


@pytest.mark.parametrize("module, preset", PRESETS)
def test_preset_passes_the_start_up_checks(module, preset):
  config = importlib.import_module(f"configs.{module}").get_config(preset)
  validate_config(config)
  if "warm_start" in config:
    validate_config(config.warm_start)
