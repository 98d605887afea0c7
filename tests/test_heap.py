"""bge_m3.heap: start-up objects leave the collector's generations (worker and API call it)."""
from __future__ import annotations

import gc

from bge_m3 import heap


def test_freeze_moves_live_objects_out_of_the_collected_generations():
    gc.unfreeze()
    keep = [[i] for i in range(1000)]  # lists are tracked by the collector
    try:
        frozen = heap.freeze()
        # Other tests' threads may still free objects that were just frozen: the count can only fall.
        assert frozen >= 1000 and 0 < gc.get_freeze_count() <= frozen
        tracked = {id(obj) for obj in gc.get_objects()}  # the three generations, not the frozen
        assert id(keep) not in tracked and not any(id(item) in tracked for item in keep)
        fresh = [0]
        assert id(fresh) in {id(obj) for obj in gc.get_objects()}
    finally:
        gc.unfreeze()
