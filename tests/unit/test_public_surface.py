"""The public surface: what ``x402_meter`` exports imports, and every exception the package
defines lives in ``x402_meter.errors`` (the paying client's beside the client, in
``x402_meter.client._exceptions``), in the tree the errors module's docstring draws."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import re
import subprocess
import sys
from types import ModuleType

import pytest

import x402_meter
import x402_meter.client
from x402_meter import errors
from x402_meter.client import _exceptions as client_errors

_NOT_IMPORTED = frozenset({"x402_meter.__main__"})  # runs the command line when imported
_ERROR_MODULES = (errors, client_errors)
_TREE_LINE = re.compile(r"^(?P<indent>[ │├└─]*?)(?P<name>[A-Z]\w+)\b")


def _package_modules() -> list[ModuleType]:
    modules: list[ModuleType] = [x402_meter]
    for info in pkgutil.walk_packages(x402_meter.__path__, prefix="x402_meter."):
        if info.name not in _NOT_IMPORTED:
            modules.append(importlib.import_module(info.name))
    return modules


def _exceptions_defined_in(module: ModuleType) -> list[type[BaseException]]:
    return [
        value
        for value in vars(module).values()
        if inspect.isclass(value)
        and issubclass(value, BaseException)
        and value.__module__ == module.__name__
    ]


def _drawn_tree() -> dict[str, str | None]:
    """Each class the docstring's tree names, and the class drawn as its parent."""
    doc = errors.__doc__ or ""
    lines = doc[doc.index("X402MeterError ") :].split("\n")
    parents: dict[str, str | None] = {}
    stack: list[str] = []
    for line in lines:
        if not line.strip():
            break
        found = _TREE_LINE.match(line.removeprefix("    "))
        assert found is not None, f"not a line of the tree: {line!r}"
        depth = len(found["indent"]) // 4
        del stack[depth:]
        parents[found["name"]] = stack[-1] if stack else None
        stack.append(found["name"])
    return parents


@pytest.mark.parametrize(
    "module", [x402_meter, x402_meter.client, errors], ids=lambda m: m.__name__
)
def test_every_exported_name_imports(module: ModuleType) -> None:
    missing = [name for name in module.__all__ if not hasattr(module, name)]
    assert missing == []
    for name in module.__all__:
        exec(f"from {module.__name__} import {name}", {})  # noqa: S102 - the user's own line


def test_every_exception_the_package_defines_is_in_the_errors_module() -> None:
    defined = {cls for module in _package_modules() for cls in _exceptions_defined_in(module)}
    elsewhere = sorted(f"{cls.__module__}.{cls.__qualname__}" for cls in defined)
    homes = tuple(f"{module.__name__}." for module in _ERROR_MODULES)
    elsewhere = [name for name in elsewhere if not name.startswith(homes)]
    assert elsewhere == []


def test_every_exception_in_the_errors_module_is_ours_and_exported() -> None:
    for module in _ERROR_MODULES:
        for cls in _exceptions_defined_in(module):
            assert issubclass(cls, errors.X402MeterError), cls
            assert isinstance(cls.reason, str), cls
            assert cls.reason, cls
            if not cls.__name__.startswith("_"):
                assert cls.__name__ in module.__all__, cls


def test_the_docstring_draws_the_tree_as_it_is() -> None:
    drawn = _drawn_tree()
    public = {
        cls.__name__: cls for module in _ERROR_MODULES for cls in _exceptions_defined_in(module)
    }
    public = {name: cls for name, cls in public.items() if not name.startswith("_")}
    assert set(drawn) == set(public)
    for name, parent in drawn.items():
        ours = [base for base in public[name].__mro__[1:] if base.__name__ in public]
        assert (ours[0].__name__ if ours else None) == parent, name


def test_the_public_surface_raises_only_what_x402_meter_exports() -> None:
    """Every public exception can be caught through ``from x402_meter import ...``, or
    through ``x402_meter.errors`` for the facilitator server's and the local stack's."""
    exported = {getattr(x402_meter, name) for name in x402_meter.__all__}
    for name in ("StreamCapped", "TokenizerUnavailableError"):
        assert getattr(errors, name) in exported
    for name in client_errors.__all__:
        assert getattr(client_errors, name) in exported
        assert getattr(x402_meter.client, name) is getattr(client_errors, name)


def test_a_server_importing_x402_meter_does_not_import_openai() -> None:
    """The paying client's errors (``openai`` errors too) load on first use only."""
    probe = "import sys, x402_meter; print('openai' in sys.modules)"
    shown = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True
    ).stdout
    assert shown.strip() == "False"


def test_the_old_homes_of_moved_exceptions_still_import_them() -> None:
    from x402_meter.devstack.anvil import AnvilInstallError, AnvilNotFoundError
    from x402_meter.devstack.ports import PortInUseError
    from x402_meter.devstack.processes import StartupError
    from x402_meter.facilitator_access import FacilitatorAccessError
    from x402_meter.facilitator_request import MalformedRequestError
    from x402_meter.facilitator_server import FacilitatorConfigError
    from x402_meter.middleware import StreamCapped
    from x402_meter.protocol.amounts import NotCanonicalUintError
    from x402_meter.settlement import LeaseLostError

    moved = [
        AnvilInstallError,
        AnvilNotFoundError,
        PortInUseError,
        StartupError,
        FacilitatorAccessError,
        MalformedRequestError,
        FacilitatorConfigError,
        StreamCapped,
        NotCanonicalUintError,
        LeaseLostError,
    ]
    assert all(getattr(errors, cls.__name__) is cls for cls in moved)
    # still what callers caught before the move
    assert issubclass(StreamCapped, OSError)
    assert issubclass(PortInUseError, OSError)
    assert issubclass(AnvilNotFoundError, FileNotFoundError)
    assert issubclass(MalformedRequestError, ValueError)
    assert issubclass(NotCanonicalUintError, ValueError)
    assert issubclass(FacilitatorConfigError, ValueError)
    assert issubclass(FacilitatorAccessError, ValueError)
    assert issubclass(StartupError, RuntimeError)
