"""Layer schedules: logical positions -> physical layers.

A schedule is the list of physical layer indices run in order.  It expresses
identity, pruning (omitted indices are never built nor loaded), reordering,
and repetition (layer fusion: one weight set at several positions, each
position with its own attention module and so its own KV cache).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class LayerSchedule:
    physical: tuple[int, ...]  # physical layer of each position
    num_layers: int  # physical layers in the checkpoint
    # the positions this pipeline stage runs: start .. stop - 1 (all of them without pipeline parallelism)
    start: int = 0
    stop: int | None = None

    @property
    def local(self) -> range:
        return range(self.start, len(self.physical) if self.stop is None else self.stop)

    @property
    def used(self) -> frozenset[int]:
        """The physical layers this stage builds and loads (a layer at positions of two stages: on both)."""
        return frozenset(self.physical[i] for i in self.local)

    def owns_attention(self, position: int) -> bool:
        """True where ``position`` is the stage's first use of its physical layer.

        That position uses the attention module built inside the physical
        layer; later repeats get attention modules of their own.
        """
        first = next(i for i in self.local if self.physical[i] == self.physical[position])
        return first == position

    def repeat_positions(self) -> list[int]:
        return [i for i in self.local if not self.owns_attention(i)]
