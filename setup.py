"""Ships ``vllm_depth_alias.pth`` (see ``_vllm_depth_alias.py``) at the site-packages root."""

import os

from setuptools import setup
from setuptools.command.build_py import build_py

PTH = "vllm_depth_alias.pth"


class BuildPyWithPth(build_py):
    def run(self):
        super().run()
        self.copy_file(PTH, os.path.join(self.build_lib, PTH))

    def get_outputs(self, include_bytecode=True):
        return super().get_outputs(include_bytecode) + [os.path.join(self.build_lib, PTH)]


setup(cmdclass={"build_py": BuildPyWithPth})
