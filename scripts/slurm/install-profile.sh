#!/usr/bin/env bash
# Install the site SLURM profile (profiles/slurm/) where `snakemake --profile slurm`
# finds it: ${XDG_CONFIG_HOME:-~/.config}/snakemake/slurm/.
#
# Usage: scripts/slurm/install-profile.sh [--force] [--dest DIR]
#   --force     overwrite an existing, different profile there (a backup copy
#               <dest>.bak.<timestamp> is kept)
#   --dest DIR  install into DIR instead (e.g. /etc/xdg/snakemake/slurm for all users)
# Afterwards edit <dest>/config.yaml: set slurm_account and slurm_partition.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)
src=$(cd "$here/../../profiles/slurm" && pwd -P)
force=0
dest=${XDG_CONFIG_HOME:-$HOME/.config}/snakemake/slurm

while (($#)); do
    case $1 in
        --force) force=1 ;;
        --dest) shift; dest=${1:?--dest needs a directory} ;;
        --dest=*) dest=${1#--dest=} ;;
        -h|--help) sed -n '2,10p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "install-profile: unknown argument: $1" >&2; exit 2 ;;
    esac
    shift
done

[[ -f $src/config.yaml ]] || { echo "install-profile: $src/config.yaml not found" >&2; exit 1; }

if [[ -e $dest ]]; then
    if diff -rq "$src" "$dest" >/dev/null 2>&1; then
        echo "install-profile: $dest is already up to date"
        echo "installed SLURM profile at: $dest"
        exit 0
    fi
    if ((!force)); then
        echo "install-profile: a different profile already exists at $dest" >&2
        diff -ru "$dest" "$src" >&2 || true
        echo "install-profile: keeping it; rerun with --force to replace it (a backup is kept)" >&2
        exit 1
    fi
    backup=$dest.bak.$(date +%Y%m%d%H%M%S)
    mv "$dest" "$backup"
    echo "install-profile: previous profile moved to $backup"
fi

mkdir -p "$(dirname "$dest")"
cp -R "$src" "$dest"
echo "installed SLURM profile at: $dest"
if grep -q CHANGE_ME "$dest/config.yaml"; then
    echo "next: set slurm_account and slurm_partition in $dest/config.yaml, then run: snakemake --profile slurm all"
fi
