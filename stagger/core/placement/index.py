"""Search structures of the planner: free capacity by GPU in a segment tree, and GPUs
with room by frame period."""

from __future__ import annotations


class _FreeTree:
    """Max segment tree over one pool's GPUs: leftmost used GPU with enough room."""

    def __init__(self, n: int) -> None:
        self.size = 1
        while self.size < max(1, n):
            self.size *= 2
        self.util = [-1.0] * (2 * self.size)
        self.mem = [-1] * (2 * self.size)

    def set(self, i: int, free_util: float, free_mem: int) -> None:
        util, mem = self.util, self.mem
        i += self.size
        util[i], mem[i] = free_util, free_mem
        i >>= 1
        while i:
            left, right = 2 * i, 2 * i + 1
            u = util[left] if util[left] > util[right] else util[right]
            m = mem[left] if mem[left] > mem[right] else mem[right]
            if util[i] == u and mem[i] == m:
                return  # unchanged here, so unchanged above
            util[i], mem[i] = u, m
            i >>= 1

    def first(self, start: int, need_util: float, need_mem: int) -> int | None:
        """Leftmost leaf >= start whose free util and memory both suffice."""
        if start >= self.size:
            return None
        util, mem = self.util, self.mem
        i = start + self.size
        while True:
            # Climb: from the leaf, take the next subtree to the right until one may have room.
            while util[i] < need_util or mem[i] < need_mem:
                while i & 1:  # a right child: go up until we can step right
                    i >>= 1
                if i <= 1:
                    return None
                i += 1
            # Descend to the leftmost leaf that may have room. The two maxima of a subtree
            # can come from different leaves, so the leaf is checked and, if it falls short,
            # the climb goes on to its right.
            while i < self.size:
                i *= 2
                if util[i] < need_util or mem[i] < need_mem:
                    i += 1
            if util[i] >= need_util and mem[i] >= need_mem:
                return i - self.size


class _RoomIndex:
    """First fit over one pool's GPUs by free body time *and* free memory.

    One max tree over both would mislead: a subtree can hold one GPU with body time to
    spare and another with memory to spare, and none with both (common when memory binds),
    so the search would wander through many such GPUs. GPUs are bucketed instead by free
    memory into power-of-two classes, one tree per class: in every class above the one a
    need falls in, all GPUs have the memory, so only body time is searched there; only
    the need's own class checks both."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.trees: dict[int, _FreeTree] = {}
        self.class_of_leaf = [-1] * n

    @staticmethod
    def _class(mem: int) -> int:
        return max(0, mem).bit_length()  # class c holds memory in [2**(c-1), 2**c)

    def set(self, i: int, free_util: float, free_mem: int) -> None:
        old = self.class_of_leaf[i]
        new = self._class(free_mem) if free_util >= 0 else -1
        if old not in (-1, new):
            self.trees[old].set(i, -1.0, -1)
        self.class_of_leaf[i] = new
        if new != -1:
            if new not in self.trees:
                self.trees[new] = _FreeTree(self.n)
            self.trees[new].set(i, free_util, free_mem)

    def first(self, start: int, need_util: float, need_mem: int) -> int | None:
        """Leftmost GPU >= start with at least this free body time and memory."""
        own = self._class(need_mem)
        best: int | None = None
        for c, tree in self.trees.items():
            if c < own:
                continue
            found = tree.first(start, need_util, need_mem if c == own else -1)
            if found is not None and (best is None or found < best):
                best = found
        return best
