#!/usr/bin/env bash
# Builds the mistnet-cloud and mistnet-edge images FROM scratch, from this repository alone (no
# image is pulled; no registry is needed). Each image holds the stripped binary, the shared
# libraries `ldd` lists for it and the dynamic loader, /etc/passwd and /etc/group with the
# unprivileged user mistnet (65532:65532) it runs as, /etc/nsswitch.conf and /tmp.
#
# Usage: deploy/docker/build.sh [debug|release|DIR] [TAG]
#   debug|release  the binaries of target/<profile>/ (default: release); build them first with
#                  `cargo build --workspace --locked [--release]`
#   DIR            a directory holding mistnet-cloud and mistnet-edge
#   TAG            image tag (default: latest): builds mistnet-cloud:TAG and mistnet-edge:TAG
# Environment: CARGO_TARGET_DIR (default: target/ of the repository), DOCKER (default: docker).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
profile=${1:-release}
tag=${2:-latest}
docker=${DOCKER:-docker}
case "$profile" in
    debug | release) bin_dir="${CARGO_TARGET_DIR:-$root/target}/$profile" ;;
    *) bin_dir=$profile ;;
esac
for tool in ldd strip; do
    command -v "$tool" >/dev/null || { echo "build.sh: $tool is needed (binutils, libc-bin)" >&2; exit 1; }
done

ctx=$(mktemp -d)
trap 'rm -rf "$ctx"' EXIT

# stage NAME: the build context of NAME's image under $ctx/NAME.
stage() {
    local name=$1 bin="$bin_dir/$1" dir="$ctx/$1"
    [[ -x "$bin" ]] || { echo "build.sh: $bin is missing: run cargo build --workspace --locked${profile/debug/}" >&2; exit 1; }
    mkdir -p "$dir/rootfs/usr/local/bin" "$dir/rootfs/etc" "$dir/rootfs/tmp" "$dir/state"
    chmod 1777 "$dir/rootfs/tmp"
    strip --strip-all -o "$dir/rootfs/usr/local/bin/$name" "$bin"
    # Every library ldd resolves ("libc.so.6 => /lib/.../libc.so.6 (0x...)") and the loader (an
    # absolute path with no "=>"), copied to the same path, symlinks followed.
    local libs
    libs=$(ldd "$bin" | awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\// { print $1 }')
    [[ -n "$libs" ]] || { echo "build.sh: ldd found no libraries for $bin (a static binary needs none: fine)" >&2; }
    for lib in $libs; do
        mkdir -p "$dir/rootfs$(dirname "$lib")"
        cp -L "$lib" "$dir/rootfs$lib"
    done
    printf 'root:x:0:0:root:/root:/sbin/nologin\nmistnet:x:65532:65532:mistnet:/var/lib/mistnet:/sbin/nologin\n' >"$dir/rootfs/etc/passwd"
    printf 'root:x:0:\nmistnet:x:65532:\n' >"$dir/rootfs/etc/group"
    printf 'hosts: files dns\n' >"$dir/rootfs/etc/nsswitch.conf"
    cp "$here/Dockerfile.${name#mistnet-}" "$dir/Dockerfile"
}

for name in mistnet-cloud mistnet-edge; do
    stage "$name"
    # The legacy builder: FROM scratch needs no pull (and no buildx).
    DOCKER_BUILDKIT=0 "$docker" build --quiet --tag "$name:$tag" "$ctx/$name" >/dev/null
    size=$("$docker" image inspect --format '{{.Size}}' "$name:$tag")
    echo "built $name:$tag ($((size / 1000000)) MB, from $bin_dir/$name)"
done
