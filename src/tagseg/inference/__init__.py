"""One inference layer for every stage that turns a trained network into masks.

- :mod:`tagseg.inference.multiscale`: the multi-scale + flip loop shared by every model kind;
- :mod:`tagseg.inference.patch`, :mod:`tagseg.inference.cam`, :mod:`tagseg.inference.segment`:
  the family adapters (the model's public forward) and finishers (label merge; CAM
  normalisation with a constant background; softmax);
- :mod:`tagseg.inference.pseudo`: class probabilities of one image for pseudo-masks, keyed by
  the family name stored in the model file;
- :mod:`tagseg.inference.crf`: the optional dense-CRF refinement (METHODS.md §5);
- :mod:`tagseg.inference.loading`: rebuilding a trained tag classifier from its model file.

Used by ``tagseg pseudo``, the background sweep, ``segment eval`` and ``predict``.
"""
