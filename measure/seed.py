"""The blog's benchmark code, reproduced faithfully, bugs included (variant ``seed``).

Source: /work/shared/seed/blog-post.txt ("Low Rank Adaptations. What are they, implementation
and are they useful in smaller models?"). The post lost its indentation; the functions below
restore it and change nothing that affects what is computed:

- ``lora_self_attention`` builds ``delta_Wq = l_WqA @ l_WkB`` (the post's bug: ``l_WqB`` is
  never used, so its gradient is zero and the LoRA "q" adapter borrows k's B factor);
- ``random_setup`` / ``random_lora_setup`` draw uniform [0, 1) values, and in the LoRA setup
  A and B of one adapter share a single PRNG key;
- a "test" is a forward call and a gradient call, two separate dispatches;
- the vanilla test differentiates the summed output with respect to arguments ``[1, 2, 3]``
  (Wk, Wq, Wv), the LoRA test with respect to ``[4, 5, 6, 7]`` (the four LoRA factors);
- ``nn.softmax`` over the last axis of the (batch x batch) score matrix: the post treats the
  batch as the sequence.

Two timing modes wrap the same functions:

``as_written``
    Each call runs the post's ``test_vanilla`` / ``test_lora`` body: the module-level jitted
    forward, then a *new* ``loss_f(...)`` closure (a fresh ``jax.jit`` object) differentiated
    with ``grad``. Every call therefore traces and compiles the loss again, which is what the
    post's timings mostly measured. Unlike the post, the harness blocks on the results so the
    clock does not stop before asynchronous work ends.
``aot``
    The same forward and gradient functions compiled once ahead of time; a call is still the
    forward and the gradient as two separate executables.

Methods: the post's "vanilla" is ``full``, its "lora" is ``lora_merged`` (it merges
``W + A @ B`` before the attention). The cost-model description of these kernels is
``layer_cost("attention", method, targets=("q", "k"))``: the bug changes which factor is used,
not any shape. That description is of one forward + backward step; the post's test runs the
forward twice (once alone, once inside the gradient), which XLA's advisory ``xla_flops`` of
the seed rows does count (summed over the two executables) and the cost model does not.
"""

from __future__ import annotations

from collections.abc import Callable

from jax import grad, jit, nn, random
from jax import numpy as jnp

from measure.timing import Prepared, compile_ahead, place, xla_cost
from measure.vocab import SEED_METHODS, TIMING_MODES

#: What the cost model should describe for the seed kernels (see module docstring).
COSTMODEL_TARGETS: tuple[str, ...] = ("q", "k")


# --------------------------------------------------------------------------------------
# The post's code (indentation restored; the decorator and the loop are not needed here).
# --------------------------------------------------------------------------------------

def random_setup(batch_size: int, embedding_dim: int, hidden_dim: int):
    """Returns X and Wk, Wq, Wv matrices"""
    key = random.PRNGKey(0)
    keys = random.split(key, 4)
    X = random.uniform(keys[0], (batch_size, embedding_dim))
    setup = [X]
    for key in keys[1:]:
        att_shape = (embedding_dim, hidden_dim)
        setup.append(random.uniform(key, att_shape))
    return setup


def random_lora_setup(embedding_dim: int, hidden_dim: int, r: int):
    """Returns l_WkA, l_WkB,l_WqA, l_WqB LoRA matrices"""
    key = random.PRNGKey(0)
    keys = random.split(key, 2)
    setup = []
    for key in keys:
        l_A = random.uniform(key, (embedding_dim, r))
        l_B = random.uniform(key, (r, hidden_dim))
        setup.extend([l_A, l_B])
    return setup


@jit
def self_attention(X: jnp.ndarray, Wk: jnp.ndarray, Wq: jnp.ndarray, Wv: jnp.ndarray):
    X = jnp.atleast_2d(X)
    Q = X @ Wq
    K = X @ Wk
    V = X @ Wv
    dk = Wv.shape[-1]
    att_weights = jnp.dot(Q, K.T) / dk**.5
    att_weights = nn.softmax(att_weights)
    return jnp.dot(att_weights, V)


@jit
def lora_self_attention(
    X: jnp.ndarray,
    Wk: jnp.ndarray,
    Wq: jnp.ndarray,
    Wv: jnp.ndarray,
    l_WkA: jnp.ndarray,
    l_WkB: jnp.ndarray,
    l_WqA: jnp.ndarray,
    l_WqB: jnp.ndarray,
):
    delta_Wk = l_WkA @ l_WkB
    delta_Wq = l_WqA @ l_WkB  # sic: the post's bug, l_WqB is never used
    return self_attention(X, Wk + delta_Wk, Wq + delta_Wq, Wv)


def loss_f(f, *args, **kwargs):
    @jit
    def loss(*args, **kwargs):
        return f(*args, **kwargs).sum()
    return loss


def test_vanilla(X, Wk, Wq, Wv):
    """The post's ``test_vanilla`` body; returns its results so the harness can block on them."""
    forward = self_attention(X, Wk, Wq, Wv)
    loss = loss_f(self_attention)
    backward = grad(loss, [1, 2, 3])(X, Wk, Wq, Wv)
    return forward, backward


def test_lora(X, Wk, Wq, Wv, l_WkA, l_WkB, l_WqA, l_WqB):
    """The post's ``test_lora`` body; returns its results so the harness can block on them."""
    forward = lora_self_attention(X, Wk, Wq, Wv, l_WkA, l_WkB, l_WqA, l_WqB)
    loss = loss_f(lora_self_attention)
    backward = grad(loss, [4, 5, 6, 7])(X, Wk, Wq, Wv, l_WkA, l_WkB, l_WqA, l_WqB)
    return forward, backward


# --------------------------------------------------------------------------------------
# Harness side: the same functions packaged for measure.timing.
# --------------------------------------------------------------------------------------

def setup_args(method: str, *, batch: int, embed: int, hidden: int, rank: int) -> tuple:
    """The post's inputs for `method`: (X, Wk, Wq, Wv) and, for lora_merged, the four factors."""
    _check_method(method)
    args = random_setup(batch, embed, hidden)
    if method == "lora_merged":
        args = [*args, *random_lora_setup(embed, hidden, r=rank)]
    return tuple(args)


def _check_method(method: str) -> None:
    if method not in SEED_METHODS:
        raise ValueError(
            f"the seed variant has methods {', '.join(SEED_METHODS)} (blog: vanilla, lora), "
            f"not {method!r}"
        )


def _forward_and_grad_fns(method: str) -> tuple[Callable, Callable]:
    if method == "full":
        return self_attention, grad(loss_f(self_attention), [1, 2, 3])
    return lora_self_attention, grad(loss_f(lora_self_attention), [4, 5, 6, 7])


def build(
    method: str, *, batch: int, embed: int, hidden: int, rank: int, timing_mode: str = "aot"
) -> Prepared:
    """Package the post's `method` test at one size for `measure.timing.time_interleaved`.

    compile_s: seconds to lower and compile the forward and gradient executables once (in
    ``as_written`` mode every call compiles again; this is the one-off figure).
    xla_flops / xla_bytes: XLA's cost_analysis summed over the two executables.
    """
    _check_method(method)
    if timing_mode not in TIMING_MODES:
        raise ValueError(f"unknown timing mode {timing_mode!r}; choose {', '.join(TIMING_MODES)}")
    args = place(setup_args(method, batch=batch, embed=embed, hidden=hidden, rank=rank))
    fwd, bwd = _forward_and_grad_fns(method)
    fwd_c, fwd_s = compile_ahead(fwd, args)
    bwd_c, bwd_s = compile_ahead(bwd, args)
    compile_s = fwd_s + bwd_s
    flops, bytes_ = 0.0, 0.0
    for compiled in (fwd_c, bwd_c):
        cost = xla_cost(compiled)
        flops, bytes_ = flops + cost["flops"], bytes_ + cost["bytes_accessed"]
    if timing_mode == "aot":
        def call(*a):
            return fwd_c(*a), bwd_c(*a)
    else:
        call = test_vanilla if method == "full" else test_lora
    name = f"seed/{method}/{timing_mode}"
    return Prepared(name, call, args, compile_s, flops, bytes_)

