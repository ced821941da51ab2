"""Preparation of the standard datasets from their downloaded archives.

- :mod:`tagseg.data.prepare.archives` reads a folder or a tar archive as one stream of members.
- :mod:`tagseg.data.prepare.voc` builds PASCAL VOC 2012 + SBD (``SegmentationClassAug``).
- :mod:`tagseg.data.prepare.coco` builds COCO 2014 semantic masks, lists and labels.
- :mod:`tagseg.data.prepare.parallel` runs the file jobs over CPU processes.
- :mod:`tagseg.data.prepare.verify` checks a prepared tree (counts, overlaps, files, checksums).
- :mod:`tagseg.data.prepare.cli` is the ``tagseg prepare`` command.

Nothing here downloads anything.
"""
