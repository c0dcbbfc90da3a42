#!/usr/bin/env bash
# The CUDA toolchain the cuda build needs, from Debian bookworm's non-free packages, without a CUDA
# install and without touching the system's apt sources:
#
#   nvidia-cuda-dev      cuda.h and the rest of /usr/include (nvcc's headers), the stub libcuda.so
#   nvidia-cuda-toolkit  nvcc, ptxas, cicc (nvcc's device front end), libdevice.10.bc
#   libnvvm4             libnvvm.so.4 (cicc links it)
#
# A private apt configuration (its own sources list with bookworm's contrib + non-free, its own lists
# and cache under the cache dir) fetches the three .debs, `apt-get download` checks them against the
# signed index, and only the files named above are extracted (nvidia-cuda-dev is a 774 MB .deb: about
# 30 s to decompress). The .debs are deleted afterwards; the extracted tree is ~110 MB.
#
# The cache ($PREGATE_CUDA_CACHE, default ~/.cache/pregate-cuda) is reused when present: a second run
# only prints the environment. Delete it to fetch again.
#
# Usage:
#   eval "$(scripts/cuda-toolchain.sh)"     # fetch if needed, then export CGO_CFLAGS, CGO_LDFLAGS, PATH
#   scripts/cuda-toolchain.sh env           # the same lines, to read
#   scripts/cuda-toolchain.sh check         # exit 0 when the cache is complete, 1 otherwise (no network)
#
# The environment:
#   CGO_CFLAGS=-I$CACHE/usr/include                       cuda.h
#   CGO_LDFLAGS=-L$CACHE/usr/lib/x86_64-linux-gnu/stubs   the stub libcuda.so (links; never loaded:
#                                                         its soname is libcuda.so.1, the driver's)
#   PATH=$CACHE/usr/bin:$PATH                             nvcc, ptxas
#   PREGATE_NVCC_FLAGS=-allow-unsupported-compiler        nvcc 11.8 refuses gcc 12 (bookworm's) by
#                                                         version; PTX-only output does not depend on
#                                                         the host compiler's code generation
# Progress goes to stderr; only the environment lines go to stdout.
set -euo pipefail

CACHE=${PREGATE_CUDA_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/pregate-cuda}
SUITE=${PREGATE_CUDA_SUITE:-bookworm}
MIRROR=${PREGATE_CUDA_MIRROR:-http://deb.debian.org/debian}
PACKAGES=(nvidia-cuda-dev nvidia-cuda-toolkit libnvvm4)
# The marker written last, so an interrupted fetch is redone rather than half-used.
READY=$CACHE/.ready
ARCH_LIB=usr/lib/x86_64-linux-gnu

log() { echo "cuda-toolchain: $*" >&2; }

print_env() {
	cat <<EOF
export PREGATE_CUDA_CACHE='$CACHE'
export CGO_CFLAGS='-I$CACHE/usr/include'
export CGO_LDFLAGS='-L$CACHE/$ARCH_LIB/stubs'
export PATH='$CACHE/usr/bin':"\$PATH"
export PREGATE_NVCC_FLAGS='-allow-unsupported-compiler'
EOF
}

fetch() {
	command -v apt-get >/dev/null || { log "apt-get is needed (a Debian or Ubuntu host)"; exit 1; }
	command -v dpkg-deb >/dev/null || { log "dpkg-deb is needed"; exit 1; }
	local keyring=/usr/share/keyrings/debian-archive-keyring.gpg
	[ -r "$keyring" ] || { log "$keyring is missing: apt-get install debian-archive-keyring"; exit 1; }

	if [ -e "$CACHE" ]; then
		log "$CACHE exists but is not a complete toolchain (no .ready): remove it and run again"
		exit 1
	fi
	# Built beside the cache and renamed into place when complete.
	local root=$CACHE.partial
	local apt=$root/apt
	rm -rf "$root"
	mkdir -p "$(dirname "$CACHE")"
	mkdir -p "$apt/lists/partial" "$apt/cache/archives/partial" "$apt/sources.list.d" "$apt/debs"
	echo "deb [signed-by=$keyring] $MIRROR $SUITE contrib non-free" >"$apt/sources.list"
	local opts=(
		-o "Dir::Etc::SourceList=$apt/sources.list"
		-o "Dir::Etc::SourceParts=$apt/sources.list.d"
		-o "Dir::State::Lists=$apt/lists"
		-o "Dir::Cache=$apt/cache"
		-o "APT::Sandbox::User=root"
		-q
	)
	log "fetching the $SUITE contrib/non-free index into $apt"
	apt-get "${opts[@]}" update >&2
	log "downloading ${PACKAGES[*]}"
	(cd "$apt/debs" && apt-get "${opts[@]}" download "${PACKAGES[@]}" >&2)

	deb() { ls "$apt/debs/$1"_*.deb; }
	log "extracting (nvidia-cuda-dev takes ~30 s to decompress)"
	# Each tar in its own process, so the two large ones decompress on two cores.
	dpkg-deb --fsys-tarfile "$(deb nvidia-cuda-dev)" |
		tar -x -C "$root" --wildcards './usr/include/*' "./$ARCH_LIB/stubs/libcuda.so" &
	local dev=$!
	dpkg-deb --fsys-tarfile "$(deb nvidia-cuda-toolkit)" |
		tar -x -C "$root" ./usr/bin/ptxas ./usr/lib/nvidia-cuda-toolkit/bin/nvcc \
			./usr/lib/nvidia-cuda-toolkit/bin/cicc ./usr/lib/nvidia-cuda-toolkit/bin/crt \
			./usr/lib/nvidia-cuda-toolkit/libdevice ./usr/include/nvvm.h &
	local tk=$!
	dpkg-deb --fsys-tarfile "$(deb libnvvm4)" | tar -x -C "$root" "./$ARCH_LIB/libnvvm.so.4.0.0"
	wait "$dev"
	wait "$tk"
	ln -sf libnvvm.so.4.0.0 "$root/$ARCH_LIB/libnvvm.so.4"

	# Debian's nvcc reads nvcc.profile beside its binary (a link to /etc/nvcc.profile, with absolute
	# /usr paths): write one relative to the cache instead. Debian's gcc/g++ wrappers in that bin/
	# look only for g++ <= 11 and are not extracted; nvcc then finds the host's gcc on PATH.
	local nvbin=$root/usr/lib/nvidia-cuda-toolkit/bin
	cat >"$nvbin/nvcc.profile" <<'EOF'
TOP = $(_HERE_)/../../..
NVVMIR_LIBRARY_DIR = $(TOP)/lib/nvidia-cuda-toolkit/libdevice
LD_LIBRARY_PATH += $(TOP)/lib/x86_64-linux-gnu:
PATH += $(_HERE_):
INCLUDES += "-I$(TOP)/include" $(_SPACE_)
LIBRARIES =+ $(_SPACE_) "-L$(TOP)/lib/x86_64-linux-gnu/stubs"
CUDAFE_FLAGS +=
PTXAS_FLAGS +=
EOF
	# A wrapper, not a link: nvcc looks for its profile beside the path it was started as.
	cat >"$root/usr/bin/nvcc" <<'EOF'
#!/bin/sh
exec "$(dirname "$(readlink -f "$0")")/../lib/nvidia-cuda-toolkit/bin/nvcc" "$@"
EOF
	chmod +x "$root/usr/bin/nvcc"
	{
		echo "suite=$SUITE"
		for p in "${PACKAGES[@]}"; do
			basename "$(deb "$p")" .deb
		done
	} >"$root/VERSIONS"
	rm -rf "$apt"
	: >"$root/.ready"
	mv "$root" "$CACHE"
	log "ready in $CACHE ($(du -sh "$CACHE" | cut -f1))"
}

case "${1:-}" in
check)
	[ -e "$READY" ]
	exit
	;;
env)
	[ -e "$READY" ] || fetch
	print_env
	;;
"")
	[ -e "$READY" ] || fetch
	print_env
	;;
*)
	echo "usage: $0 [env|check]" >&2
	exit 2
	;;
esac
