"""Scoring predictions against ground truth: mIoU (``miou``), contour F and J&F (``contour``), the
one scorer (``scorer``), its mergeable shard sums (``shards``), chance baselines (``baselines``)
and the one "for each image: read the ground truth, predict, score" loop (``predict_and_score``)."""
