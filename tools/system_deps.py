"""Install the system tools the sidecar tests drive, when this machine lets us.

The network-namespace tests (tests/sidecar, tests/test_iptables.py) need ``ip`` (iproute2),
``iptables-restore`` (iptables) and ``setpriv`` (util-linux); the HTTP/2 client tests
``curl`` and ``h2load`` (nghttp2-client); with ``--bench``, the benchmarks' ``nginx`` and
``wrk`` too (``nox -s bench``). Run by ``nox -s tests`` before pytest: as root with apt-get
(CI, a Debian container) the missing packages are installed; otherwise it says what is
missing and the tests that need it skip with that reason.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

NEEDED = {
    "ip": "iproute2",
    "iptables-restore": "iptables",
    "setpriv": "util-linux",
    "curl": "curl",
    "h2load": "nghttp2-client",
}
BENCH = {"nginx": "nginx", "wrk": "wrk"}


def main(argv: list[str]) -> int:
    needed = {**NEEDED, **BENCH} if "--bench" in argv else NEEDED
    missing = sorted({pkg for tool, pkg in needed.items() if shutil.which(tool) is None})
    if not missing:
        return 0
    apt = shutil.which("apt-get")
    if sys.platform != "linux" or apt is None or os.geteuid() != 0:
        print(
            f"system_deps: not installing {', '.join(missing)} (needs root and apt-get);"
            " the network-namespace tests will skip",
            file=sys.stderr,
        )
        return 0
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = [apt, "install", "-y", "-q", "--no-install-recommends", *missing]
    print(f"system_deps: apt-get install {' '.join(missing)}", file=sys.stderr)
    if subprocess.run(install, env=env, stdin=subprocess.DEVNULL).returncode != 0:
        subprocess.run([apt, "update", "-q"], env=env, stdin=subprocess.DEVNULL)
        if subprocess.run(install, env=env, stdin=subprocess.DEVNULL).returncode != 0:
            print(f"system_deps: could not install {', '.join(missing)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
