# PyInstaller hook for pjsua2-python (2.15.1.post1), used when the spec is run with
# SIP4AI_WITH_PJSUA2=1.
#
# pjsua2/__init__.py imports its SWIG module lazily (PEP 562 __getattr__ +
# importlib.import_module(".pjsua2")), so PyInstaller's analysis never sees pjsua2.pjsua2 nor
# the extension pjsua2/_pjsua2*.so; the frozen app would fail with "PJSUA2 binary bindings are
# not staged". collect_dynamic_libs() takes the extension; PyInstaller's ELF scan then follows
# its RPATH ($ORIGIN/../pjsua2_python.libs) and bundles the OpenSSL 1.0.2k and krb5 libraries
# from pjsua2_python.libs/. __init__ also loads that libcrypto by path (to call
# OpenSSL_add_all_digests), from pjsua2/ or ../pjsua2_python.libs/, so the libraries are
# collected into pjsua2_python.libs/ explicitly as well.
import os

from PyInstaller.utils.hooks import (  # type: ignore[import-untyped]  # no stubs
    collect_dynamic_libs,
    collect_submodules,
    get_package_paths,
)


hiddenimports = collect_submodules("pjsua2")
binaries = collect_dynamic_libs("pjsua2")

_site, _package = get_package_paths("pjsua2")
_libs = os.path.join(_site, "pjsua2_python.libs")
if os.path.isdir(_libs):
    binaries += [(os.path.join(_libs, name), "pjsua2_python.libs") for name in os.listdir(_libs)]
