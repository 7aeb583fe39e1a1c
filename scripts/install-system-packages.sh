#!/usr/bin/env bash
# The programs the tests use beside Python, from Debian's packages: PostgreSQL (the tracking server's database in the
# topology test), Chromium (the MLflow UI in a real browser) and kubectl (rendering the kustomizations; only in
# Kubernetes' own apt repository). Run by `make test` once per virtual environment: as root with apt-get, it installs
# what is missing; otherwise it names what is missing, and the tests that need it skip, naming it too.
set -uo pipefail
missing=()
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing+=(postgresql)
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
command -v kubectl >/dev/null 2>&1 || missing+=(kubectl)
[[ ${#missing[@]} -eq 0 ]] && exit 0
if [[ $(id -u) -ne 0 ]] || ! command -v apt-get >/dev/null 2>&1; then
    echo "install-system-packages: missing ${missing[*]}; install them (e.g. sudo apt-get install ${missing[*]})"
    exit 0
fi
echo "install-system-packages: installing ${missing[*]}"
apt-get update -qq >/dev/null 2>&1
for package in "${missing[@]}"; do  # one at a time: kubectl alone may be absent from the configured repositories
    if ! DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$package" >/dev/null 2>&1; then
        echo "install-system-packages: apt-get has no $package here; the tests that need it will skip"
    fi
done
exit 0
