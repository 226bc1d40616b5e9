# Shared helpers for the benchmarks. Source it; it defines MOSNCTL, WORK and `median`.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cargo build --release -q -p mosnctl --manifest-path "$ROOT/Cargo.toml"
MOSNCTL="${CARGO_TARGET_DIR:-$ROOT/target}/release/mosnctl"
WORK="$(mktemp -d /tmp/mosnctl-bench.XXXXXX)"
chmod 755 "$WORK" # nginx workers run as www-data
trap 'rm -rf "$WORK"; kill $(jobs -p) 2>/dev/null || true' EXIT

# A ~40 MB ELF made of real machine code: shared libraries back to back. Compresses like a
# real proxy binary, unlike random or zero bytes.
make_binary() {
  local out="$1"
  : >"$out"
  for f in /usr/lib/x86_64-linux-gnu/*.so* /usr/bin/*; do
    [ -f "$f" ] && head -c 4 "$f" | grep -q ELF && cat "$f" >>"$out"
    [ "$(stat -c %s "$out")" -ge 41943040 ] && break
  done
  truncate -s 41943040 "$out"
  chmod 755 "$out"
}

median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
