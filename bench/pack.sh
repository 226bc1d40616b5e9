#!/usr/bin/env bash
# Pack a 40 MB binary with `mosnctl pack` and compare against `tar | pigz -p2` at the same
# level (6), in the same run. Target: mosnctl at most 1.2x pigz's time. Prints the ratio.
source "$(dirname "$0")/common.sh"
command -v pigz >/dev/null || { echo "pigz is needed: apt-get install pigz" >&2; exit 1; }
RUNS="${RUNS:-7}"
make_binary "$WORK/mosn"
mkdir -p "$WORK/root/usr/local/bin" && cp "$WORK/mosn" "$WORK/root/usr/local/bin/mosn"

time_it() { local s e; s=$(date +%s%N); "$@" >/dev/null 2>&1; e=$(date +%s%N); echo $(((e - s) / 1000000)); }
ours=(); peer=()
for _ in $(seq "$RUNS"); do
  ours+=("$(time_it "$MOSNCTL" -q pack --version bench --linux "$WORK/mosn" --out "$WORK/out")")
  peer+=("$(time_it sh -c "tar -C '$WORK/root' --owner=0 --group=0 -c usr/local/bin/mosn | pigz -p2 -6 > '$WORK/peer.tar.gz'")")
done
o=$(printf '%s\n' "${ours[@]}" | median); p=$(printf '%s\n' "${peer[@]}" | median)
os=$(stat -c %s "$WORK/out/mosn.tar.gz"); ps=$(stat -c %s "$WORK/peer.tar.gz")
echo "pack 40 MiB: mosnctl ${o} ms (${os} bytes, writes 2 tarballs + sums), tar|pigz -p2 -6 ${p} ms (${ps} bytes); median of $RUNS"
awk -v o="$o" -v p="$p" -v os="$os" -v ps="$ps" 'BEGIN {printf "ratio time mosnctl/pigz = %.2fx (target <= 1.2x); size ratio = %.3f\n", o/p, os/ps}'
