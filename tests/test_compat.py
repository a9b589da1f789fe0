"""d3codec 0.1's module paths keep working for one release (d3codec._compat, CHANGELOG.md)."""

import importlib
import warnings

import pytest

import d3codec
from d3codec._compat import MOVED


@pytest.mark.parametrize("old", sorted(MOVED))
def test_an_old_module_path_gives_its_new_module_with_a_warning(old):
    home = MOVED[old]
    with pytest.warns(DeprecationWarning, match="has moved to"):
        importlib.invalidate_caches()
        import sys

        sys.modules.pop(old, None)
        module = importlib.import_module(old)
    if isinstance(home, str):
        new = importlib.import_module(home)
        assert module is new and new.__spec__.name == home  # the same object; its own spec kept
    else:
        assert module.__name__ == old


def test_old_attributes_of_the_package_and_from_imports_resolve():
    from d3codec.format import limits

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        assert d3codec.limits is limits
        from d3codec.container import D3Reader  # noqa: F401 - the 0.1 spelling of a public name
    assert D3Reader is d3codec.D3Reader
    with pytest.raises(AttributeError, match="no attribute 'nonesuch'"):
        d3codec.nonesuch  # noqa: B018


def test_a_scripts_old_import_shows_its_warning_under_pythons_default_filters():
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", "import d3codec.container"], capture_output=True, text=True)
    assert done.returncode == 0 and "d3codec.container has moved to d3codec.format.container" in done.stderr
    assert done.stderr.startswith("<string>:1: DeprecationWarning")  # attributed to the importing line
