"""Pairwise ranking surrogates phi(t), t = s_correct - s_wrong, for `pairwise_advantages`.

A surrogate is a frozen (hashable, so usable as a static jit argument) dataclass with two elementwise methods:
`__call__(t) -> phi(t)` and `derivative(t) -> phi'(t)`. Subclasses that do not override `derivative` get it by
autodiff. All methods are pure jnp and work on arrays of any shape.

| name          | phi(t)                 | phi'(t)                    | AUC-consistent |
|---------------|------------------------|----------------------------|----------------|
| `linear`      | -t                     | -1                         | no (unbounded below; GRPO/Dr.GRPO) |
| `logistic`    | log(1 + exp(-t/tau))   | -sigmoid(-t/tau) / tau     | yes (CAPO)     |
| `hinge`       | max(0, margin - t)     | -[t < margin]              | no (not strictly decreasing past the margin) |
| `exponential` | exp(-t/tau)            | -exp(-t/tau) / tau         | yes            |
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp


def _check_positive(name: str, value) -> None:
    # Only concrete Python numbers can be checked; a traced value is the caller's responsibility.
    if isinstance(value, (int, float)) and not value > 0:
        raise ValueError(f"{name} must be > 0, got {value!r}; it sets the scale of score differences.")


@dataclasses.dataclass(frozen=True)
class Surrogate:
    """Base class: phi(t) elementwise; `derivative` defaults to autodiff of `__call__`."""

    name = "surrogate"

    def __call__(self, t: jax.Array) -> jax.Array:
        raise NotImplementedError

    def derivative(self, t: jax.Array) -> jax.Array:
        t = jnp.asarray(t, jnp.float32)
        return jnp.vectorize(jax.grad(lambda x: self(x)))(t)


@dataclasses.dataclass(frozen=True)
class Linear(Surrogate):
    """phi(t) = -t: the surrogate GRPO implicitly minimises (scale-dependent, unbounded below)."""

    name = "linear"

    def __call__(self, t):
        return -jnp.asarray(t, jnp.float32)

    def derivative(self, t):
        return jnp.full(jnp.shape(t), -1.0, jnp.float32)


@dataclasses.dataclass(frozen=True)
class Logistic(Surrogate):
    """phi_tau(t) = log(1 + exp(-t/tau)), via softplus so it is exact for large |t| (no overflow, no log(1+0))."""

    tau: float = 1.0
    name = "logistic"

    def __post_init__(self):
        _check_positive("Logistic.tau", self.tau)

    def __call__(self, t):
        return jax.nn.softplus(-jnp.asarray(t, jnp.float32) / self.tau)

    def derivative(self, t):
        # d/dt softplus(-t/tau) = -sigmoid(-t/tau) / tau; sigmoid is stable at both tails.
        return -jax.nn.sigmoid(-jnp.asarray(t, jnp.float32) / self.tau) / self.tau


@dataclasses.dataclass(frozen=True)
class Hinge(Surrogate):
    """phi(t) = max(0, margin - t); derivative -1 for t < margin and 0 from the margin on (a subgradient)."""

    margin: float = 1.0
    name = "hinge"

    def __call__(self, t):
        return jnp.maximum(0.0, self.margin - jnp.asarray(t, jnp.float32))

    def derivative(self, t):
        return jnp.where(jnp.asarray(t, jnp.float32) < self.margin, -1.0, 0.0)


@dataclasses.dataclass(frozen=True)
class Exponential(Surrogate):
    """phi(t) = exp(-t/tau) (the AdaBoost/RankBoost loss). Overflows to inf for t < -88 tau in float32."""

    tau: float = 1.0
    name = "exponential"

    def __post_init__(self):
        _check_positive("Exponential.tau", self.tau)

    def __call__(self, t):
        return jnp.exp(-jnp.asarray(t, jnp.float32) / self.tau)

    def derivative(self, t):
        return -jnp.exp(-jnp.asarray(t, jnp.float32) / self.tau) / self.tau


@dataclasses.dataclass(frozen=True)
class FromFunction(Surrogate):
    """Wraps any elementwise callable phi(t); its derivative comes from autodiff."""

    fn: Callable[[jax.Array], jax.Array] = None  # type: ignore[assignment]
    name = "custom"

    def __call__(self, t):
        return self.fn(jnp.asarray(t, jnp.float32))


SURROGATES: dict[str, type[Surrogate]] = {
    "linear": Linear,
    "logistic": Logistic,
    "hinge": Hinge,
    "exponential": Exponential,
}


def get_surrogate(phi: Surrogate | str | Callable[[jax.Array], jax.Array], **params) -> Surrogate:
    """A `Surrogate` from an instance, a registered name (with its params, e.g. `tau=0.1`) or a plain callable."""
    if isinstance(phi, Surrogate):
        if params:
            raise ValueError(f"got surrogate instance {phi!r} and extra params {params}; pass one or the other.")
        return phi
    if isinstance(phi, str):
        if phi not in SURROGATES:
            raise ValueError(f"unknown surrogate {phi!r}; choose one of {sorted(SURROGATES)}.")
        return SURROGATES[phi](**params)
    if callable(phi):
        return FromFunction(fn=phi)
    raise TypeError(f"phi must be a Surrogate, a name in {sorted(SURROGATES)} or a callable, got {type(phi).__name__}.")
