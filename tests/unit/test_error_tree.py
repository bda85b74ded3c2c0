"""One error tree (issue 13, issue 25): every exception class memreg defines lives in `memreg.core.errors`,
descends from MemregError and has a name no other memreg exception has, so a caller's
`except MemregError` catches everything memreg raises on purpose and a name means one thing; and the
packages' lazy loaders are the one helper of `memreg.core.lazy`.

The classes are found in the source (ast), not in what happens to be imported: a class defined inside
a function counts too. Re-exports (`from memreg.core.errors import X as X`) are allowed anywhere."""

from __future__ import annotations

import ast
import importlib
import inspect
import sys
from pathlib import Path

from conftest import REPO

from memreg.core import errors
from memreg.core.errors import MemregError

# source folder -> the package it is installed as (pyproject's [tool.setuptools.package-dir])
FOLDERS = {"sdk": "memreg", "registry": "memreg.registry", "cli": "memreg.cli", "schemas": "memreg.schemas",
           "core": "memreg.core"}
ERRORS_FILE = REPO / "core" / "errors.py"
# The composition error that shared its name with the registry's DigestMismatchError (a blob whose
# bytes do not hash to their digest) is ManifestDigestChangedError; its old name stays importable from
# memreg.compose, as an alias (never a class of its own).
ALIASES = {"memreg.compose.assemble.DigestMismatchError": "ManifestDigestChangedError",
           "memreg.compose.DigestMismatchError": "ManifestDigestChangedError"}


def _sources() -> list[tuple[Path, str]]:
    """(file, module name) of every module of the memreg distribution."""
    out = []
    for folder, package in FOLDERS.items():
        for path in sorted((REPO / folder).rglob("*.py")):
            parts = path.relative_to(REPO / folder).with_suffix("").parts
            parts = parts[:-1] if parts[-1] == "__init__" else parts
            out.append((path, ".".join([package, *parts])))
    return out


def _looks_like_exception(node: ast.ClassDef, module: object) -> bool:
    """An exception class: its module-level object is one, or (nested, not importable) a base says so."""
    obj = getattr(module, node.name, None)
    if inspect.isclass(obj) and obj.__module__ == module.__name__:
        return issubclass(obj, BaseException)
    return any(word in ast.unparse(base) for base in node.bases for word in ("Error", "Exception", "Warning"))


def test_every_exception_class_is_defined_in_the_errors_module():
    found, outside = 0, []
    for path, name in _sources():
        if path.name == "__main__.py":  # runs the CLI on import
            continue
        module = importlib.import_module(name)
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.ClassDef) or not _looks_like_exception(node, module):
                continue
            found += 1
            # a private signal caught where it is raised (datastore's _StopForward) is control flow,
            # never seen by a caller: not an error of the tree
            if path != ERRORS_FILE and not node.name.startswith("_"):
                outside.append(f"{path.relative_to(REPO)}:{node.lineno} {node.name}")
    assert found > 40  # the walk found the modules
    assert outside == [], "define these in core/errors.py and re-export them where they were"


def test_the_tree_has_one_root_and_one_class_per_name():
    tree = ast.parse(ERRORS_FILE.read_text())
    names = [n.name for n in tree.body if isinstance(n, ast.ClassDef)]
    assert len(names) == len(set(names)) > 40
    classes = [getattr(errors, n) for n in names]
    assert [c.__name__ for c in classes if not issubclass(c, MemregError)] == []
    # a re-export is the same object under the same name, wherever it is imported from
    by_name: dict[str, set[type]] = {}
    for _, name in _sources():
        if name.endswith("__main__"):
            continue
        for attr, obj in vars(importlib.import_module(name)).items():
            if inspect.isclass(obj) and issubclass(obj, BaseException) and obj.__module__.startswith("memreg"):
                by_name.setdefault(obj.__name__, set()).add(obj)
                if attr != obj.__name__ and not attr.startswith("_"):
                    assert ALIASES.get(f"{name}.{attr}") == obj.__name__, f"{name}.{attr} renames {obj.__name__}"
    assert {n: sorted(c.__module__ for c in cs) for n, cs in by_name.items() if len(cs) > 1} == {}


def test_old_import_paths_give_the_same_classes():
    from memreg.registry.errors import DigestMismatchError, PackageError
    from memreg.schemas.errors import MemregError as SchemasRoot
    from memreg.train.errors import CorpusError

    assert SchemasRoot is MemregError and DigestMismatchError is errors.DigestMismatchError
    assert PackageError is errors.PackageError and CorpusError is errors.CorpusError


def test_the_two_digest_errors_are_two_names():
    import memreg.compose
    from memreg.compose import DigestMismatchError as OldCompositionName
    from memreg.registry.errors import DigestMismatchError

    assert OldCompositionName is memreg.compose.ManifestDigestChangedError is errors.ManifestDigestChangedError
    assert OldCompositionName is not DigestMismatchError and not issubclass(OldCompositionName, DigestMismatchError)


def test_formerly_outside_errors_keep_their_builtin_base():
    from memreg.mixture import InvalidWeightsError, check_weights
    from memreg.schemas import UnsupportedFormatError

    assert issubclass(UnsupportedFormatError, ValueError) and issubclass(InvalidWeightsError, ValueError)
    try:
        check_weights([0.7, 0.6])
    except MemregError as e:
        assert isinstance(e, InvalidWeightsError) and "sum to" in str(e)
    else:
        raise AssertionError("weights summing past 1 were accepted")


def test_every_lazy_package_uses_the_one_loader():
    lazy, copies = [], []
    for path, name in _sources():
        if path.name != "__init__.py":
            continue
        tree = ast.parse(path.read_text())
        assigned = {t.id for n in ast.walk(tree) if isinstance(n, ast.Assign | ast.AnnAssign)
                    for t in (n.targets if isinstance(n, ast.Assign) else [n.target]) if isinstance(t, ast.Name)}
        if "_LAZY" not in assigned:
            continue
        lazy.append(name)
        uses_helper = any(isinstance(n, ast.ImportFrom) and n.module == "memreg.core.lazy" for n in ast.walk(tree))
        own_loader = any(isinstance(n, ast.FunctionDef) and n.name == "__getattr__" for n in ast.walk(tree))
        if not uses_helper or own_loader:
            copies.append(name)
    assert {"memreg", "memreg.registry", "memreg.train", "memreg.compose"} <= set(lazy)
    assert copies == [], "serve the lazy names with memreg.core.lazy (module_getattr or make_callable)"


def test_the_core_layer_imports_only_the_standard_library():
    """core/ is the bottom layer the registry CLI loads, so importing it must stay light: its modules import
    the standard library only (fsutil imports fsspec inside the one function that moves bytes)."""
    foreign = []
    for path in sorted((REPO / "core").glob("*.py")):
        for node in ast.parse(path.read_text()).body:  # module level: what `import memreg.core.x` runs
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module] if isinstance(node, ast.ImportFrom) and node.module and node.level == 0 else [])
            foreign += [f"{path.name}: {n}" for n in names
                        if n.split(".")[0] not in sys.stdlib_module_names and not n.startswith("memreg.core")]
    assert foreign == []
