"""The layering of the packages (README "Layout"), read from the source with `ast`.

pretext/ and finetune/ import ssl_aver, never each other; ssl_aver outside its app layer
(ssl_aver.app: the CLI, the demo, the bench; and ssl_aver.__main__) imports neither; nothing below the app layer
imports it. Imports inside functions and under `if TYPE_CHECKING` count, and so does a
registry string that names a module ("finetune.run", "pretext.build:build"), since
registries import by name.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
APP = "ssl_aver.app"
#: layer -> module prefixes it must not reach
FORBIDDEN: dict[str, tuple[str, ...]] = {
    "ssl_aver": ("pretext", "finetune", APP),
    "pretext": ("finetune", APP),
    "finetune": ("pretext", APP),
    "app": (),
}
_MODULE_STRING = re.compile(r"^(?:ssl_aver|pretext|finetune)(?:\.\w+)+(?::\w+)?$")


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_module(name: str) -> bool:
    base = ROOT.joinpath(*name.split("."))
    return base.with_suffix(".py").is_file() or (base / "__init__.py").is_file()


def _layer(module: str) -> str:
    # ssl_aver.__main__ (`python -m ssl_aver`) is the CLI's second entry point: app layer
    return "app" if module in (APP, "ssl_aver.__main__") or module.startswith(APP + ".") else module.split(".")[0]


def imported_names(source: str, module: str, is_package: bool = False) -> list[tuple[int, str]]:
    """(line, dotted name) of everything a module imports or names in a registry string."""
    package = module if is_package else module.rpartition(".")[0]
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(source, filename=module)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*parent, *([node.module] if node.module else [])])
            found.append((node.lineno, base))
            found += [(node.lineno, f"{base}.{alias.name}") for alias in node.names]
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and _MODULE_STRING.match(node.value):
            name = node.value.partition(":")[0]
            if _is_module(name):
                found.append((node.lineno, name))
    return found


def layering_violations() -> list[str]:
    """One line per import that reaches a layer its module must not reach."""
    problems: dict[str, str] = {}
    for top in ("ssl_aver", "pretext", "finetune"):
        for path in sorted((ROOT / top).rglob("*.py")):
            module = _module_name(path)
            forbidden = FORBIDDEN[_layer(module)]
            for line, name in imported_names(path.read_text(encoding="utf-8"), module, path.name == "__init__.py"):
                if any(name == p or name.startswith(p + ".") for p in forbidden):
                    where = f"{path.relative_to(ROOT)}:{line}"
                    problems.setdefault(where, f"{where}: {module} ({_layer(module)}) reaches {name} ({_layer(name)})")
    return list(problems.values())


def test_no_module_reaches_a_layer_it_must_not() -> None:
    problems = layering_violations()
    assert not problems, "layering violations:\n" + "\n".join(problems)


def test_the_checker_sees_lazy_relative_and_registry_imports() -> None:
    source = (
        "def f():\n"
        "    from finetune.run import finetune\n"
        "    import pretext.build\n"
        "if TYPE_CHECKING:\n"
        "    from ..app.demo import DemoContext\n"
        "from ssl_aver import app\n"
        "STAGES = ['pretext.build:build', 'finetune.overrides']\n"
    )
    names = {name for _, name in imported_names(source, "ssl_aver.features.probe")}
    assert {"finetune.run", "pretext.build", "ssl_aver.app", "ssl_aver.app.demo"} <= names
    assert "finetune.overrides" not in names  # a config key, not a module
