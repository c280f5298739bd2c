"""Stacked execution of equal blocks (docs/method.md, section 5.10).

Once every layer output is a variable, the blocks of a lifted network interact only through their
neighbours' auxiliary variables, so consecutive blocks of one kind can be stepped together. A
:class:`Stack` holds the parameters of blocks ``first..last`` (1-based) as one tensor per parameter
name, of shape ``(d, ...)``; the blocks' own parameters become views of those tensors, so the
network, its state_dict and back-propagation see the same weights, and a batched update of the
stack is an update of every block. ``Stack.call`` runs a block method (``pre``, ``pre_adjoint``,
``post``, ...) on all selected blocks at once with ``torch.func.vmap`` over
``torch.func.functional_call``: one batched kernel per operation, whatever the depth. A block class
may also give batched versions of its maps (``stacked_pre``, ...; dense and residual blocks do),
which skip vmap's per-call overhead.

Auxiliary variables stay per-layer lists (``objective.LiftedState``); ``gather`` stacks the entries
of consecutive layers, without a copy when they are already consecutive views of one tensor (as the
results of the previous batched step are).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.func import functional_call, grad, vmap


class _Method(nn.Module):
    """``functional_call`` runs ``forward``; this forwards to any method of the wrapped block."""

    def __init__(self, block: nn.Module):
        super().__init__()
        self.block = block

    def forward(self, method: str, *args):
        return getattr(self.block, method)(*args)


def signature(block) -> tuple | None:
    """Blocks with equal signatures compute the same function of their parameters; None: the block
    cannot be stacked (it holds buffers, which ``functional_call`` would share)."""
    if any(True for _ in block.buffers()):
        return None
    params = tuple((name, tuple(q.shape), q.dtype, q.device) for name, q in block.named_parameters())
    return (type(block), block.act.spec(), params, block.stack_key())


def stack_ranges(blocks, excluded=()) -> list[tuple[int, int]]:
    """Maximal runs ``(first, last)`` (1-based, at least two blocks) of consecutive blocks with one
    signature, leaving out the layers in ``excluded``."""
    runs, start, key = [], None, None
    for l, blk in enumerate(blocks, 1):
        sig = None if l in excluded else signature(blk)
        if sig is not None and sig == key:
            continue
        if start is not None and l - 1 > start:
            runs.append((start, l - 1))
        start, key = (l, sig) if sig is not None else (None, None)
    if start is not None and len(blocks) > start:
        runs.append((start, len(blocks)))
    return runs


def _set_parameter(module: nn.Module, name: str, value: torch.Tensor) -> None:
    *path, leaf = name.split(".")
    for part in path:
        module = getattr(module, part)
    setattr(module, leaf, nn.Parameter(value))


def gather(tensors: list[torch.Tensor]) -> torch.Tensor:
    """``torch.stack(tensors)``, as a view when they are consecutive slices of one tensor."""
    t0 = tensors[0]
    base = t0._base
    if base is not None and base.dim() == t0.dim() + 1 and base.shape[1:] == t0.shape and base.stride()[1:] == t0.stride():
        step = base.stride(0)
        k0, rem = divmod(t0.storage_offset() - base.storage_offset(), step)
        if rem == 0 and 0 <= k0 and k0 + len(tensors) <= base.shape[0] and all(
                t._base is base and t.storage_offset() == t0.storage_offset() + i * step for i, t in enumerate(tensors)):
            return base[k0:k0 + len(tensors)]
    return torch.stack(tensors)


class Stack:
    """Blocks ``first..last`` (1-based, ``d`` of them, one signature) with stacked parameters
    ``storage[name]`` of shape ``(d, ...)``; the blocks' parameters are views of it."""

    def __init__(self, blocks, first: int):
        self.d = len(blocks)
        self.first, self.last = first, first + self.d - 1
        self.template = blocks[0]
        self.act = self.template.act
        self.has_state, self.skip = self.template.has_state, self.template.skip
        self.names = [name for name, _ in self.template.named_parameters()]
        self.storage = {}
        for name in self.names:
            self.storage[name] = torch.stack([blk.get_parameter(name).detach() for blk in blocks])
            for k, blk in enumerate(blocks):
                _set_parameter(blk, name, self.storage[name][k])
        self._method = _Method(self.template)
        by_id = {id(q): name for name, q in self.template.named_parameters()}
        affine = self.template.affine()
        self.affine_names = None if affine is None else tuple(by_id[id(q)] for q in affine)
        post = self.template.post_weight()
        self.post_weight_name = None if post is None else by_id[id(post)]

    def __repr__(self) -> str:
        return f"Stack(layers {self.first}..{self.last})"

    def select(self, parity: int | None = None) -> slice:
        """All blocks, or those whose layer index has the given parity."""
        return slice(0, self.d, 1) if parity is None else slice((parity - self.first) % 2, self.d, 2)

    def layers(self, ks: slice) -> list[int]:
        return [self.first + k for k in range(*ks.indices(self.d))]

    def _fast(self, method: str):
        """The block class's own batched version of ``method`` (``stacked_<method>``), when the class
        that defines ``method`` also defines it; else None (the generic vmap path)."""
        for cls in type(self.template).__mro__:
            if method in cls.__dict__:
                return getattr(self.template, "stacked_" + method) if "stacked_" + method in cls.__dict__ else None
        return None

    def call(self, method: str, *args, ks: slice = slice(None), params: dict | None = None, shared=(), generic=False):
        """``block.method(*args_k, *shared)`` for every selected block k at once: ``args`` are
        stacked over the selected blocks (first dimension), ``shared`` the same for all. A block
        class's batched ``stacked_<method>`` is used where it has one (``generic``: never)."""
        source = self.storage if params is None else params
        fast = None if generic else self._fast(method)
        if fast is not None:
            return fast({name: source[name][ks] for name in self.names}, *args, *shared)
        stacked = {f"block.{name}": source[name][ks] for name in self.names}

        def one(p, *a):
            return functional_call(self._method, p, (method, *a, *shared))

        return vmap(one)(stacked, *args)

    def fast_gradients(self):
        """The block class's ``stacked_weight_gradients`` when it is defined at or below the classes
        that define the maps it differentiates (``pre``, ``post``, ``post_linear``); else None."""
        mro = type(self.template).__mro__
        owner = next((c for c in mro if "stacked_weight_gradients" in c.__dict__), None)
        if owner is None:
            return None
        for method in ("pre", "post", "post_linear"):
            if not issubclass(owner, next(c for c in mro if method in c.__dict__)):
                return None
        return self.template.stacked_weight_gradients

    def grad(self, fn, *args, ks: slice = slice(None)):
        """Per-block gradients (dict by parameter name, stacked) of ``fn(call, *args_k)``, where
        ``call(method, *a)`` runs a method of block k with the parameters being differentiated."""
        stacked = {name: self.storage[name][ks] for name in self.names}

        def one(p, *a):
            inner = {f"block.{name}": q for name, q in p.items()}
            return fn(lambda method, *b: functional_call(self._method, inner, (method, *b)), *a)

        return vmap(grad(one))(stacked, *args)
