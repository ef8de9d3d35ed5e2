"""Print the path of a Python >= 3.12 on this machine (for the functioncalming client's venv),
or nothing when there is none: on PATH as python3.13 / python3.12, or among pyenv's versions.

    make clients        # runs this, then makes .venv-clients with it
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import sys

CHECK = "import sys; sys.exit(sys.version_info < (3, 12))"


def candidates() -> list[str]:
    found = [shutil.which(name) for name in ("python3.13", "python3.12")]
    root = os.environ.get("PYENV_ROOT", os.path.expanduser("~/.pyenv"))
    found += sorted(glob.glob(os.path.join(root, "versions", "3.1[2-9]*", "bin", "python3")),
                    reverse=True)
    return [path for path in found if path]


def main() -> None:
    for path in candidates():
        try:  # pyenv's shims exist on PATH but fail for a version that is not selected
            if subprocess.run([path, "-c", CHECK], capture_output=True, timeout=30).returncode == 0:
                print(path)
                return
        except (OSError, subprocess.TimeoutExpired):
            continue
    print("no Python >= 3.12 found: the functioncalming client test will be skipped",
          file=sys.stderr)


if __name__ == "__main__":
    main()
