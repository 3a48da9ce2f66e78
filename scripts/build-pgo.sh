#!/usr/bin/env bash
# Builds Pylon with profile-guided optimisation: an instrumented release build, a
# training run through the benchmarks' own workloads (bench/pgo_train.py: HTTP/1.1,
# HTTP/2, TLS, HTTP/3, Layer 4, the gateway, TURN, WebSocket, CONNECT, cache hits,
# gRPC), then the release build again with the profile, so the compiler lays out and
# inlines for the paths that real traffic takes. The binary is
# target/pgo/<host>/release/pylon; its path is the last line printed. Takes two release
# builds (about 15 minutes on 2 cores) and under two minutes of training. Needs what
# bench/run.sh installs (nginx, wrk, h2load, iperf3, redis) and an llvm-profdata of the
# same LLVM major version as rustc's (rustup's llvm-tools, or Debian's llvm-<N>,
# installed here when missing).
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
for tool in nginx wrk h2load iperf3 redis-server openssl python3; do
  command -v "$tool" >/dev/null 2>&1 || [ -x "/usr/sbin/$tool" ] || missing+=("$tool")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "build-pgo: the training run needs ${missing[*]} (bench/run.sh installs them:" \
       "nginx-light, wrk, nghttp2-client, iperf3, redis-server)" >&2
  exit 1
fi

host=$(rustc -vV | sed -n 's/^host: //p')
llvm=$(rustc -vV | sed -n 's/^LLVM version: \([0-9]*\).*/\1/p')
profdata=""
for p in "$(rustc --print sysroot)/lib/rustlib/$host/bin/llvm-profdata" \
         "$(command -v "llvm-profdata-$llvm" || true)" "/usr/lib/llvm-$llvm/bin/llvm-profdata"; do
  if [ -n "$p" ] && [ -x "$p" ]; then profdata=$p; break; fi
done
if [ -z "$profdata" ]; then
  if [ "$(id -u)" -eq 0 ]; then SUDO=""; else SUDO="sudo"; fi
  echo "build-pgo: installing llvm-$llvm for llvm-profdata (rustc uses LLVM $llvm)" >&2
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "llvm-$llvm" >/dev/null \
    || { echo "build-pgo: no llvm-$llvm package here; install rustup's llvm-tools" \
              "(rustup component add llvm-tools) or an llvm-profdata $llvm" >&2; exit 1; }
  profdata=/usr/lib/llvm-$llvm/bin/llvm-profdata
fi

work=$PWD/target/pgo-profile
rm -rf "$work"
mkdir -p "$work"

# --target keeps RUSTFLAGS off build scripts and procedural macros.
cargo build --release -p pylon-bench-load
RUSTFLAGS="${RUSTFLAGS:-} -Cprofile-generate=$work/unused" \
  cargo build --release -p pylon --target "$host" --target-dir target/pgo-generate
ulimit -n "$(ulimit -Hn)" || true
LLVM_PROFILE_FILE="$work/train-%p-%m.profraw" python3 bench/pgo_train.py \
  --pylon "target/pgo-generate/$host/release/pylon" --load target/release/pylon-bench-load
"$profdata" merge -o "$work/merged.profdata" "$work"/train-*.profraw
# Named by its content: cargo does not look into the file, so a new profile must change
# the flags for the optimised build to be redone.
profile=$work/pylon-$(sha256sum "$work/merged.profdata" | cut -c1-16).profdata
mv "$work/merged.profdata" "$profile"
RUSTFLAGS="${RUSTFLAGS:-} -Cprofile-use=$profile" \
  cargo build --release -p pylon --target "$host" --target-dir target/pgo
echo "target/pgo/$host/release/pylon"
