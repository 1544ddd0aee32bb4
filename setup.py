"""Builds native/_speedups with Cython when a compiler is there; the pure-Python twin serves otherwise."""

from setuptools import Extension, setup

try:
    from Cython.Build import cythonize
except ImportError:  # building without Cython: no extension, native/ falls back to its twins
    extensions = []
else:
    extensions = cythonize(
        [Extension("native._speedups", ["native/_speedups.pyx"], optional=True)],
        compiler_directives={"language_level": "3"},
        quiet=True,
    )

setup(ext_modules=extensions)
