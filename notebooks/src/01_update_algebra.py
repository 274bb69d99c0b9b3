# %% [markdown]
# # The update algebra
#
# Every optimizer in gradchain is a chain of small *gradient transformations*. Each one maps
# incoming updates (at first, the gradients) to outgoing updates and keeps a little state. This
# notebook builds intuition for the pieces that make up SGD, momentum and Adam(W), one at a time,
# on problems small enough to see.

# %%
import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np

import gradchain as gc


def run(tx, loss, x0, steps):
    """Runs ``tx`` on ``loss`` from ``x0``; returns the trajectory as a (steps + 1, dim) array."""
    state = tx.init(x0)

    @jax.jit
    def step(x, state):
        updates, state = tx.update(jax.grad(loss)(x), state, x)
        return gc.apply_updates(x, updates), state

    xs = [x0]
    for _ in range(steps):
        x0, state = step(x0, state)
        xs.append(x0)
    return np.stack(xs)


# %% [markdown]
# ## 1. Plain SGD zig-zags in a ravine
#
# The quadratic $f(x, y) = \tfrac12 (x^2 + 25 y^2)$ is 25 times steeper across the ravine ($y$)
# than along it ($x$). SGD's step $-\eta \nabla f$ must be small enough for the steep direction
# ($\eta < 2/25$), so it crawls along the shallow one and bounces across the steep one.

# %%
def ravine(p):
    return 0.5 * (p[0] ** 2 + 25.0 * p[1] ** 2)


start = jnp.array([-9.0, 1.5])
paths = {
    "sgd, lr 0.075": run(gc.sgd(0.075), ravine, start, 40),
    "sgd + momentum 0.8, lr 0.02": run(gc.sgd(0.02, momentum=0.8), ravine, start, 40),
    "adam, lr 0.3": run(gc.adam(0.3), ravine, start, 40),
}
xx, yy = np.meshgrid(np.linspace(-10, 2, 200), np.linspace(-2, 2, 100))
fig, ax = plt.subplots(figsize=(9, 4))
ax.contour(xx, yy, 0.5 * (xx**2 + 25 * yy**2), levels=20, colors="0.8")
for name, path in paths.items():
    ax.plot(path[:, 0], path[:, 1], ".-", label=f"{name}: f = {float(ravine(path[-1])):.2g}")
ax.legend()
ax.set(title="40 steps in a ravine", xlabel="x (shallow)", ylabel="y (steep)")
plt.show()

# %% [markdown]
# ## 2. Momentum damps the zig-zag
#
# Heavy-ball momentum keeps a buffer $b_t = g_t + \mu b_{t-1}$ and steps along it. Gradients that
# flip sign from step to step (across the ravine) cancel in the buffer; gradients that keep their
# sign (along it) add up, up to $1/(1-\mu)$ times. The buffer is part of the state and is read by
# name:

# %%
tx = gc.sgd(1.0, momentum=0.9)
state = tx.init(jnp.zeros(2))
for g in (jnp.array([1.0, 0.0]), jnp.array([-1.0, 0.1])):
    _, state = tx.update(g, state)
print("velocity after g = [1, 0] then [-1, 0.1]:", gc.tree_get(state, "trace"))

# %% [markdown]
# ## 3. Adam gives each coordinate its own step size
#
# Adam divides a running mean of the gradient $\hat m$ by the root of a running mean of its square
# $\sqrt{\hat v}$. For a gradient of constant sign the ratio is about $\pm 1$ whatever the
# gradient's scale, so every coordinate moves by about the learning rate. Here one coordinate's
# gradient is a million times larger than the other's:

# %%
tx = gc.adam(0.1)
x = jnp.array([1.0, 1.0])
state = tx.init(x)
for _ in range(5):
    grads = jnp.array([1e3, 1e-3]) * jnp.sign(x)
    updates, state = tx.update(grads, state, x)
    x = gc.apply_updates(x, updates)
print("last Adam step per coordinate:", updates)
print("SGD with the same lr would step:", -0.1 * grads)

# %% [markdown]
# ## 4. Bias correction in the first steps
#
# The moments start at zero, so the raw running means are biased towards zero early on:
# $m_t = (1-\beta_1^t)\,\mathbb E[g]$ for a constant gradient. Dividing by $1 - \beta^t$ removes
# the bias. Without it the first steps would be tiny (the second moment's $\beta_2 = 0.999$ makes
# its bias last for thousands of steps):

# %%
tx = gc.scale_by_adam()
state = tx.init(jnp.zeros(1))
raw, corrected = [], []
for t in range(1, 51):
    u, state = tx.update(jnp.ones(1), state)
    m, v = gc.tree_get(state, "mu")[0], gc.tree_get(state, "nu")[0]
    raw.append(float(m / (jnp.sqrt(v) + 1e-8)))
    corrected.append(float(u[0]))
plt.figure(figsize=(7, 3))
plt.plot(raw, label="m / sqrt(v) without correction")
plt.plot(corrected, label="Adam's corrected step")
plt.xlabel("step")
plt.legend()
plt.show()
first, _ = gc.adam(0.1, eps=0.0).update(jnp.array([-3.0, 2.0]), gc.adam(0.1, eps=0.0).init(jnp.zeros(2)))
print("first step with eps = 0, lr = 0.1, g = [-3, 2]:", first)

# %% [markdown]
# That is $-\eta\,\mathrm{sign}(g)$, up to float32: $1 - eta_2^t$ is formed from the float32
# value of $\beta_2 = 0.999$, which is $1.3\times10^{-5}$ (relatively) away from 0.999, so the
# first step is $0.9999934\,\eta$ — exactly what optax computes (PyTorch forms the correction
# in double precision and gets $\eta$).

# %% [markdown]
# ## 5. What epsilon does
#
# $\epsilon$ is added to $\sqrt{\hat v}$. For gradients much larger than $\epsilon$ it changes
# nothing; for gradients near or below $\epsilon$ it turns Adam back into (momentum) SGD with
# learning rate $\eta/\epsilon$, damping steps on coordinates that barely receive gradient:

# %%
scales = np.logspace(-12, 0, 25)
for eps in (1e-8, 1e-4):
    tx = gc.scale_by_adam(eps=eps)
    steps = [float(tx.update(jnp.array([s]), tx.init(jnp.zeros(1)))[0][0]) for s in scales]
    plt.semilogx(scales, steps, label=f"eps = {eps:g}")
plt.xlabel("gradient magnitude")
plt.ylabel("first Adam step / lr")
plt.legend()
plt.show()

# %% [markdown]
# ## 6. Adam + L2 is not AdamW
#
# An L2 penalty adds $\lambda p$ to the *gradient*, before Adam normalises it: the decay is then
# divided by $\sqrt{\hat v}$ and is weak where gradients are large. AdamW adds $\lambda p$ to the
# *update*, after the normalisation: every weight decays at the same rate. In gradchain the only
# difference is where the weight-decay piece sits in the chain:

# %%
lam, lr = 0.1, 0.01
adam_l2 = gc.chain(gc.add_decayed_weights(lam), gc.scale_by_adam(), gc.scale_by_learning_rate(lr))
adamw = gc.chain(gc.scale_by_adam(), gc.add_decayed_weights(lam), gc.scale_by_learning_rate(lr))
print(adam_l2)
print(adamw)


def final_weight(tx, grad_scale, steps=200):
    """A unit weight after ``steps`` steps whose gradient is pure noise of the given scale."""
    p = jnp.ones(1)
    state = tx.init(p)
    key = jax.random.PRNGKey(0)
    for _ in range(steps):
        key, sub = jax.random.split(key)
        u, state = tx.update(grad_scale * jax.random.normal(sub, (1,)), state, p)
        p = gc.apply_updates(p, u)
    return float(p[0])


no_decay = gc.chain(gc.scale_by_adam(), gc.scale_by_learning_rate(lr))
print(f"AdamW's decay alone over 200 steps: (1 - lr * lambda)^200 = {(1 - lr * lam) ** 200:.3f}")
for scale in (0.01, 1.0, 100.0):
    base = final_weight(no_decay, scale)
    print(f"gradient noise {scale:>6}: weight with decay / weight without  "
          f"Adam+L2 {final_weight(adam_l2, scale) / base:.3f}   AdamW {final_weight(adamw, scale) / base:.3f}")

# %% [markdown]
# With small gradients the L2 term dominates Adam's normaliser and decays the weight strongly;
# with large gradients it is drowned out and the weight hardly decays. AdamW's decay,
# $\eta\lambda$ per step, is the same whatever the gradients' scale.
