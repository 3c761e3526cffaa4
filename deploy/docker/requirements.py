"""Print labelq's requirements from pyproject.toml (with the extras named as arguments), one a
line. deploy/docker/lock.sh writes them to requirements-api.txt and requirements-worker-cpu.txt,
which the images install in a layer of their own before the source is copied: a change to the
code, or to pyproject's other parts, rebuilds only the last small layer (tests/test_deploy.py
checks the files against pyproject)."""

import sys
import tomllib

with open("pyproject.toml", "rb") as f:
    project = tomllib.load(f)["project"]
wanted = list(project["dependencies"])
for extra in sys.argv[1:]:
    wanted += project["optional-dependencies"][extra]
print("\n".join(wanted))
