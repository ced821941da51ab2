"""The evaluation stage (``tagseg eval``): score folders of masks (``folder``), merge the scores of
shards, and sweep the CAM family's background threshold on a run's model (``bg_sweep``)."""
