# PyInstaller hook for baresip-python (0.5.2a3).
#
# PyInstaller's import analysis misses two things in this package:
#  - baresip/__init__.py resolves Runtime, UserAgent, Call... lazily (PEP 562 __getattr__ +
#    importlib.import_module), so baresip.runtime, baresip.ua, ... are never seen;
#  - the cffi extension baresip/_native*.so needs the `_cffi_backend` module at load time.
# Without both, `import baresip` still works in the frozen app, and the first Runtime fails
# with "No module named 'baresip.runtime'" / "No module named '_cffi_backend'".
#
# collect_dynamic_libs() takes baresip/_native*.so; PyInstaller's ELF dependency scan then
# follows its RPATH ($ORIGIN/../baresip_python.libs) and bundles libssl/libcrypto 1.1.1k and
# libasound from baresip_python.libs/ (checked in tests/packaging/test_binary.py).
from PyInstaller.utils.hooks import (  # type: ignore[import-untyped]  # no stubs
    collect_dynamic_libs,
    collect_submodules,
)


hiddenimports = [*collect_submodules("baresip"), "_cffi_backend"]
binaries = collect_dynamic_libs("baresip")
