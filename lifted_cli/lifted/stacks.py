"""Stacks: the units the lifted problem is written over (docs/method.md, section 5.10).

Once every layer output is a variable, the blocks of a lifted network interact only through their
neighbours' auxiliary variables, so consecutive blocks of one kind can be stepped together. Every
operation of the lifted objective and its solvers is written once, over a :class:`Stack`: blocks
``first..last`` (1-based, ``d >= 1`` of them, one signature). A block that is stepped alone is a
stack of one; ``solver.stacked`` decides only how the layers are grouped.

A stack holds its parameters as one tensor per parameter name, of shape ``(d, ...)``
(``storage``); for ``d > 1`` the blocks' own parameters become views of those tensors, so the
network, its state_dict and back-propagation see the same weights, and a batched update of the
stack is an update of every block. ``Stack.call`` evaluates a block map (``pre``, ``pre_adjoint``,
``post``, ...) on selected blocks at once, states carrying the blocks as their first dimension:

* one block: the block module itself (its states without the leading dimension);
* a block class whose maps are written for a leading layer dimension (``batched = True``: dense
  and residual blocks): one call on a view of the block whose parameters are the stacked tensors;
* any other block class: ``torch.func.vmap`` over ``torch.func.functional_call``.

Auxiliary variables stay per-layer lists (``objective.LiftedState``); ``gather`` stacks the entries
of consecutive layers, without a copy when they are already consecutive views of one tensor (as the
results of the previous batched step are).
"""

from __future__ import annotations

import copy

import torch
from torch import nn
from torch.func import functional_call, vmap

#: every block of a stack; the first block alone
ALL = slice(None)
FIRST = slice(0, 1)


class _Method(nn.Module):
    """``functional_call`` runs ``forward``; this forwards to any method of the wrapped block."""

    def __init__(self, block: nn.Module):
        super().__init__()
        self.block = block

    def forward(self, method: str, *args):
        return getattr(self.block, method)(*args)


def signature(block) -> tuple | None:
    """Blocks with equal signatures compute the same function of their parameters; None: the block
    cannot be stacked with others (it holds buffers, which ``functional_call`` would share)."""
    if any(True for _ in block.buffers()):
        return None
    params = tuple((name, tuple(q.shape), q.dtype, q.device) for name, q in block.named_parameters())
    return (type(block), block.act.spec(), params, block.stack_key())


def stack_ranges(blocks, first: int = 1, last: int | None = None, excluded=()) -> list[tuple[int, int]]:
    """Maximal runs ``(a, b)`` (1-based, at least two blocks) of consecutive blocks with one
    signature within ``first..last``, leaving out the layers in ``excluded``."""
    last = len(blocks) if last is None else last
    runs, start, key = [], None, None
    for l in range(first, last + 2):
        sig = None if l > last or l in excluded else signature(blocks[l - 1])
        if sig is not None and sig == key:
            continue
        if start is not None and l - 1 > start:
            runs.append((start, l - 1))
        start, key = (l, sig) if sig is not None else (None, None)
    return runs


def plan(blocks, first: int, last: int, grouped: bool, excluded=()) -> list[tuple[int, int]]:
    """The stacks covering layers ``first..last`` in order: the runs of ``stack_ranges`` when
    ``grouped``, every other layer a stack of one."""
    runs = stack_ranges(blocks, first, last, excluded) if grouped else []
    out, l = [], first
    for a, b in runs + [(last + 1, last + 1)]:
        out += [(k, k) for k in range(l, a)]
        if a <= last:
            out.append((a, b))
        l = b + 1
    return out


def gather(tensors: list[torch.Tensor]) -> torch.Tensor:
    """``torch.stack(tensors)``, as a view when they are consecutive slices of one tensor (or one)."""
    t0 = tensors[0]
    if len(tensors) == 1:
        return t0.unsqueeze(0)
    base = t0._base
    if base is not None and base.dim() == t0.dim() + 1 and base.shape[1:] == t0.shape and base.stride()[1:] == t0.stride():
        step = base.stride(0)
        k0, rem = divmod(t0.storage_offset() - base.storage_offset(), step)
        if rem == 0 and 0 <= k0 and k0 + len(tensors) <= base.shape[0] and all(
                t._base is base and t.storage_offset() == t0.storage_offset() + i * step for i, t in enumerate(tensors)):
            return base[k0:k0 + len(tensors)]
    return torch.stack(tensors)


def _set_parameter(module: nn.Module, name: str, value: torch.Tensor) -> None:
    *path, leaf = name.split(".")
    for part in path:
        module = getattr(module, part)
    setattr(module, leaf, nn.Parameter(value))


def _view(module: nn.Module, tensors: dict, prefix: str = "") -> nn.Module:
    """A shallow copy of ``module`` whose parameters are ``tensors`` (by full name): the block's own
    code then runs on stacked parameters. Nothing is registered or copied."""
    clone = copy.copy(module)
    clone._parameters = {name: tensors[prefix + name] for name in module._parameters}
    clone._modules = {name: _view(sub, tensors, f"{prefix}{name}.") for name, sub in module._modules.items()}
    return clone


class Stack:
    """Blocks ``first..last`` (1-based, ``d`` of them, one signature) with stacked parameters
    ``storage[name]`` of shape ``(d, ...)``. ``tensors``: what optimisers and anchors hold, the
    stacked tensors, or for a stack of one the block's own parameters (so that a single block's
    optimiser state and checkpoint keep its parameters' shapes)."""

    def __init__(self, blocks, first: int):
        self.blocks = list(blocks)
        self.d = len(self.blocks)
        self.first, self.last = first, first + self.d - 1
        self.template = self.blocks[0]
        self.act = self.template.act
        self.has_state, self.skip = self.template.has_state, self.template.skip
        self.batched = type(self.template).batched
        self.names = [name for name, _ in self.template.named_parameters()]
        if self.d == 1:
            params = dict(self.template.named_parameters())
            self.storage = {name: params[name].detach().unsqueeze(0) for name in self.names}
            self.tensors = [params[name] for name in self.names]
        else:
            self.storage = {}
            for name in self.names:
                self.storage[name] = torch.stack([blk.get_parameter(name).detach() for blk in self.blocks])
                for k, blk in enumerate(self.blocks):
                    _set_parameter(blk, name, self.storage[name][k])
            self.tensors = [self.storage[name] for name in self.names]
        self._method = _Method(self.template)
        self._views: dict = {}
        self._layers: dict = {}
        self.all_layers = list(range(first, self.last + 1))
        by_id = {id(q): name for name, q in self.template.named_parameters()}
        affine = self.template.affine()
        self.affine_names = None if affine is None else tuple(by_id[id(q)] for q in affine)
        post = self.template.post_weight()
        self.post_weight_name = None if post is None else by_id[id(post)]

    def __repr__(self) -> str:
        return f"Stack(layers {self.first}..{self.last})"

    def select(self, parity: int | None = None) -> slice:
        """All blocks, or those whose layer index has the given parity."""
        return ALL if parity is None else slice((parity - self.first) % 2, self.d, 2)

    def layers(self, ks: slice = ALL) -> list[int]:
        """The 1-based layers of the selected blocks (kept: every step asks for them)."""
        if ks is ALL:
            return self.all_layers
        key = ks.indices(self.d)
        out = self._layers.get(key)
        if out is None:
            out = self._layers[key] = [self.first + k for k in range(*key)]
        return out

    def call(self, method: str, *args, ks: slice = ALL, params: dict | None = None, shared=()):
        """``block.method(*args_k, *shared)`` for every selected block k at once: ``args`` are stacked
        over the selected blocks (first dimension), ``shared`` the same for all; ``params`` (by
        name, stacked over the selected blocks) in place of the current parameters."""
        start, stop, step = (0, 1, 1) if self.d == 1 else ks.indices(self.d)
        if stop - start <= step and (params is None or not self.batched):  # one block: its own module
            inputs = [a[0] for a in args] + list(shared)
            if params is None:
                return getattr(self.blocks[start], method)(*inputs).unsqueeze(0)
            one = {f"block.{name}": params[name][0] for name in self.names}
            return functional_call(self._method, one, (method, *inputs)).unsqueeze(0)
        if self.batched:
            if params is None:
                key = (start, stop, step)
                if key not in self._views:
                    self._views[key] = _view(self.template, {name: self.storage[name][ks] for name in self.names})
                view = self._views[key]
            else:
                view = _view(self.template, params)
            return getattr(view, method)(*args, *shared)
        tensors = {f"block.{name}": (self.storage[name][ks] if params is None else params[name]) for name in self.names}

        def one(p, *a):
            return functional_call(self._method, p, (method, *a, *shared))

        return vmap(one)(tensors, *args)

    def gradients(self, fn, ks: slice = ALL) -> dict:
        """The gradients (by parameter name, stacked over the selected blocks) of ``fn(call)``, a
        sum over the selected blocks of terms in each block's own parameters, where ``call(method,
        *args)`` is ``Stack.call`` with the parameters being differentiated. One block is
        differentiated in its own parameters (so terms that reach them otherwise, such as the
        network's read-out, count), several through stacked copies."""
        start, stop, step = ks.indices(self.d)
        if len(range(start, stop, step)) == 1:
            block = self.blocks[start]
            leaves = list(block.parameters())

            def call(method, *args, shared=()):
                return getattr(block, method)(*(a[0] for a in args), *shared).unsqueeze(0)
        else:
            named = {name: self.storage[name][ks].detach().requires_grad_(True) for name in self.names}
            leaves = list(named.values())

            def call(method, *args, shared=()):
                return self.call(method, *args, ks=ks, params=named, shared=shared)
        with torch.enable_grad():
            grads = torch.autograd.grad(fn(call), leaves, allow_unused=True)
        return {name: (torch.zeros_like(q) if g is None else g).view(self.storage[name][ks].shape)
                for name, q, g in zip(self.names, leaves, grads)}
