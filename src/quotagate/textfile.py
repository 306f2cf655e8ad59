"""Prometheus textfiles (node_exporter's textfile collector, the workers' files for their
supervisor), written by root in a directory another user may own: Debian's textfile directory
belongs to ``prometheus``.

prometheus-client's own ``write_to_textfile`` opens a temp file of a name anyone can predict
(the textfile's, the process id, the thread's) with a plain ``open()``: a symlink put there has
root truncate and overwrite the file it names. Here the temp file gets a random name, is created
without following anything, and is renamed over the textfile through the directory's handle
(:func:`quotagate.publish.replace_file`).
"""

from __future__ import annotations

from pathlib import Path

from prometheus_client import CollectorRegistry, generate_latest

from quotagate.publish import replace_file


def write_textfile(path: Path, registry: CollectorRegistry) -> None:
    """The registry's metrics at ``path``, mode 0644 (node_exporter's user reads it); its
    directory must exist. Raises OSError."""
    replace_file(path, generate_latest(registry))
