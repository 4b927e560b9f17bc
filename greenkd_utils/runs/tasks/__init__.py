"""The kinds of run, one module each; importing this package registers them with the lifecycle."""

from greenkd_utils.runs.tasks import classification, data_free, detection, qat  # noqa: F401
