# %% [markdown]
# # Learning-rate schedules
#
# A schedule is a pure function of the update count: update number $k$ (counting from 0) uses
# `schedule(k)`. gradchain's schedules have optax's names and arguments, print their arguments,
# check them when built, and evaluate over a range of steps for plotting with `.values(n)`.

# %%
import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np

import gradchain as gc

N = 1000
schedules = {
    "constant": gc.constant_schedule(1.0),
    "linear": gc.linear_schedule(1.0, 0.1, N),
    "cosine (alpha 0.1)": gc.cosine_decay_schedule(1.0, N, alpha=0.1),
    "exponential, staircase": gc.exponential_decay(1.0, 200, 0.5, staircase=True),
    "warmup + cosine": gc.warmup_cosine_decay_schedule(0.0, 1.0, 100, N, end_value=0.05),
    "warmup + linear": gc.warmup_linear_decay_schedule(0.0, 1.0, 100, N),
    "inverse sqrt (Transformer)": gc.warmup_inverse_sqrt_schedule(0.0, 1.0, 100),
    "one-cycle (cosine)": gc.cosine_onecycle_schedule(N, 1.0),
    "SGDR / warm restarts": gc.cosine_warm_restarts_schedule(1.0, T_0=100, T_mult=2, eta_min=0.01),
    "WSD, 1-sqrt cool-down": gc.warmup_stable_decay_schedule(
        0.0, 1.0, warmup_steps=100, total_steps=N, cooldown_steps=200, cooldown_type="1-sqrt"),
}
fig, axes = plt.subplots(2, 5, figsize=(17, 6), sharex=True, sharey=True)
for ax, (name, s) in zip(axes.flat, schedules.items()):
    ax.plot(s.values(N + 100))
    ax.axvline(N, color="0.7", ls=":")
    ax.set_title(name, fontsize=10)
fig.tight_layout()
plt.show()
print(schedules["warmup + cosine"])

# %% [markdown]
# ## Warmup + cosine, the LLM default
#
# `warmup_cosine_decay_schedule(init, peak, warmup_steps, decay_steps, end_value)` rises linearly
# to the peak over `warmup_steps`, then follows half a cosine down to `end_value` at
# `decay_steps`, which counts the warmup. Past the end it stays at `end_value`. PyTorch's
# `CosineAnnealingLR` keeps going as a cosine and rises again; `convention="pytorch"` gives those
# values:

# %%
optax_like = gc.warmup_cosine_decay_schedule(0.001, 1.0, 5, 20, end_value=0.1)
torch_like = gc.warmup_cosine_decay_schedule(0.001, 1.0, 5, 20, end_value=0.1, convention="pytorch")
print("optax  :", np.round(optax_like.values(26), 5))
print("pytorch:", np.round(torch_like.values(26), 5))

# %% [markdown]
# ## Warmup-stable-decay
#
# WSD holds the peak for most of the run and cools down only at the end, so one long run can be
# branched into cool-downs at several lengths. The plateau is exactly flat and the cool-down
# reaches the floor at the last step; three shapes are offered:

# %%
for kind in ("linear", "cosine", "1-sqrt"):
    s = gc.warmup_stable_decay_schedule(0.0, 1.0, warmup_steps=50, total_steps=N,
                                        cooldown_steps=300, end_value=0.1, cooldown_type=kind)
    plt.plot(s.values(N + 1), label=kind)
plt.legend()
plt.title("WSD cool-downs")
plt.show()

# %% [markdown]
# ## The learning rate is in the state
#
# Every float hyperparameter of every transformation may be a schedule. The state has optax's
# layout by default; `gc.with_live_hyperparams` also keeps the value a step used in the state, so
# logging it needs no other wrapper: read it by name.

# %%
schedule = gc.warmup_cosine_decay_schedule(0.0, 0.1, warmup_steps=20, decay_steps=100)
tx = gc.chain(gc.clip_by_global_norm(1.0), gc.adamw(schedule, weight_decay=1e-2))
tx = gc.with_live_hyperparams(tx)
params = {"w": jnp.ones(3)}
state = tx.init(params)


@jax.jit
def step(params, state):
    grads = jax.grad(lambda p: jnp.sum(p["w"] ** 2))(params)
    updates, state = tx.update(grads, state, params)
    return gc.apply_updates(params, updates), state


logged = []
for _ in range(120):
    params, state = step(params, state)
    logged.append(float(gc.tree_get(state, "learning_rate")))
plt.plot(logged, label="read from the state")
plt.plot(schedule.values(120), "--", label="the schedule")
plt.legend()
plt.show()
print("identical:", np.allclose(logged, schedule.values(120)))

# %% [markdown]
# A constant hyperparameter can also be changed between steps, for instance after a restart,
# without recompiling the step: `gc.tree_set(state, learning_rate=1e-3)`. And a schedule works
# for any other float hyperparameter too, here a one-cycle momentum for Adam's $\beta_1$:

# %%
n = 300
tx = gc.adam(gc.cosine_onecycle_schedule(n, 1e-2),
             b1=gc.piecewise_interpolate_schedule("cosine", 0.95, {int(0.3 * n): 0.85 / 0.95, n: 0.95 / 0.85}))
tx = gc.with_live_hyperparams(tx)
state = tx.init(params)
b1s = []
for _ in range(n):
    _, state = tx.update(params, state, params)
    b1s.append(float(gc.tree_get(state, "b1")))
plt.plot(b1s)
plt.title("b1 read back from the state")
plt.show()
