"""A small decoder-only transformer language model in plain JAX, for the demo.

Byte-level tokens (vocabulary 256), learned positional embeddings, pre-norm blocks with causal
multi-head attention and a GELU MLP. The blocks' weights are *stacked* along a leading layer axis
and applied with ``jax.lax.scan``, as large models are, so weight-decay masks and Muon's label
rules are exercised on stacked leaves.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

VOCAB = 256


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    d_model: int = 64
    n_layers: int = 2
    n_heads: int = 4
    seq_len: int = 64

    def __post_init__(self):
        if self.d_model % self.n_heads:
            raise ValueError(
                f"d_model ({self.d_model}) must be divisible by n_heads ({self.n_heads})"
            )


MODEL_SIZES = {
    "tiny": ModelConfig(d_model=32, n_layers=1, n_heads=2, seq_len=32),
    "small": ModelConfig(d_model=64, n_layers=2, n_heads=4, seq_len=64),
    "medium": ModelConfig(d_model=128, n_layers=4, n_heads=4, seq_len=128),
}


def init_params(config: ModelConfig, key: jax.Array) -> dict:
    d, n = config.d_model, config.n_layers
    ks = jax.random.split(key, 6)

    def dense(k, shape, fan_in):
        return jax.random.normal(k, shape, jnp.float32) / jnp.sqrt(fan_in)

    return {
        "embed": 0.02 * jax.random.normal(ks[0], (VOCAB, d), jnp.float32),
        "pos": 0.02 * jax.random.normal(ks[1], (config.seq_len, d), jnp.float32),
        "layers": {
            "ln1": {"scale": jnp.ones((n, d)), "bias": jnp.zeros((n, d))},
            "attn": {
                "qkv": dense(ks[2], (n, d, 3 * d), d),
                "proj": dense(ks[3], (n, d, d), d) / jnp.sqrt(2.0 * n),
            },
            "ln2": {"scale": jnp.ones((n, d)), "bias": jnp.zeros((n, d))},
            "mlp": {
                "fc": dense(ks[4], (n, d, 4 * d), d),
                "fc_bias": jnp.zeros((n, 4 * d)),
                "proj": dense(ks[5], (n, 4 * d, d), 4 * d) / jnp.sqrt(2.0 * n),
            },
        },
        "ln_f": {"scale": jnp.ones(d), "bias": jnp.zeros(d)},
        "head": jnp.zeros((d, VOCAB)),
    }


def _layer_norm(x, p):
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    lead = (None,) * (x.ndim - 1)
    return (x - mean) * jax.lax.rsqrt(var + 1e-5) * p["scale"][lead] + p["bias"][lead]


def apply(params: dict, tokens: jax.Array, n_heads: int) -> jax.Array:
    """Logits of the next byte at every position: ``(batch, seq) -> (batch, seq, 256)``."""
    b, t = tokens.shape
    x = params["embed"][tokens] + params["pos"][None, :t]
    d = x.shape[-1]
    hd = d // n_heads
    mask = jnp.tril(jnp.ones((t, t), bool))

    def block(x, lp):
        h = _layer_norm(x, lp["ln1"])
        q, k, v = jnp.split(h @ lp["attn"]["qkv"], 3, axis=-1)
        q, k, v = (z.reshape(b, t, n_heads, hd).transpose(0, 2, 1, 3) for z in (q, k, v))
        scores = (q @ k.transpose(0, 1, 3, 2)) / jnp.sqrt(float(hd))
        scores = jnp.where(mask[None, None], scores, -1e9)
        att = jax.nn.softmax(scores, axis=-1) @ v
        x = x + att.transpose(0, 2, 1, 3).reshape(b, t, d) @ lp["attn"]["proj"]
        h = _layer_norm(x, lp["ln2"])
        h = jax.nn.gelu(h @ lp["mlp"]["fc"] + lp["mlp"]["fc_bias"][None, None])
        return x + h @ lp["mlp"]["proj"], None

    x, _ = jax.lax.scan(block, x, params["layers"])
    return _layer_norm(x, params["ln_f"]) @ params["head"]


def loss_fn(params: dict, batch: jax.Array, n_heads: int) -> jax.Array:
    """Mean next-byte cross-entropy (nats) of ``batch`` of shape ``(batch, seq + 1)``."""
    logits = apply(params, batch[:, :-1], n_heads)
    logp = jax.nn.log_softmax(logits)
    target = batch[:, 1:]
    return -jnp.take_along_axis(logp, target[..., None], axis=-1).mean()


def sampled_label_loss(params: dict, batch: jax.Array, n_heads: int, key: jax.Array) -> jax.Array:
    """Cross-entropy against labels sampled from the model itself (for Sophia's GNB estimator)."""
    logits = apply(params, batch[:, :-1], n_heads)
    labels = jax.random.categorical(key, jax.lax.stop_gradient(logits))
    logp = jax.nn.log_softmax(logits)
    return -jnp.take_along_axis(logp, labels[..., None], axis=-1).mean()
