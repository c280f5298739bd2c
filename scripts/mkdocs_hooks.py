"""MkDocs hooks (mkdocs.yml): the reference page is generated from the schemas and configs at every
build, so it cannot drift from the code; the benchmark pictures the pages show are taken from
results/benchmarks/ as they are, not copied into docs/."""

from __future__ import annotations

import re
from pathlib import Path

from mkdocs.structure.files import File

PICTURE = re.compile(r"\]\((results/benchmarks/[^)\s]+\.png)\)")


def on_files(files, config):
    from lifted_cli.reference import markdown

    files.append(File.generated(config, "reference.md", content=markdown()))
    docs = Path(config["docs_dir"])
    root = docs.parent
    shown = sorted({m for page in docs.glob("*.md") for m in PICTURE.findall(page.read_text())})
    for rel in shown:
        if (root / rel).is_file():  # a missing picture stays a broken link, which --strict reports
            files.append(File(rel, src_dir=str(root), dest_dir=config["site_dir"],
                              use_directory_urls=config["use_directory_urls"]))
    return files
