"""The project is configured in pyproject.toml; this file only mends editable installs.

``pip install -e .`` (PEP 660) skips ``[tool.setuptools.data-files]``: setuptools'
``editable_wheel`` asks the distribution for ``has_data()``, but the method is
``has_data_files()`` (pypa/setuptools#3399). The JupyterLab panel's prebuilt frontend and the
config that enables its server extension are data files, so without this an editable install
would not show the panel. tests/test_lab_build.py checks that the files get installed.
"""

from setuptools import setup
from setuptools.command.editable_wheel import editable_wheel


class EditableWheelWithData(editable_wheel):
    """Also install data files into the editable wheel, as a regular wheel has them."""

    def _run_install(self, category: str) -> None:
        if category == "data" and self.distribution.has_data_files():
            self.run_command("install_data")
            return
        super()._run_install(category)


setup(cmdclass={"editable_wheel": EditableWheelWithData})
