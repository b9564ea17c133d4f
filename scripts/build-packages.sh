#!/usr/bin/env bash
# build-packages.sh OUTDIR - build the Debian packages (dpkg-buildpackage -us -uc -b) and the
# RHEL 9 RPMs (rpmbuild -bb) from a copy of this tree, and put the results in OUTDIR. The
# checkout is left as it was: the build runs in a temporary directory holding the files git
# knows (tracked, and new files not ignored), with packaging/debian copied to debian/.
# Needs the tools scripts/install-packaging-deps.sh installs.
set -euo pipefail
cd "$(dirname "$0")/.."
# Debian's own tools and interpreter only: no virtualenv, pyenv shim or PYTHONPATH of the
# caller may leak into the build
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
unset PYTHONPATH PYTHONHOME VIRTUAL_ENV PYENV_VERSION PYTHONSTARTUP PYTHONUSERBASE
out=${1:?usage: build-packages.sh OUTDIR}
mkdir -p "$out"
out=$(cd "$out" && pwd)

version=$(/usr/bin/python3 -c 'import tomllib; print(tomllib.load(open("pyproject.toml", "rb"))["project"]["version"])')
deb_version=$(dpkg-parsechangelog -l packaging/debian/changelog -S Version)
rpm_version=$(awk '$1 == "Version:" {print $2}' packaging/rpm/replengine.spec)
if [ "$deb_version" != "$version" ] || [ "$rpm_version" != "$version" ]; then
    echo "build-packages: version mismatch: pyproject.toml $version," \
        "packaging/debian/changelog $deb_version, packaging/rpm/replengine.spec $rpm_version" >&2
    exit 1
fi

work=$(mktemp -d /var/tmp/replengine-pkg.XXXXXX)
[ -n "${KEEP_WORK:-}" ] || trap 'rm -rf "$work"' EXIT
src="$work/replengine-$version"
mkdir -p "$src"
git ls-files -z --cached --others --exclude-standard |
    tar --null --files-from=- --ignore-failed-read -cf - 2>/dev/null | tar -xf - -C "$src"

# RPM: a source tarball of the tree as it is, then rpmbuild in its own _topdir. --nodeps:
# the BuildRequires are RHEL package names, which no RPM database on Debian can satisfy.
mkdir -p "$work/rpm/SOURCES"
tar -C "$work" -czf "$work/rpm/SOURCES/replengine-$version.tar.gz" "replengine-$version"
# __brp_compress: Debian's rpm runs brp-compress (which gzips the man pages) with /bin/sh, but
# it is a bash script (read -d) and silently compresses nothing under dash; run it with bash.
rpmbuild -bb --nodeps --define "_topdir $work/rpm" \
    --define '__brp_compress /bin/bash %{_rpmconfigdir}/brp-compress %{_prefix}' \
    packaging/rpm/replengine.spec \
    >"$work/rpmbuild.log" 2>&1 || { tail -40 "$work/rpmbuild.log" >&2; exit 1; }
cp "$work"/rpm/RPMS/noarch/*.rpm "$out/"

# Debian: packaging/debian becomes the source package's debian/
cp -a packaging/debian "$src/debian"
(cd "$src" && dpkg-buildpackage -us -uc -b) >"$work/dpkg-buildpackage.log" 2>&1 ||
    { tail -40 "$work/dpkg-buildpackage.log" >&2; exit 1; }
cp "$work"/*.deb "$work"/*.buildinfo "$work"/*.changes "$out/"
ls -1 "$out"
