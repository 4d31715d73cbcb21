"""A tiny Vision Transformer (ViT) for small images.

patches (7x7 -> 16 tokens on 28x28) -> linear embedding to `dim` -> prepend
a learned CLS token -> add learned position embeddings -> `depth` pre-LayerNorm
blocks (x + MHA(LN(x)); x + MLP(LN(x)), MLP = dim -> mlp_dim -> act -> dim) ->
final LayerNorm -> linear head on the CLS token.

The patch embedding is a reshape plus one `hk.Linear`, the same map as a
`hk.Conv2D` with kernel = stride = patch size but without conv kernels (on
CPU the engine then runs whole epochs in one `lax.scan`, which is faster for
dense models).

`__call__` takes an optional `mask` (B, num_patches), True for valid patch
tokens (CLS is always valid). Masked tokens are excluded as attention *keys*
in every block; since LayerNorm and the MLP act per token, the CLS output and
every valid token's output are then independent of what masked tokens hold.

With the defaults (dim 64, depth 4, 4 heads, mlp_dim 128, patch 7) on
28x28x1 inputs and K = 10 it has 139,018 parameters: patch embedding 3,200,
CLS 64, positions 17 * 64 = 1,088, per block 33,472 (attention 4 * 4,160,
MLP 16,576, two LayerNorms 256), final LayerNorm 128, head 650.
"""
from __future__ import annotations

from typing import Callable

import haiku as hk
import jax
import jax.numpy as jnp

from zoo import initializers
from zoo.models.base import architecture, check_args


def patchify(x: jax.Array, patch_size: int) -> jax.Array:
  """(B, H, W, C) -> (B, (H/p)*(W/p), p*p*C), patches in row-major order
  (token i covers rows (i // (W/p)) * p.., columns (i % (W/p)) * p..)."""
  b, h, w, c = x.shape
  p = patch_size
  if h % p or w % p:
    raise ValueError(f"image size {h}x{w} is not a multiple of patch_size "
                     f"{p}")
  x = x.reshape(b, h // p, p, w // p, p, c)
  x = jnp.transpose(x, (0, 1, 3, 2, 4, 5))
  return x.reshape(b, (h // p) * (w // p), p * p * c)


class TransformerBlock(hk.Module):
  """Pre-LayerNorm block: x + MHA(LN(x)), then x + MLP(LN(x))."""

  def __init__(self, num_heads: int, mlp_dim: int,
               activation: Callable[[jax.Array], jax.Array],
               w_init: hk.initializers.Initializer | None, dropout: float,
               name: str | None = None):
    """Constructs a block (arguments as ViT's; the width is the input's)."""
    super().__init__(name=name)
    self.num_heads = num_heads
    self.mlp_dim = mlp_dim
    self.activation = activation
    self.w_init = w_init
    self.dropout = dropout

  def _drop(self, x, is_training):
    if is_training and self.dropout > 0:
      return hk.dropout(hk.next_rng_key(), self.dropout, x)
    return x

  def __call__(self, x: jax.Array, mask: jax.Array | None,
               is_training: bool) -> jax.Array:
    dim = x.shape[-1]
    if dim % self.num_heads:
      raise ValueError(f"dim {dim} is not a multiple of num_heads "
                       f"{self.num_heads}")
    ln = lambda name: hk.LayerNorm(axis=-1, create_scale=True,
                                   create_offset=True, name=name)
    h = ln("ln_attention")(x)
    h = hk.MultiHeadAttention(num_heads=self.num_heads,
                              key_size=dim // self.num_heads,
                              w_init=self.w_init, model_size=dim,
                              name="attention")(h, h, h, mask=mask)
    x = x + self._drop(h, is_training)
    h = ln("ln_mlp")(x)
    h = self.activation(hk.Linear(self.mlp_dim, w_init=self.w_init,
                                  name="mlp_in")(h))
    h = self._drop(h, is_training)
    h = hk.Linear(dim, w_init=self.w_init, name="mlp_out")(h)
    return x + self._drop(h, is_training)


@architecture("vit")
class ViT(hk.Module):
  """Vision Transformer classifier over non-overlapping square patches."""

  def __init__(self, num_outputs: int, patch_size: int = 7, dim: int = 64,
               depth: int = 4, num_heads: int = 4, mlp_dim: int = 128,
               activation: Callable[[jax.Array], jax.Array] = jax.nn.gelu,
               w_init: hk.initializers.Initializer = initializers.get(
                   "glorot_uniform"),
               dropout: float = 0.0, name: str | None = None):
    """Constructs the ViT.

    Args:
      num_outputs: Width of the logits.
      patch_size: Side of the square patches (must divide the image).
      dim: Token width.
      depth: Number of transformer blocks.
      num_heads: Attention heads (must divide `dim`).
      mlp_dim: Hidden width of each block's MLP.
      activation: Of each block's MLP.
      w_init: Initializer of every linear map (CLS and position embeddings:
        truncated normal, std 0.02); a config names it as `initializer`.
      dropout: Rate on the residual branches and the MLP hidden layer in
        training; 0 disables.
      name: Module name (default "vit").
    """
    super().__init__(name=name or "vit")
    check_args(self, patch_size=patch_size, dim=dim, depth=depth,
               num_heads=num_heads, mlp_dim=mlp_dim, dropout=dropout)
    self.num_outputs = num_outputs
    self.patch_size = patch_size
    self.dim = dim
    self.depth = depth
    self.num_heads = num_heads
    self.mlp_dim = mlp_dim
    self.activation = activation
    self.w_init = w_init
    self.dropout = dropout

  @hk.name_like("__call__")
  def features(self, x: jax.Array, is_training: bool = False,
               mask: jax.Array | None = None) -> jax.Array:
    """(B, H, W, C) images -> (B, dim): the CLS token after the final
    LayerNorm (what the head sees). `mask` as in `__call__`.

    Named like `__call__`, so every parameter keeps its name (`vit/block_0/
    ...`, `vit/ln_final`, `vit`'s own `cls_token`) and trained weights fit
    either method.
    """
    tokens = hk.Linear(self.dim, w_init=self.w_init, name="patch_embedding")(
        patchify(x, self.patch_size))
    batch, n = tokens.shape[:2]
    embed_init = hk.initializers.TruncatedNormal(stddev=0.02)
    cls = hk.get_parameter("cls_token", (1, 1, self.dim), init=embed_init)
    tokens = jnp.concatenate(
        [jnp.broadcast_to(cls, (batch, 1, self.dim)).astype(tokens.dtype),
         tokens], axis=1)
    pos = hk.get_parameter("position_embedding", (n + 1, self.dim),
                           init=embed_init)
    tokens = tokens + pos[None]
    attn_mask = None
    if mask is not None:
      mask = jnp.asarray(mask, bool)
      if mask.shape != (batch, n):
        raise ValueError(f"mask must have shape ({batch}, {n}) (one entry per "
                         f"patch token), got {mask.shape}")
      keys = jnp.concatenate([jnp.ones((batch, 1), bool), mask], axis=1)
      attn_mask = keys[:, None, None, :]  # (B, heads=1, queries=1, keys)
    tokens = self._drop(tokens, is_training)
    for i in range(self.depth):
      tokens = TransformerBlock(self.num_heads, self.mlp_dim, self.activation,
                                self.w_init, self.dropout,
                                name=f"block_{i}")(tokens, attn_mask,
                                                   is_training)
    return hk.LayerNorm(axis=-1, create_scale=True, create_offset=True,
                        name="ln_final")(tokens[:, 0])

  def __call__(self, x: jax.Array, is_training: bool = False,
               mask: jax.Array | None = None) -> jax.Array:
    """`x`: (B, H, W, C) images; `mask`: (B, num_patches) bool, True for the
    patch tokens to attend to (None: all). Returns (B, num_outputs)."""
    cls_out = self.features(x, is_training, mask)
    return hk.Linear(self.num_outputs, w_init=self.w_init, name="head")(cls_out)

  def _drop(self, x, is_training):
    if is_training and self.dropout > 0:
      return hk.dropout(hk.next_rng_key(), self.dropout, x)
    return x
