#!/usr/bin/env bash
# Build the task image from cluster/Dockerfile and tag it energy-seg-recipes/task:<version>-cuda12
# (<version> from pyproject.toml), optionally push it to a registry.
#
#   cluster/build-image.sh                       build and tag
#   cluster/build-image.sh --push REGISTRY       also tag REGISTRY/energy-seg-recipes/task:... and push
#   cluster/build-image.sh --base IMAGE          another base image (see the Dockerfile's header)
#
# Extra arguments after -- go to `docker build` (e.g. -- --no-cache --platform linux/amd64).
# BuildKit is required: it alone reads cluster/Dockerfile.dockerignore, which keeps the
# virtualenv and runs out of the context.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/.." && pwd)"
docker="${DOCKER:-docker}"

usage() { sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//'; }

registry=""
base=""
extra=()
while [ $# -gt 0 ]; do
    case "$1" in
        --push) [ $# -ge 2 ] || { echo "error: --push needs a registry (e.g. registry.example.com:5000/team)" >&2; exit 2; }
                registry="${2%/}"; shift 2 ;;
        --base) [ $# -ge 2 ] || { echo "error: --base needs an image name" >&2; exit 2; }
                base="$2"; shift 2 ;;
        -h|--help) usage; exit 0 ;;
        --) shift; extra=("$@"); break ;;
        *) echo "error: unknown argument '$1'" >&2; usage >&2; exit 2 ;;
    esac
done

version="$(sed -n 's/^version *= *"\([^"]*\)".*/\1/p' "$root/pyproject.toml" | head -n 1)"
if [ -z "$version" ]; then
    echo "error: no version = \"...\" line in $root/pyproject.toml" >&2
    exit 2
fi
tag="energy-seg-recipes/task:${version}-cuda12"
if ! command -v "$docker" >/dev/null 2>&1; then
    echo "error: '$docker' not found: install Docker (BuildKit) or set DOCKER to a compatible CLI" >&2
    exit 2
fi

args=(build -f "$root/cluster/Dockerfile" -t "$tag" --build-arg "PROJECT_VERSION=$version")
if [ -n "$base" ]; then
    args+=(--build-arg "BASE_IMAGE=$base")
fi
args+=(${extra[@]+"${extra[@]}"} "$root")

echo "+ $docker ${args[*]}"
DOCKER_BUILDKIT=1 "$docker" "${args[@]}"

if [ -n "$registry" ]; then
    remote="$registry/$tag"
    echo "+ $docker tag $tag $remote && $docker push $remote"
    "$docker" tag "$tag" "$remote"
    "$docker" push "$remote"
    echo "pushed $remote: set it as environment.image in the experiment configs, or as"
    echo "task_container_defaults.image.cuda in the master config (cluster/master.yaml)."
else
    echo "built $tag. To push it where every agent can pull it:"
    echo "  docker tag $tag REGISTRY/$tag && docker push REGISTRY/$tag"
    echo "or: cluster/build-image.sh --push REGISTRY"
fi
