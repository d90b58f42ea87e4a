#!/usr/bin/env bash
# Compiles the library's own sources freestanding for rv32imc (the ESP32-C3's
# ISA) against picolibc and the host's mbedTLS headers, then reports code
# size, the worst stack use, and the symbols it needs from outside. Fails if
# the library calls an allocator. Usage: tools/rv32-build.sh [OUT_DIR]
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
out="${1:-$(mktemp -d)}"
mkdir -p "$out/inc"
# Only the mbedtls/ headers: all of /usr/include would pull in glibc's.
ln -sfn /usr/include/mbedtls "$out/inc/mbedtls"

objs=()
for src in "$here"/src/*.c; do
  obj="$out/$(basename "${src%.c}").o"
  riscv64-unknown-elf-gcc -march=rv32imc -mabi=ilp32 -Os -ffreestanding \
    -fstack-usage -ffunction-sections -fdata-sections --specs=picolibc.specs \
    -std=c99 -Wall -Wextra -Werror -pedantic \
    -I "$here/include" -I "$out/inc" -c "$src" -o "$obj"
  objs+=("$obj")
done

echo "== size (bytes)"
riscv64-unknown-elf-size -t "${objs[@]}"
echo "== worst stack use per function (bytes)"
cat "$out"/*.su | sort -t$'\t' -k2 -n -r | head -5
echo "== symbols needed from outside"
undefined="$(riscv64-unknown-elf-nm -u "${objs[@]}" | awk 'NF==2 {print $2}' | sort -u)"
echo "$undefined" | tr '\n' ' '
echo
if echo "$undefined" | grep -qE '^(malloc|calloc|realloc|free)$'; then
  echo "the library must not allocate" >&2
  exit 1
fi
