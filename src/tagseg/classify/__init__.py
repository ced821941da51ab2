"""The tag classifier's stage (``tagseg train``): its training task (the loop itself is in
tagseg.engine) and its best-epoch hook."""
