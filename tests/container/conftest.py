"""The container tests run the image built from ./Dockerfile in real containers (podman).

scripts/container-test.sh builds the image, sets PROXY_CONTAINER_IMAGE and runs them; it is
the last step of .ci/run. A plain ``python -m pytest`` (PROXY_CONTAINER_IMAGE unset) skips the
tests that need the image: building images is the script's job, not the unit suite's. Once
PROXY_CONTAINER_IMAGE is set nothing skips: a missing image, podman or nginx fails the test,
and the script fails the run if any container test was skipped all the same.
The tests of the deployment files (test_manifests.py) need no image and always run.
"""

from __future__ import annotations

import shutil
import subprocess

import pytest

from tests.container.engine import IMAGE, PODMAN


@pytest.fixture(scope="session")
def image() -> str:
    if not IMAGE:
        pytest.skip("needs the image: scripts/container-test.sh builds it and runs these tests")
    if shutil.which(PODMAN[0]) is None:
        pytest.fail(f"{PODMAN[0]} is not installed: scripts/container-test.sh installs it")
    if subprocess.run([*PODMAN, "image", "exists", IMAGE], check=False).returncode != 0:
        pytest.fail(f"PROXY_CONTAINER_IMAGE={IMAGE} does not exist: build it first")
    return IMAGE
