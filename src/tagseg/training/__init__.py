"""The tag classifier's training task (the loop itself is in tagseg.engine)."""
