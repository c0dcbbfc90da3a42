#!/usr/bin/env bash
# Installs the system packages pregate's default build needs (OpenBLAS for the CPU GEMM through cgo),
# when they are missing. Debian/Ubuntu; elsewhere, install OpenBLAS by hand or build with CGO_ENABLED=0.
set -euo pipefail
if [ -e /usr/include/x86_64-linux-gnu/cblas.h ] || [ -e /usr/include/cblas.h ] || [ -e /usr/include/openblas/cblas.h ]; then
	if ldconfig -p 2>/dev/null | grep -q libopenblas; then
		exit 0
	fi
fi
SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO=sudo; fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq libopenblas-dev >/dev/null
