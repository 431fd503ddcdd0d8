"""Build hook: setuptools needs `cffi_modules` here to compile native/ at install time."""

from setuptools import setup

setup(cffi_modules=["native/build_native.py:ffibuilder", "native/build_native.py:genbuilder"])
