"""One file watcher for every file the sidecar reloads (the IdP client certificate, key and CA;
the client CA bundle; the private_key_jwt key; the identity signing key).

A file changes by content, not by name or time: the kubelet publishes a Secret volume by writing
a new timestamped directory and renaming a ``..data`` symlink over the old one, so neither the
watched path nor its mtime changes. Every read resolves the symlinks and hashes the contents.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class Snapshot:
    """The watched files as read now: resolved paths, contents, one digest over all of them."""

    paths: Mapping[str, str]
    contents: Mapping[str, bytes]
    digest: str


class FileWatch:
    """``poll`` returns the files when their content differs from the last content it returned."""

    __slots__ = ("_files", "seen")

    def __init__(self, files: Mapping[str, str | None]) -> None:
        """``files``: name → path; names with no path are left out."""
        self._files = {name: path for name, path in files.items() if path}
        self.seen = ""  # the digest of the last content returned (tried), loaded or not

    def __bool__(self) -> bool:
        return bool(self._files)

    def read(self) -> Snapshot:
        """The files as they are now; raises OSError (a file missing for a moment between two
        kubelet steps, or unreadable)."""
        paths: dict[str, str] = {}
        contents: dict[str, bytes] = {}
        digest = hashlib.sha256()
        for name, path in self._files.items():
            real = os.path.realpath(path)
            with open(real, "rb") as handle:
                content = handle.read()
            paths[name], contents[name] = real, content
            digest.update(name.encode() + b"\0" + hashlib.sha256(content).digest())
        return Snapshot(paths, contents, digest.hexdigest())

    def poll(self) -> Snapshot | None:
        """The new content, once per change (recorded as seen, so content that fails to load is
        not retried until it changes again); None when unchanged. Raises OSError."""
        current = self.read()
        if current.digest == self.seen:
            return None
        self.seen = current.digest
        return current

    def changed_since(self, snapshot: Snapshot) -> bool:
        """Whether the files moved on while ``snapshot`` was being loaded (then look again)."""
        try:
            return self.read().digest != snapshot.digest
        except OSError:
            return True
