"""Write the JSON Schema of every registry document (and of the CLI's --json envelope) into schemas/json/.

    python -m memreg.schemas.generate          # rewrite the files
    python -m memreg.schemas.generate --check  # exit 1 if they drifted from the models
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from memreg.schemas.cli import CliOutput
from memreg.schemas.router import RouterConfig
from memreg.schemas.signature import SignatureRecord
from memreg.schemas.v1 import Catalog, Lease, Manifest, NameIndex, PackageCard, RegistryMarker, TagPointer, YankRecord

DOCUMENTS = {"manifest": Manifest, "package-card": PackageCard, "tag": TagPointer, "yank": YankRecord, "name-index": NameIndex,
             "signature": SignatureRecord, "registry-marker": RegistryMarker, "catalog": Catalog, "lease": Lease,
             "cli-output": CliOutput, "router-config": RouterConfig}
OUT = Path(__file__).resolve().parent / "json"


def render() -> dict[str, str]:
    out = {}
    for name, model in DOCUMENTS.items():
        schema = model.model_json_schema()
        schema["$id"] = f"https://memreg.dev/schemas/v1/{name}.schema.json"
        out[f"{name}.schema.json"] = json.dumps(schema, indent=2, sort_keys=True) + "\n"
    return out


def main(argv: list[str]) -> int:
    rendered = render()
    if "--check" in argv:
        stale = [n for n, text in rendered.items() if not (OUT / n).exists() or (OUT / n).read_text() != text]
        for n in stale:
            print(f"stale: schemas/json/{n} (run python -m memreg.schemas.generate)")
        return 1 if stale else 0
    OUT.mkdir(exist_ok=True)
    for n, text in rendered.items():
        (OUT / n).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
