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

    @property
    def used(self) -> frozenset[int]:
        return frozenset(self.physical)

    def owns_attention(self, position: int) -> bool:
        """True where ``position`` is the first use of its physical layer.

        That position uses the attention module built inside the physical
        layer; later repeats get attention modules of their own.
        """
        return self.physical.index(self.physical[position]) == position

    def repeat_positions(self) -> list[int]:
        return [i for i in range(len(self.physical)) if not self.owns_attention(i)]
