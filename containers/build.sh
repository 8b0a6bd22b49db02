#!/usr/bin/env bash
# Build oofline's container images (and Apptainer .sif files where apptainer exists).
#
#   bash containers/build.sh cpu|train [--base IMAGE] [--rootfs] [--dockerd] [--sif] [--tag TAG] [--ca-cert F]
#
#   --base IMAGE  base image passed as the BASE_IMAGE build arg
#   --rootfs      no registry reachable: make a Debian bookworm root filesystem with
#                 `debootstrap --variant=minbase`, `docker import` it as oofline-base:bookworm, build on it
#   --dockerd     no Docker daemon running: start a private one for this build (containers/dockerd.sh:
#                 no iptables, no bridge, default ulimits) and stop it afterwards; its data root is
#                 $OOFLINE_DOCKER_ROOT (default /tmp/oofline-docker), kept, so the image stays
#   --sif         also build containers/oofline-<group>.sif from containers/<group>.def (needs apptainer)
#   --tag TAG     image tag (default: latest); the image is oofline-<group>:<TAG>
#   --ca-cert F   trust this extra CA inside the image (a TLS-intercepting proxy between you and
#                 PyPI); default $OOFLINE_CA_CERT, else the CAs this machine added locally
#                 (/usr/local/share/ca-certificates/*.crt), which a stock Debian image lacks
set -euo pipefail

usage() { sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//'; exit "${1:-0}"; }

GROUP="${1:-}"
case "$GROUP" in cpu|train) shift ;; -h|--help) usage 0 ;; *) usage 1 >&2 ;; esac
BASE="" ROOTFS=0 DOCKERD=0 SIF=0 TAG=latest CA_CERT="${OOFLINE_CA_CERT:-}"
while [ $# -gt 0 ]; do
  case "$1" in
    --base) BASE="$2"; shift 2 ;;
    --rootfs) ROOTFS=1; shift ;;
    --dockerd) DOCKERD=1; shift ;;
    --sif) SIF=1; shift ;;
    --tag) TAG="$2"; shift 2 ;;
    --ca-cert) CA_CERT="$2"; shift 2 ;;
    -h|--help) usage 0 ;;
    *) echo "build.sh: unknown option $1" >&2; usage 1 >&2 ;;
  esac
done

REPO="$(cd "$(dirname "$0")/.." && pwd)"
IMAGE="oofline-$GROUP:$TAG"

debian_mirror() {  # the Debian mirror apt already uses on this machine (enabled sources only)
  local files=(/etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources)
  grep -hoE 'https?://[^[:space:]]+/debian/?([[:space:]]|$)' "${files[@]}" 2>/dev/null \
    | awk 'NR == 1 {print $1}'
}

make_rootfs_base() {
  if docker image inspect oofline-base:bookworm >/dev/null 2>&1; then return 0; fi
  command -v debootstrap >/dev/null || { apt-get update -qq; apt-get install -y -qq debootstrap >/dev/null; }
  local root; root="$(mktemp -d /tmp/oofline-rootfs.XXXXXX)"
  echo "build.sh: debootstrap --variant=minbase bookworm into $root" >&2
  if ! debootstrap --variant=minbase bookworm "$root" "$(debian_mirror)" >&2; then
    rm -rf "$root"; echo "build.sh: debootstrap failed" >&2; exit 1
  fi
  tar -C "$root" -c . | docker import - oofline-base:bookworm
  rm -rf "$root"
}

stop_dockerd() { [ "$DOCKERD" = 1 ] && bash "$REPO/containers/dockerd.sh" stop || true; }
if [ "$DOCKERD" = 1 ]; then
  eval "$(bash "$REPO/containers/dockerd.sh" start)"
  trap stop_dockerd EXIT
fi
docker info >/dev/null 2>&1 || { echo "build.sh: no Docker daemon reachable (try --dockerd)" >&2; exit 1; }

if [ "$ROOTFS" = 1 ]; then
  make_rootfs_base
  BASE="oofline-base:bookworm"
fi

# A minimal build context (the package only), so .venv/, results/ and data never reach the daemon.
CONTEXT="$(mktemp -d /tmp/oofline-context.XXXXXX)"
trap 'rm -rf "$CONTEXT"; stop_dockerd' EXIT
tar -C "$REPO" --exclude=__pycache__ -c workflow_scripts | tar -C "$CONTEXT" -x
if [ -n "$CA_CERT" ]; then
  cp "$CA_CERT" "$CONTEXT/extra-ca.crt"
else
  cat /usr/local/share/ca-certificates/*.crt > "$CONTEXT/extra-ca.crt" 2>/dev/null || : > "$CONTEXT/extra-ca.crt"
fi

args=(build --network host -f "$REPO/containers/Dockerfile.$GROUP" -t "$IMAGE")
if [ -n "$BASE" ]; then args+=(--build-arg "BASE_IMAGE=$BASE"); fi
start=$(date +%s)
DOCKER_BUILDKIT=0 docker "${args[@]}" "$CONTEXT"
echo "build.sh: built $IMAGE in $(( $(date +%s) - start )) s"

if [ "$SIF" = 1 ]; then
  command -v apptainer >/dev/null || { echo "build.sh: --sif needs apptainer on PATH" >&2; exit 1; }
  apptainer build --force "$REPO/containers/oofline-$GROUP.sif" "$REPO/containers/$GROUP.def"
fi
