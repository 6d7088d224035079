#!/usr/bin/env bash
# `make pgo`: a profile-guided build of legate, target/pgo/release/legate.
#
# 1. builds legate instrumented (target/pgo-gen),
# 2. trains it on the load benchmark's own scenarios, briefly (benches/compare.py, legate only:
#    HTTP/1.1 keep-alive and per-request connections, h2c to HTTP/1.1 and to h2c, TLS),
# 3. merges the profile with the llvm-profdata of rustc's LLVM version (Debian's llvm-<major>,
#    installed when missing) and builds again with it.
# Both builds are fat-LTO with one codegen unit: alone that gained 2% for three times the build
# time, but with the profile deciding what to inline across crates it gains 2% (HTTP/1.1) to 7%
# (h2c) more than PGO alone.
# Needs what benches/load.sh installs (wrk, h2load, nginx, haproxy). Exits non-zero, having built
# nothing, when no matching llvm-profdata can be had.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PATH:/usr/sbin"

major=$(rustc -vV | sed -n 's/^LLVM version: \([0-9]*\).*/\1/p')
profdata=/usr/lib/llvm-$major/bin/llvm-profdata
if [ ! -x "$profdata" ]; then
  echo "installing llvm-$major (llvm-profdata for rustc's LLVM $major)" >&2
  if [ "$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi
  $SUDO apt-get update -qq >/dev/null 2>&1 || true
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "llvm-$major" >/dev/null 2>&1 || true
fi
if [ ! -x "$profdata" ]; then
  echo "pgo: no llvm-profdata for LLVM $major; no profile-guided build" >&2
  exit 1
fi

export CARGO_PROFILE_RELEASE_LTO=fat CARGO_PROFILE_RELEASE_CODEGEN_UNITS=1
data="$PWD/target/pgo-data"
rm -rf "$data"
mkdir -p "$data"
echo "pgo: instrumented build" >&2
RUSTFLAGS="-Cprofile-generate=$data/build" CARGO_TARGET_DIR=target/pgo-gen \
  cargo build --release -q --bin legate
echo "pgo: training on the benchmark's scenarios" >&2
LLVM_PROFILE_FILE="$data/train/legate-%p-%m.profraw" LEGATE_BIN=target/pgo-gen/release/legate \
  TARGETS=legate ROUNDS=1 DURATION=3 MEMORY=0 REPORT=0 python3 benches/compare.py
ls "$data"/train/*.profraw >/dev/null
"$profdata" merge -o "$data/legate.profdata" "$data"/train/*.profraw
echo "pgo: optimised build" >&2
RUSTFLAGS="-Cprofile-use=$data/legate.profdata -Cllvm-args=-pgo-warn-missing-function=false" \
  CARGO_TARGET_DIR=target/pgo cargo build --release -q --bin legate
echo "pgo: target/pgo/release/legate" >&2
