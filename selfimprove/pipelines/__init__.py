"""Pipelines (one file per algorithm), looked up by `config.pipeline` in a registry.

A pipeline module has a `build(pieces: RunPieces, settings: dict) -> Pipeline`
and one `register_pipeline` line here (or in your own module, imported from your
config file):

    register_pipeline("my_algo", build, section="my_algo")   # settings = config.my_algo

The trainer and run setup never name a pipeline. A pipeline module may also own
training-row transforms that a `config.data` field switches on (SCoRe's two-turn
correction demos for its warm start: `config.data.correction_demos > 0`), and a
check between its settings and its warm start's data (`check_warm_start`).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

from selfimprove.pipelines import (judge_training, preference, rl, score, score_baselines,
                                   self_rewarding, sft, stp)
from selfimprove.pipelines.base import Pipeline, RunPieces


@dataclasses.dataclass(frozen=True)
class PipelineEntry:
  build: Callable[[RunPieces, dict], Pipeline]
  section: str | None = None   # the config section passed as `settings` ({} if None)
  # (settings, the warm start's config.data as a dict) -> None; raises ValueError on a mismatch.
  check_warm_start: Callable[[dict, dict], None] | None = None


_PIPELINES: dict[str, PipelineEntry] = {}
# config.data field -> (build(row_encoder, data settings dict, task, seed) -> row encoder,
# whether evaluation rows get it too).
_ROW_TRANSFORMS: dict[str, tuple[Callable[..., Any], bool]] = {}


def register_pipeline(name: str, build: Callable[[RunPieces, dict], Pipeline], *,
                      section: str | None = None,
                      check_warm_start: Callable[[dict, dict], None] | None = None) -> None:
  """Makes `name` a valid config.pipeline. Re-registering the same objects is a no-op."""
  entry = PipelineEntry(build, section, check_warm_start)
  if name in _PIPELINES and _PIPELINES[name] != entry:
    raise ValueError(f"Pipeline {name!r} is already registered (to {_PIPELINES[name].build!r}).")
  _PIPELINES[name] = entry


def register_row_transform(data_field: str, build: Callable[..., Any], *,
                           eval_rows: bool = False) -> None:
  """Training rows built by `build` whenever config.data.<data_field> is set (truthy); with
  eval_rows=True the evaluation rows too (fields the pipeline's `evaluate` reads, such as a
  preference pair's rejected answer)."""
  if data_field in _ROW_TRANSFORMS and _ROW_TRANSFORMS[data_field] != (build, eval_rows):
    raise ValueError(f"config.data.{data_field} already has a row transform.")
  _ROW_TRANSFORMS[data_field] = (build, eval_rows)


def get_pipeline_entry(name: str) -> PipelineEntry:
  if name not in _PIPELINES:
    raise KeyError(f"unknown pipeline {name!r}; registered pipelines: {sorted(_PIPELINES)}.")
  return _PIPELINES[name]


def pipeline_names() -> list[str]:
  return sorted(_PIPELINES)


def row_transforms() -> dict[str, tuple[Callable[..., Any], bool]]:
  return dict(_ROW_TRANSFORMS)


register_pipeline("sft", sft.build, section="sft")
# "score": SCoRe, its ablations and RL baselines, and (score_baselines) the paper's SFT baselines.
register_pipeline("score", score_baselines.build, section="score",
                  check_warm_start=score.check_warm_start)
register_row_transform("correction_demos", score.demo_rows)
# "stp": conjecturer-prover self-play, and expert iteration as its mode (config.stp.mode).
register_pipeline("stp", stp.build, section="stp")
# "rl": GRPO / RLOO / Dr. GRPO with verifier, self-judge, length and format rewards.
register_pipeline("rl", rl.build, section="rl")
# "judge_training": the P(True) judge fitted to verifier labels of the model's own samples,
# mixed with the task loss (Self-J / P(IK) style).
register_pipeline("judge_training", judge_training.build, section="judge_training")
# "preference": offline DPO / IPO / SPIN / SPPO on the data's (chosen, rejected) pairs.
register_pipeline("preference", preference.build, section="preference")
register_row_transform("preference_pairs", preference.pair_rows, eval_rows=True)
# "self_rewarding": self-generated pairs in the step: Self-Rewarding, Temporal Self-Rewarding,
# SPIN and SPPO (config.self_rewarding.method), in rounds or online.
register_pipeline("self_rewarding", self_rewarding.build, section="self_rewarding")

__all__ = ["Pipeline", "RunPieces", "register_pipeline", "register_row_transform",
           "get_pipeline_entry", "pipeline_names", "row_transforms"]
