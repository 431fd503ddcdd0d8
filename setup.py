"""Build hook: setuptools needs `cffi_modules` here to compile native/ at install time."""

from setuptools import setup

setup(
    cffi_modules=["native/build_native.py:ffibuilder", "native/build_native.py:genbuilder"],
    # Both extensions use only the stable ABI (cffi's py_limited_api): one wheel
    # serves CPython 3.11 and every later release, and its tag says so (cp311-abi3).
    options={"bdist_wheel": {"py_limited_api": "cp311"}},
)
