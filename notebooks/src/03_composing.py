# %% [markdown]
# # Composing your own optimizer
#
# A training recipe is a chain of small pieces: clipping, an adaptive scaling, weight decay on
# some parameters and not others, a schedule, accumulation, protection against bad steps. This
# notebook builds one piece at a time on a small MLP and shows what each piece changes.

# %%
import pathlib
import tempfile

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt

import gradchain as gc

kx, k1, k2, k3 = jax.random.split(jax.random.PRNGKey(0), 4)
x = jax.random.normal(kx, (512, 8))
y = jnp.sin(x @ jax.random.normal(k3, (8, 1)))
params = {
    "embed": {"table": jax.random.normal(k1, (8, 8)) * 0.5},
    "hidden": {"kernel": jax.random.normal(k2, (8, 64)) / jnp.sqrt(8.0), "bias": jnp.zeros(64)},
    "norm": {"scale": jnp.ones(64)},
    "out": {"kernel": jnp.zeros((64, 1)), "bias": jnp.zeros(1)},
}


def loss_fn(p, xb, yb):
    h = jnp.tanh((xb @ p["embed"]["table"]) @ p["hidden"]["kernel"] + p["hidden"]["bias"][None])
    h = h * p["norm"]["scale"][None]
    return jnp.mean((h @ p["out"]["kernel"] + p["out"]["bias"][None] - yb) ** 2)


def train(tx, steps=200, batch=64, poison=()):
    """Trains on minibatches; ``poison`` lists steps whose gradients are replaced by NaN."""
    state = tx.init(params)

    @jax.jit
    def step(p, s, i):
        xb = jax.lax.dynamic_slice_in_dim(x, (i * batch) % 512, batch)
        yb = jax.lax.dynamic_slice_in_dim(y, (i * batch) % 512, batch)
        loss, g = jax.value_and_grad(loss_fn)(p, xb, yb)
        g = jax.tree.map(lambda t: jnp.where(jnp.isin(i, jnp.asarray(poison or (-1,))), jnp.nan, t), g)
        u, s = tx.update(g, s, p)
        return gc.apply_updates(p, u), s, loss

    p, losses = params, []
    for i in range(steps):
        p, state, loss = step(p, state, i)
        losses.append(float(loss))
    return p, state, losses


# %% [markdown]
# ## Parameter paths, and a weight-decay mask written as a pattern
#
# Every leaf has a path string. Weight decay usually applies to weight matrices only, not to
# biases, normalisation scales or embeddings: say so with a pattern over the paths.

# %%
print(gc.tree_paths(params))
no_decay = gc.path_mask(exclude=r"bias|norm|embed")
print(no_decay(params))

# %% [markdown]
# ## Parameter groups
#
# `partition` gives each group of parameters its own optimizer, as PyTorch's param groups do.
# Here the embeddings get a smaller learning rate and no decay; the rest AdamW with decay on the
# kernels only. The state of each group is read by its label.

# %%
schedule = gc.warmup_cosine_decay_schedule(0.0, 1e-2, warmup_steps=20, decay_steps=200)
tx = gc.chain(
    gc.clip_by_global_norm(1.0),
    gc.partition(
        {
            "embed": gc.adam(1e-3),
            "rest": gc.adamw(schedule, weight_decay=0.05, mask=gc.path_mask(exclude=r"bias|norm")),
        },
        gc.path_labels({"embed": "embed"}, default="rest"),
    ),
)
tx = gc.with_live_hyperparams(tx)  # keeps the global norm (a logging field) in the state
print(tx)
p_groups, state, losses_groups = train(tx)
print("embed group's Adam step count:", state[1]["embed"].scale_by_adam.count)
print("global norm of the last gradients:", gc.tree_get(state, "global_norm"))

# %% [markdown]
# ## Gradient accumulation
#
# `MultiSteps(opt, k)` applies `opt` once every `k` micro-batches, to their mean gradient: the
# same step as one batch `k` times larger, with one extra buffer the size of the gradients.

# %%
accumulated = gc.MultiSteps(gc.adamw(3e-3), every_k_schedule=4)
p_acc, acc_state, _ = train(accumulated, steps=200, batch=16)
p_big, _, _ = train(gc.adamw(3e-3), steps=50, batch=64)
gap = max(float(jnp.max(jnp.abs(a - b))) for a, b in zip(jax.tree.leaves(p_acc), jax.tree.leaves(p_big)))
print("real optimizer steps taken by MultiSteps:", int(acc_state.gradient_step))
print(f"200 micro-batches of 16 vs 50 batches of 64 (the same rows): largest parameter gap {gap:.1e}")

# %% [markdown]
# ## Skipping bad steps
#
# With NaN gradients injected at five steps, plain AdamW is ruined for good; wrapped in
# `apply_if_finite`, the bad steps are skipped (updates zero, inner state untouched) and counted.

# %%
poison = (30, 31, 80, 120, 160)
_, _, losses_plain = train(gc.adamw(3e-3), poison=poison)
_, guarded_state, losses_guarded = train(gc.apply_if_finite(gc.adamw(3e-3), 10), poison=poison)
print("skipped steps:", int(guarded_state.total_notfinite))
print("adamw's loss after the first NaN step:", losses_plain[40])
fig, ax = plt.subplots(1, 2, figsize=(12, 3.5))
ax[0].plot(losses_groups)
ax[0].set(yscale="log", xlabel="step", title="clip -> groups (embed: adam; rest: adamw + schedule)")
ax[1].plot(losses_plain, lw=3, label="adamw (stops at the first NaN)")
ax[1].plot(losses_guarded, label="apply_if_finite(adamw)")
for s in poison:
    ax[1].axvline(s, color="r", alpha=0.2)
ax[1].set(yscale="log", xlabel="step", title="NaN gradients at the red lines")
ax[1].legend()
plt.show()

# %% [markdown]
# ## Checkpoints
#
# A state is a pytree of arrays, counters and hyperparameters included. It saves with plain
# numpy (or orbax-checkpoint) and restores into the structure of a template; training resumed
# from it continues bit for bit.

# %%
tx = gc.chain(gc.clip_by_global_norm(1.0), gc.adamw(3e-3))
p50, s50, _ = train(tx, steps=50)
path = pathlib.Path(tempfile.mkdtemp()) / "opt_state.npz"
gc.save_state(path, s50)
restored = gc.restore_state(path, like=tx.init(params))
same = all(bool(jnp.array_equal(a, b)) for a, b in zip(jax.tree.leaves(restored), jax.tree.leaves(s50)))
print(f"{path.name}: {path.stat().st_size} bytes; restored state identical: {same}")
