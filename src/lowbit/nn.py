"""QuantLinear: a drop-in ``nn.Linear`` replacement holding packed intx buffers.

Buffers (the state dict): ``qweight`` int32 (Kp*bits//32, N), ``scales`` (G, N), ``zeros``
(G, N, only when asymmetric) and ``bias`` (N,) when the source layer had one. Layout:
``lowbit.formats.intx``. forward(x[..., K]) -> y[..., N] through ``lowbit.ops``.

Run-time word order: 1/2/4/8-bit weights with integer (or symmetric integer) zero points keep
``qweight`` in the mma word order (``formats.intx.to_mma_words``, where ``mma_words_layout_ok``: the
packed GEMM then needs no per-tile activation permutation, 8-18 % faster at M = 1..16 on the H200 for
4 bits; the 1/2/8-bit packed GEMM reads only this order). ``k_order`` says which order the
buffer holds; the state dict, ``weight`` and checkpoints always see the natural order (converted on
save and load). Modules built on the meta device start natural; ``use_mma_words_(model)`` converts
them once their buffers are filled (``load_quantized`` and the HF loader call it).
"""
from __future__ import annotations

import operator
from typing import Optional

import torch
from torch import nn

from .formats.intx import IntxFormat, IntxWeight, natural_words, runs_mma_words, runtime_words, to_mma_words
from .kernels.launch import EagerPlans
from .ops import linear_wxa16, linear_wxa16_eager
from .tp import Shardable


class MmaWordsBuffer:
    """Mixin of modules with packed-word buffers kept in the mma word order at run time
    (``formats.intx.to_mma_words``). ``mma_word_buffers()`` -> {buffer name: whether the order applies},
    ``word_bits(name)`` the bits of its codes; buffer ``<p>qweight`` records its order in the attribute
    ``<p>k_order`` (0 natural, 1 mma); the state dict always holds the natural order."""

    k_order = 0  # word order of ``qweight`` (modules with other buffer names add their own attributes)

    def mma_word_buffers(self) -> dict:
        return {"qweight": self.mma_words_apply()}

    def word_bits(self, buffer: str) -> int:
        return self.bits

    @staticmethod
    def _order_attr(buffer: str) -> str:
        return buffer.replace("qweight", "k_order")

    @torch.no_grad()
    def use_mma_words(self) -> None:
        """Replace each natural-order word buffer by its mma word order copy, where it applies (a new
        tensor: the caller's weight object is left untouched)."""
        for name, applies in self.mma_word_buffers().items():
            q = getattr(self, name)
            if getattr(self, self._order_attr(name)) == 0 and q.device.type != "meta":
                q, order = runtime_words(q, applies, self.word_bits(name))
                setattr(self, name, q)
                setattr(self, self._order_attr(name), order)

    def natural(self, buffer: str = "qweight") -> torch.Tensor:
        """``buffer`` in the natural word order (a converted copy while it holds the mma order)."""
        return natural_words(getattr(self, buffer), getattr(self, self._order_attr(buffer)), self.word_bits(buffer))

    def _save_to_state_dict(self, destination, prefix, keep_vars):
        super()._save_to_state_dict(destination, prefix, keep_vars)
        for name in self.mma_word_buffers():
            if getattr(self, self._order_attr(name)):
                destination[prefix + name] = self.natural(name)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        for name in self.mma_word_buffers():
            key, q = prefix + name, getattr(self, name)
            if getattr(self, self._order_attr(name)) and key in state_dict and state_dict[key].shape == q.shape:
                state_dict = {**state_dict, key: to_mma_words(state_dict[key].to(q.device), self.word_bits(name))}
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)


class EagerLaunchPlanned:
    """Mixin of modules whose op is one ``launch_intx`` launch, called as
    ``op(x, *weights, bits, group_size or 0, in_features, k_order)``: ``forward`` runs the torch.library op
    ``OP`` while tracing / compiling (one opaque node) and, in eager mode, the launch recorded for x's input
    signature (``kernels.launch.EagerPlans``: only Y's allocation and the compiled kernel's launcher per call),
    recording it with the op's implementation ``OP_EAGER``. ``WEIGHT_BUFFERS``: the names of the weight buffers
    in the op's argument order (a recorded launch is used only while they are the same objects)."""

    OP = OP_EAGER = None
    WEIGHT_BUFFERS: tuple = ()

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if cls.WEIGHT_BUFFERS:  # C-level pick for the eager hot path (Dynamo cannot trace itemgetter)
            cls._pick_weights = operator.itemgetter(*cls.WEIGHT_BUFFERS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.compiler.is_compiling() or torch.jit.is_tracing():
            return self.OP(x, *self._op_args(tuple(self._buffers[n] for n in self.WEIGHT_BUFFERS)))
        weights = self._pick_weights(self._buffers)
        plans = self.eager_plans()
        y = plans.replay(x, weights)
        if y is None:
            y = plans.record(x, weights, lambda: self.OP_EAGER(x, *self._op_args(weights)))
        return y

    def _op_args(self, weights: tuple) -> tuple:
        return (*weights, self.bits, self.group_size or 0, self.in_features, self.k_order)

    def eager_plans(self) -> EagerPlans:
        plans = self.__dict__.get("_eager_plans")
        if plans is None:
            plans = self.__dict__["_eager_plans"] = EagerPlans()
        return plans

    def _apply(self, fn, *args, **kwargs):  # .to() / .cuda() / .half(): recorded launches hold the old tensors
        self.__dict__.pop("_eager_plans", None)
        return super()._apply(fn, *args, **kwargs)

    def __getstate__(self):  # copy.deepcopy / pickle: compiled launches are not state
        state = dict(super().__getstate__())
        state.pop("_eager_plans", None)
        return state


class QuantLinear(EagerLaunchPlanned, MmaWordsBuffer, Shardable, nn.Module):
    #: keep eligible words in the mma word order at run time (subclasses with other kernels: False)
    RUNTIME_MMA_WORDS = True
    OP, OP_EAGER = linear_wxa16, staticmethod(linear_wxa16_eager)
    WEIGHT_BUFFERS = ("qweight", "scales", "zeros", "bias")

    def __init__(self, weight: IntxWeight, bias: Optional[torch.Tensor] = None, k_order: int = 0) -> None:
        """``k_order`` 1: ``weight.qweight`` already holds the mma word order (no conversion, no copy)."""
        super().__init__()
        self.in_features = weight.in_features
        self.out_features = weight.out_features
        self.bits = weight.bits
        self.group_size = weight.group_size
        self.register_buffer("qweight", weight.qweight)
        self.register_buffer("scales", weight.scales)
        self.register_buffer("zeros", weight.zeros)
        self.register_buffer("bias", None if bias is None else bias.detach().clone())
        if k_order:
            if not self.mma_words_apply():
                raise ValueError(f"k_order=1 (the mma word order) does not apply to this weight "
                                 f"({weight.bits} bits, group {weight.group_size}): see formats.intx.mma_words_apply")
            self.k_order = k_order
        self.use_mma_words()

    def mma_words_apply(self) -> bool:
        """Codes of one bit-plane whose zero points are integers (the packed GEMM path's formats)."""
        return self.RUNTIME_MMA_WORDS and runs_mma_words(self)

    @classmethod
    def from_linear(cls, linear: nn.Linear, fmt: IntxFormat) -> "QuantLinear":
        """Quantize ``linear.weight`` with ``fmt``; the bias is kept in the weight's dtype."""
        return cls(fmt.quantize(linear.weight.detach()), linear.bias)

    @property
    def weight(self) -> IntxWeight:
        """The packed weight in the natural word order (a converted copy while ``k_order`` is 1)."""
        return IntxWeight(self.natural(), self.scales, self.zeros, self.bits, self.group_size,
                          self.in_features)

    def extra_repr(self) -> str:
        gs = "per-channel" if self.group_size is None else self.group_size
        kind = "sym" if self.zeros is None else ("int-zero" if self.zeros.dtype == torch.uint8 else "float-zero")
        return (f"in_features={self.in_features}, out_features={self.out_features}, bits={self.bits}, "
                f"group_size={gs}, {kind}, bias={self.bias is not None}")


def use_mma_words_(model: nn.Module) -> nn.Module:
    """``use_mma_words`` on every lowbit module of ``model`` that has it (QuantLinear, the MoE experts),
    in place; returns it."""
    for module in model.modules():
        if callable(getattr(module, "use_mma_words", None)):
            module.use_mma_words()
    return model
