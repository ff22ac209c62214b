"""Build of the C kernels of `coviar` (needs numpy's headers, hence this file)."""

import numpy
from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "coviar._kernels",
            sources=["coviar_ext/coviar/_kernels.c"],
            include_dirs=[numpy.get_include()],
            define_macros=[("NPY_NO_DEPRECATED_API", "NPY_2_0_API_VERSION")],
            extra_compile_args=["-O3", "-Wall", "-Wextra", "-std=c11"],
        )
    ]
)
