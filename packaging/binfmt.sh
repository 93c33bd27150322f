#!/usr/bin/env bash
# Makes the kernel run aarch64 binaries through qemu-user-static (binfmt_misc),
# for the arm64 package test. Idempotent; needs root.
set -euo pipefail
if [ ! -e /proc/sys/fs/binfmt_misc/status ]; then
  mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc
fi
if [ ! -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ]; then
  update-binfmts --enable qemu-aarch64
fi
