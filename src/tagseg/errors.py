"""Exceptions raised for bad input. Each message names the offending file or value."""


class TagsegError(Exception):
    """Base class of every error tagseg raises on purpose."""


class DataError(TagsegError):
    """A dataset file is missing, unreadable or inconsistent with the class list."""


class ConfigError(TagsegError):
    """A configuration value is invalid or two values contradict each other."""


class TrainingError(TagsegError):
    """Training cannot continue (e.g. a non-finite loss)."""


class OutputError(TagsegError):
    """An output file cannot be written (read-only folder, full disk, path outside the output folder)."""
