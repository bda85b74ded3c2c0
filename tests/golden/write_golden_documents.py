"""Writes golden copies of the registry documents that tests/golden/format1/ lacks (package index,
catalog, lease, signature, registry marker) by running memreg itself on a copy of the golden format-1
registry: `list` writes the index and the catalog, signing law@0.2.0 with a fresh P-256 key writes a
signature, a publish's lease is copied while it is held, `init` writes a marker.

Each run is a new golden set, a folder that did not exist (a set is never rewritten: the files are
what memreg wrote at the time, and later versions of memreg must keep reading them):

    python tests/golden/write_golden_documents.py tests/golden/<new set>
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
FORMAT1 = HERE / "format1" / "registry"


def main(out: Path) -> None:
    from cryptography.hazmat.primitives import serialization as ser
    from cryptography.hazmat.primitives.asymmetric import ec

    from memreg.registry import signing
    from memreg.registry.api import Registry
    from memreg.registry.publishing import _lease

    if out.exists():
        sys.exit(f"{out} exists: a golden set is never rewritten; name a new folder")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        os.environ["MEMREG_HOME"] = str(root / "home")
        shutil.copytree(FORMAT1, root / "registry")
        (root / "registry" / "memreg-registry.json").unlink()
        registry = Registry.init(str(root / "registry"))  # a marker as this memreg writes it
        registry.list(all_versions=True)  # no index yet: it is rebuilt from the manifests
        registry.list(all_versions=True)  # the catalog misses the index just written: it is copied in
        key = ec.generate_private_key(ec.SECP256R1())
        pem = root / "key.pem"
        pem.write_bytes(key.private_bytes(ser.Encoding.PEM, ser.PrivateFormat.PKCS8, ser.NoEncryption()))
        signing.sign(registry, registry.resolve("law@0.2.0"), pem)
        with _lease(registry.store, list(registry.resolve("law@0.2.0").model.files)):
            leases = registry.store.list("leases")
            copies = {k: registry.store.read(k) for k in leases}
        written = ["memreg-registry.json", *registry.store.list("index"),
                   *registry.store.list("packages/law/signatures")]
        for k in written:
            copies[k] = registry.store.read(k)
    for k, data in copies.items():
        dest = out / "registry" / k
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(data)
    print(f"wrote {len(copies)} documents under {out}")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    main(Path(sys.argv[1]).resolve())
