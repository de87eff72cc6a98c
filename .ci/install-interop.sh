#!/usr/bin/env bash
# Installs the real third-party peers the interop module (interop/) tests
# against: Python websockets, nginx, tinyproxy (Debian packages) and the npm
# package ws (into interop/node/, pinned by its package-lock.json).
# Idempotent: installs only what is missing. Run from anywhere, as root (CI).
set -euo pipefail
cd "$(dirname "$0")/.."

pkgs=(python3-websockets nginx tinyproxy openssl)
missing=()
for p in "${pkgs[@]}"; do
	if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed'; then
		missing+=("$p")
	fi
done
if ! command -v npm >/dev/null 2>&1; then
	missing+=(nodejs npm)
fi

if [ "${#missing[@]}" -gt 0 ]; then
	echo "install-interop: apt-get install ${missing[*]}"
	sudo=""
	if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
	# The nginx and tinyproxy packages start system-wide daemons (port 80,
	# port 8888, all interfaces) from their postinst. The tests run their own
	# instances on loopback, so forbid service starts during the install unless
	# a policy is already in place.
	made_policy=""
	if [ ! -e /usr/sbin/policy-rc.d ]; then
		printf '#!/bin/sh\nexit 101\n' | $sudo tee /usr/sbin/policy-rc.d >/dev/null
		$sudo chmod 755 /usr/sbin/policy-rc.d
		made_policy=1
	fi
	cleanup() { if [ -n "$made_policy" ]; then $sudo rm -f /usr/sbin/policy-rc.d; fi; }
	trap cleanup EXIT
	export DEBIAN_FRONTEND=noninteractive
	$sudo apt-get update -qq
	$sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
	cleanup
	made_policy=""
fi

# ws for the Node peer, exactly as pinned by interop/node/package-lock.json.
lock=interop/node/package-lock.json
stamp=interop/node/node_modules/.wspool-lock
if [ ! -f "$stamp" ] || ! cmp -s "$lock" "$stamp"; then
	echo "install-interop: npm ci in interop/node"
	(cd interop/node && npm ci --no-audit --no-fund --loglevel=error)
	cp "$lock" "$stamp"
fi

echo "install-interop: python3-websockets $(dpkg-query -W -f='${Version}' python3-websockets)," \
	"nginx $(dpkg-query -W -f='${Version}' nginx)," \
	"tinyproxy $(dpkg-query -W -f='${Version}' tinyproxy)," \
	"node $(node --version), ws $(node -p "require('./interop/node/node_modules/ws/package.json').version")"
