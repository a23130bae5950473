"""Model parameters as an Orbax checkpoint plus the TransformerConfig as JSON.

The layout a trainer's `init_from` reads (and `launch/convert.py` writes):

    <path>/params/            orbax StandardCheckpointer of nnx.to_pure_dict(params)
    <path>/model_config.json  {"transformer_config": {...}, ...metadata}

Restoring builds the abstract model from the config and reads every array
straight into its sharding on the given mesh.
"""

from __future__ import annotations

import json
import os
from typing import Any, Mapping

import jax
from flax import nnx
from jax.sharding import Mesh

from selfimprove import sharding
from selfimprove.models.config import TransformerConfig
from selfimprove.models.transformer import Transformer

CONFIG_FILE = "model_config.json"
PARAMS_DIR = "params"


def save_orbax_params(path: str, config: TransformerConfig, params: nnx.State,
                      metadata: Mapping[str, Any] | None = None) -> None:
  """Writes params (any sharding) and config under `path`; every process must call it.

  `metadata` (JSON-serialisable) is stored beside the config, e.g. the
  config.json of the HF model the params came from, so that a later export
  can reproduce it.
  """
  import orbax.checkpoint as ocp
  path = os.path.abspath(path)
  if jax.process_index() == 0:
    os.makedirs(path, exist_ok=True)
    with open(os.path.join(path, CONFIG_FILE), "w") as f:
      json.dump({"transformer_config": config.to_dict(), **(metadata or {})}, f, indent=2)
  with ocp.StandardCheckpointer() as checkpointer:
    checkpointer.save(os.path.join(path, PARAMS_DIR), nnx.to_pure_dict(params), force=True)


def read_orbax_metadata(path: str) -> dict[str, Any]:
  """The JSON written beside the params: {"transformer_config": ..., **metadata}."""
  config_path = os.path.join(path, CONFIG_FILE)
  if not os.path.exists(config_path):
    raise ValueError(
        f"{config_path} does not exist; {path} is not a checkpoint written by "
        f"save_orbax_params (or launch/convert.py).")
  with open(config_path) as f:
    try:
      data = json.load(f)
    except json.JSONDecodeError as e:
      raise ValueError(f"{config_path}: invalid JSON at line {e.lineno}: {e.msg}.") from None
  if "transformer_config" not in data:
    raise ValueError(f"{config_path}: no 'transformer_config' entry.")
  return data


def load_orbax_params(path: str, mesh: Mesh | None = None,
                      rules: sharding.Rules | None = None
                      ) -> tuple[TransformerConfig, nnx.GraphDef, nnx.State]:
  """Restores (config, graphdef, params) written by `save_orbax_params`.

  Args:
    path: the directory given to save_orbax_params.
    mesh: restore each parameter into its sharding on this mesh (None: the
      default device).
    rules: logical-axis rules (default: the ones saved in the config).
  """
  import orbax.checkpoint as ocp
  path = os.path.abspath(path)
  config = TransformerConfig.from_dict(read_orbax_metadata(path)["transformer_config"],
                                       os.path.join(path, CONFIG_FILE))
  if rules is not None:
    config = config.replace(sharding_rules=rules)
  abstract = nnx.eval_shape(lambda: Transformer(config, rngs=nnx.Rngs(params=0)))
  graphdef, abstract_state = nnx.split(abstract)
  if mesh is not None:
    shardings = sharding.state_shardings(abstract_state, mesh, config.sharding_rules)
  else:
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    shardings = jax.tree.map(lambda _: device, abstract_state)
  target = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                        nnx.to_pure_dict(abstract_state), nnx.to_pure_dict(shardings))
  with ocp.StandardCheckpointer() as checkpointer:
    try:
      restored = checkpointer.restore(os.path.join(path, PARAMS_DIR), target)
    except ValueError as e:
      raise ValueError(
          f"{os.path.join(path, PARAMS_DIR)}: the saved arrays do not match the model described "
          f"by {CONFIG_FILE}: {e}") from None
  nnx.replace_by_pure_dict(abstract_state, restored)
  return config, graphdef, abstract_state
