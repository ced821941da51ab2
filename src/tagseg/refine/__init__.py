"""Refinement stage: turn seeds (CAM scores or patch-classifier probabilities) into better
pseudo-masks by pixel-adaptive refinement (PAR) or a random walk over learnt affinities (PSA's
AffinityNet, IRN's class-boundary map). See docs/REFINE.md.

The method library is pure functions on tensors: pair indices within a radius (:mod:`.pairs`),
affinity labels from seeds (:mod:`.labels`), the pair losses (:mod:`.losses`), the sparse random
walk (:mod:`.random_walk`) and PAR (:mod:`.par`)."""
