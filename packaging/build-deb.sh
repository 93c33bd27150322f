#!/usr/bin/env bash
# Builds one Debian package with dpkg-deb over a staged tree:
#
#   packaging/build-deb.sh PACKAGE ARCH OUTDIR
#     PACKAGE  edgeloop-agent | edgeloop-control
#     ARCH     amd64 | arm64
#
# The package carries the wheels of exactly the versions uv.lock pins for that
# architecture (CPython 3.11, Debian 12), checked against the lock's sha256, and
# its postinst builds a private virtualenv from them with Debian's python3,
# offline (pip --no-index --require-hashes). See docs/packaging.md for why.
#
# Environment: DEB_VERSION (default: the Python version, e.g. 0.1.0), DEB_COMPRESS
# (dpkg-deb -Z, default gzip: the wheels are zip files already, and xz made the
# agent .deb 0.03% smaller in 30x the time: 49.98 vs 49.99 MB, ~90 s vs ~3 s),
# EDGELOOP_TEST_CACHE (where downloaded wheels are kept between builds).
set -euo pipefail

pkg=${1:?usage: build-deb.sh edgeloop-agent|edgeloop-control amd64|arm64 OUTDIR}
arch=${2:?usage: build-deb.sh PACKAGE amd64|arm64 OUTDIR}
outdir=${3:?usage: build-deb.sh PACKAGE ARCH OUTDIR}
here=$(cd "$(dirname "$0")" && pwd)
repo=$(dirname "$here")
cache=${EDGELOOP_TEST_CACHE:-/var/cache/edgeloop-tests}
uv=${UV:-$repo/.tools/bin/uv}
py=${PYTHON_BIN:-$repo/.venv/bin/python}
# .venv is made by uv and has no pip; the uv bootstrap venv (.tools) has one.
pip=${PIP:-$repo/.tools/bin/pip}
compress=${DEB_COMPRESS:-gzip}

case "$pkg" in
  edgeloop-agent | edgeloop-control) ;;
  *) echo "build-deb.sh: unknown package $pkg" >&2; exit 2 ;;
esac
case "$arch" in
  amd64) machine=x86_64 ;;
  arm64) machine=aarch64 ;;
  *) echo "build-deb.sh: unknown architecture $arch" >&2; exit 2 ;;
esac

pyversion=$(sed -n 's/^version = "\(.*\)"/\1/p' "$repo/agent/pyproject.toml" | head -n1)
version=${DEB_VERSION:-$pyversion}
mkdir -p "$outdir"
outdir=$(cd "$outdir" && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# 1. The locked third-party requirements for this target, with their hashes.
"$uv" export --quiet --frozen --package "$pkg" --no-dev --no-emit-workspace \
  --project "$repo" | "$py" "$here/locked_requirements.py" "$arch" >"$work/locked.txt"

# 2. Their wheels, for the target platform only (binary wheels: no compiler on the
#    device). Cached per set of requirements, so a warm build downloads nothing.
key=$(sha256sum "$work/locked.txt" | cut -c1-16)
wheels="$cache/wheels/$arch-$key"
if [ ! -e "$wheels/.complete" ]; then
  # Filled under a private name and renamed when complete: two builds at once
  # (parallel test runs on one machine) never see each other's half-filled cache.
  final=$wheels
  mkdir -p "$cache/wheels"
  wheels=$(mktemp -d "$final.tmp.XXXXXX")
  trap 'rm -rf "$work" "$wheels"' EXIT
  platforms=()
  for minor in 36 35 34 33 32 31 28 27 26 24 17; do
    platforms+=(--platform "manylinux_2_${minor}_$machine")
  done
  platforms+=(--platform "manylinux2014_$machine")
  # The device's pip must not see this machine's pip configuration (local indexes,
  # constraints): PIP_CONFIG_FILE=/dev/null. The CA bundle still comes from PIP_CERT.
  # Source-only releases (antlr4-python3-runtime, which DVC's hydra pins) are
  # built into wheels here, from the sdist the lock's hash checks, and must come
  # out pure Python (py3-none-any), or the build stops.
  "$py" "$here/locked_requirements.py" --sdist-only "$repo/uv.lock" >"$work/sdist-names.txt"
  : >"$work/binary.txt"
  : >"$work/sdist.txt"
  while read -r line; do
    name=$(printf '%s' "$line" | cut -d= -f1)
    if grep -qixF "$name" "$work/sdist-names.txt"; then
      echo "$line" >>"$work/sdist.txt"
    else
      echo "$line" >>"$work/binary.txt"
    fi
  done <"$work/locked.txt"
  "$pip" download --quiet --disable-pip-version-check --no-deps --require-hashes \
    --only-binary=:all: --implementation cp --python-version 3.11 --abi cp311 \
    "${platforms[@]}" -r "$work/binary.txt" -d "$wheels"
  if [ -s "$work/sdist.txt" ]; then
    "$pip" download --quiet --disable-pip-version-check --no-deps --require-hashes \
      --no-binary=:all: -r "$work/sdist.txt" -d "$work/sdists"
    "$pip" wheel --quiet --disable-pip-version-check --no-deps \
      -w "$work/built" "$work"/sdists/*
    for whl in "$work"/built/*.whl; do
      case "$whl" in
        *-none-any.whl) cp "$whl" "$wheels/" ;;
        *) echo "build-deb.sh: $(basename "$whl") is not pure Python" >&2; exit 1 ;;
      esac
    done
  fi
  touch "$wheels/.complete"
  chmod 0755 "$wheels"
  if ! mv -T "$wheels" "$final" 2>/dev/null; then
    rm -rf "$wheels" # another build finished first: use its copy
  fi
  wheels=$final
  trap 'rm -rf "$work"' EXIT
fi

# 3. Our own wheels (pure Python): the agent, and for the control node both.
members=(agent)
[ "$pkg" = edgeloop-control ] && members=(agent control)
for m in "${members[@]}"; do
  "$uv" build --quiet --wheel --out-dir "$work/own" "$repo/$m" >/dev/null
done

# 4. The staged tree.
root="$work/root"
opt="/opt/$pkg"
install -d "$root$opt/wheels" "$root/DEBIAN" "$root/lib/systemd/system" \
  "$root/usr/share/doc/$pkg" "$root/usr/bin"
while read -r line; do
  name=$(printf '%s' "$line" | cut -d= -f1 | tr 'A-Z-' 'a-z_')
  ver=$(printf '%s' "$line" | sed 's/^[^=]*==\([^ ]*\) .*/\1/')
  for f in "$wheels"/*.whl; do
    fname=$(basename "$f" | cut -d- -f1 | tr 'A-Z.-' 'a-z__')
    fver=$(basename "$f" | cut -d- -f2)
    [ "$fname" = "$name" ] && [ "$fver" = "$ver" ] && cp "$f" "$root$opt/wheels/"
  done
done <"$work/locked.txt"
cp "$work"/own/*.whl "$root$opt/wheels/"
{
  "$py" "$here/locked_requirements.py" --sdist-only "$repo/uv.lock" >"$work/sdist-names.txt"
  while read -r line; do
    name=$(printf '%s' "$line" | cut -d= -f1)
    if grep -qixF "$name" "$work/sdist-names.txt"; then
      # Built here from the sdist the lock's hash checked: pin the wheel's own hash.
      whl=$(find "$root$opt/wheels" -iname "$(echo "$name" | tr - _)-*.whl" | head -n1)
      echo "${line%% *} --hash=sha256:$(sha256sum "$whl" | cut -d' ' -f1)"
    else
      echo "$line"
    fi
  done <"$work/locked.txt"
  for f in "$work"/own/*.whl; do
    base=$(basename "$f")
    echo "$(echo "$base" | cut -d- -f1 | tr _ -)==$(echo "$base" | cut -d- -f2) --hash=sha256:$(sha256sum "$f" | cut -d' ' -f1)"
  done
} >"$root$opt/requirements.txt"
nwheels=$(find "$root$opt/wheels" -name '*.whl' | wc -l)
nreqs=$(wc -l <"$root$opt/requirements.txt")
if [ "$nwheels" -ne "$nreqs" ]; then
  echo "build-deb.sh: $nreqs requirements but $nwheels wheels" >&2
  exit 1
fi

# The unit files in systemd/ start /usr/local/bin/... (a hand install); the
# package's own virtualenv replaces that path.
cli=edgeloop-agent
[ "$pkg" = edgeloop-control ] && cli=edgeloop
sed "s#/usr/local/bin/$cli #$opt/venv/bin/$cli #" "$repo/systemd/$pkg.service" \
  >"$root/lib/systemd/system/$pkg.service"
grep -q "^ExecStart=$opt/venv/bin/$cli " "$root/lib/systemd/system/$pkg.service"
if [ "$pkg" = edgeloop-agent ]; then
  # The agent reports its package version (its Python version lacks Debian's
  # suffixes), and the self-update's one-shot and path unit come along
  # (docs/operations.md, "Updating the agent").
  sed -i "s#^ExecStart=#Environment=EDGELOOP_AGENT_PACKAGE_VERSION=$version\nExecStart=#" \
    "$root/lib/systemd/system/$pkg.service"
  install -d "$root/usr/libexec/$pkg"
  install -m 0755 "$here/edgeloop-agent-update" "$root/usr/libexec/$pkg/edgeloop-agent-update"
  for unit in edgeloop-agent-update.service edgeloop-agent-update.path; do
    install -m 0644 "$repo/systemd/$unit" "$root/lib/systemd/system/$unit"
  done
fi
ln -s "$opt/venv/bin/$cli" "$root/usr/bin/$cli"

if [ "$pkg" = edgeloop-agent ]; then
  install -d "$root/etc/edgeloop"
  install -m 0600 "$here/edgeloop-agent.toml" "$root/etc/edgeloop/agent.toml"
  echo /etc/edgeloop/agent.toml >"$root/DEBIAN/conffiles"
fi

install -m 0644 "$here/debian/copyright" "$root/usr/share/doc/$pkg/copyright"
install -d "$root/usr/share/lintian/overrides" "$root/usr/share/man/man1"
install -m 0644 "$here/debian/$pkg.lintian-overrides" "$root/usr/share/lintian/overrides/$pkg"
gzip -9n <"$here/man/$cli.1" >"$root/usr/share/man/man1/$cli.1.gz"
sed "s/@PACKAGE@/$pkg/; s/@VERSION@/$version/" "$here/debian/changelog" |
  gzip -9n >"$root/usr/share/doc/$pkg/changelog.gz"

for script in postinst prerm postrm; do
  sed "s/@PACKAGE@/$pkg/g; s/@VERSION@/$version/g" "$here/debian/$pkg.$script" \
    >"$root/DEBIAN/$script"
  chmod 0755 "$root/DEBIAN/$script"
done

size=$(du -sk --exclude=DEBIAN "$root" | cut -f1)
sed "s/@PACKAGE@/$pkg/; s/@VERSION@/$version/; s/@ARCH@/$arch/; s/@SIZE@/$size/" \
  "$here/debian/$pkg.control" >"$root/DEBIAN/control"
(cd "$root" && find . -path ./DEBIAN -prune -o -type f -printf '%P\0' |
  LC_ALL=C sort -z | xargs -0 md5sum >DEBIAN/md5sums)
chmod 0644 "$root/DEBIAN/md5sums" "$root/DEBIAN/control"
[ -e "$root/DEBIAN/conffiles" ] && chmod 0644 "$root/DEBIAN/conffiles"

deb="$outdir/${pkg}_${version}_${arch}.deb"
dpkg-deb --root-owner-group -Z"$compress" --build "$root" "$deb" >/dev/null
echo "$deb"
