# %% [markdown]
# # Memory: what an optimizer keeps, and what it costs
#
# An optimizer's state is often larger than the model: AdamW keeps two float32 moments, 8 bytes
# for every 4-byte parameter. This notebook measures the state of every optimizer in bytes per
# parameter from shapes alone (`jax.eval_shape`, nothing is allocated), then trains a small model
# with the memory-saving ones to see what the savings cost in loss.

# %%
import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np

import gradchain as gc


def gpt2_small_shapes(d=768, layers=12, vocab=50257, ctx=1024):
    """The parameter shapes of GPT-2 small (124M parameters, 148 arrays), as ShapeDtypeStructs."""
    f32 = lambda *s: jax.ShapeDtypeStruct(s, jnp.float32)
    block = lambda: {
        "ln_1": {"scale": f32(d), "bias": f32(d)},
        "attn": {"c_attn": {"kernel": f32(d, 3 * d), "bias": f32(3 * d)},
                 "c_proj": {"kernel": f32(d, d), "bias": f32(d)}},
        "ln_2": {"scale": f32(d), "bias": f32(d)},
        "mlp": {"c_fc": {"kernel": f32(d, 4 * d), "bias": f32(4 * d)},
                "c_proj": {"kernel": f32(4 * d, d), "bias": f32(d)}},
    }
    return {"wte": f32(vocab, d), "wpe": f32(ctx, d),
            "h": [block() for _ in range(layers)], "ln_f": {"scale": f32(d), "bias": f32(d)}}


params = gpt2_small_shapes()
n = sum(x.size for x in jax.tree.leaves(params))
print(f"{n:,} parameters in {len(jax.tree.leaves(params))} arrays")


def bytes_per_param(tx, params):
    state = jax.eval_shape(tx.init, params)
    size = sum(x.size for x in jax.tree.leaves(params))
    return sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(state)) / size


# %% [markdown]
# ## Bytes of state per parameter
#
# GaLore's state depends on its rank; Adafactor's on the shapes (an $n\times m$ matrix keeps
# $n + m$ numbers); the 8-bit optimizers keep one byte per moment plus a float32 scale per block
# of 256.

# %%
optimizers = {
    "sgd": gc.sgd(0.1),
    "sgd + momentum": gc.sgd(0.1, momentum=0.9),
    "lion": gc.lion(1e-4),
    "adafactor": gc.adafactor(1e-2),
    "adamw": gc.adamw(1e-3),
    "amsgrad": gc.amsgrad(1e-3),
    "sophia": gc.sophia(1e-3),
    "prodigy": gc.prodigy(),
    "schedule_free_adamw": gc.schedule_free_adamw(1e-3),
    "muon (+ adamw elsewhere)": gc.muon(0.02, param_labels=gc.muon_labels),
    "galore rank 128 (+ adam)": gc.galore(1e-3, rank=128),
    "adamw_8bit": gc.adamw_8bit(1e-3),
    "lion_8bit": gc.lion_8bit(1e-4),
    "sgd_8bit (momentum)": gc.sgd_8bit(0.1, momentum=0.9),
}
table = {name: bytes_per_param(tx, params) for name, tx in optimizers.items()}
for name, b in sorted(table.items(), key=lambda kv: kv[1]):
    print(f"{name:<26} {b:6.2f} bytes/param   {b * n / 2**20:8.1f} MiB for GPT-2 small")

# %% [markdown]
# ## What the savings cost
#
# The same small network trained with float32 AdamW, 8-bit AdamW, Adafactor and GaLore from the
# same initialisation on the same data. The 8-bit moments cost almost nothing; the factored and
# projected ones change the algorithm and converge differently.

# %%
k = jax.random.split(jax.random.PRNGKey(0), 4)
x = jax.random.normal(k[0], (1024, 64))
y = jnp.tanh(x @ jax.random.normal(k[1], (64, 16)) / 8)
small = {"w1": jax.random.normal(k[2], (64, 256)) / 8, "b1": jnp.zeros(256),
         "w2": jax.random.normal(k[3], (256, 16)) / 16, "b2": jnp.zeros(16)}


def loss_fn(p):
    return jnp.mean((jnp.tanh(x @ p["w1"] + p["b1"][None]) @ p["w2"] + p["b2"][None] - y) ** 2)


def train(tx, steps=400):
    def body(carry, _):
        p, s = carry
        loss, g = jax.value_and_grad(loss_fn)(p)
        u, s = tx.update(g, s, p)
        return (gc.apply_updates(p, u), s), loss

    _, losses = jax.jit(lambda p: jax.lax.scan(body, (p, tx.init(p)), None, length=steps))(small)
    return np.asarray(losses)


runs = {
    "adamw": gc.adamw(3e-3),
    "adamw_8bit": gc.adamw_8bit(3e-3, min_8bit_size=1024),
    "adafactor": gc.adafactor(3e-3, min_dim_size_to_factor=16, multiply_by_parameter_scale=False),
    "galore rank 8": gc.galore(3e-3, rank=8),
}
for name, tx in runs.items():
    losses = train(tx)
    plt.semilogy(losses, label=f"{name}: {bytes_per_param(tx, small):.2f} B/param, final {losses[-1]:.2e}")
plt.xlabel("step")
plt.ylabel("loss")
plt.legend(fontsize=8)
plt.show()

# %% [markdown]
# The 8-bit AdamW curve lies on the float32 one at a quarter of the state. Adafactor keeps
# almost nothing and pays a little; GaLore at rank 8 optimises inside an 8-dimensional subspace
# of each matrix's gradients and stalls until its projector is refreshed from a new SVD (every
# `update_proj_gap=200` steps: the drop at step 200).
