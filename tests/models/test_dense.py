"""`dense` (the projections' matmul with a hand-written VJP) against jnp.einsum and its autodiff."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from selfimprove.models.dense import dense
from selfimprove.models.lora import project


@pytest.mark.parametrize("equation, x_shape, w_shape", [
    ("bte,ehd->bthd", (2, 5, 8), (8, 3, 4)),      # q/k/v: one input axis, two output axes
    ("bthd,hde->bte", (2, 5, 3, 4), (3, 4, 8)),   # o: two input axes
    ("bte,em->btm", (2, 5, 8), (8, 6)),           # MLP
])
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_dense_values_and_gradients_equal_einsum_autodiff(equation, x_shape, w_shape, dtype):
  kx, kw, ky = jax.random.split(jax.random.key(0), 3)
  x = jax.random.normal(kx, x_shape, dtype)
  w = jax.random.normal(kw, w_shape, dtype)
  num_in = len(x_shape) - 2

  def loss(fn):
    y = fn(x, w)
    return lambda x, w: jnp.sum(fn(x, w).astype(jnp.float32) *
                                jax.random.normal(ky, y.shape, jnp.float32))

  ours = lambda x, w: dense(x, w, num_in)
  reference = lambda x, w: jnp.einsum(equation, x, w)
  tol = dict(rtol=1e-5, atol=1e-5) if dtype == jnp.float32 else dict(rtol=2e-2, atol=2e-2)
  np.testing.assert_allclose(np.asarray(ours(x, w), np.float32),
                             np.asarray(reference(x, w), np.float32), **tol)
  got = jax.jit(jax.grad(loss(ours), argnums=(0, 1)))(x, w)
  expected = jax.jit(jax.grad(loss(reference), argnums=(0, 1)))(x, w)
  for g, e in zip(got, expected):
    assert g.dtype == e.dtype and g.shape == e.shape
    np.testing.assert_allclose(np.asarray(g, np.float32), np.asarray(e, np.float32), **tol)


def test_project_uses_dense_only_for_natural_equations():
  x = jnp.ones((2, 3, 4))
  w = jnp.ones((4, 5))
  traced = str(jax.make_jaxpr(lambda x, w: project(x, "bte,em->btm", w, None, 1.0, jnp.float32))(x, w))
  assert "custom_vjp" in traced
  # An equation whose output is not (x's leading axes, w's output axes) stays an einsum.
  swapped = jax.make_jaxpr(lambda x, w: project(x, "bte,em->bmt", w, None, 1.0, jnp.float32))(x, w)
  assert "custom_vjp" not in str(swapped)
  np.testing.assert_allclose(project(x, "bte,em->bmt", w, None, 1.0, jnp.float32),
                             jnp.einsum("bte,em->bmt", x, w))


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_dense_with_a_float32_result_equals_einsum_with_preferred_element_type(dtype):
  """The LM head: [batch, seq, embed] x [embed, vocab] -> float32 logits, whatever the inputs."""
  kx, kw, ky = jax.random.split(jax.random.key(1), 3)
  x = jax.random.normal(kx, (2, 5, 8), dtype)
  w = jax.random.normal(kw, (8, 11), dtype)
  cotangent = jax.random.normal(ky, (2, 5, 11), jnp.float32)
  ours = lambda x, w: dense(x, w, 1, jnp.float32)
  reference = lambda x, w: jnp.einsum("bte,ev->btv", x, w, preferred_element_type=jnp.float32)
  assert ours(x, w).dtype == jnp.float32
  tol = dict(rtol=1e-5, atol=1e-5) if dtype == jnp.float32 else dict(rtol=2e-2, atol=2e-2)
  np.testing.assert_allclose(ours(x, w), reference(x, w), **tol)
  got = jax.jit(jax.grad(lambda x, w: jnp.sum(ours(x, w) * cotangent), argnums=(0, 1)))(x, w)
  expected = jax.jit(jax.grad(lambda x, w: jnp.sum(reference(x, w) * cotangent),
                              argnums=(0, 1)))(x, w)
  for g, e in zip(got, expected):
    assert g.dtype == e.dtype == dtype and g.shape == e.shape
    np.testing.assert_allclose(np.asarray(g, np.float32), np.asarray(e, np.float32), **tol)
