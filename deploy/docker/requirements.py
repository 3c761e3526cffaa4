"""Print labelq's requirements from pyproject.toml (with the extras named as arguments), one a
line: the images install them in a layer of their own, before the source is copied, so a change
to the code rebuilds only the last small layer."""

import sys
import tomllib

with open("pyproject.toml", "rb") as f:
    project = tomllib.load(f)["project"]
wanted = list(project["dependencies"])
for extra in sys.argv[1:]:
    wanted += project["optional-dependencies"][extra]
print("\n".join(wanted))
