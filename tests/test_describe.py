"""``gc.describe``: every named optimizer renders with every hyperparameter bound, chains compose
by substitution, unknown pieces are named, and the rules of adamw, lion and adafactor have the
structure ALGORITHMS.md gives them."""

import dataclasses
import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from registry import TRANSFORMS

import gradchain as gc
from gradchain.core.base import transformation
from gradchain.describe import (
    Add,
    Compare,
    Description,
    Div,
    Enclosed,
    Func,
    Mul,
    Neg,
    Num,
    Pow,
    Select,
    Sym,
)

# Transformations whose every piece has a renderer: describe shows their whole rule as equations.
# (Listed, not assumed: one added without a renderer is shown by name, not an error.) The others
# are params_ema, lookahead, reduce_on_plateau and Sophia's two Hessian estimators.
FULLY_RENDERED = {
    "add_decayed_weights", "add_decoupled_weight_decay", "add_l2_penalty", "chain", "clip",
    "clip_by_block_rms", "clip_by_global_norm", "ema", "factored_second_moment", "freeze",
    "identity", "masked", "scale", "scale_by_adam", "scale_by_adamax", "scale_by_amsgrad",
    "scale_by_dadapt_adamw", "scale_by_factored_rms", "scale_by_galore", "scale_by_learning_rate",
    "scale_by_lion", "scale_by_muon", "scale_by_nadam", "scale_by_param_block_rms",
    "scale_by_prodigy", "scale_by_radam", "scale_by_rms", "scale_by_rss", "scale_by_schedule",
    "scale_by_shape", "scale_by_sophia", "scale_by_stddev", "scale_by_trust_ratio", "set_to_zero",
    "trace", "zero_nans",
    "named_chain", "to_optax", "partition", "multi_transform", "selective_transform",
    "sgd", "adam", "adamw", "rmsprop", "adafactor", "adagrad", "adamax", "adamaxw", "amsgrad",
    "nadam", "nadamw", "radam", "lion", "lamb", "lars", "sophia", "flatten", "zero1",
    "quantize_moments", "adam_8bit", "adamw_8bit", "adamw_4bit", "sgd_8bit", "lion_8bit", "galore",
    "muon",
    "apply_if_finite", "MultiSteps", "schedule_free", "schedule_free_sgd", "schedule_free_adamw",
    "prodigy", "dadapt_adamw",
}  # fmt: skip


def _pieces(tx):
    """Every transformation inside ``tx`` (itself included), through chains, groups and the
    fields of wrappers."""
    owner = getattr(getattr(tx, "update", None), "__self__", None)
    if not isinstance(tx, gc.GradientTransformation) and owner is not None:
        yield from _pieces(owner)
        return
    yield tx
    children = list(getattr(tx, "transforms", ()))
    if isinstance(getattr(tx, "transforms", None), dict):
        children = list(tx.transforms.values())
    if dataclasses.is_dataclass(tx):
        children += [
            getattr(tx, f.name)
            for f in dataclasses.fields(tx)
            if isinstance(getattr(tx, f.name), gc.GradientTransformation)
        ]
    for child in children:
        yield from _pieces(child)


def _all(d: Description):
    yield d
    for _, inner in d.inner:
        yield from _all(inner)


@pytest.mark.parametrize("entry", TRANSFORMS, ids=lambda e: e.id)
def test_every_optimizer_and_transformation_renders_and_names_every_hyperparameter(entry):
    tx = entry.build()
    d = gc.describe(tx)
    assert str(d) == d.text
    assert re.search(r"^  u_t = ", d.text, re.M), d.text
    assert d.latex.startswith("\\begin{aligned}") and "u_t &=" in d.latex
    assert d._repr_latex_() == f"$${d.latex}$$"
    assert d.latex in d._repr_markdown_()

    bound = {b.argument for block in _all(d) for b in block.bindings}
    opaque = {name for block in _all(d) for name in block.opaque}
    text = "\n".join(block.text for block in _all(d))
    for piece in _pieces(tx):
        if isinstance(piece, gc.ChainState | gc.EmptyState):
            continue
        if piece.name in opaque:
            # A piece shown by name lists every argument under settings, and describes the
            # transformations it wraps underneath.
            labels = {label for block in _all(d) for label, _ in block.inner}
            for field, value in piece._field_items():
                if isinstance(value, gc.GradientTransformation):
                    assert f"{piece.name}.{field}" in labels, (piece.name, field)
                else:
                    assert f"{field}=" in text, (piece.name, field)
            continue
        for h in piece.hyperparams:
            # Bound to a symbol, or (a constant the rule writes out, as scale(-1)'s sign) listed.
            listed = any(
                s.startswith(f"{piece.name}:") and f" {h}=" in s
                for block in _all(d)
                for s in block.settings
            )
            assert f"{piece.name}.{h}" in bound or listed, (piece.name, h, d.text)
        for key in getattr(piece, "config", {}):
            assert f"{key}=" in text, (piece.name, key)
    if entry.name in FULLY_RENDERED:
        assert d.opaque == (), d.text


def test_a_chain_composes_its_pieces_into_one_block_bound_to_its_hyperparameters():
    schedule = gc.warmup_cosine_decay_schedule(0.0, 1e-3, 100, 1000)
    d = gc.describe(gc.chain(gc.clip_by_global_norm(1.0), gc.adamw(schedule, weight_decay=0.1)))
    lines = [e.text() for e in d.equations]
    assert lines == [
        "u1_t = g_t·min(1, M/‖g_t‖)",
        "m_t = β1·m_{t-1} + (1 − β1)·u1_t",
        "v_t = β2·v_{t-1} + (1 − β2)·u1_t^2",
        "m̂_t = m_t/(1 − β1^t)",
        "v̂_t = v_t/(1 − β2^t)",
        "u_t = −η_{t-1}·(m̂_t/(sqrt(v̂_t + ε_root) + ε) + λ·p_{t-1})",
    ]
    values = {b.symbol.text(): b.value for b in d.bindings}
    assert values["M"] == "1" and values["λ"] == "0.1" and values["β2"] == "0.999"
    assert values["η_{t-1}"] == f"the schedule {schedule!r}"
    assert d.symbols()["η_{t-1}"] == "scale_by_learning_rate.learning_rate"
    assert d.opaque == ()
    assert r"\frac{{\hat m}_{t}}{\sqrt{{\hat v}_{t} + \epsilon_{root}} + \epsilon}" in d.latex


def test_repeated_pieces_get_distinct_symbols():
    d = gc.describe(gc.chain(gc.ema(0.9), gc.ema(0.5), gc.scale(0.1)))
    assert [e.text() for e in d.equations] == [
        "e_t = β·e_{t-1} + (1 − β)·g_t",
        "e'_t = β'·e'_{t-1} + (1 − β')·e_t/(1 − β^t)",
        "u_t = α·e'_t/(1 − β'^t)",
    ]
    assert {b.symbol.text(): b.value for b in d.bindings} == {"β": "0.9", "β'": "0.5", "α": "0.1"}


@transformation("halve", hyperparams=("factor",))
class _Halve(gc.GradientTransformation):
    factor: float = 0.5

    def init(self, params):
        return gc.EmptyState()

    def update(self, updates, state, params=None, **extra_args):
        return updates, state


def test_pieces_without_a_renderer_are_named_not_dropped():
    d = gc.describe(gc.chain(optax.clip(1.0), _Halve(), gc.sgd(0.1)))
    assert d.equations[-1].text() == "u_t = −η·halve(optax.clip(g_t))"
    assert d.opaque == ("optax.clip", "halve")
    assert "halve: factor=0.5" in d.settings
    assert "not rendered (shown as named functions): optax.clip, halve" in d.text


def test_a_wrapper_without_a_renderer_describes_what_it_wraps():
    d = gc.describe(gc.lookahead(gc.adam(0.1), sync_period=5, slow_step_size=0.5))
    assert d.opaque == ("lookahead",)
    assert "sync_period=5" in d.text and "slow_step_size=0.5" in d.text
    (label, inner), *_ = d.inner
    assert label == "lookahead.fast_optimizer" and inner.title.startswith("adam(")
    assert inner.equations[-1].text() == "u_t = −η·m̂_t/(sqrt(v̂_t + ε_root) + ε)"


# ---------------------------------------------------------------------------------------------
# The rules against ALGORITHMS.md, compared as structure: for each equation, its left-hand side
# and the symbols of each top-level term of its right-hand side, symbols by family (m_t and
# m_{t-1} are both m; a time index is not a family) and functions (sqrt, max, sign) left out.

_SYMBOL = re.compile(r"[^\W\d_]\u0302?[\w']*?(?:_\{[^}]*\}|_[^\W_]+)?(?![\w(])")
_TIME = re.compile(r"_(?:t|\{t[-+]1\}|\{t\})$")


def _family(symbol: str, renames: dict) -> str:
    symbol = renames.get(symbol, symbol)
    return renames.get(_TIME.sub("", symbol), _TIME.sub("", symbol))


def _terms(rhs: str) -> list[str]:
    terms, depth, start = [], 0, 0
    for i, ch in enumerate(rhs):
        if ch in "({":
            depth += 1
        elif ch in ")}":
            depth -= 1
        elif depth == 0 and ch in "+-−" and rhs[:i].strip():
            terms.append(rhs[start:i])
            start = i + 1
    return [*terms, rhs[start:]]


def _structure(line: str, renames: dict = {}):  # noqa: B006 (read only)
    lhs, rhs = (side.strip() for side in line.replace("²", "^2").split("=", 1))
    term_families = set()
    for term in _terms(rhs):
        found = frozenset(
            [_family(s, renames) for s in _SYMBOL.findall(term)]
            + [f"^{n}" for n in re.findall(r"\^(\d+)", term)]  # squares are part of a term
        )
        if found:
            term_families.add(found)
    return _family(lhs, renames), frozenset(term_families)


def _rules(equations) -> list[str]:
    return [f"{e.lhs.text()} = {e.rhs.text()}" for e in equations]


def _assert_same_rules(rendered: list[str], sheet: list[str], renames: dict):
    got = {_structure(line)[0]: _structure(line)[1] for line in rendered}
    for line in sheet:
        lhs, terms = _structure(line, renames)
        assert lhs in got, (line, rendered)
        assert got[lhs] == terms, (line, sorted(map(sorted, got[lhs])), sorted(map(sorted, terms)))


def test_adamw_matches_algorithms_md():
    # ALGORITHMS.md §3.1 and §3.2 (u_t of adamw), verbatim; the sheet writes m̂ for m̂_t and ε_r
    # for ε_root.
    sheet = [
        "m_t = β1 m_{t-1} + (1−β1) g_t",
        "v_t = β2 v_{t-1} + (1−β2) |g_t|²",
        "m̂  = m_t/(1−β1^t)",
        "v̂ = v_t/(1−β2^t)",
        "u_t = −η_{t-1}·( m̂/(sqrt(v̂+ε_r)+ε) + λ·p_{t-1} )",
    ]
    d = gc.describe(gc.adamw(gc.linear_schedule(1e-3, 0.0, 100), weight_decay=0.1))
    _assert_same_rules(_rules(d.equations), sheet, {"ε_r": "ε_root"})
    assert len(d.equations) == len(sheet)


def test_lion_matches_algorithms_md():
    # ALGORITHMS.md §5.1, verbatim but for d_t = sign(c_t), which the sheet names and describe
    # substitutes into u_t.
    sheet = [
        "c_t = β1·m_{t-1} + (1−β1)·g_t",
        "m_t = β2·m_{t-1} + (1−β2)·g_t",
        "u_t = −η·(sign(c_t) + λ·p_{t-1})",
    ]
    d = gc.describe(gc.lion(1e-4, weight_decay=0.1))
    _assert_same_rules(_rules(d.equations), sheet, {})
    assert len(d.equations) == len(sheet)


def test_adafactor_matches_algorithms_md():
    # ALGORITHMS.md §4.2 (optax's factored_second_moment, decay_offset=0 so c − step_offset + 1
    # is t) for the moments, in the paper's names of §4.1 (R, C for v_row, v_col; G for G2);
    # §4.1 for the step: X_t = X_{t-1} − α_t Û_t with α_t = max(ε2, RMS(X_{t-1}))·ρ_t and
    # Û_t = U_t/max(1, RMS(U_t)/d), α_t and Û_t substituted; X is p, ρ_t the learning rate η,
    # U_t the unclipped update (describe's u1_t). "mean(v_row along the d1 axis)" is written
    # mean_d1(v_row), and the factored estimate V̂ = v_row·v_col/mean_d1(v_row) is named as in
    # §4.1 rather than written into u's exponents.
    sheet = [
        "β̂ = 1 − (c + 1)^(−decay_rate)",
        "G2 = |g|² + ε1",
        "v_row = β̂ v_row + (1−β̂) mean_d0(G2)",
        "v_col = β̂ v_col + (1−β̂) mean_d1(G2)",
        "V̂ = v_row·v_col/mean_d1(v_row)",
        "U = g/sqrt(V̂)",
        "u_t = −max(ε2, RMS(X_{t-1}))·ρ_t·U_t/max(1, RMS(U_t)/d)",
    ]
    renames = {
        "c": "t",
        "decay_rate": "k",
        "G2": "G",
        "g": "g",
        "v_row": "R",
        "v_col": "C",
        "U": "u1",
        "X": "p",
        "ρ": "η",
    }
    d = gc.describe(gc.adafactor(0.01, min_dim_size_to_factor=2))
    factored = [e for e in d.equations if e.where != "other leaves"]
    _assert_same_rules(_rules(factored), sheet, renames)
    # Unfactored leaves (§4.2, "v = β̂v + (1−β̂)G2", spaced to separate the symbols).
    others = _rules(e for e in d.equations if e.where == "other leaves")
    _assert_same_rules(others, ["v = β̂ v + (1−β̂) G2"], {**renames, "v": "V"})


# ---------------------------------------------------------------------------------------------
# The rendered rule computes what the optimizer computes: an interpreter of describe's equations
# (written here, sharing nothing with the transformations' code) run step by step against the
# optimizer's jitted updates on one vector leaf, where a per-leaf norm is the global one. In
# float64, where the two differ by rounding only (in float32 RAdam's rho_inf, formed from the
# constructor's 1 - b2 as optax does, is 0.6% off the rule's; see scale_by_radam).

_FUNCTIONS = {
    "max": jnp.maximum,
    "min": jnp.minimum,
    "sign": jnp.sign,
    "tanh": jnp.tanh,
    "clip": jnp.clip,
    "RMS": lambda x: jnp.sqrt(jnp.mean(x * x)),
    "dot": lambda a, b: jnp.sum(a * b),
    # Adafactor's factors, for the (6, 4) matrix of the tests: d0 (largest) is axis 0.
    "mean_d0": lambda x: jnp.mean(x, axis=0, keepdims=True),
    "mean_d1": lambda x: jnp.mean(x, axis=1, keepdims=True),
}
_ENCLOSED = {
    "sqrt(": jnp.sqrt,
    "|": jnp.abs,
    "‖": jnp.linalg.norm,
}
_COMPARE = {"<": jnp.less, ">": jnp.greater, "≥": jnp.greater_equal}


def _evaluate(e, env):
    ev = lambda x: _evaluate(x, env)
    match e:
        case Sym(name=name):
            return env[name]
        case Num(value=value):
            return jnp.float64(value)
        case Add(a, b):
            return ev(a) + ev(b)
        case Neg(x=x):
            return -ev(x)
        case Mul(a, b):
            return ev(a) * ev(b)
        case Div(a, b):
            return ev(a) / ev(b)
        case Pow(a, b):
            return ev(a) ** ev(b)
        case Func(name=name, args=args):
            return _FUNCTIONS[name](*map(ev, args))
        case Enclosed(x=x, text_ends=(left, right)):
            return jnp.sum(jnp.abs(ev(x))) if right == "‖_1" else _ENCLOSED[left](ev(x))
        case Select(a=a, condition=c, b=b):
            return jnp.where(ev(c), ev(a), ev(b))
        case Compare(left=a, op=op, right=b):
            return _COMPARE[op](ev(a), ev(b))
    raise TypeError(f"no interpretation of {e!r}")


def _run_description(d: Description, grads, params, initial: dict):
    """The updates describe's equations give for ``grads`` (params updated along)."""
    schedules = {b.symbol.text(): b.source for b in d.bindings if callable(b.source)}
    env = {
        b.symbol.text(): jnp.float64(b.source)
        for b in d.bindings
        if b.symbol.text() not in schedules
    }
    env["p_0"] = params  # Prodigy's anchor: the parameters at init
    previous = dict(initial)
    out = []
    for t, g in enumerate(grads, start=1):
        env.update({"t": jnp.float64(t), "g_t": g, "p_{t-1}": params, **previous})
        env.update({name: jnp.float64(f(t - 1)) for name, f in schedules.items()})
        for eq in d.equations:
            if eq.where == ("other leaves" if params.ndim >= 2 else "factored leaves"):
                continue
            name = eq.lhs.text()
            env[name] = _evaluate(eq.rhs, env)
        previous = {n[:-2] + "_{t-1}": v for n, v in env.items() if n.endswith("_t") and n != "g_t"}
        previous.update({n[:-6] + "_{t}": v for n, v in env.items() if n.endswith("_{t+1}")})
        out.append(env["u_t"])
        params = params + env["u_t"]
    return out


def _zero_state(d: Description):
    return {
        e.lhs.text().removesuffix("_t") + "_{t-1}": jnp.float64(0)
        for e in d.equations
        if e.lhs.text().endswith("_t")
    }


_AT_PARAMS = {"z_{t-1}": "params", "x_{t-1}": "params", "y_{t-1}": "params"}  # schedule-free

INTERPRETED = {
    "sgd": (lambda: gc.sgd(0.1), {}),
    "sgd_nesterov": (lambda: gc.sgd(0.1, momentum=0.9, nesterov=True), {}),
    "adam": (lambda: gc.adam(0.1, eps_root=1e-6), {}),
    "adamw": (lambda: gc.adamw(gc.cosine_decay_schedule(0.1, 10), weight_decay=0.1), {}),
    "nadamw": (lambda: gc.nadamw(0.1, weight_decay=0.1), {}),
    "nadam_torch": (lambda: gc.nadam(0.1, momentum_decay=4e-3), {"Π_{t-1}": 1.0}),
    "amsgrad": (lambda: gc.amsgrad(0.1), {}),
    "amsgrad_torch": (lambda: gc.amsgrad(0.1, debias_after_max=True), {}),
    "adamaxw": (lambda: gc.adamaxw(0.1), {}),
    "radam": (lambda: gc.radam(0.1, nesterov=True), {}),
    "radam_torch": (
        lambda: gc.radam(0.1, strict_threshold=True, eps_before_bias_correction=True),
        {},
    ),
    "rmsprop": (lambda: gc.rmsprop(0.1, momentum=0.9, nesterov=True, initial_scale=0.5), {}),
    "rmsprop_centered": (
        lambda: gc.rmsprop(0.1, centered=True, eps_in_sqrt=False),
        {},
    ),
    "adagrad": (lambda: gc.adagrad(0.1), {"s_{t-1}": 0.1}),
    "lion": (lambda: gc.lion(0.1, weight_decay=0.1), {}),
    "lion_refined": (lambda: gc.chain(gc.scale_by_lion(mode="refined"), gc.scale(-0.1)), {}),
    "lamb": (lambda: gc.lamb(0.1, weight_decay=0.1), {}),
    "lars": (lambda: gc.lars(0.1, weight_decay=0.1, nesterov=True), {}),
    "clip_ema": (
        lambda: gc.chain(gc.clip_by_global_norm(0.5), gc.ema(0.8), gc.clip(0.3), gc.scale(-1.0)),
        {},
    ),
    "adafactor_vector": (lambda: gc.adafactor(0.1, momentum=0.9, weight_decay_rate=0.1), {}),
    "adafactor_matrix": (lambda: gc.adafactor(0.1, min_dim_size_to_factor=2), {}, (6, 4)),
    "schedule_free_sgd": (lambda: gc.schedule_free_sgd(0.1, warmup_steps=3), _AT_PARAMS),
    "schedule_free_adamw": (lambda: gc.schedule_free_adamw(0.1, weight_decay=0.1), _AT_PARAMS),
    "prodigy": (lambda: gc.prodigy(1.0, weight_decay=0.1), {"d_{t-1}": 1e-6}),
    "dadapt_adamw": (lambda: gc.dadapt_adamw(1.0, weight_decay=0.1), {"d_{t-1}": 1e-6}),
}


@pytest.mark.parametrize("case", INTERPRETED)
def test_the_rendered_rule_computes_the_optimizers_updates(case):
    # Adafactor forms its decay in float32 even under x64 (as optax): 1e-7 relative.
    rtol = 1e-6 if case.startswith("adafactor") else 1e-10
    with jax.enable_x64(True):
        _check_rendered_rule(rtol, *INTERPRETED[case])


def _check_rendered_rule(rtol, build, initial, shape=(7,)):
    tx = build()
    rng = np.random.default_rng(0)
    params = jnp.asarray(rng.standard_normal(shape), jnp.float64)
    grads = [jnp.asarray(rng.standard_normal(shape), jnp.float64) for _ in range(12)]
    d = gc.describe(tx)
    state = {
        **_zero_state(d),
        **{k: params if v == "params" else jnp.float64(v) for k, v in initial.items()},
    }
    if "ν_{t-1}" in state and "initial_scale" in d.title:
        state["ν_{t-1}"] = jnp.float64(tx.initial_scale)
    expected = _run_description(d, grads, params, state)

    step = jax.jit(tx.update)
    opt_state, p = tx.init(params), params
    for k, g in enumerate(grads):
        u, opt_state = step(g, opt_state, p)
        # The same operations in other orders over 12 steps: a few float64 ulps.
        np.testing.assert_allclose(u, expected[k], rtol=rtol, atol=1e-14, err_msg=f"step {k + 1}")
        p = p + u
