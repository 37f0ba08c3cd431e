"""Data: built-in datasets, a user's own data (factories, image folders) and streamed splits.

- :mod:`amc.data.splits`: seeded, stratified train/val/test splits (:class:`DataSplits`).
- :mod:`amc.data.datasets`: the built-in datasets and :func:`load_dataset`, the one entry point.
- :mod:`amc.data.factory`, :mod:`amc.data.imagefolder`: a user's ``package.module:factory`` or folder.
- :mod:`amc.data.streaming`: datasets read item by item, gathered subsets, batches on a device.
"""
