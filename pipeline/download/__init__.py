"""Dataset and checkpoint downloads: verified, resumable, mirrored, and offline-first.

``manifest.yaml`` lists, per dataset part, its files, mirrors, sizes and published checksums
(:mod:`.manifest`); :mod:`.datasets` checks whether a source's data is already in place (then no
network at all) and otherwise fetches (:mod:`.transfer`), verifies (:mod:`.verify`, with the
``data/checksums.lock`` lock file for files without a published checksum) and safely unpacks
(:mod:`.extract`) it under the dataset root; :mod:`.hub` fetches timm ``weights: hub``
checkpoints into local files. Every failure is a :class:`~.errors.DownloadError` with a one-line
message saying what to place where. Depends on :mod:`pipeline.data` (the layouts the sources read).

Entry points: the stage ``download`` (``pipeline/stages/download.py``, one job per dataset that reads
files, upstream of ``prepare_data``) and the tool ``python -m pipeline fetch`` (``pipeline/tools/fetch.py``:
everything a config needs, datasets and hub checkpoints, on a machine with network).
"""
