"""Session-wide tiny Hugging Face models (built once, shared by the HF, LoRA and convert tests)."""

import pytest

from tests.models.hf_models import make_hf_model


@pytest.fixture(scope="session")
def hf_case(tmp_path_factory):
  """hf_case(family) -> HFCase: the family's tiny model, saved once per session."""
  cases = {}

  def get(family: str):
    if family not in cases:
      cases[family] = make_hf_model(family, str(tmp_path_factory.mktemp(f"hf_{family}")))
    return cases[family]

  return get
