"""A Secret volume published the way the kubelet's AtomicWriter does it (pkg/volume/util/atomic_writer.go).

1. write the payload into a new hidden timestamped directory ``..2026_11_22_04_00_00.123456789``;
2. create the symlink ``..data_tmp`` → that directory and rename it over ``..data`` (atomic);
3. make sure each visible name is a symlink ``tls.crt`` → ``..data/tls.crt``;
4. remove the previous timestamped directory.

A reader that opens ``tls.crt`` sees either the whole old payload or the whole new one; the path
and its own mtime never change.
"""

from __future__ import annotations

import datetime as dt
import os
import shutil
from pathlib import Path


class SecretVolume:
    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.generations = 0

    def path(self, name: str) -> Path:
        return self.root / name

    def publish(self, payload: dict[str, bytes]) -> None:
        data = self.root / "..data"
        previous = os.readlink(data) if data.is_symlink() else None
        stamp = dt.datetime.now(dt.UTC).strftime("%Y_%m_%d_%H_%M_%S.%f")
        generation = self.root / f"..{stamp}{self.generations:03d}"
        self.generations += 1
        generation.mkdir(mode=0o755)
        for name, content in payload.items():
            (generation / name).write_bytes(content)
            os.chmod(generation / name, 0o600 if name.endswith(".key") else 0o644)
        tmp = self.root / "..data_tmp"
        os.symlink(generation.name, tmp)
        os.rename(tmp, data)
        for name in payload:
            visible = self.root / name
            if not visible.is_symlink():
                os.symlink(f"..data/{name}", visible)
        if previous is not None:
            shutil.rmtree(self.root / previous)
