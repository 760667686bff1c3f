"""Batch sources: the data side of the training loop.

A source yields batches (dicts of tensors) and can save/restore its exact position
(epoch, index within the epoch, RNG) so a resumed run continues with the very next
batch *without* replaying the ones already trained on.
"""
from __future__ import annotations

from typing import Any, Callable, Iterator, Protocol, runtime_checkable

import torch

from ..data.features import collate, feature_lengths, label_norm, length_bucketed_batches
from ..errors import PlmkitError

Batch = dict[str, Any]


@runtime_checkable
class BatchSource(Protocol):
    """What ``train`` consumes.

    ``__iter__`` yields the remaining batches of the current epoch (or an endless
    stream); the loop calls it again when it is exhausted. The state must describe the
    position *after* the batches yielded so far. Sources that know their epoch length
    also define ``__len__`` (batches per epoch on this rank), which ``epochs`` needs.
    """

    def __iter__(self) -> Iterator[Batch]: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


class IndexedBatches:
    """Batches of dataset indices, reshuffled each epoch and sharded across DDP ranks.

    The epoch's global batch order comes from a generator seeded with ``seed + epoch``,
    so it is a pure function of (seed, epoch) and the position is just two integers.
    Rank ``r`` of ``w`` takes global batches ``r, r + w, ...``; all ranks get the same
    count (the remainder is dropped) so DDP's collectives never wait on a missing rank.

    ``batches`` gives precomputed batches (e.g. length buckets); only their order is
    shuffled. Otherwise the indices ``0..dataset_len-1`` are shuffled and chunked.
    ``make_batch(indices)`` turns one list of indices into a dict of tensors.
    """

    def __init__(self, dataset_len: int, make_batch: Callable[[list[int]], Batch],
                 batch_size: int, seed: int = 0, shuffle: bool = True, drop_last: bool = False,
                 batches: list[list[int]] | None = None, rank: int = 0, world_size: int = 1) -> None:
        if batch_size < 1:
            raise PlmkitError(f"batch size must be >= 1, got {batch_size}")
        if not 0 <= rank < world_size:
            raise PlmkitError(f"rank {rank} out of range for world size {world_size}")
        self.dataset_len = dataset_len
        self.make_batch = make_batch
        self.batch_size = batch_size
        self.seed = seed
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.batches = batches
        self.rank = rank
        self.world_size = world_size
        self.epoch = 0
        self.index = 0  # batches of this rank already yielded in ``epoch``

    def _global_batches(self, epoch: int) -> list[list[int]]:
        g = torch.Generator().manual_seed(self.seed + epoch)
        if self.batches is not None:
            n = len(self.batches)
            order = torch.randperm(n, generator=g).tolist() if self.shuffle else range(n)
            return [self.batches[i] for i in order]
        n = self.dataset_len
        idx = torch.randperm(n, generator=g).tolist() if self.shuffle else list(range(n))
        out = [idx[i:i + self.batch_size] for i in range(0, n, self.batch_size)]
        if self.drop_last and out and len(out[-1]) < self.batch_size:
            out.pop()
        return out

    def _rank_batches(self, epoch: int) -> list[list[int]]:
        glob = self._global_batches(epoch)
        per_rank = len(glob) // self.world_size
        return glob[self.rank:per_rank * self.world_size:self.world_size]

    def __len__(self) -> int:
        if self.batches is not None:
            n = len(self.batches)
        elif self.drop_last:
            n = self.dataset_len // self.batch_size
        else:
            n = -(-self.dataset_len // self.batch_size)
        return n // self.world_size

    def __iter__(self) -> Iterator[Batch]:
        mine = self._rank_batches(self.epoch)
        if self.index >= len(mine):  # restored exactly at an epoch's end
            self.epoch, self.index = self.epoch + 1, 0
            mine = self._rank_batches(self.epoch)
        while self.index < len(mine):
            indices = mine[self.index]
            self.index += 1  # advance first: the state must count this batch as consumed
            yield self.make_batch(indices)
        self.epoch, self.index = self.epoch + 1, 0

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "index": self.index, "seed": self.seed,
                "world_size": self.world_size}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("world_size", self.world_size) != self.world_size:
            raise PlmkitError(f"data position was saved with {state['world_size']} ranks; "
                              f"now {self.world_size}")
        if state.get("seed", self.seed) != self.seed:
            raise PlmkitError(f"data position was saved with seed {state['seed']}; now {self.seed}")
        self.epoch, self.index = int(state["epoch"]), int(state["index"])


def task_batches(features: list[dict[str, Any]], pad: int, batch_size: int, seed: int, group_by_length: bool,
                 with_index: bool = False) -> IndexedBatches:
    """Training batches of encoded task features, as finetune, distill and prune form them.

    ``group_by_length``: length buckets (little padding; the task's setting, ``TaskSpec.group_by_length``),
    else random batches, reshuffled each epoch. Per-token labels (NER, generation) also carry
    ``label_norm`` (``data.features.label_norm``), so every labelled token weighs the same whatever
    the length of the batch it lands in. ``with_index``: each batch carries its ``feature_index``
    (the key of distillation's teacher-logit cache).
    """
    buckets = length_bucketed_batches(feature_lengths(features), batch_size, seed=seed) if group_by_length else None
    n_batches = len(buckets) if buckets else -(-len(features) // batch_size)
    norm = label_norm(features, n_batches)

    def make(idx: list[int]) -> Batch:
        batch = collate([features[i] for i in idx], pad)
        if norm is not None:
            batch["label_norm"] = torch.tensor(norm)
        if with_index:
            batch["feature_index"] = torch.tensor(idx)
        return batch

    return IndexedBatches(len(features), make, batch_size, seed=seed, batches=buckets)
