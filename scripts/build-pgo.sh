#!/usr/bin/env bash
# Builds Pylon with profile-guided optimisation: an instrumented release build, a
# training run through the benchmark's own workloads (bench/pgo_train.py: HTTP/1.1,
# HTTP/2, TLS, HTTP/3, Layer 4, WebSocket, CONNECT, cache hits, gRPC), then the release
# build again with the profile, so the compiler lays out and inlines for the paths that
# real traffic takes. The binary is target/pgo/<host>/release/pylon; its path is the last
# line printed. Takes two release builds (about 15 minutes on 2 cores) and a minute of
# training. Needs what bench/run.sh installs (nginx, wrk, h2load, iperf3) and an
# llvm-profdata of the same LLVM major version as rustc's (Debian's llvm-<N>, installed
# here when missing, or rustup's llvm-tools).
set -euo pipefail
cd "$(dirname "$0")/.."

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
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "llvm-$llvm" >/dev/null
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
"$profdata" merge -o "$work/pylon.profdata" "$work"/train-*.profraw
RUSTFLAGS="${RUSTFLAGS:-} -Cprofile-use=$work/pylon.profdata" \
  cargo build --release -p pylon --target "$host" --target-dir target/pgo
echo "target/pgo/$host/release/pylon"
