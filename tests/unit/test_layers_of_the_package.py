"""The architecture a test can enforce: the data layer and the engines boundary import no
framework, and the modules that moved keep their old names for one release."""

import subprocess
import sys

import pytest

FRAMEWORKS = ("keras", "tensorflow", "horovod", "jax", "torch")


@pytest.mark.parametrize("package", ["distributed_h5.data", "distributed_h5.engines"])
def test_a_layer_imports_no_framework(package):
    modules = {"distributed_h5.data": ["sharding", "dataset", "reader", "augment", "synthetic", "convert", "outputs",
                                       "checks", "jpeg"],
               "distributed_h5.engines": ["collective", "launcher", "horovod", "jax"]}[package]
    code = (f"import sys\nimport {', '.join(f'{package}.{m}' for m in modules)}\n"
            f"print(sorted({{name.split('.')[0] for name in sys.modules}} & set({FRAMEWORKS!r})))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert result.stdout.strip() == "[]"


def test_the_old_module_names_are_the_moved_modules():
    import distributed_h5.data.reader
    import distributed_h5.engines.launcher
    import distributed_h5.reader
    import distributed_h5.runtime

    assert distributed_h5.reader is distributed_h5.data.reader
    assert distributed_h5.runtime is distributed_h5.engines.launcher
    from distributed_h5.jaxengine import JaxCollective
    from distributed_h5.engines.jax import JaxCollective as moved

    assert JaxCollective is moved
