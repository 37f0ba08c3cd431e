"""Datasets read item by item: splits of a user's ``Dataset``, gathered subsets, batches on a device.

The built-in datasets are ``TensorDataset`` splits held in memory. A user's dataset (a factory's
``Dataset``, an image folder) becomes :class:`StreamedSplit` views that are read through
``DataLoader``s (worker processes, pinned memory when the model is on a GPU) and never concatenated
into one tensor. Every helper here takes both kinds: a ``TensorDataset`` is sliced directly, so the
built-in datasets keep exactly the batches they always had; anything else is streamed in the same
order.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, TensorDataset

from amc.errors import DataError

GATHER_BATCH = 256  # items per DataLoader batch when a subset is gathered into memory


def one_line(exc: BaseException, limit: int = 300) -> str:
    """``Type: message`` of ``exc`` on one line (whitespace collapsed), at most ``limit`` characters."""
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}"[:limit] if text else type(exc).__name__


def as_item(item: object, source: str, index: int) -> tuple[Tensor, int]:
    """A dataset item as ``(float32 image (C, H, W), int label)``, or :class:`DataError` naming ``source``."""
    if not isinstance(item, (tuple, list)) or len(item) != 2:
        raise DataError(f"{source}: item {index} is a {type(item).__name__}; a dataset item must be an "
                        "(image, label) pair: a float tensor (C, H, W) and an int")
    x, y = item
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(x)
    if not isinstance(x, Tensor) or not x.is_floating_point() or x.dim() != 3:
        what = (f"a {x.dtype} tensor of shape {tuple(x.shape)}" if isinstance(x, Tensor) else f"a {type(x).__name__}")
        raise DataError(f"{source}: the image of item {index} is {what}; return a float tensor (C, H, W), "
                        "e.g. torchvision's ToTensor() output")
    if isinstance(y, Tensor) and y.numel() == 1 and not y.is_floating_point() and y.dtype != torch.bool:
        y = int(y.item())
    elif isinstance(y, (int, np.integer)) and not isinstance(y, (bool, np.bool_)):
        y = int(y)
    else:
        raise DataError(f"{source}: the label of item {index} is {y!r} ({type(y).__name__}); return an int class "
                        "index in [0, num_classes)")
    return x.to(torch.float32), y


class StreamedSplit(Dataset):
    """One split of a dataset that is read item by item: the positions of ``base`` it holds, in order.

    Args:
        base: Any map-style dataset (``__len__`` and ``__getitem__``) whose items are (image, label) pairs.
        indices: Positions of ``base`` in this split (None: all of them).
        source: Names the dataset in error messages (e.g. ``"--dataset mypkg.data:make train split"``).
        transform: Applied to each float32 image (e.g. the image folder's normalisation).
        labels: The split's labels in split order when they are known without reading the images.
        workers: DataLoader worker processes that read this split.
    """

    def __init__(self, base: Dataset, indices: Sequence[int] | np.ndarray | None = None, *, source: str,
                 transform: Callable[[Tensor], Tensor] | None = None, labels: np.ndarray | None = None,
                 workers: int = 0) -> None:
        self.base = base
        self.indices = np.arange(len(base), dtype=np.int64) if indices is None else np.asarray(indices, dtype=np.int64)
        self.source = source
        self.transform = transform
        self.labels = None if labels is None else np.asarray(labels, dtype=np.int64)
        self.workers = workers
        if self.labels is not None and len(self.labels) != len(self.indices):
            raise ValueError(f"{len(self.labels)} labels for {len(self.indices)} items")

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> tuple[Tensor, int]:
        j = int(self.indices[i])
        try:
            item = self.base[j]
        except DataError:
            raise
        except Exception as exc:  # noqa: BLE001 - a user's __getitem__ may raise anything
            raise DataError(f"{self.source}: reading item {j} failed ({one_line(exc)}); fix the dataset's "
                            "__getitem__ or the file it reads") from None
        x, y = as_item(item, self.source, j)
        return (x if self.transform is None else self.transform(x)), y

    def subset(self, positions: Sequence[int] | np.ndarray) -> StreamedSplit:
        """The split of the items at ``positions`` of this one (labels and settings kept)."""
        positions = np.asarray(positions, dtype=np.int64)
        return StreamedSplit(self.base, self.indices[positions], source=self.source, transform=self.transform,
                             labels=None if self.labels is None else self.labels[positions], workers=self.workers)


def _original_message(text: str) -> str:
    """The message of a :class:`DataError` raised in a DataLoader worker (torch re-raises it with the traceback)."""
    if "Original Traceback" not in text:
        return text
    last = [line for line in text.strip().splitlines() if line.strip()][-1].strip()
    prefix = f"{DataError.__module__}.{DataError.__name__}: "
    return last.removeprefix(prefix)


def _unwrapped(loader: DataLoader) -> Iterator:
    batches_ = iter(loader)
    try:
        yield from batches_
    except DataError as exc:
        raise DataError(_original_message(str(exc))) from None
    finally:
        # A worker's error (or a consumer that stops early) leaves the iterator to the garbage collector,
        # whose finalizer then waits 5 s for the workers (torch's MP_STATUS_CHECK_INTERVAL): stop them now.
        shutdown = getattr(batches_, "_shutdown_workers", None)
        if shutdown is not None:
            shutdown()


def batches(dataset: Dataset, batch_size: int, *, order: Tensor | Sequence[int] | None = None,
            device: torch.device | str = "cpu") -> Iterator[tuple[Tensor, Tensor]]:
    """``(images, labels)`` batches of ``dataset`` on ``device``, in ``order`` (None: as stored).

    A ``TensorDataset`` is sliced (no copy on the CPU); any other dataset is read by a ``DataLoader`` with
    the split's ``workers`` processes and pinned memory when ``device`` is a GPU.
    """
    device = torch.device(device)
    n = len(dataset)
    if isinstance(dataset, TensorDataset):
        x, y = dataset.tensors[:2]
        for start in range(0, n, batch_size):
            idx = slice(start, start + batch_size) if order is None else order[start : start + batch_size]
            yield x[idx].to(device, non_blocking=True), y[idx].to(device, non_blocking=True)
        return
    if order is None:
        plan = [list(range(start, min(n, start + batch_size))) for start in range(0, n, batch_size)]
    else:
        order = torch.as_tensor(order, dtype=torch.int64)
        plan = [order[start : start + batch_size].tolist() for start in range(0, len(order), batch_size)]
    workers = int(getattr(dataset, "workers", 0) or 0)
    pin = device.type == "cuda"
    # Its own generator: a DataLoader draws its workers' base seed from the global RNG otherwise, which would
    # shift the dropout masks of training against the in-memory path.
    loader = DataLoader(dataset, batch_sampler=plan, num_workers=min(workers, len(plan)), pin_memory=pin,
                        generator=torch.Generator().manual_seed(0))
    for x, y in _unwrapped(loader):
        yield x.to(device, non_blocking=pin), y.to(device, non_blocking=pin)


def take(dataset: Dataset, indices: Tensor | Sequence[int]) -> tuple[Tensor, Tensor]:
    """The items at ``indices`` gathered into ``(images, labels)`` tensors on the CPU (in that order)."""
    idx = torch.as_tensor(indices, dtype=torch.int64)
    if isinstance(dataset, TensorDataset):
        x, y = dataset.tensors[:2]
        return x[idx], y[idx]
    if len(idx) == 0:
        x, _ = dataset[0]
        return torch.empty((0, *x.shape), dtype=x.dtype), torch.empty(0, dtype=torch.int64)
    xs, ys = zip(*batches(dataset, GATHER_BATCH, order=idx))
    return torch.cat(xs), torch.cat(ys)


def labels_of(dataset: Dataset) -> np.ndarray:
    """Every label of ``dataset`` (int64): from its tensors or known labels, else read item by item."""
    if isinstance(dataset, TensorDataset):
        return dataset.tensors[1].numpy().astype(np.int64)
    known = getattr(dataset, "labels", None)
    if isinstance(known, np.ndarray):
        return known
    return np.concatenate([y.numpy() for _, y in batches(dataset, GATHER_BATCH)]).astype(np.int64)


__all__ = ["StreamedSplit", "as_item", "batches", "labels_of", "one_line", "take"]
