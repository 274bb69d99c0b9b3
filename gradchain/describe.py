r"""``describe(tx)``: the update rule of any transformation or chain, as math.

Each transformation class has a *renderer*: a function from the expression of its input updates
:math:`u` to the expression of its output, which also records the state equations it needs
(:math:`m_t = \beta_1 m_{t-1} + (1-\beta_1) g_t`) and binds its symbols to the transformation's
hyperparameters. A chain composes its pieces by substitution, so
``chain(clip_by_global_norm(1.0), adamw(schedule))`` reads as one block of equations that ends
in the update :math:`u_t` the chain returns, with every symbol bound to a value or a schedule::

    >>> print(gradchain.describe(gradchain.adamw(1e-3)))
    adamw(learning_rate=0.001, b1=0.9, ...)
      m_t = β1·m_{t-1} + (1 − β1)·g_t
      ...
      u_t = −η·(m̂_t/(sqrt(v̂_t + ε_root) + ε) + λ·p_{t-1})

A piece without a renderer (an optax transformation, a research wrapper) appears as a named
function of its input, :math:`\operatorname{name}(u)`, with its arguments listed and any
transformations it wraps described underneath: it is named, never dropped. ``Description.opaque``
lists such pieces. New renderers are added with :func:`register_renderer`.

Notation follows ALGORITHMS.md: :math:`t = 1, 2, \ldots` counts updates, :math:`g_t` is the
gradient (the chain's input), :math:`p_{t-1}` the parameters before the update and :math:`u_t`
the update returned (applied as :math:`p_t = p_{t-1} + u_t`). A hyperparameter given as a
schedule :math:`s` carries the subscript :math:`t-1`: update :math:`t` uses :math:`s(t-1)`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from gradchain.contrib.galore import ScaleByGalore
from gradchain.contrib.learning_rate_free import ScaleByDAdaptAdamW, ScaleByProdigy
from gradchain.contrib.muon import Muon, ScaleByMuon, ScaleByShape
from gradchain.contrib.privacy import DifferentiallyPrivateAggregate
from gradchain.contrib.schedule_free import ScheduleFree
from gradchain.contrib.sophia import ScaleBySophia
from gradchain.core.base import (
    Chain,
    GradientTransformation,
    Identity,
    NamedChain,
    _foreign_name,
    _short_repr,
)
from gradchain.optimizers.adagrad import ScaleByRss
from gradchain.optimizers.adam_variants import (
    ScaleByAdamax,
    ScaleByAmsgrad,
    ScaleByNadam,
    ScaleByRadam,
)
from gradchain.optimizers.lion import ScaleByLion
from gradchain.optimizers.trust_ratio import ScaleByTrustRatio
from gradchain.scale_out.flat import Flatten
from gradchain.scale_out.quantization import QuantizeMoments
from gradchain.scale_out.sharding import Zero1
from gradchain.transforms.adaptive import ScaleByAdam, ScaleByRms, ScaleByStddev, scale_by_adam
from gradchain.transforms.clipping import Clip, ClipByBlockRms, ClipByGlobalNorm
from gradchain.transforms.combinators import (
    ApplyIfFinite,
    Masked,
    MultiSteps,
    Partition,
    SetToZero,
    ZeroNans,
)
from gradchain.transforms.decay import AddDecoupledWeightDecay, AddL2Penalty
from gradchain.transforms.factored import (
    FactoredSecondMoment,
    ScaleByParamBlockRms,
    adafactor_decay_rate,
)
from gradchain.transforms.momentum import Ema, Trace
from gradchain.transforms.scaling import Scale, ScaleByLearningRate, ScaleBySchedule

__all__ = ["Description", "describe", "register_renderer"]


# ---------------------------------------------------------------------------------------------
# Expressions: just enough algebra to print an update rule as text and as LaTeX

_ADD, _MUL, _POW, _ATOM = 1, 2, 3, 4


@dataclasses.dataclass(frozen=True)
class _Style:
    """How one output format writes the operators: plain text or LaTeX."""

    latex: bool
    minus: str
    times: str
    open: str
    close: str


_TEXT = _Style(False, "−", "·", "(", ")")
_LATEX = _Style(True, "-", r"\,", r"\left(", r"\right)")


class Expr:
    """A node of an update-rule expression; ``text()`` and ``latex()`` print it."""

    prec = _ATOM

    def render(self, style: _Style) -> str:
        raise NotImplementedError

    def text(self) -> str:
        return self.render(_TEXT)

    def latex(self) -> str:
        return self.render(_LATEX)

    def __add__(self, other) -> Expr:
        return Add(self, _expr(other))

    def __radd__(self, other) -> Expr:
        return Add(_expr(other), self)

    def __sub__(self, other) -> Expr:
        return Add(self, Neg(_expr(other)))

    def __rsub__(self, other) -> Expr:
        return Add(_expr(other), Neg(self))

    def __mul__(self, other) -> Expr:
        return Mul(self, _expr(other))

    def __rmul__(self, other) -> Expr:
        return Mul(_expr(other), self)

    def __truediv__(self, other) -> Expr:
        return Div(self, _expr(other))

    def __rtruediv__(self, other) -> Expr:
        return Div(_expr(other), self)

    def __pow__(self, other) -> Expr:
        return Pow(self, _expr(other))

    def __neg__(self) -> Expr:
        return Neg(self)


def _expr(x) -> Expr:
    return x if isinstance(x, Expr) else Num(x)


def _operand(e: Expr, below: int, style: _Style) -> str:
    """``e`` rendered, in parentheses when it binds less tightly than ``below``."""
    inner = e.render(style)
    return f"{style.open}{inner}{style.close}" if e.prec < below else inner


@dataclasses.dataclass(frozen=True)
class Sym(Expr):
    """A symbol: ``name`` as printed in plain text (``β1``, ``m_{t-1}``), ``tex`` in LaTeX."""

    name: str
    tex: str

    def render(self, style: _Style) -> str:
        return self.tex if style.latex else self.name


@dataclasses.dataclass(frozen=True)
class Num(Expr):
    value: float

    def render(self, style: _Style) -> str:
        return _format_number(self.value)


@dataclasses.dataclass(frozen=True)
class _Binary(Expr):
    left: Expr
    right: Expr


class Add(_Binary):
    prec = _ADD

    def render(self, style: _Style) -> str:
        if isinstance(self.right, Neg):
            return f"{self.left.render(style)} {style.minus} {_operand(self.right.x, _MUL, style)}"
        return f"{self.left.render(style)} + {self.right.render(style)}"


@dataclasses.dataclass(frozen=True)
class Neg(Expr):
    x: Expr
    prec = _MUL

    def render(self, style: _Style) -> str:
        return f"{style.minus}{_operand(self.x, _MUL, style)}"


class Mul(_Binary):
    prec = _MUL

    def render(self, style: _Style) -> str:
        # A negated factor is parenthesised on either side, never written "a·-b".
        return style.times.join(
            _operand(f, _MUL + isinstance(f, Neg), style) for f in (self.left, self.right)
        )


class Div(_Binary):
    prec = _MUL

    def render(self, style: _Style) -> str:
        if style.latex:
            return rf"\frac{{{self.left.latex()}}}{{{self.right.latex()}}}"
        return f"{_operand(self.left, _MUL, style)}/{_operand(self.right, _POW, style)}"


class Pow(_Binary):
    prec = _POW

    def render(self, style: _Style) -> str:
        base = _operand(self.left, _ATOM, style)
        if style.latex:
            return f"{{{base}}}^{{{self.right.latex()}}}"
        return f"{base}^{_operand(self.right, _ATOM, style)}"


@dataclasses.dataclass(frozen=True)
class Func(Expr):
    """``name(args)``; ``tex`` is the LaTeX operator (``\\max``; default ``\\operatorname``)."""

    name: str
    args: tuple
    tex: str = ""

    def render(self, style: _Style) -> str:
        args = ", ".join(a.render(style) for a in self.args)
        if style.latex:
            op = self.tex or r"\operatorname{" + self.name + "}"
            return f"{op}{style.open}{args}{style.close}"
        return f"{self.name}({args})"


@dataclasses.dataclass(frozen=True)
class Enclosed(Expr):
    """``x`` between delimiters, as text and as LaTeX: ``sqrt(x)``, ``|x|``, ``‖x‖``."""

    x: Expr
    text_ends: tuple[str, str]
    latex_ends: tuple[str, str]

    def render(self, style: _Style) -> str:
        left, right = self.latex_ends if style.latex else self.text_ends
        return f"{left}{self.x.render(style)}{right}"


def _sqrt(x: Expr) -> Expr:
    return Enclosed(x, ("sqrt(", ")"), (r"\sqrt{", "}"))


def _abs(x: Expr) -> Expr:
    return Enclosed(x, ("|", "|"), (r"\left|", r"\right|"))


def _norm(x: Expr) -> Expr:
    return Enclosed(x, ("‖", "‖"), (r"\lVert ", r" \rVert"))


@dataclasses.dataclass(frozen=True)
class Compare(Expr):
    """A condition ``left op right``; ``op`` is one of ``<``, ``>``, ``≥``."""

    left: Expr
    op: str
    right: Expr

    def render(self, style: _Style) -> str:
        op = {"≥": r"\ge"}.get(self.op, self.op) if style.latex else self.op
        return f"{self.left.render(style)} {op} {self.right.render(style)}"


@dataclasses.dataclass(frozen=True)
class Select(Expr):
    """``a`` where ``condition`` holds, else ``b`` (per leaf or per coordinate)."""

    a: Expr
    condition: Expr
    b: Expr

    def render(self, style: _Style) -> str:
        if_, else_ = (r"\text{ if }", r"\text{ else }") if style.latex else ("if", "else")
        a, c, b = (x.render(style) for x in (self.a, self.condition, self.b))
        return f"{style.open}{a} {if_} {c} {else_} {b}{style.close}"


@dataclasses.dataclass(frozen=True)
class ByLabel(Expr):
    """One expression per parameter label (``partition``'s groups)."""

    cases: tuple

    def render(self, style: _Style) -> str:
        if not style.latex:
            return "{" + "; ".join(f"{label}: {e.text()}" for label, e in self.cases) + "}"
        rows = r" \\ ".join(
            rf"{e.latex()} & \text{{on leaves labelled {_latex_text(label)}}}"
            for label, e in self.cases
        )
        return rf"\begin{{cases}} {rows} \end{{cases}}"


def _l1_norm(x: Expr) -> Expr:
    return Enclosed(x, ("‖", "‖_1"), (r"\lVert ", r" \rVert_1"))


def _dot(a: Expr, b: Expr) -> Expr:
    return Func("dot", (a, b), r"\operatorname{dot}")


def _max(*args) -> Expr:
    return Func("max", tuple(map(_expr, args)), r"\max")


def _min(*args) -> Expr:
    return Func("min", tuple(map(_expr, args)), r"\min")


def _rms(x: Expr) -> Expr:
    return Func("RMS", (x,))


def _format_number(v) -> str:
    v = float(v)
    return str(int(v)) if v.is_integer() and abs(v) < 1e6 else f"{v:g}"


# ---------------------------------------------------------------------------------------------
# The description


@dataclasses.dataclass(frozen=True)
class Equation:
    """``lhs = rhs``, optionally holding only ``where`` (a condition in words)."""

    lhs: Expr
    rhs: Expr
    where: str = ""

    def text(self) -> str:
        cond = f"    [{self.where}]" if self.where else ""
        return f"{self.lhs.text()} = {self.rhs.text()}{cond}"

    def latex(self) -> str:
        cond = rf" \quad \text{{{_latex_text(self.where)}}}" if self.where else ""
        return f"{self.lhs.latex()} &= {self.rhs.latex()}{cond}"


@dataclasses.dataclass(frozen=True)
class Binding:
    """A symbol bound to a hyperparameter: ``argument`` is ``piece.field``, ``value`` printed,
    ``source`` the value itself (a number or a schedule)."""

    symbol: Sym
    argument: str
    value: str
    source: Any = dataclasses.field(default=None, compare=False, repr=False)

    def text(self) -> str:
        return f"{self.symbol.text()} = {self.value}  ({self.argument})"


@dataclasses.dataclass(frozen=True)
class Description:
    """What ``describe(tx)`` returns: equations, symbol bindings and the pieces' settings.

    ``str()`` and ``.text`` give plain text, ``.latex`` an ``aligned`` block; in a notebook it
    renders as math (``_repr_latex_``, ``_repr_markdown_``). ``opaque`` names the pieces shown
    as functions because no renderer knows them; ``inner`` holds the descriptions of the
    transformations they wrap.
    """

    title: str
    equations: tuple[Equation, ...]
    bindings: tuple[Binding, ...]
    settings: tuple[str, ...]
    notes: tuple[str, ...]
    opaque: tuple[str, ...]
    inner: tuple[tuple[str, Description], ...] = ()

    @property
    def text(self) -> str:
        lines = [self.title]
        lines += ["  " + e.text() for e in self.equations]
        if self.bindings:
            lines.append("where")
            lines += ["  " + b.text() for b in self.bindings]
        if self.settings:
            lines.append("settings")
            lines += ["  " + s for s in self.settings]
        lines += [f"note: {n}" for n in self.notes]
        if self.opaque:
            lines.append("not rendered (shown as named functions): " + ", ".join(self.opaque))
        for label, d in self.inner:
            lines.append(f"with {label} =")
            lines += ["  " + line for line in d.text.splitlines()]
        return "\n".join(lines)

    @property
    def latex(self) -> str:
        rows = [e.latex() for e in self.equations]
        rows += [
            rf"{b.symbol.latex()} &= \text{{{_latex_text(b.value)}}} \quad "
            rf"\text{{({_latex_text(b.argument)})}}"
            for b in self.bindings
        ]
        block = "\\begin{aligned}\n" + " \\\\\n".join(rows) + "\n\\end{aligned}"
        for label, d in self.inner:
            block += rf" \\ \text{{with {_latex_text(label)}:}} \\ " + d.latex
        return block

    def _repr_latex_(self) -> str:
        return f"$${self.latex}$$"

    def _repr_markdown_(self) -> str:
        parts = [f"**{self.title}**", "", f"$$\n{self.latex}\n$$"]
        if self.settings:
            parts += ["", "Settings: " + "; ".join(f"`{s}`" for s in self.settings)]
        parts += [f"*{n}*" for n in self.notes]
        if self.opaque:
            parts.append("Not rendered (named functions): " + ", ".join(self.opaque))
        return "\n\n".join(parts)

    def __str__(self) -> str:
        return self.text

    def symbols(self) -> dict[str, str]:
        """Each bound symbol's text, mapped to its ``piece.field`` argument."""
        return {b.symbol.text(): b.argument for b in self.bindings}


def _latex_text(s: str) -> str:
    for a, b in (("\\", r"\textbackslash "), ("_", r"\_"), ("{", r"\{"), ("}", r"\}")):
        s = s.replace(a, b)
    for a, b in (("&", r"\&"), ("%", r"\%"), ("#", r"\#"), ("$", r"\$")):
        s = s.replace(a, b)
    return s


# ---------------------------------------------------------------------------------------------
# Rendering context: symbols, state equations and bindings collected along a chain


class Family:
    """A symbol family such as :math:`m` (``m_t``, ``m_{t-1}``), unique within a description."""

    def __init__(self, name: str, tex: str):
        self.name, self.tex = name, tex

    def at(self, sub: str) -> Sym:
        text_sub = sub if sub.isalnum() and len(sub) == 1 else "{" + sub + "}"
        return Sym(f"{self.name}_{text_sub}", f"{{{self.tex}}}_{{{sub}}}")

    def bare(self) -> Sym:
        return Sym(self.name, self.tex)


G = Sym("g_t", "g_t")
P = Sym("p_{t-1}", "p_{t-1}")
T = Sym("t", "t")
_RESERVED = {"g", "p", "t", "u"}


class Context:
    """Collects what the renderers of one description produce."""

    def __init__(self):
        self.equations: list[Equation] = []
        self.bindings: list[Binding] = []
        self.settings: list[str] = []
        self.notes: list[str] = []
        self.opaque: list[str] = []
        self.inner: list[tuple[str, Description]] = []
        self._families: set[str] = set(_RESERVED)
        self._named = 0

    def family(self, name: str, tex: str) -> Family:
        """A fresh family: ``name`` or, when a piece before took it, ``name`` with a prime."""
        while name in self._families:
            name, tex = name + "'", tex + "'"
        self._families.add(name)
        return Family(name, tex)

    def define(self, lhs: Sym, rhs: Expr, where: str = "") -> Sym:
        self.equations.append(Equation(lhs, rhs, where))
        return lhs

    def hyper(self, tx, field: str, name: str, tex: str) -> Expr:
        """The symbol of ``tx.field``, bound to its value (a schedule: indexed by ``t-1``)."""
        family = self.family(name, tex)
        return self.bind(
            family.at("t-1") if callable(getattr(tx, field)) else family.bare(), tx, field
        )

    def bind(self, sym: Sym, tx, field: str) -> Sym:
        """Records that ``sym`` stands for ``tx.field``."""
        value = getattr(tx, field)
        self.bindings.append(Binding(sym, f"{tx.name}.{field}", _describe_value(value), value))
        return sym

    def setting(self, tx, *fields: str) -> None:
        """Lists ``tx``'s non-symbol arguments (flags, dtypes, masks) by name and value."""
        args = ", ".join(f"{f}={_short_repr(getattr(tx, f))}" for f in fields)
        self.settings.append(f"{tx.name}: {args}")

    def note(self, text: str) -> None:
        if text not in self.notes:
            self.notes.append(text)

    def name(self, u: Expr) -> Expr:
        """``u`` itself when it is a symbol, else a new symbol defined as ``u``: for renderers
        that use their input more than once."""
        if isinstance(u, Sym):
            return u
        self._named += 1
        return self.define(self.family(f"u{self._named}", f"u^{{({self._named})}}").at("t"), u)


def _describe_value(value) -> str:
    if callable(value):
        return f"the schedule {_short_repr(value)}"
    if not isinstance(value, bool | str | None) and np.ndim(value) == 0:
        with contextlib.suppress(TypeError, ValueError):
            v = float(value)
            return _format_number(v) if math.isfinite(v) else repr(v)
    return _short_repr(value)


# ---------------------------------------------------------------------------------------------
# The renderer registry

Renderer = Callable[[Any, Expr, Context], Expr]
_RENDERERS: dict[type, Renderer] = {}


def register_renderer(*classes: type) -> Callable[[Renderer], Renderer]:
    """Decorator: ``fn(tx, u, ctx) -> Expr`` renders instances of ``classes``.

    ``u`` is the expression of the updates the piece receives; the renderer returns the
    expression of the updates it passes on, adding state equations with ``ctx.define``, symbols
    for hyperparameters with ``ctx.hyper`` and the remaining arguments with ``ctx.setting``.
    Only instances of exactly these classes: a subclass is shown by name until registered.
    """

    def wrap(fn: Renderer) -> Renderer:
        for cls in classes:
            _RENDERERS[cls] = fn
        return fn

    return wrap


def _wrapped_for_optax(tx) -> GradientTransformation | None:
    """The gradchain transformation inside ``to_optax(tx)`` (optax's wrapper of its methods)."""
    if isinstance(tx, GradientTransformation):
        return None
    owner = getattr(getattr(tx, "update", None), "__self__", None)
    return owner if isinstance(owner, GradientTransformation) else None


def _render(tx, u: Expr, ctx: Context) -> Expr:
    # The exact class only: a subclass may compute something else, so it is shown by name until
    # it has a renderer.
    renderer = _RENDERERS.get(type(tx))
    if renderer is not None:
        return renderer(tx, u, ctx)
    owner = _wrapped_for_optax(tx)
    if owner is not None:
        ctx.note(f"wrapped for optax as {type(tx).__name__}")
        return _render(owner, u, ctx)
    return _render_opaque(tx, u, ctx)


def _wrapped(tx: GradientTransformation) -> list[tuple[str, object]]:
    """The transformations ``tx`` holds in its fields (``inner``, a dict of them, ...)."""
    found: list[tuple[str, object]] = []
    for field, value in tx._field_items():
        if _is_transformation(value):
            found.append((f"{tx.name}.{field}", value))
        elif isinstance(value, Mapping):
            found += [
                (f"{tx.name}.{field}[{k!r}]", v) for k, v in value.items() if _is_transformation(v)
            ]
    return found


def _is_transformation(x) -> bool:
    return hasattr(x, "init") and hasattr(x, "update") and not isinstance(x, type)


def _render_opaque(tx, u: Expr, ctx: Context) -> Expr:
    if isinstance(tx, GradientTransformation):
        name = tx.name
        wrapped = _wrapped(tx)
        inner_ids = {id(t) for _, t in wrapped}
        fields = [
            (k, v)
            for k, v in tx._field_items()
            if id(v) not in inner_ids and not isinstance(v, Mapping)
        ]
        if fields:
            ctx.settings.append(f"{name}: " + ", ".join(f"{k}={_short_repr(v)}" for k, v in fields))
        for label, inner in wrapped:
            ctx.inner.append((label, describe(inner)))
    else:
        name = f"optax.{_foreign_name(tx)}"
    ctx.opaque.append(name)
    return Func(name, (u,), rf"\operatorname{{{_latex_text(name)}}}")


# ---------------------------------------------------------------------------------------------
# describe


def describe(tx: Any) -> Description:
    """The update rule of ``tx`` (a transformation, a chain or a named optimizer) as math.

    Returns a :class:`Description`: print it for text, ``.latex`` for LaTeX; notebooks render it
    as math. Every hyperparameter appears, bound to its value or schedule; pieces that no
    renderer knows (optax transformations, some wrappers) appear as named functions and are
    listed in ``opaque``.
    """
    ctx = Context()
    out = _render(tx, G, ctx)
    ctx.define(Sym("u_t", "u_t"), out)
    title = _title(tx)
    # A named optimizer's call is the title already; nested ones stay under settings.
    ctx.settings = [s for s in ctx.settings if s != title]
    return Description(
        title=title,
        equations=tuple(ctx.equations),
        bindings=tuple(ctx.bindings),
        settings=tuple(ctx.settings),
        notes=tuple(
            ["t = 1, 2, … counts updates; the update is applied as p_t = p_{t-1} + u_t"] + ctx.notes
        ),
        opaque=tuple(ctx.opaque),
        inner=tuple(ctx.inner),
    )


def _title(tx) -> str:
    owner = _wrapped_for_optax(tx)
    if owner is not None:
        return _title(owner)
    if isinstance(tx, Chain):
        if tx.name != "chain":
            args = ", ".join(f"{k}={_short_repr(v)}" for k, v in tx.config.items())
            return f"{tx.name}({args})"
        return "chain(" + ", ".join(_title(t) for t in tx.transforms) + ")"
    if isinstance(tx, Muon):
        return (
            f"{tx.name}(" + ", ".join(f"{k}={_short_repr(v)}" for k, v in tx.config.items()) + ")"
        )
    if isinstance(tx, GradientTransformation):
        return repr(tx)
    return f"optax.{_foreign_name(tx)}"


# ---------------------------------------------------------------------------------------------
# Renderers: chains and pass-through wrappers


@register_renderer(Chain)
def _chain(tx: Chain, u: Expr, ctx: Context) -> Expr:
    if tx.name != "chain":
        ctx.settings.append(_title(tx))
    for piece in tx.transforms:
        u = _render(piece, u, ctx)
    return u


@register_renderer(NamedChain)
def _named_chain(tx, u, ctx):
    for piece in tx.transforms:
        u = _render(piece, u, ctx)
    return u


@register_renderer(Identity)
def _identity(tx, u, ctx):
    return u


@register_renderer(Flatten)
def _flatten(tx, u, ctx):
    ctx.note(f"flatten: the inner rule runs on flat buffers (min_size={tx.min_size})")
    return _render(tx.inner, u, ctx)


@register_renderer(Zero1)
def _zero1(tx, u, ctx):
    ctx.note(f"zero1: the inner rule's state is sharded over the mesh axis {tx.axis!r}")
    return _render(tx.inner, u, ctx)


@register_renderer(QuantizeMoments)
def _quantize_moments(tx, u, ctx):
    ctx.note(
        f"quantize_moments: the inner rule's moments are stored in {tx.bits} bits, in blocks of "
        f"{tx.block_size} with one scale each (moments={_short_repr(tx.moments)})"
        + (
            "; at 4 bits an unsigned moment of 2+ axes has one scale per row and column "
            "(rank-1 normalization)"
            if tx.bits == 4
            else ""
        )
        + ("; codes rounded stochastically" if tx.stochastic_rounding else "")
    )
    return _render(tx.inner, u, ctx)


@register_renderer(Masked)
def _masked(tx, u, ctx):
    mask = ctx.bind(ctx.family("M", "M").bare(), tx, "mask")
    ctx.note("M: the leaves a mask selects; the others pass through unchanged")
    u = ctx.name(u)
    return Select(_render(tx.inner, u, ctx), mask, u)


def _groups(ctx, u: Expr, labels: str, groups) -> Expr:
    ctx.note(f"labels: each leaf goes to the rule of its label, given by {labels}")
    u = ctx.name(u)
    return ByLabel(tuple((str(label), _render(t, u, ctx)) for label, t in groups))


@register_renderer(Partition)
def _partition(tx, u, ctx):
    ctx.setting(tx, "mask_compatible_extra_args")
    return _groups(ctx, u, _short_repr(tx.param_labels), tx.transforms.items())


@register_renderer(Muon)
def _muon(tx, u, ctx):
    ctx.settings.append(_title(tx))
    return _groups(ctx, u, _short_repr(tx.param_labels), tx.transforms.items())


@register_renderer(SetToZero)
def _set_to_zero(tx, u, ctx):
    return Num(0)


@register_renderer(ZeroNans)
def _zero_nans(tx, u, ctx):
    return Func("nan_to_zero", (u,))


# ---------------------------------------------------------------------------------------------
# Renderers: scaling, clipping, decay, momentum


@register_renderer(ScaleByLearningRate)
def _scale_by_learning_rate(tx, u, ctx):
    lr = ctx.hyper(tx, "learning_rate", "η", r"\eta")
    return -(lr * u) if tx.flip_sign else lr * u


@register_renderer(Scale)
def _scale(tx, u, ctx):
    if not callable(tx.step_size) and float(tx.step_size) == -1.0:
        ctx.setting(tx, "step_size")
        return -u
    return ctx.hyper(tx, "step_size", "α", r"\alpha") * u


@register_renderer(ScaleBySchedule)
def _scale_by_schedule(tx, u, ctx):
    return ctx.hyper(tx, "step_size_fn", "s", "s") * u


@register_renderer(Clip)
def _clip(tx, u, ctx):
    delta = ctx.hyper(tx, "max_delta", "δ", r"\delta")
    return Func("clip", (u, -delta, delta))


@register_renderer(ClipByGlobalNorm)
def _clip_by_global_norm(tx, u, ctx):
    max_norm = ctx.hyper(tx, "max_norm", "M", "M")
    u = ctx.name(u)
    ctx.note("‖x‖: the norm of all leaves together (the global norm)")
    return u * _min(1, max_norm / _norm(u))


@register_renderer(ClipByBlockRms)
def _clip_by_block_rms(tx, u, ctx):
    d = ctx.hyper(tx, "threshold", "d", "d")
    u = ctx.name(u)
    ctx.note("RMS(x): the root mean square of x over each leaf")
    return u / _max(1, _rms(u) / d)


@register_renderer(DifferentiallyPrivateAggregate)
def _differentially_private_aggregate(tx, u, ctx):
    clip = ctx.hyper(tx, "l2_norm_clip", "C", "C")
    sigma = ctx.hyper(tx, "noise_multiplier", "σ", r"\sigma")
    ctx.setting(tx, "key", "seed")
    ctx.note(
        "differentially_private_aggregate takes per-example gradients: g_{t,b} is example b's "
        "of the B along the leading axis, ‖x‖ the norm of all its leaves together (factor 1 "
        "where it is 0), z_t ~ N(0, I) drawn from the key in the state"
    )
    example = Sym("g_{t,b}", "g_{t,b}")
    clipped = Func("Σ_b", (example * _min(1, clip / _norm(example)),), r"\sum_b")
    return (clipped + sigma * clip * Sym("z_t", "z_t")) / Sym("B", "B")


@register_renderer(AddDecoupledWeightDecay, AddL2Penalty)
def _weight_decay(tx, u, ctx):
    lam = ctx.hyper(tx, "weight_decay", "λ", r"\lambda")
    ctx.setting(tx, "mask")
    return u + lam * P


@register_renderer(ScaleByParamBlockRms)
def _scale_by_param_block_rms(tx, u, ctx):
    eps2 = ctx.hyper(tx, "min_scale", "ε2", r"\epsilon_2")
    ctx.note("RMS(x): the root mean square of x over each leaf")
    return u * _max(_rms(P), eps2)


@register_renderer(Trace)
def _trace(tx, u, ctx):
    mu = ctx.hyper(tx, "decay", "μ", r"\mu")
    ctx.setting(tx, "nesterov", "accumulator_dtype")
    b = ctx.family("b", "b")
    u = ctx.name(u)
    b_t = ctx.define(b.at("t"), u + mu * b.at("t-1"))
    return u + mu * b_t if tx.nesterov else b_t


@register_renderer(Ema)
def _ema(tx, u, ctx):
    beta = ctx.hyper(tx, "decay", "β", r"\beta")
    ctx.setting(tx, "debias", "accumulator_dtype")
    e = ctx.family("e", "e")
    e_t = ctx.define(e.at("t"), beta * e.at("t-1") + (1 - beta) * u)
    return e_t / (1 - beta**T) if tx.debias else e_t


# ---------------------------------------------------------------------------------------------
# Renderers: adaptive moments


def _moment(ctx, name: str, tex: str, decay: Expr, x: Expr) -> Sym:
    f = ctx.family(name, tex)
    return ctx.define(f.at("t"), decay * f.at("t-1") + (1 - decay) * x)


def _debiased(ctx, name: str, tex: str, moment: Sym, decay: Expr) -> Sym:
    return ctx.define(ctx.family(name, tex).at("t"), moment / (1 - decay**T))


def _adam_symbols(tx, ctx, with_root: bool = True):
    b1 = ctx.hyper(tx, "b1", "β1", r"\beta_1")
    b2 = ctx.hyper(tx, "b2", "β2", r"\beta_2")
    eps = ctx.hyper(tx, "eps", "ε", r"\epsilon")
    eps_root = ctx.hyper(tx, "eps_root", "ε_root", r"\epsilon_{root}") if with_root else None
    return b1, b2, eps, eps_root


def _adam_direction(m_hat: Expr, v_hat: Expr, eps: Expr, eps_root: Expr) -> Expr:
    return m_hat / (_sqrt(v_hat + eps_root) + eps)


@register_renderer(ScaleByAdam)
def _scale_by_adam(tx, u, ctx):
    b1, b2, eps, eps_root = _adam_symbols(tx, ctx)
    ctx.setting(tx, "mu_dtype", "nu_dtype", "nesterov")
    g = ctx.name(u)
    m = _moment(ctx, "m", "m", b1, g)
    v = _moment(ctx, "v", "v", b2, g**2)
    if tx.nesterov:
        m_hat = _nesterov_debiased(ctx, m, g, b1, True)
    else:
        m_hat = _debiased(ctx, "m̂", r"\hat m", m, b1)
    v_hat = _debiased(ctx, "v̂", r"\hat v", v, b2)
    return _adam_direction(m_hat, v_hat, eps, eps_root)


@register_renderer(ScaleByAmsgrad)
def _scale_by_amsgrad(tx, u, ctx):
    b1, b2, eps, eps_root = _adam_symbols(tx, ctx)
    ctx.setting(tx, "bias_correction_mu", "bias_correction_nu", "debias_after_max")
    g = ctx.name(u)
    m = _moment(ctx, "m", "m", b1, g)
    v = _moment(ctx, "v", "v", b2, g**2)
    m_hat = _debiased(ctx, "m̂", r"\hat m", m, b1) if tx.bias_correction_mu else m
    v_max = ctx.family("ν_max", r"\nu^{max}")
    if tx.debias_after_max:
        top = ctx.define(v_max.at("t"), _max(v_max.at("t-1"), v))
        return _adam_direction(m_hat, top / (1 - b2**T), eps, eps_root)
    v_eff = _debiased(ctx, "v̂", r"\hat v", v, b2) if tx.bias_correction_nu else v
    top = ctx.define(v_max.at("t"), _max(v_max.at("t-1"), v_eff))
    return _adam_direction(m_hat, top, eps, eps_root)


@register_renderer(ScaleByAdamax)
def _scale_by_adamax(tx, u, ctx):
    b1, b2, eps, _ = _adam_symbols(tx, ctx, with_root=False)
    g = ctx.name(u)
    m = _moment(ctx, "m", "m", b1, g)
    nu = ctx.family("ν", r"\nu")
    nu_t = ctx.define(nu.at("t"), _max(_abs(g) + eps, b2 * nu.at("t-1")))
    return m / (1 - b1**T) / nu_t


@register_renderer(ScaleByRadam)
def _scale_by_radam(tx, u, ctx):
    b1, b2, eps, eps_root = _adam_symbols(tx, ctx)
    threshold = ctx.hyper(tx, "threshold", "ρ_min", r"\rho_{min}")
    ctx.setting(tx, "nesterov", "strict_threshold", "eps_before_bias_correction")
    g = ctx.name(u)
    m = _moment(ctx, "m", "m", b1, g)
    v = _moment(ctx, "v", "v", b2, g**2)
    if tx.nesterov:
        m_hat = _nesterov_debiased(ctx, m, g, b1, True)
    else:
        m_hat = _debiased(ctx, "m̂", r"\hat m", m, b1)
    v_hat = _debiased(ctx, "v̂", r"\hat v", v, b2)
    rho_inf = ctx.define(ctx.family("ρ_∞", r"\rho_\infty").bare(), 2 / (1 - b2) - 1)
    rho = ctx.define(ctx.family("ρ", r"\rho").at("t"), rho_inf - 2 * T * b2**T / (1 - b2**T))
    r = ctx.define(
        ctx.family("r", "r").at("t"),
        _sqrt((rho - 4) * (rho - 2) * rho_inf / ((rho_inf - 4) * (rho_inf - 2) * rho)),
    )
    if tx.eps_before_bias_correction:
        eps = eps / _sqrt(1 - b2**T)
    rectified = Compare(rho, ">" if tx.strict_threshold else "≥", threshold)
    return Select(r * _adam_direction(m_hat, v_hat, eps, eps_root), rectified, m_hat)


@register_renderer(ScaleByNadam)
def _scale_by_nadam(tx, u, ctx):
    b1, b2, eps, eps_root = _adam_symbols(tx, ctx)
    psi = ctx.hyper(tx, "momentum_decay", "ψ", r"\psi")
    ctx.setting(tx, "mu_dtype", "nu_dtype")
    g = ctx.name(u)
    m = _moment(ctx, "m", "m", b1, g)
    v = _moment(ctx, "v", "v", b2, g**2)
    mu = ctx.family("μ", r"\mu")
    mu_t = ctx.define(mu.at("t"), b1 * (1 - Num(0.5) * Num(0.96) ** (T * psi)))
    mu_next = ctx.define(mu.at("t+1"), b1 * (1 - Num(0.5) * Num(0.96) ** ((T + 1) * psi)))
    prod = ctx.family("Π", r"\Pi")
    pi_t = ctx.define(prod.at("t"), prod.at("t-1") * mu_t)
    v_hat = _debiased(ctx, "v̂", r"\hat v", v, b2)
    step = (1 - mu_t) / (1 - pi_t) * g + mu_next / (1 - pi_t * mu_next) * m
    return step / (_sqrt(v_hat + eps_root) + eps)


@register_renderer(ScaleByRms)
def _scale_by_rms(tx, u, ctx):
    rho = ctx.hyper(tx, "decay", "ρ", r"\rho")
    eps = ctx.hyper(tx, "eps", "ε", r"\epsilon")
    ctx.setting(tx, "initial_scale", "eps_in_sqrt", "bias_correction")
    g = ctx.name(u)
    nu = _moment(ctx, "ν", r"\nu", rho, g**2)
    if tx.bias_correction:
        nu = _debiased(ctx, "ν̂", r"\hat\nu", nu, rho)
    return g / (_sqrt(nu + eps) if tx.eps_in_sqrt else _sqrt(nu) + eps)


@register_renderer(ScaleByStddev)
def _scale_by_stddev(tx, u, ctx):
    rho = ctx.hyper(tx, "decay", "ρ", r"\rho")
    eps = ctx.hyper(tx, "eps", "ε", r"\epsilon")
    ctx.setting(tx, "initial_scale", "eps_in_sqrt", "bias_correction")
    g = ctx.name(u)
    mean = _moment(ctx, "m", "m", rho, g)
    nu = _moment(ctx, "ν", r"\nu", rho, g**2)
    if tx.bias_correction:
        mean = _debiased(ctx, "m̂", r"\hat m", mean, rho)
        nu = _debiased(ctx, "ν̂", r"\hat\nu", nu, rho)
    var = _max(nu - mean**2, 0)
    return g / (_sqrt(var + eps) if tx.eps_in_sqrt else _sqrt(var) + eps)


@register_renderer(ScaleByRss)
def _scale_by_rss(tx, u, ctx):
    eps = ctx.hyper(tx, "eps", "ε", r"\epsilon")
    ctx.setting(tx, "initial_accumulator_value", "eps_in_sqrt")
    g = ctx.name(u)
    s = ctx.family("s", "s")
    s_t = ctx.define(s.at("t"), s.at("t-1") + g**2)
    ctx.note("Adagrad: the update is 0 where s_t = 0")
    return g / (_sqrt(s_t + eps) if tx.eps_in_sqrt else _sqrt(s_t) + eps)


@register_renderer(FactoredSecondMoment)
def _factored_second_moment(tx, u, ctx):
    k = ctx.hyper(tx, "decay_rate", "k", "k")
    eps1 = ctx.hyper(tx, "epsilon", "ε1", r"\epsilon_1")
    ctx.setting(
        tx, "factored", "step_offset", "min_dim_size_to_factor", "decay_rate_fn", "factored_axes"
    )
    g = ctx.name(u)
    beta = ctx.family("β̂", r"\hat\beta").at("t")
    step = T - tx.step_offset if tx.step_offset else T
    if tx.decay_rate_fn is adafactor_decay_rate:
        ctx.define(beta, 1 - step ** (-k))
    else:
        ctx.define(beta, Func(_short_repr(tx.decay_rate_fn), (step - 1, k)))
    big_g = ctx.define(ctx.family("G", "G").at("t"), g**2 + eps1)
    row, col, full = (ctx.family(n, n) for n in ("R", "C", "V"))
    factored = "factored leaves"
    mean0 = Func("mean_d0", (big_g,), r"\operatorname{mean}_{d_0}")
    mean1 = Func("mean_d1", (big_g,), r"\operatorname{mean}_{d_1}")
    r_t = ctx.define(row.at("t"), beta * row.at("t-1") + (1 - beta) * mean0, factored)
    c_t = ctx.define(col.at("t"), beta * col.at("t-1") + (1 - beta) * mean1, factored)
    v_hat = ctx.family("V̂", r"\hat V").at("t")
    rows_mean = Func("mean_d1", (r_t,), r"\operatorname{mean}_{d_1}")
    ctx.define(v_hat, r_t * c_t / rows_mean, factored)
    v_t = ctx.define(full.at("t"), beta * full.at("t-1") + (1 - beta) * big_g, "other leaves")
    ctx.define(v_hat, v_t, "other leaves")
    ctx.note(
        "Adafactor: a leaf is factored when it has two axes or more and its second-largest "
        "factored axis has at least min_dim_size_to_factor entries; d0, d1 are its largest and "
        "second-largest axes"
    )
    return g / _sqrt(v_hat)


@register_renderer(ScaleByLion)
def _scale_by_lion(tx, u, ctx):
    b1 = ctx.hyper(tx, "b1", "β1", r"\beta_1")
    b2 = ctx.hyper(tx, "b2", "β2", r"\beta_2")
    ctx.setting(tx, "mu_dtype", "mode")
    g = ctx.name(u)
    m = ctx.family("m", "m")
    c = ctx.define(ctx.family("c", "c").at("t"), b1 * m.at("t-1") + (1 - b1) * g)
    ctx.define(m.at("t"), b2 * m.at("t-1") + (1 - b2) * g)
    if tx.mode == "smooth":
        kappa = ctx.hyper(tx, "smooth_beta", "κ", r"\kappa")
        return Func("tanh", (kappa * c,), r"\tanh")
    ctx.setting(tx, "smooth_beta")
    if tx.mode == "refined":
        return Select(c, Compare(_abs(c), "<", Num(1)), Func("sign", (c,)))
    return Func("sign", (c,))


@register_renderer(ScaleByTrustRatio)
def _scale_by_trust_ratio(tx, u, ctx):
    n_min = ctx.hyper(tx, "min_norm", "n_min", r"n_{min}")
    c = ctx.hyper(tx, "trust_coefficient", "c_trust", r"c_{trust}")
    eps = ctx.hyper(tx, "eps", "ε", r"\epsilon")
    ctx.setting(tx, "mask")
    u = ctx.name(u)
    ctx.note("trust ratio: norms are per leaf; the ratio is 1 where either norm is 0")
    return c * _max(_norm(P), n_min) / (_max(_norm(u), n_min) + eps) * u


def _nesterov_debiased(ctx, m: Sym, g: Expr, beta: Expr, bias_correction: bool) -> Sym:
    """NAdam's look-ahead first moment (optax's ``nesterov=True``), with or without debiasing."""
    if bias_correction:
        rhs = beta * m / (1 - beta ** (T + 1)) + (1 - beta) * g / (1 - beta**T)
    else:
        rhs = beta * m + (1 - beta) * g
    return ctx.define(ctx.family("m̂", r"\hat m").at("t"), rhs)


@register_renderer(ScaleByMuon)
def _scale_by_muon(tx, u, ctx):
    beta = ctx.hyper(tx, "beta", "β", r"\beta")
    eps = ctx.hyper(tx, "eps", "ε", r"\epsilon")
    fields = [f.name for f in dataclasses.fields(tx) if f.repr and f.name not in tx.hyperparams]
    ctx.setting(tx, *fields)
    g = ctx.name(u)
    m = _moment(ctx, "m", "m", beta, g)
    if tx.nesterov:
        m = _nesterov_debiased(ctx, m, g, beta, tx.bias_correction)
    elif tx.bias_correction:
        m = _debiased(ctx, "m̂", r"\hat m", m, beta)
    ctx.note(
        f"Muon: NS is {tx.ns_steps} Newton-Schulz steps on each matrix X, first normalised "
        f"({tx.preconditioning!r}: X/(‖X‖_F + {eps.text()}) for 'frobenius')"
        + ("; adaptive=True multiplies by ⟨m̂_t, NS(m̂_t)⟩" if tx.adaptive else "")
    )
    return Func("NS", (m,), r"\operatorname{NS}")


@register_renderer(ScaleBySophia)
def _scale_by_sophia(tx, u, ctx):
    b1 = ctx.hyper(tx, "b1", "β1", r"\beta_1")
    b2 = ctx.hyper(tx, "b2", "β2", r"\beta_2")
    eps = ctx.hyper(tx, "eps", "ε", r"\epsilon")
    gamma = ctx.hyper(tx, "gamma", "γ", r"\gamma")
    clip = None if tx.clip_threshold is None else ctx.hyper(tx, "clip_threshold", "c", "c")
    fields = [f.name for f in dataclasses.fields(tx) if f.repr and f.name not in tx.hyperparams]
    ctx.setting(tx, *fields)
    g = ctx.name(u)
    m = _moment(ctx, "m", "m", b1, g)
    if tx.mu_bias_correction:
        m = _debiased(ctx, "m̂", r"\hat m", m, b1)
    h = ctx.family("h", "h")
    estimate = Sym("ĥ(p_{t-1})", r"\hat h(p_{t-1})")
    h_t = ctx.define(h.at("t"), b2 * h.at("t-1") + (1 - b2) * estimate)
    # optax's order (the default): the step divides by the estimate from before the refresh.
    used = h_t if tx.estimate_before_step else h.at("t-1")
    ctx.note(
        f"Sophia: ĥ is the diagonal Hessian estimate; h is refreshed on updates 1, k+1, 2k+1, "
        f"... (k = update_interval = {tx.update_interval}) and kept in between"
    )
    step = m / _max(gamma * used, eps)
    return step if clip is None else Func("clip", (step, -clip, clip))


@register_renderer(ScaleByShape)
def _scale_by_shape(tx, u, ctx):
    ctx.setting(tx, "weight_dimension_numbers")
    ctx.note("d_in, d_out: the sizes of a matrix's reduction and output axes")
    d_in, d_out = Sym("d_in", r"d_{in}"), Sym("d_out", r"d_{out}")
    if tx.consistent_rms is None:
        return _sqrt(_max(1, d_out / d_in)) * u
    c = ctx.bind(ctx.family("c_rms", r"c_{rms}").bare(), tx, "consistent_rms")
    return c * _sqrt(_max(d_in, d_out)) * u


@register_renderer(ScaleByGalore)
def _scale_by_galore(tx, u, ctx):
    alpha = ctx.hyper(tx, "scale", "α", r"\alpha")
    ctx.setting(tx, "rank", "update_proj_gap", "weight_dimension_numbers", "projected_dim")
    ctx.note(
        f"GaLore: P is the leaf's top-{tx.rank} singular vectors, refreshed every "
        f"{tx.update_proj_gap} updates; shown for a left projector (a right one computes "
        "g·P and N·Pᵀ); leaves that cannot be projected skip P"
    )
    proj = ctx.family("P", "P").at("t")
    projected = ctx.define(
        ctx.family("R", "R").at("t"), Sym(f"{proj.text()}ᵀ", rf"{proj.latex()}^\top") * u
    )
    base = scale_by_adam() if tx.base_optimizer is None else tx.base_optimizer
    return alpha * proj * _render(base, projected, ctx)


@register_renderer(ApplyIfFinite)
def _apply_if_finite(tx, u, ctx):
    n_max = ctx.bind(ctx.family("N", "N").bare(), tx, "max_consecutive_errors")
    ctx.note(
        "apply_if_finite: n counts non-finite updates in a row; a skipped step keeps the state"
    )
    u = ctx.name(u)
    finite = Sym(
        f"{u.text()} finite or n > {n_max.text()}", rf"{u.latex()} \text{{ finite or }} n > N"
    )
    return Select(_render(tx.inner, u, ctx), finite, Num(0))


@register_renderer(MultiSteps)
def _multi_steps(tx, u, ctx):
    k = ctx.bind(ctx.family("k", "k").bare(), tx, "every_k_schedule")
    ctx.setting(tx, "use_grad_mean", "should_skip_update_fn", "accumulator_dtype")
    ctx.note(
        "MultiSteps: j counts micro-batches within a real step (0-based); the inner rule's t "
        "counts real steps"
    )
    a = ctx.family("a", "a")
    step = (u - a.at("j-1")) / (Sym("j", "j") + 1) if tx.use_grad_mean else u
    acc = ctx.define(a.at("j"), a.at("j-1") + step)
    last = Sym(f"j = {k.text()} − 1", r"j = k - 1")
    return Select(_render(tx.opt, acc, ctx), last, Num(0))


@register_renderer(ScheduleFree)
def _schedule_free(tx, u, ctx):
    gamma = ctx.hyper(tx, "learning_rate", "γ", r"\gamma")
    beta = ctx.hyper(tx, "b1", "β", r"\beta")
    power = ctx.hyper(tx, "weight_lr_power", "P", "P")
    r = ctx.hyper(tx, "r", "r", "r")
    ctx.setting(tx, "state_dtype", "optax_off_by_one")
    ctx.note(
        "schedule_free: the parameters are y (the base rule's p_{t-1} is y_{t-1}); "
        "x = (y − (1 − β)·z)/β is the point to evaluate"
    )
    delta = ctx.define(ctx.family("Δ", r"\Delta").at("t"), _render(tx.base_optimizer, u, ctx))
    top = ctx.family("γmax", r"\gamma^{max}")
    w, total, c = (ctx.family(n, n) for n in ("w", "W", "c"))
    z, x, y = (ctx.family(n, n) for n in ("z", "x", "y"))
    top_t = ctx.define(top.at("t"), _max(top.at("t-1"), gamma))
    w_t = ctx.define(w.at("t"), T**r * top_t**power)
    total_t = ctx.define(total.at("t"), total.at("t-1") + w_t)
    c_t = ctx.define(c.at("t"), w_t / total_t)
    z_t = ctx.define(z.at("t"), z.at("t-1") + delta)
    x_t = ctx.define(x.at("t"), (1 - c_t) * x.at("t-1") + c_t * z_t)
    y_t = ctx.define(y.at("t"), beta * x_t + (1 - beta) * z_t)
    return y_t - y.at("t-1")


def _distance_step(tx, ctx, b1: Expr, b2: Expr) -> tuple[Family, Sym, Sym]:
    """Prodigy's and D-Adaptation's step: ``(d, δ_t, d_{t-1})`` with δ_t defined."""
    lr = ctx.hyper(tx, "learning_rate", "η", r"\eta")
    d = ctx.family("d", "d")
    ctx.note(
        f"{tx.name}: d is the step-size estimate, d_0 = estim_lr0 at the start; "
        "dot(a, b) sums a·b over all coordinates, ‖x‖_1 the absolute values"
    )
    scale = _sqrt(1 - b2**T) / (1 - b1**T) if tx.bias_correction else Num(1)
    delta = ctx.define(ctx.family("δ", r"\delta").at("t"), d.at("t-1") * lr * scale)
    return d, delta, d.at("t-1")


@register_renderer(ScaleByProdigy)
def _scale_by_prodigy(tx, u, ctx):
    b1, b2, b3 = (ctx.hyper(tx, f"b{i}", f"β{i}", rf"\beta_{i}") for i in (1, 2, 3))
    eps = ctx.hyper(tx, "eps", "ε", r"\epsilon")
    d0 = ctx.hyper(tx, "estim_lr0", "d0", "d_0")
    coef = ctx.hyper(tx, "estim_lr_coef", "c_d", "c_d")
    lam = ctx.hyper(tx, "weight_decay", "λ", r"\lambda")
    ctx.setting(tx, "safeguard_warmup", "bias_correction")
    g = ctx.name(u)
    d, delta, d_prev = _distance_step(tx, ctx, b1, b2)
    r, acc = ctx.family("r", "r"), ctx.family("s", "s")
    p0 = Sym("p_0", "p_0")
    weight = d_prev / d0 * (d_prev if tx.safeguard_warmup else delta)
    r_t = ctx.define(r.at("t"), b3 * r.at("t-1") + d_prev / d0 * delta * _dot(g, p0 - P))
    s_t = ctx.define(acc.at("t"), b3 * acc.at("t-1") + weight * g)
    m = _moment(ctx, "m", "m", b1, d_prev * g)
    v = _moment(ctx, "v", "v", b2, d_prev**2 * g**2)
    d_t = ctx.define(d.at("t"), _max(d_prev, coef * r_t / _l1_norm(s_t)))
    return -(delta * (m / (_sqrt(v) + d_t * eps) + lam * P))


@register_renderer(ScaleByDAdaptAdamW)
def _scale_by_dadapt_adamw(tx, u, ctx):
    b1, b2 = (ctx.hyper(tx, f"b{i}", f"β{i}", rf"\beta_{i}") for i in (1, 2))
    eps = ctx.hyper(tx, "eps", "ε", r"\epsilon")
    ctx.hyper(tx, "estim_lr0", "d0", "d_0")
    lam = ctx.hyper(tx, "weight_decay", "λ", r"\lambda")
    ctx.setting(tx, "bias_correction", "decouple")
    g = ctx.name(u if tx.decouple else u + lam * P)
    d, delta, d_prev = _distance_step(tx, ctx, b1, b2)
    sigma = ctx.define(ctx.family("σ", r"\sigma").bare(), _sqrt(b2))
    r, acc, m, v = (ctx.family(n, n) for n in ("r", "s", "m", "v"))
    preconditioned = acc.at("t-1") / (_sqrt(v.at("t-1")) + eps)
    r_t = ctx.define(r.at("t"), sigma * r.at("t-1") + (1 - sigma) * delta * _dot(g, preconditioned))
    m_t = ctx.define(m.at("t"), b1 * m.at("t-1") + (1 - b1) * delta * g)
    v_t = ctx.define(v.at("t"), b2 * v.at("t-1") + (1 - b2) * g**2)
    s_t = ctx.define(acc.at("t"), sigma * acc.at("t-1") + (1 - sigma) * delta * g)
    ctx.define(d.at("t"), _max(d_prev, r_t / ((1 - sigma) * _l1_norm(s_t))))
    step = m_t / (_sqrt(v_t) + eps)
    return -(step + lam * delta * P) if tx.decouple else -step
