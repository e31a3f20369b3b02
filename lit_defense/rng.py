"""Random numbers drawn per sample, so that sharding and batching do not change an attack's noise.

An attack's random start, Square's windows and RandomSampling's points come from a ``SampleRNG``:
sample ``i``'s numbers depend only on the attack's seed, the sample's id (its position in the
evaluated set) and how many draws the attack made before (a counter shared by the subsets an
attack takes of its batch). They do not depend on which other samples share the batch, on the
batch size, on the process that attacks the sample under DDP, or on the device: the bits come from
a counter-based hash (SplitMix64's finaliser) computed with integer tensor operations.

So a 2-process audit attacks every input with the same noise as a 1-process one, and an audit
resumed after a crash attacks the remaining inputs as the uninterrupted run would have.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

_GOLDEN = 0x9E3779B97F4A7C15 - (1 << 64)  # as signed 64-bit integers
_M1 = 0xBF58476D1CE4E5B9 - (1 << 64)
_M2 = 0x94D049BB133111EB - (1 << 64)
_BITS = 24  # float32 mantissa: uniform numbers k / 2**24


def _signed(value: int) -> int:
    """A Python integer wrapped to a signed 64-bit one (what int64 tensor arithmetic would give)."""
    return (value + (1 << 63)) % (1 << 64) - (1 << 63)


def _shr(z: torch.Tensor, k: int) -> torch.Tensor:
    """Logical right shift of signed 64-bit integers."""
    return (z >> k) & ((1 << (64 - k)) - 1)


def mix(z: torch.Tensor) -> torch.Tensor:
    """SplitMix64's finaliser on int64 tensors (wrapping arithmetic): well-spread 64-bit hashes."""
    z = z ^ _shr(z, 30)
    z = z * _M1
    z = z ^ _shr(z, 27)
    z = z * _M2
    return z ^ _shr(z, 31)


class SampleRNG:
    """Per-sample random numbers for a batch whose samples carry ``ids``.

    Every draw returns a tensor whose first dimension is the batch; ``rng[idx]`` is the generator of
    a subset of the batch and shares the draw counter, so a sample attacked again on a subset (a
    restart, the samples still searched) gets the same numbers whatever else is in the subset.

    Args:
        seed: the attack's seed.
        ids: one integer per sample (default ``0..n-1`` for a batch of ``n``).
        device: where the numbers are drawn (default: the device of ``ids``).
    """

    def __init__(self, seed: int, ids: torch.Tensor, device: torch.device | str | None = None,
                 _draws: list[int] | None = None, _lanes: torch.Tensor | None = None) -> None:
        self.seed = int(seed)
        self.ids = ids.to(device if device is not None else ids.device, torch.long)
        self._draws = _draws if _draws is not None else [0]
        # per row, which lane (restart, target, chain) it is: lane 0 draws what the plain generator does
        self._lanes = _lanes.to(self.ids.device, torch.long) if _lanes is not None else None

    @classmethod
    def for_batch(cls, seed: int, n: int, device: torch.device | str, ids: torch.Tensor | None = None) -> SampleRNG:
        """The generator of a batch of ``n`` samples (ids ``0..n-1`` unless given)."""
        if ids is None:
            ids = torch.arange(n, device=device)
        if ids.shape != (n,):
            raise ValueError(f"ids must hold one integer per sample ({n}), got shape {tuple(ids.shape)}.")
        return cls(seed, ids, device)

    def __len__(self) -> int:
        return int(self.ids.shape[0])

    def __getitem__(self, idx: torch.Tensor | slice) -> SampleRNG:
        """The generator of a subset of the batch (same counter)."""
        return SampleRNG(self.seed, self.ids[idx], _draws=self._draws,
                         _lanes=self._lanes[idx] if self._lanes is not None else None)

    def lanes(self, lanes: Sequence[int]) -> SampleRNG:
        """The generator of the batch repeated once per lane, lane-major (row ``l * n + i``: sample ``i``, lane ``lanes[l]``).

        Each lane is an independent stream of the same sample (a restart, a target, a chain run
        side by side instead of one after another); lane 0 draws exactly what this generator does.
        The lanes count their draws from this generator's count on their own (they do not advance
        it), so lane ``k`` draws the same numbers whichever lanes run beside it or before it.
        """
        n = len(self)
        lane = torch.as_tensor(list(lanes), dtype=torch.long, device=self.ids.device).repeat_interleave(n)
        if self._lanes is not None:
            raise ValueError("a generator of lanes cannot be split into lanes again.")
        return SampleRNG(self.seed, self.ids.repeat(len(lanes)), _draws=[self._draws[0]], _lanes=lane)

    def bits(self, shape: tuple[int, ...]) -> torch.Tensor:
        """Non-negative int64 of ``_BITS`` random bits, shape ``shape`` (``shape[0]`` = batch)."""
        if shape[0] != len(self):
            raise ValueError(f"a draw for {shape[0]} samples from the generator of {len(self)}.")
        draw = self._draws[0]
        self._draws[0] += 1
        key = mix(mix(torch.full_like(self.ids, _signed(self.seed * 2 + 1))) ^ mix(self.ids * 2 + 1)
                  ^ _signed(draw * _GOLDEN))
        if self._lanes is not None:  # lane 0 keeps the plain key
            key = key ^ torch.where(self._lanes == 0, torch.zeros_like(key), mix(self._lanes * 2 + 1) * _M1)
        per = math.prod(shape[1:])
        element = torch.arange(1, per + 1, device=self.ids.device, dtype=torch.long) * _GOLDEN
        return _shr(mix(key[:, None] + element[None, :]), 64 - _BITS).view(shape)

    def rand(self, shape: tuple[int, ...], dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """Uniform in [0, 1)."""
        return (self.bits(shape).to(torch.float32) / (1 << _BITS)).to(dtype)

    def randint(self, low: int, high: int, shape: tuple[int, ...]) -> torch.Tensor:
        """Uniform integers in [low, high)."""
        return low + self.bits(shape) % max(high - low, 1)

    def randn(self, shape: tuple[int, ...], dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """Standard normal (Box-Muller)."""
        both = self.bits((shape[0], 2, *shape[1:])).to(torch.float64)
        u1 = (both[:, 0] + 1) / (1 << _BITS)  # (0, 1]
        u2 = both[:, 1] / (1 << _BITS)
        return (torch.sqrt(-2 * torch.log(u1)) * torch.cos(2 * math.pi * u2)).to(dtype)

    def signs(self, shape: tuple[int, ...], dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """-1 or +1 with equal probability."""
        return (self.bits(shape) & 1).to(dtype) * 2 - 1


__all__ = ["SampleRNG", "mix"]
